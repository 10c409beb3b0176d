"""PyTorch workers in one process: zoo gradients against autograd references and finite differences,
the NumPy MLP against the same MLP in torch, bring-your-own factories, determinism by (seed, worker, step)."""
import numpy as np
import pytest

from conftest import REPO

torch = pytest.importorskip("torch", reason="PyTorch not installed: pip install 'krum-mpi[torch]'")

from krum_mpi import models                          # noqa: E402
from krum_mpi.errors import ConfigError              # noqa: E402
from krum_mpi.torch_models import flat as flat_mod   # noqa: E402

USER_MODEL = str(REPO / "tests" / "torch_user_model.py")
SMALL_TRANSFORMER = {"d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64}
# name -> (model config, n_features, n_classes); the transformer's n_features is its context
ZOO = {
    "mnist-cnn": ({"name": "mnist-cnn"}, 784, 10),
    "lenet5": ({"name": "lenet5"}, 784, 10),
    "resnet20": ({"name": "resnet20", "augment": "none"}, 3072, 10),
    "char-transformer": ({"name": "char-transformer", "kwargs": SMALL_TRANSFORMER}, 16, 30),
}
PARAMS = {"mnist-cnn": 431_080, "lenet5": 61_706, "resnet20": 269_722}


def _batch(name, n_features, n_classes, b=6, seed=1):
    rng = np.random.default_rng(seed)
    if name == "char-transformer":
        return rng.integers(0, n_classes, (b, n_features)).astype(np.float32), rng.integers(0, n_classes, b)
    return rng.standard_normal((b, n_features)).astype(np.float32), rng.integers(0, n_classes, b)


def _reference_gradient(model, theta, X, y):
    """Plain PyTorch: a fresh module holding theta, loss.backward(), the .grad fields concatenated."""
    module = model.build().to(torch.float64 if theta.dtype == np.float64 else torch.float32)
    flat_mod._drop_running_stats(module)
    torch.nn.utils.vector_to_parameters(torch.from_numpy(theta.copy()), module.parameters())
    if model.kind == "sequence":
        tokens = torch.from_numpy(X).long()
        logits = module(tokens)
        targets = torch.cat([tokens[:, 1:], torch.from_numpy(y)[:, None]], 1)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    else:
        dtype = next(module.parameters()).dtype
        inputs = torch.from_numpy(X).reshape(len(X), *model.input_shape).to(dtype)
        loss = torch.nn.functional.cross_entropy(module(inputs), torch.from_numpy(y))
    loss.backward()
    return float(loss.detach()), torch.cat([p.grad.reshape(-1) for p in module.parameters()]).numpy()


@pytest.mark.parametrize("name", ZOO)
def test_zoo_gradient_equals_the_autograd_reference(name):
    cfg, p, C = ZOO[name]
    model = models.make(cfg, p, C)
    theta = model.init(np.random.default_rng(0))
    X, y = _batch(name, p, C)
    row = np.full(model.n_params, np.nan, dtype=np.float32)       # NaN: every entry must be written
    loss = model.gradient_into(theta, X, y, row, seed=3, worker=1, step=5)
    ref_loss, ref = _reference_gradient(model, theta, X, y)
    assert np.isfinite(row).all() and np.abs(row).max() > 0
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    np.testing.assert_allclose(row, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())
    if name in PARAMS:
        assert model.n_params == PARAMS[name]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_gradient_matches_finite_differences_in_float64(name):
    """Directional derivatives (central differences, float64) along random directions."""
    cfg, p, C = ZOO[name]
    model = models.make(cfg, p, C)
    theta = model.init(np.random.default_rng(0)).astype(np.float64)
    X, y = _batch(name, p, C, b=4)
    grad = np.empty_like(theta)
    model.gradient_into(theta, X, y, grad)
    rng = np.random.default_rng(7)
    eps = 1e-6
    for _ in range(3):
        v = rng.standard_normal(theta.size)
        v /= np.linalg.norm(v)
        scratch = np.empty_like(theta)
        up = model.gradient_into(theta + eps * v, X, y, scratch)
        down = model.gradient_into(theta - eps * v, X, y, scratch)
        fd = (up - down) / (2 * eps)
        assert fd == pytest.approx(grad @ v, rel=1e-4, abs=1e-7)


def test_numpy_mlp_and_torch_mlp_give_the_same_gradient():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((32, 57)).astype(np.float32), rng.integers(0, 2, 32)
    numpy_model = models.make({"name": "mlp", "hidden": [20, 20]}, 57, 2)
    theta = numpy_model.init(np.random.default_rng(1))
    torch_model = models.make({"name": "torch", "factory": f"{USER_MODEL}:mlp", "kwargs": {"hidden": [20, 20]}},
                              57, 2)
    assert torch_model.n_params == numpy_model.n_params
    # the same parameters in torch's layout: per layer W (out x in) = the NumPy W (in x out) transposed
    theta_t = np.concatenate([part for W, b in numpy_model.unflatten(theta) for part in (W.T.ravel(), b)])
    g_np = np.empty_like(theta)
    g_t = np.empty_like(theta_t)
    loss_np = numpy_model.gradient_into(theta, X, y, g_np)
    loss_t = torch_model.gradient_into(theta_t, X, y, g_t)
    g_np_in_torch_layout = np.concatenate(
        [part for W, b in numpy_model.unflatten(g_np) for part in (W.T.ravel(), b)])
    assert loss_t == pytest.approx(loss_np, rel=1e-6)
    scale = np.abs(g_np).max()
    np.testing.assert_allclose(g_t, g_np_in_torch_layout, rtol=0, atol=5e-6 * scale)
    acc_np = numpy_model.accuracy(theta, X, y)
    assert torch_model.accuracy(theta_t, X, y) == acc_np


def test_gradient_is_a_function_of_seed_worker_and_step():
    model = models.make({"name": "torch", "factory": f"{USER_MODEL}:with_dropout"}, 20, 3)
    theta = model.init(np.random.default_rng(0))
    X, y = _batch("x", 20, 3, b=16)

    def grad(seed, worker, step):
        out = np.empty(model.n_params, np.float32)
        model.gradient_into(theta, X, y, out, seed=seed, worker=worker, step=step)
        return out

    a = grad(0, 1, 2)
    assert a.tobytes() == grad(0, 1, 2).tobytes()
    for other in ((1, 1, 2), (0, 2, 2), (0, 1, 3)):          # dropout masks differ
        assert a.tobytes() != grad(*other).tobytes()


def test_resnet_augmentation_is_seeded_and_changes_the_batch():
    model = models.make({"name": "resnet20", "kwargs": {"width": 4}}, 3072, 10)
    assert model.augment == "crop-flip"
    theta = model.init(np.random.default_rng(0))
    X, y = _batch("resnet20", 3072, 10, b=4)
    rows = np.empty((3, model.n_params), np.float32)
    for i, step in enumerate((0, 0, 1)):
        model.gradient_into(theta, X, y, rows[i], seed=0, worker=0, step=step)
    assert rows[0].tobytes() == rows[1].tobytes() and rows[0].tobytes() != rows[2].tobytes()


def test_init_is_seeded():
    model = models.make({"name": "lenet5"}, 784, 10)
    a, b = model.init(np.random.default_rng(5)), model.init(np.random.default_rng(5))
    assert a.dtype == np.float32 and a.shape == (model.n_params,) and a.tobytes() == b.tobytes()
    assert a.tobytes() != model.init(np.random.default_rng(6)).tobytes()


@pytest.mark.parametrize("factory, message", [
    ("no_colon", "must be 'package.module:function'"),
    ("no_such_package_xyz.models:build", "importing no_such_package_xyz.models failed (ModuleNotFoundError"),
    ("tests/does_not_exist.py:build", "not found"),
    (f"{USER_MODEL}:missing", "has no function 'missing'"),
    (f"{USER_MODEL}:broken", "building the model failed (RuntimeError: this factory always fails)"),
    (f"{USER_MODEL}:not_a_module", "returned Tensor, not a torch.nn.Module"),
])
def test_factory_errors_are_one_clear_line(factory, message):
    with pytest.raises(ConfigError) as err:
        models.make({"name": "torch", "factory": factory}, 20, 3)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_image_model_on_rows_without_an_image_shape_fails_clearly():
    with pytest.raises(ConfigError, match="needs image data"):
        models.make({"name": "mnist-cnn"}, 57, 2)


def test_unknown_kwargs_fail_clearly():
    with pytest.raises(ConfigError, match="check model.kwargs"):
        models.make({"name": "mnist-cnn", "kwargs": {"no_such_option": 1}}, 784, 10)


def test_batchnorm_keeps_no_running_statistics():
    """State outside theta would break resume: the zoo's BatchNorm normalises with batch statistics."""
    model = models.make({"name": "resnet20", "kwargs": {"width": 4}}, 3072, 10)
    assert all(not m.track_running_stats for m in model.module.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    assert list(model.module.buffers()) == []


def test_parameters_are_views_of_theta_and_the_gradient_lands_in_the_row():
    """0 copies of theta in: every bound parameter aliases theta's memory; the row is written in place."""
    model = models.make({"name": "lenet5"}, 784, 10)
    theta = model.init(np.random.default_rng(0))
    flat = torch.from_numpy(theta)
    views = model._views(flat)
    lo, hi = theta.ctypes.data, theta.ctypes.data + theta.nbytes
    assert all(lo <= v.data_ptr() < hi for v in views.values())
    X, y = _batch("lenet5", 784, 10)
    rows = np.zeros((3, model.n_params), np.float32)
    model.gradient_into(theta, X, y, rows[1])
    assert not rows[0].any() and not rows[2].any() and rows[1].any()


def test_gpu_worker_gradient_equals_the_cpu_gradient():
    """workers.device = gpu: theta and the batch as CuPy arrays, handed to torch by DLPack."""
    from krum_mpi.backend import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is None and not torch.cuda.is_available():
        reason = "this torch build has no CUDA"
    if reason:
        pytest.skip(f"GPU workers need CuPy, CUDA and a CUDA build of torch: {reason}")
    import cupy

    model = models.make({"name": "mnist-cnn"}, 784, 10)
    theta = model.init(np.random.default_rng(0))
    X, y = _batch("mnist-cnn", 784, 10)
    cpu, gpu_to_host = np.empty(model.n_params, np.float32), np.empty(model.n_params, np.float32)
    loss_cpu = model.gradient_into(theta, X, y, cpu)
    loss_gpu = model.gradient_into(cupy.asarray(theta), cupy.asarray(X), cupy.asarray(y), gpu_to_host)
    device_row = cupy.empty(model.n_params, cupy.float32)
    model.gradient_into(cupy.asarray(theta), cupy.asarray(X), cupy.asarray(y), device_row)
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-4)
    np.testing.assert_allclose(gpu_to_host, cpu, rtol=1e-3, atol=1e-5 * np.abs(cpu).max())
    np.testing.assert_array_equal(cupy.asnumpy(device_row), gpu_to_host)



def test_unused_parameters_get_a_zero_gradient():
    model = models.make({"name": "torch", "factory": f"{USER_MODEL}:with_unused_parameters"}, 6, 3)
    theta = model.init(np.random.default_rng(0))
    row = np.full(model.n_params, np.nan, np.float32)
    model.gradient_into(theta, *_batch("x", 6, 3), row)
    assert np.isfinite(row).all() and not row[-20:].any() and row[:21].any()
