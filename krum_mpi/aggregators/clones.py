"""Rows that equal another row outside a few columns ("clones"): the cheapest way for a Byzantine
worker to make distances tie, and the cheapest to answer exactly.

A clone i of a pivot row p differs from it in the columns cols[i] only (at most d / SPARSE of them).
Then, exactly, for rows i, j with pivots p, q and U = cols[i] | cols[j]:
    D(i, j) = D(p, q) + D_U(i, j) - D_U(p, q)          (D_U: the squared distance over U only)
and D(p, p) = 0. So a refinement needs the pivots' distances only (one Gram pass over the pivots),
plus exact sums over a few columns per pair: rows crafted as 1-ulp clones cost no more than the
honest rows they copy. Non-clone rows are their own pivots (cols empty). Finding the clones costs a
sample of SAMPLE columns per (row, pivot) and at most TRIES comparisons of whole rows per row (the
pivots closest on the sample), so at most TRIES reads of the rows whatever they hold; a clone whose
differences hide from the sample may be missed, which costs speed, never exactness.
"""
import numpy as np

from krum_mpi.aggregators.base import to_numpy
from krum_mpi.aggregators.exact import SCALE, U64, exact_sq_distance, exact_sums


def split_float32(x):
    """float32 array -> (M int64, E int64), x = M 2^E exactly (|M| < 2^24)."""
    m, e = np.frexp(x.astype(np.float64))
    return np.ldexp(m, 24).astype(np.int64), e.astype(np.int64) - 24

SPARSE = 64  # a clone differs from its pivot in at most d / SPARSE columns
SAMPLE = 256  # columns compared first: a row unlike the pivot is rejected after these
TRIES = 2  # whole-row comparisons per row at most: the pivots closest on the sample
CHUNK = 1 << 15  # columns per step of a whole-row comparison (it stops past the limit)


def differing_columns(X, i, p, limit):
    """The sorted columns where rows i and p differ, or None as soon as more than ``limit`` do."""
    found, count = [], 0
    for c in range(0, X.shape[1], CHUNK):
        cols = np.flatnonzero(to_numpy(X[i, c:c + CHUNK] != X[p, c:c + CHUNK])) + c
        count += len(cols)
        if count > limit:
            return None
        found.append(cols)
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, dtype=np.int64)


