"""Huge finite rows (up to the largest float32, 3.4028235e38) in the rules that do not rank distances:
average, median, trimmed-mean, meamed (and Bulyan's coordinate stage), geometric median, centered
clipping. Where the rule's exact answer is finite it must come out finite and close to it: an
intermediate sum that overflows float32 is no excuse. References: exact rational arithmetic
(``fractions.Fraction``) for the coordinate-wise rules and the mean, float64 for the iterative
ones. Every test runs on the compiled kernels (each ISA this CPU has) and on the NumPy path.
"""
from fractions import Fraction

import numpy as np
import pytest

import krum_mpi.aggregators as agg
from krum_mpi.aggregators import coordinatewise as cw
from krum_mpi.aggregators.rowops import combine_rows
from krum_mpi.aggregators.rows import Rows


pytestmark = pytest.mark.usefixtures("kernel_path")   # every test on each ISA and on NumPy

BIG = float(np.finfo(np.float32).max)
U32 = 2.0 ** -24


def huge_matrix(n, d, n_huge, seed, exact_extremes=False):
    """Ordinary rows (N(0, 1) plus an offset) with n_huge rows at random positions whose entries are
    huge finite values of random sign: random magnitudes between 1e30 and 3.4e38 (no two of them
    tie at float resolution around the median), or exactly +-3.4028235e38 when exact_extremes."""
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) + rng.uniform(-3, 3)).astype(np.float32)
    rows = rng.choice(n, size=n_huge, replace=False)
    sign = rng.choice([-1.0, 1.0], size=(n_huge, d))
    if exact_extremes:
        X[rows] = (sign * BIG).astype(np.float32)
    else:
        X[rows] = (sign * 10.0 ** rng.uniform(30, np.log10(BIG), size=(n_huge, d))).astype(np.float32)
    return X


# ---- exact references (Fractions) ---------------------------------------------------------------

def exact_sorted(column):
    return sorted(Fraction(float(v)) for v in column)


def exact_median(v):
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def exact_trimmed(v, b):
    kept = v[b:len(v) - b]
    return sum(kept) / len(kept)


def exact_closest(v, keep):
    """Mean of the keep values closest to the median; at equal distance the larger value goes."""
    n, med = len(v), exact_median(v)
    start = sum(1 for p in range(n - keep) if med - v[p] > v[p + keep] - med)
    return sum(v[start:start + keep]) / keep


def check_columns(got, X, exact, spread):
    """got[j] within float32 rounding of exact(column j): the fast paths sum float32 offsets from
    the median, so the bound scales with n and the largest value ``spread`` of the column kept."""
    n = X.shape[0]
    assert np.isfinite(got).all(), f"non-finite at columns {np.flatnonzero(~np.isfinite(got))}"
    for j in range(X.shape[1]):
        v = exact_sorted(X[:, j])
        want = exact(v)
        tol = 4 * n * U32 * float(spread(v)) + 1e-30
        assert abs(float(got[j]) - float(want)) <= tol, (j, float(got[j]), float(want), tol)


def spread_of(v):
    return max(abs(x) for x in v)


CASES = [(5, 1, 2), (16, 3, 7), (20, 2, 8), (20, 6, 12), (32, 8, 20), (64, 15, 40), (20, 2, 20)]


@pytest.mark.parametrize("n, f, n_huge", CASES)
@pytest.mark.parametrize("extremes", [False, True])
def test_average_and_trimmed_mean_are_finite_and_exact_to_rounding(n, f, n_huge, extremes):
    X = huge_matrix(n, 24, n_huge, seed=n + n_huge, exact_extremes=extremes)
    check_columns(agg.get("average")(X, f), X, lambda v: sum(v) / len(v), spread_of)
    check_columns(agg.get("trimmed-mean")(X, f), X, lambda v: exact_trimmed(v, f), spread_of)
    check_columns(agg.get("trimmed-mean")(X, f, b=0), X, lambda v: exact_trimmed(v, 0), spread_of)


