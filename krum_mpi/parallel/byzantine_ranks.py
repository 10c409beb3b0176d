"""Byzantine ranks (``[byzantine_ranks]``, docs/sharded.md "Byzantine ranks"): MPI ranks that lie in
what they send, next to the Byzantine *workers* of ``workers.byzantine``.

A behaviour says what a Byzantine rank falsifies:

- ``corrupt-activations`` (``parallel.model >= 2``): inside its model group the rank sends, in place of
  each of its forward partial sums, backward partial input gradients and gathered logits x,
  ``scale * x + sigma * N(0, 1)``. Every shard of the group uses those values, so the gradient of
  every worker the group hosts is Byzantine; which workers is known before the run (the group's
  worker range) and recorded per step (``selection/byzantine_through_ranks``). Krum across workers then sees
  them as Byzantine workers: they count against ``aggregator.f``. The noise is drawn from
  (run seed, rank, step, worker, message index): a rerun or a resume draws the same values.
- ``lie-distances`` (``aggregator.placement = "sharded"``, ``DistanceLie``): each step the rank picks
  a target worker t (from (run seed, rank, step), among the declared Byzantine workers, or among all
  workers when there are none) and reports, for its coordinate block, every partial squared
  distance involving t as 0 and every other one multiplied by 2^LIE_EXPONENT (error bounds and the
  refinement levels alike, so the lie is consistent at every level). Summed over the blocks, t is
  close to every row and every other pair is far apart: a distance-based rule picks t. Its block
  of the aggregate is its block of row t (the aggregate of the selection it wanted).
- ``corrupt-block`` (``aggregator.placement = "sharded"``, ``BlockCorruption``): the rank's block x
  of the aggregate becomes ``scale * x + sigma * N(0, 1)`` (sign flipped and 4x by default), the
  noise drawn from (run seed, rank, step).

Rank 0 is never Byzantine: it holds the server's results file and checkpoints. Under model
parallelism no rank of model group 0 is either: that group computes the test accuracy rank 0 records.
The defence against the sharded behaviours is ``aggregator.replicas`` (placements/replicated.py).
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError

BEHAVIOURS = ("none", "lie-distances", "corrupt-activations", "corrupt-block")
SHARDED_BEHAVIOURS = ("lie-distances", "corrupt-block")   # lies in the sharded aggregation
SEED_BYZANTINE_RANKS = 0x62797A72   # the stream of the Byzantine ranks' draws (ASCII "byzr")
TAG_TARGET, TAG_BLOCK = 1, 2        # lie-distances' target, corrupt-block's noise: streams of their own
LIE_EXPONENT = 10                   # lie-distances scales the distances it does not zero by 2^10: a power
                                    # of two, so floats, bounds and exact ints scale exactly
DISTANCE_RULES = ("krum", "multi-krum", "bulyan", "mda")   # rules (and the pre-step nnm) that read
                                                          # pairwise distances: what lie-distances falsifies


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


def check_config(cfg) -> None:
    """What a placement cannot express, refused in one line before any MPI work (after
    model_parallel.check_config, which turns placement 'gather' into 'sharded' under parallel.model > 1)."""
    check_replicas(cfg)
    section = cfg.byzantine_ranks
    ranks, behaviour = list(section.ranks), section.behaviour
    if not ranks and behaviour == "none":
        return
    if not ranks:
        raise ConfigError(f"byzantine_ranks.behaviour = {behaviour!r} but byzantine_ranks.ranks is empty: name the "
                          "Byzantine ranks (e.g. ranks = [2]) or set behaviour = 'none'")
    if behaviour == "none":
        raise ConfigError(f"byzantine_ranks.ranks = {ranks} but byzantine_ranks.behaviour = 'none': choose one of "
                          f"{', '.join(BEHAVIOURS[1:])}, or ranks = []")
    placement, p = cfg.aggregator.placement, cfg.parallel.model
    if behaviour in SHARDED_BEHAVIOURS:
        check_sharded_behaviour(cfg, behaviour, placement, p)
    elif p < 2:
        raise ConfigError("byzantine_ranks.behaviour = 'corrupt-activations' corrupts the sums inside a model group: "
                          "it needs parallel.model >= 2")


def check_sharded_behaviour(cfg, behaviour: str, placement: str, p: int) -> None:
    if p > 1:
        raise ConfigError(f"byzantine_ranks.behaviour = {behaviour!r} lies in the sharded aggregation of whole "
                          f"rows, which parallel.model = {p} does not run: use parallel.model = 1 (and "
                          "aggregator.placement = 'sharded'), or behaviour = 'corrupt-activations'")
    if placement != "sharded":
        raise ConfigError(f"byzantine_ranks.behaviour = {behaviour!r} lies in the sharded aggregation: it needs "
                          f"aggregator.placement = 'sharded', not {placement!r}")
    steps = cfg.aggregator.name.split("+")
    if behaviour == "lie-distances" and steps[-1] not in DISTANCE_RULES and "nnm" not in steps:
        raise ConfigError(f"byzantine_ranks.behaviour = 'lie-distances' falsifies pairwise distances, which "
                          f"aggregator.name = {cfg.aggregator.name!r} never reads: use a rule that does "
                          f"({', '.join(DISTANCE_RULES)}, or nnm+...) or behaviour = 'corrupt-block'")


def check_replicas(cfg) -> None:
    """aggregator.replicas: odd, and only where coordinate blocks are computed (placement sharded)."""
    r = cfg.aggregator.replicas
    if r % 2 == 0:
        raise ConfigError(f"aggregator.replicas = {r} must be odd: receivers take the value a majority of the "
                          "replicas sent, which an even split can leave undecided; use 1, 3, 5 ...")
    if r == 1:
        return
    if cfg.parallel.model > 1:
        raise ConfigError(f"aggregator.replicas = {r} with parallel.model = {cfg.parallel.model}: replicated "
                          "model groups are not built; under model parallelism a lying rank's workers count as "
                          "Byzantine workers (docs/sharded.md): use aggregator.replicas = 1")
    if cfg.aggregator.placement != "sharded":
        raise ConfigError(f"aggregator.replicas = {r} replicates the coordinate blocks of aggregator.placement = "
                          f"'sharded', not {cfg.aggregator.placement!r}: set placement = 'sharded' or "
                          "replicas = 1")


def check_world(cfg, n_ranks: int) -> None:
    """At start, when the number of ranks is known: enough ranks for the replicas, Byzantine ranks inside."""
    r, ranks = cfg.aggregator.replicas, list(cfg.byzantine_ranks.ranks)
    if n_ranks < r:
        raise ConfigError(f"aggregator.replicas = {r} on {n_ranks} ranks: every coordinate block needs {r} ranks: "
                          f"launch at least {r} ranks, or lower replicas")
    outside = [q for q in ranks if q >= n_ranks]
    if outside:
        raise ConfigError(f"byzantine_ranks.ranks = {ranks}: rank {outside[0]} does not exist in a run of {n_ranks} "
                          f"ranks (0 .. {n_ranks - 1}): name existing ranks, or launch more")


def hosted_workers(cfg, n_ranks: int, grid) -> np.ndarray:
    """Bool (n,): the workers made Byzantine by a Byzantine rank (the workers its model group hosts).
    Refuses ranks outside the world, ranks of model group 0, and more Byzantine workers than f."""
    section, n = cfg.byzantine_ranks, cfg.workers.n
    hosted = np.zeros(n, dtype=bool)
    ranks = list(section.ranks)
    if not ranks:
        return hosted
    check_world(cfg, n_ranks)
    in_group0 = [r for r in ranks if r < grid.p]
    if in_group0:
        raise ConfigError(f"byzantine_ranks.ranks = {ranks}: rank {in_group0[0]} is in model group 0 (ranks 0 .. "
                          f"{grid.p - 1}), which computes the test accuracy rank 0 records, so it must be trusted: "
                          f"name ranks >= {grid.p}")
    for r in ranks:
        start = int(grid.displs[r // grid.p])
        hosted[start:start + int(grid.counts[r // grid.p])] = True
    return hosted


def check_f(cfg, byzantine: np.ndarray, hosted: np.ndarray) -> None:
    """Byzantine workers, declared or made so by a Byzantine rank, must not exceed the declared f."""
    total, f = int((byzantine | hosted).sum()), cfg.aggregator.f
    if total > f:
        raise ConfigError(f"byzantine_ranks.ranks = {list(cfg.byzantine_ranks.ranks)}: their model groups host "
                          f"{int(hosted.sum())} workers, which become Byzantine; with workers.byzantine that makes "
                          f"{total} Byzantine workers, more than aggregator.f = {f}: raise f, or name fewer ranks")


class ActivationCorruption:
    """What a corrupt-activations rank sends in place of x: scale * x + sigma * N(0, 1) (float32)."""

    def __init__(self, cfg, rank: int):
        section = cfg.byzantine_ranks
        self.scale, self.sigma = np.float32(section.scale), float(section.sigma)
        self.seed, self.rank = cfg.run.seed, rank

    def __call__(self, x: np.ndarray, step: int, worker: int, message: int) -> np.ndarray:
        return noisy(x, self.scale, self.sigma, [self.seed, SEED_BYZANTINE_RANKS, self.rank, step, worker, message])


def attach(cfg, comm, grid, byzantine: np.ndarray) -> np.ndarray:
    """At setup, on every rank: the checks that need the world, the corruption on a Byzantine rank's
    split model, and the hosted workers (recorded by rank 0)."""
    check_world(cfg, comm.size)
    if grid is None:
        return np.zeros(cfg.workers.n, dtype=bool)
    hosted = hosted_workers(cfg, comm.size, grid)
    check_f(cfg, byzantine, hosted)
    if comm.rank in cfg.byzantine_ranks.ranks:
        grid.model.corrupt = ActivationCorruption(cfg, comm.rank)
    return hosted


def noisy(x: np.ndarray, scale: np.float32, sigma: float, key: list) -> np.ndarray:
    """scale * x + sigma * N(0, 1) in x's dtype, the noise drawn from the seed sequence ``key``."""
    out = x * scale
    if sigma > 0 and out.size:
        out += (np.random.default_rng(key).standard_normal(out.shape) * sigma).astype(out.dtype)
    return out


