"""``sign-flip``: each Byzantine worker sends the opposite of an honest gradient, scaled.

Byzantine row j is ``-scale * honest[j mod h]``. In the colluding model ``honest`` holds the
Byzantine workers' own gradients, so each one flips its own gradient (the usual definition, e.g.
Allen-Zhu et al. ICLR 2021, Karimireddy et al. ICML 2021). In the omniscient model the Byzantine
workers compute nothing, so they flip the first honest gradients instead, which have the same law
under an IID split. Unlike ``omniscient`` and ``ipm`` the Byzantine vectors differ from each other.
"""
from .base import Attack, check_real


class SignFlip(Attack):
    name = "sign-flip"
    source = "Allen-Zhu et al., ICLR 2021; Karimireddy, He, Jaggi, ICML 2021 ('bit flipping')"
    defaults = {"scale": 1.0}

    def _validate(self):
        self.scale = check_real("scale", self.params["scale"], low=0.0)

    def _craft(self, xp, honest, n_byzantine, rng, aggregate):
        rows = xp.arange(n_byzantine) % honest.shape[0]
        return -self.scale * honest[rows].astype(xp.float32)
