"""The refinement levels of certify.py as Gram entries of the rows one refinement involves: every pair
a refinement needs is done in ONE pass over those rows (squared distances from dot products:
D(i, j) = G(i, i) + G(j, j) - 2 G(i, j)), so its cost is a constant times one read of the rows,
whatever the input.

dd_sq_distances     float32 rows, compiled kernel (native/exact.c): the products are exact in
                    float64 and summed with TwoSum (double-double), each G within
                    gamma_(2H) gamma_H sum |x_a x_b| of its exact value, H the longest chain of
                    additions; sum |x_a x_b| <= sqrt(G(a, a) G(b, b)) (Cauchy-Schwarz). The six
                    partials of a distance are added with math.fsum (one rounding). About
                    1e-20 of ||x||^2 at d = 1e7: only exact ties are left for the exact level.
exact_sq_distances  the exact values, ints scaled by 2^SCALE: float32 rows by exact Gram entries
                    (compiled superaccumulator, or NumPy integer products summed per power of two);
                    float64 rows pair by pair (exact.exact_sq_distance).
LocalRows           the row source certify.py refines from when the rows are all in this process.
Partials add across column blocks: limbs and the integers they make add exactly, so a sharded
placement sums each rank's exact distances (an int per pair) in any block split.
"""
import math

import numpy as np

from krum_mpi import native
from krum_mpi.aggregators.base import array_namespace, host_dtype, to_numpy
from krum_mpi.aggregators.clones import CloneMap, bounded_through_pivots, exact_through_pivots, split_float32
from krum_mpi.aggregators.exact import (SCALE, U64, direct_sq_distances, exact_sq_distance, exact_sum, gamma,
                                       rows_sq_distances)
from krum_mpi.aggregators.parallel import column_ranges, run_ranges

DD_BLOCK = 2048  # columns per block: the block of every involved row stays in L2 (64 rows: 512 KiB)
F64_BLOCK = 1024  # columns per block of the float64 level (64 rows as float64: 512 KiB, in L2)
EXACT_BLOCK = 4096  # columns per block of the superaccumulator (decoded m, p: 32 KiB per row)
NUMPY_EXACT_CHUNK = 1 << 16  # columns per NumPy exact pass


def host_rows(X):
    """X as a NumPy array: the refinement levels index rows and columns with NumPy index arrays and
    run compiled kernels on the host. A refinement is rare on honest rows and reads the rows once
    anyway, so a device (or other namespace's) array costs one copy here, still one pass."""
    return X if isinstance(X, np.ndarray) else to_numpy(X)


def entries_of(pairs):
    """(rows, entries, index): the sorted rows the pairs involve, the (a, b) positions (a <= b) of
    every Gram entry the pairs' distances need (int64 (count, 2)), and entry -> its position."""
    rows = sorted({int(i) for p in pairs for i in p})
    at = {row: k for k, row in enumerate(rows)}
    wanted = {(at[i], at[i]) for i in rows}
    wanted |= {(min(at[i], at[j]), max(at[i], at[j])) for i, j in pairs}
    entries = sorted(wanted)
    index = {e: k for k, e in enumerate(entries)}
    return rows, np.asarray(entries, dtype=np.int64).reshape(-1, 2), index, at


def exact_library(X):
    """The compiled exact-Gram kernel for X, or None (not float32 read in place, or not built)."""
    return native.library("exact") if native.float32_rows(X) else None


def level_one(X, pairs, fallback, clones=None):
    """(values, bounds, exact, via) of the pairs' squared distances, |value - exact| <= bound, exact
    the exact int where it came for free (clones of one pivot, clones.py) else None, via the pivots'
    pair and exact correction where the distance came through two pivots (clones.py): the pivots'
    distances by one double-double pass over them (compiled, float32), else by fallback(pairs).
    clones: the CloneMap of the pairs' rows where the caller has it."""
    pairs = [(int(i), int(j)) for i, j in pairs]
    if not pairs:
        return np.zeros(0), np.zeros(0), [], []
    X = host_rows(X)

    def pivots(needed):
        return dd_sq_distances(X, needed) or fallback(needed)

    clones = clones or CloneMap(X, {i for p in pairs for i in p})
    if clones.worth_it():
        return bounded_through_pivots(X, pairs, clones, pivots)
    values, bounds = pivots(pairs)
    return values, bounds, [None] * len(pairs), [None] * len(pairs)


