"""Minimum-diameter averaging (MDA), exact: the mean of the n - f rows whose largest pairwise
distance (diameter) is smallest. Ties go to the lexicographically first subset of row indices.

The search is a depth-first enumeration of subsets in lexicographic order with pruning (a partial
subset whose diameter already reaches the best one found is abandoned). Its worst case visits
C(n, f) subsets, so the rule refuses inputs with C(n, f) above ``max_subsets`` (default 10^6).
A non-finite row is infinitely far from the others: with at most f of them, MDA never picks one.
The search compares the exact ranks of the distances (distance_ranks), so its choice is the
one exact arithmetic on the inputs gives.
"""
from math import comb

import numpy as np

from krum_mpi import native
from krum_mpi.aggregators.base import Aggregation, to_numpy
from krum_mpi.aggregators.certify import INF, certified_order

MAX_SUBSETS = 1_000_000


def check_mda_bounds(n, f, max_subsets=MAX_SUBSETS):
    if n < 2 * f + 1:
        raise ValueError(f"mda needs n >= 2f + 1, got n={n}, f={f}: lower f or add workers")
    count = comb(n, f)
    if count > max_subsets:
        raise ValueError(f"mda would search C(n, f) = C({n}, {f}) = {count} subsets, above the limit "
                         f"max_subsets={max_subsets}: lower f or n, or raise max_subsets")


def min_diameter_subset(dist, size, tol=0.0):
    """Indices (NumPy int64, increasing) of the size-subset with the smallest diameter.

    A later subset replaces the best one only if smaller by more than tol (the distance error):
    ties go to the lexicographically first subset. The compiled twin (krum_mpi/native/rows.c) runs the
    same search step for step when it is built; this one is the reference and the fallback.
    """
    dist = to_numpy(dist)
    chosen = native_min_diameter_subset(dist, size, tol)
    if chosen is not None:
        return chosen
    n = dist.shape[0]
    best = [np.inf, None]

    def search(chosen, diameter, nxt):
        if len(chosen) == size:
            best[0], best[1] = diameter, list(chosen)
            return
        for i in range(nxt, n - (size - len(chosen)) + 1):
            grown = max(diameter, dist[i, chosen].max()) if chosen else 0.0
            if best[1] is not None and grown >= best[0] - tol:
                continue  # cannot beat the best subset found so far by more than the error
            chosen.append(i)
            search(chosen, grown, i + 1)
            chosen.pop()

    search([], 0.0, 0)
    return np.asarray(best[1], dtype=np.int64)


def native_min_diameter_subset(dist, size, tol):
    """min_diameter_subset by the compiled search, or None where it does not apply (not built or
    disabled, not a float64 square matrix, or no subset found: the Python search decides)."""
    lib = native.library("rows")
    if lib is None or dist.dtype != np.float64 or dist.ndim != 2 or dist.shape[0] != dist.shape[1]:
        return None
    n, size = dist.shape[0], int(size)
    if not 0 <= size <= n:
        return None
    dist = np.ascontiguousarray(dist)
    best = np.empty(size, dtype=np.int64)
    found = lib.krum_mda_search(dist.ctypes.data, n, size, float(tol), best.ctypes.data)
    return best if found == 1 else None


def mda(rows, f, max_subsets=MAX_SUBSETS):
    """Mean of the n - f rows with the smallest diameter."""
    n = rows.n
    check_mda_bounds(n, f, max_subsets)
    # diameters only compare distances: the search runs on their exact dense ranks, with no tolerance
    chosen = min_diameter_subset(distance_ranks(rows.certified()), n - f)
    weights = np.zeros(n)
    weights[chosen] = 1.0 / len(chosen)
    return Aggregation(rows.combine(weights), chosen, weights)


def distance_ranks(cert):
    """(n, n) float64 dense ranks of the exact distances (0 on the diagonal, equal values equal
    ranks, +inf for pairs with a non-finite row): any rule that only compares distances may decide
    on these instead."""
    n = cert.n
    iu = [(i, j) for i in range(n) for j in range(i + 1, n)]
    ranks = np.zeros((n, n))
    if not iu:
        return ranks
    pair_i = np.array([p[0] for p in iu])
    pair_j = np.array([p[1] for p in iu])

    def bounds(items):
        return cert.lo[pair_i[items], pair_j[items]], cert.hi[pair_i[items], pair_j[items]]

    def exact_key(p):
        i, j = iu[p]
        return None if cert.level[i, j] < 2 else (lambda v: (v == INF, 0 if v == INF else v))(cert.value(i, j))

    def same(p):
        i, j = iu[p]
        a, b = cert.group[i], cert.group[j]
        return (min(a, b), max(a, b))

    order, tied = certified_order(np.arange(len(iu)), bounds, lambda ps: cert.refine([iu[p] for p in ps]),
                                  exact_key, None, same)
    rank = 0
    for p, t in zip(order, tied):
        rank += 0 if t else 1
        i, j = iu[p]
        ranks[i, j] = ranks[j, i] = np.inf if cert.level[i, j] == 2 and cert.value(i, j) == INF else rank
    return ranks
