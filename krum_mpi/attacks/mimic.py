"""``mimic``: every Byzantine worker copies one honest worker's gradient (Karimireddy, He, Jaggi, ICLR 2022).

Harmless to the mean on one step, but it over-weights one worker's data, which hurts under
heterogeneous splits. ``worker`` indexes the rows of ``honest`` (default 0: the first honest worker).
"""
from .base import Attack, check_int


class Mimic(Attack):
    name = "mimic"
    source = "Karimireddy, He, Jaggi, 'Byzantine-robust learning on heterogeneous datasets via bucketing', ICLR 2022"
    defaults = {"worker": 0}

    def _validate(self):
        self.worker = check_int("worker", self.params["worker"], low=0)
        n_honest = self.n_workers - self.n_byzantine
        if self.worker >= n_honest:
            raise ValueError(f"mimic worker = {self.worker} but there are only {n_honest} honest workers")

    def _craft(self, xp, honest, n_byzantine, rng, aggregate):
        if self.worker >= honest.shape[0]:
            raise ValueError(f"mimic worker = {self.worker} but the adversary sees {honest.shape[0]} honest vectors")
        return xp.broadcast_to(honest[self.worker], (n_byzantine, honest.shape[1]))
