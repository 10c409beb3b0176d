"""The rows source: what every rule reads, wherever the rows are held (docs/architecture.md).

A rule is written once against a ``Rows`` object. It holds the (n, w_b) coordinate blocks of the n
rows that this process has, in block order, and ``all_parts``: a local (k, ...) stack of per-block
partials -> the (P, ...) partials of ALL P blocks. Gathered rows are ``Rows([X])``: one block, nothing
to exchange. Sharded rows (krum_mpi/parallel/sharded.py ``Blocks``) are P blocks whose partials an
Allgather brings together; CuPy rows are the same object on a GPU. Every process sums the partials in
block order, so all processes derive the same numbers. What the rules use:

  certified()                 certified squared distances, refined on demand (certify.py)
  combine(weights)            the point sum_i w_i x_i (the fast kernel of the averaging rules)
  point_pass(weights, ...)    a float64 weighted point and the canonical squared distances of every
                              row to it, in ONE pass over the rows (geometric median, centred clipping)
  sq_distances_to(point)      canonical squared distances to a given point
  mix(mixing)                 the rows M @ X as a new source (pre-steps)
  per_block(fn)               fn on each block: coordinate-wise order statistics
  row(i)                      a copy of row i
A point is a list of (w_b,) arrays, one per local block.

Canonical squared distances. A float sum over columns rounds differently for every block split, and
a rule that feeds a distance into its weights (Weiszfeld, clipping) would then give a different
aggregate per split. So the distance to a point is defined exactly, and one value is derived from
it: with t_j = fl64((x_j - p_j)^2) (float64 difference and square of each column: column by column,
the same on every split), the squared distance is the EXACT sum of the t_j truncated to GRID_BITS
significant bits. The fast pass sums the t_j in float64 with a rigorous bound (gamma of the depth of
its summation tree); when the whole interval truncates to one value, that is the answer; when it
straddles a truncation boundary (about 2^-15 of rows), the exact sum of that row's t_j is taken
(integers, summed over the blocks). A row whose sum is not finite (NaN/Inf in the row, or a float64
row more than ~1e154 from the point) is infinitely far.
"""
import math

import numpy as np

from krum_mpi import native
from krum_mpi.aggregators.base import array_namespace, to_numpy
from krum_mpi.aggregators.certify import CertifiedDistances, tally
from krum_mpi.aggregators.distances import sq_distances
from krum_mpi.aggregators.exact import gamma
from krum_mpi.aggregators.parallel import column_ranges, run_ranges
from krum_mpi.aggregators.rowops import CHUNK, column_slices, combine_rows, combine_rows_many
from krum_mpi.backend import astype, copied, on_host

GRID_BITS = 28          # significant bits of a canonical squared distance (distance: ~2^-29 relative)
TILE = 128              # summation tiles: any order inside a tile adds at most TILE - 1 roundings
EXACT_SUM_BYTES = 280   # one row's exact sum of t_j, an int scaled by 2^1074 (< 2^2140 for d < 2^40)
SPLIT_CHUNK = 1 << 24   # columns per exact-sum step: float64 bincount sums of 27-bit limbs stay exact
GPU_CHUNK = 1 << 20     # columns per step of the array-namespace pass on a GPU: (n, 2^20) float64 temporaries


