"""Centred clipping (Karimireddy, He, Jaggi, ICML 2021), a stateful rule.

v_0 = the centre (the previous aggregate; zeros at the first step), then L times:
    v <- v + (1/n) sum_i (x_i - v) * min(1, tau / ||x_i - v||)
Defaults: their CIFAR-10 setting, tau = 100, L = 1. A non-finite row has no defined
direction: it contributes nothing. The result is linear in the rows and the centre:
v_L = a * v_0 + sum_i w_i x_i; ``weights`` reports w (sum 1 - a).

Written once over a rows source (rows.py): the distances to v_0 take one pass; each iteration then
forms v_(k+1) = sum_i s_i x_i + a v_k in float64 (one rounding per coordinate) and, in the same pass,
the distances to it when another iteration follows: L + 1 reads of the rows. The distances are the
canonical ones: gathered and sharded rows give bitwise the same aggregate.
"""
import numpy as np

from krum_mpi.aggregators.base import Aggregation


def clipping_scales(dist, finite, tau, n):
    """One clipping iteration's weights: (scale_i = min(1, tau / ||x_i - v||) / n, 0 for a
    non-finite row; the centre's own share 1 - sum scale)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(finite, np.minimum(1.0, tau / dist), 0.0) / n
    return scale, 1.0 - scale.sum()


def centered_clipping(rows, f, tau=100.0, iterations=1, center=None):
    """Clip each row's difference to the centre at radius tau, average, repeat ``iterations`` times."""
    n = rows.n
    if center is None:
        v = rows.zeros()
    else:
        v = rows.as_point(center)
        widths = [b.shape[1] for b in rows.blocks]
        if [tuple(c.shape) for c in v] != [(w,) for w in widths]:
            raise ValueError(f"centered-clipping: center must have shape ({sum(widths)},), "
                             f"got {tuple(v[0].shape) if len(v) == 1 else [tuple(c.shape) for c in v]}")
        v = [rows.xp.asarray(c, dtype=b.dtype) for c, b in zip(v, rows.blocks)]
    sq = rows.sq_distances_to(v)
    weights = np.zeros(n)
    for k in range(iterations):
        scale, kept = clipping_scales(np.sqrt(sq), np.isfinite(sq), tau, n)   # inf: NaN/Inf rows
        v, sq = rows.point_pass(scale, v, kept, distances=k + 1 < iterations)
        weights = weights * kept + scale
    return Aggregation(v, None, weights)
