"""The model-parallel placement (``parallel.model = p``, docs/sharded.md "Model parallelism").

Rank (g, s) = g * p + s holds shard s of the parameters (model_parallel.ShardLayout), never the
whole vector. A step, in the one step loop (krum_mpi.run.steps):

    every rank of group g: the split MLP's forward and backward for all the group's workers at once
        (one sum over the group per exchange point, for them all) -> the gradient block of shard s:
        rows (k_g, m_s)
    shard column s: Alltoallv -> block (n, w): every worker's coordinates of sub-block g of shard s
    sharded.aggregate over all R blocks (Allgather of partials, fixed order): the same certified
        selection on every rank, and this rank's block of the aggregate
    theta[sub-block g] <- SGD step; Allgatherv in the column: shard s whole on every rank (g, s);
        shard 0 broadcasts the replicated biases of the row-parallel layers in its group

With one group (G = 1) a rank's rows already are its block: nothing is exchanged or copied.
Its checkpoints hold the shards one by one (mp_state), never the whole vector.

Below ``aggregator.sharded_min_d`` (the whole model's d; blocks.exchange_for) a step costs its
collectives, not its bytes: ``SmallModelPlacement`` makes the gather's exchange instead. Rank 0
gathers every rank's rows (one Gatherv) into the gather's (n, d) buffer, shard after shard, and
runs the gather's server on it (the same craft and rule, run.server.Server: the rules are exact, so
the selections and aggregates are the blocks', bit for bit); one Bcast sends the update back, and
each rank steps its shard and its copies of shard 0's biases with it (the values shard 0's
broadcast would bring). The results file records the exchange and why (``exchange``,
``exchange_reason``), as under placement "sharded".
"""
from __future__ import annotations

import copy

import numpy as np

from .. import sharded
from ..groups import ModelGroups
from .blocks import ShardedPlacement, exchange_for, record_exchange
from .base import Turn
from .gather import GatherPlacement

UPDATE_CHUNK = 1 << 20


def connect(setup, comm) -> ModelGroups:
    """Collective: the group and column communicators, and the split model's gather and sharing of
    minibatches over its group."""
    groups = ModelGroups(comm, setup.grid.p, setup.n)
    setup.model.gather, setup.model.share = groups.gather, groups.allgather_bytes
    return groups


def model_placement(setup, cfg, comm):
    """Collective (the group communicators): the exchange ``exchange_for`` chooses for the whole model."""
    exchange, why = exchange_for(cfg, setup.d_total)
    if exchange == "gather":
        return SmallModelPlacement(setup, cfg, comm, connect(setup, comm), why)
    return ModelParallelPlacement(setup, cfg, comm, connect(setup, comm), why)


class ModelParallelPlacement(ShardedPlacement):
    """Rank (g, s): sub-block g of shard s of every row, the sharded rule, the update of its block.
    The blocks are the split model's shards: the exchange runs in the shard's column."""

    splits_params = True

    def __init__(self, setup, cfg, comm, groups: ModelGroups, why: str):
        grid = setup.grid
        super().__init__(setup, cfg, comm, sharded.block_bounds(setup.d, grid.groups), grid.group_id, why=why)
        self.grid, self.groups, self.column = grid, groups, groups.column
        if grid.groups == 1:
            self.block = None   # the rows are the block (bound at each exchange): no second copy

    def share_first_params(self, theta: np.ndarray) -> None:
        """Every rank starts from its own shard (seeded or restored); the bias copies from shard 0."""
        self.sync_replicas(theta)

    def sync_replicas(self, theta: np.ndarray) -> None:
        self.groups.bcast_from_shard0(self.setup.model.replica_views(theta))

    def accuracy(self, theta: np.ndarray, X, y) -> float:
        """Collective in group 0, which computes the split forward pass on (X, y) (rank 0 records it)."""
        return self.setup.model.accuracy(theta, X, y) if self.grid.group_id == 0 else np.nan

    def exchange(self, step: int, workers):
        rows = workers.rows
        if self.grid.groups == 1:
            self.block = rows
            self.blocks = sharded.Blocks([rows], self.comm.allgather_parts, self.comm.size)
        else:
            self.column.alltoall_row_blocks(rows, self.bounds, self.block)
        # every shard of a group has its workers' losses: shard 0 reports them (the world layout)
        meta = workers.meta
        self.comm.gather_rows(meta if self.grid.shard == 0 else meta[:0], self.meta, phase="gather_meta")
        return self.everyone

    def apply(self, theta: np.ndarray, outcome) -> None:
        g = outcome.update
        mine = theta[self.cols]
        for i in range(0, g.size, UPDATE_CHUNK):   # no temporary the size of the block: memory is the point
            mine[i:i + UPDATE_CHUNK] -= self.lr * g[i:i + UPDATE_CHUNK]
        if self.grid.groups > 1:
            self.column.allgatherv_params(theta, self.bounds)
        self.sync_replicas(theta)


