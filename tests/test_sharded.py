"""The sharded aggregation's math in one process: the blocks of uneven width are held by one
``Blocks`` object, whose sums run over the list (the same code sums MPI ranks' partials)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krum_mpi.parallel import sharded
from test_certified import adversarial_matrices
from sharded_cases import F, RULES, close, gathered, inputs, same_selection

SPLITS = [[37], [18, 19], [1, 7, 29], [10, 1, 13, 13]]


def blocks_of(X, widths):
    edges = np.concatenate([[0], np.cumsum(widths)])
    return sharded.Blocks([np.ascontiguousarray(X[:, a:b]) for a, b in zip(edges[:-1], edges[1:])])


@pytest.mark.parametrize("case", ["normal", "huge", "far", "nonfinite", "ties"])
@pytest.mark.parametrize("rule", RULES)
def test_sharded_equals_gathered(rule, case):
    X = inputs()[case]
    want, want_selected = gathered(rule, X)
    for widths in SPLITS:
        result = sharded.aggregate(rule, blocks_of(X, widths), F, {})
        got = np.concatenate(result.vectors)
        assert same_selection(rule, want_selected, result.selected), (rule, case, widths)
        assert close(want, got, X), (rule, case, widths, np.max(np.abs(want - got)))


def test_summed_bounds_hold_the_exact_distances():
    """Every summed interval holds the exact distance, and the summed exact level is the exact value."""
    from fractions import Fraction
    X = inputs()["huge"]
    whole = sharded.certified(sharded.Blocks([X]))
    split = sharded.certified(blocks_of(X, [1, 7, 29]))
    assert np.array_equal(whole.finite, split.finite)
    pairs = [(i, j) for i in range(X.shape[0]) for j in range(i + 1, X.shape[0]) if whole.finite[i] and whole.finite[j]]
    exact = whole.rows.exact(pairs)
    assert split.rows.exact(pairs) == exact
    values, bounds = split.rows.level_one(pairs)
    for (i, j), e, v, b in zip(pairs, exact, values, bounds):
        e = Fraction(e, 2**298)
        assert Fraction(split.lo[i, j]) <= e <= Fraction(split.hi[i, j])
        assert Fraction(v) - Fraction(b) <= e <= Fraction(v) + Fraction(b)


def test_refuses_rules_it_does_not_cover():
    with pytest.raises(ValueError, match="placement = 'gather'"):
        sharded.split_rule("bucketing+krum")
    with pytest.raises(ValueError, match="placement = 'gather'"):
        sharded.split_rule("no-such-rule")


def test_per_shard_selects_block_by_block():
    X = inputs()["normal"].copy()
    X[0, :10] += 50.0   # row 0 is an outlier in the first block only
    out, selections = sharded.per_shard("krum", blocks_of(X, [10, 27]), F, {})
    assert selections[0][0] != 0
    assert np.concatenate(out).shape == (37,)


def test_block_bounds_uneven():
    assert sharded.block_bounds(10, 3).tolist() == [0, 4, 7, 10]


def test_refinement_runs_through_the_blocks():
    """Exact ties between different rows: the summed direct and exact levels decide (recomputed > 0)."""
    X = inputs()["ties"]
    result = sharded.aggregate("mda", blocks_of(X, [1, 7, 29]), F, {})
    assert result.recomputed > 0
    assert same_selection("mda", gathered("mda", X)[1], result.selected)


@settings(max_examples=40, deadline=None)
@given(adversarial_matrices(), st.integers(0, 2**32 - 1))
def test_sharded_selections_equal_gathered_on_adversarial_inputs(case, seed):
    X, f = case
    n, d = X.shape
    parts = 1 + seed % min(4, d)
    cuts = sorted(np.random.default_rng(seed).choice(np.arange(1, d), size=parts - 1, replace=False).tolist()) \
        if parts > 1 else []
    widths = np.diff([0, *cuts, d]).tolist()
    rules = ["krum", "multi-krum"] + (["bulyan"] if n >= 4 * f + 3 else []) + (["mda"] if n <= 10 else [])
    for rule in rules:
        want, want_selected = gathered(rule, X, f)
        result = sharded.aggregate(rule, blocks_of(X, widths), f, {})
        assert same_selection(rule, want_selected, result.selected), (rule, widths)
        assert close(want, np.concatenate(result.vectors), X), (rule, widths)
