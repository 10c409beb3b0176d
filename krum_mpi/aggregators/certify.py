"""Certified decisions of the distance-based rules: the answer exact real arithmetic on the inputs
gives, ties to the lowest index, whatever the magnitudes.

Every squared distance is an interval [lo, hi] that holds its exact value. It starts from the fast
kernel's rigorous bound (distances.py) and is tightened on demand, one level at a time:
  level 0  the fast centred Gram products
  level 0.5  float32 rows with the compiled kernels (no clones among them): direct float64
           differences, one pass over the rows all pending pairs involve (about 1e-14 relative:
           it settles the statistical near-ties of honest rows; ``checked`` marks these pairs)
  level 1  float32 rows with the compiled kernels: exact products summed in double-double, one
           pass over the rows all pending pairs involve (gram_entries.py; about 1e-20 relative);
           otherwise direct differences accumulated in float64 (gamma_(d+3), exact.py)
  level 2  the exact value (an integer: one exact Gram pass for float32 rows, gram_entries.py), or
           +inf for a pair with a non-finite row
A decision (an order of scores, a set of nearest rows, a subset's diameter) is taken only when the
intervals separate it; what overlaps is refined and decided again. Rows with identical contents are
found once (their distance is exactly 0) and their equal scores need no arithmetic at all.
``recomputed`` counts the distances refined (the float64 step, levels 1 and 2): 0 in ordinary runs.
"""
import contextlib
import contextvars
from typing import NamedTuple

import numpy as np

from krum_mpi.aggregators.base import to_numpy
from krum_mpi.aggregators.exact import exact_to_float
from krum_mpi.aggregators.gram_entries import LocalRows  # noqa: F401 (the row source; sharded.py imports it here)

INF = float("inf")
_tally = contextvars.ContextVar("krum_mpi_recomputed", default=None)


@contextlib.contextmanager
def counting():
    """Count the distances recomputed (the float64 step, levels 1 and 2) inside the block:
    ``with counting() as c: ...; c[0]``; c[1] counts the refinement passes (each reads the rows its pairs involve once).
    The Aggregator wraps every rule call in one (Aggregation.recomputed)."""
    outer = _tally.get()
    box = [0, 0]
    token = _tally.set(box)
    try:
        yield box
    finally:
        _tally.reset(token)
        if outer is not None:  # nested: the enclosing count includes this one
            outer[0] += box[0]
            outer[1] += box[1]


def tally(count):
    """Add ``count`` recomputed distances to the enclosing ``counting`` block, if any (the rows
    source's exact level counts here too)."""
    box = _tally.get()
    if box is not None:
        box[0] += count