@pytest.mark.parametrize("n, f, n_huge", CASES)
@pytest.mark.parametrize("extremes", [False, True])
def test_median_is_finite_and_exact_to_rounding(n, f, n_huge, extremes):
    X = huge_matrix(n, 24, n_huge, seed=7 * n + n_huge, exact_extremes=extremes)
    check_columns(agg.get("median")(X, f), X, exact_median, lambda v: abs(exact_median(v)) / n)


@pytest.mark.parametrize("n, f, n_huge", CASES)
def test_meamed_and_bulyans_coordinate_stage_are_finite_and_exact_to_rounding(n, f, n_huge):
    X = huge_matrix(n, 24, n_huge, seed=3 * n + n_huge)
    check_columns(agg.get("meamed")(X, f), X, lambda v: exact_closest(v, n - f), spread_of)
    rows = np.arange(0, n, 2)                          # a subset, as Bulyan's selection passes
    keep = max(1, len(rows) - f)
    with_rows = cw.closest_mean(X, keep, rows=rows)
    check_columns(with_rows, X[rows], lambda v: exact_closest(v, keep), spread_of)


def test_the_overflowing_sums_come_out_finite_and_exact():
    """Kept values from -3.4e38 to +3.2e38 side by side: the float32 sums of offsets from the median
    overflow (-6.4e38 and beyond), while each rule's exact answer is finite. One column, by hand:
    sorted -BIG, -BIG, -3e38, 1, 2, 3e38, 3.2e38 (n = 7, f = 1, median 1)."""
    column = [3.2e38, -BIG, 3e38, -3e38, -BIG, 1.0, 2.0]
    X = np.array([[float(np.float32(v))] * 40 for v in column], dtype=np.float32)
    v = sorted(float(x) for x in X[:, 0])
    with np.errstate(over="ignore"):
        assert np.isinf(np.float32(v[0] - 1) + np.float32(v[2] - 1))      # the float32 sum overflows
    np.testing.assert_allclose(agg.get("trimmed-mean")(X, 1), sum(v[1:6]) / 5, rtol=1e-6)
    # meamed keeps 6: -BIG is farther from 1 than 3.2e38, so it goes
    np.testing.assert_allclose(agg.get("meamed")(X, 1), sum(v[1:7]) / 6, rtol=1e-6)
    np.testing.assert_allclose(agg.get("average")(X, 1), sum(v) / 7, rtol=1e-6)
    np.testing.assert_array_equal(agg.get("median")(X, 1), np.float32(1.0))


def test_meamed_candidates_equally_far_to_float_rounding_are_decided_exactly():
    """-BIG and +BIG around the median 1 are 1 + BIG and BIG - 1 away: equal in float32 and in
    float64, so a window decided on rounded distances took the tie rule (drop the larger value) and
    answered about -1.1e38. The window is decided exactly: -BIG goes, and the mean of the six kept
    values (exactly 0.5) comes out within the documented rounding of the sum, not 1e38 away."""
    X = np.array([[v] * 40 for v in [BIG, -BIG, BIG, -BIG, -BIG, 1.0, 2.0]], dtype=np.float32)
    got = agg.get("meamed")(X, 1)
    check_columns(got, X, lambda v: exact_closest(v, 6), spread_of)
    tie_rule = (-3 * BIG + BIG + 3.0) / 6
    assert np.all(np.abs(got.astype(np.float64) - tie_rule) > 1e37)


# ---- geometric median and centered clipping: float64 references -----------------------------------

def weiszfeld_reference(X, iterations=3, nu=0.1):
    X = X.astype(np.float64)
    z = X.mean(axis=0)
    for _ in range(iterations):
        beta = 1.0 / np.maximum(nu, np.linalg.norm(X - z, axis=1))
        z = beta @ X / beta.sum()
    return z


def clipping_reference(X, tau=100.0, iterations=1):
    X = X.astype(np.float64)
    v = np.zeros(X.shape[1])
    for _ in range(iterations):
        dist = np.linalg.norm(X - v, axis=1)
        scale = np.minimum(1.0, tau / dist) / len(X)
        v = v + scale @ (X - v)
    return v


