"""Coordinate-wise rules: each output coordinate depends only on that coordinate of the n rows.

median        coordinate-wise median (Yin et al. 2018); n even: mean of the two middle values
trimmed-mean  drop the b largest and b smallest values per coordinate, average the rest (default b = f)
meamed        mean of the n - f values closest to the coordinate-wise median (Xie et al. 2018);
              at equal distance from the median the smaller value is kept

Non-finite entries: ordering follows NumPy's sort, -inf < finite < +inf < NaN, so a NaN counts as
larger than +inf. With at most f non-finite entries per coordinate and n within the rule's bound,
every value that reaches the output is finite.

How: column chunk by column chunk, each chunk is copied transposed into a (chunk, n) buffer and
sorted along its rows. Sorting short contiguous rows is what NumPy does fastest (SIMD sorting
networks); np.partition or np.median along axis 0 of the (n, d) input is 5-10x slower here. The
columns are split over a few threads. Extra memory: one (chunk, n) buffer per thread.
"""
from krum_mpi.aggregators.base import Aggregation, array_namespace
from krum_mpi.aggregators.parallel import column_ranges, run_ranges

SORT_CHUNK = 1 << 12  # columns per sorted block on CPU: (4096, 64) float32 = 1 MiB
GPU_SORT_CHUNK = 1 << 18


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
    n = X.shape[0] if rows is None else len(rows)
    chunk = SORT_CHUNK if xp.__name__ == "numpy" else GPU_SORT_CHUNK
    out = xp.empty(d, dtype=X.dtype)

    def work(start, stop):
        buffer = xp.empty((min(chunk, stop - start), n), dtype=X.dtype)
        for lo in range(start, stop, chunk):
            hi = min(stop, lo + chunk)
            block = buffer[:hi - lo]
            block[...] = (X[:, lo:hi] if rows is None else X[rows, lo:hi]).T
            block.sort(axis=1)
            out[lo:hi] = reduce(xp, block)

    run_ranges(work, column_ranges(xp, d, align=chunk))
    return out


def middle(xp, block):
    """Median of each row of a row-sorted block."""
    n = block.shape[1]
    if n % 2:
        return block[:, n // 2]
    return block[:, n // 2 - 1] * 0.5 + block[:, n // 2] * 0.5  # no overflow near the float max


def median(X, f):
    """Coordinate-wise median."""
    return Aggregation(per_sorted_chunk(X, middle))


def trimmed_mean(X, f, b=None):
    """Mean of the values left after dropping the b smallest and b largest per coordinate."""
    n = X.shape[0]
    b = f if b is None else b

    def kept_mean(xp, block):
        # offsets from the median are small: a float32 sum of them does not cancel; a BLAS
        # product with a ones vector sums the short rows twice as fast as .sum(axis=1)
        med = middle(xp, block)
        ones = xp.ones(n - 2 * b, dtype=block.dtype)
        return med + ((block[:, b:n - b] - med[:, None]) @ ones) / (n - 2 * b)

    return Aggregation(per_sorted_chunk(X, kept_mean))


def closest_to_median_mean(xp, block, keep):
    """Per row of a row-sorted (c, n) block: the mean of the ``keep`` values closest to the row's
    median. They form a window [a, a + keep) of the sorted row: a is the number of positions
    where the low end is strictly farther from the median than the value ``keep`` places above it
    (the condition is monotone in a). At equal distance the larger value goes, so the result
    depends on the values only, not on the order of the workers; NaN is the farthest.
    Summed after subtracting the median (small terms: no cancellation)."""
    c, n = block.shape
    med = middle(xp, block)[:, None]
    if keep < n:
        low_farther = (med - block[:, :n - keep]) > (block[:, keep:] - med)  # NaN compares False
        start = low_farther.sum(axis=1)[:, None]
    else:
        start = xp.zeros((c, 1), dtype=xp.int64)
    position = xp.arange(n)[None, :]
    inside = (position >= start) & (position < start + keep)
    offsets = xp.where(inside, block - med, 0.0)
    return med[:, 0] + offsets.sum(axis=1, dtype=xp.float64) / keep


def meamed(X, f):
    """Mean-around-median: the mean of the n - f values closest to the median, per coordinate."""
    n = X.shape[0]
    return Aggregation(per_sorted_chunk(X, lambda xp, block: closest_to_median_mean(xp, block, n - f)))
