"""Byzantine ranks (``[byzantine_ranks]``, docs/sharded.md "Byzantine ranks"): MPI ranks that lie in
what they send, next to the Byzantine *workers* of ``workers.byzantine``.

A behaviour says what a Byzantine rank falsifies:

- ``corrupt-activations`` (``parallel.model >= 2``): inside its model group the rank sends, in place of
  each of its forward partial sums, backward partial input gradients and gathered logits x,
  ``scale * x + sigma * N(0, 1)``. Every shard of the group uses those values, so the gradient of
  every worker the group hosts is Byzantine; which workers is known before the run (the group's
  worker range) and recorded (``selection/byzantine_through_ranks``). Krum across workers then sees
  them as Byzantine workers: they count against ``aggregator.f``. The noise is drawn from
  (run seed, rank, step, worker, message index): a rerun or a resume draws the same values.
- ``lie-distances`` and ``corrupt-block`` (``aggregator.placement = "sharded"``): refused, not
  implemented yet; they need the replicated-blocks placement.

Rank 0 is never Byzantine: it holds the server's results file and checkpoints. Under model
parallelism no rank of model group 0 is either: that group computes the test accuracy rank 0 records.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError

BEHAVIOURS = ("none", "lie-distances", "corrupt-activations", "corrupt-block")
NOT_YET = ("lie-distances", "corrupt-block")
SEED_BYZANTINE_RANKS = 0x62797A72   # the stream of the corrupt-activations noise (ASCII "byzr")


def check_ranks_list(key: str, value) -> list:
    """The list of world ranks: integers >= 1, no duplicates (the world size is checked at start)."""
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{key} = {value!r} must be a list of MPI ranks (integers), e.g. [2]")
    if any(v < 0 for v in value):
        raise ConfigError(f"{key} = {value!r} holds a negative rank: MPI ranks are 0 .. ranks - 1")
    if 0 in value:
        raise ConfigError(f"{key} = {value!r}: rank 0 must be trusted (it holds the server, the results file and "
                          "the checkpoints, so nothing would record what it did): name other ranks")
    if len(set(value)) != len(value):
        raise ConfigError(f"{key} = {value!r} names a rank twice: list each Byzantine rank once")
    return list(value)


def check_config(cfg: dict) -> None:
    """What a placement cannot express, refused in one line before any MPI work (after
    model_parallel.check_config, which turns placement 'gather' into 'sharded' under parallel.model > 1)."""
    section = cfg["byzantine_ranks"]
    ranks, behaviour = section["ranks"], section["behaviour"]
    if not ranks and behaviour == "none":
        return
    if not ranks:
        raise ConfigError(f"byzantine_ranks.behaviour = {behaviour!r} but byzantine_ranks.ranks is empty: name the "
                          "Byzantine ranks (e.g. ranks = [2]) or set behaviour = 'none'")
    if behaviour == "none":
        raise ConfigError(f"byzantine_ranks.ranks = {ranks} but byzantine_ranks.behaviour = 'none': choose one of "
                          f"{', '.join(BEHAVIOURS[1:])}, or ranks = []")
    placement, p = cfg["aggregator"]["placement"], cfg["parallel"]["model"]
    if behaviour in NOT_YET:
        if placement != "sharded":
            raise ConfigError(f"byzantine_ranks.behaviour = {behaviour!r} lies in the sharded aggregation: it needs "
                              f"aggregator.placement = 'sharded', not {placement!r}")
        raise ConfigError(f"byzantine_ranks.behaviour = {behaviour!r} is not implemented yet: it needs the "
                          "replicated-blocks placement (planned); use 'corrupt-activations' with parallel.model >= 2")
    if p < 2:
        raise ConfigError("byzantine_ranks.behaviour = 'corrupt-activations' corrupts the sums inside a model group: "
                          "it needs parallel.model >= 2")


def hosted_workers(cfg: dict, n_ranks: int, grid) -> np.ndarray:
    """Bool (n,): the workers made Byzantine by a Byzantine rank (the workers its model group hosts).
    Refuses ranks outside the world, ranks of model group 0, and more Byzantine workers than f."""
    section, n = cfg["byzantine_ranks"], cfg["workers"]["n"]
    hosted = np.zeros(n, dtype=bool)
    ranks = section["ranks"]
    if not ranks:
        return hosted
    outside = [r for r in ranks if r >= n_ranks]
    if outside:
        raise ConfigError(f"byzantine_ranks.ranks = {ranks}: rank {outside[0]} does not exist in a run of {n_ranks} "
                          f"ranks (0 .. {n_ranks - 1}): name existing ranks, or launch more")
    in_group0 = [r for r in ranks if r < grid.p]
    if in_group0:
        raise ConfigError(f"byzantine_ranks.ranks = {ranks}: rank {in_group0[0]} is in model group 0 (ranks 0 .. "
                          f"{grid.p - 1}), which computes the test accuracy rank 0 records, so it must be trusted: "
                          f"name ranks >= {grid.p}")
    for r in ranks:
        start = int(grid.displs[r // grid.p])
        hosted[start:start + int(grid.counts[r // grid.p])] = True
    return hosted


def check_f(cfg: dict, byzantine: np.ndarray, hosted: np.ndarray) -> None:
    """Byzantine workers, declared or made so by a Byzantine rank, must not exceed the declared f."""
    total, f = int((byzantine | hosted).sum()), cfg["aggregator"]["f"]
    if total > f:
        raise ConfigError(f"byzantine_ranks.ranks = {cfg['byzantine_ranks']['ranks']}: their model groups host "
                          f"{int(hosted.sum())} workers, which become Byzantine; with workers.byzantine that makes "
                          f"{total} Byzantine workers, more than aggregator.f = {f}: raise f, or name fewer ranks")


class ActivationCorruption:
    """What a corrupt-activations rank sends in place of x: scale * x + sigma * N(0, 1) (float32)."""

    def __init__(self, cfg: dict, rank: int):
        section = cfg["byzantine_ranks"]
        self.scale, self.sigma = np.float32(section["scale"]), float(section["sigma"])
        self.seed, self.rank = cfg["run"]["seed"], rank

    def __call__(self, x: np.ndarray, step: int, worker: int, message: int) -> np.ndarray:
        out = x * self.scale
        if self.sigma > 0 and out.size:
            rng = np.random.default_rng([self.seed, SEED_BYZANTINE_RANKS, self.rank, step, worker, message])
            out += (rng.standard_normal(out.shape) * self.sigma).astype(out.dtype)
        return out


def attach(cfg: dict, comm, grid, byzantine: np.ndarray) -> np.ndarray:
    """At setup, on every rank: the checks that need the world, the corruption on a Byzantine rank's
    split model, and the hosted workers (recorded by rank 0)."""
    if grid is None:
        return np.zeros(cfg["workers"]["n"], dtype=bool)
    hosted = hosted_workers(cfg, comm.size, grid)
    check_f(cfg, byzantine, hosted)
    if comm.rank in cfg["byzantine_ranks"]["ranks"]:
        grid.model.corrupt = ActivationCorruption(cfg, comm.rank)
    return hosted
