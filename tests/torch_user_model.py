"""A bring-your-own model for the tests: loaded by path (model.factory = "tests/torch_user_model.py:mlp")."""
import torch
from torch import nn


def mlp(n_features, n_classes, hidden=(20, 20), input_shape=None):
    """The NumPy MLP's architecture (ReLU between dense layers) as a torch module."""
    sizes = [n_features, *hidden, n_classes]
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(nn.Flatten(), *layers)


def with_dropout(n_features, n_classes, input_shape=None, p=0.5):
    """Randomness inside the forward pass: the gradient must still be a function of (seed, worker, step)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(n_features, 32), nn.ReLU(), nn.Dropout(p), nn.Linear(32, n_classes))


def broken(n_features, n_classes, input_shape=None):
    raise RuntimeError("this factory always fails")


def not_a_module(n_features, n_classes, input_shape=None):
    return torch.zeros(3)


class _WithUnusedHead(nn.Module):
    def __init__(self, n_features, n_classes):
        super().__init__()
        self.used = nn.Linear(n_features, n_classes)
        self.unused = nn.Linear(4, 4)          # e.g. a head only another task trains

    def forward(self, x):
        return self.used(x.flatten(1))


def with_unused_parameters(n_features, n_classes, input_shape=None):
    return _WithUnusedHead(n_features, n_classes)
