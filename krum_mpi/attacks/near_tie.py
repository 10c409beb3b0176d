"""``near-tie``: the Byzantine rows are one-ulp clones of an honest row, an attack on time, not on
accuracy.

Byzantine row k is honest[worker] with one coordinate moved by one unit in the last place (float32
``nextafter``): coordinate ``(k * stride) mod d`` moved up (``variant = "clone"``), or, with
``variant = "mirror"``, coordinate ``((k // 2) * stride) mod d`` moved up for even k and down for
odd k (pairs of mirror clones, equally far from the honest row). Every distance among these rows
and the honest row is a few ulp^2, far below the fast kernel's error bound, so a rule that certifies
its decisions must refine them: the rows change nothing a Byzantine worker could gain (the
aggregate moves by at most an ulp per coordinate) but probe how much the refinement costs. The
attack table reports its per-step aggregation time beside the honest step's.

Each coordinate depends on that coordinate of the honest row and on its position only, so the
sharded placement crafts it block by block (``columns = (first, d)``, as ``shard-target``).
"""
from __future__ import annotations

import numpy as np

from .base import Attack, check_int

VARIANTS = ("clone", "mirror")


def moved_coordinates(n_byzantine: int, d: int, stride: int, variant: str):
    """(coordinate, direction) of each Byzantine row k: the one entry it moves and +1 / -1 (up / down)."""
    k = np.arange(n_byzantine)
    if variant == "mirror":
        return (k // 2) * stride % d, np.where(k % 2 == 0, 1, -1)
    return k * stride % d, np.ones(n_byzantine, dtype=np.int64)


class NearTie(Attack):
    name = "near-tie"
    source = "this suite: one-ulp clones of an honest row, aimed at the cost of exact decisions"
    defaults = {"variant": "clone", "worker": 0, "stride": 7919}
    takes_columns = True

    def _validate(self):
        self.variant = self.params["variant"]
        if self.variant not in VARIANTS:
            raise ValueError(f"near-tie: variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        self.worker = check_int("worker", self.params["worker"], low=0)
        n_honest = self.n_workers - self.n_byzantine
        if self.worker >= n_honest:
            raise ValueError(f"near-tie worker = {self.worker} but there are only {n_honest} honest workers")
        self.stride = check_int("stride", self.params["stride"], low=1)

    def _craft(self, xp, honest, n_byzantine, rng, aggregate, columns=None):
        if self.worker >= honest.shape[0]:
            raise ValueError(f"near-tie worker = {self.worker} but the adversary sees {honest.shape[0]} honest vectors")
        first, d = (0, honest.shape[1]) if columns is None else columns
        width = honest.shape[1]
        out = xp.repeat(honest[self.worker:self.worker + 1].astype(xp.float32), n_byzantine, axis=0)
        where, direction = moved_coordinates(n_byzantine, d, self.stride, self.variant)
        mine = (where >= first) & (where < first + width)   # the coordinates this block holds
        rows, cols = np.flatnonzero(mine), where[mine] - first
        if rows.size:
            target = xp.asarray(np.where(direction[mine] > 0, np.inf, -np.inf).astype(np.float32))
            out[rows, cols] = xp.nextafter(out[rows, cols], target)
        return out
