"""Weighted sums of rows (the averaging rules' kernel; rows.py builds the rows source on it).

They go column chunk by column chunk and never copy the whole input. Rows with weight 0 are left
out of the product, so a non-finite row that a rule gave no weight cannot turn the result into NaN
(0 * NaN = NaN in a BLAS product). The weighted sums have a compiled twin (krum_mpi/native/rows.c)
for float32 NumPy input: same centring, same non-finite semantics, only the weighted rows read.
"""
import numpy as np

from krum_mpi import native
from krum_mpi.aggregators.base import array_namespace
from krum_mpi.backend import astype, chunk_columns, on_host
from krum_mpi.aggregators.parallel import column_ranges, run_ranges

CHUNK = 1 << 13  # columns per chunk on CPU: (n, CHUNK) float64 temporaries stay in L2/L3


def column_slices(xp, d, chunk=None, offset=0):
    """Column chunks of [offset, offset + d): fixed-size on CPU (cache), one on GPU (fewer launches)."""
    size = int(chunk) if chunk else chunk_columns(xp, d, CHUNK)
    for start in range(0, d, size):
        yield slice(offset + start, offset + min(start + size, d))


def column_chunks(xp, X, start, stop):
    """(columns, scratch) per chunk of X's columns [start, stop): ``scratch`` is an (n, width) view of
    one buffer reused by every chunk (X itself is never copied)."""
    buffer = None
    for cols in column_slices(xp, stop - start, offset=start):
        if buffer is None:
            buffer = xp.empty((X.shape[0], cols.stop - cols.start), dtype=X.dtype)
        yield cols, buffer[:, :cols.stop - cols.start]


def combine_rows(X, weights):
    """sum_i weights[i] * X[i] over the rows with a non-zero weight: (d,) in X's namespace and dtype."""
    return combine_rows_many(X, np.asarray(weights, dtype=np.float64)[None, :])[0, :]


def combine_rows_many(X, mixing):
    """mixing @ X for a NumPy (k, n) mixing matrix; (k, d) in X's dtype.

    Per chunk the rows are centred on the row with the largest summed |weight|, into a reused buffer,
    and multiplied in X's dtype: the offsets are small, so the product does not cancel
    (sum_i w_i x_i = sum_i w_i (x_i - x_r) + (sum_i w_i) x_r), the rows added one by one in
    increasing order (a BLAS product's order may depend on the block's width: the sharded placement
    must get, block by block, bitwise the values of the whole rows). A column whose result is not finite is
    redone in float64 with the non-finite entries masked, so that a non-finite row reaches only the
    outputs that give it a weight (0 * NaN = NaN in a plain product)."""
    xp = array_namespace(X)
    n, d = X.shape
    mixing = np.asarray(mixing, dtype=np.float64)
    out = native_combine_rows(X, mixing)
    if out is not None:
        return out
    # the row with the largest summed |weight| (first on ties): centring on a row that carries little
    # weight, a huge row next to ordinary ones, would cancel the others (rows.c chooses the same way)
    anchor_row = int(np.argmax(np.abs(mixing).sum(axis=0)))
    weights = xp.asarray(mixing, dtype=X.dtype)
    weight_sums = xp.asarray(mixing.sum(axis=1), dtype=X.dtype)[:, None]
    used = [int(r) for r in np.flatnonzero(np.any(mixing != 0, axis=0))]
    out = xp.empty((mixing.shape[0], d), dtype=X.dtype)

    def work(start, stop):
        with np.errstate(invalid="ignore", over="ignore"):  # per thread: NaN/Inf rows are expected
            for cols, centred in column_chunks(xp, X, start, stop):
                anchor = X[anchor_row, cols]
                centred = subtract_into(xp, X[:, cols], anchor[None, :], centred)
                result = rows_in_order(xp, weights, used, centred) + weight_sums * anchor[None, :]
                bad = ~xp.all(xp.isfinite(result), axis=0)
                if bool(xp.any(bad)):   # such columns only: no column depends on its neighbours
                    result = xp.where(bad[None, :], astype(xp, masked_combine(xp, mixing, X[:, cols]), X.dtype), result)
                out[:, cols] = result

    run_ranges(work, column_ranges(xp, d, align=CHUNK))
    return out


def native_combine_rows(X, mixing):
    """mixing @ X by the compiled kernel (rows.c), or None where it does not apply: not built or
    disabled, X not read in place (krum_mpi.native.float32_rows), non-finite weights, or no non-zero
    weight (the NumPy path then decides, as before)."""
    if not (native.float32_rows(X) and mixing.ndim == 2 and mixing.shape[1] == X.shape[0] and mixing.shape[0] > 0):
        return None
    if not (np.isfinite(mixing).all() and (mixing != 0).any()):
        return None
    lib = native.library("rows")
    if lib is None:
        return None
    k, d = mixing.shape[0], X.shape[1]
    mixing = np.ascontiguousarray(mixing)
    out = np.empty((k, d), dtype=np.float32)

    def work(start, stop):  # ctypes releases the GIL: the column ranges run in parallel
        if lib.krum_combine_rows(X.ctypes.data, X.shape[0], X.strides[0] // 4, mixing.ctypes.data, k, start, stop,
                                 out.ctypes.data, d) != 0:
            raise MemoryError("krum_combine_rows: out of memory")

    run_ranges(work, column_ranges(np, d, align=CHUNK))
    return out


def rows_in_order(xp, weights, used, centred):
    """(k, w) sum over the ``used`` rows r, in increasing order, of weights[:, r] * centred[r]: one
    rounding per product and per sum, each column on its own."""
    total = None
    for r in used:
        term = weights[:, r:r + 1] * centred[r:r + 1, :]
        total = term if total is None else total + term
    if total is None:
        return xp.zeros((weights.shape[0], centred.shape[1]), dtype=centred.dtype)
    return total


def subtract_into(xp, a, b, out):
    """a - b, written into ``out`` where the namespace has output arguments (NumPy: no temporary)."""
    if on_host(xp):
        return xp.subtract(a, b, out=out)
    return a - b


def masked_combine(xp, mixing, block):
    """float64 mixing @ block where only the outputs that weight a non-finite entry become NaN
    (0 * NaN = NaN in a plain product would reach every output)."""
    block = astype(xp, block, xp.float64)
    finite = xp.isfinite(block)
    touches = xp.asarray((mixing != 0).astype(np.float64))
    hit = touches @ astype(xp, ~finite, xp.float64) > 0
    weighted = xp.asarray(mixing) @ xp.where(finite, block, 0.0)
    return xp.where(hit, xp.nan, weighted)
