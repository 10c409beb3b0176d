"""Each rank holds a coordinate block of every row: ``aggregator.placement = "sharded"`` or
``"per-shard"`` (docs/sharded.md).

Rank r owns the coordinates bounds[r]:bounds[r + 1] of every vector (uneven widths allowed):

    workers' rows (k_r, d) --Alltoallv--> block (n, w_r): every worker's coordinates of rank r
    sharded:   distances summed over the blocks (Allgather of (n, n) partials with their bounds),
               the same certified selection on every rank, rank r's block of the aggregate
    per-shard: the rule on rank r's block alone (each block selects on its own)
    theta[block] <- SGD step; Allgatherv: every rank gets the whole new theta

No rank ever holds another worker's whole gradient, at d >= ``aggregator.sharded_min_d``. Below it
(``exchange_for``) a step costs its collectives, not its bytes, and ``placement = "sharded"`` makes
the gather's exchange instead (``SmallShardedPlacement``: rank 0 holds every row and runs the same
rule on them, so the selections and parameters are the same, bit for bit), unless Byzantine ranks
or replicated blocks are configured: their threat and their defence live in the sharded exchange.
The results file says which exchange ran and why (attributes ``exchange``, ``exchange_reason``).

Rank 0 records the step as in the gathered
placement, plus per step and rank the payload bytes sent and received (``comm/bytes_sent``,
``comm/bytes_received``), the seconds of each phase (``timing/rank_phase_s``, named by the
attribute ``rank_phases``) and, for per-shard, each block's selection (``selection/per_block``).
"""
from __future__ import annotations

import numpy as np

from ... import aggregators
from .. import sharded
from ..byzantine_ranks import SHARDED_BEHAVIOURS
from ...run.server import SEED_ATTACK
from .base import Outcome, Placement, Turn
from .gather import GatherPlacement

SHARDED_PHASES = ("stop check and compute, Alltoallv of row blocks (and crafting), rule, "
                  "update and allgather of the parameters")


def exchange_for(cfg, d: int) -> tuple[str, str]:
    """("sharded" or "gather", why): the exchange of ``placement = "sharded"`` (and of model
    parallelism, d its whole model) for d parameters. Corrupt activations lie inside the model
    groups' compute, not in the exchange: they leave the choice to d."""
    least = cfg.aggregator.sharded_min_d
    if d >= least:
        return "sharded", f"d = {d} >= aggregator.sharded_min_d = {least}"
    if cfg.byzantine_ranks.behaviour in SHARDED_BEHAVIOURS:   # their lies (and any defence) live there
        return "sharded", f"byzantine_ranks.ranks = {list(cfg.byzantine_ranks.ranks)} lie in the sharded exchange"
    replicas = getattr(cfg.aggregator, "replicas", 1)   # replicated blocks defend the sharded exchange
    if replicas > 1:
        return "sharded", f"aggregator.replicas = {replicas} replicate the sharded exchange's blocks"
    return "gather", (f"d = {d} < aggregator.sharded_min_d = {least}: rank 0 gathers the rows (fewer "
                      "collectives per step; the same rule, so the same selections)")


def sharded_placement(setup, cfg, comm) -> Placement:
    """``placement = "sharded"``: the exchange ``exchange_for`` chooses (module doc)."""
    exchange, why = exchange_for(cfg, setup.d)
    if exchange == "gather":
        return SmallShardedPlacement(setup, cfg, comm, why)
    return ShardedPlacement(setup, cfg, comm, why=why)


def record_exchange(writer, exchange: str, why: str) -> None:
    """Rank 0: which exchange the run makes, and why, as attributes of the results file."""
    if writer is not None:
        writer.extra_attrs.update(exchange=exchange, exchange_reason=why)


class SmallShardedPlacement(GatherPlacement):
    """``placement = "sharded"`` below ``aggregator.sharded_min_d``: the gather's exchange and rule."""

    def __init__(self, setup, cfg, comm, why: str):
        super().__init__(setup, cfg, comm)
        self.why = why

    def begin(self, theta: np.ndarray, save, writer, steps: int) -> None:
        super().begin(theta, save, writer, steps)
        record_exchange(writer, "gather", self.why)


