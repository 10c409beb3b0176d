"""Krum scores as certified intervals (certify.py): each row's sum of its k smallest distances to
the other rows of a subset, bounded from the distances' intervals and made exact on demand; the
order of the scores decided by certify.certified_order. Krum, Multi-Krum and Bulyan's rounds
(krum.py, bulyan.py) take their selections from a ScoreBoard."""
from decimal import Decimal, localcontext

import numpy as np

from krum_mpi.aggregators.certify import INF, Deferred, certified_order
from krum_mpi.aggregators.exact import SCALE, U64, gamma


def rounded_sum(values, up):
    """A float64 sum of non-negative values, moved outward past its rounding errors."""
    total = float(np.sum(values))
    if not np.isfinite(total):
        return total
    g = gamma(len(values) + 2)
    return float(np.nextafter(total * (1 + g) if up else total * (1 - g), np.inf if up else -np.inf))


def rounded_sums(values, up):
    """rounded_sum of each row of a 2-D array (any summation order: the bound holds for every one)."""
    with np.errstate(invalid="ignore", over="ignore"):
        total = np.sum(values, axis=1)
        g = gamma(values.shape[1] + 2)
        moved = np.nextafter(total * (1 + g) if up else total * (1 - g), np.inf if up else -np.inf)
    return np.where(np.isfinite(total), moved, total)


class ScoreBoard:
    """Krum scores of the rows of ``rows``: each row's sum of its k smallest (squared, or with
    squared=False Euclidean) distances to the other rows of ``rows``, as intervals made exact on demand."""

    def __init__(self, cert, rows, k, squared=True):
        self.cert, self.rows, self.k, self.squared = cert, np.asarray(rows, dtype=np.int64), k, squared
        self._near = ({}, None)  # candidates per row, valid while cert.version is unchanged

    def others(self, i):
        return self.rows[self.rows != i]

    def candidates(self, i):
        """The other rows that may be among i's k nearest (the rest are certainly farther); kept
        until the distances are refined (a decision asks for them many times: bounds, labels, keys)."""
        memo, version = self._near
        if version != self.cert.version:
            memo = {}
            self._near = (memo, self.cert.version)
        if i not in memo:
            others = self.others(i)
            hi = self.cert.hi[i, others]
            cut = np.partition(hi, self.k - 1)[self.k - 1]
            memo[i] = others[self.cert.lo[i, others] <= cut]
        return memo[i]

    def bounds(self, items):
        """(lo, hi) of the items' scores: each row's k smallest lower (upper) bounds to the others,
        summed and moved outward past the sum's roundings (all rows at once: a row's own column is
        +inf, never among its k smallest, k < len(rows))."""
        items = np.asarray(items, dtype=np.int64)
        self_column = items[:, None] == self.rows[None, :]
        sums = []
        for side, up in ((self.cert.lo, False), (self.cert.hi, True)):
            part = side[np.ix_(items, self.rows)]
            part[self_column] = np.inf
            near = np.partition(part, self.k - 1, axis=1)[:, :self.k]
            if not self.squared:
                near = np.sqrt(near) * (1 + 2 * U64 if up else 1 - 2 * U64)
            sums.append(rounded_sums(near, up))
        return sums[0], sums[1]

    def refine(self, items):
        self.cert.refine([(i, j) for i in items for j in self.candidates(i) if self.cert.level[i, j] < 2])

    def exact_key(self, i):
        """(0, the exact score) (squared: an int), (1, 0) for an infinite one, None while a distance is
        not exact; or a ViaPivots where the k nearest are known and every distance among them is
        exact or known as a pivots' distance plus an exact int (clones of one row: their scores
        compare by the ints, the pivots' distances cancel; certify.settle)."""
        near = self.candidates(i)
        if (self.cert.level[i, near] < 2).any():
            return self.cert.via_pivots(i, near.tolist()) if self.squared and len(near) == self.k else None
        values = self.cert.values(i, near.tolist())
        if INF in values:
            values = sorted(values, key=lambda v: (v == INF, v if v != INF else 0))
        elif len(values) > self.k or not self.squared:  # unsquared: one order for equal multisets
            values.sort()
        chosen = values[:self.k]
        if INF in chosen:
            return (1, 0)
        if self.squared:
            return (0, sum(chosen))
        with localcontext() as ctx:  # sums of square roots: 120 significant digits decide
            ctx.prec = 120
            half = Decimal(2) ** (SCALE[self.cert.dtype] // 2)
            return (0, sum(Decimal(v).sqrt() for v in chosen) / half)

    def same(self, i):
        """A label equal for rows whose scores are equal by construction: when i's k nearest rows
        are certain, its score is the sum over those pairs, so the multiset of pairs (rows read
        through their identical-contents groups) is the label: mutual nearest neighbours at k = 1,
        and rows with identical contents, get equal labels with no arithmetic at all."""
        group = self.cert.group
        near = self.candidates(i)
        if len(near) == self.k:
            first, second = np.minimum(group[i], group[near]), np.maximum(group[i], group[near])
            order = np.lexsort((second, first))
            return tuple(zip(first[order].tolist(), second[order].tolist()))
        return int(group[i]) if (group[self.rows] == group[i]).sum() > 1 else -1 - int(i)

    def lowest(self, m, as_set=False):
        """The m rows with the lowest scores, best first, ties to the lowest index (as_set: which
        rows is exact, their order is by the scores' bounds)."""
        order, _ = certified_order(self.rows, self.bounds, self.refine, self.exact_key, m, self.same, as_set)
        return order[:m]

    def lowest_or_collect(self, pending):
        """(row, certain): the lowest-scoring row if the current bounds (and exact values) certify it,
        with certain=True; otherwise the pairs its certification needs are added to ``pending`` and
        the row with the lowest midpoint (ties to the lowest index) stands in, certain=False."""
        def collect(items):
            pending.extend((i, j) for i in items for j in self.candidates(i) if self.cert.level[i, j] < 2)
            raise Deferred

        try:
            order, _ = certified_order(self.rows, self.bounds, collect, self.exact_key, 1, self.same)
            return int(order[0]), True
        except Deferred:
            lo, hi = self.bounds(self.rows)
            return int(self.rows[np.lexsort((self.rows, 0.5 * lo + 0.5 * hi))[0]]), False
