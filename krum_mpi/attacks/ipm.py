"""``ipm`` and ``ipm-opt``: inner-product manipulation ("Fall of Empires", Xie, Koyejo, Gupta, UAI 2019).

Every Byzantine worker sends -epsilon * mu (mu: the mean of the honest gradients). A small epsilon
(0.1) keeps the vector close enough to be selected by Krum while making the inner product with the
true gradient negative; a large one (about 100) defeats median-type rules.
``ipm-opt`` picks epsilon each step from ``grid`` by the line search of ``line_search.py`` (``objective``
"inner", the default, "distance" or "along").
"""
from .base import Attack, check_real, honest_mean, repeat_rows
from .line_search import check_grid, check_objective, line_search, unit


class IPM(Attack):
    name = "ipm"
    source = "Xie, Koyejo, Gupta, 'Fall of Empires', UAI 2019"
    defaults = {"epsilon": 0.1}

    def _validate(self):
        self.epsilon = check_real("epsilon", self.params["epsilon"], low=0.0)

    def _craft(self, xp, honest, n_byzantine, rng, aggregate):
        return repeat_rows(xp, -self.epsilon * honest_mean(xp, honest), n_byzantine)


class IPMOpt(Attack):
    name = "ipm-opt"
    source = "IPM with epsilon chosen per step by line search against the rule in use"
    # Fine near 0 (where Krum is fooled), then the settings seen in the literature up to 100.
    defaults = {"grid": [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1,
                         1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0],
                "objective": "inner"}

    def _validate(self):
        self.objective = check_objective(self.params["objective"])
        self.grid = check_grid("epsilon", self.params["grid"])
        self.params["grid"] = list(self.grid)
        self.last_choice = None

    def _craft(self, xp, honest, n_byzantine, rng, aggregate):
        mu = honest_mean(xp, honest)
        craft_at = lambda eps, k: repeat_rows(xp, -eps * mu, k)  # noqa: E731
        self.last_choice, _ = line_search(self, xp, honest, rng, aggregate, self.grid, craft_at, unit(xp, -mu))
        return craft_at(self.last_choice, n_byzantine)