class BlockPlacement(Placement):
    """Every rank's block of the rows, the update of its block; the rule is the subclass's."""

    PHASES = SHARDED_PHASES
    PHASE_MARKS = (0, 2, 4, 5, 6)   # the stop check with the compute; the craft with the exchange
    EXCHANGE_MARKS = (2, 4)

    def __init__(self, setup, cfg, comm, bounds=None, index=None):
        """``bounds``, ``index``: the blocks of this rank's vector and which one it owns (model
        parallelism: its shard's); by default, d in comm.size blocks, the rank's own."""
        super().__init__(setup, comm)
        n, d = setup.n, setup.d
        agg = cfg.aggregator
        self.name, self.f = agg.name, agg.f
        self.options = agg.option_kwargs()
        self.bounds = sharded.block_bounds(d, comm.size) if bounds is None else bounds
        index = comm.rank if index is None else index
        lo, hi = int(self.bounds[index]), int(self.bounds[index + 1])
        self.cols = slice(lo, hi)
        self.block = np.empty((n, hi - lo), dtype=np.float32)
        self.blocks = sharded.Blocks([self.block], comm.allgather_parts, comm.size)
        self.lr = np.float32(cfg.optimizer.lr)
        self.meta = np.empty((n, 2), dtype=np.float64) if comm.is_root else None
        self.block_rule = aggregators.make(self.name, n, self.f, **self.options)
        crafts = setup.attack.kind not in ("none", "data") and not setup.colluding
        self.crafted_rows = np.flatnonzero(setup.byzantine) if crafts else np.zeros(0, dtype=np.int64)
        self.everyone = np.ones(n, dtype=bool)
        self.state_keys = self.block_rule.rule.state_keys   # what a checkpoint carries ("center", a step count)
        self.X = None             # rank 0: rows of worker momentum for a checkpoint (momentum_rows)
        self.saved: dict = {}     # rank 0: the gathered state of the next checkpoint
        self.restored: dict = {}  # rank 0: the state read from the checkpoint on a resume

    def begin(self, theta: np.ndarray, save, writer, steps: int) -> None:
        super().begin(theta, save, writer, steps)
        self.share_first_params(theta)

    def share_first_params(self, theta: np.ndarray) -> None:
        """Rank 0's parameters on every rank: afterwards every rank updates its block and gathers the rest."""
        self.comm.bcast_params(theta)

    def start_step(self, step: int, theta: np.ndarray, stop) -> Turn:
        if self.comm.any_true(stop.signal != 0):
            return Turn(step - 1, leave=True, signal=stop.signal or -1)
        return Turn(step)

    def exchange(self, step: int, workers):
        self.comm.alltoall_row_blocks(workers.rows, self.bounds, self.block)
        self.comm.gather_rows(workers.meta, self.meta, phase="gather_meta")
        return self.everyone

    def craft(self, step: int, present) -> None:
        """Omniscient adversary, block by block (sharded.BLOCKWISE_ATTACKS): each rank crafts the
        Byzantine rows' coordinates of its block from the honest rows' coordinates there, which
        are the values Server.craft gives those coordinates under the gathered placement."""
        if self.crafted_rows.size == 0:
            return
        rng = np.random.default_rng([self.setup.seed, SEED_ATTACK, step])
        crafted = self.setup.attack.craft(self.block[self.honest], self.crafted_rows.size, rng, aggregate=None,
                                          columns=(self.cols.start, self.setup.d))
        self.block[self.crafted_rows] = np.asarray(crafted, dtype=np.float32)

    def apply(self, theta: np.ndarray, outcome) -> None:
        theta[self.cols] -= self.lr * outcome.update
        self.comm.allgatherv_params(theta, self.bounds)

    def momentum_rows(self) -> np.ndarray:
        if self.X is None:   # no (n, d) buffer until a checkpoint needs the workers' momentum
            self.X = np.empty((self.setup.n, self.setup.d), dtype=np.float32)
        return self.X

    # -- the rule's state ------------------------------------------------------------------
    def centre_block(self):
        """This rank's block of centered clipping's centre, or None before the first step."""
        raise NotImplementedError

    def set_state(self, key: str, value) -> None:
        """On a resume: this rank's part of the rule's state ``key`` (the centre: its block)."""
        raise NotImplementedError

    def gather_state(self) -> None:
        """Collective, before each checkpoint: the rule's state reaches rank 0 (``state``). Every rank's
        block of the centre becomes one (d,) float32 array (zeros before the first step, as the rule
        starts from zeros); the blocks travel zero-padded to the widest block as float64, which
        holds every float32 exactly. Scalar state (per-shard: the step count of a chained rule, the
        same on every rank) is rank 0's own."""
        self.saved = {}
        if "center" in self.state_keys:
            widths = np.diff(self.bounds)
            parts = self.comm.gather_floats(self.padded_centre(widths))
            if self.comm.is_root:
                self.saved["aggregator_state.center"] = np.concatenate(
                    [parts[r, :widths[r]] for r in range(self.comm.size)]).astype(np.float32)
        if self.comm.is_root:
            self.saved.update(self.scalar_state())

    def padded_centre(self, widths) -> np.ndarray:
        """This rank's block of the centre as float64, zero-padded to the widest block (zeros where
        it holds none yet)."""
        padded = np.zeros(int(widths.max()), dtype=np.float64)
        centre = self.centre_block()
        if centre is not None:
            padded[:len(centre)] = np.asarray(centre, dtype=np.float32)
        return padded

    def scalar_state(self) -> dict:
        return {}

    def state(self) -> dict:
        """No server momentum under this placement; the rule's state gathered by ``gather_state``."""
        return {"server_momentum": None, **self.saved}

    def state_arrays(self) -> dict:
        """The centre, gathered whole from the ranks' blocks (``gather_state``)."""
        return {"aggregator_state.center": ((self.setup.d,), "float32")} if "center" in self.state_keys else {}

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
                self.set_state("center", full[self.cols].copy())
            else:
                self.share_scalar(key, restored)

    def share_scalar(self, key: str, restored: dict) -> None:
        """Scalar rule state: only per-shard keeps any (sharded rules hold a centre at most)."""


