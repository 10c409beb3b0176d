"""The compiled row kernels (krum_mpi/native/rows.c) on every ISA variant: weighted row combinations
against float64 references and the NumPy path (precision, zero weights, non-finite rows, float32
overflow, strided views), and MDA's subset search against the Python search."""
import importlib

import numpy as np
import pytest

import krum_mpi.native as native
from krum_mpi.aggregators import parallel, rowops

mda_module = importlib.import_module("krum_mpi.aggregators.mda")  # the package exports a function "mda"

U = float(np.finfo(np.float32).eps)
combine_rows_many = parallel.cpu_budget(rowops.combine_rows_many)  # the rules' thread budget
combine_rows = parallel.cpu_budget(rowops.combine_rows)
native_combine_rows = parallel.cpu_budget(rowops.native_combine_rows)


@pytest.fixture(autouse=True)
def rows_library(native_isa, monkeypatch):
    """Every test on each ISA variant, with the compiled library in use; uneven thread ranges."""
    monkeypatch.setattr(native, "ENABLED", True)
    if native.library("rows") is None:
        pytest.skip("compiled row kernels not built (krum_mpi/native/_rows*): NumPy path only")
    monkeypatch.setattr(parallel, "THREADS", 3)
    monkeypatch.setattr(rowops, "CHUNK", 700)  # ranges start off the vector width
    return native_isa


