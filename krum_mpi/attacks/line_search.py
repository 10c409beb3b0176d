"""Line search shared by ``alie-opt`` and ``ipm-opt``: the grid value that moves the aggregate most.

For each value v of the grid the Byzantine vectors are crafted at v, the rule in use aggregates
them with the honest vectors, and the damage (in float64) is measured by ``objective``:

    "inner" (default): -(aggregate . mu) / ||mu||, mu the honest mean: how far the step the rule
                       takes goes AGAINST the honest direction (the loss decrease of an SGD step is
                       about lr * (aggregate . true gradient), so this is the damage to the step)
    "distance"       : ||aggregate - mu||
    "along"          : (aggregate - mu) . u, u the unit direction the attack pushes in
                       (ALIE: -sigma / ||sigma||, IPM: -mu / ||mu||)

The value with the largest damage wins; ties go to the earlier grid value. "distance" is
misdirected against Krum-type rules: it rewards NOT being selected, since Krum's honest pick is one
noisy gradient, often farther from mu than the crafted vector, so the distance can be largest when
the attack is ignored (an honest gradient far from mu still descends). "inner" rewards the value
at which the rule's output turns against mu, which for Krum is the largest value it still selects.

The rule needs all n_workers vectors. In the omniscient model ``honest`` already holds the
n_workers - n_byzantine honest gradients. In the colluding model the adversary knows only its own
gradients, so it stands in for the honest ones with a Gaussian sample of the same per-coordinate
mean and standard deviation (drawn from ``rng``): its best guess of what it does not see.
"""
from __future__ import annotations

import numpy as np

from .base import check_real, check_rng, honest_mean, honest_moments


OBJECTIVES = ("inner", "distance", "along")


def check_objective(objective) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    return objective


def unit(xp, v):
    """v / ||v|| (zeros when v = 0: every grid value then scores 0 and the first one wins)."""
    norm = float(xp.linalg.norm(v))
    return v / norm if norm > 0 else xp.zeros_like(v)


def check_grid(name: str, grid) -> tuple[float, ...]:
    if isinstance(grid, (str, bytes)) or not hasattr(grid, "__iter__"):
        raise ValueError(f"grid must be a list of numbers >= 0, got {grid!r}")
    values = tuple(check_real(f"{name} grid value", v, low=0.0) for v in grid)
    if not values:
        raise ValueError("grid must hold at least one value")
    return values


def simulated_honest(xp, honest, n_honest: int, rng, attack: str):
    """The honest vectors the rule will see: the real ones if the adversary has them all, else a stand-in."""
    if honest.shape[0] == n_honest:
        return honest
    rng = check_rng(rng, attack)
    mu, sigma = honest_moments(xp, honest)
    noise = xp.asarray(rng.standard_normal((n_honest, honest.shape[1]), dtype="float32"))
    return (mu + sigma * noise).astype(xp.float32)


def line_search(attack, xp, honest, rng, aggregate, grid, craft_at, direction):
    """(best value, its damage) over ``grid``; ``craft_at(v, k)`` gives k Byzantine vectors at v,
    ``direction`` is the unit vector the attack pushes the aggregate along (used by "along")."""
    if aggregate is None or not callable(aggregate):
        raise ValueError(f"attack {attack.name!r} needs aggregate, the callable of the rule in use")
    pool = simulated_honest(xp, honest, attack.n_workers - attack.n_byzantine, rng, attack.name)
    mu = honest_mean(xp, honest)
    mu_unit = unit(xp, mu)
    best_value, best_damage = grid[0], -np.inf
    for value in grid:
        X = xp.concatenate([pool, craft_at(value, attack.n_byzantine)]).astype(xp.float32)
        result = aggregate(X)
        vector = getattr(result, "vector", result)       # an Aggregation or a bare (d,) array
        shift = vector.astype(xp.float64) - mu
        if attack.objective == "inner":
            damage = -float(vector.astype(xp.float64) @ mu_unit)
        elif attack.objective == "along":
            damage = float(shift @ direction)
        else:
            damage = float(xp.linalg.norm(shift))
        if damage > best_damage:                           # NaN damage never wins
            best_value, best_damage = value, damage
    return best_value, best_damage