class ShardedPlacement(BlockPlacement):
    """Exact: the rule's decision from distances summed over every block, the same on every rank."""

    def __init__(self, setup, cfg, comm, bounds=None, index=None, why: str = ""):
        super().__init__(setup, cfg, comm, bounds, index)
        self.rule_state: dict = {}   # centered-clipping: {"center": [this rank's block of the last aggregate]}
        self.why = why               # why the sharded exchange ("": model parallelism, always sharded)

    def begin(self, theta: np.ndarray, save, writer, steps: int) -> None:
        super().begin(theta, save, writer, steps)
        if self.why:
            record_exchange(writer, "sharded", self.why)

    def aggregate(self, present):
        result = sharded.aggregate(self.name, self.blocks, self.f, self.options, self.rule_state)
        if self.name.endswith("centered-clipping"):
            self.rule_state = {"center": result.vectors}
        return Outcome(result.vectors[0], result.selected, result.weights, present, result.recomputed)

    def centre_block(self):
        centre = self.rule_state.get("center")
        return None if centre is None else centre[0]

    def set_state(self, key: str, value) -> None:
        self.rule_state = {key: [value]}


class PerShardPlacement(BlockPlacement):
    """The naive baseline: the rule on this rank's block alone; each block selects on its own."""

    def __init__(self, setup, cfg, comm):
        super().__init__(setup, cfg, comm)
        self.width = max(1, self.block_rule.max_selected)

    def aggregate(self, present):
        result = self.block_rule(self.block)   # kept across steps: a stateful rule keeps its block's state
        mine = np.full((1, self.width), -1.0)
        if result.selected is not None:
            mine[0, :len(result.selected)] = result.selected[:self.width]
        table = self.comm.allgather_parts(mine).astype(np.int64)   # (ranks, width), -1: empty
        vector = np.asarray(result.vector, dtype=np.float32)
        return Outcome(vector, table[0][table[0] >= 0], None, present, result.recomputed, per_block=table)

    def centre_block(self):
        return self.block_rule.state.get("center")

    def set_state(self, key: str, value) -> None:
        self.block_rule.state[key] = value

    def scalar_state(self) -> dict:
        return {f"aggregator_state.{k}": np.asarray(v) for k, v in self.block_rule.state.items() if k != "center"}

    def share_scalar(self, key: str, restored: dict) -> None:
        value = self.comm.bcast_flag(int(restored[key]) if key in restored else -1)
        if value >= 0:
            self.block_rule.state[key] = value
