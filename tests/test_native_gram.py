"""The compiled float32 centred Gram kernel (krum_mpi/native/gram.c) behind sq_distances, on every
instruction-set variant: against the float64 pair-by-pair reference and against the NumPy path,
for awkward sizes, a large common mean, non-finite and overflowing rows, and strided row views."""
import numpy as np
import pytest

import krum_mpi.native as native
from krum_mpi.aggregators import distances
from krum_mpi.aggregators.distances import sq_distances
from test_aggregators_reference import ref_distance_matrix

pytestmark = pytest.mark.usefixtures("native_isa")


@pytest.fixture(autouse=True)
def gram_library(monkeypatch):
    monkeypatch.setattr(native, "ENABLED", True)
    if native.library("gram") is None:
        pytest.skip("compiled Gram kernel not built (krum_mpi/native/_gram*.so missing): NumPy path only")


def rows(n, d, mean=1e4, seed=0):
    rng = np.random.default_rng(seed)
    return (mean + rng.standard_normal((n, d))).astype(np.float32)


def numpy_path(X, chunk, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(native, "ENABLED", False)
        return sq_distances(X, chunk=chunk)


def check_against_reference(result, X):
    ref = ref_distance_matrix(X.astype(np.float64))
    assert result.finite.all()
    off = ~np.eye(len(X), dtype=bool)
    if off.any():
        assert (np.abs(result.sq - ref)[off] / ref[off]).max() < 1e-5
    assert (np.abs(result.sq - ref) <= result.err + 1e-300).all()  # the estimate is a bound


def test_kernel_variant_is_the_one_asked_for(native_isa):
    lib = distances.gram_library(rows(2, 8))
    assert lib is not None and lib.krum_gram_isa().decode() == native_isa


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 16, 17, 33, 64, 67])
def test_matches_reference_and_numpy_under_a_common_mean(n, monkeypatch):
    d = 1013 if n <= 17 else 301  # not a multiple of any vector width or block
    X = rows(n, d, seed=n)
    chunk = 97  # several kernel blocks, a short last one
    result = sq_distances(X, chunk=chunk)
    check_against_reference(result, X)
    expected = numpy_path(X, chunk, monkeypatch)
    np.testing.assert_allclose(result.sq, expected.sq, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 16, 17, 31, 32, 33])
def test_whole_vector_blocks_read_in_place(n, monkeypatch):
    # blocks of 96 columns (whole vectors in every variant): small n reads X in place and centres
    # in registers, edge tiles included; the short last block (1013 = 10 * 96 + 53) uses scratch
    X = rows(n, 1013, seed=20 + n)
    X[n // 2, 500] = np.nan  # marked in a middle block, in place from then on
    result = sq_distances(X, chunk=96)
    good = np.arange(n) != n // 2
    assert result.finite.tolist() == good.tolist()
    expected = numpy_path(X, 96, monkeypatch)
    np.testing.assert_allclose(result.sq[np.ix_(good, good)], expected.sq[np.ix_(good, good)],
                               rtol=1e-5, atol=1e-3)
    if good.sum() > 1:
        check_against_reference(sq_distances(X[good], chunk=96), X[good])


@pytest.mark.parametrize("n", [5, 16, 67])
def test_default_blocks_on_a_longer_row(n, monkeypatch):
    X = rows(n, 3 * distances.native_block(n, 10**9) + 37, seed=3)
    result = sq_distances(X)
    off = ~np.eye(n, dtype=bool)
    expected = numpy_path(X, None, monkeypatch)
    np.testing.assert_allclose(result.sq[off], expected.sq[off], rtol=1e-5)
    # float64 reference by BLAS (the pair loop is too slow at this size)
    X64 = X.astype(np.float64) - X[0].astype(np.float64)
    norms = (X64 * X64).sum(axis=1)
    ref = norms[:, None] + norms[None, :] - 2.0 * (X64 @ X64.T)
    assert (np.abs(result.sq - ref)[off] <= result.err[off] + 1e-6 * ref[off]).all()
    assert (np.abs(result.sq - ref)[off] / ref[off]).max() < 1e-5


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["one-block", "every-block", "reference-row"])
def test_nonfinite_rows_like_the_numpy_path(value, where, monkeypatch):
    n, d, chunk = 11, 1500, 128
    X = rows(n, d, seed=5)
    if where == "one-block":
        bad = [3]
        X[3, 700] = value
    elif where == "every-block":
        bad = [2, 9]
        X[2, ::50] = value  # in the first chunk and in every kernel block
        X[9, :] = value
    else:
        # the reference row (most central on the first chunk) turns non-finite in one later block
        ref_row = distances.central_row(sq_distances(X[:, :chunk]).sq, np.ones(n, bool))
        bad = [ref_row]
        X[ref_row, 900] = value
    result = sq_distances(X, chunk=chunk)
    expected = numpy_path(X, chunk, monkeypatch)
    assert result.finite.tolist() == expected.finite.tolist() == [i not in bad for i in range(n)]
    assert np.array_equal(np.isinf(result.sq), np.isinf(expected.sq))
    good = np.ix_(result.finite, result.finite)
    np.testing.assert_allclose(result.sq[good], expected.sq[good], rtol=1e-5)
    ref = ref_distance_matrix(X.astype(np.float64))
    assert np.array_equal(np.isinf(result.sq), np.isinf(ref))


