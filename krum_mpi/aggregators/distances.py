"""Pairwise squared Euclidean distances between the rows of an (n, d) array, each with a RIGOROUS
bound on its error: the fast first step of every distance-based rule (Krum family, Bulyan, NNM, MDA).
The rules decide on the bounds and ask certify.py to recompute what the bounds cannot decide.

How (the derivation of the bound is in docs/aggregators.md, "Certified distances"):
- ||a - b||^2 = ||a||^2 + ||b||^2 - 2<a, b> turns the work into Gram products. Distances are
  translation invariant, so each block of columns is centred first: on one REFERENCE ROW, chosen
  robustly (the most central finite row of a first chunk, itself computed in float64 around the
  coordinate-wise median of that chunk, which no minority of rows can drag).
- A block's float32 Gram is summed in float64. For centred rows c_i, c_j of a block the computed
  distance errs by at most kappa (||c_i|| + ||c_j||)^2 + 4 cols 2^-149, where kappa = gamma_T + 3u
  (+ the float64 sums) and T is the longest chain of roundings of one dot product (block / lanes
  + log2 lanes for the compiled kernel, the sub-block length for the NumPy path).
- A finite row whose centred values would overflow float32 products (|c| > 2^50) is EXCLUDED from
  the Gram sums: its distance to the reference row is computed directly in float64 and its other
  distances are bounded by the triangle inequality through the reference (a huge row is then
  certainly far, at no extra pass over X). A row holding NaN or Inf is infinitely far from every
  other row (+inf, 0 to itself) and ``finite`` marks it False.
- On CPU with float32 rows the block Grams come from the compiled kernel (native/gram.c) when it is
  built; the NumPy code below stays the reference and the fallback. float64 input, and blocks the
  float32 path cannot do, take float64 Gram products (same bound with u = 2^-53).
- Memory: one (n, chunk) buffer and O(n^2) accumulators per thread; the input is never copied.
"""
from dataclasses import dataclass

import numpy as np

from krum_mpi import native
from krum_mpi.backend import astype, chunk_columns, host_dtype
from krum_mpi.aggregators.rowops import subtract_into
from krum_mpi.aggregators.base import array_namespace, to_numpy
from krum_mpi.aggregators.exact import direct_sq_distances, gamma, lower_median
from krum_mpi.aggregators.parallel import column_ranges, cpu_budget, run_ranges

CPU_CHUNK_BYTES = 1 << 22  # float32 chunk buffer on CPU: 4 MiB ((64, 16384), (16, 65536))
CPU_CHUNK = None  # columns per chunk on CPU; None: CPU_CHUNK_BYTES / (4 n)
GPU_CHUNK = 1 << 20  # on GPU: few launches, a bounded (n, 2^20) buffer
NATIVE_BLOCK_BYTES = 1 << 18  # compiled kernel: (n, block) float32 scratch, L2-resident
NATIVE_BLOCK_MAX = 256  # columns: the bound grows with block / lanes (256: 16 products per lane, a
                        # relative bound near 6e-6 instead of 1.7e-5 at 1024, so that the scores of
                        # i.i.d. rows at d = 1e7 separate without recomputation: Krum, n = 16, took
                        # 24 ms with 0 recomputed at 256, 27-31 ms at 128, 450 ms (22) at 1024)
NUMPY_SUB = 256  # columns per float32 product on the NumPy path: BLAS sums in an unknown order, so
                 # the bound is gamma_(NUMPY_SUB + 1); batched products keep the calls few
FIRST_CHUNK_BYTES = 1 << 18  # float64 copy of the first chunk on CPU, which picks the reference row
                              # (2048 columns at n = 16: plenty to find a central row; its median
                              # costs about as much as the Gram of the other 10^7 columns otherwise)
HUGE = 2.0**50  # centred values above this are excluded from float32 products (2^100 per product,
                # 2^110 per block sum: far from float32's 2^128)
POOR = 1e-3  # median relative bound above this: the reference was poor, one more pass around a
             # better one (an adversary can only slow the fast path down, never change a decision)