def f64_sq_distances(X, pairs):
    """(values, bounds) float64 of the pairs' squared distances from direct float64 differences, one
    pass over the rows involved (compiled, float32 rows; native/exact.c krum_f64_pairs_f32), or None
    where the kernel does not apply. About 1e-14 relative: it separates the statistical near-ties of
    honest rows at a fraction of the double-double's arithmetic; exact ties go on to the next level."""
    lib = exact_library(X)
    pairs = [(int(i), int(j)) for i, j in pairs]
    if lib is None or not pairs:
        return None
    rows = sorted({i for p in pairs for i in p})
    at = {row: k for k, row in enumerate(rows)}
    row_index = np.asarray(rows, dtype=np.int64)
    degree = {}
    for i, j in pairs:
        degree[i] = degree.get(i, 0) + 1
        degree[j] = degree.get(j, 0) + 1
    # each pair led by its row in more pairs: long runs sharing a first row (the kernel's groups)
    positions = np.asarray([(at[i], at[j]) if (degree[i], -i) >= (degree[j], -j) else (at[j], at[i])
                            for i, j in pairs], dtype=np.int64).reshape(-1, 2)
    order = np.lexsort((positions[:, 1], positions[:, 0]))
    positions = np.ascontiguousarray(positions[order])
    lanes = int(lib.krum_exact_lanes())
    d = X.shape[1]

    def work(c0, c1):
        S, C = np.zeros(len(pairs)), np.zeros(len(pairs))
        scratch = np.empty(len(rows) * F64_BLOCK)
        lib.krum_f64_pairs_f32(X.ctypes.data, X.strides[0] // 4, row_index.ctypes.data, len(rows),
                               positions.ctypes.data, len(pairs), c0, c1, F64_BLOCK, scratch.ctypes.data,
                               S.ctypes.data, C.ctypes.data)
        return S, C

    parts = run_ranges(work, column_ranges(np, d, align=F64_BLOCK)) if d else []
    values = np.empty(len(pairs))
    values[order] = [math.fsum(t for S, C in parts for t in (S[p], C[p])) for p in range(len(pairs))]
    return values, f64_bound(values, d, lanes)


