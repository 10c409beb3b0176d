"""The distance kernel against the pair-by-pair float64 reference: precision under a large
common mean, the error estimate, the float64 fallback, non-finite rows, memory."""
import tracemalloc

import numpy as np
import pytest

from krum_mpi.aggregators import distances
from krum_mpi.aggregators.distances import sq_distances
from test_aggregators_reference import ref_distance_matrix

pytestmark = pytest.mark.usefixtures("kernels")  # every test on the compiled and the NumPy kernels


def common_mean_rows(n, d, mean, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (mean + rng.standard_normal((n, d))).astype(dtype)


def relative_errors(result, X):
    ref = ref_distance_matrix(X)
    off = ~np.eye(len(X), dtype=bool)
    return np.abs(result.sq - ref)[off] / ref[off], ref


@pytest.mark.parametrize("mean", [0.0, 1e4, 1e6])
@pytest.mark.parametrize("chunk", [1, 100, 4096])
def test_matches_reference_under_a_common_mean(mean, chunk):
    X = common_mean_rows(12, 3000, mean, seed=int(mean) % 7 + chunk)
    result = sq_distances(X, chunk=chunk)
    rel, ref = relative_errors(result, X)
    assert rel.max() < 1e-5
    # the error estimate bounds the actual error
    assert (np.abs(result.sq - ref) <= result.err + 1e-300).all()
    assert result.sq.dtype == np.float64 and result.finite.all()


def test_plain_float32_gram_cancels_where_the_kernel_does_not():
    # why the kernel centres its chunks: the textbook float32 formula is off by orders of magnitude
    X = common_mean_rows(10, 20000, 1e3, seed=1)
    ref = ref_distance_matrix(X)
    gram = X @ X.T
    norms = np.diag(gram).astype(np.float64)
    plain = norms[:, None] + norms[None, :] - 2.0 * gram
    off = ~np.eye(10, dtype=bool)
    assert (np.abs(plain - ref)[off] / ref[off]).max() > 1e-2
    rel, _ = relative_errors(sq_distances(X), X)
    assert rel.max() < 1e-5


def test_result_is_a_distance_matrix():
    X = common_mean_rows(9, 1000, 5.0, seed=2)
    D = sq_distances(X, chunk=64).sq
    assert np.array_equal(D, D.T) and (np.diag(D) == 0).all() and (D >= 0).all()
    X[4] = X[2]  # an exact duplicate is at distance (about) 0, never negative
    result = sq_distances(X, chunk=64)
    assert 0.0 <= result.sq[2, 4] <= result.err[2, 4]


def test_float64_input_is_computed_in_float64():
    X = common_mean_rows(8, 2000, 1e6, seed=3, dtype=np.float64)
    rel, _ = relative_errors(sq_distances(X, chunk=128), X)
    assert rel.max() < 1e-9


def test_poor_reference_is_replaced():
    # row 0 looks central on the first chunk (where every row agrees) and is far away elsewhere:
    # float32 products around it would lose everything; a second pass around a central row of the
    # first result restores a tight bound (and the bound always holds)
    n, d, chunk = 9, 4096, 256
    X = common_mean_rows(n, d, 0.0, seed=4)
    X[:, :chunk] = 0.0
    X[0, chunk:] += 1e4
    result = sq_distances(X, chunk=chunk)
    rel, ref = relative_errors(result, X)
    assert rel.max() < 1e-5
    assert (np.abs(result.sq - ref) <= result.err).all()
    assert distances.median_relative_bound(result) < distances.POOR


@pytest.mark.parametrize("where", ["first-chunk", "later-chunk", "whole-row", "reference-row"])
def test_nonfinite_rows_are_infinitely_far(where):
    n, d, chunk = 9, 1000, 128
    X = common_mean_rows(n, d, 3.0, seed=5)
    bad = {"first-chunk": [2], "later-chunk": [5, 7], "whole-row": [1], "reference-row": []}[where]
    if where == "first-chunk":
        X[2, 3] = np.nan
    elif where == "later-chunk":
        X[5, 700] = np.inf
        X[7, 999] = -np.inf
    elif where == "whole-row":
        X[1] = np.nan
    else:
        # the most central row of the first chunk turns NaN later: the reference itself goes bad
        ref_row = distances.central_row(sq_distances(X[:, :chunk]).sq, np.ones(n, bool))
        X[ref_row, 500] = np.nan
        bad = [ref_row]
    result = sq_distances(X, chunk=chunk)
    expected = np.ones(n, bool)
    expected[bad] = False
    assert result.finite.tolist() == expected.tolist()
    ref = ref_distance_matrix(X)
    assert np.array_equal(np.isinf(result.sq), np.isinf(ref))
    good = np.isfinite(ref) & ~np.eye(n, dtype=bool)
    assert (np.abs(result.sq[good] - ref[good]) / ref[good]).max() < 1e-5


def test_huge_finite_rows_are_not_taken_for_nonfinite():
    X = common_mean_rows(7, 600, 0.0, seed=6)
    X[3, 300] = 1e30  # finite, but its square overflows float32
    result = sq_distances(X, chunk=128)
    assert result.finite.all()
    ref = ref_distance_matrix(X)
    np.testing.assert_allclose(result.sq, ref, rtol=1e-6)


def test_chunk_size_does_not_change_the_result():
    X = common_mean_rows(11, 5000, 1e3, seed=7)
    results = [sq_distances(X, chunk=c).sq for c in (1, 33, 512, 5000, 10**6)]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=1e-5)


def test_no_copy_of_the_input(monkeypatch):
    monkeypatch.setattr(distances, "CPU_CHUNK_BYTES", 1 << 18)  # 4096 columns at n = 16
    n, d = 16, 1_000_000
    X = common_mean_rows(n, d, 1.0, seed=8)
    sq_distances(X)  # warm up
    tracemalloc.start()
    sq_distances(X)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    chunk = distances.default_chunk(np, n)
    threads = 4  # at most: one float32 buffer per thread, plus the float64 first chunk
    assert peak < n * chunk * (4 * threads + 8 + 8) + 1_000_000
    assert peak < 0.1 * X.nbytes