class Rows:
    """The blocks this process holds and how per-block partials of all blocks reach it (module doc).
    ``gather_parts``: (k, ...) local partials -> (P, ...) of all blocks; None: this process holds
    every block. ``parts``: P."""

    def __init__(self, blocks, gather_parts=None, parts=None):
        self.blocks = list(blocks)
        self.gather_parts = gather_parts
        self.parts = len(self.blocks) if parts is None else parts
        self.n = self.blocks[0].shape[0]
        self.xp = array_namespace(self.blocks[0])
        self.dtype = self.blocks[0].dtype
        if any(b.shape[1] == 0 for b in self.blocks):
            raise ValueError("a coordinate block is empty: use fewer ranks than parameters")

    # -- reduce: partials of every block, summed in block order --------------------------------------
    def all_parts(self, local):
        local = np.ascontiguousarray(local)
        return local if self.gather_parts is None else self.gather_parts(local)

    def total(self, per_block):
        """Sum over all blocks of per-block float64 arrays, in block order: (sum, sum of |.|)."""
        parts = self.all_parts(np.stack([np.asarray(p, dtype=np.float64) for p in per_block]))
        return parts.sum(axis=0), np.abs(parts).sum(axis=0)

    def rounded_up(self, bounds_sum, abs_sum):
        """A bound on a summed value's error: the blocks' bounds plus the rounding of the sum."""
        g = gamma(self.parts + 2)
        with np.errstate(invalid="ignore", over="ignore"):
            return np.nextafter(bounds_sum * (1 + g) + g * abs_sum, np.inf)

    def every(self, flags):
        """Logical AND over all blocks of per-block bool arrays."""
        parts = self.all_parts(np.stack([np.asarray(f, dtype=np.float64) for f in flags]))
        return parts.min(axis=0) > 0.5

    def map(self, fn):
        return [fn(b) for b in self.blocks]

    def like(self, blocks):
        """Other rows (or points as (1, w_b) rows) held and exchanged the way these are."""
        return type(self)(blocks, self.gather_parts, self.parts)

    # -- what the rules read --------------------------------------------------------------------------
    def certified(self):
        """CertifiedDistances of the rows: here the whole rows' kernel (one block, no exchange)."""
        (X,) = self.blocks
        return CertifiedDistances(X, sq_distances(X))

    def finite(self):
        """(n,) NumPy bool: rows without NaN or Inf in any block."""
        return self.every(self.map(finite_rows))

    def combine(self, weights):
        return self.map(lambda b: combine_rows(b, weights))

    def mix(self, mixing):
        return self.like(self.map(lambda b: combine_rows_many(b, mixing)))

    def per_block(self, fn):
        return self.map(fn)

    def row(self, i):
        return self.map(lambda b: copied(self.xp, b[i, :]))

    def as_point(self, value):
        """A point given whole (a (d,) array, one block only) or block by block (a list)."""
        return list(value) if isinstance(value, (list, tuple)) else [value]

    def zeros(self):
        return self.map(lambda b: self.xp.zeros(b.shape[1], dtype=b.dtype))

    def point_pass(self, weights, centre=None, keep=0.0, distances=True):
        """(point, sq): point_j = fl(sum_i weights[i] x_ij + keep * centre_j) accumulated in float64
        (rows in increasing order, only rows with a non-zero weight read: give NaN/Inf rows weight 0),
        in the rows' dtype; sq: the (n,) canonical squared distances of every row to it (module
        doc), or None when not ``distances``. One read of the rows."""
        weights = np.asarray(weights, dtype=np.float64)
        centre = [None] * len(self.blocks) if centre is None else self.as_point(centre)
        results = [block_pass(b, weights, c, float(keep), distances) for b, c in zip(self.blocks, centre)]
        point = [r[0] for r in results]
        if not distances:
            return point, None
        sums, depth = self.total([r[1] for r in results])[0], max(r[2] for r in results) + self.parts
        return point, self.canonical(sums, depth, point)

    def sq_distances_to(self, point):
        return self.point_pass(np.zeros(self.n), point, 1.0)[1]

    def sq_distance_between(self, a, b):
        """Canonical squared distance of two points (block by block)."""
        return float(self.like([x[None, :] for x in self.as_point(a)]).sq_distances_to(b)[0])

    # -- canonical values ------------------------------------------------------------------------------
    def canonical(self, sums, depth, point):
        """The truncated exact sums (module doc) from float64 sums of the t_j with summation depth."""
        out = np.full(self.n, np.inf)
        ok = np.isfinite(sums)
        g = gamma(depth + 2)
        with np.errstate(over="ignore"):
            lo = np.nextafter(sums * (1 - 2 * g), 0.0)
            hi = np.nextafter(sums * (1 + 2 * g), np.inf)
        normal = ok & (lo >= np.finfo(np.float64).tiny) & np.isfinite(hi)
        same = normal & (truncate(lo) == truncate(hi))
        out[same] = truncate(hi[same])
        out[ok & (sums == 0)] = 0.0
        redo = np.flatnonzero(ok & ~same & (sums != 0))
        if redo.size:
            out[redo] = self.exact_sq_distances(redo, point)
        return out

    def exact_sq_distances(self, rows, point):
        """Canonical squared distances of these rows, from their exact sums (integers over blocks)."""
        tally(len(rows))
        local = []
        for b, p in zip(self.blocks, point):
            ints = [exact_terms_sum(self.xp, b[int(i), :], p) for i in rows]
            local.append(np.frombuffer(b"".join(v.to_bytes(EXACT_SUM_BYTES, "little") for v in ints),
                                       dtype=np.uint8).reshape(len(rows), EXACT_SUM_BYTES))
        parts = self.all_parts(np.stack(local))
        totals = [sum(int.from_bytes(parts[q, k].tobytes(), "little") for q in range(parts.shape[0]))
                  for k in range(len(rows))]
        return [truncated_float(t) for t in totals]


