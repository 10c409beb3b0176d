"""One rule, one implementation: every registered rule (and chained pre-steps) over gathered rows
and over 1-5 sharded blocks of uneven widths gives bitwise the same aggregate, selection and weights;
the canonical distances behind the iterative rules are the exact ones, truncated, on every path."""
from fractions import Fraction

import numpy as np
import pytest

from krum_mpi import aggregators, native
from krum_mpi.aggregators import rows as rows_module
from krum_mpi.aggregators.rows import GRID_BITS, Rows, truncate
from krum_mpi.parallel import sharded
from sharded_cases import inputs

N, F = 11, 2
CHAINED = ["nnm+krum", "nnm+median", "nnm+geometric-median", "nnm+centered-clipping", "nnm+average",
           "bucketing+krum", "bucketing+median", "bucketing+geometric-median", "clipping+multi-krum",
           "clipping+centered-clipping", "clipping+nnm+mda"]
F_OF = {"bucketing+krum": 1}   # 6 buckets of 11 rows: Krum needs n >= 2f + 3
SPLITS = [[37], [18, 19], [1, 7, 29], [10, 1, 13, 13], [3, 9, 1, 20, 4]]


def blocks_of(X, widths, xp=np):
    edges = np.concatenate([[0], np.cumsum(widths)])
    return sharded.Blocks([xp.asarray(np.ascontiguousarray(X[:, a:b])) for a, b in zip(edges[:-1], edges[1:])])


def same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True) and np.asarray(a).dtype == np.asarray(b).dtype


@pytest.mark.parametrize("case", ["normal", "huge", "far", "nonfinite", "ties"])
@pytest.mark.parametrize("rule", aggregators.names() + CHAINED)
def test_gathered_and_sharded_are_bitwise_equal(rule, case, xp):
    X = inputs()[case]
    f = F_OF.get(rule, F)
    want = aggregators.make(rule, N, f)(xp.asarray(X))
    for widths in SPLITS:
        got = sharded.aggregate(rule, blocks_of(X, widths, xp), f, {})
        vector = np.concatenate([np.asarray(v) for v in got.vectors])
        assert same(np.asarray(want.vector), vector), (rule, case, widths)
        assert same(want.selected, got.selected), (rule, case, widths)
        assert same(want.weights, got.weights), (rule, case, widths)


def test_centered_clipping_state_carries_bitwise(xp):
    """Three steps, the centre carried: the gathered Aggregator and the sharded blocks agree."""
    X = inputs()["normal"]
    gathered = aggregators.make("centered-clipping", N, F, tau=0.5)
    state = {}
    for step in range(3):
        rows = xp.asarray(X * (step + 1))
        want = gathered(rows)
        got = sharded.aggregate("centered-clipping", blocks_of(X * (step + 1), [3, 9, 1, 20, 4], xp), F,
                                {"tau": 0.5}, state)
        state = {"center": got.vectors}
        assert same(np.asarray(want.vector), np.concatenate([np.asarray(v) for v in got.vectors]))


def exact_sq(row, point):
    """The definition: the exact sum of t_j = fl64((row_j - point_j)^2), as a Fraction."""
    diff = row.astype(np.float64) - point.astype(np.float64)
    return sum((Fraction(float(t)) for t in diff * diff), Fraction(0))


