"""Every rule's CuPy path against its NumPy path (same code, other namespace). Skips without a GPU."""
import numpy as np
import pytest

import krum_mpi.aggregators as agg


def cupy_or_skip():
    cupy = pytest.importorskip("cupy", reason="CuPy not installed: the GPU tests need CuPy and a CUDA device")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("CuPy found no CUDA device: the GPU tests need one")
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        pytest.skip(f"CuPy cannot reach a CUDA device ({exc}): the GPU tests need one")
    return cupy


pytestmark = pytest.mark.gpu

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
def test_cupy_matches_numpy(name, n, f, nonfinite):
    cupy = cupy_or_skip()
    X = inputs(n, f, seed=n)
    if nonfinite and name != "average":
        X[1, 7] = np.nan
        X[2, 9] = np.inf
        f = max(f, 2)
    options = {"clip_norm": 1e5} if name.startswith("clipping") else {}
    on_cpu = agg.make(name, n, f, **options)(X)
    on_gpu = agg.make(name, n, f, **options)(cupy.asarray(X))
    assert isinstance(on_gpu.vector, cupy.ndarray) and on_gpu.vector.dtype == X.dtype
    if on_cpu.selected is not None:
        assert on_gpu.selected.tolist() == on_cpu.selected.tolist()
    np.testing.assert_allclose(cupy.asnumpy(on_gpu.vector), on_cpu.vector, rtol=0,
                               atol=32 * np.finfo(np.float32).eps * float(np.abs(X[np.isfinite(X)]).max()))
