"""Robust aggregation on coordinate blocks: no process ever holds a whole gradient.

A squared distance is a sum over coordinates, so the (n, n) distance matrix of the whole rows is the
sum of the blocks' matrices, and the rigorous error bounds add up with it. Every process holds some
blocks (one per rank under MPI; all of them in a single-process test) and a ``Blocks`` object says
how the per-block partial results of every block reach it: ``gather_parts`` stacks the partials of
ALL blocks in block order (an Allgather under MPI, nothing in one process). Each process then sums
them in the same fixed order, so every process derives bitwise the same intervals and therefore the
same certified selection, whatever the number of processes.

Bounds of a sum of P float64 partials (each holding its block's exact part within its own bound):
|fl(sum) - sum| <= gamma_(P+2) * sum |partials|, added to the summed bounds (themselves rounded up).

Rules covered (``SHARDED_RULES``): average, krum, multi-krum, bulyan (global selection, block-local
coordinate stage), mda, median, trimmed-mean, meamed (block by block), geometric-median and
centered-clipping (distances to the current point summed over blocks at every iteration), and any
of them after the nnm pre-step. Other names are refused in one line (``check_rule``).
"""
from __future__ import annotations

import numpy as np

from krum_mpi.aggregators import RULES, validate_options
from krum_mpi.aggregators.base import to_numpy
from krum_mpi.aggregators.bulyan import recursive_krum
from krum_mpi.aggregators.clipping import clipping_scales
from krum_mpi.aggregators.certify import CertifiedDistances, LocalRows, ScoreBoard, counting, distance_ranks
from krum_mpi.aggregators.distances import Distances, sq_distances
from krum_mpi.aggregators.exact import gamma
from krum_mpi.aggregators.geomed import weiszfeld_weights
from krum_mpi.aggregators.coordinatewise import closest_mean
from krum_mpi.aggregators.krum import neighbour_count
from krum_mpi.aggregators.mda import min_diameter_subset
from krum_mpi.aggregators.preagg import nnm_mixing_from
from krum_mpi.aggregators.rowops import combine_rows, combine_rows_float64, combine_rows_many, distances_to_point

# bytes of one exact squared distance, an int scaled by 2^SCALE: below 2^600 for float32 rows
# (2^298 x d 2^258), below 2^4240 for float64 rows (2^2148 x d 2^2050), d < 2^40
EXACT_BYTES = {np.dtype(np.float32): 96, np.dtype(np.float64): 544}
DISTANCE_RULES = ("krum", "multi-krum", "bulyan", "mda")
BLOCKWISE_RULES = ("average", "median", "trimmed-mean", "meamed")
ITERATIVE_RULES = ("geometric-median", "centered-clipping")
SHARDED_RULES = DISTANCE_RULES + BLOCKWISE_RULES + ITERATIVE_RULES
PRE_STEPS = ("nnm",)
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
    """(pre-steps, rule) of a possibly chained name, checked for the sharded placement (ValueError)."""
    *steps, rule = name.split("+")
    bad = [s for s in steps if s not in PRE_STEPS]
    if rule not in SHARDED_RULES or bad:
        raise ValueError(f"aggregator.placement = 'sharded' covers {', '.join(SHARDED_RULES)} (optionally after "
                         f"nnm+), not {name!r}: use placement = 'gather' for it")
    return steps, rule


class Blocks:
    """The blocks this process holds, (n, w_b) arrays in block order, and ``gather_parts``: a local
    (k, ...) array of partials, one per local block -> the (P, ...) partials of all P blocks. None
    means this process holds every block (nothing to exchange)."""

    def __init__(self, blocks, gather_parts=None, parts=None):
        self.blocks = list(blocks)
        self.gather_parts = gather_parts
        self.parts = len(self.blocks) if parts is None else parts
        self.n = self.blocks[0].shape[0]
        if any(b.shape[1] == 0 for b in self.blocks):
            raise ValueError("a coordinate block is empty: use fewer ranks than parameters")

    def all_parts(self, local):
        local = np.ascontiguousarray(local)
        return local if self.gather_parts is None else self.gather_parts(local)

    def total(self, per_block):
        """Sum over all blocks of per-block float64 arrays, in block order: (sum, sum of |.|)."""
        parts = self.all_parts(np.stack([np.asarray(p, dtype=np.float64) for p in per_block]))
        return parts.sum(axis=0), np.abs(parts).sum(axis=0)

    def rounded_up(self, bounds_sum, abs_sum):
        """A bound on a summed value's error: the blocks' bounds plus the rounding of the sum."""
        g = gamma(self.parts + 2)
        with np.errstate(invalid="ignore", over="ignore"):
            return np.nextafter(bounds_sum * (1 + g) + g * abs_sum, np.inf)

    def every(self, flags):
        """Logical AND over all blocks of per-block bool arrays."""
        parts = self.all_parts(np.stack([np.asarray(f, dtype=np.float64) for f in flags]))
        return parts.min(axis=0) > 0.5

    def map(self, fn):
        return [fn(b) for b in self.blocks]


