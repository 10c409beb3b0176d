"""``gaussian``: each Byzantine worker sends N(0, sigma^2 I) noise (Krum paper, Blanchard et al. 2017)."""
from .base import Attack, check_real, check_rng


class Gaussian(Attack):
    name = "gaussian"
    source = "Blanchard et al., NIPS 2017 (Krum), experiments: sigma = 200"
    defaults = {"sigma": 200.0}

    def _validate(self):
        self.sigma = check_real("sigma", self.params["sigma"], low=0.0)

    def _craft(self, xp, honest, n_byzantine, rng, aggregate):
        rng = check_rng(rng, self.name)
        # Drawn on the host in float32: the same seed gives the same vectors on NumPy and CuPy.
        noise = rng.standard_normal((n_byzantine, honest.shape[1]), dtype="float32")
        noise *= self.sigma
        return xp.asarray(noise)
