"""Every rule against its direct float64 reference (tests/test_aggregators_reference.py) on random,
adversarial, near-tie and non-finite inputs, with n at each rule's bound; plus the registry API."""
import numpy as np
import pytest

import krum_mpi.aggregators as agg
from krum_mpi.aggregators import coordinatewise, distances, parallel, rowops
from test_aggregators_reference import (
    ref_bulyan, ref_centered_clipping, ref_clip_rows, ref_geometric_median, ref_krum, ref_krum_scores,
    ref_mda, ref_meamed, ref_median, ref_multi_krum, ref_nnm, ref_trimmed_mean, score_gap,
)

pytestmark = pytest.mark.usefixtures("kernels")  # every test on the compiled and the NumPy kernels

D = 2500  # columns: several chunks with the small chunk sizes below


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Small chunks so that every multi-chunk path (fast Gram, precise fallback, column loops) runs."""
    monkeypatch.setattr(distances, "CPU_CHUNK", 512)  # columns
    monkeypatch.setattr(rowops, "CHUNK", 700)
    monkeypatch.setattr(coordinatewise, "SORT_CHUNK", 300)
    monkeypatch.setattr(parallel, "THREADS", 3)  # uneven column ranges, in threads


def random_input(n, d=D, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def adversarial_input(n, f, d=D, seed=0):
    """Common mean 10^4 times the spread; f Byzantine rows 10 times the spread away, at random places."""
    rng = np.random.default_rng(seed)
    X = 1e4 + rng.standard_normal((n, d))
    byzantine = rng.choice(n, size=f, replace=False)
    X[byzantine] = 1e4 + 10.0 * rng.standard_normal((f, d))
    return X.astype(np.float32)


def tie_input(n, f, d=D, seed=0):
    """Exact ties (a duplicated row) next to a near tie (a second copy moved by a tiny step)."""
    X = random_input(n, d, seed) * 0.5
    X[n - 1] = X[1]  # exact duplicate of row 1: same score, the lower index must win
    X[n - 2] = X[1] + np.float32(1e-3)  # near duplicate: scores differ by ~1e-4 relative
    return X


def nonfinite_input(n, f, d=D, seed=0):
    """f rows holding NaN, +inf, -inf (one row entirely NaN)."""
    X = random_input(n, d, seed)
    rng = np.random.default_rng(seed + 1)
    bad = rng.choice(n, size=f, replace=False)
    for k, i in enumerate(bad):
        if k == 0:
            X[i] = np.nan
        else:
            cols = rng.choice(d, size=3, replace=False)
            X[i, cols] = [np.nan, np.inf, -np.inf]
    return X


INPUTS = {"random": lambda n, f, seed: random_input(n, seed=seed), "adversarial": adversarial_input,
          "ties": tie_input, "nonfinite": nonfinite_input}

# rule -> (smallest n for f, reference(X, f) -> (vector, selected or None))
RULES = {
    "krum": (lambda f: 2 * f + 3, lambda X, f: ref_krum(X, f)),
    "multi-krum": (lambda f: 2 * f + 3, lambda X, f: ref_multi_krum(X, f)),
    "median": (lambda f: 2 * f + 1, lambda X, f: (ref_median(X, f), None)),
    "trimmed-mean": (lambda f: 2 * f + 1, lambda X, f: (ref_trimmed_mean(X, f), None)),
    "meamed": (lambda f: 2 * f + 1, lambda X, f: (ref_meamed(X, f), None)),
    "geometric-median": (lambda f: 2 * f + 1, lambda X, f: (ref_geometric_median(X, f), None)),
    "bulyan": (lambda f: 4 * f + 3, lambda X, f: ref_bulyan(X, f)),
    "centered-clipping": (lambda f: 1, lambda X, f: (ref_centered_clipping(X, f), None)),
    "mda": (lambda f: 2 * f + 1, lambda X, f: ref_mda(X, f)),
}


def on(xp, aggregator, X):
    """Run an Aggregator on X made by the namespace ``xp`` (NumPy or the strict array API: the rule
    takes xp from its input); the vector comes back as NumPy, checked to be of xp."""
    result = aggregator(xp.asarray(X))
    assert type(result.vector).__module__.split(".")[0] == xp.__name__.split(".")[0]
    return type(result)(np.asarray(result.vector), result.selected, result.weights, result.recomputed)


def tolerance(X):
    finite = X[np.isfinite(X).all(axis=1)]
    return 16 * np.finfo(X.dtype).eps * float(np.abs(finite).max())


def check_against_reference(name, X, f, xp=np):
    vector, selected = RULES[name][1](X, f)
    result = on(xp, agg.make(name, X.shape[0], f), X)
    if selected is not None:
        np.testing.assert_array_equal(result.selected, selected, err_msg=f"{name} selected other rows")
    np.testing.assert_allclose(result.vector.astype(np.float64), vector, rtol=0, atol=tolerance(X),
                               err_msg=f"{name} differs from its reference")
    assert result.vector.dtype == X.dtype and result.vector.shape == (X.shape[1],)
    return result


CASES = [(name, kind, f, at_bound) for name in RULES for kind in INPUTS for f in (1, 2)
         for at_bound in (True, False)]


@pytest.mark.parametrize("name,kind,f,at_bound", CASES)
def test_rule_matches_reference(name, kind, f, at_bound, xp):
    n = max(RULES[name][0](f), 5) + (0 if at_bound else 4)
    X = INPUTS[kind](n, f, seed=n + f)
    if name in ("krum", "multi-krum") and kind != "ties":
        m = 1 if name == "krum" else n - f
        assert score_gap(ref_krum_scores(X, f), m) > 1e-4, "test input has a near tie: change the seed"
    result = check_against_reference(name, X, f, xp)
    if kind == "nonfinite":
        assert np.isfinite(result.vector).all(), f"{name}: non-finite output with only f bad rows"
        if result.selected is not None:
            assert np.isfinite(X[result.selected]).all(), f"{name} selected a non-finite row"


def test_ties_go_to_the_lowest_index():
    X = np.tile(random_input(1, 50), (7, 1))  # seven identical rows: every score ties
    assert agg.krum_select(X, 2, m=7).tolist() == list(range(7))
    X = random_input(9, 300)
    X[8] = X[3]
    X[7] = X[3]
    chosen = agg.make("krum", 9, 2)(X).selected
    assert chosen.tolist() == ref_krum(X, 2)[1] == [3]   # three equal rows: the lowest index wins


def test_near_tie_is_resolved_like_float64():
    # two candidates whose scores differ by ~1e-4 relative, on top of a common mean 10^4 times the
    # spread: a float32 X @ X.T kernel cannot order them, the centred kernel must
    X = adversarial_input(11, 0, d=20000, seed=3)
    X[10] = X[2] + np.float32(0.01)
    scores = ref_krum_scores(X, 3)
    assert 1e-6 < score_gap(scores, 1) < 1e-2
    assert agg.krum_select(X, 3).tolist() == ref_krum(X, 3)[1]


@pytest.mark.parametrize("variant", [dict(neighbours="n-f-1"), dict(squared=False), dict(score="mean"),
                                     dict(neighbours="n-f-1", squared=False, score="mean")])
def test_krum_variants_match_reference(variant):
    X = adversarial_input(13, 3, seed=5)
    result = agg.make("krum", 13, 3, **variant)(X)
    assert result.selected.tolist() == ref_krum(X, 3, **variant)[1]
    result = agg.make("multi-krum", 13, 3, m=6, **variant)(X)
    vector, chosen = ref_multi_krum(X, 3, m=6, **variant)
    assert result.selected.tolist() == chosen
    np.testing.assert_allclose(result.vector, vector, rtol=0, atol=tolerance(X))


def test_variants_can_select_differently():
    # the conventions are not cosmetic: unsquared distances reward a row with one far neighbour
    X = np.array([[0.0], [1.0], [2.0], [3.2], [4.0], [4.5], [30.0]], dtype=np.float32)
    paper = agg.make("krum", 7, 2)(X).selected[0]
    unsquared = agg.make("krum", 7, 2, squared=False)(X).selected[0]
    assert [paper, unsquared] == [ref_krum(X, 2)[1][0], ref_krum(X, 2, squared=False)[1][0]]


def test_multi_krum_m_and_weights(xp):
    X = adversarial_input(12, 3, seed=7)
    for m in (1, 4, 9):
        result = on(xp, agg.make("multi-krum", 12, 3, m=m), X)
        vector, chosen = ref_multi_krum(X, 3, m=m)
        assert result.selected.tolist() == chosen
        assert np.isclose(result.weights.sum(), 1.0) and (result.weights > 0).sum() == m
    assert agg.make("multi-krum", 12, 3).max_selected == 9  # default m = n - f


def test_trimmed_mean_b_option(xp):
    X = nonfinite_input(11, 2, seed=2)
    result = on(xp, agg.make("trimmed-mean", 11, 2, b=4), X)
    np.testing.assert_allclose(result.vector, ref_trimmed_mean(X, 2, b=4), rtol=0, atol=tolerance(X))


def test_geometric_median_options(xp):
    X = adversarial_input(9, 2, seed=4)
    for iterations, nu in ((0, 0.1), (1, 1e-6), (10, 5.0)):
        out = np.asarray(agg.get("geometric-median")(xp.asarray(X), 2, iterations=iterations, nu=nu))
        np.testing.assert_allclose(out, ref_geometric_median(X, 2, iterations, nu), rtol=0, atol=tolerance(X))


def test_centered_clipping_keeps_state(xp):
    X = adversarial_input(9, 2, seed=4)
    rule = agg.make("centered-clipping", 9, 2, tau=50.0, iterations=2)
    first = on(xp, rule, X).vector
    second = on(xp, rule, X).vector  # centred on the first aggregate
    np.testing.assert_allclose(first, ref_centered_clipping(X, 2, 50.0, 2), rtol=0, atol=tolerance(X))
    np.testing.assert_allclose(second, ref_centered_clipping(X, 2, 50.0, 2, center=first), rtol=0,
                               atol=tolerance(X))
    # the pure function takes the state as a keyword
    again = np.asarray(agg.get("centered-clipping")(xp.asarray(X), 2, tau=50.0, iterations=2, center=first))
    np.testing.assert_array_equal(again, second)


def test_mda_limit():
    with pytest.raises(ValueError, match=r"C\(40, 12\)"):
        agg.make("mda", 40, 12)
    agg.make("mda", 40, 12, max_subsets=10**10)  # raising the limit is allowed


# -- pre-aggregation steps -------------------------------------------------------------------------

def test_nnm_then_rules(xp):
    X = adversarial_input(11, 3, seed=8)
    mixed = ref_nnm(X, 3)
    out = on(xp, agg.make("nnm+average", 11, 3), X)
    np.testing.assert_allclose(out.vector, mixed.mean(axis=0), rtol=0, atol=tolerance(X))
    assert np.isclose(out.weights.sum(), 1.0)
    out = on(xp, agg.make("nnm+median", 11, 3), X)
    np.testing.assert_allclose(out.vector, ref_median(mixed, 3), rtol=0, atol=tolerance(X))
    out = on(xp, agg.make("nnm+krum", 11, 3), X)
    assert out.selected.tolist() == ref_krum(mixed, 3)[1]


def test_nnm_keeps_nonfinite_rows_out(xp):
    X = nonfinite_input(11, 3, seed=9)
    for rule in ("krum", "median", "geometric-median"):
        out = on(xp, agg.make(f"nnm+{rule}", 11, 3), X)
        assert np.isfinite(out.vector).all(), rule


def test_bucketing_then_rules(xp):
    X = adversarial_input(12, 1, seed=10)
    rule = agg.make("bucketing+krum", 12, 1, bucket_size=2, seed=5)
    for step in range(2):
        order = np.random.default_rng([5, step]).permutation(12)
        buckets = [np.sort(order[k:k + 2]) for k in range(0, 12, 2)]
        means = np.array([X[b].astype(np.float64).mean(axis=0) for b in buckets])
        out = on(xp, rule, X)  # a new shuffle every step
        winner = ref_krum(means, 1)[1][0]
        assert out.selected.tolist() == buckets[winner].tolist()
        np.testing.assert_allclose(out.vector, means[winner], rtol=0, atol=tolerance(X))
    assert rule.max_selected == 2
    with pytest.raises(ValueError, match="n >= 2f \\+ 3"):
        agg.make("bucketing+krum", 12, 2, bucket_size=3)  # 4 buckets cannot host f = 2


def test_clipping_then_average(xp):
    X = random_input(7, 400, seed=11) * np.arange(1, 8, dtype=np.float32)[:, None]
    norms = np.linalg.norm(X.astype(np.float64), axis=1)
    clip = float(np.median(norms))
    out = on(xp, agg.make("clipping+average", 7, 0, clip_norm=clip), X)
    np.testing.assert_allclose(out.vector, ref_clip_rows(X, clip).mean(axis=0), rtol=0, atol=tolerance(X))


def test_clipping_catches_huge_finite_rows(xp):
    X = random_input(7, 300, seed=14)
    X[2] = 1e25  # finite, but its float32 square overflows: it must still be clipped
    out = on(xp, agg.make("clipping+average", 7, 0, clip_norm=1.0), X)
    np.testing.assert_allclose(out.vector, ref_clip_rows(X, 1.0).mean(axis=0), rtol=1e-5, atol=1e-6)


def test_chain_of_steps(xp):
    X = adversarial_input(15, 2, seed=12)
    out = on(xp, agg.make("clipping+nnm+multi-krum", 15, 2, clip_norm=1e6, m=5), X)
    mixed = ref_nnm(ref_clip_rows(X, 1e6), 2)
    vector, chosen = ref_multi_krum(mixed, 2, m=5)
    assert out.selected.tolist() == chosen
    np.testing.assert_allclose(out.vector, vector, rtol=0, atol=tolerance(X))


def test_chain_before_average_needs_no_mixed_array(xp):
    # average is a fixed weighted mean: the chain folds into one weighted sum of the inputs, which must
    # equal averaging the materialized mixed rows, NaN where (and only where) a non-finite row is weighted
    X = adversarial_input(13, 2, seed=15)
    X[4, 5:9] = np.nan
    out = on(xp, agg.make("bucketing+nnm+average", 13, 2, bucket_size=2, seed=3), X)
    order = np.random.default_rng([3, 0]).permutation(13)
    buckets = [np.sort(order[k:k + 2]) for k in range(0, 13, 2)]
    means = np.array([X[b].astype(np.float64).mean(axis=0) for b in buckets])
    mixed = ref_nnm(means, 2)
    expected = mixed.mean(axis=0)
    assert np.array_equal(np.isnan(out.vector), np.isnan(expected))
    ok = ~np.isnan(expected)
    np.testing.assert_allclose(out.vector[ok], expected[ok], rtol=0, atol=tolerance(X))
    assert np.isclose(out.weights.sum(), 1.0) and sorted(out.selected.tolist()) == list(range(13))


# -- registry and validation -----------------------------------------------------------------------

def test_names_and_max_selected():
    assert set(agg.names()) >= {"average", "krum", "multi-krum", "median", "trimmed-mean", "meamed",
                                "geometric-median", "bulyan", "centered-clipping", "mda"}
    assert agg.pre_steps() == ["bucketing", "clipping", "nnm"]
    widths = {name: agg.make(name, 23, 5).max_selected for name in agg.names()}
    assert widths["average"] == 23 and widths["krum"] == 1 and widths["multi-krum"] == 18
    assert widths["bulyan"] == 13 and widths["mda"] == 18 and widths["median"] == 0


def test_average_reports_everyone():
    X = random_input(5, 10)
    out = agg.make("average", 5, 0)(X)
    assert out.selected.tolist() == [0, 1, 2, 3, 4] and np.allclose(out.weights, 0.2)
    np.testing.assert_allclose(agg.get("average")(X, 0), X.astype(np.float64).mean(axis=0), rtol=0, atol=tolerance(X))


def test_selection_records_are_numpy():
    X = random_input(9, 100)
    for name in agg.names():
        out = agg.make(name, 9, 1)(X)
        if out.selected is not None:
            assert out.selected.dtype == np.int64 and isinstance(out.selected, np.ndarray)
            assert len(out.selected) <= agg.make(name, 9, 1).max_selected
        if out.weights is not None:
            assert out.weights.dtype == np.float64 and out.weights.shape == (9,)


@pytest.mark.parametrize("name,n,f,options,message", [
    ("krum", 8, 3, {}, "n >= 2f \\+ 3, got n=8, f=3"),
    ("multi-krum", 8, 3, {}, "n >= 2f \\+ 3, got n=8, f=3"),
    ("multi-krum", 10, 3, {"m": 8}, "m <= n - f, got m=8"),
    ("multi-krum", 10, 3, {"m": 0}, "must be >= 1"),
    ("bulyan", 10, 2, {}, "n >= 4f \\+ 3, got n=10, f=2"),
    ("median", 4, 2, {}, "n >= 2\\*f \\+ 1, got n=4"),
    ("trimmed-mean", 7, 1, {"b": 4}, "got n=7, b=4"),
    ("geometric-median", 5, 1, {"nu": 0.0}, "'nu'.*> 0"),
    ("centered-clipping", 5, 1, {"tau": -1.0}, "'tau'.*> 0"),
    ("krum", 9, 2, {"neighbors": "n-f-1"}, "unknown option 'neighbors'"),
    ("krum", 9, 2, {"neighbours": "n-f"}, "must be one of"),
    ("krum", 9, 2, {"squared": 1}, "true or false"),
    ("multi-krum", 9, 2, {"m": 2.5}, "must be an integer"),
    ("clipping+average", 9, 2, {"clip_norm": 0.0}, "'clip_norm'.*> 0"),
    ("nope", 9, 2, {}, "unknown aggregation rule 'nope'"),
    ("nope+krum", 9, 2, {}, "unknown pre-aggregation step 'nope'"),
    ("krum", 9, -1, {}, "must be >= 0"),
    ("krum", 9, True, {}, "must be an int"),
    ("krum", 0, 0, {}, "positive int"),
])
def test_invalid_parameters(name, n, f, options, message):
    with pytest.raises(ValueError, match=message) as caught:
        agg.make(name, n, f, **options)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("X,message", [
    (np.zeros((0, 5), np.float32), "empty"),
    (np.zeros((5, 0), np.float32), "empty"),
    (np.zeros(5, np.float32), "2-D"),
    (np.zeros((5, 3, 2), np.float32), "2-D"),
    (np.zeros((5, 3), np.int64), "dtype"),
    (np.zeros((5, 3), np.float16), "dtype"),
    ([[1.0, 2.0]] * 5, "NumPy or CuPy array"),
])
def test_invalid_inputs(X, message):
    for name in ("average", "krum", "median"):
        with pytest.raises(ValueError, match=message):
            agg.get(name)(X, 1)
        if hasattr(X, "shape") and X.ndim == 2 and X.shape[0] == 5:
            with pytest.raises(ValueError, match=message):
                agg.make(name, 5, 1)(X)


def test_aggregator_checks_row_count():
    with pytest.raises(ValueError, match="made for n=9 rows, got 8"):
        agg.make("krum", 9, 2)(random_input(8, 10))


def test_float64_input_takes_the_precise_path():
    X = adversarial_input(9, 2, seed=13).astype(np.float64)
    out = agg.make("multi-krum", 9, 2)(X)
    vector, chosen = ref_multi_krum(X, 2)
    assert out.selected.tolist() == chosen and out.vector.dtype == np.float64
    np.testing.assert_allclose(out.vector, vector, rtol=1e-12, atol=0)
