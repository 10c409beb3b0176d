"""Property tests (hypothesis): permutation equivariance of selections, outputs inside the convex
hull (or equal to an input row) where a rule promises it, translation equivariance."""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import krum_mpi.aggregators as agg
from krum_mpi.aggregators import coordinatewise, distances
import itertools

from test_aggregators_reference import ref_distance_matrix, ref_krum_scores, score_gap

pytestmark = pytest.mark.usefixtures("kernels")  # every test on the compiled and the NumPy kernels

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# rule -> smallest n for f
BOUNDS = {"krum": lambda f: 2 * f + 3, "multi-krum": lambda f: 2 * f + 3, "median": lambda f: 2 * f + 1,
          "trimmed-mean": lambda f: 2 * f + 1, "meamed": lambda f: 2 * f + 1,
          "geometric-median": lambda f: 2 * f + 1, "bulyan": lambda f: 4 * f + 3,
          "mda": lambda f: 2 * f + 1, "average": lambda f: 1, "centered-clipping": lambda f: 1}
SELECTING = ["krum", "multi-krum", "bulyan", "mda"]
WEIGHTED_MEANS = ["average", "krum", "multi-krum", "geometric-median", "mda"]  # convex combinations
COORDINATEWISE = ["median", "trimmed-mean", "meamed", "bulyan"]  # inside the per-coordinate range


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(distances, "CPU_CHUNK", 64)
    monkeypatch.setattr(coordinatewise, "SORT_CHUNK", 50)


@st.composite
def problems(draw, rules):
    name = draw(st.sampled_from(rules))
    f = draw(st.integers(0, 2))
    n = BOUNDS[name](f) + draw(st.integers(0, 4))
    d = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    offset = draw(st.sampled_from([0.0, 1.0, 1e4]))
    X = (offset + scale * rng.standard_normal((n, d))).astype(np.float32)
    if draw(st.booleans()) and f > 0:  # some Byzantine rows far away
        X[rng.choice(n, size=min(f, n - 1), replace=False)] += np.float32(100 * scale)
    return name, X, f


def clear_selection(X, f, name):
    """Selections are only defined up to ties: skip draws with near-equal scores."""
    n = X.shape[0]
    if name in ("krum", "multi-krum"):  # the whole ranking up to m is recorded, best first
        scores = ref_krum_scores(X, f)
        m = 1 if name == "krum" else n - f
        return all(score_gap(scores, k) > 1e-3 for k in range(1, m + 1))
    if name == "bulyan":  # every pick of the recursive Krum
        D = ref_distance_matrix(X)
        left = list(range(n))
        for _ in range(n - 2 * f):
            k = max(1, len(left) - f - 2)
            scores = [sum(sorted(D[i, j] for j in left if j != i)[:k]) for i in left]
            if score_gap(scores, 1) <= 1e-3:
                return False
            left.pop(int(np.argmin(scores)))
        return True
    if name == "mda":  # two subsets often share their widest pair: a tie in diameter
        D = ref_distance_matrix(X)
        diameters = [max((D[i, j] for i, j in itertools.combinations(s, 2)), default=0.0)
                     for s in itertools.combinations(range(n), n - f)]
        return score_gap(diameters, 1) > 1e-3
    return True


@SETTINGS
@given(problems(SELECTING), st.randoms(use_true_random=False))
def test_selection_is_permutation_equivariant(problem, random):
    name, X, f = problem
    assume(clear_selection(X, f, name))
    perm = np.asarray(random.sample(range(X.shape[0]), X.shape[0]))
    first = agg.make(name, X.shape[0], f)(X)
    second = agg.make(name, X.shape[0], f)(X[perm])
    if name == "mda":  # a set, reported in increasing index order
        assert sorted(perm[second.selected].tolist()) == first.selected.tolist()
    elif name == "bulyan":  # later picks may tie: the aggregate is what must not move
        np.testing.assert_allclose(second.vector, first.vector, rtol=1e-5, atol=1e-5 * np.abs(X).max())
    else:
        assert perm[second.selected].tolist() == first.selected.tolist()
        np.testing.assert_allclose(second.vector, first.vector, rtol=1e-5, atol=1e-5 * np.abs(X).max())


@SETTINGS
@given(problems(WEIGHTED_MEANS))
def test_weighted_means_are_convex_combinations(problem):
    name, X, f = problem
    out = agg.make(name, X.shape[0], f)(X)
    w = out.weights
    assert (w >= 0).all() and np.isclose(w.sum(), 1.0)
    expected = w @ X.astype(np.float64)
    tol = 1e-5 * float(np.abs(X).max()) + 1e-30
    np.testing.assert_allclose(out.vector, expected, rtol=0, atol=tol)
    if name == "krum":
        assert np.array_equal(out.vector, X[out.selected[0]])  # an input row, bit for bit


@SETTINGS
@given(problems(COORDINATEWISE))
def test_coordinatewise_rules_stay_in_the_column_range(problem):
    name, X, f = problem
    out = agg.make(name, X.shape[0], f)(X)
    assert (out.vector >= X.min(axis=0)).all() and (out.vector <= X.max(axis=0)).all()


@SETTINGS
@given(problems(list(BOUNDS)), st.sampled_from([-3.0, 0.5, 1e3]))
def test_translation_equivariance(problem, shift):
    name, X, f = problem
    assume(clear_selection(X, f, name))
    rng = np.random.default_rng(0)
    spread = float(np.std(X.astype(np.float64), axis=0).mean()) + 1e-30
    # a shift in units of the spread: a larger one would quantize X + t in float32, changing the data
    t = (shift * spread * rng.standard_normal(X.shape[1])).astype(np.float32)
    moved = (X + t).astype(np.float32)
    options = {}
    first = agg.make(name, X.shape[0], f, **options)
    second = agg.make(name, X.shape[0], f, **options)
    if name == "centered-clipping":
        a = agg.get(name)(X, f, center=X[0] * 0)
        b = agg.get(name)(moved, f, center=t)  # the centre moves with the data
    else:
        ra, rb = first(X), second(moved)
        if ra.selected is not None and name != "mda":
            assert ra.selected.tolist() == rb.selected.tolist()
        a, b = ra.vector, rb.vector
    # float32 rounding of X + t is all that may differ
    tol = 64 * np.finfo(np.float32).eps * (float(np.abs(X).max()) + float(np.abs(t).max()))
    np.testing.assert_allclose(b.astype(np.float64) - t, a, rtol=0, atol=tol)
