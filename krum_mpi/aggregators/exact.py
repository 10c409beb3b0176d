"""Squared distances between two rows computed more carefully than the Gram kernel: the levels the
certified rules (certify.py) climb when the fast kernel's error bound cannot decide.

direct_sq_distances   direct differences accumulated in float64, with a rigorous error bound.
                      For float32 rows every difference, square and sum stays inside float64's
                      range (|a - b| <= 2^129, squares >= 2^-298), so the only errors are roundings:
                      |computed - exact| <= gamma_(d+3) * exact, with gamma_k = k u / (1 - k u).
exact_sq_distance     the exact value, as a Python int: ||a - b||^2 * 2^SCALE. Each difference is
                      split into two float64 (TwoSum: s + t = a - b exactly); each square or product
                      of those is split into 27-bit integer halves whose products are exact in int64;
                      the products are summed exactly per power of two (18-bit pieces in float64
                      bincounts, exact below 2^53) and the per-power sums joined as Python ints.
                      Everything is vectorised over column chunks: about 1 s per 1e7 columns.

Both take rows from NumPy or CuPy (CuPy rows are brought to the host chunk by chunk for the exact
level, which is the rare case). Rows must be finite; the callers handle NaN/Inf rows.
"""
import numpy as np

from krum_mpi.aggregators.base import array_namespace, to_numpy
from krum_mpi.backend import astype, host_dtype

U64 = 2.0**-53
SCALE = {np.dtype(np.float32): 298, np.dtype(np.float64): 2148}  # 2 x (-min exponent of a subnormal)
DIRECT_CHUNK = 1 << 20  # columns per float64 pass (16 MiB of temporaries per row pair)
SUB = 4096  # columns per float64 dot product: the bound's chain is SUB + sub-blocks, not d
EXACT_CHUNK = 1 << 16  # columns per exact pass (16 int64 terms per column)
PIECE = 18  # bits per piece of an int64 product summed in float64 (2^35 terms stay exact)


def gamma(k, u=U64):
    """The classical bound on the relative error of k successive roundings."""
    return k * u / (1.0 - k * u)


