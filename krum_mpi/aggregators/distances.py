"""Pairwise squared Euclidean distances between the rows of an (n, d) array: one kernel for Krum,
Multi-Krum, Bulyan, NNM and MDA.

Why it is built this way:
- ||a - b||^2 = ||a||^2 + ||b||^2 - 2<a, b> turns the work into one Gram product (BLAS speed), but in
  float32 it cancels when the rows share a large common part. Distances are translation invariant,
  so every column chunk is centred on one REFERENCE ROW before its Gram product: the products are
  then of the size of the distances themselves. The reference is the most central row of the first
  chunk (a robust medoid, computed in float64), not the mean, which Byzantine rows can drag away.
- Each chunk's float32 Gram is summed in float64; the result is symmetric, clamped at 0, with a zero
  diagonal. An absolute error estimate comes with it (``err``), which the rules use to call two
  scores tied. When the reference turns out poor (estimated relative error of the Krum-type scores
  above PRECISE_TOL) the distances are recomputed in float64 around a better reference. float64
  input always takes the float64 ("precise") path.
- Memory: one (n, chunk) buffer and O(n^2) accumulators; the input is never copied.
- On CPU with float32 rows the chunk Grams come from the compiled kernel (native/gram.c) when it is
  built: the same centring and float64 sums, in blocks of NATIVE_BLOCK_BYTES that stay in cache,
  upper triangle only; the NumPy code below stays the reference and the fallback.
- A row holding NaN or Inf is infinitely far from every other row: its distances are +inf (0 to
  itself) and ``finite`` marks it False.
"""
from dataclasses import dataclass

import numpy as np

from krum_mpi import native
from krum_mpi.aggregators.base import array_namespace, to_numpy
from krum_mpi.aggregators.parallel import column_ranges, cpu_budget, run_ranges

CPU_CHUNK_BYTES = 1 << 22  # float32 chunk buffer on CPU: 4 MiB ((64, 16384), (16, 65536)); measured
                           # 5-10% faster than 1 MiB (fewer BLAS calls), L3-resident
CPU_CHUNK = None  # columns per chunk on CPU; None: CPU_CHUNK_BYTES / (4 n)
GPU_CHUNK = 1 << 20  # on GPU: few launches, a bounded (n, 2^20) buffer
NATIVE_BLOCK_BYTES = 1 << 18  # compiled kernel: (n, block) float32 scratch, L2-resident (the block
                              # after next is prefetched into L2 beside it while this one is multiplied;
                              # up to n = 32 whole-vector blocks are read from X in place instead)
NATIVE_BLOCK_MAX = 1024  # columns; the error estimate grows with sqrt(block). 1024, not 4096: at
                         # n = 16 a tile's 8 rows then stay in L1 and the prefetched X competes less
                         # (measured 33.7 -> 25.3 ms for 5e6 columns on one core)
PRECISE_TOL = 1e-4  # largest accepted relative error estimate of the scores before a float64 pass
FIRST_CHUNK_BYTES = 1 << 21  # float64 copy of the first chunk on CPU ((16, 16384), (64, 4096)): it
                              # runs serially before the threads (a 4 MiB float32 chunk took 5-6 ms
                              # there, 10-15% of Krum at n = 16); thousands of coordinates still pick
                              # a central reference, and a poor one is caught by PRECISE_TOL
UNIT_ROUNDOFF = {np.dtype(np.float32): 2.0**-24, np.dtype(np.float64): 2.0**-53}


@dataclass(frozen=True)
class Distances:
    """sq: (n, n) float64 squared distances, in X's namespace.
    finite: (n,) NumPy bool, False for rows holding NaN or Inf.
    err: (n, n) NumPy float64 estimate of the absolute error of each entry of sq."""

    sq: object
    finite: np.ndarray
    err: np.ndarray

    def rel_error(self):
        """Estimated relative error of a row's sum of its n//2 nearest distances (max over rows)."""
        return relative_score_error(to_numpy(self.sq), self.err, self.finite)