class CertifiedDistances:
    """The (n, n) interval distances of the rows, refined on demand (module doc). ``rows``: the
    (n, d) array, or an object like LocalRows that reads them where they are."""

    def __init__(self, rows, distances):
        self.rows = rows if hasattr(rows, "level_one") else LocalRows(rows)
        self.dtype = self.rows.dtype
        n = len(distances.finite)
        self.n = n
        sq, err = to_numpy(distances.sq).astype(np.float64), np.asarray(distances.err, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            self.lo = np.maximum(np.nextafter(sq - err, -np.inf), 0.0)
            self.hi = np.nextafter(sq + err, np.inf)
        self.finite = np.asarray(distances.finite, dtype=bool)
        bad = ~(self.finite[:, None] & self.finite[None, :])
        self.lo[bad] = self.hi[bad] = np.inf
        self.level = np.where(bad, 2, 0).astype(np.int8)
        np.fill_diagonal(self.lo, 0.0)
        np.fill_diagonal(self.hi, 0.0)
        np.fill_diagonal(self.level, 2)
        self.checked = np.zeros((n, n), dtype=bool)  # level-0 pairs the float64 level has tightened
        self.exact = {}  # (i, j), i < j -> int (distance * 2^SCALE); pairs at level 2 absent here are inf
        self.via = {}  # (i, j), i < j, level 1 -> ((p, q), int): exactly D(p, q) + the int (clones.py)
        self.recomputed = 0
        self.version = 0  # counts the refinements: what was derived from the bounds before is stale
        self.group = self.duplicate_groups()
        self.members = {}  # group -> its rows
        for i, g in enumerate(self.group.tolist()):
            self.members.setdefault(g, []).append(i)

    def duplicate_groups(self):
        """group[i]: the lowest index of the rows identical to row i (exactly equal values)."""
        group = np.arange(self.n)
        close = [(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(self.lo == 0.0, 1)))
                 if self.finite[i] and self.finite[j]]
        if hasattr(self.rows, "identical_pairs"):  # all at once (LocalRows: one search for clones)
            same = dict(zip(close, self.rows.identical_pairs(close)))
        else:
            same = None
        for i, j in close:
            if group[j] == j and (same[(i, j)] if same is not None else self.rows.identical(i, j)):
                group[j] = group[i]
        for i in range(self.n):
            for j in range(i + 1, self.n):
                if group[i] == group[j] and self.level[i, j] < 2:
                    self.set_exact(i, j, 0)
        return group

    def mates(self, i, j):
        """The pairs whose rows have the same contents as rows i and j (i != j): (i, j) itself, and
        every other pair of rows of the same two identical-contents groups, at a distance > 0."""
        gi, gj = self.members[self.group[i]], self.members[self.group[j]]
        if self.group[i] == self.group[j] or len(gi) * len(gj) == 1:
            return [(i, j)]
        return [(a, c) for a in gi for c in gj]

    def set_exact(self, i, j, value):
        i, j = min(i, j), max(i, j)
        self.exact[(i, j)] = value
        f = exact_to_float(value, self.dtype) if value else 0.0
        self.lo[i, j] = self.lo[j, i] = np.nextafter(f, -np.inf) if f else 0.0
        self.hi[i, j] = self.hi[j, i] = np.nextafter(f, np.inf) if f else 0.0
        self.level[i, j] = self.level[j, i] = 2

    def value(self, i, j):
        """The exact distance of a level-2 pair: an int (scaled by 2^SCALE), or INF."""
        if i == j:
            return 0
        return self.exact.get((min(i, j), max(i, j)), INF)

    def via_pivots(self, i, js):
        """ViaPivots of the sum of the distances from row i to the rows js, or None: each pair is
        exact, or at level 1 with the pivots' decomposition (self.via); None where one is neither or
        infinite."""
        bases, rest = [], 0
        for j in js:
            key = (i, j) if i < j else (j, i)
            if self.level[key] == 2:
                value = self.exact.get(key, INF) if i != j else 0
                if value == INF:
                    return None
                rest += value
            elif key in self.via:
                pivots, correction = self.via[key]
                bases.append(pivots)
                rest += correction
            else:
                return None
        return ViaPivots(tuple(sorted(bases)), rest)

    def values(self, i, js):
        """[value(i, j) for j in js] (level-2 pairs), in one pass."""
        get = self.exact.get
        return [0 if i == j else get((i, j) if i < j else (j, i), INF) for j in js]

    def refine_f64(self, direct):
        """Level 0.5 (module doc): the level-0 pairs not yet seen by the float64 level get it, in one
        pass; returns the pairs left for level 1 (those it had seen already, or all of them where the
        row source has no float64 level or it does not apply)."""
        fresh = [p for p in direct if not self.checked[p]]
        result = self.rows.level_f64(fresh) if fresh and hasattr(self.rows, "level_f64") else None
        if result is None:
            return direct
        for (i, j), v, b in zip(fresh, *result):
            lo, hi = max(np.nextafter(v - b, -np.inf), 0.0), np.nextafter(v + b, np.inf)
            for a, c in self.mates(i, j):
                if self.level[a, c] == 0:
                    self.lo[a, c] = self.lo[c, a] = max(lo, self.lo[a, c])
                    self.hi[a, c] = self.hi[c, a] = min(hi, self.hi[a, c])
                    self.checked[a, c] = self.checked[c, a] = True
        self.recomputed += len(fresh)
        box = _tally.get()
        if box is not None:
            box[0] += len(fresh)
            box[1] += 1
        done = set(fresh)
        return [p for p in direct if p not in done]

    def store_level_one(self, pairs, values, bounds, exact, via):
        """Level 1 for the pairs (distinct, i < j): their intervals, or the exact int where it came
        free (exact[k]), and the pivots' decomposition (via[k]); rows with identical contents get
        the same. The pairs of rows without identical twins are stored all at once."""
        values, bounds = np.asarray(values, dtype=np.float64), np.asarray(bounds, dtype=np.float64)
        lo = np.maximum(np.nextafter(values - bounds, -np.inf), 0.0)
        hi = np.nextafter(values + bounds, np.inf)
        plain = []
        for k, ((i, j), e, through) in enumerate(zip(pairs, exact, via)):
            mates = self.mates(i, j)
            if e is not None:
                for a, c in mates:
                    self.set_exact(a, c, e)
                continue
            if through is not None:  # rows with identical contents: the same decomposition
                self.via.update({(min(a, c), max(a, c)): through for a, c in mates})
            if len(mates) == 1:
                plain.append(k)
                continue
            for a, c in mates:  # rows with identical contents: the same distance
                if self.level[a, c] < 2:
                    self.lo[a, c] = self.lo[c, a] = max(lo[k], self.lo[a, c])
                    self.hi[a, c] = self.hi[c, a] = min(hi[k], self.hi[a, c])
                    self.level[a, c] = self.level[c, a] = 1
        if plain:
            at = np.asarray(plain, dtype=np.int64)
            I = np.asarray([pairs[k][0] for k in plain], dtype=np.int64)
            J = np.asarray([pairs[k][1] for k in plain], dtype=np.int64)
            open_ = self.level[I, J] < 2
            at, I, J = at[open_], I[open_], J[open_]
            self.lo[I, J] = self.lo[J, I] = np.maximum(lo[at], self.lo[I, J])
            self.hi[I, J] = self.hi[J, I] = np.minimum(hi[at], self.hi[I, J])
            self.level[I, J] = self.level[J, I] = 1

    def refine(self, pairs):
        """Raise each pair one level (pairs already exact are left alone)."""
        self.version += 1
        pairs = sorted({(min(i, j), max(i, j)) for i, j in pairs if i != j})
        direct = [p for p in pairs if self.level[p] == 0]
        exact = [p for p in pairs if self.level[p] == 1]
        direct = self.refine_f64(direct)
        if direct:
            if hasattr(self.rows, "level_one_exact"):
                result = self.rows.level_one_exact(direct)
            else:  # a row source with levels summed over blocks (sharded): no free exact values
                result = (*self.rows.level_one(direct), [None] * len(direct), [None] * len(direct))
            self.store_level_one(direct, *result)
        known = {}
        for i, j in exact:  # rows with identical contents share their exact distances
            gi, gj = self.group[i], self.group[j]
            key = (min(gi, gj), max(gi, gj))
            if key in self.exact and self.level[key] == 2:
                known[(i, j)] = self.exact[key]
        todo = [p for p in exact if p not in known]
        if todo:
            known.update(zip(todo, self.rows.exact(todo)))
        for p in exact:
            for a, c in self.mates(*p):
                self.set_exact(a, c, known[p])
        self.recomputed += len(direct) + len(exact)
        box = _tally.get()
        if box is not None:
            box[0] += len(direct) + len(exact)
            box[1] += int(bool(direct)) + int(bool(todo))


