"""Direct float64 reference implementations of every rule, written plainly (pair by pair, column by
column) so that they can be read against the papers; the fast rules are tested against them.

Conventions shared with krum_mpi.aggregators (docs/aggregators.md): ties go to the lowest index;
in coordinate-wise orderings NaN counts as larger than +inf; a non-finite row is infinitely far.
"""
import itertools
import math
from fractions import Fraction

import numpy as np


def row_is_finite(x):
    return all(math.isfinite(v) for v in x)


def ref_sq_distance(a, b):
    """Squared Euclidean distance of two rows in float64; inf if either holds NaN/Inf."""
    if not (row_is_finite(a) and row_is_finite(b)):
        return math.inf
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(np.dot(diff, diff))


def ref_distance_matrix(X):
    n = len(X)
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                D[i, j] = ref_sq_distance(X[i], X[j])
    return D


def ref_krum_scores(X, f, neighbours="n-f-2", squared=True, score="sum", D=None):
    n = len(X)
    D = ref_distance_matrix(X) if D is None else D
    k = n - f - 2 if neighbours == "n-f-2" else n - f - 1
    scores = []
    for i in range(n):
        others = sorted(D[i, j] if squared else math.sqrt(D[i, j]) for j in range(n) if j != i)
        total = sum(others[:k])
        scores.append(total / k if score == "mean" else total)
    return scores


def ref_rank(scores, m):
    """Indices of the m lowest scores; exact ties to the lowest index."""
    return [i for _, i in sorted((s, i) for i, s in enumerate(scores))][:m]


def score_gap(scores, m):
    """Relative gap between the m-th and (m+1)-th lowest scores (inf if none): tests use it to
    stay clear of near ties that no floating-point kernel can order (TIE_RTOL is documented)."""
    s = sorted(scores)
    if m >= len(s) or not math.isfinite(s[m]):
        return math.inf
    return (s[m] - s[m - 1]) / max(abs(s[m]), 1e-300)


def ref_mean_of_rows(X, rows):
    return np.mean([np.asarray(X[i], dtype=np.float64) for i in rows], axis=0)


def ref_krum(X, f, **variant):
    best = ref_rank(ref_krum_scores(X, f, **variant), 1)
    return np.asarray(X[best[0]], dtype=np.float64), best


def ref_multi_krum(X, f, m=None, **variant):
    m = len(X) - f if m is None else m
    chosen = ref_rank(ref_krum_scores(X, f, **variant), m)
    return ref_mean_of_rows(X, chosen), chosen


def sorted_column(X, j):
    """Column j in increasing order, NaN after +inf (NumPy's order)."""
    col = [float(X[i][j]) for i in range(len(X))]
    return sorted(col, key=lambda v: (math.isnan(v), v if not math.isnan(v) else 0.0))