def direct_sq_distances(X, pairs):
    """(values, bounds): float64 arrays, one entry per (i, j) in pairs, |value - exact| <= bound.
    Dot products of SUB columns (any order: gamma_(SUB + 3) with the difference and the square),
    summed in order: gamma_(SUB + 3 + sub-blocks) in all."""
    xp = array_namespace(X)
    pairs = list(pairs)
    d = X.shape[1]
    values = np.zeros(len(pairs))
    for p, (i, j) in enumerate(pairs):
        total = 0.0
        for c in range(0, d, DIRECT_CHUNK):
            cols = slice(c, min(d, c + DIRECT_CHUNK))
            diff = astype(xp, X[i, cols], xp.float64) - astype(xp, X[j, cols], xp.float64)
            total += float(sub_block_dots(xp, diff[None, :], diff[None, :]).sum())
        values[p] = total
    g = gamma(SUB + 3 + -(-d // SUB) + 2)
    if host_dtype(X) == np.float32:
        bounds = values * (g / (1.0 - g))
    else:  # float64 rows may underflow (or overflow: then the bound is inf and the exact level decides)
        bounds = values * (g / (1.0 - g)) + 4.0 * d * 2.0**-1074
        bounds[~np.isfinite(values)] = np.inf
    return values, np.nextafter(bounds, np.inf)


def sub_block_dots(xp, a, b):
    """(r, s) float64: the products a @ b.T summed over SUB-column sub-blocks, each sub-block's
    product being at most SUB terms long (the bound's chain length); a, b: float64 (r|s, w)."""
    w = a.shape[1]
    q = w // SUB
    out = 0.0
    if q:
        left = xp.permute_dims(xp.reshape(a[:, :q * SUB], (a.shape[0], q, SUB)), (1, 0, 2))
        right = xp.permute_dims(xp.reshape(b[:, :q * SUB], (b.shape[0], q, SUB)), (1, 2, 0))
        out = xp.sum(xp.matmul(left, right), axis=0)
    if w > q * SUB:
        out = out + a[:, q * SUB:] @ b[:, q * SUB:].T
    return to_numpy(out)


def rows_sq_distances(X, rows):
    """(values, bounds): (r, r) float64 arrays of the distances among X[rows], from float64 Grams
    of column chunks centred on a coordinate-wise median of up to 5 of those rows (one pass over them,
    cheaper than pair by pair when many pairs share rows). The products of SUB columns err by
    gamma_(SUB + 1) (||e_i|| + ||e_j||)^2 and the centring by 3u; the sums over sub-blocks and
    chunks add gamma_(sub-blocks + 8). float32 rows never underflow or overflow in float64 here."""
    xp = array_namespace(X)
    rows = list(rows)
    r, d = len(rows), X.shape[1]
    chunk = max(SUB, (1 << 18) // max(1, r) // SUB * SUB)  # 2 MiB of float64: cache-resident
                                                          # (measured 0.72 -> 0.41 s, 13 rows, 1e7 columns)
    dist = np.zeros((r, r))
    scale = np.zeros((r, r))  # sum over chunks of (||e_i|| + ||e_j||)^2
    index = xp.asarray(rows)
    sample = np.unique(np.linspace(0, r - 1, min(r, 5)).astype(np.int64))  # a median of 5 rows: robust
    for c in range(0, d, chunk):                                           # to 2 huge ones, and cheap
        b = astype(xp, xp.take(X[:, c:min(d, c + chunk)], index, axis=0), xp.float64)
        b = b - lower_median(xp, xp.take(b, xp.asarray(sample), axis=0))
        gram = sub_block_dots(xp, b, b)
        norms = np.maximum(np.diag(gram), 0.0)
        dist += norms[:, None] + norms[None, :] - 2.0 * gram
        root = np.sqrt(norms * (1.0 + 2.0 * gamma(SUB + 1)))
        scale += np.square(root[:, None] + root[None, :])
    g = gamma(-(-d // SUB) + 8)
    dist = np.maximum(0.5 * (dist + dist.T), 0.0)
    bounds = scale * (gamma(SUB + 1) + 3.0 * U64 + g) * (1.0 + 4.0 * U64)
    if host_dtype(X) != np.float32:
        bounds = bounds + 4.0 * d * 2.0**-1074
        bounds[~np.isfinite(dist)] = np.inf
    np.fill_diagonal(dist, 0.0)
    return dist, np.nextafter(bounds, np.inf)


def lower_median(xp, rows):
    """Per column, the lower median of the rows (robust: no minority of rows can move it)."""
    k = (rows.shape[0] - 1) // 2
    return xp.partition(rows, k, axis=0)[k] if hasattr(xp, "partition") else xp.sort(rows, axis=0)[k, :]


def split_float(v):
    """float64 array -> (M int64, E int64) with v = M * 2^E exactly."""
    m, e = np.frexp(v)
    return np.ldexp(m, 53).astype(np.int64), e.astype(np.int64) - 53


def two_sum(a, b):
    """s + t == a + b exactly (round to nearest, no overflow)."""
    s = a + b
    bp = s - a
    ap = s - bp
    return s, (a - ap) + (b - bp)


def product_terms(Mu, Eu, Mv, Ev):
    """The exact product (Mu 2^Eu)(Mv 2^Ev) as four (int64 value, shift) terms: 27-bit halves."""
    Hu, Lu = Mu >> 27, Mu & ((1 << 27) - 1)
    Hv, Lv = Mv >> 27, Mv & ((1 << 27) - 1)
    E = Eu + Ev
    return [(Hu * Hv, E + 54), (Hu * Lv, E + 27), (Lu * Hv, E + 27), (Lu * Lv, E)]


def exact_sum(terms, scale):
    """Exact sum of int64 values times powers of two, each a multiple of 2^-scale, times 2^scale."""
    values = np.concatenate([v for v, _ in terms])
    shifts = np.concatenate([s for _, s in terms]) + scale
    negative = shifts < 0  # the value is divisible by 2^-shift there: shifting right is exact
    if negative.any():
        values = np.where(negative, values >> np.clip(-shifts, 0, 63), values)
        shifts = np.maximum(shifts, 0)
    keep = values != 0
    values, shifts = values[keep], shifts[keep]
    if len(values) == 0:
        return 0
    low = int(shifts.min())
    index = shifts - low
    total = 0
    mask = (1 << PIECE) - 1
    for k in range(3):  # pieces of 18, 18 and the signed rest (< 2^19): float64 sums stay exact
        piece = values >> (PIECE * k) if k == 2 else (values >> (PIECE * k)) & mask
        sums = np.bincount(index, weights=piece.astype(np.float64))
        for b in np.flatnonzero(sums):
            total += int(sums[b]) << (low + int(b) + PIECE * k)
    return total


def exact_sums(values, shifts, groups, count, scale):
    """exact_sum per group: [sum of values[t] 2^shifts[t] over t with groups[t] == g, times
    2^scale, for g in range(count)], Python ints; values int64 below 2^53 in magnitude."""
    values = np.asarray(values, dtype=np.int64)
    shifts = np.asarray(shifts, dtype=np.int64) + scale
    groups = np.asarray(groups, dtype=np.int64)
    negative = shifts < 0  # the value is divisible by 2^-shift there: shifting right is exact
    if negative.any():
        values = np.where(negative, values >> np.clip(-shifts, 0, 63), values)
        shifts = np.maximum(shifts, 0)
    keep = values != 0
    values, shifts, groups = values[keep], shifts[keep], groups[keep]
    totals = [0] * count
    if len(values) == 0:
        return totals
    low = int(shifts.min())
    span = int(shifts.max()) - low + 1
    index = groups * span + (shifts - low)
    mask = (1 << PIECE) - 1
    for k in range(3):  # as exact_sum: pieces whose float64 bin sums stay exact
        piece = values >> (PIECE * k) if k == 2 else (values >> (PIECE * k)) & mask
        sums = np.bincount(index, weights=piece.astype(np.float64), minlength=count * span)
        nonzero = np.flatnonzero(sums)
        for b, v in zip(nonzero.tolist(), sums[nonzero].astype(np.int64).tolist()):
            g, s = divmod(b, span)
            totals[g] += v << (low + s + PIECE * k)
    return totals


def exact_sq_distance(a, b):
    """||a - b||^2 * 2^SCALE[dtype] as an exact Python int (a, b: finite rows of one dtype)."""
    scale = SCALE[host_dtype(a)]
    total = 0
    for c in range(0, a.shape[0], EXACT_CHUNK):
        x = to_numpy(a[c:min(a.shape[0], c + EXACT_CHUNK)]).astype(np.float64)
        y = to_numpy(b[c:min(b.shape[0], c + EXACT_CHUNK)]).astype(np.float64)
        s, t = two_sum(x, -y)
        Ms, Es = split_float(s)
        Mt, Et = split_float(t)
        terms = (product_terms(Ms, Es, Ms, Es) + product_terms(Ms, Es, Mt, Et + 1)  # 2 s t
                 + product_terms(Mt, Et, Mt, Et))
        total += exact_sum(terms, scale)
    return total


def exact_to_float(value, dtype):
    """An exact scaled distance as the nearest float64 (Python's int division rounds correctly)."""
    return value / (1 << SCALE[np.dtype(dtype)])