class ViaPivots(NamedTuple):
    """An exact key not fully known: the sum of the exact distances of the pivot pairs ``bases``
    (clones.py), not computed, plus the exact int ``rest``. Keys with the same bases compare by
    their rests, exactly; against any other key they must be made exact first."""
    bases: tuple
    rest: int


def settle(keys):
    """keys (label -> exact key or None) of one group of overlapping intervals, with ViaPivots keys
    made comparable: (0, rest) where every key of the group is ViaPivots over the same bases (the
    common sum cancels), else None (to be made exact)."""
    via = [k for k in keys.values() if isinstance(k, ViaPivots)]
    if not via:
        return keys
    if len(via) == len(keys) and len({k.bases for k in via}) == 1:
        return {label: (0, k.rest) for label, k in keys.items()}
    return {label: (None if isinstance(k, ViaPivots) else k) for label, k in keys.items()}


def certified_order(items, bounds, refine, exact_key, m=None, same=None, as_set=False):
    """Order ``items`` (ints) by their exact values, ties to the lowest item, certain for the first
    m positions (all by default). Returns (order, tied): tied[p] says order[p] equals order[p - 1].
    as_set=True: only WHICH items take the first m positions is certain (the order among them is
    by the bounds' midpoints); much cheaper when many values are close.

    bounds(items) -> (lo, hi) float64 arrays holding each exact value; refine(list of items) tightens
    them; exact_key(item) -> a comparable exact value, or None while the item is not exact yet
    (or a ViaPivots, comparable only with others over the same pivot pairs: settle);
    same(item) -> a label, items with equal labels being known to be equal (rows with identical
    contents), so that one of them stands for all.
    """
    items = np.asarray(items, dtype=np.int64)
    m = len(items) if m is None else m
    while True:
        lo, hi = bounds(items)
        order = np.lexsort((items, hi, lo))
        pending, result, tied = [], [], []
        for a, b in clusters(lo[order], hi[order]):
            members = sorted(items[order[a:b]].tolist())
            if b - a == 1 or a >= m or (as_set and b <= m):
                if b - a > 1 and as_set:  # inside the set: by midpoint, then index
                    mid = dict(zip(items[order[a:b]].tolist(), 0.5 * (lo[order[a:b]] + hi[order[a:b]])))
                    members = sorted(members, key=lambda x: (mid[x], x))
                result += members
                tied += [False] + [None] * (b - a - 1)  # beyond m: order not certified, not needed
                continue
            labels = {x: (same(x) if same else x) for x in members}
            if len(set(labels.values())) == 1:  # all known equal: no arithmetic needed
                result += members
                tied += [False] + [True] * (b - a - 1)
                continue
            keys, first = {}, {}
            for x in members:
                if labels[x] not in keys:
                    keys[labels[x]], first[labels[x]] = exact_key(x), x
            keys = settle(keys)
            pending += [x for label, x in first.items() if keys[label] is None]
            if pending and any(keys[labels[x]] is None for x in members):
                result += members  # placeholder, redone after refinement
                tied += [None] * (b - a)
                continue
            ranked = sorted(members, key=lambda x: (keys[labels[x]], x))
            result += ranked
            tied += [False] + [keys[labels[x]] == keys[labels[y]] for x, y in zip(ranked, ranked[1:])]
        if not pending:
            return np.asarray(result, dtype=np.int64), tied
        refine(pending)


