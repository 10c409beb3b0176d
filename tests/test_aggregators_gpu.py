"""Every rule's CuPy path against the direct float64 reference (tests/test_aggregators_reference.py),
as the NumPy path is tested in test_aggregators.py. Skips without a GPU."""
import numpy as np
import pytest

import krum_mpi.aggregators as agg
from krum_mpi.backend import gpu_unavailable_reason, to_host
from test_aggregators_reference import (
    ref_bulyan, ref_centered_clipping, ref_clip_rows, ref_geometric_median, ref_krum, ref_mda, ref_meamed,
    ref_median, ref_multi_krum, ref_nnm, ref_trimmed_mean,
)

pytestmark = pytest.mark.gpu


def cupy_or_skip():
    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"{reason}: the GPU tests need CuPy and a CUDA device")
    import cupy

    return cupy


def bucket_means(X, options):
    """Step 0 of bucketing: the seeded shuffle cut into buckets, each bucket's float64 mean."""
    n, size = X.shape[0], options["bucket_size"]
    order = np.random.default_rng([options["seed"], 0]).permutation(n)
    return np.array([X[np.sort(order[k:k + size])].astype(np.float64).mean(axis=0) for k in range(0, n, size)])


def mean_of_rows(X):
    """The float64 mean; NaN wherever a row holds NaN or Inf (the weighted sums' documented rule)."""
    mean = np.asarray(X, dtype=np.float64).mean(axis=0)
    return np.where(np.isfinite(mean), mean, np.nan)


# rule -> reference(X, f, options) -> (float64 vector, selected rows or None)
REFERENCES = {
    "average": lambda X, f, o: (mean_of_rows(X), None),
    "krum": lambda X, f, o: ref_krum(X, f),
    "multi-krum": lambda X, f, o: ref_multi_krum(X, f),
    "median": lambda X, f, o: (ref_median(X, f), None),
    "trimmed-mean": lambda X, f, o: (ref_trimmed_mean(X, f), None),
    "meamed": lambda X, f, o: (ref_meamed(X, f), None),
    "geometric-median": lambda X, f, o: (ref_geometric_median(X, f), None),
    "bulyan": lambda X, f, o: ref_bulyan(X, f),
    "centered-clipping": lambda X, f, o: (ref_centered_clipping(X, f), None),
    "mda": lambda X, f, o: ref_mda(X, f),
    "nnm+krum": lambda X, f, o: (ref_krum(ref_nnm(X, f), f)[0], None),
    "bucketing+median": lambda X, f, o: (ref_median(bucket_means(X, o), f), None),
    "clipping+average": lambda X, f, o: (mean_of_rows(ref_clip_rows(X, o["clip_norm"])), None),
}
CASES = [("average", 9, 2), ("krum", 11, 3), ("multi-krum", 11, 3), ("median", 10, 3), ("trimmed-mean", 10, 3),
         ("meamed", 10, 3), ("geometric-median", 9, 2), ("bulyan", 11, 2), ("centered-clipping", 9, 2),
         ("mda", 9, 2), ("nnm+krum", 11, 3), ("bucketing+median", 12, 1), ("clipping+average", 9, 2)]


def inputs(n, f, seed=0):
    rng = np.random.default_rng(seed)
    X = 1e4 + rng.standard_normal((n, 3000))
    X[:f] += 10 * rng.standard_normal((f, 3000))
    return X.astype(np.float32)


@pytest.mark.parametrize("name,n,f", CASES)
@pytest.mark.parametrize("nonfinite", [False, True])
def test_cupy_matches_the_float64_reference(name, n, f, nonfinite):
    cupy = cupy_or_skip()
    X = inputs(n, f, seed=n)
    if nonfinite and name != "average":
        X[1, 7] = np.nan
        X[2, 9] = np.inf
        f = max(f, 2)
    options = {"clip_norm": 1e5} if name.startswith("clipping") else {}
    rule = agg.make(name, n, f, **options)
    vector, selected = REFERENCES[name](X, f, rule.options)
    on_gpu = rule(cupy.asarray(X))
    assert isinstance(on_gpu.vector, cupy.ndarray) and on_gpu.vector.dtype == X.dtype
    if selected is not None:
        assert on_gpu.selected.tolist() == list(selected)
    scale = float(np.abs(X[np.isfinite(X)]).max())
    np.testing.assert_allclose(to_host(on_gpu.vector).astype(np.float64), vector, rtol=0,
                               atol=32 * np.finfo(np.float32).eps * scale)
