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
"""
from __future__ import annotations

import numpy as np

from .. import sharded
from ..groups import ModelGroups
from .blocks import ShardedPlacement

UPDATE_CHUNK = 1 << 20


def connect(setup, comm) -> ModelGroups:
    """Collective: the group and column communicators, and the split model's gather over its group."""
    groups = ModelGroups(comm, setup.grid.p, setup.n)
    setup.model.gather = groups.gather
    return groups


class ModelParallelPlacement(ShardedPlacement):
    """Rank (g, s): sub-block g of shard s of every row, the sharded rule, the update of its block.
    The blocks are the split model's shards: the exchange runs in the shard's column."""

    splits_params = True

    def __init__(self, setup, cfg, comm, groups: ModelGroups):
        grid = setup.grid
        super().__init__(setup, cfg, comm, sharded.block_bounds(setup.d, grid.groups), grid.group_id)
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
