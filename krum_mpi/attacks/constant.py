"""Constant vectors: ``zero`` (a crashed or lazy worker) and the non-finite ``nan`` and ``inf``.

``nan`` and ``inf`` check that a rule (and the training loop) survives non-finite input, as an
overflowing or buggy worker would send; ``inf`` is +inf in every coordinate.
"""
from .base import Attack


class _Constant(Attack):
    value = 0.0

    def _craft(self, xp, honest, n_byzantine, rng, aggregate):
        return xp.full((n_byzantine, honest.shape[1]), self.value, dtype=xp.float32)


class Zero(_Constant):
    name = "zero"
    source = "a worker that sends nothing useful (e.g. Xie et al. 2019 baselines)"
    value = 0.0


class NaN(_Constant):
    name = "nan"
    kind = "nonfinite"
    source = "robustness check: non-finite input"
    value = float("nan")


class Inf(_Constant):
    name = "inf"
    kind = "nonfinite"
    source = "robustness check: non-finite input"
    value = float("inf")