def ref_median(X, f):
    n, d = np.shape(X)
    out = []
    for j in range(d):
        col = sorted_column(X, j)
        out.append(col[n // 2] if n % 2 else 0.5 * col[n // 2 - 1] + 0.5 * col[n // 2])
    return np.asarray(out)


def ref_trimmed_mean(X, f, b=None):
    n, d = np.shape(X)
    b = f if b is None else b
    return np.asarray([np.mean(sorted_column(X, j)[b:n - b]) for j in range(d)])


def ref_closest_to_median(values, keep):
    """Mean of the ``keep`` values closest to their median; at equal distance the smaller value is
    kept; NaN is the farthest. Distances of finite values to the exact median are compared exactly
    (fractions): a float distance can round a strictly closer value into a tie."""
    n = len(values)
    col = sorted(values, key=lambda v: (math.isnan(v), v if not math.isnan(v) else 0.0))
    if all(math.isfinite(v) for v in values):
        med = (Fraction(col[(n - 1) // 2]) + Fraction(col[n // 2])) / 2
        gap = lambda v: abs(Fraction(v) - med)  # noqa: E731
    else:
        med = col[n // 2] if n % 2 else 0.5 * col[n // 2 - 1] + 0.5 * col[n // 2]
        gap = lambda v: math.inf if math.isnan(abs(v - med)) else abs(v - med)  # noqa: E731
    order = sorted(range(n), key=lambda i: (gap(values[i]), values[i] if not math.isnan(values[i]) else math.inf))
    return float(np.mean([values[i] for i in order[:keep]]))


def ref_meamed(X, f):
    n, d = np.shape(X)
    return np.asarray([ref_closest_to_median([float(X[i][j]) for i in range(n)], n - f) for j in range(d)])


def ref_geometric_median(X, f, iterations=3, nu=0.1):
    n = len(X)
    finite = [row_is_finite(x) for x in X]
    rows = [np.asarray(x, dtype=np.float64) for x in X]
    z = np.mean([rows[i] for i in range(n) if finite[i]], axis=0)
    for _ in range(iterations):
        beta = [1.0 / max(nu, math.sqrt(float(np.dot(rows[i] - z, rows[i] - z)))) if finite[i] else 0.0
                for i in range(n)]
        z = sum(beta[i] * rows[i] for i in range(n) if finite[i]) / sum(beta)
    return z


def ref_bulyan(X, f):
    n, d = np.shape(X)
    D = ref_distance_matrix(X)
    theta, beta = n - 2 * f, n - 4 * f
    left, chosen = list(range(n)), []
    for _ in range(theta):
        k = max(1, len(left) - f - 2)
        scores = [sum(sorted(D[i, j] for j in left if j != i)[:k]) for i in left]
        winner = left[ref_rank(scores, 1)[0]]
        chosen.append(winner)
        left.remove(winner)
    out = [ref_closest_to_median([float(X[i][j]) for i in chosen], beta) for j in range(d)]
    return np.asarray(out), chosen


def ref_centered_clipping(X, f, tau=100.0, iterations=1, center=None):
    n, d = np.shape(X)
    v = np.zeros(d) if center is None else np.asarray(center, dtype=np.float64)
    for _ in range(iterations):
        step = np.zeros(d)
        for i in range(n):
            if not row_is_finite(X[i]):
                continue
            diff = np.asarray(X[i], dtype=np.float64) - v
            norm = math.sqrt(float(np.dot(diff, diff)))
            step += diff * (min(1.0, tau / norm) if norm > 0 else 1.0)
        v = v + step / n
    return v


def ref_mda(X, f):
    n = len(X)
    D = ref_distance_matrix(X)
    best, best_set = math.inf, None
    for subset in itertools.combinations(range(n), n - f):  # lexicographic order
        diameter = max((D[i, j] for i, j in itertools.combinations(subset, 2)), default=0.0)
        if best_set is None or diameter < best:
            best, best_set = diameter, list(subset)
    return ref_mean_of_rows(X, best_set), best_set


def ref_nnm(X, f):
    n = len(X)
    D = ref_distance_matrix(X)
    mixed = []
    for i in range(n):
        order = [i] + sorted((j for j in range(n) if j != i), key=lambda j: (D[i, j], j))
        mixed.append(ref_mean_of_rows(X, order[:n - f]))
    return np.asarray(mixed)


def ref_clip_rows(X, clip_norm):
    out = []
    for x in X:
        x = np.asarray(x, dtype=np.float64)
        if not row_is_finite(x):
            out.append(x)
            continue
        norm = math.sqrt(float(np.dot(x, x)))
        out.append(x * min(1.0, clip_norm / norm) if norm > 0 else x)
    return np.asarray(out)


# -- the references themselves, on examples small enough to check by hand -----------------------

def test_ref_krum_by_hand():
    # points on a line: 0, 1, 2, 3, 100; n=5, f=1: each score sums the n-f-2 = 2 nearest squared gaps
    X = np.array([[0.0], [1.0], [2.0], [3.0], [100.0]])
    assert ref_krum_scores(X, 1) == [1 + 4, 1 + 1, 1 + 1, 1 + 4, 97**2 + 98**2]
    assert ref_krum(X, 1)[1] == [1]  # rows 1 and 2 tie: lowest index
    assert ref_multi_krum(X, 1)[1] == [1, 2, 0, 3]


def test_ref_coordinatewise_by_hand():
    X = np.array([[1.0, np.nan], [2.0, 5.0], [9.0, -np.inf], [3.0, 1.0], [4.0, 2.0]])
    np.testing.assert_array_equal(ref_median(X, 1), [3.0, 2.0])
    np.testing.assert_array_equal(ref_trimmed_mean(X, 1), [3.0, (1 + 2 + 5) / 3])
    # column 0: median 3; gaps 2,1,6,0,1 -> keep the 4 closest: 3, 2 and 4 (tied), 1
    assert ref_meamed(X, 1)[0] == (3 + 2 + 4 + 1) / 4


def test_ref_mda_by_hand():
    X = np.array([[0.0], [10.0], [1.0], [2.0]])
    assert ref_mda(X, 1)[1] == [0, 2, 3]
