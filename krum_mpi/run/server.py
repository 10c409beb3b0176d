"""Rank 0's half of a training step: the gather buffer, the omniscient adversary, the rule, the update.

No MPI here: the training loop fills ``X`` and ``meta`` through ``comm`` and calls these methods.
"""
from __future__ import annotations

import numpy as np

from .. import aggregators, backend

SEED_ATTACK = 2   # attack noise of step t: default_rng([seed, SEED_ATTACK, t])


def momentum_step(m: np.ndarray, g: np.ndarray, beta: float, form: str) -> None:
    """m in place: "heavy-ball" m <- beta m + g; "ema" (damped) m <- beta m + (1 - beta) g, whose
    step is 1 / (1 - beta) times smaller at the same lr (Karimireddy et al. 2021)."""
    m *= np.float32(beta)
    if form == "ema":
        m += np.float32(1.0 - beta) * g
    else:
        m += g


class Server:
    """Parameter-server state of one run (rank 0 only)."""

    def __init__(self, setup, opt, agg):
        """``opt``, ``agg``: the run's [optimizer] and [aggregator] sections (inputs.typed)."""
        n, d = setup.n, setup.d
        self.setup = setup
        self.X = np.empty((n, d), dtype=np.float32)        # the gather buffer lives on rank 0 only
        self.meta = np.empty((n, 2), dtype=np.float64)     # per worker: minibatch loss, compute seconds
        self.lr = np.float32(opt.lr)
        self.mu, self.momentum_form = opt.momentum, opt.momentum_form
        self.momentum = np.zeros(d, dtype=np.float32) if (self.mu > 0 and opt.momentum_at == "server") else None
        self.honest = ~setup.byzantine
        crafts_here = setup.attack.kind not in ("none", "data") and not setup.colluding
        self.crafted_rows = np.flatnonzero(setup.byzantine) if crafts_here else np.zeros(0, dtype=np.int64)
        self.rule_name, self.f = agg.name, agg.f
        self.rule_options = agg.option_kwargs()
        self.rule = aggregators.get(self.rule_name)
        self.by_count = {n: setup.aggregator}              # the rule, made for each number of arrivals
        self.zero_update = np.zeros(d, dtype=np.float32)

    def aggregate_fn(self, Z):
        """The rule in use as a pure function, for attacks that search against it."""
        return self.rule(Z, self.f, **self.rule_options)

    def craft(self, step: int, present: np.ndarray) -> None:
        """Omniscient adversary: Byzantine rows crafted knowing every honest gradient that arrived."""
        if self.crafted_rows.size == 0:
            return
        rng = np.random.default_rng([self.setup.seed, SEED_ATTACK, step])
        crafted = self.setup.attack.craft(self.X[self.honest & present], self.crafted_rows.size, rng,
                                          aggregate=self.aggregate_fn)
        self.X[self.crafted_rows] = backend.to_host(crafted)

    def aggregate(self, present: np.ndarray):
        """The rule on the rows that arrived: (Aggregation or None, selected worker ids, update vector).

        With absent workers the rule runs on the m vectors received with the same declared f; if m is
        below the rule's bound the step applies no update and selects nobody."""
        xp = self.setup.xp
        if present.all():
            agg = self.setup.aggregator(backend.to_device(self.X, xp))
            selected = agg.selected
        else:
            ids = np.flatnonzero(present)
            try:
                if ids.size not in self.by_count:
                    self.by_count[ids.size] = aggregators.make(self.rule_name, ids.size, self.f, **self.rule_options)
            except ValueError:
                return None, None, self.zero_update
            agg = self.by_count[ids.size](backend.to_device(self.X[ids], xp))
            selected = None if agg.selected is None else ids[np.asarray(agg.selected)]
        update = backend.to_host(agg.vector).astype(np.float32, copy=False)
        backend.synchronize(xp)
        return agg, selected, update

    def apply(self, theta: np.ndarray, g: np.ndarray) -> None:
        """SGD step in place, with momentum (optimizer.momentum_form) on the aggregate when it lives at the server."""
        if self.momentum is not None:
            momentum_step(self.momentum, g, self.mu, self.momentum_form)
            g = self.momentum
        theta -= self.lr * g

    def state(self) -> dict:
        """What a resume needs from the server (besides the parameters); views, written at once."""
        out = {"server_momentum": self.momentum}
        for key, value in getattr(self.setup.aggregator, "state", {}).items():
            out[f"aggregator_state.{key}"] = backend.to_host(value)
        return out

    def restore(self, checkpoint: dict) -> None:
        if self.momentum is not None:
            self.momentum[:] = checkpoint["server_momentum"]
        prefix = "aggregator_state."
        saved = {k[len(prefix):]: v.item() if v.ndim == 0 else backend.to_device(v, self.setup.xp)   # a step count
                 for k, v in checkpoint.items() if k.startswith(prefix)}
        if saved:                 # stateful rules (centered clipping) carry state between steps
            self.setup.aggregator.state = saved