def f64_bound(values, d, lanes):
    """The bound of f64_sq_distances (native/exact.c): every block's sum within gamma_H of its exact
    value (its terms are >= 0), H = 3 + 2 block / lanes + 2 lanes (+ 4 to spare); the TwoSum errors
    summed in float64 (under blocks gamma_blocks u of the total) and the final rounding; relative to
    the exact value, which is at most value + bound."""
    blocks = -(-d // F64_BLOCK) + 2
    g = gamma(7 + 2 * F64_BLOCK // lanes + 2 * lanes) + blocks * gamma(blocks) * U64 * 1.01 + 2.0 * U64
    g *= 1.0 + 8.0 * U64
    return np.nextafter(np.asarray(values) * (g / (1.0 - g)), np.inf)


def dd_sq_distances(X, pairs):
    """(values, bounds) float64 of the pairs' squared distances, |value - exact| <= bound, from one
    double-double pass over the rows involved; None where the compiled kernel does not apply."""
    lib = exact_library(X)
    pairs = [(int(i), int(j)) for i, j in pairs]
    if lib is None or not pairs:
        return None
    rows, entries, index, at = entries_of(pairs)
    row_index = np.asarray(rows, dtype=np.int64)
    lanes = int(lib.krum_exact_lanes())
    d = X.shape[1]

    def work(c0, c1):
        S, C = np.zeros(len(entries)), np.zeros(len(entries))
        lib.krum_dd_entries_f32(X.ctypes.data, X.strides[0] // 4, row_index.ctypes.data, entries.ctypes.data,
                                len(entries), c0, c1, DD_BLOCK, S.ctypes.data, C.ctypes.data)
        return S, C, dd_entry_bound(S, C, entries, c1 - c0, lanes)

    parts = run_ranges(work, column_ranges(np, d, align=DD_BLOCK)) if d else []
    values, bounds = np.zeros(len(pairs)), np.zeros(len(pairs))
    for p, (i, j) in enumerate(pairs):
        a, b = at[i], at[j]
        ii, jj, ij = index[(a, a)], index[(b, b)], index[(min(a, b), max(a, b))]
        terms = [t for S, C, _ in parts for t in (S[ii], C[ii], S[jj], C[jj], -2.0 * S[ij], -2.0 * C[ij])]
        values[p] = math.fsum(terms) if i != j else 0.0
        bounds[p] = sum(e[ii] + e[jj] + 2.0 * e[ij] for _, _, e in parts) if i != j else 0.0
    values = np.maximum(values, 0.0)
    return values, np.nextafter((bounds + np.abs(values) * U64) * (1.0 + 8.0 * U64), np.inf)


def dd_entry_bound(S, C, entries, cols, lanes):
    """Each entry's bound over cols columns: gamma_(2H) gamma_H sqrt(N_a N_b) (module doc) with
    H = (columns per lane chain) + (additions into the entry's sum per block) x (blocks + the
    columns left over, fewer than a block's additions) + 8."""
    blocks = max(1, -(-cols // DD_BLOCK))
    chain = DD_BLOCK // (4 * lanes) + 4 * lanes * (blocks + 1) + 8
    norms = np.zeros(int(entries.max()) + 1 if len(entries) else 0)
    diag = entries[:, 0] == entries[:, 1]
    norms[entries[diag, 0]] = np.maximum(S[diag] + np.abs(C[diag]), 0.0) * (1.0 + 1e-6)
    scale = np.sqrt(norms[entries[:, 0]] * norms[entries[:, 1]]) * (1.0 + 4.0 * U64)
    return 2.0 * gamma(2 * chain) * gamma(chain) * scale


def exact_sq_distances(X, pairs, clones=None):
    """The exact squared distances of the pairs, Python ints scaled by 2^SCALE[dtype] (rows finite):
    through the pivots of the clones among the rows (clones.py), the pivots' by one pass over them
    for float32, pair by pair for float64."""
    pairs = [(int(i), int(j)) for i, j in pairs]
    if not pairs:
        return []
    X = host_rows(X)
    clones = clones or CloneMap(X, {i for p in pairs for i in p})
    if clones.worth_it():
        return exact_through_pivots(X, pairs, clones, lambda needed: plain_exact_sq_distances(X, needed))
    return plain_exact_sq_distances(X, pairs)


def plain_exact_sq_distances(X, pairs):
    """exact_sq_distances without the clone reduction."""
    if np.dtype(X.dtype) != np.float32:
        return [exact_sq_distance(X[i], X[j]) for i, j in pairs]
    rows, entries, index, at = entries_of(pairs)
    lib = exact_library(X)
    gram = native_exact_gram(lib, X, rows, entries) if lib is not None else numpy_exact_gram(X, rows, entries)
    out = []
    for i, j in pairs:
        a, b = at[i], at[j]
        out.append(gram[index[(a, a)]] + gram[index[(b, b)]] - 2 * gram[index[(min(a, b), max(a, b))]])
    return out


def native_exact_gram(lib, X, rows, entries):
    """Exact Gram entries (ints x 2^298) by the compiled superaccumulator, columns over the threads."""
    row_index = np.asarray(rows, dtype=np.int64)

    def work(c0, c1):
        limbs = np.zeros((len(entries), 20), dtype=np.int64)
        buffer = np.empty(lib.krum_exact_work_size(len(rows), EXACT_BLOCK), dtype=np.int32)
        count = lib.krum_exact_entries_f32(X.ctypes.data, X.strides[0] // 4, row_index.ctypes.data, len(rows),
                                           entries.ctypes.data, len(entries), c0, c1, EXACT_BLOCK,
                                           buffer.ctypes.data, limbs.ctypes.data)
        assert count == limbs.shape[1], "exact kernel limb count"
        return limbs

    parts = run_ranges(work, column_ranges(np, X.shape[1], align=EXACT_BLOCK)) if X.shape[1] else []
    total = sum(parts) if parts else np.zeros((len(entries), 20), dtype=np.int64)
    # limbs hold < 2^34 after the kernel's carries: the sum over threads stays far inside int64
    return [sum(int(v) << (32 * k) for k, v in enumerate(row)) for row in total]


def numpy_exact_gram(X, rows, entries):
    """Exact Gram entries (ints x 2^298) in NumPy: integer products of the 24-bit significands,
    summed per power of two (exact.exact_sum), column chunk by chunk."""
    totals = [0] * len(entries)
    scale = SCALE[np.dtype(np.float32)]
    for c in range(0, X.shape[1], NUMPY_EXACT_CHUNK):
        split = [split_float32(to_numpy(X[r, c:c + NUMPY_EXACT_CHUNK])) for r in rows]
        for k, (a, b) in enumerate(entries.tolist()):
            (Ma, Ea), (Mb, Eb) = split[a], split[b]
            totals[k] += exact_sum([(Ma * Mb, Ea + Eb)], scale)
    return totals


class LocalRows:
    """Where the refinement levels read the rows: here, the whole (n, d) array in this process.
    Any object with these members will do (a sharded placement sums each rank's block)."""

    def __init__(self, X):
        self.X = X
        self.dtype = host_dtype(X)
        self._clones = None  # (rows, their CloneMap) of the last refinement

    def clone_map(self, pairs):
        """The CloneMap of the rows the pairs involve, kept for the next level asking for the same
        rows (the float64 step and level 1 of one refinement: one search for clones, not two)."""
        rows = frozenset(int(i) for p in pairs for i in p)
        if self._clones is None or self._clones[0] != rows:
            self._clones = (rows, CloneMap(host_rows(self.X), rows))
        return self._clones[1]

    def identical(self, i, j):
        """True when rows i and j hold exactly equal values."""
        xp = array_namespace(self.X)
        return bool(xp.all(self.X[i, :] == self.X[j, :]))

    def identical_pairs(self, pairs):
        """[identical(i, j) for (i, j) in pairs], from one search for clones among their rows: rows
        of one pivot are equal where they equal each other on the columns where either differs from
        it (a few); other pairs are compared whole. Many rows at distance 0 from each other (ulp
        clones) then cost a search for clones, not one whole comparison per pair."""
        if not pairs:
            return []
        X = host_rows(self.X)
        clones = self.clone_map(pairs)  # kept: the first refinement often involves the same rows
        out = []
        for i, j in pairs:
            i, j = int(i), int(j)
            if clones.pivot[i] == clones.pivot[j]:
                U = np.union1d(clones.cols[i], clones.cols[j])
                out.append(bool(np.all(X[i, U] == X[j, U])))
            else:
                out.append(self.identical(i, j))
        return out

    def level_one(self, pairs):
        """(values, bounds) of level 1 for these pairs (the first two parts of level_one_exact)."""
        return self.level_one_exact(pairs)[:2]

    def level_one_exact(self, pairs):
        """(values, bounds, exact, via) of level 1 for these pairs, exact[k] the exact int where it
        came free and via[k] the pivots' decomposition where it came through two pivots
        (gram_entries.level_one): clones through their pivots; float32 rows with the compiled
        kernel, one double-double pass over the rows involved; else float64_level."""
        return level_one(self.X, pairs, self.float64_level, self.clone_map(pairs) if pairs else None)

    def level_f64(self, pairs):
        """(values, bounds) of the float64 level for these pairs (f64_sq_distances), or None where it
        does not apply: no compiled kernel, or clones among the rows (clones.py: their refinement
        goes to the pivots' double-double, which is exact where they tie)."""
        X = host_rows(self.X)
        if exact_library(X) is None or self.clone_map(pairs).worth_it():
            return None
        return f64_sq_distances(X, pairs)

    def float64_level(self, pairs):
        """Direct float64 differences pair by pair for a few pairs, else one float64 Gram pass."""
        rows = sorted({i for p in pairs for i in p})
        if len(pairs) <= len(rows):
            return direct_sq_distances(self.X, pairs)
        values, bounds = rows_sq_distances(self.X, rows)
        at = {row: k for k, row in enumerate(rows)}
        return ([values[at[i], at[j]] for i, j in pairs], [bounds[at[i], at[j]] for i, j in pairs])

    def exact(self, pairs):
        """The exact distances of these pairs, as ints scaled by 2^SCALE[dtype] (one pass over the
        rows they involve for float32 rows)."""
        return exact_sq_distances(self.X, pairs, self.clone_map(pairs) if pairs else None)
