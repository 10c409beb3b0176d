"""Coordinate-wise rules: each output coordinate depends only on that coordinate of the n rows.

median        coordinate-wise median (Yin et al. 2018); n even: the correctly rounded mean of the two
              middle values
trimmed-mean  drop the b largest and b smallest values per coordinate, average the rest (default b = f)
meamed        mean of the n - f values closest to the coordinate-wise median (Xie et al. 2018);
              at equal distance from the median the smaller value is kept; the distances are
              compared exactly

Non-finite entries: ordering follows NumPy's sort, -inf < finite < +inf < NaN, so a NaN counts as
larger than +inf. With at most f non-finite entries per coordinate and n within the rule's bound,
every value that reaches the output is finite.

How: column chunk by column chunk, each chunk is copied transposed into a (chunk, n) buffer and
sorted along its rows. Sorting short contiguous rows is what NumPy does fastest (SIMD sorting
networks); np.partition or np.median along axis 0 of the (n, d) input is 5-10x slower here. The
columns are split over a few threads. Extra memory: one (chunk, n) buffer per thread.

Huge finite values: the fast paths sum offsets from the median in float32, which overflows when the
kept values span more than float32's range (3.4e38 and -3.4e38 both kept), although the mean of
finite values always fits. ``repair_overflow`` recomputes the columns that came out non-finite from
a float64 copy (one check of the (d,) output: ordinary inputs pay nothing else).

Compiled path (krum_mpi/native/order.c, when built): NumPy float32 input with unit column stride
(any row stride) and at most ``krum_order_max_rows()`` (128) rows in use goes to a C kernel that
sorts 16 (AVX-512) or 8 columns at a time with vector sorting networks straight from the rows, no
transposed copy, same ordering and arithmetic; the threads split the columns the same way. Anything
else (float64, GPU arrays, more rows, KRUM_MPI_NATIVE=0) takes the NumPy path above, the reference.
"""
import numpy as np

from krum_mpi import native
from krum_mpi.aggregators.base import Aggregation, array_namespace
from krum_mpi.backend import astype, fancy_indexing, on_host
from krum_mpi.aggregators.parallel import column_ranges, run_ranges

SORT_CHUNK = 1 << 12  # columns per sorted block on CPU: (4096, 64) float32 = 1 MiB
GPU_SORT_CHUNK = 1 << 18
NATIVE_ALIGN = 1 << 10  # column range starts for the compiled kernel: whole cache lines per thread
ORDER_MEDIAN, ORDER_TRIMMED, ORDER_CLOSEST = 0, 1, 2  # krum_order_reduce's modes


def check_coordinatewise_bounds(rule, n, f, trim):
    """Median-type rules need a majority of honest rows in every coordinate: n >= 2 trim + 1."""
    name = "b" if rule == "trimmed-mean" else "f"
    if n < 2 * trim + 1:
        raise ValueError(f"{rule} needs n >= 2*{name} + 1, got n={n}, {name}={trim}: lower it or add workers")


def per_sorted_chunk(X, reduce, rows=None):
    """out[cols] = reduce(xp, sorted (c, n) block of X[rows, cols]) for every column chunk; (d,).

    ``rows``: an index array of the rows to use (Bulyan's selection), default all."""
    xp = array_namespace(X)
    d = X.shape[1]
    n = X.shape[0] if rows is None else rows.shape[0]
    chunk = SORT_CHUNK if xp.__name__ == "numpy" else GPU_SORT_CHUNK
    out = xp.empty(d, dtype=X.dtype)

    def work(start, stop):
        buffer = xp.empty((min(chunk, stop - start), n), dtype=X.dtype)
        with np.errstate(over="ignore", invalid="ignore"):   # per thread: repair_overflow redoes such columns
            for lo in range(start, stop, chunk):
                hi = min(stop, lo + chunk)
                part = X[:, lo:hi] if rows is None else xp.take(X[:, lo:hi], rows, axis=0)
                if on_host(xp):   # sorted in place in one reused buffer
                    block = buffer[:hi - lo, :]
                    block[...] = part.T
                    block.sort(axis=1)
                else:
                    block = xp.sort(part.T, axis=1)
                out[lo:hi] = astype(xp, reduce(xp, block), out.dtype)

    run_ranges(work, column_ranges(xp, d, align=chunk))
    return out


