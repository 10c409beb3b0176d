"""Placements: where a step's rows travel and who holds what (base.Placement is the interface).

    gather       GatherPlacement        rank 0 gathers every row (Gatherv) and runs the rule
    gather with  DeadlinePlacement      rank 0 waits at most run.gather_deadline_s; late rows dropped
      a deadline
    sharded      ShardedPlacement       each rank a coordinate block; the exact rule over all blocks
                 SmallShardedPlacement  below aggregator.sharded_min_d: the gather's exchange (blocks.py)
    sharded with ReplicatedPlacement    each block on aggregator.replicas ranks, majority on receipt;
      replicas                          Byzantine ranks that lie in the sharded aggregation (any d)
    per-shard    PerShardPlacement      each rank the rule on its block alone (the naive baseline)
    model        ModelParallelPlacement the blocks are the split model's shards (parallel.model = p)
                 SmallModelPlacement    below aggregator.sharded_min_d: the gather's exchange (model.py)

``build`` is the one place that reads which placement a run has; the step loop only calls the
phases. Adding a placement is adding a class here and one line in ``build``.
"""
from __future__ import annotations

from .base import Outcome, Placement, Turn  # noqa: F401  (the interface, for the loop and new placements)
from .blocks import PerShardPlacement, ShardedPlacement, SmallShardedPlacement, sharded_placement  # noqa: F401
from .gather import DeadlinePlacement, GatherPlacement
from .model import ModelParallelPlacement, SmallModelPlacement, connect, model_placement  # noqa: F401
from .replicated import ReplicatedPlacement
from ..byzantine_ranks import SHARDED_BEHAVIOURS
from ...errors import ConfigError


def build(setup, cfg, comm) -> Placement:
    """Collective for model parallelism (its group communicators): this rank's placement object."""
    if setup.grid is not None:
        return model_placement(setup, cfg, comm)
    placement = cfg.aggregator.placement
    if placement == "sharded" and (cfg.aggregator.replicas > 1
                                   or cfg.byzantine_ranks.behaviour in SHARDED_BEHAVIOURS):
        return ReplicatedPlacement(setup, cfg, comm)
    if placement == "sharded":
        return sharded_placement(setup, cfg, comm)
    if placement == "per-shard":
        return PerShardPlacement(setup, cfg, comm)
    if cfg.run.gather_deadline_s > 0:
        return DeadlinePlacement(setup, cfg, comm)
    return GatherPlacement(setup, cfg, comm)


def check_fits(cfg, d: int, ranks: int, grid) -> None:
    """Refuse, in one line, a coordinate-block placement with fewer coordinates than ranks."""
    placement = cfg.aggregator.placement
    if placement != "gather" and grid is None and d < ranks:
        raise ConfigError(f"aggregator.placement = {placement!r} gives each rank a block of the {d} parameters: "
                          f"use at most {d} ranks, or placement = 'gather'")
