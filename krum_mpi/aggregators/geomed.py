"""Geometric median by smoothed Weiszfeld iterations (Pillutla, Kakade, Harchaoui: RFA).

z_0 = mean of the finite rows; then T times: beta_i = 1 / max(nu, ||x_i - z||), z = sum beta_i x_i / sum beta_i.
nu (smoothing) keeps the weights bounded when z lands on a row; RFA's common setting: nu = 0.1, T = 3.
The result is a convex combination of the rows (the weights are reported). A non-finite row is
infinitely far from every point: its weight is 0.

Written once over a rows source (rows.py): each iteration is ONE pass over the rows, which forms
z_k in float64 (rounded once to the rows' dtype) and, in the same column chunks, the distances of
every row to z_k, so T iterations read the rows T + 1 times. The distances are the canonical ones
(exact sums, truncated): gathered and sharded rows give bitwise the same aggregate.
"""
import numpy as np

from krum_mpi.aggregators.base import Aggregation


def weiszfeld_weights(dist, finite, nu):
    """One smoothed Weiszfeld step's convex weights (beta_i / sum beta, beta_i = 1 / max(nu, dist_i),
    0 for a non-finite row), or None when no row is finite."""
    beta = np.where(finite, 1.0 / np.maximum(nu, dist), 0.0)
    return beta / beta.sum() if beta.any() else None


def geometric_median(rows, f, iterations=3, nu=0.1, tol=0.0):
    """Smoothed Weiszfeld: ``iterations`` steps from the mean of the finite rows (stop early below tol)."""
    n = rows.n
    weights = np.full(n, 1.0 / n)
    z, sq = rows.point_pass(weights, distances=iterations > 0)
    if iterations > 0 and not np.isfinite(sq).all():
        # a row with NaN/Inf (or beyond float64 range of the point): the mean of the finite rows
        finite = rows.finite()
        weights = finite / finite.sum() if finite.any() else weights
        z, sq = rows.point_pass(weights)
    elif iterations == 0:
        finite = rows.finite()
        if not finite.all():
            weights = finite / finite.sum() if finite.any() else weights
            z, _ = rows.point_pass(weights, distances=False)
    for k in range(iterations):
        new_weights = weiszfeld_weights(np.sqrt(sq), np.isfinite(sq), nu)
        if new_weights is None:
            break
        more = k + 1 < iterations
        z_new, sq = rows.point_pass(new_weights, distances=more)
        moved = np.sqrt(rows.sq_distance_between(z_new, z)) if tol > 0 else np.inf
        z, weights = z_new, new_weights
        if moved <= tol:
            break
    return Aggregation(z, None, weights)
