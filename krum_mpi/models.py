"""Models with explicit gradients on one flat parameter vector, and the worker-side model interface.

The interface every model implements (these NumPy models and the PyTorch ones of
``krum_mpi.torch_models``), all the training loop ever calls::

    model = make(cfg.model, n_features, n_classes, input_shape)
    model.n_params                                 # d
    theta = model.init(rng)                        # float32 NumPy (d,), from a seeded Generator
    model.set_threads(k)                           # this rank's share of the cores (k >= 1)
    loss = model.gradient_into(theta, X, y, out, seed=s, worker=w, step=t)
                                                   # minibatch loss; its gradient written into out,
                                                   # a float32 (d,) row of the send buffer
    model.accuracy(theta, X_test, y_test)          # fraction correct

``gradient_into`` is a pure function of (theta, X, y, seed, worker, step): anything random inside a
model (dropout, augmentation) draws from a stream seeded by (seed, worker, step).

The NumPy models below (the zero-dependency default: nothing here imports torch) also keep
``loss, grad = model.loss_and_grad(theta, X, y)``, which returns the gradient as a new array in
theta's namespace and dtype (float64 for the gradient checks).

Every model is a stack of dense layers z_l = a_{l-1} W_l + b_l with ReLU between them:
- ``logistic``: one layer p -> 1, sigmoid cross-entropy (binary; needs n_classes = 2);
- ``softmax``: one layer p -> C, softmax cross-entropy;
- ``mlp``: p -> hidden[0] -> ... -> hidden[-1] -> C, ReLU, softmax cross-entropy
  (the Krum paper's spambase model is 57-20-20-2).
The flat vector holds, layer by layer, W_l (fan_in x fan_out, row-major) then b_l. The loss is the
mean over the batch. One code path for NumPy and CuPy: the namespace and the dtype are taken from
theta (float32 in training, float64 for the gradient checks). Log-sum-exp subtracts the row maximum,
so logits of any size neither overflow nor lose the loss to cancellation.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import array_namespace, to_host
from .errors import ConfigError


class Model:
    def __init__(self, name: str, layer_sizes: list[int], binary: bool):
        self.name = name
        self.layer_sizes = list(layer_sizes)
        self.binary = binary   # one sigmoid output instead of C softmax outputs
        self.n_classes = 2 if binary else layer_sizes[-1]
        self.shapes = list(zip(layer_sizes[:-1], layer_sizes[1:]))
        self.n_params = sum(i * o + o for i, o in self.shapes)

    def __repr__(self):
        return f"Model({self.name}: {'-'.join(map(str, self.layer_sizes))}, {self.n_params} parameters)"

    # -- parameters --------------------------------------------------------------------------
    def unflatten(self, flat):
        """Views (W_l, b_l) into a flat vector (writes into them write into the vector)."""
        layers, at = [], 0
        for i, o in self.shapes:
            W = flat[at:at + i * o].reshape(i, o)
            at += i * o
            layers.append((W, flat[at:at + o]))
            at += o
        return layers

    def init(self, rng: np.random.Generator) -> np.ndarray:
        """He-normal weights before a ReLU (std sqrt(2 / fan_in)), 1/sqrt(fan_in) on the output layer,
        zero biases; a linear model (one layer) starts at zero. float32 NumPy (d,)."""
        theta = np.zeros(self.n_params, dtype=np.float32)
        if len(self.shapes) == 1:
            return theta
        for l, (W, _) in enumerate(self.unflatten(theta)):
            fan_in = W.shape[0]
            gain = 1.0 if l == len(self.shapes) - 1 else 2.0
            W[...] = rng.standard_normal(W.shape) * math.sqrt(gain / fan_in)
        return theta

    # -- forward and backward ----------------------------------------------------------------
    def _forward(self, layers, X, xp):
        """Pre-activations of every layer (the ReLU of layer l is recomputed from them)."""
        a, zs = X, []
        for l, (W, b) in enumerate(layers):
            z = a @ W
            z += b
            zs.append(z)
            a = xp.maximum(z, 0) if l < len(layers) - 1 else z
        return zs

    def _prepare(self, theta, X):
        xp = array_namespace(theta)
        X = xp.asarray(X, dtype=theta.dtype)
        return xp, X

    def set_threads(self, threads: int) -> None:
        """NumPy models compute with BLAS, whose threads the training loop limits per rank."""

    def gradient_into(self, theta, X, y, out, *, seed: int = 0, worker: int = 0, step: int = 0) -> float:
        """The interface's gradient: written straight into ``out`` (each layer's matmul writes its
        block of the row); nothing random, so seed, worker and step are not used."""
        if array_namespace(out) is not array_namespace(theta):   # GPU worker, host send buffer
            loss, grad = self.loss_and_grad(theta, X, y)
            out[...] = to_host(grad)
            return loss
        loss, _ = self.loss_and_grad(theta, X, y, out=out)
        return loss

    def loss_and_grad(self, theta, X, y, out=None):
        """Mean cross-entropy over the batch and its gradient (same namespace and dtype as theta),
        in ``out`` when given (a contiguous (d,) array of theta's dtype), else in a new array."""
        xp, X = self._prepare(theta, X)
        y = xp.asarray(y)
        layers = self.unflatten(theta)
        zs = self._forward(layers, X, xp)
        loss, dz = cross_entropy(zs[-1], y, self.binary, xp)
        grad = xp.empty_like(theta) if out is None else out
        grad_layers = self.unflatten(grad)
        for l in range(len(layers) - 1, -1, -1):
            a_prev = X if l == 0 else xp.maximum(zs[l - 1], 0)
            gW, gb = grad_layers[l]
            xp.matmul(a_prev.T, dz, out=gW)
            gb[...] = dz.sum(axis=0)
            if l > 0:
                dz = (dz @ layers[l][0].T) * (zs[l - 1] > 0)
        return float(loss.astype(xp.float64).mean()), grad

    def logits(self, theta, X):
        xp, X = self._prepare(theta, X)
        return self._forward(self.unflatten(theta), X, xp)[-1]

    def predict(self, theta, X):
        """Predicted labels, int64, in theta's namespace."""
        z = self.logits(theta, X)
        if self.binary:
            return (z[:, 0] > 0).astype("int64")
        return z.argmax(axis=1).astype("int64")

    def accuracy(self, theta, X, y, chunk: int = 8192) -> float:
        """Fraction of correct predictions (in chunks, so a large test set needs little memory)."""
        xp = array_namespace(theta)
        correct = 0
        for a in range(0, len(y), chunk):
            pred = self.predict(theta, X[a:a + chunk])
            correct += int((pred == xp.asarray(y[a:a + chunk])).sum())
        return correct / max(len(y), 1)


def cross_entropy(logits, y, binary: bool, xp, batch: int | None = None):
    """(per-sample loss, gradient of the batch-mean loss with respect to the logits). ``batch``: the
    rows of each batch when ``logits`` holds several batches of that size one after another (each
    gradient the mean over its own batch; every step is row by row); default: one batch."""
    n = logits.shape[0] if batch is None else batch
    if binary:
        z = logits[:, 0]
        yf = y.astype(logits.dtype)
        # softplus(z) - y z, with softplus(z) = max(z, 0) + log1p(exp(-|z|)): no overflow
        loss = xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z))) - yf * z
        return loss, (_sigmoid(z, xp) - yf).reshape(-1, 1) / n
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    log_probs = shifted - lse
    rows = xp.arange(logits.shape[0])
    loss = -log_probs[rows, y]
    dz = xp.exp(log_probs)
    dz[rows, y] -= 1
    dz /= n
    return loss, dz


