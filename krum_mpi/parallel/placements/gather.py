"""Rank 0 holds every row: the gather placement, with collectives or with a deadline.

* ``GatherPlacement`` (``run.gather_deadline_s = 0``): every rank checks for a stop (``Allreduce``),
  receives the parameters (``Bcast``), computes, and rank 0 gathers every row (``Gatherv``): the
  slowest rank sets the pace. Rank 0 crafts, aggregates and updates (run.server.Server).
* ``DeadlinePlacement`` (``> 0``): point-to-point (``comm.DeadlineExchange``). Rank 0 waits at most
  the deadline for the other ranks' rows; a late rank's gradient is dropped (it was computed on old
  parameters) and the rank is given the current step as soon as it answers, so nobody waits for it.
  The step's wall time is bounded by rank 0's own compute + the deadline + the aggregation and
  update. The other ranks compute whichever step rank 0 hands them, and checkpoint when told.
"""
from __future__ import annotations

import numpy as np

from ..comm import TASK_END, TASK_SAVE, TASK_STEP, DeadlineExchange
from ...run.server import Server
from ...run.steps import peak_rss_mib
from .base import Outcome, Placement, Turn

GATHER_PHASES = ("stop check and Bcast of the parameters, compute, Gatherv of rows and metadata, "
                 "rule and update (rank 0)")


class GatherPlacement(Placement):
    """Rank 0 gathers the rows into the server's (n, d) buffer and runs the rule on them."""

    PHASES = GATHER_PHASES
    PHASE_MARKS = (0, 1, 2, 3, 6)   # the craft is part of rank 0's rule phase
    EXCHANGE_MARKS = (2, 3)

    def __init__(self, setup, cfg, comm):
        super().__init__(setup, comm)
        self.server = Server(setup, cfg.optimizer, cfg.aggregator) if comm.is_root else None
        self.everyone = np.ones(setup.n, dtype=bool)
        if self.server is not None:
            self.meta, self.momentum = self.server.meta, self.server.momentum

    def start_step(self, step: int, theta: np.ndarray, stop) -> Turn:
        if self.comm.any_true(stop.signal != 0):
            return Turn(step - 1, leave=True, signal=stop.signal or -1)
        self.comm.bcast_params(theta)
        return Turn(step)

    def exchange(self, step: int, workers):
        server = self.server
        self.comm.gather_rows(workers.rows, None if server is None else server.X)
        self.comm.gather_rows(workers.meta, None if server is None else server.meta)
        return None if server is None else self.everyone

    def craft(self, step: int, present) -> None:
        if self.server is not None:
            self.server.craft(step, present)

    def aggregate(self, present):
        if self.server is None:
            return None
        agg, selected, g = self.server.aggregate(present)
        if agg is None:   # too few rows arrived for the rule: no update, nobody selected
            return Outcome(g, None, None, present)
        return Outcome(g, selected, agg.weights, present, agg.recomputed)

    def apply(self, theta: np.ndarray, outcome) -> None:
        if self.server is not None:   # the other ranks receive the parameters at the next step
            self.server.apply(theta, outcome.update)

    def nonfinite_rows(self, outcome):
        if np.isfinite(outcome.update).all():
            return None
        X = self.server.X
        return int(sum(not np.isfinite(X[i]).all() for i in np.flatnonzero(outcome.present)))

    def state(self) -> dict:
        return self.server.state()

    def restore(self, checkpoint: dict) -> None:
        self.server.restore(checkpoint)

    def momentum_rows(self) -> np.ndarray:
        return self.server.X   # free between steps


class DeadlinePlacement(GatherPlacement):
    """Rank 0 drives the steps with point-to-point tasks; the other ranks follow them."""

    drops_rows = True

    def __init__(self, setup, cfg, comm):
        super().__init__(setup, cfg, comm)
        self.deadline_s = cfg.run.gather_deadline_s
        opt = cfg.optimizer
        self.workers_hold_momentum = opt.momentum > 0 and opt.momentum_at == "worker"
        self.tasks = DeadlineExchange(comm, setup.d)
        self.stop = None

    def begin(self, theta, save, writer, steps: int) -> None:
        super().begin(theta, save, writer, steps)
        self.theta = theta

    def start_step(self, step: int, theta: np.ndarray, stop) -> Turn:
        self.stop = stop
        if self.comm.is_root:
            signal = stop.signal or self.tasks.stop_signal
            if signal:
                return Turn(step - 1, leave=True, signal=signal)
            self.tasks.send_step(step, theta)
            return Turn(step)
        while True:   # another rank: the step rank 0 hands it (not always the next one), or the end
            step, kind, signal = self.tasks.receive_task(theta)
            if kind == TASK_END:
                return Turn(step, leave=True, signal=signal)
            if kind == TASK_SAVE:
                self.save(step, "running")
                continue
            assert kind == TASK_STEP
            return Turn(step)

    def exchange(self, step: int, workers):
        if not self.comm.is_root:
            self.tasks.reply(workers.rows, workers.meta, self.stop.signal, peak_rss_mib())
            return None
        server = self.server
        present = self.tasks.collect(step, workers.rows, workers.meta, server.X, server.meta, self.deadline_s)
        return np.repeat(present, self.comm.counts)

    def note_traffic(self, step: int, outcome, marks) -> None:
        """Not recorded: the ranks are not in step, so nothing collective happens between steps."""

    def checkpoint(self, step: int) -> None:
        if not self.comm.is_root:
            return                                   # the other ranks save when rank 0 tells them
        if not self.workers_hold_momentum:           # rank 0 holds every state a resume needs
            self.save(step, "running", peak_rss=self.tasks.peak_rss)
        else:                                        # every worker's momentum, at one step
            self.tasks.drain()
            self.tasks.command(TASK_SAVE, step)
            self.save(step, "running")

    def end(self, step: int, signal: int, left: bool):
        if self.comm.is_root:
            self.tasks.drain()                       # the late ranks finish their step ...
            self.tasks.command(TASK_END, step, signal)   # ... and join the final checkpoint
            return step, signal
        while not left:   # this rank computed every step: rank 0's end (or a checkpoint) comes next
            turn = self.start_step(step, self.theta, self.stop)
            assert turn.leave, "rank 0 handed out a step after the last one"
            step, signal, left = turn.step, turn.signal, turn.leave
        return step, signal
