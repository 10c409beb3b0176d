"""``alie`` and ``alie-opt``: "A Little Is Enough" (Baruch, Baruch, Goldberg, NeurIPS 2019).

Every Byzantine worker sends mu - z * sigma, with mu and sigma the per-coordinate mean and sample
standard deviation (ddof = 1, as ``torch.std`` in the authors' code) of the honest gradients.

z, with n workers, m = n_byzantine of them Byzantine and s = floor(n/2 + 1) - m supporters needed:
  z_formula = "paper"  : z = PhiInv((n - s) / n)            (n = 20, m = 6: 0.674; n = 25, m = 5: 0.468)
  z_formula = "honest" : z = PhiInv((n - m - s) / (n - m))  (n = 20, m = 6: 0.366; n = 25, m = 5: 0.253)
  z = <number>         : a fixed z (the authors' code uses 1.5)
``alie-opt`` picks z each step from ``grid`` by the line search of ``line_search.py`` (``objective``
"inner", the default, "distance" or "along").
"""
from __future__ import annotations

import math
from statistics import NormalDist

from .base import Attack, check_real, honest_moments, repeat_rows
from .line_search import check_grid, check_objective, line_search, unit

Z_FORMULAS = ("paper", "honest")


def alie_z(n: int, m: int, formula: str = "paper") -> float:
    """ALIE's z for n workers of which m are Byzantine (see the module docstring)."""
    if m < 1:
        raise ValueError(f"alie needs at least one Byzantine worker to size z, got {m}")
    s = math.floor(n / 2 + 1) - m
    if s < 1:
        raise ValueError(f"alie: {m} Byzantine workers of {n} already form a majority (s = {s}); "
                         "give a fixed z instead")
    if formula == "paper":
        p = (n - s) / n
    elif formula == "honest":
        p = (n - m - s) / (n - m)
    else:
        raise ValueError(f"z_formula must be one of {', '.join(Z_FORMULAS)}, got {formula!r}")
    return NormalDist().inv_cdf(p)


def alie_vectors(xp, honest, z: float, n_byzantine: int):
    mean, std = honest_moments(xp, honest)
    return repeat_rows(xp, mean - z * std, n_byzantine)


def _check_counts(attack: Attack) -> None:
    if attack.f == 0 or attack.n_byzantine == 0:
        raise ValueError(f"{attack.name} needs f >= 1 and n_byzantine >= 1, got f = {attack.f}, "
                         f"n_byzantine = {attack.n_byzantine}: set workers.byzantine and aggregator.f")


class ALIE(Attack):
    name = "alie"
    source = "Baruch, Baruch, Goldberg, 'A Little Is Enough', NeurIPS 2019"
    defaults = {"z": None, "z_formula": "paper"}

    def _validate(self):
        _check_counts(self)
        z, formula = self.params["z"], self.params["z_formula"]
        if formula not in Z_FORMULAS:
            raise ValueError(f"z_formula must be one of {', '.join(Z_FORMULAS)}, got {formula!r}")
        if z is None:
            self.z = alie_z(self.n_workers, self.n_byzantine, formula)
        else:
            self.z = check_real("z", z, low=0.0)

    def _craft(self, xp, honest, n_byzantine, rng, aggregate):
        return alie_vectors(xp, honest, self.z, n_byzantine)


class ALIEOpt(Attack):
    name = "alie-opt"
    source = "ALIE with z chosen per step by line search against the rule in use (cf. Shejwalkar & Houmansadr, NDSS 2021)"
    # z from 0 to 5 by 0.1: krum-type rules stop selecting the ALIE point somewhere in this range.
    defaults = {"grid": [round(0.1 * k, 1) for k in range(51)], "objective": "inner"}

    def _validate(self):
        _check_counts(self)
        self.objective = check_objective(self.params["objective"])
        self.grid = check_grid("z", self.params["grid"])
        self.params["grid"] = list(self.grid)
        self.last_choice = None

    def _craft(self, xp, honest, n_byzantine, rng, aggregate):
        mu, sigma = honest_moments(xp, honest)
        craft_at = lambda z, k: repeat_rows(xp, mu - z * sigma, k)  # noqa: E731
        self.last_choice, _ = line_search(self, xp, honest, rng, aggregate, self.grid, craft_at, unit(xp, -sigma))
        return craft_at(self.last_choice, n_byzantine)
