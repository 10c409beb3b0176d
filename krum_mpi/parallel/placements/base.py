"""The interface every placement offers the step loop (krum_mpi.run.steps.StepLoop.run), and what
the placements share: the outcome of a step and the traffic record.

A step, written once in the loop, calls the placement's phases in this order on every rank:

    start_step   the stop check (and, where rank 0 holds the parameters, sending them out)
    (compute)    the loop: this rank's workers' gradients into their rows
    exchange     rows travel to where the rule runs (a gather, blocks of coordinates, a deadline)
    craft        the omniscient adversary writes the Byzantine rows where the honest ones meet
    aggregate    the rule: an Outcome (the update, or this rank's block of it, and the selection)
    apply        the SGD step, and the new parameters back on every rank that needs them
    (record)     the loop, on rank 0: loss, accuracy (``accuracy``, collective where the model is
                 split), timings, selection
    note_traffic every rank's bytes and phase seconds of the step reach rank 0 (``Traffic``)
    checkpoint   when one is due: the loop's ``save``; ``gather_state`` / ``state`` / ``restore`` /
                 ``share_restored_state`` carry the rule's state through it

A new placement is a new subclass; the loop does not change.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# the loop's clock marks of a step, in order (StepLoop.run): a placement names its four phases as
# spans between them
MARKS = ("top", "started", "computed", "exchanged", "crafted", "aggregated", "applied")


@dataclass
class Outcome:
    """What a step's rule gave: ``update`` (the whole update vector, or this rank's block of it),
    the selected worker ids (None: the rule selects nobody), the rule's weights, the workers whose
    rows took part (bool, n), distances recomputed to certify the selection, and per-shard: each
    block's selection ((ranks, width), -1 padded)."""
    update: np.ndarray
    selected: object
    weights: object
    present: np.ndarray
    recomputed: int = 0
    per_block: object = None


@dataclass
class Turn:
    """``start_step``'s answer: compute ``step``, or (``leave``) the run ends after ``step`` with
    ``signal`` (the stop signal; 0 at the natural end)."""
    step: int
    leave: bool = False
    signal: int = 0