def first_chunk(xp, n):
    """Columns of the float64 first chunk that picks the reference row."""
    if xp is not np:
        return GPU_CHUNK
    return max(1024, FIRST_CHUNK_BYTES // (8 * n))


def default_chunk(xp, n):
    if xp is not np:
        return GPU_CHUNK
    return CPU_CHUNK or max(1024, CPU_CHUNK_BYTES // (4 * n))


@cpu_budget
def sq_distances(X, chunk=None, precise=None):
    """Squared distances between the rows of X (NumPy or CuPy, float32 or float64), see module doc.

    precise=None: float32 Gram products, float64 fallback when needed; True: float64 throughout.
    """
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf rows are expected input
        xp = array_namespace(X)
        chunk = max(1, int(chunk or default_chunk(xp, X.shape[0])))
        if precise is None:
            precise = X.dtype != np.float32
        # the first chunk runs alone, before the threads start: on CPU a short one (FIRST_CHUNK_BYTES)
        first_stop = min(chunk, first_chunk(xp, X.shape[0]), X.shape[1])
        slices = [slice(0, first_stop)] + [slice(s, min(s + chunk, X.shape[1]))
                                           for s in range(first_stop, X.shape[1], chunk)]
        # the first chunk, in float64 around the mean of its finite rows, picks the reference row
        first = GramSum(xp, X.shape[0], first_stop)
        first.add_precise(X[:, slices[0]], None)
        reference = central_row(to_numpy(first.distances()), to_numpy(first.finite))
        result = accumulate(X, slices[1:], reference, precise, [first])
        if precise or result.rel_error() <= PRECISE_TOL:
            return result
        # the reference was poor (far from the bulk of the rows): redo in float64 around a central row
        return accumulate(X, slices[1:], central_row(to_numpy(result.sq), result.finite), True, [first])


def accumulate(X, slices, reference, precise, done=()):
    """Sum the chunk Grams (plus the GramSums already ``done``) into distances; on CPU the chunks
    are split over the thread budget."""
    xp = array_namespace(X)
    n = X.shape[0]
    chunk = (slices[0].stop - slices[0].start) if slices else 1
    lib = None if precise else gram_library(X)

    def work(first, stop):
        if lib is not None:
            return native_work(lib, X, slices[first].start, slices[stop - 1].stop, reference, chunk)
        fast = GramSum(xp, n, chunk, X.dtype)  # float32 chunk Grams around the reference row
        slow = GramSum(xp, n, chunk)  # float64 ones: the precise path and the fallback
        with np.errstate(invalid="ignore", over="ignore"):  # per thread: NaN/Inf rows are expected
            for cols in slices[first:stop]:
                if precise or not fast.add_fast(X, cols, reference):
                    slow.add_precise(X[:, cols], reference)
        return fast, slow

    ranges = column_ranges(xp, len(slices), align=4) if slices else []
    parts = list(done) + [part for pair in run_ranges(work, ranges) for part in pair]
    finite = parts[0].finite
    for part in parts[1:]:
        finite = finite & part.finite
    dist = sum(part.distances() for part in parts)
    err = sum(part.error() for part in parts)
    return finish(xp, dist, finite, err)


def gram_library(X):
    """The compiled Gram kernel for X, or None (X not read in place, or the kernel not built)."""
    return native.library("gram") if native.float32_rows(X) else None


def native_block(n, chunk):
    """Columns per block of the compiled kernel: at most ``chunk``, scratch within NATIVE_BLOCK_BYTES."""
    block = max(256, min(NATIVE_BLOCK_MAX, NATIVE_BLOCK_BYTES // (4 * n) // 64 * 64))
    return max(1, min(chunk, block))


def native_work(lib, X, col0, col1, reference, chunk):
    """The columns [col0, col1) on one thread by the compiled kernel: (fast, slow) GramSums like the
    NumPy path. The kernel hands back a block it cannot do in float32 (reference not finite there,
    float32 overflow); that block goes the precise way and the kernel carries on after it."""
    n = X.shape[0]
    block = native_block(n, chunk)
    fast = GramSum(np, n, block, X.dtype)  # chunk = block: the error estimate of the kernel's sums
    slow = GramSum(np, n, block)
    work = np.empty(lib.krum_gram_work_size(n, block), dtype=np.float32)
    finite = np.ones(n, dtype=np.uint8)
    c = col0
    while c < col1:
        c = lib.krum_gram_f32(X.ctypes.data, n, X.strides[0] // 4, c, col1, reference, block,
                              fast.gram.ctypes.data, fast.norm_squares.ctypes.data,
                              finite.ctypes.data, work.ctypes.data)
        if c < col1:
            stop = min(c + block, col1)
            with np.errstate(invalid="ignore", over="ignore"):
                slow.add_precise(X[:, c:stop], reference)
            c = stop
    fast.finite &= finite.astype(bool)
    return fast, slow


class GramSum:
    """Running float64 sum of chunk Grams around one reference row (so the sum is itself a Gram),
    the finite-row mask, and the sum of squared chunk norms that the error estimate needs."""

    def __init__(self, xp, n, chunk, dtype=np.float64):
        self.xp = xp
        self.dtype = np.dtype(dtype)
        self.chunk = chunk
        self.buffer = None
        self.gram = xp.zeros((n, n), dtype=xp.float64)
        self.norm_squares = xp.zeros(n, dtype=xp.float64)
        self.finite = xp.ones(n, dtype=bool)

    def add_fast(self, X, cols, reference):
        """float32 Gram of one chunk centred on the reference row; False if it must go the precise
        way (the reference row is not finite here, or a product overflowed float32)."""
        xp = self.xp
        if self.buffer is None:
            self.buffer = xp.empty((X.shape[0], self.chunk), dtype=X.dtype)
        centred = self.buffer[:, :cols.stop - cols.start]
        xp.subtract(X[:, cols], X[reference, cols][None, :], out=centred)
        # syrk; measured no faster: a GEMM on a second copy, a transposed (chunk, n) buffer
        gram = centred @ centred.T
        norms = xp.diagonal(gram)
        if not bool(xp.isfinite(norms.sum())):  # one check per chunk; the rare case is sorted out below
            good = xp.isfinite(norms)
            bad = ~good
            if not bool(good[reference]) or bool(xp.isfinite(X[bad, cols]).all(axis=1).any()):
                return False  # overflow of a finite row, or a non-finite reference
            self.finite &= good
            gram = xp.where(bad[:, None] | bad[None, :], 0.0, gram)
            norms = xp.diagonal(gram)
        self.gram += gram
        self.norm_squares += xp.square(norms, dtype=xp.float64)
        return True

    def add_precise(self, block, reference):
        """float64 Gram of one chunk. Non-finite rows are zeroed (they would spread NaN to every
        entry) and marked; the centre is the reference row if finite here, else the finite mean."""
        xp = self.xp
        b = block.astype(xp.float64)  # the (n, chunk) copy of this path
        ok = xp.isfinite(b).all(axis=1)
        if not bool(ok.all()):
            b[~ok] = 0.0
        if reference is not None and bool(ok[reference]):
            b -= b[reference].copy()
        elif bool(ok.any()):
            b -= b[ok].mean(axis=0)
        gram = b @ b.T  # distances are linear in the chunk Grams: per-chunk centres add up fine
        self.gram += gram
        self.norm_squares += xp.diag(gram) ** 2
        self.finite &= ok

    def distances(self):
        norms = self.xp.diag(self.gram)
        return norms[:, None] + norms[None, :] - 2.0 * self.gram

    def error(self):
        """Absolute error estimate of each distance: a length-c dot product in unit roundoff u errs
        by about u sqrt(c) times the squared norms; chunks add up like a random walk; 3x margin."""
        q = to_numpy(self.norm_squares)
        u = UNIT_ROUNDOFF[self.dtype]
        return 3.0 * u * np.sqrt(self.chunk) * np.sqrt(2.0 * (q[:, None] + q[None, :]))


def relative_score_error(dist, err, finite):
    """max over finite rows of (sum of err over its n//2 nearest others) / (sum of those distances)."""
    rows = np.flatnonzero(finite)
    if len(rows) < 2:
        return 0.0
    sub = dist[np.ix_(rows, rows)].copy()
    np.fill_diagonal(sub, np.inf)
    k = max(1, len(rows) // 2)
    nearest = np.argsort(sub, axis=1, kind="stable")[:, :k]
    total = np.take_along_axis(sub, nearest, axis=1).sum(axis=1)
    total_err = np.take_along_axis(err[np.ix_(rows, rows)], nearest, axis=1).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(total > 0, total_err / total, np.where(total_err > 0, np.inf, 0.0))
    return float(ratio.max())


def central_row(dist, finite):
    """Index of the finite row with the smallest sum of distances to its n//2 nearest rows."""
    rows = np.flatnonzero(finite)
    if len(rows) == 0:
        return 0
    sub = np.nan_to_num(dist[np.ix_(rows, rows)], nan=np.inf)
    k = max(1, len(rows) // 2)
    spread = np.sort(sub, axis=1)[:, :k + 1].sum(axis=1)  # k nearest others plus itself (0)
    return int(rows[np.argmin(spread)])


def finish(xp, dist, finite, err):
    """Symmetric, clamped at 0, zero diagonal, +inf for non-finite rows."""
    dist = 0.5 * (dist + dist.T)
    dist = xp.maximum(dist, 0.0)
    bad = ~finite
    dist = xp.where(bad[:, None] | bad[None, :], xp.inf, dist)
    n = dist.shape[0]
    idx = xp.arange(n)
    dist[idx, idx] = 0.0
    err = err.copy()
    np.fill_diagonal(err, 0.0)
    return Distances(dist, to_numpy(finite).astype(bool), err)