def repair_overflow(X, vector, reduce, rows=None):
    """``vector`` with its non-finite columns recomputed as reduce(xp, sorted float64 block).

    For float32 X only: a float64 sum of n float32 values cannot overflow, so a column comes out
    finite whenever the rule's exact value is finite; a column whose kept values are NaN or
    infinite comes out non-finite again, as defined. The bad columns go in chunks (no copy of X)."""
    xp = array_namespace(X)
    if X.dtype != xp.float32:
        return vector
    bad = ~xp.isfinite(vector)
    if not bool(xp.any(bad)):
        return vector
    if not fancy_indexing(xp):   # no scatter in the namespace: every column in float64 (rare path)
        repaired = repair_block(xp, X if rows is None else xp.take(X, rows, axis=0), reduce)
        return xp.where(bad, astype(xp, repaired, vector.dtype), vector)
    cols = xp.flatnonzero(bad)
    with np.errstate(invalid="ignore", over="ignore"):     # inf - inf in columns that are NaN anyway
        for lo in range(0, int(cols.size), SORT_CHUNK):
            part = cols[lo:lo + SORT_CHUNK]
            block = X[:, part] if rows is None else X[:, part][xp.asarray(rows)]
            vector[part] = astype(xp, repair_block(xp, block, reduce), vector.dtype)
    return vector


def repair_block(xp, block, reduce):
    """reduce(xp, sorted float64 copy of the block's columns)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return reduce(xp, xp.sort(astype(xp, block.T, xp.float64), axis=1))


def order_library(X, n):
    """The compiled order kernel for n rows of X, or None: X read in place with a non-negative row
    stride, 1 <= n <= the kernel's row limit."""
    lib = native.library("order") if native.float32_rows(X) and X.strides[0] >= 0 else None
    return lib if lib is not None and n <= lib.krum_order_max_rows() else None


def native_order(X, mode, param=0, rows=None):
    """The rule (ORDER_MEDIAN; ORDER_TRIMMED dropping ``param`` at each end; ORDER_CLOSEST keeping
    ``param``) over X[rows] by the compiled kernel, threads over column ranges; None when the
    kernel does not apply (the caller then runs the NumPy path)."""
    n = X.shape[0] if rows is None else rows.shape[0]
    lib = order_library(X, n)
    if lib is None:
        return None
    if (mode == ORDER_TRIMMED and not 0 <= param < n - param) or (mode == ORDER_CLOSEST and not 1 <= param <= n):
        return None
    rows_ptr = None
    if rows is not None:
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.min() < 0 or rows.max() >= X.shape[0]:  # negative or bad indices: NumPy's rules
            return None
        rows_ptr = rows.ctypes.data
    d = X.shape[1]
    out = np.empty(d, dtype=np.float32)

    def work(start, stop):
        status = lib.krum_order_reduce(X.ctypes.data, X.strides[0] // 4, rows_ptr, n, start, stop, mode, param,
                                       out.ctypes.data)
        if status != 0:
            raise RuntimeError(f"krum_order_reduce refused n={n}, mode={mode}, param={param}")

    run_ranges(work, column_ranges(np, d, align=NATIVE_ALIGN))
    return out