def test_a_nan_row_in_every_block_stays_on_the_fast_path(monkeypatch):
    n, d, chunk = 8, 20000, 256
    X = rows(n, d, seed=6)
    X[4, ::100] = np.nan
    calls = []
    precise = distances.GramSum.add_precise
    monkeypatch.setattr(distances.GramSum, "add_precise",
                        lambda self, block, ref: (calls.append(block.shape), precise(self, block, ref))[1])
    result = sq_distances(X, chunk=chunk)
    assert len(calls) == 1  # the float64 first chunk only: no block fell back
    assert result.finite.tolist() == [i != 4 for i in range(n)]


def test_huge_finite_rows_are_excluded_and_bounded(monkeypatch):
    # a finite row whose square overflows float32 leaves the float32 products (no float64 block):
    # its distances are bounded through the reference row, and every bound holds
    n, d, chunk = 7, 2000, 128
    X = rows(n, d, mean=0.0, seed=7)
    X[3, 1000] = 1e30
    X[5, 1500:1510] = 1e30
    calls = []
    precise = distances.GramSum.add_precise
    monkeypatch.setattr(distances.GramSum, "add_precise",
                        lambda self, block, *a: (calls.append(block.shape), precise(self, block, *a))[1])
    result = sq_distances(X, chunk=chunk)
    assert result.finite.all()
    assert result.excluded.tolist() == [i in (3, 5) for i in range(n)]
    assert len(calls) == 1  # the float64 first chunk only
    ref = ref_distance_matrix(X.astype(np.float64))
    assert (np.abs(np.asarray(result.sq) - ref) <= result.err).all()
    kept = [i for i in range(n) if i not in (3, 5)]
    np.testing.assert_allclose(result.sq[np.ix_(kept, kept)], ref[np.ix_(kept, kept)], rtol=1e-5)


@pytest.mark.parametrize("view", ["columns-of-wider", "rows-of-taller", "reversed-rows"])
def test_row_stride_views_are_read_in_place(view):
    n, d, chunk = 9, 1700, 160
    big = rows(20, d + 61, seed=8)
    X = {"columns-of-wider": big[:n, 7:7 + d], "rows-of-taller": big[5:5 + n, :d],
         "reversed-rows": big[n - 1::-1, 3:3 + d]}[view]
    assert distances.gram_library(X) is not None  # strided rows take the kernel, no copy
    result = sq_distances(X, chunk=chunk)
    same = sq_distances(np.ascontiguousarray(X), chunk=chunk)
    np.testing.assert_array_equal(result.sq, same.sq)
    check_against_reference(result, X)


def test_column_stride_falls_back_to_numpy():
    X = rows(6, 800, seed=9)[:, ::2]
    assert distances.gram_library(X) is None
    check_against_reference(sq_distances(X, chunk=64), X)