class CloneMap:
    """pivot[i] and cols[i] (sorted int64 columns where row i differs from its pivot) for the rows
    ``rows`` of X (finite rows)."""

    def __init__(self, X, rows):
        d = X.shape[1]
        self.pivot, self.cols = {}, {}
        pivots = []
        sample = np.unique(np.linspace(0, d - 1, min(d, SAMPLE)).astype(np.int64)) if d else np.zeros(0, np.int64)
        limit = max(1, d // SPARSE)
        allowed = 4 * max(1, -(-limit * len(sample) // max(d, 1)))  # sample differences a clone may show
        rows = sorted(int(r) for r in rows)
        sampled = to_numpy(X[np.asarray(rows)[:, None], sample[None, :]]) if rows else None  # (rows, SAMPLE)
        at = {row: k for k, row in enumerate(rows)}
        for i in rows:
            self.pivot[i], self.cols[i] = i, np.zeros(0, dtype=np.int64)
            if pivots:  # the pivots closest on the sample: usually none, or the one it copies
                differ = (sampled[[at[p] for p in pivots]] != sampled[at[i]]).sum(axis=1)
                near = np.flatnonzero(differ <= allowed)
                # at most TRIES whole rows: rows alike on the sample but not beyond (sparse rows,
                # all close to each other) would otherwise cost a whole comparison per pair of rows
                for p in np.asarray(pivots)[near[np.argsort(differ[near], kind="stable")][:TRIES]].tolist():
                    cols = differing_columns(X, i, p, limit)
                    if cols is not None:
                        self.pivot[i], self.cols[i] = p, cols
                        break
            if self.pivot[i] == i:
                pivots.append(i)
        self.pivots = pivots

    def pivot_pairs(self, pairs):
        """The pairs of distinct pivots the pairs' distances need, sorted (p < q)."""
        out = set()
        for i, j in pairs:
            p, q = self.pivot[i], self.pivot[j]
            if p != q:
                out.add((min(p, q), max(p, q)))
        return sorted(out)

    def corrections(self, X, pairs):
        """[correction(X, i, j) for (i, j) in pairs], float32 rows all at once: the six exact
        products per column (a^2 + b^2 - 2ab - p^2 - q^2 + 2pq) summed per pair (exact.exact_sums)."""
        if np.dtype(X.dtype) != np.float32:
            return [self.correction(X, i, j) for i, j in pairs]
        d = X.shape[1]
        parts = [k * d + self.cols[r] for k, pair in enumerate(pairs) for r in pair if len(self.cols[r])]
        if not parts:
            return [0] * len(pairs)
        group, cols = np.divmod(np.unique(np.concatenate(parts)), d)  # U per pair: the union of the columns
        rows = np.array([[i, j, self.pivot[i], self.pivot[j]] for i, j in pairs], dtype=np.int64)[group]
        (Ma, Ea), (Mb, Eb), (Mp, Ep), (Mq, Eq) = (split_float32(to_numpy(X[rows[:, t], cols])) for t in range(4))
        values = np.concatenate([Ma * Ma, Mb * Mb, -(Ma * Mb), -(Mp * Mp), -(Mq * Mq), Mp * Mq])
        shifts = np.concatenate([2 * Ea, 2 * Eb, Ea + Eb + 1, 2 * Ep, 2 * Eq, Ep + Eq + 1])
        return exact_sums(values, shifts, np.tile(group, 6), len(pairs), SCALE[np.dtype(np.float32)])

    def correction(self, X, i, j):
        """D_U(i, j) - D_U(p, q) (module doc) as an exact int scaled like exact.exact_sq_distance;
        with p == q it is D(i, j) itself."""
        U = np.union1d(self.cols[i], self.cols[j])
        if len(U) == 0:
            return 0
        p, q = self.pivot[i], self.pivot[j]
        value = exact_sq_distance(X[i, U], X[j, U])
        return value if p == q else value - exact_sq_distance(X[p, U], X[q, U])

    def worth_it(self):
        """True when some row is a clone (else the reduction changes nothing)."""
        return len(self.pivots) < len(self.pivot)


def exact_through_pivots(X, pairs, clones, pivot_exact):
    """The pairs' exact distances (ints) from pivot_exact(pivot pairs) -> ints and the corrections."""
    needed = clones.pivot_pairs(pairs)
    base = dict(zip(needed, pivot_exact(needed))) if needed else {}
    out = []
    for (i, j), corr in zip(pairs, clones.corrections(X, pairs)):
        p, q = clones.pivot[i], clones.pivot[j]
        out.append((base[(min(p, q), max(p, q))] if p != q else 0) + corr)
    return out


def bounded_through_pivots(X, pairs, clones, pivot_bounded):
    """(values, bounds, exact, via): the pairs' distances within bounds from pivot_bounded(pivot
    pairs) -> (values, bounds) and the exact corrections; exact[k] is the exact int where no pivot
    pair was involved (rows cloned from one pivot), else None, and then via[k] = ((p, q), correction):
    the distance is exactly D(p, q) + correction (else via[k] is None)."""
    needed = clones.pivot_pairs(pairs)
    base = dict(zip(needed, zip(*pivot_bounded(needed)))) if needed else {}
    scale = 1 << SCALE[np.dtype(X.dtype)]
    corrections = clones.corrections(X, pairs)
    shift = np.array([c / scale for c in corrections], dtype=np.float64)  # each within u |shift|
    base_value, base_bound, exact, via = np.zeros(len(pairs)), np.zeros(len(pairs)), [], []
    for k, ((i, j), corr) in enumerate(zip(pairs, corrections)):
        p, q = clones.pivot[i], clones.pivot[j]
        if p == q:  # exactly the correction
            exact.append(corr)
            via.append(None)
        else:
            key = (min(p, q), max(p, q))
            base_value[k], base_bound[k] = base[key]
            exact.append(None)
            via.append((key, corr))
    through = np.array([e is None for e in exact], dtype=bool)
    values = base_value + shift
    bounds = np.where(through, base_bound + np.abs(shift) * U64, 0.0)
    bounds = (bounds + np.abs(values) * U64) * (1.0 + 4.0 * U64)
    return np.maximum(values, 0.0), np.nextafter(bounds, np.inf), exact, via