def _sigmoid(z, xp):
    # 1/(1+exp(-z)) overflows for very negative z; the tanh form never does
    return 0.5 * (1 + xp.tanh(0.5 * z))


NUMPY_MODELS = ("logistic", "softmax", "mlp")
TORCH_MODELS = ("mnist-cnn", "lenet5", "resnet20", "char-transformer", "torch")   # torch_models.NAMES


def make(model_cfg, n_features: int, n_classes: int, input_shape=None) -> Model:
    """The model of a ``model`` config section (the run's inputs.typed.ModelConfig, or a dict of some
    of its keys, the others at their defaults) for data of n_features and n_classes (and, for images,
    input_shape = (channels, height, width)). Only a PyTorch model imports torch."""
    from .inputs import typed

    model_cfg = typed.section("model", model_cfg)
    name = model_cfg.name
    if name not in NUMPY_MODELS and name not in TORCH_MODELS:   # checked before torch is imported
        raise ConfigError(f"unknown model.name {name!r:.60}: use {', '.join(NUMPY_MODELS + TORCH_MODELS)}")
    if name not in NUMPY_MODELS:
        from . import torch_models    # raises ConfigError (one line) when torch is not installed

        return torch_models.make(model_cfg, n_features, n_classes, input_shape)
    if name == "logistic":
        if n_classes != 2:
            raise ConfigError(f"model.name = 'logistic' is binary but the data has {n_classes} classes: "
                              "use model.name = 'softmax' or 'mlp'")
        return Model("logistic", [n_features, 1], binary=True)
    if name == "softmax":
        return Model("softmax", [n_features, n_classes], binary=False)
    if name == "mlp":
        hidden = list(model_cfg.hidden)
        if not all(isinstance(h, int) and h >= 1 for h in hidden):
            raise ConfigError(f"model.hidden = {hidden!r} must be a list of positive integers, e.g. [20, 20]")
        return Model("mlp", [n_features, *hidden, n_classes], binary=False)
    raise ConfigError(f"unknown model.name {name!r}")   # unreachable: torch_models.make checks names