class ShardedRows:
    """certify's row source over blocks: each refinement level summed over the blocks."""

    def __init__(self, blocks: Blocks):
        self.blocks = blocks
        self.dtype = np.dtype(blocks.blocks[0].dtype)

    def identical(self, i, j):
        return bool(self.blocks.every([[np.array_equal(b[i], b[j])] for b in self.blocks.blocks])[0])

    def level_one(self, pairs):
        pairs = list(pairs)
        parts = [np.stack(LocalRows(b).level_one(pairs)) for b in self.blocks.blocks]  # (2, m) each
        summed, absolute = self.blocks.total(parts)
        return summed[0], self.blocks.rounded_up(summed[1], absolute[0])

    def exact(self, pairs):
        pairs = list(pairs)
        local, size = [], EXACT_BYTES[self.dtype]
        for b in self.blocks.blocks:
            ints = LocalRows(b).exact(pairs)
            local.append(np.frombuffer(b"".join(v.to_bytes(size, "little") for v in ints),
                                       dtype=np.uint8).reshape(len(pairs), size))
        parts = self.blocks.all_parts(np.stack(local))
        return [sum(int.from_bytes(parts[p, k].tobytes(), "little") for p in range(parts.shape[0]))
                for k in range(len(pairs))]


def summed_distances(blocks: Blocks) -> Distances:
    """The whole rows' squared distances with rigorous bounds, from the blocks' own (distances.py)."""
    n = blocks.n
    per_block = []
    for result in blocks.map(sq_distances):
        ok = result.finite[:, None] & result.finite[None, :]
        sq = np.where(ok, to_numpy(result.sq), 0.0)
        err = np.where(ok, result.err, 0.0)
        per_block.append(np.concatenate([sq, err, result.finite[None, :].astype(np.float64)]))
    summed, absolute = blocks.total(per_block)
    finite = blocks.every([p[2 * n] for p in per_block])
    sq, err = summed[:n], blocks.rounded_up(summed[n:2 * n], absolute[:n])
    bad = ~(finite[:, None] & finite[None, :])
    sq[bad], err[bad] = np.inf, 0.0
    np.fill_diagonal(sq, 0.0)
    np.fill_diagonal(err, 0.0)
    return Distances(sq, finite, err, None)


def certified(blocks: Blocks) -> CertifiedDistances:
    return CertifiedDistances(ShardedRows(blocks), summed_distances(blocks))


def norms_to(blocks: Blocks, points):
    """(n,) Euclidean distances of the whole rows to a point given block by block (inf: non-finite row)."""
    per_block = [distances_to_point(b, p) ** 2 for b, p in zip(blocks.blocks, points)]
    summed, _ = blocks.total(per_block)
    return np.sqrt(summed)


def finite_rows(blocks: Blocks):
    return blocks.every([np.isfinite(b).all(axis=1) for b in blocks.blocks])


class Result:
    """A sharded aggregation: ``vectors`` this process's blocks of the aggregate, ``selected`` and
    ``weights`` as in aggregators.Aggregation (the same on every process), ``recomputed``."""

    def __init__(self, vectors, selected=None, weights=None, recomputed=0):
        self.vectors, self.selected, self.weights, self.recomputed = vectors, selected, weights, recomputed


def weighted(blocks, weights, selected):
    return Result(blocks.map(lambda b: combine_rows(b, weights)), np.asarray(selected, dtype=np.int64), weights)


