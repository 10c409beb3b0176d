"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NIPS 2017), with named variants.

Paper definition (the default): the score of row i is the sum of the SQUARED distances to its
n - f - 2 closest OTHER rows; Krum returns the row with the lowest score; Multi-Krum averages the
m lowest-scoring rows (paper's experiment: m = n - f). Requires n >= 2f + 3.
Variants seen in later code (they can select differently, see docs/aggregators.md):
  neighbours="n-f-1"   (closest n - f - 1 others)
  squared=False        (Euclidean, not squared, distances)
  score="mean"         (mean instead of sum: same ranking, different score values)
Ties go to the lowest row index; two scores count as tied when they differ by less than the
distance kernel's error estimate (exact duplicates always tie).
"""
import numpy as np

from krum_mpi.aggregators.base import Aggregation, check_input, to_numpy
from krum_mpi.aggregators.distances import sq_distances
from krum_mpi.aggregators.parallel import cpu_budget
from krum_mpi.aggregators.rowops import combine_rows

NEIGHBOURS = ("n-f-2", "n-f-1")
SCORES = ("sum", "mean")


def check_krum_bounds(n, f, rule="krum"):
    if n < 2 * f + 3:
        raise ValueError(f"{rule} needs n >= 2f + 3, got n={n}, f={f}: lower f or add workers")


def check_m(n, f, m):
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
        raise ValueError(f"m (rows Multi-Krum averages) must be an int, got {m!r}")
    if not 1 <= m <= n - f:
        raise ValueError(f"multi-krum needs 1 <= m <= n - f, got m={m}, n={n}, f={f}")


def neighbour_count(n, f, neighbours="n-f-2"):
    if neighbours not in NEIGHBOURS:
        raise ValueError(f"neighbours must be one of {NEIGHBOURS}, got {neighbours!r}")
    return n - f - 2 if neighbours == "n-f-2" else n - f - 1


def nearest_sums(dist, err, k, squared=True):
    """Per row: the sum of its k smallest distances to OTHER rows, and the error bound of that sum.

    The k nearest are sorted before summing, so identical neighbour sets give identical sums.
    """
    d, e = dist, err
    if not squared:
        d = np.sqrt(dist)
        with np.errstate(divide="ignore", invalid="ignore"):  # |sqrt a - sqrt b| <= |a - b| / sqrt a
            e = np.minimum(np.sqrt(err), np.where(d > 0, err / d, np.inf))
    others = d.copy()
    np.fill_diagonal(others, np.inf)  # "closest OTHER rows": never the row itself
    order = np.argsort(others, axis=1, kind="stable")[:, :k]
    nearest = np.sort(np.take_along_axis(others, order, axis=1), axis=1)
    return nearest.sum(axis=1), np.take_along_axis(e, order, axis=1).sum(axis=1)


def krum_scores(distances, f, neighbours="n-f-2", squared=True, score="sum"):
    """(scores, slack): NumPy float64 Krum scores and their estimated absolute errors."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    dist = to_numpy(distances.sq)
    k = neighbour_count(dist.shape[0], f, neighbours)
    scores, slack = nearest_sums(dist, distances.err, k, squared)
    return (scores / k, slack / k) if score == "mean" else (scores, slack)


def rank_lowest(scores, m, slack=None):
    """Indices of the m lowest scores, best first.

    Scores within their combined error (slack) of the lowest count as tied: the lowest index wins.
    """
    scores = np.asarray(scores, dtype=np.float64)
    slack = np.zeros_like(scores) if slack is None else np.asarray(slack, dtype=np.float64)
    remaining = np.ones(len(scores), dtype=bool)
    order = []
    for _ in range(m):
        candidates = np.flatnonzero(remaining)
        values = scores[candidates]
        best = int(np.argmin(np.where(np.isnan(values), np.inf, values)))
        if np.isfinite(values[best]):
            tied = values <= values[best] + slack[candidates] + slack[candidates[best]]
        else:
            tied = np.ones(len(candidates), dtype=bool)  # nothing finite left: lowest index
        pick = int(candidates[np.flatnonzero(tied)[0]])
        order.append(pick)
        remaining[pick] = False
    return np.asarray(order, dtype=np.int64)


@cpu_budget
def krum_select(X, f, m=1, neighbours="n-f-2", squared=True, score="sum", distances=None):
    """int64 indices of the m best-scoring rows of X, best first (the paper's Krum for m = 1)."""
    n, _ = check_input(X, f)
    check_krum_bounds(n, f, "krum_select")
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= n:
        raise ValueError(f"krum_select needs an int 1 <= m <= n, got m={m!r}, n={n}")
    if distances is None:
        distances = sq_distances(X)
    scores, slack = krum_scores(distances, f, neighbours, squared, score)
    return rank_lowest(scores, m, slack)


def krum(X, f, neighbours="n-f-2", squared=True, score="sum"):
    """Krum: the row with the lowest score."""
    best = krum_select(X, f, 1, neighbours, squared, score)
    weights = np.zeros(X.shape[0])
    weights[best] = 1.0
    return Aggregation(X[int(best[0])].copy(), best, weights)


def multi_krum(X, f, m=None, neighbours="n-f-2", squared=True, score="sum"):
    """Multi-Krum: mean of the m lowest-scoring rows (default m = n - f, the paper's experiment)."""
    n = X.shape[0]
    m = n - f if m is None else m
    chosen = krum_select(X, f, m, neighbours, squared, score)
    weights = np.zeros(n)
    weights[chosen] = 1.0 / m
    return Aggregation(combine_rows(X, weights), chosen, weights)
