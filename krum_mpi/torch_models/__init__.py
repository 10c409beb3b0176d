"""PyTorch workers: the model zoo and your own nn.Module behind the worker-side model interface.

    model = make(cfg.model, n_features, n_classes, input_shape)   # a flat.TorchModel

``model.name`` is a zoo name (see zoo.py) or ``torch``, with ``model.factory`` naming a function
that builds any ``torch.nn.Module``: ``"package.module:function"`` (imported with importlib) or
``"path/to/file.py:function"`` (loaded from that file). It is called with the keyword arguments
``n_features``, ``n_classes``, ``input_shape`` (for image data: (channels, height, width)) and the
table ``model.kwargs``. Nothing here is imported unless a PyTorch model is configured.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path

from ..errors import ConfigError
from ..inputs import typed

try:
    import torch
except ImportError as exc:   # the extra is optional: say how to get it
    raise ConfigError(f"this model.name needs PyTorch ({type(exc).__name__}: {exc}): "
                      "pip install 'krum-mpi[torch]' (docs/models.md says how to get the CPU build)") from None

from .flat import TorchModel   # noqa: E402
from .zoo import ZOO           # noqa: E402

NAMES = (*ZOO, "torch")
AUGMENTATIONS = ("auto", "none", "crop-flip")
KNOWN_SHAPES = {784: (1, 28, 28), 3072: (3, 32, 32)}


def infer_input_shape(n_features: int):
    """Image shape from the row length where the dataset does not say: MNIST-like, CIFAR-like, or a
    square single-channel image; None otherwise."""
    if n_features in KNOWN_SHAPES:
        return KNOWN_SHAPES[n_features]
    side = math.isqrt(n_features)
    return (1, side, side) if side * side == n_features and side >= 8 else None


def load_factory(spec: str):
    """The function named by ``model.factory``; ConfigError (one line) when it cannot be found."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise ConfigError(f"model.factory = {spec!r} must be 'package.module:function' or "
                          "'path/to/file.py:function'")
    try:
        if target.endswith(".py"):
            path = Path(target).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"model.factory = {spec!r}: file {path} not found")
            module_spec = importlib.util.spec_from_file_location(f"krum_mpi_user_model_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ConfigError:
        raise
    except (Exception, SystemExit) as exc:   # a module that calls sys.exit() on import is an error too
        raise ConfigError(f"model.factory = {spec!r}: importing {target} failed "
                          f"({_described(exc)})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"model.factory = {spec!r}: {target} has no function {attr!r}")
    return fn


def _builder(name, model_cfg, n_features, n_classes, input_shape):
    """(zero-argument function building the module, kind, default augmentation, description)."""
    kwargs = typed.thaw(model_cfg.kwargs)
    if name == "torch":
        spec = model_cfg.factory
        if not spec:
            raise ConfigError("model.name = 'torch' needs model.factory = 'package.module:function' "
                              "or 'path/to/file.py:function' building a torch.nn.Module")
        fn = load_factory(spec)
        args = dict(n_features=n_features, n_classes=n_classes, **kwargs)
        if input_shape:
            args["input_shape"] = tuple(input_shape)
        return (lambda: fn(**args)), ("image" if input_shape else "flat"), "none", f"factory {spec}"
    fn, kind, augment = ZOO[name]
    if kind == "image":
        if not input_shape:
            raise ConfigError(f"model.name = {name!r} needs image data, but rows of {n_features} "
                              "features have no image shape: use mnist, cifar10 or data.image_shape")
        return (lambda: fn(tuple(input_shape), n_classes, **kwargs)), kind, augment, name
    return (lambda: fn(n_features, n_classes, **kwargs)), kind, augment, name


def _described(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r:.40})"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def _check_outputs(model: TorchModel, n_features: int, n_classes: int, spec: str) -> None:
    """One forward pass on two rows of zeros: the output must have n_classes columns (per token for a
    sequence model), or training would run a loss over the wrong number of classes."""
    import numpy as np

    with torch.no_grad():
        theta = torch.cat([p.detach().reshape(-1).float() for p in model.module.parameters()]).numpy()
    X = np.zeros((2, n_features), dtype=np.float32)
    try:
        out = model.logits(theta, X)
    except (Exception, SystemExit) as exc:
        raise ConfigError(f"{spec}: the model's forward pass on a batch of 2 rows of {n_features} features failed "
                          f"({_described(exc)}); check the module's input size") from None
    shape = tuple(getattr(out, "shape", ()))
    expected = (2, shape[1] if len(shape) == 3 else None, n_classes) if model.kind == "sequence" else (2, n_classes)
    if not isinstance(out, torch.Tensor) or shape != expected:
        want = f"(batch, tokens, {n_classes})" if model.kind == "sequence" else f"(batch, {n_classes})"
        raise ConfigError(f"{spec}: the module's output has shape {shape} for a batch of 2, expected {want}: "
                          f"one output per class of the data ({n_classes} classes)")


def _check_module(build, spec: str):
    try:
        module = build()
    except (Exception, SystemExit) as exc:   # SystemExit(0) from a factory must not end the run "successfully"
        raise ConfigError(f"{spec}: building the model failed ({_described(exc)}); check model.kwargs") from None
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"{spec} returned {type(module).__name__}, not a torch.nn.Module")
    if not any(True for _ in module.parameters()):
        raise ConfigError(f"{spec} built a module with no parameters: nothing to train")


def make(model_cfg, n_features: int, n_classes: int, input_shape=None) -> TorchModel:
    """``model_cfg``: a ``model`` section (inputs.typed.ModelConfig, or a dict of some of its keys)."""
    model_cfg = typed.section("model", model_cfg)
    name = model_cfg.name
    if name not in NAMES:
        raise ConfigError(f"unknown model.name {name!r}: use logistic, softmax, mlp, {', '.join(NAMES)}")
    if input_shape is None and name != "char-transformer":
        input_shape = infer_input_shape(n_features)
    build, kind, default_augment, description = _builder(name, model_cfg, n_features, n_classes, input_shape)
    augment = model_cfg.augment
    if augment not in AUGMENTATIONS:
        raise ConfigError(f"model.augment = {augment!r} is not one of {', '.join(AUGMENTATIONS)}")
    augment = default_augment if augment == "auto" else augment
    if augment != "none" and kind != "image":
        raise ConfigError(f"model.augment = {augment!r} needs image data ({name} on {kind} rows)")
    label = f"model.factory = {model_cfg.factory!r}" if name == "torch" else f"model.name = {name!r}"
    _check_module(build, label)
    model = TorchModel(name, build, kind, input_shape, loss=model_cfg.loss,
                       augment=augment, description=description)
    model.n_classes = n_classes
    _check_outputs(model, n_features, n_classes, label)
    return model


__all__ = ["make", "NAMES", "TorchModel", "load_factory", "infer_input_shape"]
