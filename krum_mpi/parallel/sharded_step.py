"""The steps of a run with ``aggregator.placement = "sharded"`` or ``"per-shard"`` (docs/sharded.md).

Rank r owns the coordinates bounds[r]:bounds[r + 1] of every vector (uneven widths allowed):

    workers' rows (k_r, d) --Alltoallv--> block (n, w_r): every worker's coordinates of rank r
    sharded:   distances summed over the blocks (Allgather of (n, n) partials with their bounds),
               the same certified selection on every rank, rank r's block of the aggregate
    per-shard: the rule on rank r's block alone (each block selects on its own)
    theta[block] <- SGD step; Allgatherv: every rank gets the whole new theta

No rank ever holds another worker's whole gradient. Rank 0 records the step as in the gathered
placement, plus per step and rank the payload bytes sent and received (``comm/bytes_sent``,
``comm/bytes_received``), the seconds of each phase (``timing/rank_phase_s``, named by the
attribute ``rank_phases``; they add up to the rank's step; recorded for ``gather`` too) and, for
per-shard, each block's selection (``selection/per_block``).
"""
from __future__ import annotations

import numpy as np

from .. import aggregators, config
from . import sharded
from ..run.server import SEED_ATTACK


class ShardedStep:
    """Every rank's state for sharded steps: its block of the rows, the rule, the update."""

    def __init__(self, setup, cfg: dict, comm, bounds=None, index=None):
        """``bounds``, ``index``: the blocks of this rank's vector and which one it owns (model
        parallelism: its shard's); by default, d in comm.size blocks, the rank's own."""
        n, d = setup.n, setup.d
        agg = cfg["aggregator"]
        self.comm, self.setup = comm, setup
        self.placement, self.name, self.f = agg["placement"], agg["name"], agg["f"]
        self.options = config.aggregator_options(cfg)
        self.bounds = sharded.block_bounds(d, comm.size) if bounds is None else bounds
        index = comm.rank if index is None else index
        lo, hi = int(self.bounds[index]), int(self.bounds[index + 1])
        self.cols = slice(lo, hi)
        self.block = np.empty((n, hi - lo), dtype=np.float32)
        self.blocks = sharded.Blocks([self.block], comm.allgather_parts, comm.size)
        self.lr = np.float32(cfg["optimizer"]["lr"])
        self.meta = np.empty((n, 2), dtype=np.float64) if comm.is_root else None
        self.block_rule = aggregators.make(self.name, n, self.f, **self.options)   # per-shard: on this block
        self.max_selected = self.block_rule.max_selected
        crafts = setup.attack.kind not in ("none", "data") and not setup.colluding
        self.crafted_rows = np.flatnonzero(setup.byzantine) if crafts else np.zeros(0, dtype=np.int64)
        self.honest = ~setup.byzantine
        self.rule_state: dict = {}   # centered-clipping: {"center": this rank's block of the last aggregate}
        self.state_keys = self.block_rule.rule.state_keys   # what a checkpoint carries ("center", a step count)
        self.momentum = self.X = None   # no server momentum; X: rows of worker momentum for a checkpoint (train._saver)
        self.saved: dict = {}        # rank 0: the gathered state of the next checkpoint
        self.restored: dict = {}     # rank 0: the state read from the checkpoint on a resume
        self.recomputed = 0

    def begin(self, theta: np.ndarray) -> None:
        """Once before the steps: afterwards every rank updates its block and gathers the rest."""
        self.comm.bcast_params(theta)

    def accuracy(self, theta: np.ndarray) -> float:
        """Test accuracy (rank 0; NaN elsewhere). Collective for model parallelism (mp_step)."""
        s = self.setup
        return s.model.accuracy(theta, s.test_X, s.test_y) if self.comm.is_root else np.nan

    def exchange(self, rows: np.ndarray, meta: np.ndarray) -> None:
        self.comm.alltoall_row_blocks(rows, self.bounds, self.block)
        self.comm.gather_rows(meta, self.meta, phase="gather_meta")

    def craft(self, step: int) -> None:
        """Omniscient adversary, block by block (sharded.BLOCKWISE_ATTACKS): each rank crafts the
        Byzantine rows' coordinates of its block from the honest rows' coordinates there, which
        are the values Server.craft gives those coordinates under the gathered placement."""
        if self.crafted_rows.size == 0:
            return
        rng = np.random.default_rng([self.setup.seed, SEED_ATTACK, step])
        crafted = self.setup.attack.craft(self.block[self.honest], self.crafted_rows.size, rng, aggregate=None,
                                          columns=(self.cols.start, self.setup.d))
        self.block[self.crafted_rows] = np.asarray(crafted, dtype=np.float32)

    def aggregate(self):
        """(this rank's block of the aggregate, selected, weights, per-block selections or None)."""
        if self.placement == "sharded":
            result = sharded.aggregate(self.name, self.blocks, self.f, self.options, self.rule_state)
            if self.name.endswith("centered-clipping"):
                self.rule_state = {"center": result.vectors}
            self.recomputed += result.recomputed
            return result.vectors[0], result.selected, result.weights, None
        result = self.block_rule(self.block)   # kept across steps: a stateful rule keeps its block's state
        width = max(1, self.max_selected)
        mine = np.full((1, width), -1.0)
        if result.selected is not None:
            mine[0, :len(result.selected)] = result.selected[:width]
        table = self.comm.allgather_parts(mine).astype(np.int64)   # (ranks, width), -1: empty
        vector = np.asarray(result.vector, dtype=np.float32)
        return vector, table[0][table[0] >= 0], None, table

    def apply(self, theta: np.ndarray, g: np.ndarray) -> None:
        theta[self.cols] -= self.lr * g
        self.comm.allgatherv_params(theta, self.bounds)

    def _centre_block(self):
        """This rank's block of centered clipping's centre, float32 (zeros before the first step,
        as the rule starts from zeros)."""
        if self.placement == "sharded":
            centre = self.rule_state.get("center")
            centre = None if centre is None else centre[0]
        else:
            centre = self.block_rule.state.get("center")
        width = self.cols.stop - self.cols.start
        return np.zeros(width, dtype=np.float32) if centre is None else np.asarray(centre, dtype=np.float32)

    def gather_state(self) -> None:
        """Collective, before each checkpoint: the rule's state reaches rank 0 (``state``). Every rank's
        block of the centre becomes one (d,) float32 array; the blocks travel zero-padded to the
        widest block as float64, which holds every float32 exactly. Scalar state (per-shard: the step
        count of a chained rule, the same on every rank) is rank 0's own."""
        self.saved = {}
        if "center" in self.state_keys:
            widths = np.diff(self.bounds)
            padded = np.zeros(int(widths.max()), dtype=np.float64)
            padded[:widths[self.comm.rank]] = self._centre_block()
            parts = self.comm.gather_floats(padded)
            if self.comm.is_root:
                self.saved["aggregator_state.center"] = np.concatenate(
                    [parts[r, :widths[r]] for r in range(self.comm.size)]).astype(np.float32)
        if self.comm.is_root and self.placement == "per-shard":
            for key, value in self.block_rule.state.items():
                if key != "center":
                    self.saved[f"aggregator_state.{key}"] = np.asarray(value)

    def state(self) -> dict:
        """Server state a resume needs (train.py's checkpoint): the rule's state gathered by
        ``gather_state`` (no server momentum under this placement)."""
        return {"server_momentum": None, **self.saved}

    def restore(self, checkpoint: dict) -> None:
        """Rank 0: keep the checkpoint's rule state until ``share_restored_state`` hands it out."""
        self.restored = {k[len("aggregator_state."):]: v for k, v in checkpoint.items()
                         if k.startswith("aggregator_state.")}

    def share_restored_state(self) -> None:
        """Collective, on a resume: rank 0 broadcasts the centre (each rank keeps its block) and any
        scalar state, so the resumed steps continue from the state the checkpoint saved."""
        restored = self.restored if self.comm.is_root else {}
        for key in self.state_keys:
            if key == "center":
                if not self.comm.bcast_flag(int("center" in restored)):
                    continue
                full = (restored["center"].astype(np.float32) if self.comm.is_root
                        else np.empty(self.setup.d, dtype=np.float32))
                self.comm.bcast_params(full)
                block = full[self.cols].copy()
                if self.placement == "sharded":
                    self.rule_state = {"center": [block]}
                else:
                    self.block_rule.state["center"] = block
            elif self.placement == "per-shard":
                value = self.comm.bcast_flag(int(restored[key]) if key in restored else -1)
                if value >= 0:
                    self.block_rule.state[key] = value