def finite_rows(X):
    """(n,) NumPy bool: rows of X without NaN or Inf (chunk by chunk, no n x d temporary)."""
    xp = array_namespace(X)
    n, d = X.shape

    def work(start, stop):
        ok = np.ones(n, dtype=bool)
        for cols in column_slices(xp, stop - start, offset=start):
            ok &= to_numpy(xp.all(xp.isfinite(X[:, cols]), axis=1))
        return ok

    return np.logical_and.reduce(run_ranges(work, column_ranges(xp, d, align=CHUNK)))


def truncate(values):
    """float64 values truncated to GRID_BITS significant bits (non-negative normal values)."""
    bits = np.asarray(values, dtype=np.float64).view(np.uint64)
    return (bits & ~np.uint64((1 << (53 - GRID_BITS)) - 1)).view(np.float64)


def truncated_float(total):
    """An exact sum (an int scaled by 2^1074) truncated as ``truncate`` truncates its float."""
    length = total.bit_length()
    if length <= 52:          # a subnormal value: exactly representable (the fast pass never decides these)
        return math.ldexp(float(total), -1074)
    top = total >> (length - GRID_BITS)
    try:
        return math.ldexp(float(top), length - GRID_BITS - 1074)
    except OverflowError:
        return math.inf


def exact_terms_sum(xp, row, point):
    """The exact sum of t_j = fl64((row_j - point_j)^2), as an int scaled by 2^1074: each float64
    t_j = M 2^(e - 53) with an integer M < 2^53, split into 27-bit limbs summed per exponent."""
    total = 0
    d = row.shape[0]
    for start in range(0, d, SPLIT_CHUNK):
        stop = min(d, start + SPLIT_CHUNK)
        diff = to_numpy(astype(xp, row[start:stop], xp.float64) - astype(xp, point[start:stop], xp.float64))
        with np.errstate(over="ignore"):
            t = diff * diff
        mantissa, exponent = np.frexp(t)
        ints = np.ldexp(mantissa, 53).astype(np.int64)
        exponent = exponent.astype(np.int64) + 1074 - 53        # t = ints * 2^(exponent - 1074)
        low = exponent.min(initial=0)
        shift = exponent - low
        high_sum = np.bincount(shift, weights=(ints >> 27).astype(np.float64))
        low_sum = np.bincount(shift, weights=(ints & ((1 << 27) - 1)).astype(np.float64))
        for s in np.flatnonzero(high_sum + low_sum):
            part = (int(high_sum[s]) << 27) + int(low_sum[s])
            e = int(s) + int(low)
            total += part << e if e >= 0 else part >> -e   # e < 0 only for zero terms (t = 0)
    return total


