"""Byzantine attacks: a registry of named attacks.

    attack = make("alie", n_workers=20, n_byzantine=6, f=6)          # validates, ValueError one line
    crafted = attack.craft(honest, 6, rng, aggregate=rule)           # (6, d) float32

``get(name)`` returns the Attack class (``get(name)(n_workers, n_byzantine, f, **params)`` is what
``make`` does), ``names()`` lists every registered name. Each family lives in its own module;
docs/attacks.md gives each attack's source, formula and defaults.
"""
from __future__ import annotations

from .agnostic import AGRTailored, MinMax, MinSum
from .alie import ALIE, ALIEOpt, alie_z
from .base import Attack
from .blind import Blind
from .constant import Inf, NaN, Zero
from .gaussian import Gaussian
from .ipm import IPM, IPMOpt
from .label_flip import LabelFlip
from .mimic import Mimic
from .near_tie import NearTie
from .none import NoAttack
from .omniscient import Omniscient
from .shard_target import ShardTarget
from .sign_flip import SignFlip

_REGISTRY: dict[str, type[Attack]] = {cls.name: cls for cls in (
    NoAttack, Gaussian, Omniscient, SignFlip, LabelFlip, ALIE, ALIEOpt, IPM, IPMOpt, Mimic, NaN, Inf, Zero, Blind,
    ShardTarget, NearTie, MinMax, MinSum, AGRTailored,
)}


def names() -> list[str]:
    """Registered attack names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> type[Attack]:
    """The Attack class registered as ``name``; ValueError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown attack {name!r}: choose one of {', '.join(names())}") from None


def make(name: str, n_workers: int, n_byzantine: int, f: int, **params) -> Attack:
    """Build and validate an attack for n_workers workers, n_byzantine of them Byzantine, f declared."""
    return get(name)(n_workers, n_byzantine, f, **params)


__all__ = ["Attack", "alie_z", "get", "make", "names"]