class Placement:
    """Where rows travel and who holds what. Subclasses fill in the phases; the defaults here are
    the whole-vector ones (nothing to share, nothing to restore)."""

    PHASES = ""                       # names of the four phases of ``timing/rank_phase_s``
    PHASE_MARKS = (0, 1, 2, 3, 6)     # the marks (MARKS) between which those phases lie
    EXCHANGE_MARKS = (2, 3)           # the span recorded as ``gather_s``
    splits_params = False             # True: no rank holds the whole parameter vector (model parallel)
    drops_rows = False                # True: a step may go on without some rows (recorded as absent)
    momentum = None                   # server momentum (gather only); a checkpoint array when set

    def __init__(self, setup, comm):
        self.setup, self.comm = setup, comm
        self.honest = ~setup.byzantine
        self.meta = None               # rank 0: (n, 2) per worker: minibatch loss, compute seconds
        self.traffic = None            # rank 0: a Traffic, from the first step on
        self.traffic_mark = comm.traffic.copy()

    # -- the phases -------------------------------------------------------------------------
    def begin(self, theta: np.ndarray, save, writer, steps: int) -> None:
        """Once before the first step (every rank): ``save`` is the run's checkpoint function,
        ``writer`` the results (rank 0; None elsewhere), ``steps`` the run's length."""
        self.save, self.writer, self.steps = save, writer, steps

    def start_step(self, step: int, theta: np.ndarray, stop) -> Turn:
        raise NotImplementedError

    def exchange(self, step: int, workers) -> np.ndarray | None:
        """Returns the workers whose rows arrived (bool, n) where the rule runs, else None."""
        raise NotImplementedError

    def craft(self, step: int, present) -> None:
        raise NotImplementedError

    def aggregate(self, present) -> Outcome | None:
        """None on a rank that does not aggregate."""
        raise NotImplementedError

    def apply(self, theta: np.ndarray, outcome: Outcome | None) -> None:
        raise NotImplementedError

    def accuracy(self, theta: np.ndarray, X, y) -> float:
        """Accuracy on (X, y) (the test or the validation set) on rank 0, NaN elsewhere; collective
        where the model is split."""
        return self.setup.model.accuracy(theta, X, y) if self.comm.is_root else np.nan

    def nonfinite_rows(self, outcome: Outcome) -> int | None:
        """Rank 0: how many arrived rows hold NaN or Inf when the update is not finite, else None."""
        return None

    def note_traffic(self, step: int, outcome, marks) -> None:
        """Collective: every rank's bytes of this step and its phase seconds reach rank 0's tables."""
        comm = self.comm
        sent_received = comm.traffic - self.traffic_mark   # int64 counts: float64 holds them exactly
        self.traffic_mark = comm.traffic.copy()
        both = comm.gather_floats(np.concatenate([sent_received, np.diff(np.asarray(marks)[list(self.PHASE_MARKS)])]))
        if comm.is_root:   # one message per rank and step: a collective is the step's fixed cost
            table, phases = both[:, :2].astype(np.int64), both[:, 2:]
            if self.traffic is None:
                self.traffic = Traffic(self.steps, comm.size, self.writer, self.PHASES)
            self.traffic.note(step, table, None if outcome is None else outcome.per_block, phases)

    def checkpoint(self, step: int) -> None:
        """A checkpoint is due after ``step`` (collective on every rank by default)."""
        self.save(step, "running")

    def end(self, step: int, signal: int, left: bool):
        """After the last step (``left``: start_step said to leave): (last step done, signal)."""
        return step, signal

    # -- the rule's state through a checkpoint --------------------------------------------------
    def gather_state(self) -> None:
        """Collective, before each checkpoint: the state a resume needs reaches rank 0."""

    def state(self) -> dict:
        """Rank 0: arrays a checkpoint holds besides the parameters."""
        return {"server_momentum": self.momentum}

    def state_arrays(self) -> dict:
        """Rank 0: name -> (shape, dtype) of the checkpoint arrays ``state`` adds besides the
        server momentum and the gathered rule's own state (which resume.load knows)."""
        return {}

    def restore(self, checkpoint: dict) -> None:
        """Rank 0, on a resume: the checkpoint's arrays (``state``'s keys)."""

    def share_restored_state(self) -> None:
        """Collective, on a resume, after ``restore``: every rank takes its part of the state."""

    def momentum_rows(self) -> np.ndarray:
        """Rank 0: an (n, d) buffer for the workers' momentum rows of a checkpoint."""
        raise NotImplementedError


class Traffic:
    """Rank 0's (steps, ranks) tables of payload bytes sent and received per step, the phase
    seconds per step and rank, and per-shard's per-block selections: datasets of the results."""

    def __init__(self, steps: int, ranks: int, writer, phase_names: str):
        self.sent = np.full((steps, ranks), -1, dtype=np.int64)        # -1: step not run in this process
        self.received = np.full((steps, ranks), -1, dtype=np.int64)
        self.per_block = None
        self.phases = None
        self.writer, self.phase_names = writer, phase_names

    def note(self, step: int, table, per_block, phases) -> None:
        self.sent[step], self.received[step] = table[:, 0], table[:, 1]
        extra = self.writer.extra_datasets
        extra["comm/bytes_sent"], extra["comm/bytes_received"] = self.sent, self.received
        if self.phases is None:
            self.phases = np.full((len(self.sent),) + phases.shape, np.nan)
        self.phases[step] = phases
        extra["timing/rank_phase_s"] = self.phases
        self.writer.extra_attrs["rank_phases"] = self.phase_names
        if per_block is not None:
            if self.per_block is None:
                self.per_block = np.full((len(self.sent),) + per_block.shape, -1, dtype=np.int64)
            self.per_block[step] = per_block
            extra["selection/per_block"] = self.per_block
