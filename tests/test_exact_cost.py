"""The refinement levels at a bounded cost (gram_entries.py, clones.py, native/exact.c): their values
against an exact judge (fractions), the selections on crafted near ties (ulp clones, mirrored
clones, a simplex of clones) equal to the exact ones on both kernel paths, every ISA and 1-5
sharded blocks, and the refinement passes per call bounded by a small constant."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krum_mpi import native
from krum_mpi.aggregators import make
from krum_mpi.aggregators.certify import counting
from krum_mpi.aggregators.clones import CloneMap
from krum_mpi.aggregators.exact import SCALE
from krum_mpi.aggregators.gram_entries import (F64_BLOCK, dd_sq_distances, exact_sq_distances, f64_sq_distances,
                                               level_one)
from krum_mpi.parallel import sharded
from test_certified import exact_distances, ref_bulyan_chosen, ref_lowest, ref_mda, ref_scores

SCALE32 = 1 << SCALE[np.dtype(np.float32)]
VALUES = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32),
                   st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 2e-38, 3.4e38, 1.0, -1.0]),
                   st.floats(-1.0, 1.0, width=32))
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def judge(X, pairs):
    rows = [[Fraction(float(v)) for v in row] for row in X]
    return [sum((a - b) ** 2 for a, b in zip(rows[i], rows[j])) for i, j in pairs]


@st.composite
def matrices(draw, max_n=6, max_d=40):
    """float32 rows with every magnitude, and some rows cloned from others with a few changes."""
    n, d = draw(st.integers(2, max_n)), draw(st.integers(1, max_d))
    X = np.array(draw(st.lists(st.lists(VALUES, min_size=d, max_size=d), min_size=n, max_size=n)), dtype=np.float32)
    for i in range(1, n):
        if draw(st.booleans()):
            X[i] = X[draw(st.integers(0, i - 1))]
            for _ in range(draw(st.integers(0, 2))):
                c = draw(st.integers(0, d - 1))
                with np.errstate(over="ignore"):
                    nudged = np.nextafter(X[i, c], np.float32(draw(st.sampled_from([np.inf, -np.inf]))))
                X[i, c] = nudged if np.isfinite(nudged) else X[i, c]  # the levels take finite rows
    return X


def all_pairs(n):
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


@pytest.mark.usefixtures("kernels")
@SETTINGS
@given(matrices())
def test_exact_level_equals_fractions(X):
    pairs = all_pairs(X.shape[0])
    assert [Fraction(v, SCALE32) for v in exact_sq_distances(X, pairs)] == judge(X, pairs)


@SETTINGS
@given(matrices())
def test_double_double_bounds_hold_on_every_isa(native_isa, X):
    pairs = all_pairs(X.shape[0])
    values, bounds = dd_sq_distances(X, pairs)
    for v, b, exact in zip(values, bounds, judge(X, pairs)):
        assert abs(Fraction(float(v)) - exact) <= Fraction(float(b))


@SETTINGS
@given(matrices())
def test_float64_level_bounds_hold_on_every_isa(native_isa, X):
    pairs = all_pairs(X.shape[0])
    values, bounds = f64_sq_distances(X, pairs)
    for v, b, exact in zip(values, bounds, judge(X, pairs)):
        assert abs(Fraction(float(v)) - exact) <= Fraction(float(b))


@pytest.mark.parametrize("seed", [0, 1])
def test_float64_level_bounds_hold_over_blocks_and_runs(native_isa, seed):
    """Rows longer than several blocks (and the threads' column ranges), every magnitude, and 12 rows
    so that the kernel's runs of 8, 4, 2 and 1 pairs sharing a first row all occur."""
    rng = np.random.default_rng(seed)
    d = 3 * F64_BLOCK + 37
    X = (rng.standard_normal((12, d)) * 10.0 ** rng.integers(-30, 30, size=(12, d))).astype(np.float32)
    X[5] = X[4]
    X[5, 7] = np.nextafter(X[5, 7], np.float32(np.inf))  # a near tie the bound must still hold
    pairs = all_pairs(12)
    values, bounds = f64_sq_distances(X, pairs)
    for v, b, exact in zip(values, bounds, judge(X, pairs)):
        assert abs(Fraction(float(v)) - exact) <= Fraction(float(b))


@SETTINGS
@given(matrices())
def test_exact_kernel_equals_fractions_on_every_isa(native_isa, X):
    pairs = all_pairs(X.shape[0])
    assert [Fraction(v, SCALE32) for v in exact_sq_distances(X, pairs)] == judge(X, pairs)


@pytest.mark.usefixtures("kernels")
@SETTINGS
@given(matrices())
def test_level_one_bounds_and_free_exact_values(X):
    pairs = all_pairs(X.shape[0])
    from krum_mpi.aggregators.certify import LocalRows

    values, bounds, free, via = level_one(X, pairs, LocalRows(X).float64_level)
    exact_pairs = dict(zip(pairs, judge(X, pairs)))
    for v, b, e, through, exact in zip(values, bounds, free, via, judge(X, pairs)):
        assert abs(Fraction(float(v)) - exact) <= Fraction(float(b))
        assert e is None or Fraction(e, SCALE32) == exact
        if through is not None:  # D(i, j) = D(p, q) + correction, exactly
            (p, q), correction = through
            assert exact_pairs[(p, q)] + Fraction(correction, SCALE32) == exact


def test_clone_map_finds_clones_and_their_columns():
    X = np.random.default_rng(1).standard_normal((5, 10_000)).astype(np.float32)
    X[3] = X[1]
    X[3, [7, 4000]] += 1.0
    X[4] = X[1]
    clones = CloneMap(X, range(5))
    assert clones.pivots == [0, 1, 2]
    assert clones.pivot[3] == 1 and clones.cols[3].tolist() == [7, 4000]
    assert clones.pivot[4] == 1 and clones.cols[4].tolist() == []


def test_clone_map_reads_each_row_a_bounded_number_of_times(monkeypatch):
    """Sparse rows agree on most sampled columns but not beyond: each row is compared whole with at
    most TRIES pivots (before: with every earlier pivot, n^2 / 2 whole comparisons), and a clone
    among them is still found, across the comparison's chunks."""
    from krum_mpi.aggregators import clones as clone_module

    rng = np.random.default_rng(2)
    n, d = 24, 3 * clone_module.CHUNK + 5
    X = np.zeros((n, d), dtype=np.float32)
    mask = rng.random((n, d)) < 0.01
    X[mask] = rng.standard_normal(int(mask.sum())).astype(np.float32)
    X[n - 1] = X[5]
    X[n - 1, [3, d - 2]] = 7.0
    calls = []
    whole = clone_module.differing_columns
    monkeypatch.setattr(clone_module, "differing_columns", lambda *a: calls.append(a[1]) or whole(*a))
    found = CloneMap(X, range(n))
    assert len(calls) <= clone_module.TRIES * n
    assert max(calls.count(i) for i in set(calls)) <= clone_module.TRIES
    assert found.pivot[n - 1] == 5 and found.cols[n - 1].tolist() == [3, d - 2]


def test_identical_pairs_agree_with_whole_comparisons():
    """LocalRows.identical_pairs (through a search for clones) against whole-row comparisons: exact
    copies, ulp clones, a copy with +0 and -0 swapped (equal values), and unrelated rows."""
    from krum_mpi.aggregators.certify import LocalRows

    X = np.random.default_rng(4).standard_normal((8, 5000)).astype(np.float32)
    X[0, 10] = 0.0
    X[1] = X[0]
    X[2] = X[0]
    X[2, 10] = -0.0
    X[3] = X[0]
    X[3, 4000] = np.nextafter(X[0, 4000], np.float32(np.inf))
    X[4] = X[3]
    X[6] = X[5]
    rows = LocalRows(X)
    pairs = [(i, j) for i in range(8) for j in range(i + 1, 8)]
    assert rows.identical_pairs(pairs) == [bool(np.all(X[i] == X[j])) for i, j in pairs]
    assert sum(rows.identical_pairs(pairs)) == 5  # {0, 1, 2}: 3 pairs, {3, 4}, {5, 6}


def crafted(name, n, d, f, seed=0):
    """The bench's constructions (scripts/bench_crafted.py) at a size the judge can take."""
    X = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)

    def nudged(row, column, up):
        out = row.copy()
        out[column] = np.nextafter(out[column], np.float32(np.inf if up else -np.inf))
        return out

    if name == "simplex":
        return np.stack([nudged(X[0], (k * 17) % d, True) for k in range(n)])
    for k in range(f):
        X[n - f + k] = nudged(X[0], (k * 17) % d if name == "near-tie" else 0, name == "near-tie" or k % 2 == 0)
    return X


