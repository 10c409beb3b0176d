"""``min-max`` and ``min-sum``: the aggregation-agnostic attacks of Shejwalkar & Houmansadr (NDSS 2021).

Every Byzantine worker sends g_m = mu + gamma * p, mu the mean of the honest gradients g_1..g_h and
p a perturbation direction (``direction``):

    "unit" : -mu / ||mu||     (inverse unit vector, the paper's default)
    "std"  : -sigma           (inverse per-coordinate standard deviation, ddof = 1)
    "sign" : -sign(mu)        (inverse sign)

gamma is the largest value that keeps g_m as close to the honest gradients as they are to each other:

    min-max: max_i ||g_m - g_i||     <= max_{i,j} ||g_i - g_j||
    min-sum: sum_i ||g_m - g_i||^2   <= max_i sum_j ||g_i - g_j||^2

The paper finds gamma by a binary search from a start value to a tolerance of about 1e-5. Here it is
computed in closed form, which is that search's limit: with e_i = mu - g_i, ||g_m - g_i||^2 =
||e_i||^2 + 2 gamma (e_i . p) + gamma^2 ||p||^2 is a convex quadratic in gamma that meets its bound
at gamma = 0 (mu lies in the honest hull), so the feasible gammas are an interval [0, gamma*]:

    min-max: gamma* = min_i  (-b_i + sqrt(b_i^2 + c (B - a_i))) / c,  a_i = ||e_i||^2, b_i = e_i . p,
             c = ||p||^2, B = max_{i,j} ||g_i - g_j||^2
    min-sum: sum_i e_i = 0 removes the linear term: gamma* = sqrt((B' - sum_i a_i) / (h c)),
             B' = max_i sum_j ||g_i - g_j||^2

(float64 throughout). A zero direction (mu = 0 for "unit" or "sign", sigma = 0 for "std") or a
single honest gradient gives gamma* = 0: the attack then sends mu. ``last_gamma`` keeps the value of
the last step.

``agr-tailored`` is the rule-aware counterpart (the paper's "AGR-tailored" attacks, here by the
line search of ``line_search.py``): the same row mu + gamma p, with gamma = k * gamma_minmax for k
from ``grid`` (multiples of the Min-Max gamma, so the grid does not depend on the gradients' scale),
k chosen each step through the rule in use to maximise the damage to the step (``objective``,
"inner" by default). ``last_choice`` keeps k, ``last_gamma`` gamma.
"""
from __future__ import annotations

import numpy as np

from .base import Attack, honest_mean, honest_std, repeat_rows
from .line_search import check_grid, check_objective, line_search, unit

DIRECTIONS = ("unit", "std", "sign")


def perturbation(xp, honest, direction: str):
    """The direction p (float64, (d,)) named by ``direction`` (see the module docstring)."""
    mu = honest_mean(xp, honest)
    if direction == "unit":
        norm = float(xp.linalg.norm(mu))
        return -mu / norm if norm > 0 else xp.zeros_like(mu)
    if direction == "std":
        return -honest_std(xp, honest)
    return -xp.sign(mu)


def _geometry(xp, honest, p):
    """Per honest row i (float64, one row at a time so that nothing (h, d) is held in float64):
    a_i = ||mu - g_i||^2, b_i = (mu - g_i) . p, and the (h, h) squared distances between the rows
    (differences, not the Gram trick: no cancellation whatever the rows' norms)."""
    h = honest.shape[0]
    mu = honest_mean(xp, honest)
    a, b, dist = np.zeros(h), np.zeros(h), np.zeros((h, h))
    for i in range(h):
        gi = honest[i].astype(xp.float64)
        e = mu - gi
        a[i], b[i] = float(e @ e), float(e @ p)
        for j in range(i + 1, h):
            diff = honest[j].astype(xp.float64) - gi
            dist[i, j] = dist[j, i] = float(diff @ diff)
    return a, b, dist


def min_max_gamma(xp, honest, p) -> float:
    """The largest gamma with max_i ||mu + gamma p - g_i|| <= max_{i,j} ||g_i - g_j||."""
    c = float(p @ p)
    if c == 0.0 or honest.shape[0] < 2:
        return 0.0
    a, b, dist = _geometry(xp, honest, p)
    roots = (-b + np.sqrt(np.maximum(b * b + c * (dist.max() - a), 0.0))) / c
    return max(0.0, float(roots.min()))


def min_sum_gamma(xp, honest, p) -> float:
    """The largest gamma with sum_i ||mu + gamma p - g_i||^2 <= max_i sum_j ||g_i - g_j||^2."""
    c, h = float(p @ p), honest.shape[0]
    if c == 0.0 or h < 2:
        return 0.0
    a, _, dist = _geometry(xp, honest, p)
    slack = float(dist.sum(axis=1).max() - a.sum())
    return (max(slack, 0.0) / (h * c)) ** 0.5


class _Agnostic(Attack):
    defaults = {"direction": "unit"}
    gamma_of = None

    def _validate(self):
        if self.params["direction"] not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {self.params['direction']!r}")
        self.last_gamma = None

    def _craft(self, xp, honest, n_byzantine, rng, aggregate):
        p = perturbation(xp, honest, self.params["direction"])
        self.last_gamma = type(self).gamma_of(xp, honest, p)
        return repeat_rows(xp, honest_mean(xp, honest) + self.last_gamma * p, n_byzantine)


class MinMax(_Agnostic):
    name = "min-max"
    source = "Shejwalkar & Houmansadr, 'Manipulating the Byzantine', NDSS 2021 (Min-Max)"
    gamma_of = staticmethod(min_max_gamma)


class MinSum(_Agnostic):
    name = "min-sum"
    source = "Shejwalkar & Houmansadr, 'Manipulating the Byzantine', NDSS 2021 (Min-Sum)"
    gamma_of = staticmethod(min_sum_gamma)


class AGRTailored(_Agnostic):
    name = "agr-tailored"
    source = "Shejwalkar & Houmansadr, NDSS 2021 (AGR-tailored): mu + gamma p with gamma searched against the rule"
    # Multiples of the Min-Max gamma: below it (closer to the honest cloud) and well beyond it.
    defaults = {"direction": "unit", "objective": "inner",
                "grid": [0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0]}

    def _validate(self):
        super()._validate()
        self.objective = check_objective(self.params["objective"])
        self.grid = check_grid("gamma multiple", self.params["grid"])
        self.params["grid"] = list(self.grid)
        self.last_choice = None

    def _craft(self, xp, honest, n_byzantine, rng, aggregate):
        p = perturbation(xp, honest, self.params["direction"])
        mu, base = honest_mean(xp, honest), min_max_gamma(xp, honest, p)
        craft_at = lambda k, count: repeat_rows(xp, mu + (k * base) * p, count)  # noqa: E731
        self.last_choice, _ = line_search(self, xp, honest, rng, aggregate, self.grid, craft_at, unit(xp, p))
        self.last_gamma = self.last_choice * base
        return craft_at(self.last_choice, n_byzantine)
