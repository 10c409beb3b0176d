"""``omniscient``: every Byzantine worker sends -scale x (honest mean) (Krum paper, Blanchard et al. 2017)."""
from .base import Attack, check_real, honest_mean, repeat_rows


class Omniscient(Attack):
    name = "omniscient"
    source = "Blanchard et al., NIPS 2017 (Krum): the opposite of the true gradient, scaled (a reproduction uses 100)"
    defaults = {"scale": 100.0}

    def _validate(self):
        self.scale = check_real("scale", self.params["scale"], low=0.0)

    def _craft(self, xp, honest, n_byzantine, rng, aggregate):
        return repeat_rows(xp, -self.scale * honest_mean(xp, honest), n_byzantine)