U32, U64 = 2.0**-24, 2.0**-53
LANES = {"avx512": 16, "avx2": 8, "generic": 4}  # float32 lanes of each compiled variant


@dataclass(frozen=True)
class Distances:
    """sq: (n, n) float64 squared distances, in X's namespace.
    finite: (n,) NumPy bool, False for rows holding NaN or Inf.
    err: (n, n) NumPy float64, a rigorous bound: |sq - exact| <= err for every finite pair.
    excluded: (n,) NumPy bool, finite rows whose distances come from the triangle inequality."""

    sq: object
    finite: np.ndarray
    err: np.ndarray
    excluded: np.ndarray | None = None


def first_chunk(xp, n):
    """Columns of the float64 first chunk (a GPU takes GPU_CHUNK at once)."""
    return chunk_columns(xp, GPU_CHUNK, max(1024, FIRST_CHUNK_BYTES // (8 * n)))


def default_chunk(xp, n):
    return chunk_columns(xp, GPU_CHUNK, CPU_CHUNK or max(1024, CPU_CHUNK_BYTES // (4 * n)))


@cpu_budget
def sq_distances(X, chunk=None, precise=None):
    """Squared distances between the rows of X (NumPy or CuPy, float32 or float64) with rigorous
    error bounds, see module doc. precise=True: float64 products throughout."""
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf rows are expected input
        xp = array_namespace(X)
        n, d = X.shape
        chunk = max(1, int(chunk or default_chunk(xp, n)))
        if precise is None:
            precise = host_dtype(X) != np.float32
        first_stop = min(chunk, first_chunk(xp, n), d)
        slices = [slice(s, min(s + chunk, d)) for s in range(first_stop, d, chunk)]
        first = GramSum(xp, n, np.float64, first_stop + 1)
        first.add_precise(X[:, :first_stop], None)  # around the coordinate-wise median
        candidates = central_order(to_numpy(first.distances()), to_numpy(first.finite))
        result = accumulate(X, slices, candidates, precise, [first])
        if precise or median_relative_bound(result) <= POOR:
            return result
        again = accumulate(X, slices, central_order(to_numpy(result.sq), result.finite), precise, [first])
        return again if median_relative_bound(again) < median_relative_bound(result) else result


def median_relative_bound(result):
    off = result.finite[:, None] & result.finite[None, :] & ~np.eye(len(result.finite), dtype=bool)
    sq = to_numpy(result.sq)[off]
    if sq.size == 0:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.median(np.where(sq > 0, result.err[off] / sq, np.inf)))


def accumulate(X, slices, candidates, precise, done=()):
    """Sum the chunk Grams (plus the GramSums already ``done``) into bounded distances, centred on
    the first of the ``candidates`` rows (the compiled path moves to the next one where a candidate
    turns out not finite); on CPU the chunks are split over the thread budget."""
    reference = int(candidates[0])
    xp = array_namespace(X)
    n = X.shape[0]
    chunk = (slices[0].stop - slices[0].start) if slices else 1
    lib = None if precise else gram_library(X)

    def work(first, stop):
        if lib is not None:
            return native_work(lib, X, slices[first].start, slices[stop - 1].stop, candidates, chunk)
        fast = GramSum(xp, n, X.dtype, NUMPY_SUB + 1)  # float32 sub-block Grams around the reference
        slow = GramSum(xp, n, np.float64, chunk + 1)  # float64 ones: the precise path and the fallback
        with np.errstate(invalid="ignore", over="ignore"):  # per thread: NaN/Inf rows are expected
            for cols in slices[first:stop]:
                if precise or not fast.add_fast(X, cols, reference):
                    slow.add_precise(X[:, cols], reference, fast.active())
        return fast, slow

    ranges = column_ranges(xp, len(slices), align=4) if slices else []
    parts = list(done) + [part for pair in run_ranges(work, ranges) for part in pair]
    return combine(X, parts, candidates)


def gram_library(X):
    """The compiled Gram kernel for X, or None (X not read in place, or the kernel not built)."""
    return native.library("gram") if native.float32_rows(X) else None


def native_block(n, chunk):
    """Columns per block of the compiled kernel: at most ``chunk``, scratch within NATIVE_BLOCK_BYTES."""
    block = max(64, min(NATIVE_BLOCK_MAX, NATIVE_BLOCK_BYTES // (4 * n) // 64 * 64))
    return max(1, min(chunk, block))


def native_work(lib, X, col0, col1, candidates, chunk):
    """The columns [col0, col1) on one thread by the compiled kernel: (fast, slow) GramSums like the
    NumPy path. The kernel hands back a block where the reference row is not finite (the next
    candidate finite there takes over: distances are sums over blocks, each may have its own
    centre), where a finite row overflowed float32 (that row is excluded and the block redone), or
    that it cannot do at all (that block goes the precise way)."""
    candidates = [int(i) for i in candidates]
    reference = candidates[0]
    n = X.shape[0]
    block = native_block(n, chunk)
    lanes = LANES.get(lib.krum_gram_isa().decode(), 4)
    fast = GramSum(np, n, X.dtype, -(-block // lanes) + int(np.log2(lanes)) + 2)
    slow = GramSum(np, n, np.float64, block + 1)
    work = np.empty(lib.krum_gram_work_size(n, block), dtype=np.float32)
    mask = np.ones(n, dtype=np.uint8)  # the kernel's "use this row": cleared for non-finite and excluded rows
    c = col0
    while c < col1:
        stop_at = lib.krum_gram_f32(X.ctypes.data, n, X.strides[0] // 4, c, col1, reference, block,
                                    fast.gram.ctypes.data, fast.norm_squares.ctypes.data,
                                    mask.ctypes.data, work.ctypes.data)
        fast.count_columns(stop_at - c, block)
        c = stop_at
        if c < col1:
            stop = min(c + block, col1)
            if not bool(np.isfinite(X[reference, c:stop]).all()):
                usable = [i for i in candidates if mask[i] and np.isfinite(X[i, c:stop]).all()]
                if usable:
                    reference = usable[0]
                    continue
            huge = huge_rows(X[:, c:stop], reference, mask.astype(bool))
            if huge.any():  # redo this block without them
                fast.excluded |= huge
                mask[huge] = 0
                continue
            with np.errstate(invalid="ignore", over="ignore"):
                slow.add_precise(X[:, c:stop], reference, mask.astype(bool))
            c = stop
    fast.finite &= mask.astype(bool) | fast.excluded
    return fast, slow


def huge_rows(block, reference, active):
    """Rows of a block, finite there and still active, whose values are more than HUGE from the
    reference row's."""
    xp = array_namespace(block)
    b = astype(xp, block, xp.float64)
    finite = xp.all(xp.isfinite(b), axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        spread = xp.max(xp.abs(b - b[reference, :]), axis=1)
    return to_numpy(finite & (spread > HUGE)) & active


class GramSum:
    """Running float64 sum of block Grams of centred rows (the centre may change between blocks:
    distances are sums over blocks), the finite-row and excluded-row masks, and what the error
    bound needs: the dtype of the products, T (the longest rounding chain of one dot product),
    the columns and the float64 block sums."""

    def __init__(self, xp, n, dtype, chain):
        self.xp = xp
        self.dtype = np.dtype(dtype)
        self.chain = chain
        self.cols = 0
        self.blocks = 0
        self.buffer = None
        self.gram = xp.zeros((n, n), dtype=xp.float64)
        self.norm_squares = xp.zeros(n, dtype=xp.float64)  # written by the compiled kernel, unused
        self.finite = np.ones(n, dtype=bool)
        self.excluded = np.zeros(n, dtype=bool)

    def active(self):
        return self.finite & ~self.excluded

    def count_columns(self, cols, block):
        self.cols += cols
        self.blocks += -(-cols // block)

    def add_fast(self, X, cols, reference):
        """float32 Gram of one chunk centred on the reference row (in sub-blocks of NUMPY_SUB
        columns); False if the chunk must go the precise way (the reference row is not finite here)."""
        xp = self.xp
        if self.buffer is None:
            self.buffer = xp.empty((X.shape[0], cols.stop - cols.start), dtype=X.dtype)
        centred = subtract_into(xp, X[:, cols], X[reference, cols][None, :], self.buffer[:, :cols.stop - cols.start])
        centred = xp.where(xp.asarray(self.active())[:, None], centred, 0)
        gram = sub_block_gram(xp, centred)
        if not bool(xp.all(xp.isfinite(gram))):  # the rare case: sort it out, redo
            block = X[:, cols]
            if not bool(xp.all(xp.isfinite(block[reference, :]))):
                return False
            self.finite &= to_numpy(xp.all(xp.isfinite(block), axis=1))
            self.excluded |= huge_rows(block, reference, self.active())
            centred = xp.where(xp.asarray(self.active())[:, None], centred, 0)
            gram = sub_block_gram(xp, centred)
        self.gram += gram
        self.count_columns(cols.stop - cols.start, NUMPY_SUB)
        return True

    def add_precise(self, block, reference, active=None):
        """float64 Gram of one chunk. Non-finite rows are zeroed (they would spread NaN to every
        entry) and marked; the centre is the reference row if finite here, else the coordinate-wise
        median of the finite rows."""
        xp = self.xp
        b = astype(xp, block, xp.float64)  # the (n, chunk) copy of this path
        ok = xp.all(xp.isfinite(b), axis=1)
        if not bool(xp.all(ok)):
            b = xp.where(ok[:, None], b, 0.0)
        if reference is not None and bool(ok[reference]):
            b = b - b[reference, :][None, :]
        elif bool(xp.any(ok)):
            b = b - lower_median(xp, b[ok])
        if active is not None:
            b = xp.where(xp.asarray(active)[:, None], b, 0.0)
        self.gram += b @ b.T
        self.finite &= to_numpy(ok)
        self.count_columns(block.shape[1], block.shape[1])

    def distances(self):
        norms = diagonal(self.xp, self.gram)
        return norms[:, None] + norms[None, :] - 2.0 * self.gram

    def error(self, parts):
        """Rigorous bound on each distance's error (module doc), ``parts`` GramSums being added."""
        if self.cols == 0:
            return 0.0
        u = U32 if self.dtype == np.float32 else U64
        tiny = 2.0**-149 if self.dtype == np.float32 else 2.0**-1074  # underflow of one product
        g = gamma(self.chain, u)
        under = self.cols * tiny
        norms = np.maximum(np.diag(to_numpy(self.gram)), 0.0) * (1.0 + 2.0 * g) + under
        root = np.sqrt(norms) * (1.0 + 2.0 * U64)
        kappa = (g + 3.0 * u + gamma(self.blocks + 3 * parts + 8)) * (1.0 + 16.0 * U64)
        return kappa * np.square(root[:, None] + root[None, :]) + 4.0 * under


def sub_block_gram(xp, centred):
    """float64 sum of the float32 Grams of NUMPY_SUB-column sub-blocks (one batched product)."""
    n, w = centred.shape
    q = w // NUMPY_SUB
    gram = xp.zeros((n, n), dtype=xp.float64)
    if q:
        batches = xp.permute_dims(xp.reshape(centred[:, :q * NUMPY_SUB], (n, q, NUMPY_SUB)), (1, 0, 2))
        gram += xp.sum(astype(xp, xp.matmul(batches, xp.permute_dims(batches, (0, 2, 1))), xp.float64), axis=0)
    if w > q * NUMPY_SUB:
        rest = centred[:, q * NUMPY_SUB:]
        gram += astype(xp, rest @ rest.T, xp.float64)
    return gram


def diagonal(xp, square):
    """The diagonal of a square matrix (the standard's linalg.diagonal; NumPy and CuPy: diag)."""
    return xp.diag(square) if hasattr(xp, "diag") else xp.linalg.diagonal(square)


def central_order(dist, finite):
    """Finite rows by increasing sum of distances to their n//2 nearest rows (most central first)."""
    rows = np.flatnonzero(finite)
    if len(rows) == 0:
        return [0]
    sub = np.nan_to_num(dist[np.ix_(rows, rows)], nan=np.inf)
    k = max(1, len(rows) // 2)
    spread = np.sort(sub, axis=1)[:, :k + 1].sum(axis=1)  # k nearest others plus itself (0)
    return rows[np.argsort(spread, kind="stable")].tolist()


def central_row(dist, finite):
    """Index of the finite row with the smallest sum of distances to its n//2 nearest rows."""
    return int(central_order(dist, finite)[0])


def combine(X, parts, candidates):
    """Sum the parts into symmetric distances, clamped at 0, zero diagonal, +inf for non-finite
    rows, with their bounds; excluded rows bounded through the first finite candidate row."""
    xp = array_namespace(X)
    finite = np.logical_and.reduce([p.finite for p in parts])
    excluded = np.logical_or.reduce([p.excluded for p in parts]) & finite
    for h in np.flatnonzero(excluded):  # never seen by the kernel after its exclusion: check it
        if not bool(xp.all(xp.isfinite(X[int(h), :]))):
            finite[h], excluded[h] = False, False
    dist = to_numpy(sum(p.distances() for p in parts))
    err = sum(p.error(len(parts)) for p in parts) * np.ones_like(dist)
    dist = 0.5 * (dist + dist.T)
    err = np.maximum(err, err.T) * (1.0 + 4.0 * U64)
    dist = np.maximum(dist, 0.0)
    pivots = [int(i) for i in candidates if finite[i] and not excluded[i]]
    if excluded.any() and pivots:
        dist, err = bound_excluded(X, dist, err, excluded, finite, pivots[0])
    elif excluded.any():  # no row to bound them through: their distances are unknown, to be refined
        err[excluded, :] = err[:, excluded] = np.inf
    bad = ~finite
    dist = np.where(bad[:, None] | bad[None, :], np.inf, dist)
    err = np.where(bad[:, None] | bad[None, :], 0.0, err)
    np.fill_diagonal(dist, 0.0)
    np.fill_diagonal(err, 0.0)
    return Distances(xp.asarray(dist), finite, err, excluded)


def bound_excluded(X, dist, err, excluded, finite, reference):
    """Intervals for the pairs of an excluded row h: sqrt D(h, j) lies within sqrt D(j, r) of
    sqrt D(h, r) (triangle inequality through the reference row r, D(h, r) computed directly)."""
    rows = np.flatnonzero(excluded)
    values, bounds = direct_sq_distances(X, [(int(h), reference) for h in rows])
    lo_r = np.maximum(dist[:, reference] - err[:, reference], 0.0)  # every row j to r
    hi_r = dist[:, reference] + err[:, reference]
    lo_r[rows] = np.maximum(values - bounds, 0.0)
    hi_r[rows] = values + bounds
    a_lo, a_hi = np.sqrt(lo_r) * (1 - 4 * U64), np.sqrt(hi_r) * (1 + 4 * U64)
    dist, err = dist.copy(), err.copy()
    for h in rows:
        low = np.maximum(np.maximum(a_lo[h] - a_hi, a_lo - a_hi[h]), 0.0) ** 2 * (1 - 8 * U64)
        high = (a_hi[h] + a_hi) ** 2 * (1 + 8 * U64)
        dist[h, :] = dist[:, h] = 0.5 * (low + high)
        err[h, :] = err[:, h] = 0.5 * (high - low) * (1 + 4 * U64)
    for h, v, b in zip(rows, values, bounds):  # the pair with the reference itself: direct
        dist[h, reference] = dist[reference, h] = v
        err[h, reference] = err[reference, h] = b
    return dist, err