def middle(xp, block):
    """Median of each row of a row-sorted block; for an even count the correctly rounded mean of the
    two middle values. float32: their sum in float64 is one rounding and halving it is exact, and
    float64 carries more than 2 x 24 + 2 bits, so rounding that to float32 is the correctly rounded
    (a + b) / 2 (Figueroa, "When is double rounding innocuous?", 1995), subnormals included
    (0.5 a + 0.5 b rounds each half first: the median of 2^-149 and 2^-149 came out 0). float64:
    a + b rounds once, and halving is exact unless the sum is below 2^-1021, where it is exact;
    only a sum beyond float64's range (both values huge, so halving them is exact) takes 0.5 a + 0.5 b."""
    n = block.shape[1]
    if n % 2:
        return block[:, n // 2]
    a, b = block[:, n // 2 - 1], block[:, n // 2]
    if block.dtype == xp.float32:
        return astype(xp, (astype(xp, a, xp.float64) + astype(xp, b, xp.float64)) * 0.5, xp.float32)
    total = a + b
    out = total * 0.5
    overflow = xp.isinf(total) & xp.isfinite(a) & xp.isfinite(b)
    if bool(xp.any(overflow)):
        out = xp.where(overflow, a * 0.5 + b * 0.5, out)
    return out


def two_sum(xp, a, b):
    """(s, e) with s = fl(a + b) and s + e = a + b exactly (Knuth's TwoSum; exact in float64 for any
    a, b whose sum does not overflow, subnormals included)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def sum_greater(xp, a, b):
    """Exactly a[0] + a[1] > b[0] + b[1], elementwise, from their TwoSums (s, e): rounding is
    monotone, so a larger rounded sum means a larger exact sum and equal rounded sums are decided by
    the exact remainders. NaN anywhere (or inf - inf) compares False."""
    (sa, ea), (sb, eb) = a, b
    return (sa > sb) | ((sa == sb) & (ea > eb))


def median(X, f):
    """Coordinate-wise median (for an even count the correctly rounded mean of the middle values)."""
    vector = native_order(X, ORDER_MEDIAN)
    return Aggregation(per_sorted_chunk(X, middle) if vector is None else vector)


def trimmed_mean(X, f, b=None):
    """Mean of the values left after dropping the b smallest and b largest per coordinate."""
    b = f if b is None else b
    reduce = lambda xp, block: kept_mean(xp, block, b)  # noqa: E731
    vector = native_order(X, ORDER_TRIMMED, b)
    if vector is None:
        vector = per_sorted_chunk(X, reduce)
    return Aggregation(repair_overflow(X, vector, reduce))


def kept_mean(xp, block, b):
    """Per row of a row-sorted (c, n) block: the mean of positions [b, n - b), in the block's dtype.
    Offsets from the median are small: a float32 sum of them does not cancel. Summed row by row
    (a BLAS product's order may depend on how many rows the block has: sharded blocks must give the
    whole rows' values)."""
    n = block.shape[1]
    med = middle(xp, block)
    return med + xp.sum(block[:, b:n - b] - med[:, None], axis=1) / (n - 2 * b)


def closest_to_median_mean(xp, block, keep):
    """Per row of a row-sorted (c, n) block: the mean of the ``keep`` values closest to the row's
    median. They form a window [a, a + keep) of the sorted row: a is the number of positions p
    where the low end is strictly farther from the median than the value ``keep`` places above it
    (monotone in p). With m the exact median (a + b) / 2 of the middle values (a = b for odd n),
    m - x_p > x_(p+keep) - m is a + b > x_p + x_(p+keep): two sums of two values, compared exactly
    from their TwoSums in float64 (never on rounded distances, which made a strictly closer value
    drop out: the window of -2^-25, 1, 2 around 1 kept -2^-25). At equal distance the larger value
    goes, so the result depends on the values only, not on the order of the workers; NaN is the
    farthest. The mean is taken of offsets from the median (small terms: no cancellation)."""
    c, n = block.shape
    med = middle(xp, block)[:, None]
    if keep < n:
        start = xp.sum(astype(xp, low_farther(xp, block, keep), xp.int64), axis=1)[:, None]
    else:
        start = xp.zeros((c, 1), dtype=xp.int64)
    position = xp.arange(n)[None, :]
    inside = (position >= start) & (position < start + keep)
    offsets = xp.where(inside, block - med, 0.0)
    return med[:, 0] + xp.sum(offsets, axis=1, dtype=xp.float64) / keep


def low_farther(xp, block, keep):
    """(c, n - keep) booleans: a + b > x_p + x_(p+keep) exactly, a and b the middle values. Sums in
    the block's dtype first: rounding is monotone, so unequal rounded sums (overflow to +-inf
    included) already order the exact ones; only when some are equal (rare outside ties) are those
    decided from TwoSums in float64 (as the compiled kernel does). NaN compares False."""
    n = block.shape[1]
    mid = slice((n - 1) // 2, (n - 1) // 2 + 1), slice(n // 2, n // 2 + 1)
    centre = block[:, mid[0]] + block[:, mid[1]]
    ends = block[:, :n - keep] + block[:, keep:]
    farther = centre > ends
    tied = centre == ends
    if bool(xp.any(tied)):
        wide = astype(xp, block, xp.float64) if block.dtype == xp.float32 else block
        exact = sum_greater(xp, two_sum(xp, wide[:, mid[0]], wide[:, mid[1]]),
                            two_sum(xp, wide[:, :n - keep], wide[:, keep:]))
        farther = xp.where(tied, exact, farther)
    return farther


def meamed(X, f):
    """Mean-around-median: the mean of the n - f values closest to the median, per coordinate."""
    return Aggregation(closest_mean(X, X.shape[0] - f))


def closest_mean(X, keep, rows=None):
    """Per coordinate, the mean of the ``keep`` values of X[rows] closest to their median (meamed;
    Bulyan's coordinate stage on its selected rows); (d,)."""
    reduce = lambda xp, block: closest_to_median_mean(xp, block, keep)  # noqa: E731
    vector = native_order(X, ORDER_CLOSEST, keep, rows)
    if vector is None:
        vector = per_sorted_chunk(X, reduce, rows=rows)
    return repair_overflow(X, vector, reduce, rows=rows)
