"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NIPS 2017), with named variants.

Paper definition (the default): the score of row i is the sum of the SQUARED distances to its
n - f - 2 closest OTHER rows; Krum returns the row with the lowest score; Multi-Krum averages the
m lowest-scoring rows (paper's experiment: m = n - f). Requires n >= 2f + 3.
Variants seen in later code (they can select differently, see docs/aggregators.md):
  neighbours="n-f-1"   (closest n - f - 1 others)
  squared=False        (Euclidean, not squared, distances)
  score="mean"         (mean instead of sum: same ranking, different score values)
The selection is the one exact real arithmetic on the float32 inputs gives, ties to the lowest
row index, whatever the magnitudes: the scores are intervals from the distance kernel's rigorous
bounds, refined (direct float64, then exact) only where they overlap (certify.py).
"""
import numpy as np

from krum_mpi.aggregators.base import Aggregation, check_input
from krum_mpi.aggregators.certify import CertifiedDistances
from krum_mpi.aggregators.scores import ScoreBoard
from krum_mpi.aggregators.distances import sq_distances
from krum_mpi.aggregators.parallel import cpu_budget

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


def krum_scores(X, distances, f, neighbours="n-f-2", squared=True):
    """The certified score board of all rows of X (scores.ScoreBoard)."""
    k = neighbour_count(X.shape[0], f, neighbours)
    return ScoreBoard(CertifiedDistances(X, distances), np.arange(X.shape[0]), k, squared)


@cpu_budget
def krum_select(X, f, m=1, neighbours="n-f-2", squared=True, score="sum", distances=None, as_set=False):
    """int64 indices of the m best-scoring rows of X, best first (the paper's Krum for m = 1),
    exactly as real arithmetic on X ranks them, ties to the lowest index (certify.py). as_set: only
    which m rows is certified (Multi-Krum's decision), their order is by the scores' bounds."""
    n, _ = check_input(X, f)
    check_krum_bounds(n, f, "krum_select")
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= n:
        raise ValueError(f"krum_select needs an int 1 <= m <= n, got m={m!r}, n={n}")
    if score not in SCORES:  # "mean" divides every score by k: the same order
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if distances is None:
        distances = sq_distances(X)
    return krum_scores(X, distances, f, neighbours, squared).lowest(m, as_set)


def lowest_scores(rows, f, m, neighbours="n-f-2", squared=True, as_set=False):
    """The m best-scoring rows of a rows source (certified, as krum_select)."""
    k = neighbour_count(rows.n, f, neighbours)
    return ScoreBoard(rows.certified(), np.arange(rows.n), k, squared).lowest(m, as_set)


def krum(rows, f, neighbours="n-f-2", squared=True, score="sum"):
    """Krum: the row with the lowest score."""
    best = lowest_scores(rows, f, 1, neighbours, squared)
    weights = np.zeros(rows.n)
    weights[best] = 1.0
    return Aggregation(rows.row(int(best[0])), best, weights)


def multi_krum(rows, f, m=None, neighbours="n-f-2", squared=True, score="sum"):
    """Multi-Krum: mean of the m lowest-scoring rows (default m = n - f, the paper's experiment).
    The set of rows is exact; ``selected`` lists it by the certified scores' midpoints."""
    n = rows.n
    m = n - f if m is None else m
    chosen = lowest_scores(rows, f, m, neighbours, squared, as_set=True)
    weights = np.zeros(n)
    weights[chosen] = 1.0 / m
    return Aggregation(rows.combine(weights), chosen, weights)
