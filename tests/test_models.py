"""Models: explicit gradients against finite differences (float64), stability, shapes, learning."""
import numpy as np
import pytest

from krum_mpi import models
from krum_mpi.backend import gpu_unavailable_reason
from krum_mpi.errors import ConfigError

CASES = [
    ({"name": "logistic"}, 2),
    ({"name": "softmax"}, 2),
    ({"name": "softmax"}, 5),
    ({"name": "mlp", "hidden": []}, 3),
    ({"name": "mlp", "hidden": [6]}, 4),
    ({"name": "mlp", "hidden": [5, 7]}, 2),
    ({"name": "mlp", "hidden": [4, 3, 5]}, 3),
]


def _numerical_grad(model, theta, X, y, eps=1e-6):
    grad = np.empty_like(theta)
    for i in range(len(theta)):
        t = theta.copy()
        t[i] += eps
        up = model.loss_and_grad(t, X, y)[0]
        t[i] -= 2 * eps
        down = model.loss_and_grad(t, X, y)[0]
        grad[i] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("cfg,n_classes", CASES, ids=lambda c: str(c))
def test_gradient_matches_finite_differences_in_float64(cfg, n_classes):
    rng = np.random.default_rng(1)
    model = models.make(cfg, 6, n_classes)
    # random parameters (not the zero init of linear models) so every ReLU pattern and class is exercised
    theta = model.init(rng).astype(np.float64) + 0.5 * rng.standard_normal(model.n_params)
    X = rng.standard_normal((11, 6))
    y = rng.integers(0, n_classes, 11)
    loss, grad = model.loss_and_grad(theta, X, y)
    assert grad.dtype == np.float64 and grad.shape == (model.n_params,)
    num = _numerical_grad(model, theta, X, y)
    assert np.abs(grad - num).max() <= 1e-6 * max(1.0, np.abs(num).max())


@pytest.mark.parametrize("cfg,n_classes", CASES, ids=lambda c: str(c))
def test_float32_gradient_is_close_to_float64(cfg, n_classes):
    rng = np.random.default_rng(2)
    model = models.make(cfg, 6, n_classes)
    theta = (model.init(rng) + 0.3 * rng.standard_normal(model.n_params)).astype(np.float32)
    X = rng.standard_normal((9, 6)).astype(np.float32)
    y = rng.integers(0, n_classes, 9)
    l32, g32 = model.loss_and_grad(theta, X, y)
    l64, g64 = model.loss_and_grad(theta.astype(np.float64), X.astype(np.float64), y)
    assert g32.dtype == np.float32
    assert abs(l32 - l64) < 1e-5 * max(1, abs(l64))
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5)


def test_loss_values_by_hand():
    model = models.make({"name": "softmax"}, 2, 3)
    theta = np.zeros(model.n_params)
    X = np.ones((4, 2))
    loss, _ = model.loss_and_grad(theta, X, np.array([0, 1, 2, 0]))
    assert loss == pytest.approx(np.log(3))
    logistic = models.make({"name": "logistic"}, 1, 2)
    theta = np.array([2.0, 0.5])          # z = 2x + 0.5
    loss, grad = logistic.loss_and_grad(theta, np.array([[1.0]]), np.array([0]))
    assert loss == pytest.approx(np.log1p(np.exp(2.5)))
    sig = 1 / (1 + np.exp(-2.5))
    np.testing.assert_allclose(grad, [sig, sig])


def test_huge_logits_give_finite_exact_loss():
    model = models.make({"name": "softmax"}, 1, 2)
    # logits (1e4 x, 0): label 1 costs 1e4 per sample; a naive exp would overflow
    theta = np.array([1e4, 0.0, 0.0, 0.0], dtype=np.float32)
    loss, grad = model.loss_and_grad(theta, np.ones((2, 1), np.float32), np.array([1, 1]))
    assert loss == pytest.approx(1e4) and np.isfinite(grad).all()
    logistic = models.make({"name": "logistic"}, 1, 2)
    theta = np.array([-1e4, 0.0], dtype=np.float32)
    loss, grad = logistic.loss_and_grad(theta, np.ones((1, 1), np.float32), np.array([1]))
    assert loss == pytest.approx(1e4) and np.isfinite(grad).all()
    assert grad[0] == pytest.approx(-1.0)