def distance_rule(rule, blocks: Blocks, f, options):
    n = blocks.n
    cert = certified(blocks)
    if rule in ("krum", "multi-krum"):
        k = neighbour_count(n, f, options["neighbours"])
        board = ScoreBoard(cert, np.arange(n), k, options["squared"])
        if rule == "krum":
            best = board.lowest(1)
            weights = np.zeros(n)
            weights[best] = 1.0
            return Result(blocks.map(lambda b: b[int(best[0])].copy()), best, weights)
        m = n - f if options["m"] is None else options["m"]
        chosen = board.lowest(m, as_set=True)
        weights = np.zeros(n)
        weights[chosen] = 1.0 / m
        return weighted(blocks, weights, chosen)
    if rule == "bulyan":
        theta = n - 2 * f
        chosen = recursive_krum(cert, f, theta)
        return Result(blocks.map(lambda b: closest_mean(b, theta - 2 * f, rows=chosen)), chosen, None)
    chosen = min_diameter_subset(distance_ranks(cert), n - f)   # mda
    weights = np.zeros(n)
    weights[chosen] = 1.0 / len(chosen)
    return weighted(blocks, weights, chosen)


def geometric_median(blocks: Blocks, f, iterations=3, nu=0.1, tol=0.0):
    """aggregators.geomed.geometric_median with the distances summed over blocks (float64 sums)."""
    n = blocks.n
    finite = finite_rows(blocks)
    weights = finite / finite.sum() if finite.any() else np.full(n, 1.0 / n)
    z = blocks.map(lambda b: combine_rows_float64(b, weights))
    for _ in range(iterations):
        new_weights = weiszfeld_weights(norms_to(blocks, z), finite, nu)
        if new_weights is None:
            break
        z_new = blocks.map(lambda b: combine_rows_float64(b, new_weights))
        moved = float(np.sqrt(blocks.total([np.sum((a.astype(np.float64) - c) ** 2, keepdims=True)
                                            for a, c in zip(z_new, z)])[0][0])) if tol > 0 else np.inf
        z, weights = z_new, new_weights
        if moved <= tol:
            break
    return Result(z, None, weights)


def centered_clipping(blocks: Blocks, f, tau=100.0, iterations=1, center=None):
    """aggregators.clipping.centered_clipping with the norms summed over blocks; ``center``: this
    process's blocks of the previous aggregate (zeros at the first step)."""
    n = blocks.n
    finite = finite_rows(blocks)
    v = [np.zeros(b.shape[1], dtype=b.dtype) for b in blocks.blocks] if center is None else list(center)
    weights = np.zeros(n)
    for _ in range(iterations):
        scale, kept = clipping_scales(norms_to(blocks, v), finite, tau, n)
        v = [combine_rows_float64(b, scale) + c * b.dtype.type(kept) for b, c in zip(blocks.blocks, v)]
        weights = weights * kept + scale
    return Result(v, None, weights)


def aggregate(name: str, blocks: Blocks, f: int, options: dict, state: dict | None = None) -> Result:
    """The rule ``name`` (SHARDED_RULES, optionally after nnm+) on the blocks. ``options``: the rule's
    options as validated by the registry; ``state``: centered-clipping's {"center": blocks}."""
    steps, rule = split_rule(name)
    with counting() as recomputed:
        for _ in steps:   # nnm: the mixing comes from the summed distances, the mixed rows block by block
            mixing, _owners = nnm_mixing_from(certified(blocks), f)
            blocks = Blocks(blocks.map(lambda b: combine_rows_many(b, mixing)), blocks.gather_parts, blocks.parts)
        options = validate_options(RULES[rule], {k: v for k, v in options.items() if k in RULES[rule].options})
        if rule in DISTANCE_RULES:
            result = distance_rule(rule, blocks, f, options)
        elif rule == "average":
            result = weighted(blocks, np.full(blocks.n, 1.0 / blocks.n), np.arange(blocks.n))
        elif rule in BLOCKWISE_RULES:
            fn = RULES[rule].fn
            result = Result(blocks.map(lambda b: fn(b, f, **options).vector))
        elif rule == "geometric-median":
            result = geometric_median(blocks, f, **options)
        else:
            result = centered_clipping(blocks, f, **options, **(state or {}))
    result.recomputed = recomputed[0]
    return result


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
