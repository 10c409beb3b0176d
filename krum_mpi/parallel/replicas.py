"""Replicated coordinate blocks (``aggregator.replicas = r``): who holds which block, and the vote.

With R ranks and r replicas there are B = R // r coordinate blocks; rank q holds block q % B, so the
replicas of block b are the ranks b, b + B, b + 2B, ... (on a cluster, consecutive ranks share a node:
replicas spread this way land on different nodes). When r does not divide R, the R % r ranks left
over join the first blocks, so every block has at least r replicas; a majority of k replicas
outvotes (k - 1) // 2 liars, as many for r + 1 as for r (r is odd). Every replica of a block holds
the same rows and runs the same code on them, and partials are summed in a fixed order, so honest
replicas send bitwise the same values. A receiver takes, value by value, the bits that more than
half of the block's replicas sent: up to (r - 1) / 2 lying ranks per block change nothing. Each
value a rank sent that differs from its block's majority is counted against that rank (the
evidence of a step). Where no value has a majority (more liars than that), the lowest rank's value
is taken and every replica that differs from it is counted.

Pure NumPy: the placement (placements/replicated.py) does the MPI through comm.py.
"""
from __future__ import annotations

import numpy as np


class Vote:
    """The replica layout of ``size`` ranks with ``r`` replicas per block, and the count of outvoted
    values per rank (``outvoted``, since the last ``reset``)."""

    def __init__(self, size: int, r: int):
        self.size, self.r, self.blocks = size, r, size // r
        self.block_of_rank = np.arange(size) % self.blocks
        self.outvoted = np.zeros(size, dtype=np.int64)

    def replicas_of(self, block: int) -> np.ndarray:
        return np.arange(block, self.size, self.blocks)

    def reset(self) -> None:
        self.outvoted[:] = 0

    def parts(self, stacked: np.ndarray) -> np.ndarray:
        """(size * k, ...) partials stacked in rank order (each rank's k local blocks) -> (B * k, ...):
        per block, the majority of its replicas' partials."""
        if self.r == 1:
            return stacked
        per_rank = stacked.reshape((self.size, -1) + stacked.shape[1:])
        chosen = [self.majority(per_rank[self.replicas_of(b)], self.replicas_of(b)) for b in range(self.blocks)]
        return np.concatenate(chosen, axis=0)

    def segments(self, flat: np.ndarray, widths: np.ndarray) -> list:
        """A (sum widths,) array of every rank's block in rank order (rank q's of width widths[q]) ->
        the majority of each block's replicas, in block order."""
        starts = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
        out = []
        for b in range(self.blocks):
            ranks = self.replicas_of(b)
            views = [flat[starts[q]:starts[q + 1]] for q in ranks]
            out.append(views[0] if self.r == 1 else self.majority(views, ranks))
        return out

    def majority(self, values, ranks: np.ndarray) -> np.ndarray:
        """values: what the replicas ``ranks`` sent (a sequence of equal-shape arrays) -> the per-value
        majority, compared as bits (NaN payloads, signed zeros and all), counted against the ranks
        that differ. The vote runs only where some replica differs from the first: when all agree
        (every honest step) a block costs one comparison per replica, not r * r."""
        shape, dtype = values[0].shape, values[0].dtype
        bits = [np.ascontiguousarray(v).view(f"u{dtype.itemsize}").reshape(-1) for v in values]
        differ = np.zeros(bits[0].size, dtype=bool)
        for other in bits[1:]:
            differ |= other != bits[0]
        chosen = bits[0].copy()
        cols = np.flatnonzero(differ)
        if cols.size:
            sub = np.stack([b[cols] for b in bits])      # (k, c): the disputed values
            picked = self.disputed(sub)
            chosen[cols] = picked
            self.outvoted[ranks] += (sub != picked[None, :]).sum(axis=1)
        return chosen.view(dtype).reshape(shape)

    @staticmethod
    def disputed(sub: np.ndarray) -> np.ndarray:
        """(k, c) values as bits -> (c,) the value more than k / 2 rows hold, else row 0's. Such a
        value sits in one of the first ceil(k / 2) rows (the others number fewer), so only those
        are candidates: k * ceil(k / 2) comparisons, not k * k."""
        k = len(sub)
        picked, decided = sub[0].copy(), np.zeros(sub.shape[1], dtype=bool)
        for j in range((k + 1) // 2):
            count = np.zeros(sub.shape[1], dtype=np.int64)
            for row in sub:
                count += row == sub[j]
            wins = (2 * count > k) & ~decided
            picked[wins] = sub[j][wins]
            decided |= wins
        return picked
