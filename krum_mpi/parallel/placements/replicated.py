"""The sharded placement with replicated blocks and Byzantine ranks (docs/sharded.md "Byzantine ranks").

``aggregator.replicas = r``: the R ranks hold B = R // r coordinate blocks, each block on at least r
ranks (parallel/replicas.py: rank q holds block q % B). Every replica receives its block's columns
of every row (the Alltoallv sends each block to each replica), computes the block's partial distances and its block
of the aggregate; receivers take, value by value, what a majority of the replicas sent, in the
Allgather of the partials (every refinement level) and in the Allgatherv of the updated parameters.
With r = 1 this is the sharded placement, plus what a Byzantine rank does:

    lie-distances  its partial distances as byzantine_ranks.DistanceLie reports them; its block of
                   the aggregate is its block of the row it wanted selected
    corrupt-block  its block of the aggregate as byzantine_ranks.BlockCorruption makes it

A lying rank receives the majority like every other rank, so it takes part in the same collectives
in the same order (a rule refines only the pairs that everyone's sums make uncertain).

Rank 0 records per step and rank the values that rank sent and the vote overruled
(``replicas/outvoted``, with the attribute ``replica_block_of_rank``: which block each rank holds),
and for lie-distances the worker each lying rank wanted selected (``byzantine_ranks/wanted``).
Both are written like ``comm/*``: -1 for the steps this process did not run.
"""
from __future__ import annotations

import numpy as np

from .. import byzantine_ranks, sharded
from ..replicas import Vote
from .blocks import ShardedPlacement, exchange_for


class ReplicatedPlacement(ShardedPlacement):
    """Sharded, each block on ``aggregator.replicas`` ranks, majority on receipt; Byzantine ranks."""

    def __init__(self, setup, cfg, comm):
        r = cfg.aggregator.replicas
        self.vote = Vote(comm.size, r)
        index = int(self.vote.block_of_rank[comm.rank])
        super().__init__(setup, cfg, comm, sharded.block_bounds(setup.d, self.vote.blocks), index,
                         why=exchange_for(cfg, setup.d)[1])   # the block exchange at any d: recorded why
        self.rank_widths = np.diff(self.bounds)[self.vote.block_of_rank]
        self.rank_bounds = np.concatenate([[0], np.cumsum(self.rank_widths)]).astype(np.int64)
        self.blocks = sharded.Blocks([self.block], self.gather_voted, self.vote.blocks)
        section = cfg.byzantine_ranks
        self.lying = list(section.ranks) if section.behaviour == "lie-distances" else []
        self.lie = self.corrupt = None
        if comm.rank in section.ranks:
            if section.behaviour == "lie-distances":
                self.lie = self.blocks.lie = byzantine_ranks.DistanceLie(cfg, comm.rank, setup.byzantine)
            elif section.behaviour == "corrupt-block":
                self.corrupt = byzantine_ranks.BlockCorruption(cfg, comm.rank)
        self.step = 0
        self.evidence: dict = {}   # rank 0: name -> (steps, ...) int64 table

    def gather_voted(self, local: np.ndarray) -> np.ndarray:
        """The blocks' partials from every replica, the majority of each block's (B, ...)."""
        return self.vote.parts(self.comm.allgather_parts(local))

    def exchange(self, step: int, workers):
        self.step = step
        self.vote.reset()
        if self.lie is not None:
            self.lie.at(step)
        self.comm.alltoall_row_blocks(workers.rows, self.bounds, self.block, self.vote.block_of_rank)
        self.comm.gather_rows(workers.meta, self.meta, phase="gather_meta")
        return self.everyone

    def aggregate(self, present):
        outcome = super().aggregate(present)   # on the voted partials: what the honest ranks compute
        if self.lie is not None:               # its block of the aggregate it wanted: row target's
            outcome.update = self.block[self.lie.target].copy()
        elif self.corrupt is not None:
            outcome.update = self.corrupt(outcome.update, self.step)
        return outcome

    def apply(self, theta: np.ndarray, outcome) -> None:
        theta[self.cols] -= self.lr * outcome.update
        if self.vote.r == 1:
            self.comm.allgatherv_params(theta, self.bounds)
            return
        # every rank's block, in rank order (each block once per replica), by comm's exchange of a
        # vector's blocks: one Allgatherv when small, one Bcast per block above 1 MB (MPICH's
        # Allgatherv of 3 x 4.2 MB on 6 ranks took 2.5-3.1 s, the Bcasts 0.12-0.16 s)
        flat = np.empty(self.rank_bounds[-1], dtype=np.float32)
        flat[self.rank_bounds[self.comm.rank]:self.rank_bounds[self.comm.rank + 1]] = theta[self.cols]
        self.comm.allgatherv_params(flat, self.rank_bounds)
        for b, block in enumerate(self.vote.segments(flat, self.rank_widths)):
            theta[self.bounds[b]:self.bounds[b + 1]] = block

    def note_traffic(self, step: int, outcome, marks) -> None:
        super().note_traffic(step, outcome, marks)
        if not self.comm.is_root:
            return
        if self.vote.r > 1:
            self.note("replicas/outvoted", step, self.vote.outvoted)
            self.writer.extra_attrs["replica_block_of_rank"] = [int(b) for b in self.vote.block_of_rank]
        if self.lying:
            candidates = byzantine_ranks.lie_candidates(self.setup.byzantine)
            self.note("byzantine_ranks/wanted", step,
                      [byzantine_ranks.lie_target(self.setup.seed, q, step, candidates) for q in self.lying])

    def note(self, name: str, step: int, values) -> None:
        """Rank 0: one step's row of an evidence table (-1: a step this process did not run)."""
        values = np.asarray(values, dtype=np.int64)
        if name not in self.evidence:
            self.evidence[name] = np.full((self.steps, values.size), -1, dtype=np.int64)
        self.evidence[name][step] = values
        self.writer.extra_datasets[name] = self.evidence[name]

    # -- the centre of centered clipping through a checkpoint: one copy per block, voted ----------
    def gather_state(self) -> None:
        self.saved = {}
        if "center" in self.state_keys:
            widths = np.diff(self.bounds)
            parts = self.comm.gather_floats(self.padded_centre(widths))
            if self.comm.is_root:
                voted = self.vote.parts(parts)
                self.saved["aggregator_state.center"] = np.concatenate(
                    [voted[b, :widths[b]] for b in range(self.vote.blocks)]).astype(np.float32)
