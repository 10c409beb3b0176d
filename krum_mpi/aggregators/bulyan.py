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
from krum_mpi.aggregators.scores import ScoreBoard
from krum_mpi.aggregators.coordinatewise import closest_mean


def check_bulyan_bounds(n, f):
    if n < 4 * f + 3:
        raise ValueError(f"bulyan needs n >= 4f + 3, got n={n}, f={f}: lower f or add workers")


def recursive_krum(cert, f, theta):
    """theta row indices chosen one at a time by certified Krum on the rows left (NumPy int64, in
    order); cert: the CertifiedDistances of the input, refined as the rounds need.

    The rounds are Krum on shrinking subsets of the same distances, so their refinements are done
    together: every round is played on the current bounds, a round its bounds cannot decide goes on
    with the best-placed row standing in and adds the pairs it needs to one list, and that list is
    refined in one pass over the rows; then the rounds are played again from the first undecided
    one (the rounds before it are certain), so each pass serves the true sequence (no more passes
    than rounds refined one by one, usually one), and the answer is the certified sequence. The later rounds
    may stand on a wrong row: their pairs ride along only while still at level 0 (their first,
    cheap levels share the pass); a pair they would take to the exact level waits until a round
    that is certain to be played needs it (the exact level costs several double-double passes)."""
    certain = []  # the rounds decided so far: exact facts, they stay decided (bounds only tighten)
    while True:
        left = np.setdiff1d(np.arange(cert.n), certain)
        chosen, pending, first = list(certain), [], None
        for _ in range(len(certain), theta):
            before = len(pending)
            winner, sure = ScoreBoard(cert, left, max(1, len(left) - f - 2)).lowest_or_collect(pending)
            if first is None:
                if sure:
                    certain.append(winner)
                else:
                    first = (before, len(pending))
            chosen.append(winner)
            left = left[left != winner]
        if not pending:
            return np.asarray(chosen, dtype=np.int64)
        a, b = first
        cert.refine(pending[a:b] + [p for p in pending[b:] if cert.level[p] == 0])


def bulyan(rows, f):
    """Recursive Krum selection of n - 2f rows, then the coordinate-wise closest-to-median mean."""
    theta = rows.n - 2 * f
    beta = theta - 2 * f
    chosen = recursive_krum(rows.certified(), f, theta)
    picked = rows.xp.asarray(chosen)
    return Aggregation(rows.per_block(lambda block: closest_mean(block, beta, rows=picked)), chosen, None)
