"""Robust aggregation on coordinate blocks: no process ever holds a whole gradient.

``Blocks`` is the sharded rows source (krum_mpi/aggregators/rows.py): the blocks this process holds
(one per rank under MPI; all of them in a single-process test) and ``gather_parts``, which stacks the
per-block partial results of ALL blocks in block order (an Allgather under MPI, given by comm.py;
nothing in one process). Each process sums them in the same fixed order, so every process derives
bitwise the same intervals, the same certified selection and the same canonical distances, whatever
the number of processes. Every registered rule runs on it unchanged (``aggregate``): the rules are
written once, over a rows source; this module holds no rule logic.

A squared distance is a sum over coordinates, so the (n, n) distance matrix of the whole rows is the
sum of the blocks' matrices, and the rigorous error bounds add up with it. Bounds of a sum of P
float64 partials (each holding its block's exact part within its own bound):
|fl(sum) - sum| <= gamma_(P+2) * sum |partials|, added to the summed bounds (themselves rounded up).
"""
from __future__ import annotations

import numpy as np

from krum_mpi.aggregators import validate_options
from krum_mpi.aggregators.certify import CertifiedDistances, LocalRows, counting
from krum_mpi.aggregators.compose import lookup
from krum_mpi.aggregators.distances import Distances, sq_distances
from krum_mpi.aggregators.base import host_dtype, to_numpy
from krum_mpi.aggregators.rows import Rows

# bytes of one exact squared distance, an int scaled by 2^SCALE: below 2^600 for float32 rows
# (2^298 x d 2^258), below 2^4240 for float64 rows (2^2148 x d 2^2050), d < 2^40
EXACT_BYTES = {np.dtype(np.float32): 96, np.dtype(np.float64): 544}
# the pre-steps a sharded RUN supports (the rule itself runs on any rows source; the run's step loop
# carries no per-step seed (bucketing) and its omniscient adversary is not split for clipping+)
RUN_PRE_STEPS = ("nnm",)
# attacks whose every coordinate depends on that coordinate of the honest rows only (no random draw,
# no search against the rule; shard-target: also on the coordinate's position, given as columns): the
# omniscient adversary crafts them block by block, the same values
BLOCKWISE_ATTACKS = ("omniscient", "sign-flip", "ipm", "alie", "zero", "nan", "inf", "shard-target")


def block_bounds(d: int, parts: int) -> np.ndarray:
    """Start of each of ``parts`` contiguous coordinate blocks (and d at the end); the first d % parts
    blocks get one coordinate more."""
    base, extra = divmod(d, parts)
    sizes = [base + (p < extra) for p in range(parts)]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def split_rule(name: str):
    """(pre-steps, rule) of a possibly chained name, checked for a sharded run (ValueError)."""
    *steps, rule = name.split("+")
    bad = [s for s in steps if s not in RUN_PRE_STEPS]
    try:
        lookup(name)
    except ValueError:
        bad = bad or [rule]
    if bad:
        raise ValueError(f"aggregator.placement = 'sharded' covers every registered rule (optionally after "
                         f"{', '.join(p + '+' for p in RUN_PRE_STEPS)}), not {name!r}: use placement = 'gather' for it")
    return steps, rule


class Blocks(Rows):
    """The sharded rows source: the blocks this process holds, in block order, and ``gather_parts``:
    a local (k, ...) array of partials, one per local block -> the (P, ...) partials of all P blocks.
    None means this process holds every block (nothing to exchange). Its certified distances are
    the blocks' own, summed. ``lie``: a lie-distances rank's DistanceLie (parallel/byzantine_ranks.py),
    applied to the partial distances this process reports at every refinement level; None: honest."""

    lie = None

    def certified(self):
        distances, identical = summed_distances(self)
        return CertifiedDistances(ShardedRows(self, identical), distances)

    def like(self, blocks):
        other = super().like(blocks)
        other.lie = self.lie   # the rows of a pre-step (nnm): the rank lies about them too
        return other

    def reported(self, values):
        """This process's (n, n) partial distances (or their bounds), as it reports them."""
        return values if self.lie is None else self.lie.matrix(values)