def test_parameter_counts_and_layout():
    paper = models.make({"name": "mlp", "hidden": [20, 20]}, 57, 2)
    assert paper.layer_sizes == [57, 20, 20, 2] and paper.n_params == 57 * 20 + 20 + 20 * 20 + 20 + 20 * 2 + 2
    big = models.make({"name": "mlp", "hidden": [4096, 4096]}, 784, 10)
    assert big.n_params == 20_037_642   # the 784-4096-4096-10 (about 2 x 10^7)
    assert models.make({"name": "logistic"}, 57, 2).n_params == 58
    theta = np.arange(paper.n_params, dtype=np.float32)
    (W1, b1), _, (W3, b3) = paper.unflatten(theta)
    assert W1.shape == (57, 20) and W1[0, 1] == 1 and b1[0] == 57 * 20
    assert b3[-1] == paper.n_params - 1


def test_init_is_seeded_float32_and_he_scaled():
    model = models.make({"name": "mlp", "hidden": [500]}, 400, 10)
    a = model.init(np.random.default_rng(3))
    b = model.init(np.random.default_rng(3))
    assert a.dtype == np.float32 and a.shape == (model.n_params,)
    np.testing.assert_array_equal(a, b)
    (W1, b1), (W2, _) = model.unflatten(a)
    assert W1.std() == pytest.approx(np.sqrt(2 / 400), rel=0.05) and not b1.any()
    assert W2.std() == pytest.approx(np.sqrt(1 / 500), rel=0.05)
    assert not models.make({"name": "softmax"}, 4, 3).init(np.random.default_rng(0)).any()


def test_predict_and_accuracy():
    logistic = models.make({"name": "logistic"}, 1, 2)
    theta = np.array([1.0, 0.0], dtype=np.float32)
    X = np.array([[-2.0], [3.0], [0.5]], dtype=np.float32)
    assert logistic.predict(theta, X).tolist() == [0, 1, 1]
    assert logistic.accuracy(theta, X, np.array([0, 1, 0])) == pytest.approx(2 / 3)
    soft = models.make({"name": "softmax"}, 2, 3)
    theta = np.zeros(soft.n_params, dtype=np.float32)
    (W, _), = soft.unflatten(theta)
    W[0, 2] = 1.0
    X = np.array([[1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    assert soft.predict(theta, X).tolist() == [2, 0]
    # chunked accuracy equals whole-set accuracy
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((100, 2)).astype(np.float32), rng.integers(0, 3, 100)
    assert soft.accuracy(theta, X, y, chunk=7) == soft.accuracy(theta, X, y)


def test_bad_model_configs_raise_config_error():
    with pytest.raises(ConfigError, match="binary"):
        models.make({"name": "logistic"}, 5, 3)
    with pytest.raises(ConfigError, match="unknown model.name"):
        models.make({"name": "resnet"}, 5, 3)
    with pytest.raises(ConfigError, match="hidden"):
        models.make({"name": "mlp", "hidden": [0]}, 5, 3)


def test_sgd_learns_a_teacher():
    from krum_mpi.data import open_dataset

    ds = open_dataset({"name": "synthetic", "n_train": 5000, "n_features": 10, "n_classes": 3}, seed=0)
    model = models.make({"name": "softmax"}, ds.n_features, ds.n_classes)
    theta = model.init(np.random.default_rng(0))
    shard = ds.shard(0, 1)
    for step in range(300):
        theta -= 0.5 * model.loss_and_grad(theta, *shard.batch(step, 32))[1]
    assert model.accuracy(theta, *ds.test_set()) > 0.9


def test_paper_mlp_learns_spambase(spambase_file):
    from krum_mpi.data import open_dataset

    ds = open_dataset({"name": "spambase", "path": str(spambase_file)}, seed=0)
    model = models.make({"name": "mlp", "hidden": [20, 20]}, ds.n_features, ds.n_classes)
    theta = model.init(np.random.default_rng(0))
    shards = [ds.shard(w, 20) for w in range(20)]
    for step in range(300):
        grads = [model.loss_and_grad(theta, *s.batch(step, 3))[1] for s in shards]
        theta -= 0.05 * np.mean(grads, axis=0)
    assert model.accuracy(theta, *ds.test_set()) > 0.88


def test_cupy_path_matches_numpy():
    reason = gpu_unavailable_reason()
    if reason:
        pytest.skip(reason)
    import cupy

    model = models.make({"name": "mlp", "hidden": [8, 8]}, 5, 3)
    rng = np.random.default_rng(0)
    theta = model.init(rng)
    X, y = rng.standard_normal((7, 5)).astype(np.float32), rng.integers(0, 3, 7)
    loss, grad = model.loss_and_grad(theta, X, y)
    loss_gpu, grad_gpu = model.loss_and_grad(cupy.asarray(theta), cupy.asarray(X), cupy.asarray(y))
    assert isinstance(grad_gpu, cupy.ndarray)
    assert loss_gpu == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(grad_gpu), grad, rtol=1e-4, atol=1e-6)
    assert model.accuracy(cupy.asarray(theta), X, y) == model.accuracy(theta, X, y)