def lie_target(seed: int, rank: int, step: int, candidates: np.ndarray) -> int:
    """The worker a lie-distances rank wants selected at ``step`` (rank 0 derives it too, to record it)."""
    rng = np.random.default_rng([seed, SEED_BYZANTINE_RANKS, rank, step, TAG_TARGET])
    return int(candidates[rng.integers(len(candidates))])


def lie_candidates(byzantine: np.ndarray) -> np.ndarray:
    """The declared Byzantine workers (the rank's colluders), or every worker when there are none."""
    return np.flatnonzero(byzantine) if byzantine.any() else np.arange(len(byzantine))


class DistanceLie:
    """What a lie-distances rank reports for its block (module doc): distances involving the step's
    target 0, every other one times 2^LIE_EXPONENT. ``at(step)`` picks the target."""

    def __init__(self, cfg, rank: int, byzantine: np.ndarray):
        self.seed, self.rank, self.candidates = cfg.run.seed, rank, lie_candidates(byzantine)
        self.target = int(self.candidates[0])

    def at(self, step: int) -> None:
        self.target = lie_target(self.seed, self.rank, step, self.candidates)

    def matrix(self, values: np.ndarray) -> np.ndarray:
        """An (n, n) float64 matrix of partial distances (or of their error bounds), as lied."""
        out = np.ldexp(values, LIE_EXPONENT)
        out[self.target, :] = 0.0
        out[:, self.target] = 0.0
        return out

    def pairs(self, pairs, values: np.ndarray) -> np.ndarray:
        """(k, m) float64 values of the m pairs (refinement level one: values, bounds), as lied."""
        zero = np.array([self.target in p for p in pairs], dtype=bool)
        return np.where(zero, 0.0, np.ldexp(values, LIE_EXPONENT))

    def exact(self, pairs, ints: list) -> list:
        """Exact partial distances (ints scaled by a power of two), as lied: shifted, or 0."""
        return [0 if self.target in p else v << LIE_EXPONENT for p, v in zip(pairs, ints)]


class BlockCorruption:
    """What a corrupt-block rank puts in place of its block x of the aggregate."""

    def __init__(self, cfg, rank: int):
        section = cfg.byzantine_ranks
        self.scale, self.sigma = np.float32(section.scale), float(section.sigma)
        self.seed, self.rank = cfg.run.seed, rank

    def __call__(self, x: np.ndarray, step: int) -> np.ndarray:
        return noisy(np.asarray(x, dtype=np.float32), self.scale, self.sigma,
                     [self.seed, SEED_BYZANTINE_RANKS, self.rank, step, TAG_BLOCK])
