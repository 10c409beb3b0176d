"""``shard-target``: an attack aimed at rules that select per coordinate block (``per-shard``).

The coordinates are cut into ``blocks`` equal contiguous blocks, as the sharded placement cuts them
over that many ranks (``sharded.block_bounds``). In every block but the ``target`` one, Byzantine
row j looks honest: ``cover = "own"`` sends honest[j mod h] (in the colluding model that is the
worker's own honest gradient), ``cover = "mean"`` sends the honest mean. In the target block it sends
a strong attack: ``strong = "alie"`` (mu - z sigma of the honest rows, z from ALIE's formula unless
given) or ``strong = "sign-flip"`` (-scale * honest[j mod h]).

A rule run on each block alone sees an honest-looking worker in every block but one, and in that
block a point built to be selected; a rule on the whole rows sees the whole row at once.

Every coordinate depends only on that coordinate of the honest rows and on its position, so the
omniscient adversary of the sharded placement crafts it block by block: ``columns = (first, d)``
says that ``honest`` holds coordinates first..first + w - 1 of d-long vectors.
"""
from __future__ import annotations

from .alie import alie_z
from .base import Attack, check_int, check_real, honest_mean, honest_moments

STRONG = ("alie", "sign-flip")
COVERS = ("own", "mean")


def block_range(d: int, blocks: int, target: int) -> tuple[int, int]:
    """[lo, hi) of block ``target`` (negative: from the end) of ``blocks`` equal blocks of d coordinates."""
    from ..parallel.sharded import block_bounds  # the placement's own cut, so the blocks match its ranks
    if d < blocks:
        raise ValueError(f"shard-target: {blocks} blocks need at least {blocks} coordinates, the model has {d}: "
                         "set attack.blocks <= the number of parameters")
    bounds = block_bounds(d, blocks)
    index = target % blocks
    return int(bounds[index]), int(bounds[index + 1])


class ShardTarget(Attack):
    name = "shard-target"
    source = "this suite: honest in every coordinate block but one, aimed at per-block selection"
    defaults = {"blocks": 2, "target": -1, "strong": "alie", "cover": "own", "z": None, "scale": 1.0}
    takes_columns = True

    def _validate(self):
        self.blocks = check_int("blocks", self.params["blocks"], low=1)
        self.target = check_int("target", self.params["target"])
        if not -self.blocks <= self.target < self.blocks:
            raise ValueError(f"shard-target: target = {self.target} is not a block of {self.blocks} "
                             f"(use 0..{self.blocks - 1}, or -1 for the last)")
        self.strong, self.cover = self.params["strong"], self.params["cover"]
        if self.strong not in STRONG:
            raise ValueError(f"shard-target: strong must be one of {', '.join(STRONG)}, got {self.strong!r}")
        if self.cover not in COVERS:
            raise ValueError(f"shard-target: cover must be one of {', '.join(COVERS)}, got {self.cover!r}")
        self.scale = check_real("scale", self.params["scale"], low=0.0)
        if self.params["z"] is not None:
            self.z = check_real("z", self.params["z"], low=0.0)
        elif self.strong == "alie":
            self.z = alie_z(self.n_workers, max(self.n_byzantine, 1))
        else:
            self.z = None

    def _craft(self, xp, honest, n_byzantine, rng, aggregate, columns=None):
        h, w = honest.shape
        first, d = (0, w) if columns is None else columns
        lo, hi = block_range(d, self.blocks, self.target)
        lo, hi = max(lo, first) - first, min(hi, first + w) - first   # the target's part of these columns
        rows = xp.arange(n_byzantine) % h
        if self.cover == "own":
            out = honest[rows].astype(xp.float32)
        else:
            out = xp.broadcast_to(honest_mean(xp, honest).astype(xp.float32), (n_byzantine, w)).copy()
        if lo < hi:
            part = honest[:, lo:hi]
            if self.strong == "alie":
                mean, std = honest_moments(xp, part)
                out[:, lo:hi] = (mean - self.z * std).astype(xp.float32)
            else:
                out[:, lo:hi] = -self.scale * part[rows].astype(xp.float32)
        return out
