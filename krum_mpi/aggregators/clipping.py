"""Centred clipping (Karimireddy, He, Jaggi, ICML 2021), a stateful rule.

v_0 = the centre (the previous aggregate; zeros at the first step), then L times:
    v <- v + (1/n) sum_i (x_i - v) * min(1, tau / ||x_i - v||)
Defaults: their CIFAR-10 setting, tau = 100, L = 1. A non-finite row has no defined
direction: it contributes nothing. The result is linear in the rows and the centre:
v_L = a * v_0 + sum_i w_i x_i; ``weights`` reports w (sum 1 - a).
"""
import numpy as np

from krum_mpi.aggregators.base import Aggregation, array_namespace
from krum_mpi.aggregators.geomed import finite_rows
from krum_mpi.aggregators.rowops import combine_rows, combine_rows_float64, distances_to_point, mixes_magnitudes


def clipping_scales(dist, finite, tau, n):
    """One clipping iteration's weights: (scale_i = min(1, tau / ||x_i - v||) / n, 0 for a
    non-finite row; the centre's own share 1 - sum scale). Shared with the sharded placement."""
    with np.errstate(divide="ignore"):
        scale = np.where(finite, np.minimum(1.0, tau / dist), 0.0) / n
    return scale, 1.0 - scale.sum()


def centered_clipping(X, f, tau=100.0, iterations=1, center=None):
    """Clip each row's difference to the centre at radius tau, average, repeat ``iterations`` times."""
    xp = array_namespace(X)
    n, d = X.shape
    if center is None:
        center = xp.zeros(d, dtype=X.dtype)
    if tuple(center.shape) != (d,):
        raise ValueError(f"centered-clipping: center must have shape ({d},), got {tuple(center.shape)}")
    finite = finite_rows(X)
    v = center.astype(X.dtype)
    weights = np.zeros(n)
    for _ in range(iterations):
        dist = distances_to_point(X, v)
        scale, kept = clipping_scales(dist, finite, tau, n)
        # huge finite rows next to ordinary ones: float64 sums keep the ordinary rows' share
        combine = combine_rows_float64 if mixes_magnitudes(dist, finite) else combine_rows
        moved = combine(X, scale)
        moved += v * X.dtype.type(kept)  # in X's dtype: no float64 (d,) temporaries
        v = moved
        weights = weights * kept + scale
    return Aggregation(v, None, weights)