def check_selections(X, f, aggregate):
    n = X.shape[0]
    D = exact_distances(X)
    scores = ref_scores(D, range(n), n - f - 2)
    assert aggregate("krum", f).selected.tolist() == ref_lowest(scores, 1)
    assert sorted(aggregate("multi-krum", f).selected.tolist()) == sorted(ref_lowest(scores, n - f))
    assert aggregate("bulyan", f).selected.tolist() == ref_bulyan_chosen(D, n, f)
    assert sorted(aggregate("mda", 2).selected.tolist()) == ref_mda(D, n, 2)


@pytest.mark.usefixtures("kernels")
@pytest.mark.parametrize("name", ["near-tie", "mirror", "simplex"])
def test_crafted_near_ties_select_exactly_in_few_passes(name):
    n, f = 11, 2
    X = crafted(name, n, 300, f)

    def aggregate(rule, f):
        with counting() as box:
            result = make(rule, n, f)(X)
        # each pass reads the rows it involves once: a handful per call, however the rows tie
        # (before: one exact pass per pair, dozens per call)
        assert box[1] <= 4, (rule, box)
        return result

    check_selections(X, f, aggregate)


@pytest.mark.usefixtures("kernels")
@pytest.mark.parametrize("n", [15, 23])
def test_bulyan_rounds_refine_together(n):
    """Bulyan's n - 2f recursive Krum rounds on a simplex of clones (every distance a near tie): the
    rounds' refinements go in shared passes, not one or more per round (before: 3 passes at both n)."""
    f = (n - 3) // 4
    X = crafted("simplex", n, 300, f)
    with counting() as box:
        chosen = make("bulyan", n, f)(X).selected.tolist()
    assert chosen == ref_bulyan_chosen(exact_distances(X), n, f)
    assert 1 <= box[1] <= 2, box