class SmallModelPlacement(GatherPlacement):
    """Model parallelism below ``aggregator.sharded_min_d``: the gather's exchange, server and rule on
    the whole model's rows (module doc). Every rank keeps its shard: nothing but the update travels back."""

    PHASES = ("stop check, compute, Gatherv of the shards' rows with the metadata, rule (rank 0), Bcast of the "
              "update and the step of every shard")
    splits_params = True

    def __init__(self, setup, cfg, comm, groups: ModelGroups, why: str):
        whole = copy.copy(setup)   # rank 0's server holds (n, d) rows of the whole model
        whole.d = setup.d_total
        super().__init__(whole, cfg, comm)
        grid = self.grid = setup.grid
        self.groups, self.why = groups, why
        self.lr = np.float32(cfg.optimizer.lr)
        sizes = grid.layout.sizes
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)   # shard s: starts[s]:starts[s + 1]
        # what rank r = (g, s) sends: its (k_g, m_s) float32 rows, then (shard 0) its workers' (k_g, 2)
        # float64 metadata, as raw bytes: one Gatherv for both (a collective is the step's cost here)
        self.row_bytes = [4 * int(grid.counts[r // grid.p]) * sizes[r % grid.p] for r in range(comm.size)]
        self.counts = [b + (16 * int(grid.counts[r // grid.p]) if r % grid.p == 0 else 0)
                       for r, b in enumerate(self.row_bytes)]
        self.sent = np.empty(self.counts[comm.rank], dtype=np.uint8)
        self.incoming = np.empty(sum(self.counts), dtype=np.uint8) if comm.is_root else None
        self.update = np.empty(setup.d_total, dtype=np.float32)

    def begin(self, theta: np.ndarray, save, writer, steps: int) -> None:
        super().begin(theta, save, writer, steps)
        self.groups.bcast_from_shard0(self.setup.model.replica_views(theta))   # the bias copies, from shard 0
        record_exchange(writer, "gather", self.why)

    def start_step(self, step: int, theta: np.ndarray, stop) -> Turn:
        if self.comm.any_true(stop.signal != 0):   # every rank holds its shard: no parameters to send
            return Turn(step - 1, leave=True, signal=stop.signal or -1)
        return Turn(step)

    def exchange(self, step: int, workers):
        grid, X, sent = self.grid, None if self.server is None else self.server.X, self.sent
        at = self.row_bytes[self.comm.rank]
        sent[:at] = workers.rows.reshape(-1).view(np.uint8)
        if grid.shard == 0:   # every shard of a group has its workers' losses: shard 0 reports them
            sent[at:] = np.ascontiguousarray(workers.meta).reshape(-1).view(np.uint8)
        self.groups.gather_bytes(sent, self.incoming, self.counts)
        if X is None:
            return None
        at = 0
        for r, count in enumerate(self.counts):   # rank (g, s): group g's workers, shard s's columns
            g, s = divmod(r, grid.p)
            ids = slice(int(grid.displs[g]), int(grid.displs[g] + grid.counts[g]))
            rows = X[ids, self.starts[s]:self.starts[s + 1]]
            rows[...] = self.incoming[at:at + self.row_bytes[r]].view(np.float32).reshape(rows.shape)
            if s == 0:
                self.meta[ids] = self.incoming[at + self.row_bytes[r]:at + count].view(np.float64).reshape(-1, 2)
            at += count
        return self.everyone

    def apply(self, theta: np.ndarray, outcome) -> None:
        """theta <- theta - lr * update, elementwise as the blocks' step; shard 0's row-parallel biases
        stepped by the same values in every copy, so they stay bitwise shard 0's."""
        update = self.update
        if outcome is not None:
            update[...] = outcome.update
        self.comm.bcast_params(update)
        s, layout = self.grid.shard, self.grid.layout
        theta -= self.lr * update[self.starts[s]:self.starts[s + 1]]
        if s != 0:
            owned = [b for (W, b), kind in zip(layout.views(update[:self.starts[1]], 0), layout.kinds) if kind == "row"]
            for copy_, step in zip(self.setup.model.replica_views(theta), owned):
                copy_ -= self.lr * step

    def accuracy(self, theta: np.ndarray, X, y) -> float:
        """Collective in group 0, which computes the split forward pass on (X, y) (rank 0 records it)."""
        return self.setup.model.accuracy(theta, X, y) if self.grid.group_id == 0 else np.nan

    def nonfinite_rows(self, outcome):
        """As the blocks' exchange (which cannot count them): not counted, so both exchanges record the same."""
        return None

    def momentum_rows(self) -> np.ndarray:
        raise NotImplementedError("model parallelism checkpoints the workers' momentum shard by shard (mp_state)")