def numpy_path(X, mixing, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(native, "ENABLED", False)
        return combine_rows_many(X, mixing)


def compiled(X, mixing):
    out = native_combine_rows(X, np.asarray(mixing, dtype=np.float64))
    assert out is not None, "the compiled kernel should take this input"
    return out


def reference(X, mixing):
    """float64 mixing @ X; NaN exactly where an output weights a non-finite entry."""
    X64 = X.astype(np.float64)
    finite = np.isfinite(X64)
    with np.errstate(over="ignore", invalid="ignore"):
        value = mixing @ np.where(finite, X64, 0.0)
    hit = (mixing != 0).astype(np.float64) @ (~finite).astype(np.float64) > 0
    return np.where(hit, np.nan, value)


def bound(X, mixing):
    """Allowed error: a few roundings of the result and of the float32 weights times the anchor, plus
    float32 roundings of the spread (rows minus their mean), NOT of the common mean."""
    X64 = X.astype(np.float64)
    finite = np.isfinite(X64)
    centre = np.where(finite, X64, 0.0).sum(axis=0) / np.maximum(finite.sum(axis=0), 1)  # finite entries
    with np.errstate(over="ignore", invalid="ignore"):
        spread = np.abs(mixing) @ np.where(finite, np.abs(X64 - centre), 0.0)
    sums = np.abs(mixing.sum(axis=1))[:, None] * np.abs(centre)
    return 4 * U * (np.abs(reference(X, mixing)) + sums + spread * np.sqrt(mixing.shape[1])) + 1e-30


def random_mixing(rng, k, n, zeros=0.4):
    mixing = rng.standard_normal((k, n))
    mixing[rng.random((k, n)) < zeros] = 0.0
    mixing[:, rng.integers(n)] = 0.5  # at least one weight per output
    return mixing


def check_close(out, X, mixing):
    ref = reference(X, mixing)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    ok = np.isnan(ref) | (np.abs(out - ref) <= bound(X, mixing))
    assert ok.all(), f"max error {np.nanmax(np.abs(out - ref))} at {np.argwhere(~ok)[:3].tolist()}"


@pytest.mark.parametrize("n", [1, 2, 3, 7, 9, 17, 64, 70])
@pytest.mark.parametrize("k", [1, 3, 8, 13])
def test_matches_float64_and_numpy_path(n, k, monkeypatch):
    rng = np.random.default_rng(n * 100 + k)
    for d in (1, 5, 67, 2003):
        X = (1e4 + rng.standard_normal((n, d))).astype(np.float32)  # common mean 1e4 x the spread
        mixing = random_mixing(rng, k, n)
        out = compiled(X, mixing)
        check_close(out, X, mixing)
        check_close(numpy_path(X, mixing, monkeypatch), X, mixing)
        assert np.array_equal(combine_rows_many(X, mixing), out)  # the public entry uses it


def test_precision_is_that_of_the_spread_not_the_mean():
    """Average of 49 rows around 1e4: within an ulp or two of the result, where an uncentred float32
    sum errs by many ulps."""
    rng = np.random.default_rng(1)
    X = (1e4 + rng.standard_normal((64, 20011))).astype(np.float32)
    weights = np.zeros(64)
    weights[rng.choice(64, 49, replace=False)] = 1 / 49
    ref = weights @ X.astype(np.float64)
    out = combine_rows(X, weights)
    ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    assert (np.abs(out - ref) <= 2 * ulp).all()


def test_single_output_long_rows_and_row_subsets():
    """k = 1 (Multi-Krum, MDA): past several blocks, reading only the weighted rows."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((20, 3 * 8192 + 77)).astype(np.float32)
    for m in (1, 2, 9, 20):
        weights = np.zeros(20)
        weights[rng.choice(20, m, replace=False)] = 1.0 / m
        check_close(compiled(X, weights[None, :]), X, weights[None, :])
    weights = np.zeros(20)
    weights[[3, 11]] = 0.5
    X[[0, 5, 19]] = np.nan  # rows never read: unweighted NaN rows change nothing
    out = compiled(X, weights[None, :])
    assert np.isfinite(out).all()
    check_close(out, X, weights[None, :])


@pytest.mark.parametrize("k", [1, 4, 8, 11])
def test_nonfinite_rows(k, monkeypatch):
    """NaN/+Inf/-Inf rows: with zero weight they never leak; with a weight the output is NaN exactly
    where they are non-finite, and equal to the NumPy path's NaN pattern."""
    rng = np.random.default_rng(k)
    n, d = 12, 1500
    X = (1e4 + rng.standard_normal((n, d))).astype(np.float32)
    X[0] = np.nan  # the first row: the anchor of a tile that includes it
    X[4, ::7] = np.inf
    X[7, 100:900] = -np.inf
    X[9, -3:] = np.nan
    bad = [0, 4, 7, 9]
    clean = random_mixing(rng, k, n, zeros=0.2)
    clean[:, bad] = 0.0
    clean[:, 1] = 0.3
    out = compiled(X, clean)
    assert np.isfinite(out).all()
    check_close(out, X, clean)
    weighted = clean.copy()
    weighted[0, 4] = 0.5  # output 0 weights the +Inf entries of row 4
    weighted[-1, [7, 9]] = 0.25  # the last output weights rows 7 and 9
    if k > 2:
        weighted[1, 0] = 1.0  # output 1 weights the all-NaN row
    out = compiled(X, weighted)
    check_close(out, X, weighted)
    assert np.array_equal(np.isnan(out), np.isnan(numpy_path(X, weighted, monkeypatch)))


def test_float32_overflow_of_finite_rows_matches_numpy_path(monkeypatch):
    """Finite inputs whose float32 sum overflows: the float64 sum cast to float32, as NumPy does
    (finite when it fits, +-Inf when it does not), never NaN."""
    big = np.float32(3e38)
    X = np.ones((5, 37), dtype=np.float32)
    X[0], X[1], X[2] = big, big, -big
    X[3, :10] = np.nan  # unweighted
    mixing = np.array([[1.0, 1.0, 1.0, 0.0, 0.0],  # 3e38: float32 partial sums overflow
                       [1.0, 1.0, 0.0, 0.0, 1.0],  # 6e38 + 1: beyond float32, +Inf
                       [0.0, 0.5, -0.5, 0.0, 2.0]])  # 3e38 + 2
    with np.errstate(over="ignore"):
        expected = reference(X, mixing).astype(np.float32)
    out = compiled(X, mixing)
    numpy_out = numpy_path(X, mixing, monkeypatch)
    assert np.array_equal(out, expected)
    assert np.array_equal(out, numpy_out)
    assert np.isfinite(out[0]).all() and np.isposinf(out[1]).all() and np.isfinite(out[2]).all()


def test_row_stride_views_are_read_in_place(monkeypatch):
    rng = np.random.default_rng(3)
    base = (1e4 + rng.standard_normal((30, 1100))).astype(np.float32)
    mixing = random_mixing(rng, 5, 15)
    for X in (base[::2, 7:1007], base[1::2, 3:], base[::-2, :999]):  # row strides 2 and -2 rows, offsets
        assert not X.flags.c_contiguous
        check_close(compiled(X, mixing), X, mixing)
        assert np.array_equal(combine_rows_many(X, mixing), compiled(X, mixing))
    X = base[:15, ::2]  # strided columns: the NumPy path takes it
    assert native_combine_rows(X, mixing) is None
    check_close(combine_rows_many(X, mixing), X, mixing)


def test_nnm_mixing_dense_tiles(monkeypatch):
    """The NNM mixing (64 x 64, 49 non-zeros per row) as the pre-step produces it."""
    from krum_mpi.aggregators.preagg import nnm_mixing
    from krum_mpi.aggregators.rows import Rows

    rng = np.random.default_rng(4)
    X = (1e4 + rng.standard_normal((64, 1031))).astype(np.float32)
    mixing, _ = nnm_mixing(Rows([X]), 15, {}, 0)
    out = compiled(X, mixing)
    check_close(out, X, mixing)
    assert np.abs(out - numpy_path(X, mixing, monkeypatch)).max() <= 8 * U * 1e4


# ---- MDA search -----------------------------------------------------------------------------

def python_search(dist, size, tol, monkeypatch):
    with monkeypatch.context() as m, np.errstate(invalid="ignore"):  # inf - inf with tol = inf
        m.setattr(native, "ENABLED", False)
        return mda_module.min_diameter_subset(dist, size, tol)


def check_subset(dist, size, tol, monkeypatch):
    got = mda_module.native_min_diameter_subset(dist, size, tol)
    assert got is not None, "the compiled search should take this input"
    want = python_search(dist, size, tol, monkeypatch)
    assert got.dtype == np.int64 and got.tolist() == want.tolist(), (got, want, tol)
    assert mda_module.min_diameter_subset(dist, size, tol).tolist() == want.tolist()


def squared_distances(points):
    return ((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)


def test_mda_random_matrices(monkeypatch):
    rng = np.random.default_rng(5)
    for _ in range(150):
        n = int(rng.integers(1, 13))
        f = int(rng.integers(0, (n - 1) // 2 + 1))
        dist = squared_distances(rng.standard_normal((n, 4)))
        check_subset(dist, n - f, 0.0, monkeypatch)


def test_mda_ties_and_tolerance(monkeypatch):
    """Duplicate rows and coarse distances (exact ties: the lexicographically first subset), and
    tol > 0 (a later subset must be smaller by more than tol)."""
    rng = np.random.default_rng(6)
    for trial in range(200):
        n = int(rng.integers(3, 13))
        f = int(rng.integers(1, (n - 1) // 2 + 1))
        points = rng.integers(0, 3, size=(n, 2)).astype(np.float64)  # many duplicates
        points[rng.integers(n)] = points[0]
        dist = squared_distances(points)
        for tol in (0.0, 0.5, 1.0, 2.0, 5.0):
            check_subset(dist, n - f, tol, monkeypatch)


def test_mda_infinite_and_nan_entries(monkeypatch):
    """Non-finite rows are +inf away (as the distance kernel reports them); NaN entries follow the
    Python search's max() semantics too."""
    rng = np.random.default_rng(7)
    for trial in range(150):
        n = int(rng.integers(3, 13))
        f = int(rng.integers(1, (n - 1) // 2 + 1))
        dist = np.round(squared_distances(rng.standard_normal((n, 2))), 1)
        bad = rng.choice(n, int(rng.integers(1, f + 2)), replace=False)  # sometimes more than f
        dist[bad, :] = np.inf
        dist[:, bad] = np.inf
        dist[bad, bad] = 0.0
        if trial % 5 == 0:
            i, j = rng.choice(n, 2, replace=False)
            dist[i, j] = dist[j, i] = np.nan
        for tol in (0.0, 0.2, np.inf):
            check_subset(dist, n - f, tol, monkeypatch)


def test_mda_rule_at_benchmark_size(monkeypatch):
    """n = 64, f = 2 as `krum-mpi bench` runs it: the same subset both ways."""
    rng = np.random.default_rng(8)
    points = rng.standard_normal((64, 50))
    points[[5, 40]] += 3.0
    check_subset(squared_distances(points), 62, 0.0, monkeypatch)
    check_subset(squared_distances(points), 62, 1e-3, monkeypatch)


@pytest.mark.parametrize("k", [1, 3, 4, 8, 13])
def test_column_blocks_give_the_whole_rows_values_bitwise(k):
    """A column's value does not depend on where its block of columns starts or ends (vector groups,
    left-over columns, thread ranges): the sharded placement sums rows block by block and must get
    the gathered placement's aggregate bitwise, or runs drift apart step after step."""
    rng = np.random.default_rng(k)
    X = (3.0 + rng.standard_normal((11, 2053)) * np.logspace(-3, 3, 2053)).astype(np.float32)
    mixing = random_mixing(rng, k, 11)
    whole = compiled(X, mixing)
    for cuts in ([0, 1, 18, 35, 700, 2053], [0, 5, 1029, 2052, 2053], sorted({0, 2053, *rng.integers(1, 2053, 6)})):
        blocks = [compiled(np.ascontiguousarray(X[:, a:b]), mixing) for a, b in zip(cuts[:-1], cuts[1:])]
        assert np.array_equal(np.concatenate(blocks, axis=1), whole), cuts
        assert np.array_equal(np.concatenate([combine_rows_many(X[:, a:b], mixing) for a, b in zip(cuts[:-1], cuts[1:])],
                                             axis=1), combine_rows_many(X, mixing))