class ShardedRows:
    """certify's row source over blocks: each refinement level summed over the blocks.
    ``identical``: the (n, n) bool answers of ``identical`` for pairs of finite rows, exchanged with
    the distances (``summed_distances``), so that finding rows with identical contents costs no
    collective of its own (certify asks only about finite rows); None: each question is one exchange."""

    def __init__(self, blocks: Blocks, identical=None):
        self.blocks = blocks
        self.dtype = host_dtype(blocks.blocks[0])
        self.exchanged_identical = identical   # not "identical_pairs": that name is LocalRows' batched method

    def identical(self, i, j):
        if self.exchanged_identical is not None:
            return bool(self.exchanged_identical[i, j])
        return bool(self.blocks.every([[LocalRows(b).identical(i, j)] for b in self.blocks.blocks])[0])

    def level_one(self, pairs):
        pairs = list(pairs)
        parts = [np.stack(LocalRows(b).level_one(pairs)) for b in self.blocks.blocks]  # (2, m) each
        if self.blocks.lie is not None:
            parts = [self.blocks.lie.pairs(pairs, p) for p in parts]
        summed, absolute = self.blocks.total(parts)
        return summed[0], self.blocks.rounded_up(summed[1], absolute[0])

    def exact(self, pairs):
        pairs = list(pairs)
        local, size = [], EXACT_BYTES[self.dtype]
        for b in self.blocks.blocks:
            ints = LocalRows(b).exact(pairs)
            if self.blocks.lie is not None:
                ints = self.blocks.lie.exact(pairs, ints)
            local.append(np.frombuffer(b"".join(v.to_bytes(size, "little") for v in ints),
                                       dtype=np.uint8).reshape(len(pairs), size))
        parts = self.blocks.all_parts(np.stack(local))
        return [sum(int.from_bytes(parts[p, k].tobytes(), "little") for p in range(parts.shape[0]))
                for k in range(len(pairs))]


def summed_distances(blocks: Blocks):
    """The whole rows' squared distances with rigorous bounds, from the blocks' own (distances.py),
    and which pairs of finite rows hold identical contents, in ONE exchange of partials: each block
    sends its (n, n) distances and bounds, its (n,) finiteness and its (n, n) identical-pair flags.
    A 0/1 flag summed over the P blocks is P exactly when every block says yes (such sums are exact
    in float64). Rows identical on a block are at the exact distance 0 there, so that block's
    interval holds 0 (sq <= err): only those pairs are compared; the others are not identical."""
    n = blocks.n
    per_block = []
    for b, result in zip(blocks.blocks, blocks.map(sq_distances)):
        ok = result.finite[:, None] & result.finite[None, :]
        sq = np.where(ok, to_numpy(result.sq), 0.0)
        err = np.where(ok, result.err, 0.0)
        same = identical_pairs(LocalRows(b), ok & (sq <= err))   # on the true values: this rank's rows
        sq, err = blocks.reported(sq), blocks.reported(err)
        per_block.append(np.concatenate([sq, err, result.finite[None, :].astype(np.float64), same]))
    summed, absolute = blocks.total(per_block)
    everywhere = blocks.parts - 0.5
    finite, identical = summed[2 * n] > everywhere, summed[2 * n + 1:] > everywhere
    sq, err = summed[:n], blocks.rounded_up(summed[n:2 * n], absolute[:n])
    bad = ~(finite[:, None] & finite[None, :])
    sq[bad], err[bad] = np.inf, 0.0
    np.fill_diagonal(sq, 0.0)
    np.fill_diagonal(err, 0.0)
    return Distances(sq, finite, err, None), identical & ~bad


def identical_pairs(rows: LocalRows, candidates: np.ndarray) -> np.ndarray:
    """(n, n) float64 flags: 1 where two rows hold identical contents on this block. Equality is
    transitive, so each row is compared only with the first row of each group of identical rows
    among its candidates: f identical Byzantine rows cost f comparisons, not f^2 / 2."""
    n = candidates.shape[0]
    group = np.arange(n)
    for j in range(n):
        for i in np.flatnonzero(candidates[:j, j]):
            if group[i] == i and rows.identical(int(i), j):
                group[j] = i
                break
    return (group[:, None] == group[None, :]).astype(np.float64)


def certified(blocks: Blocks) -> CertifiedDistances:
    return blocks.certified()


class Result:
    """A sharded aggregation: ``vectors`` this process's blocks of the aggregate, ``selected`` and
    ``weights`` as in aggregators.Aggregation (the same on every process), ``recomputed``."""

    def __init__(self, vectors, selected=None, weights=None, recomputed=0):
        self.vectors, self.selected, self.weights, self.recomputed = vectors, selected, weights, recomputed


def aggregate(name: str, blocks: Blocks, f: int, options: dict, state: dict | None = None) -> Result:
    """The registered rule ``name`` (any, chained pre-steps included) on the blocks: the same function
    the gathered placement runs (registry ``Rule.rows``). ``options``: the rule's options (other
    keys ignored), validated here; ``state``: centered-clipping's {"center": blocks}."""
    rule = lookup(name)
    options = validate_options(rule, {k: v for k, v in options.items() if k in rule.options})
    with counting() as recomputed:
        result = rule.rows(blocks, f, **options, **(state or {}))
    return Result(result.vector, result.selected, result.weights, recomputed[0])


def per_shard(name: str, blocks: Blocks, f: int, options: dict):
    """The naive baseline: the rule on each block alone (aggregators.make per block, no exchange).
    Returns (this process's output blocks, the selection of each local block or None)."""
    from krum_mpi import aggregators
    out, selections = [], []
    for b in blocks.blocks:
        agg = aggregators.make(name, b.shape[0], f, **options)(b)
        out.append(agg.vector)
        selections.append(agg.selected)
    return out, selections