def clusters(lo, hi):
    """(start, stop) runs of a list sorted by lo whose intervals chain into each other (touching
    intervals overlap: their values may be equal)."""
    lo, hi = np.asarray(lo).tolist(), np.asarray(hi).tolist()  # Python floats: a plain loop runs fast
    out, start, reach = [], 0, hi[0] if len(hi) else 0.0
    for p in range(1, len(lo)):
        if lo[p] > reach:
            out.append((start, p))
            start, reach = p, hi[p]
        else:
            reach = max(reach, hi[p])
    if len(lo):
        out.append((start, len(lo)))
    return out


class Deferred(Exception):
    """Raised by a refine that only collects its pairs (nearest_rows_all, scores.ScoreBoard.lowest_or_collect):
    they are refined later, together, in one pass."""


def nearest_rows_all(cert, count):
    """[nearest_rows(cert, i, count) for every row i], every round's refinements of all rows
    batched into one refinement (one pass over the rows involved) instead of one per row."""
    done = {}
    while len(done) < cert.n:
        pending = []

        def collect(pairs):
            pending.extend(pairs)
            raise Deferred

        for i in range(cert.n):
            if i not in done:
                try:
                    done[i] = nearest_rows(cert, i, count, collect)
                except Deferred:
                    pass
        if pending:
            cert.refine(pending)
    return [done[i] for i in range(cert.n)]


def nearest_rows(cert, i, count, refine=None):
    """Row i's ``count`` nearest other rows (which rows is exact, ties to the lowest index; their
    order is by the bounds). refine(pairs): how pending pairs are refined (default cert.refine)."""
    refine = refine or cert.refine
    others = np.array([j for j in range(cert.n) if j != i], dtype=np.int64)

    def bounds(items):
        return cert.lo[i, items], cert.hi[i, items]

    def exact_key(j):
        return None if cert.level[i, j] < 2 else (lambda v: (v == INF, 0 if v == INF else v))(cert.value(i, j))

    def same(j):
        return int(cert.group[j])

    order, _ = certified_order(others, bounds, lambda js: refine([(i, j) for j in js]), exact_key, count, same,
                               as_set=True)
    return order[:count]