def tree_sums(xp, terms):
    """(sums over the last axis of an (n, L) float64 array, depth): summed in tiles of TILE (any
    order inside), then the tiles' sums the same way; depth bounds the roundings of any term."""
    depth = 0
    while terms.shape[1] > 1:
        n, width = terms.shape
        if width <= TILE:
            terms = xp.sum(terms, axis=1)[:, None]
            depth += width - 1
            continue
        whole = width // TILE * TILE
        tiles = xp.sum(xp.reshape(terms[:, :whole], (n, whole // TILE, TILE)), axis=2)
        if whole < width:   # the last, shorter tile
            tiles = xp.concat([tiles, xp.sum(terms[:, whole:], axis=1)[:, None]], axis=1)
        terms = tiles
        depth += TILE - 1
    return terms[:, 0], depth


def native_block_pass(X, weights, centre, keep, distances):
    """block_pass by the compiled kernel (native/point.c: the same point, bitwise, and sums of the same
    t_j in another tree), or None where it does not apply (not built or disabled, X not float32 rows
    read in place, a centre that is not a float32 NumPy vector)."""
    lib = native.library("point")
    if lib is None or not native.float32_rows(X):
        return None
    if centre is not None and not (isinstance(centre, np.ndarray) and centre.dtype == np.float32):
        return None
    n, d = X.shape
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    centre = None if centre is None else np.ascontiguousarray(centre)
    point = np.empty(d, dtype=np.float32)

    def work(start, stop):   # ctypes releases the GIL: the column ranges run in parallel
        sums = np.empty(n) if distances else None
        depth = lib.krum_point_pass(X.ctypes.data, n, X.strides[0] // 4, weights.ctypes.data,
                                    None if centre is None else centre.ctypes.data, keep, start, stop,
                                    point.ctypes.data, None if sums is None else sums.ctypes.data)
        if depth < 0:
            raise MemoryError("krum_point_pass: out of memory")
        return sums, depth + 2

    return point, *combine_ranges(run_ranges(work, column_ranges(np, d, align=CHUNK)), distances)


def combine_ranges(results, distances):
    """(sums, depth) of the column ranges' (sums, depth), added in order."""
    if not distances:
        return None, 0
    total = results[0][0].copy()
    for r in results[1:]:
        total += r[0]
    return total, max(r[1] for r in results) + len(results)


def block_pass(X, weights, centre, keep, distances):
    """One block of Rows.point_pass: (point block, (n,) float64 sums of the t_j or None, depth)."""
    compiled = native_block_pass(X, weights, centre, keep, distances)
    if compiled is not None:
        return compiled
    xp = array_namespace(X)
    n, d = X.shape
    used = [int(i) for i in np.flatnonzero(weights)]
    point = xp.empty(d, dtype=X.dtype)

    def work(start, stop):
        sums, depth = [], 0
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf rows are expected
            for cols in column_slices(xp, stop - start, CHUNK if on_host(xp) else GPU_CHUNK, offset=start):
                chunk = X[:, cols]
                z = xp.zeros(cols.stop - cols.start, dtype=xp.float64)
                for i in used:        # increasing rows, one float64 rounding per term: column by column
                    z = z + float(weights[i]) * astype(xp, chunk[i, :], xp.float64)
                if centre is not None and keep != 0.0:
                    z = z + keep * astype(xp, centre[cols], xp.float64)
                z = astype(xp, z, X.dtype)
                point[cols] = z
                if distances:
                    diff = astype(xp, chunk, xp.float64) - astype(xp, z, xp.float64)[None, :]
                    chunk_sums, chunk_depth = tree_sums(xp, diff * diff)
                    sums.append(to_numpy(chunk_sums))
                    depth = max(depth, chunk_depth)
        if not distances:
            return None, 0
        stacked = np.ascontiguousarray(np.stack(sums, axis=1))
        total, outer = tree_sums(np, stacked)
        return total, depth + outer

    results = run_ranges(work, column_ranges(xp, d, align=CHUNK) if on_host(xp) else [(0, d)])
    return point, *combine_ranges(results, distances)