def truncated(value):
    """A Fraction truncated to GRID_BITS significant bits, as a float."""
    if value == 0:
        return 0.0
    e = value.numerator.bit_length() - value.denominator.bit_length()
    while Fraction(2) ** e > value:
        e -= 1
    while Fraction(2) ** (e + 1) <= value:
        e += 1
    step = Fraction(2) ** (e - GRID_BITS + 1)
    return float((value // step) * step)


@pytest.mark.parametrize("case", ["normal", "huge", "far", "ties"])
def test_canonical_distances_are_the_exact_ones_truncated(case, xp):
    X = inputs()[case]
    point = X[2] * np.float32(0.5) + X[5] * np.float32(0.25)
    got = Rows([xp.asarray(X)]).sq_distances_to(xp.asarray(point))
    want = [truncated(exact_sq(X[i], point)) for i in range(N)]
    assert got.tolist() == want


def test_the_exact_level_gives_what_the_fast_level_decides():
    """Force every row through the exact sums (as if each interval straddled a boundary): the same
    values, and they are counted as recomputed."""
    X = inputs()["normal"]
    rows = Rows([X])
    point, _ = rows.point_pass(np.full(N, 1.0 / N), distances=False)
    fast = rows.sq_distances_to(point)
    with aggregators.certify.counting() as recomputed:
        sums = rows.point_pass(np.zeros(N), point, 1.0)[1]
        forced = rows.canonical(np.asarray(sums) * 1.0, 10**14, point)   # a depth that decides nothing
    assert forced.tolist() == fast.tolist()
    assert recomputed[0] == N


def test_truncation_keeps_grid_bits():
    assert truncate(np.array([1.0 + 2.0**-27 + 2.0**-40]))[0] == 1.0 + 2.0**-27
    assert truncate(np.array([3.0]))[0] == 3.0


@pytest.mark.skipif(native.library("point") is None, reason="compiled kernels not built")
@pytest.mark.parametrize("n, d, zero_rows", [
    (13, 5000, [7]),          # 12 rows used: one group of 8 and a remainder of 4
    (1, 37, []),              # one row, fewer columns than a lane group
    (8, 1024, [3]),           # exactly one column block; 7 rows: only the remainder loop
    (9, 2049, []),            # a group of 8 and one row; a last block of one column
    (20, 3333, [0, 19, 8]),   # two groups of 8 and a remainder of 1 (the first used row is row 1)
])
def test_compiled_and_numpy_passes_agree(monkeypatch, native_isa, n, d, zero_rows):
    """The compiled pass (each ISA variant) forms the same point bitwise and, through the canonical
    values, the same distances as the NumPy pass, for any grouping of the used rows and any width;
    also on rows read in place from a wider array (a row stride larger than d)."""
    rng = np.random.default_rng(3 + n)
    wide = rng.standard_normal((n, d + 5)).astype(np.float32)
    X = wide[:, 2:d + 2]                 # rows with a stride of d + 5 floats, read in place
    X[n // 2] *= 1e30
    X[0, : min(d, 3)] = -0.0              # -0.0 terms: 0.0 + (-0.0) is +0.0 on both paths
    weights = rng.random(n)
    weights[zero_rows] = 0.0
    weights[-1] = -weights[-1]
    centre = rng.standard_normal(d).astype(np.float32)
    compiled = Rows([X]).point_pass(weights / np.abs(weights).sum(), centre, 0.25)
    only_point = Rows([X]).point_pass(weights / np.abs(weights).sum(), centre, 0.25, distances=False)
    with monkeypatch.context() as patch:
        patch.setattr(rows_module, "native_block_pass", lambda *args: None)
        reference = Rows([X]).point_pass(weights / np.abs(weights).sum(), centre, 0.25)
    assert np.array_equal(compiled[0][0].view(np.uint32), reference[0][0].view(np.uint32))
    assert np.array_equal(only_point[0][0].view(np.uint32), reference[0][0].view(np.uint32))
    assert compiled[1].tolist() == reference[1].tolist()


@pytest.mark.skipif(native.library("point") is None, reason="compiled kernels not built")
@pytest.mark.parametrize("n", [3, 10, 20])
def test_compiled_pass_adds_the_rows_in_increasing_order(native_isa, n):
    """In column j, rows a < b < c hold 2^60, 1 and -2^60 (a, b, c drawn per column): added in
    increasing row order, one float64 rounding per sum, the 1 survives only when row b is not
    between rows a and c, so the compiled point equals that order's result in every column."""
    rng = np.random.default_rng(n)
    d = 3000
    X = np.zeros((n, d), np.float32)
    want = np.zeros(d, np.float32)
    for j in range(d):
        rows = rng.choice(n, size=3, replace=False)
        big, one, minus = rows
        X[big, j], X[one, j], X[minus, j] = 2.0**60, 1.0, -(2.0**60)
        total = 0.0
        for i in sorted(rows):
            total = total + 0.125 * float(X[i, j])
        want[j] = total
    assert 0 < np.count_nonzero(want) < d        # both outcomes occur
    point, _ = Rows([X]).point_pass(np.full(n, 0.125), distances=False)
    assert np.array_equal(point[0], want)