GATHER_PHASES = "stop check and Bcast of the parameters, compute, Gatherv of rows and metadata, rule and update (rank 0)"
SHARDED_PHASES = "stop check and compute, Alltoallv of row blocks (and crafting), rule, update and allgather of the parameters"


class Traffic:
    """Rank 0's (steps, ranks) tables of bytes sent and received per step, and per-block selections."""

    def __init__(self, steps: int, ranks: int, writer):
        self.sent = np.full((steps, ranks), -1, dtype=np.int64)        # -1: step not run in this process
        self.received = np.full((steps, ranks), -1, dtype=np.int64)
        self.per_block = None
        self.phases = None   # (steps, ranks, PHASES) seconds, sharded placements only
        self.writer = writer

    def note(self, step: int, table, per_block=None, phases=None) -> None:
        self.sent[step], self.received[step] = table[:, 0], table[:, 1]
        extra = self.writer.extra_datasets
        extra["comm/bytes_sent"], extra["comm/bytes_received"] = self.sent, self.received
        if phases is not None:
            if self.phases is None:
                self.phases = np.full((len(self.sent),) + phases.shape, np.nan)
            self.phases[step] = phases
            extra["timing/rank_phase_s"] = self.phases
            placement = self.writer.cfg["aggregator"].get("placement", "gather")
            self.writer.extra_attrs["rank_phases"] = GATHER_PHASES if placement == "gather" else SHARDED_PHASES
        if per_block is not None:
            if self.per_block is None:
                self.per_block = np.full((len(self.sent),) + per_block.shape, -1, dtype=np.int64)
            self.per_block[step] = per_block
            extra["selection/per_block"] = self.per_block