def tiny_clones(n, d, f, seed):
    """f one-ulp clones of row 0, each nudged in a coordinate where row 0 is tiny (1e-6) among rows
    of size 1e3: the clones' distances to the other rows differ far below the float64 resolution of
    the distances, so only exact arithmetic tells their scores apart."""
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * 1000).astype(np.float32)
    cols = [(k * 17) % d for k in range(f)]
    X[0, cols] = (rng.standard_normal(f) * 1e-6).astype(np.float32)
    for k, c in enumerate(cols):
        X[n - f + k] = X[0]
        X[n - f + k, c] = np.nextafter(X[0, c], np.float32(np.inf))
    return X


@pytest.mark.usefixtures("kernels")
@pytest.mark.parametrize("n, seed", [(11, 0), (15, 1), (19, 2)])
def test_clone_scores_compare_through_their_pivots(n, seed):
    """Scores of clones of one row compare by their exact corrections, the pivots' distances
    cancelling (certify.ViaPivots): the exact selections in one pass, with no exact Gram pass
    (before: a second, exact pass over the pivots)."""
    f = (n - 3) // 4
    X = tiny_clones(n, 300, f, seed)
    D = exact_distances(X)
    for rule, expected in (("krum", ref_lowest(ref_scores(D, range(n), n - f - 2), 1)),
                           ("bulyan", ref_bulyan_chosen(D, n, f))):
        with counting() as box:
            chosen = make(rule, n, f)(X).selected.tolist()
        assert chosen == expected, rule
        assert box[1] == 1, (rule, box)


@pytest.mark.usefixtures("kernels")
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32 - 1), st.integers(1, 80))
def test_generated_tiny_clones_select_exactly(seed, d):
    """Clones whose scores differ below the float64 resolution of a distance (tiny_clones), any
    width: every distance rule's selection equals the exact one (fractions)."""
    n, f = 11, 2
    X = tiny_clones(n, d, f, seed)

    def aggregate(rule, f):
        return make(rule, n, f)(X)

    check_selections(X, f, aggregate)


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("name", ["near-tie", "mirror", "simplex"])
def test_crafted_near_ties_select_exactly_on_sharded_blocks(name, parts):
    n, f = 11, 2
    X = crafted(name, n, 300, f, seed=parts)
    cuts = np.linspace(0, X.shape[1], parts + 1).astype(int)

    def aggregate(rule, f):
        blocks = sharded.Blocks([X[:, a:b] for a, b in zip(cuts[:-1], cuts[1:])])
        options = {"krum": {"neighbours": "n-f-2", "squared": True},
                   "multi-krum": {"neighbours": "n-f-2", "squared": True, "m": None}}.get(rule, {})
        return sharded.aggregate(rule, blocks, f, options)

    check_selections(X, f, aggregate)


@pytest.mark.usefixtures("kernels")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32 - 1), st.sampled_from(["near-tie", "mirror", "simplex"]), st.integers(1, 60))
def test_generated_near_ties_select_exactly(seed, name, d):
    n, f = 11, 2
    X = crafted(name, n, d, f, seed=seed)
    rng = np.random.default_rng(seed)
    X *= np.float32(10.0 ** rng.integers(-30, 30))  # every magnitude: the ulps tie at each scale

    def aggregate(rule, f):
        return make(rule, n, f)(X)

    check_selections(X, f, aggregate)


def test_exact_kernel_and_numpy_path_agree_on_long_rows(monkeypatch):
    if native.library("exact") is None:
        pytest.skip("compiled kernels not built: NumPy path only")
    rng = np.random.default_rng(3)
    X = (rng.standard_normal((4, 70_000)) * 10.0 ** rng.integers(-20, 20, size=(4, 70_000))).astype(np.float32)
    pairs = all_pairs(4)
    compiled = exact_sq_distances(X, pairs)
    monkeypatch.setattr(native, "ENABLED", False)
    assert exact_sq_distances(X, pairs) == compiled