@pytest.mark.parametrize("n, f, n_huge", CASES)
@pytest.mark.parametrize("extremes", [False, True])
def test_geometric_median_and_clipping_norms_do_not_overflow(n, f, n_huge, extremes):
    X = huge_matrix(n, 3000, n_huge, seed=11 * n + n_huge, exact_extremes=extremes)
    for name, reference in (("geometric-median", weiszfeld_reference), ("centered-clipping", clipping_reference)):
        got = agg.make(name, n, f)(X)
        want = reference(X)
        assert np.isfinite(got.vector).all(), name
        assert np.isfinite(got.weights).all() and (got.weights > 0).all(), name   # no row weighted 0 by overflow
        scale = np.abs(want).max()
        np.testing.assert_allclose(got.vector, want, rtol=1e-4, atol=1e-4 * scale + 1e-4, err_msg=name)


def test_distances_to_a_point_are_finite_for_every_finite_row():
    X = np.array([[BIG] * 1000, [-BIG] * 1000, [1.0] * 1000], dtype=np.float32)
    point = np.full(1000, -BIG, dtype=np.float32)
    np.testing.assert_allclose(np.sqrt(Rows([X]).sq_distances_to(point)), [2 * BIG * np.sqrt(1000), 0.0, BIG * np.sqrt(1000)],
                               rtol=2.0**-28)   # canonical: the exact squared distance truncated to 28 bits
    X64 = np.array([[1e150] * 4, [np.nan, 0, 0, 0], [-1e150, 0, 0, 0], [1e300, 0, 0, 0]])
    # float64 rows beyond ~1.3e154 of the point: infinitely far (docs/aggregators.md)
    np.testing.assert_allclose(np.sqrt(Rows([X64]).sq_distances_to(np.zeros(4))), [2e150, np.inf, 1e150, np.inf],
                               rtol=2.0**-28)


# ---- a weighted sum whose exact value exceeds float32 -----------------------------------------------

def test_weighted_sum_beyond_float32_is_signed_inf_never_nan():
    """No rule of the catalogue forms one (their weights are convex: the exact answer lies within the
    rows' range), but combine_rows accepts any weights: beyond float32 the coordinate is +-inf,
    inside it the exact value however the partial sums overflowed."""
    X = np.array([[3e38] * 64, [BIG] * 64, [-BIG] * 64], dtype=np.float32)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(combine_rows(X, [1.0, 1.0, 0.0]), np.inf)
        np.testing.assert_array_equal(combine_rows(X, [0.0, -1.0, 1.0]), -np.inf)
    np.testing.assert_allclose(combine_rows(X, [1.0, 1.0, 1.0]), 3e38, rtol=1e-6)
    np.testing.assert_allclose(combine_rows(X, [0.5, 0.5, 0.0]), (3e38 + BIG) / 2, rtol=1e-6)


def test_a_huge_row_with_little_weight_does_not_swamp_the_others():
    """Weighted sums are centred on one anchor row: the row with the largest |weight| (per output;
    per register tile of outputs on the compiled path), never a huge row that carries little weight.
    Centred on a row of 2^59, the ordinary rows' offsets round to -2^59 exactly and their share is
    lost (measured before: every honest output of an NNM-like mixing came out 0)."""
    rng = np.random.default_rng(0)
    n, d = 20, 4096
    X = rng.standard_normal((n, d), dtype=np.float32)
    X[0] = 2.0 ** 59
    M = np.zeros((n, n))
    M[0, :16] = 1 / 16                                  # the huge row's own mix (NNM: itself and 15 others)
    for j in range(1, n):                               # every other output mixes 16 ordinary rows
        M[j, rng.choice(np.arange(1, n), 16, replace=False)] = 1 / 16
    from krum_mpi.aggregators.rowops import combine_rows_many
    got = combine_rows_many(X, M)
    want = M @ X.astype(np.float64)
    np.testing.assert_allclose(got[1:], want[1:], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    w = np.full(n, (1 - 1e-17) / 19)
    w[0] = 1e-17                                        # 1e-17 * 2^59 = 5.8: a share of the answer
    np.testing.assert_allclose(combine_rows(X, w), w @ X.astype(np.float64), rtol=0, atol=1e-5)
