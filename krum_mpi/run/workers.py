"""The logical workers one rank hosts: their gradients, their momentum, and, on Byzantine ranks of
the colluding adversary, the crafting they agree on."""
from __future__ import annotations

import os
import time

import numpy as np

from .. import aggregators, backend
from .server import SEED_ATTACK, momentum_step  # one attack-noise stream per step, whichever adversary crafts


class LocalWorkers:
    """This rank's workers. Collective when built (the colluding adversary splits a communicator)."""

    def __init__(self, setup, comm, opt, workers, model, agg):
        """``opt``, ``workers``, ``model``, ``agg``: the run's [optimizer], [workers], [model] and
        [aggregator] sections (inputs.typed)."""
        k, d = len(setup.local_workers), setup.d
        self.setup, self.comm = setup, comm
        self.batch_size = workers.batch_size
        self.rows = np.empty((k, d), dtype=np.float32)       # one gradient (or momentum) row per worker
        self.meta = np.empty((k, 2), dtype=np.float64)       # per worker: minibatch loss, compute seconds
        self.mu, self.momentum_form = opt.momentum, opt.momentum_form
        self.weight_decay = model.weight_decay
        self.momentum = np.zeros((k, d), dtype=np.float32) \
            if (opt.momentum_at == "worker" and self.mu > 0) else None
        self.is_byzantine = setup.byzantine[setup.local_workers]
        setup.model.set_threads(max(1, (os.cpu_count() or 1) // comm.ranks_on_this_node()))
        self.flip_labels = setup.attack.kind == "data"
        self.byz_comm = comm.split_byzantine(bool(self.is_byzantine.any())) if setup.colluding else None
        if self.byz_comm is not None:
            n_byz = int(setup.byzantine.sum())
            self.byz_counts = comm.counts[comm.counts.size - self.byz_comm.Get_size():]
            self.byz_offset = int(comm.displs[comm.rank] - (setup.n - n_byz))
            self.known = np.empty((n_byz, d), dtype=np.float32)
            rule, f, options = aggregators.get(agg.name), agg.f, agg.option_kwargs()
            self.aggregate_fn = lambda Z: rule(Z, f, **options)

    def compute(self, theta: np.ndarray, step: int) -> None:
        """Each worker's minibatch gradient at ``theta`` (label-flipped for Byzantine data attacks),
        written by the model straight into the worker's row of the send buffer."""
        s = self.setup
        theta_w = backend.to_device(theta, s.worker_xp)
        if hasattr(s.model, "gradients_into"):   # a split model: all at once, one group exchange per layer pair
            self._compute_together(theta, theta_w, step)
            return
        for j, worker in enumerate(s.local_workers):
            t0 = time.perf_counter()
            xb, yb = self._batch(j, step)
            loss = s.model.gradient_into(theta_w, xb, yb, self.rows[j], seed=s.seed, worker=worker, step=step)
            self._finish(j, theta, loss)
            self.meta[j, 1] = time.perf_counter() - t0

    def _compute_together(self, theta: np.ndarray, theta_w, step: int) -> None:
        """The hosted workers' gradients in one call of the split model (the same values as one call
        per worker); each worker is given an equal share of the call's seconds."""
        s, t0 = self.setup, time.perf_counter()
        batches = s.model.draw_batches(lambda j: self._batch(j, step), len(s.local_workers), self.batch_size)
        losses = s.model.gradients_into(theta_w, [b[0] for b in batches], [b[1] for b in batches], list(self.rows),
                                        seed=s.seed, workers=list(s.local_workers), step=step)
        for j, loss in enumerate(losses):
            self._finish(j, theta, loss)
        self.meta[:, 1] = (time.perf_counter() - t0) / max(1, len(losses))

    def _batch(self, j: int, step: int):
        """Worker j's minibatch at ``step`` on the worker device, label-flipped for a data attack."""
        s = self.setup
        xb, yb = s.shards[j].batch(step, self.batch_size)
        if self.flip_labels and self.is_byzantine[j]:
            yb = s.attack.label_map(yb, s.dataset.n_classes)
        return backend.to_device(xb, s.worker_xp), backend.to_device(yb, s.worker_xp)

    def _finish(self, j: int, theta: np.ndarray, loss: float) -> None:
        """Worker j's row after its gradient: the L2 term, then its momentum; its loss recorded."""
        if self.weight_decay > 0:       # L2 term of the worker's loss, as ByzFL's clients add it
            self.rows[j] += self.weight_decay * theta
        if self.momentum is not None:   # the momentum must outlive the row: one copy back
            momentum_step(self.momentum[j], self.rows[j], self.mu, self.momentum_form)
            self.rows[j] = self.momentum[j]
        self.meta[j, 0] = loss

    def collude(self, step: int) -> None:
        """Colluding adversary: the Byzantine ranks share their own honest rows and replace them with
        vectors crafted from those alone (every member computes the same ones from the same seed)."""
        if self.byz_comm is None:
            return
        self.comm.allgather_rows_in(self.byz_comm, self.rows, self.known, self.byz_counts)
        rng = np.random.default_rng([self.setup.seed, SEED_ATTACK, step])
        crafted = self.setup.attack.craft(self.known, self.known.shape[0], rng, aggregate=self.aggregate_fn)
        self.rows[:] = backend.to_host(crafted)[self.byz_offset:self.byz_offset + len(self.rows)]
