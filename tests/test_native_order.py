"""The compiled order kernel (krum_mpi/native/order.c: median, trimmed mean, closest-to-median mean)
on every ISA variant, against column-by-column float64 references and against the NumPy path."""
from fractions import Fraction

import numpy as np
import pytest

import krum_mpi.native as native
from krum_mpi.aggregators import coordinatewise as cw
from krum_mpi.aggregators import parallel
from test_aggregators_reference import sorted_column

pytestmark = [
    pytest.mark.skipif(native.library("order") is None,
                       reason="compiled order kernel not built (no C compiler at install time): NumPy path only"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # NaN/inf arithmetic in the NumPy twin
]

D = 37  # not a multiple of any lane width (4, 8, 16): full groups and a remainder


@pytest.fixture(autouse=True)
def threads(monkeypatch):
    monkeypatch.setattr(parallel, "THREADS", 2)
    monkeypatch.setattr(cw, "NATIVE_ALIGN", 16)  # several column ranges even for small d


def kernel(X, mode, param=0, rows=None):
    out = parallel.cpu_budget(cw.native_order)(X, mode, param, rows)  # threads as in the rules
    assert out is not None, "the compiled kernel should take this input"
    assert out.dtype == np.float32
    return out


def numpy_path(X, mode, param=0, rows=None):
    n = X.shape[0] if rows is None else len(rows)
    if mode == cw.ORDER_MEDIAN:
        reduce = cw.middle
    elif mode == cw.ORDER_TRIMMED:
        def reduce(xp, block):
            med = cw.middle(xp, block)
            return med + ((block[:, param:n - param] - med[:, None]) @ np.ones(n - 2 * param, np.float32)) / (n - 2 * param)
    else:
        def reduce(xp, block):
            return cw.closest_to_median_mean(xp, block, param)
    return parallel.cpu_budget(cw.per_sorted_chunk)(X, reduce, rows=rows)


def reference(X, mode, param=0, rows=None):
    """float64, one column at a time, NumPy's order (NaN above +inf)."""
    Y = X if rows is None else X[np.asarray(rows)]
    n, d = Y.shape
    out = []
    for j in range(d):
        col = sorted_column(Y, j)
        med = col[n // 2] if n % 2 else float(np.float32((col[n // 2 - 1] + col[n // 2]) / 2))
        if mode == cw.ORDER_MEDIAN:
            out.append(med)
        elif mode == cw.ORDER_TRIMMED:
            out.append(float(med) + sum(offsets(col[param:n - param], med)) / (n - 2 * param))
        else:
            out.append(ref_closest(col, param))
    return np.asarray(out)


def ref_closest(col, keep):
    """The window rule for one sorted column: which end goes is decided on exact distances to the
    exact median (fractions; a NaN is the farthest, infinities compare as floats), the mean of the
    window as the NumPy path takes it (float32 offsets from the rounded median, summed in float64)."""
    s = [np.float32(v) for v in col]
    n = len(s)
    med = s[n // 2] if n % 2 else np.float32((float(s[n // 2 - 1]) + float(s[n // 2])) / 2)
    start = sum(1 for p in range(n - keep) if exact_low_farther(s, p, keep))
    return float(med) + sum(offsets(s[start:start + keep], med)) / keep


def exact_low_farther(s, p, keep):
    """m - s[p] > s[p + keep] - m for the exact median m of the sorted float32 values s."""
    n = len(s)
    mid, ends = (s[(n - 1) // 2], s[n // 2]), (s[p], s[p + keep])
    if all(np.isfinite(v) for v in mid + ends):
        return sum(Fraction(float(v)) for v in mid) > sum(Fraction(float(v)) for v in ends)
    return float(mid[0]) + float(mid[1]) > float(ends[0]) + float(ends[1])  # NaN: False


def offsets(values, med):
    """The rules' offsets from the median: float32 differences (they overflow to inf for values near
    opposite float32 limits, in the NumPy path too; inf - inf is NaN), then summed in float64."""
    return [float(np.float32(v) - np.float32(med)) for v in values]


def assert_close(got, want, X, rtol=2e-6):
    """Equal NaN pattern, same infinities, finite values within float32 rounding of the column scale."""
    want = np.asarray(want, dtype=np.float64)
    got = got.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])
    scale = np.nanmax(np.where(np.isfinite(X), np.abs(X), 0.0), axis=0).astype(np.float64) + 1e-30
    err = np.abs(got - want)[finite] / scale[finite]
    assert err.max(initial=0.0) <= rtol, f"largest error {err.max():.3g} of the column scale"


def modes(n):
    """(mode, param) for each rule, params at their bounds and in between."""
    out = [(cw.ORDER_MEDIAN, 0)]
    for b in sorted({0, (n - 1) // 2, n // 4, max(0, n // 4 - 1)}):  # n // 4 - 1: the bench's f at n = 64
        out.append((cw.ORDER_TRIMMED, b))
    for keep in sorted({1, n, max(1, n - n // 4), max(1, n // 2), max(1, n - 2)}):
        out.append((cw.ORDER_CLOSEST, keep))
    return out


def messy(n, d=D, seed=0):
    """Ties, duplicates, signed zeros, infinities, NaN of both signs and payloads, huge values."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    X[:, 0] = 1.0  # one column of ties
    X[:, 1] = rng.integers(-2, 3, n)  # heavy duplicates
    X[:, 2] = np.where(rng.random(n) < 0.5, -0.0, 0.0)
    X[:, 3] = np.finfo(np.float32).max * np.where(rng.random(n) < 0.7, 1, -1)  # median of two: no overflow
    X[:, 4] = np.finfo(np.float32).max
    bits = X.view(np.uint32)
    mask = rng.random((n, d)) < 0.06
    bits[mask] = 0xFFC00000  # negative quiet NaN
    mask = rng.random((n, d)) < 0.04
    bits[mask] = 0x7F800001  # positive signalling-payload NaN
    X[rng.random((n, d)) < 0.05] = np.inf
    X[rng.random((n, d)) < 0.05] = -np.inf
    X[rng.random((n, d)) < 0.03] = -0.0
    X[:, 5] = np.nan  # a column of NaN
    return X


def clean(n, d=D, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("n", list(range(1, 71)))
def test_random_columns_against_reference_and_numpy(native_isa, n):
    X = clean(n, seed=n)
    for mode, param in modes(n):
        got = kernel(X, mode, param)
        assert_close(got, reference(X, mode, param), X)
        assert_close(got, numpy_path(X, mode, param), X)
        if mode == cw.ORDER_MEDIAN:  # same float32 arithmetic: bit for bit
            np.testing.assert_array_equal(got, numpy_path(X, mode, param))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 33, 34, 63, 64, 65, 70, 128])
def test_nonfinite_ties_zeros_huge(native_isa, n):
    X = messy(n, seed=100 + n)
    for mode, param in modes(n):
        got = kernel(X, mode, param)
        assert_close(got, reference(X, mode, param), X)
        assert_close(got, numpy_path(X, mode, param), X)


def test_median_of_two_huge_values_does_not_overflow(native_isa):
    big = np.finfo(np.float32).max
    X = np.full((2, 40), big, dtype=np.float32)
    np.testing.assert_array_equal(kernel(X, cw.ORDER_MEDIAN), big)
    X[0] = -big
    np.testing.assert_array_equal(kernel(X, cw.ORDER_MEDIAN), 0.0)


def test_nan_sorts_above_inf(native_isa):
    # column: -inf, NaN (sign bit set), +inf: sorted -inf, +inf, NaN -> median +inf
    X = np.array([[-np.inf] * 20, [np.nan] * 20, [np.inf] * 20], dtype=np.float32)
    X.view(np.uint32)[1] |= 0x80000000
    np.testing.assert_array_equal(kernel(X, cw.ORDER_MEDIAN), np.inf)
    # the rules average offsets from the median: inf + (inf - inf) is NaN, in the NumPy path too
    for mode, param in ((cw.ORDER_TRIMMED, 1), (cw.ORDER_CLOSEST, 2), (cw.ORDER_CLOSEST, 1)):
        np.testing.assert_array_equal(kernel(X, mode, param), numpy_path(X, mode, param))
    X[1] = 5.0  # -inf, 5, +inf: the one closest to 5 is 5 itself
    np.testing.assert_array_equal(kernel(X, cw.ORDER_CLOSEST, 1), 5.0)


@pytest.mark.parametrize("n, theta", [(64, 34), (19, 11), (70, 5), (9, 1)])
def test_row_subset_out_of_order(native_isa, n, theta):
    """Bulyan's selected rows: not sorted, not contiguous."""
    X = messy(n, d=53, seed=n) if n < 70 else clean(n, d=53, seed=n)
    rows = np.random.default_rng(n).permutation(n)[:theta]
    for keep in sorted({1, max(1, theta - 2 * ((theta - 1) // 4)), theta}):
        got = kernel(X, cw.ORDER_CLOSEST, keep, rows)
        assert_close(got, reference(X, cw.ORDER_CLOSEST, keep, rows), X)
        assert_close(got, numpy_path(X, cw.ORDER_CLOSEST, keep, rows), X)
    got = kernel(X, cw.ORDER_MEDIAN, 0, rows)
    np.testing.assert_array_equal(got, numpy_path(X, cw.ORDER_MEDIAN, 0, rows))


def test_row_stride_and_column_offset_views(native_isa):
    base = clean(40, d=300, seed=7)
    for X in (base[::2, 5:250], base[3:30:3, 1:], base[:, 17:18]):
        assert not X.flags.c_contiguous
        for mode, param in modes(X.shape[0]):
            got = kernel(X, mode, param)
            assert_close(got, reference(X, mode, param), X)


def test_remainder_columns_every_width(native_isa):
    for d in range(1, 35):
        X = clean(21, d=d, seed=d)
        got = kernel(X, cw.ORDER_MEDIAN)
        np.testing.assert_array_equal(got, numpy_path(X, cw.ORDER_MEDIAN))
        assert_close(kernel(X, cw.ORDER_CLOSEST, 15), reference(X, cw.ORDER_CLOSEST, 15), X)


def test_fallbacks_take_numpy_path():
    X = clean(10)
    assert cw.native_order(X.astype(np.float64), cw.ORDER_MEDIAN) is None  # float64 stays NumPy
    assert cw.native_order(X[:, ::2], cw.ORDER_MEDIAN) is None  # column stride
    assert cw.native_order(X[::-1], cw.ORDER_MEDIAN) is None  # negative row stride
    assert cw.native_order(clean(129, d=5), cw.ORDER_MEDIAN) is None  # beyond the kernel's rows
    assert cw.native_order(X, cw.ORDER_TRIMMED, 5) is None  # nothing left to average
    assert cw.native_order(X, cw.ORDER_CLOSEST, 0) is None
    assert cw.native_order(X, cw.ORDER_CLOSEST, 3, np.array([0, -1, 2])) is None  # NumPy's index rules


def test_rules_use_the_kernel(monkeypatch):
    """median/trimmed_mean/meamed go through the kernel when it applies (and agree with NumPy)."""
    calls = []
    real = cw.native_order
    monkeypatch.setattr(cw, "native_order", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    X = messy(23, d=101, seed=3)
    rules = [parallel.cpu_budget(rule) for rule in (cw.median, cw.trimmed_mean, cw.meamed)]
    got = [rule(X, 5).vector for rule in rules]
    assert calls == [cw.ORDER_MEDIAN, cw.ORDER_TRIMMED, cw.ORDER_CLOSEST]
    monkeypatch.setattr(native, "ENABLED", False)
    want = [rule(X, 5).vector for rule in rules]
    for g, w in zip(got, want):
        assert_close(g, w, X)
