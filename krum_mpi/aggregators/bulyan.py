"""Bulyan (El Mhamdi, Guerraoui, Rouault, ICML 2018). Requires n >= 4f + 3.

1. Select theta = n - 2f rows by repeated Krum: Krum on the rows not yet selected (score: sum of the
   squared distances to the max(1, r - f - 2) closest others, r = rows left: at least one, so that
   the last picks are not a tie of empty sums), move the winner to the selection, repeat.
   The distance matrix is computed once and reused.
2. Per coordinate, average the beta = theta - 2f selected values closest to the median of the
   selected values (at equal distance the smaller value is kept, as in meamed; the distances are
   compared exactly, coordinatewise.low_farther).
"""
import numpy as np

from krum_mpi.aggregators.base import Aggregation
from krum_mpi.aggregators.certify import ScoreBoard
from krum_mpi.aggregators.coordinatewise import closest_mean


def check_bulyan_bounds(n, f):
    if n < 4 * f + 3:
        raise ValueError(f"bulyan needs n >= 4f + 3, got n={n}, f={f}: lower f or add workers")


def recursive_krum(cert, f, theta):
    """theta row indices chosen one at a time by certified Krum on the rows left (NumPy int64, in
    order); cert: the CertifiedDistances of the input, refined as the rounds need."""
    left = np.arange(cert.n)
    chosen = []
    for _ in range(theta):
        winner = int(ScoreBoard(cert, left, max(1, len(left) - f - 2)).lowest(1)[0])
        chosen.append(winner)
        left = left[left != winner]
    return np.asarray(chosen, dtype=np.int64)


def bulyan(rows, f):
    """Recursive Krum selection of n - 2f rows, then the coordinate-wise closest-to-median mean."""
    theta = rows.n - 2 * f
    beta = theta - 2 * f
    chosen = recursive_krum(rows.certified(), f, theta)
    picked = rows.xp.asarray(chosen)
    return Aggregation(rows.per_block(lambda block: closest_mean(block, beta, rows=picked)), chosen, None)