def note_traffic(loop, step: int, per_block=None, phases=None) -> None:
    """Collective: every rank's bytes of this step (and its phase times, when given) reach rank 0's tables."""
    table = loop.comm.gather_traffic(loop.traffic_mark)
    loop.traffic_mark = loop.comm.traffic.copy()
    phases = None if phases is None else loop.comm.gather_floats(phases)
    if loop.comm.is_root:
        if loop.traffic is None:
            loop.traffic = Traffic(loop.steps, loop.comm.size, loop.writer)
        loop.traffic.note(step, table, per_block, phases)


def run_sharded(loop, start: int):
    """The step loop of a sharded or per-shard run (StepLoop.run); returns (last step done, signal)."""
    comm, work, workers, theta = loop.comm, loop.sharded, loop.workers, loop.theta
    work.begin(theta)
    step = start - 1
    for step in range(start, loop.steps):
        t_step = comm.wtime()
        if comm.any_true(loop.stop.signal != 0):
            return step - 1, loop.stop.signal or -1
        loop._compute(step)
        t_exchange = comm.wtime()
        work.exchange(workers.rows, workers.meta)
        work.craft(step)
        t_agg = comm.wtime()
        g, selected, weights, per_block = work.aggregate()
        t_upd = comm.wtime()
        work.apply(theta, g)
        g = None   # dead now: freed before the next step's aggregate exists (a block of d / ranks floats)
        t_end = comm.wtime()
        timing = {"gather_s": t_agg - t_exchange, "aggregate_s": t_upd - t_agg, "update_s": t_end - t_upd,
                  "step_s": t_end - t_step}
        evaluate = (step + 1) % loop.eval_every == 0 or step == loop.steps - 1
        acc = work.accuracy(theta) if evaluate else np.nan
        if comm.is_root:
            record(loop, step, timing, selected, weights, acc)
        phases = np.array([t_exchange - t_step, timing["gather_s"], timing["aggregate_s"], timing["update_s"]])
        note_traffic(loop, step, per_block, phases)
        if loop._flush_due(step):
            loop.save(step, "running")
    return step, 0


def record(loop, step: int, timing: dict, selected, weights, acc: float) -> None:
    s, meta = loop.s, loop.sharded.meta
    honest = ~s.byzantine
    loss = float(np.mean(meta[honest, 0])) if honest.any() else float("nan")
    timing = {"compute_s": float(meta[:, 1].max()), **timing}
    loop.writer.record(step, loss, acc, timing, selected, weights, worker_compute_s=meta[:, 1])
    loop.writer.extra_attrs["recomputed_distances"] = loop.sharded.recomputed
    if loop.watchdog is not None:
        loop.watchdog.beat(timing["step_s"])
    if loop.progress is not None:
        loop.progress.update(step + 1, loss=loss, acc=float(acc))
