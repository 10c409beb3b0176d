"""A PyTorch module behind the worker-side model interface of ``krum_mpi.models``.

The module's parameters are never stored in it during training: every call binds views of the flat
parameter vector theta (shared memory, no copy) to the parameter names with
``torch.func.functional_call``. The backward pass returns one gradient tensor per parameter, and a
single ``torch.cat(..., out=row)`` writes them into the worker's row of the send buffer. So per
gradient, between the model and the send buffer: 0 copies of theta in, 1 copy of the d gradient
floats out (the backward kernels allocate their own outputs; autograd cannot be told to write into
a caller's buffer). On a GPU worker with a host send buffer that copy is the device-to-host transfer.

Determinism: ``torch.use_deterministic_algorithms(True)``; the torch generator is seeded from
(seed, worker, step) before every gradient, and augmentation draws from a NumPy stream of the same
triple, so a gradient is a pure function of (theta, batch, seed, worker, step) and reruns and
resumed runs select the same workers. BatchNorm layers keep no running statistics (state outside
theta would break resume and differ between ranks): they normalise with the statistics of the batch
in training and of each evaluation chunk.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .augment import crop_flip

# cuBLAS is deterministic only with a fixed workspace; it must be set before CUDA starts
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

TAG_TORCH = 11     # (seed, TAG_TORCH, worker, step): torch generator and augmentation of one gradient
LOSSES = ("cross-entropy", "nll", "mse", "multi-margin")
EVAL_CHUNK = 1000


def stream_seed(seed: int, worker: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, TAG_TORCH, worker, step]).generate_state(1, np.uint64)[0] >> 1)


def _loss(name: str, logits, targets):
    if name == "cross-entropy":
        return F.cross_entropy(logits, targets)
    if name == "nll":
        return F.nll_loss(logits, targets)
    if name == "mse":
        return F.mse_loss(logits, F.one_hot(targets, logits.shape[-1]).to(logits.dtype))
    return F.multi_margin_loss(logits, targets)


def _tensor(a):
    """A torch tensor sharing a NumPy or CuPy array's memory (DLPack for device arrays)."""
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


def _drop_running_stats(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None


class TorchModel:
    """``build()`` makes the nn.Module; ``kind`` is "flat" (rows in), "image" (rows reshaped to
    input_shape) or "sequence" (rows of token ids; targets are the next tokens, see data/text.py)."""

    def __init__(self, name: str, build, kind: str, input_shape=None, loss: str = "cross-entropy",
                 augment: str = "none", description: str = ""):
        if loss not in LOSSES:
            raise ConfigError(f"model.loss = {loss!r} is not one of {', '.join(LOSSES)}")
        torch.use_deterministic_algorithms(True)
        self.name, self.build, self.kind, self.loss_name = name, build, kind, loss
        self.input_shape = tuple(input_shape) if input_shape else None
        self.augment = augment
        self.description = description
        self.module = self._built(0)
        named = list(self.module.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.n_params = int(sum(self.sizes))
        self.n_classes = None

    def __repr__(self):
        return f"TorchModel({self.name}: {self.n_params} parameters)"

    def _built(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = self.build()
        _drop_running_stats(module)
        return module.train()

    # -- interface ---------------------------------------------------------------------------
    def init(self, rng: np.random.Generator) -> np.ndarray:
        """The module's own initialisation, under a torch seed drawn from rng; float32 (d,)."""
        module = self._built(int(rng.integers(2 ** 62)))
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])
        return flat.numpy().copy()

    def set_threads(self, threads: int) -> None:
        """torch's intra-op threads: this rank's share of the cores, unless OMP_NUM_THREADS says."""
        if not os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(max(1, int(threads)))

    def _views(self, flat):
        out, at = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out[name] = flat[at:at + size].view(shape)
            at += size
        return out

    def _place(self, like) -> None:
        """Move the module's constant buffers (masks) to theta's device and dtype, once."""
        ref = next(self.module.parameters())
        if ref.device != like.device or ref.dtype != like.dtype:
            self.module.to(device=like.device, dtype=like.dtype)

    def _inputs(self, X, y, rng=None):
        X = _tensor(X)
        if self.kind == "sequence":
            tokens = X.long()
            targets = None if y is None else torch.cat([tokens[:, 1:], _tensor(y).long()[:, None]], 1)
            return tokens, targets
        if self.kind == "image":
            X = X.reshape(X.shape[0], *self.input_shape)
            if rng is not None and self.augment == "crop-flip":
                X = crop_flip(X, rng)
        return X, None if y is None else _tensor(y).long()

    def _loss_of(self, logits, targets):
        if self.kind == "sequence":
            return _loss(self.loss_name, logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return _loss(self.loss_name, logits, targets)

    def gradient_into(self, theta, X, y, out, *, seed: int = 0, worker: int = 0, step: int = 0) -> float:
        """Minibatch loss; its gradient written into ``out`` (one torch.cat into the row)."""
        stream = stream_seed(seed, worker, step)
        flat = _tensor(theta).detach()
        self._place(flat)
        flat = flat.requires_grad_(True)
        params = self._views(flat)
        torch.manual_seed(stream)
        inputs, targets = self._inputs(X, y, np.random.default_rng(stream))
        inputs = inputs.to(flat.device)
        if inputs.is_floating_point():
            inputs = inputs.to(flat.dtype)
        logits = torch.func.functional_call(self.module, params, (inputs,))
        loss = self._loss_of(logits, targets.to(flat.device))
        views = list(params.values())
        grads = torch.autograd.grad(loss, views, allow_unused=True)
        row = _tensor(out)
        # a parameter the forward pass did not use has a zero gradient (autograd gives None)
        pieces = [torch.zeros_like(v).reshape(-1) if g is None else g.reshape(-1) for g, v in zip(grads, views)]
        if row.device == flat.device:
            torch.cat(pieces, out=row)
        else:                                     # GPU worker, host send buffer: the one transfer
            row.copy_(torch.cat(pieces))
        return float(loss.detach())

    def logits(self, theta, X) -> torch.Tensor:
        flat = _tensor(theta).detach()
        self._place(flat)
        inputs, _ = self._inputs(X, None)
        inputs = inputs.to(flat.device)
        if inputs.is_floating_point():
            inputs = inputs.to(flat.dtype)
        with torch.no_grad():
            return torch.func.functional_call(self.module, self._views(flat), (inputs,))

    def predict(self, theta, X) -> np.ndarray:
        z = self.logits(theta, X)
        if self.kind == "sequence":
            z = z[:, -1]
        return z.argmax(dim=-1).cpu().numpy()

    def accuracy(self, theta, X, y, chunk: int = EVAL_CHUNK) -> float:
        """Fraction correct (next token at the end of each window for a sequence model), in chunks."""
        correct = 0
        y = np.asarray(y)
        for a in range(0, len(y), chunk):
            correct += int((self.predict(theta, X[a:a + chunk]) == y[a:a + chunk]).sum())
        return correct / max(len(y), 1)

    def loss_and_grad(self, theta, X, y, out=None, *, seed: int = 0, worker: int = 0, step: int = 0):
        """Like the NumPy models' (for tests and tools): (loss, gradient array of theta's dtype)."""
        grad = np.empty_like(theta) if out is None else out
        loss = self.gradient_into(theta, X, y, grad, seed=seed, worker=worker, step=step)
        return loss, grad
