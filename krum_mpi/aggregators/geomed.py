"""Geometric median by smoothed Weiszfeld iterations (Pillutla, Kakade, Harchaoui: RFA).

z_0 = mean of the finite rows; then T times: beta_i = 1 / max(nu, ||x_i - z||), z = sum beta_i x_i / sum beta_i.
nu (smoothing) keeps the weights bounded when z lands on a row; RFA's common setting: nu = 0.1, T = 3.
The result is a convex combination of the rows (the weights are reported). A non-finite row is
infinitely far from every point: its weight is 0.
"""
import numpy as np

from krum_mpi.aggregators.base import Aggregation, array_namespace, to_numpy
from krum_mpi.aggregators.parallel import column_ranges, run_ranges
from krum_mpi.aggregators.rowops import (CHUNK, column_slices, combine_rows, combine_rows_float64,
                                         distances_to_point, mixes_magnitudes)


def finite_rows(X):
    """(n,) NumPy bool: rows without NaN or Inf (chunk by chunk, no n x d temporary)."""
    xp = array_namespace(X)
    n, d = X.shape

    def work(start, stop):
        ok = xp.ones(n, dtype=bool)
        for cols in column_slices(xp, stop - start, offset=start):
            ok &= xp.isfinite(X[:, cols]).all(axis=1)
        return to_numpy(ok)

    return np.logical_and.reduce(run_ranges(work, column_ranges(xp, d, align=CHUNK)))


def weiszfeld_weights(dist, finite, nu):
    """One smoothed Weiszfeld step's convex weights (beta_i / sum beta, beta_i = 1 / max(nu, dist_i),
    0 for a non-finite row), or None when no row is finite. Shared with the sharded placement."""
    beta = np.where(finite, 1.0 / np.maximum(nu, dist), 0.0)
    return beta / beta.sum() if beta.any() else None


def geometric_median(X, f, iterations=3, nu=0.1, tol=0.0):
    """Smoothed Weiszfeld: ``iterations`` steps from the mean of the finite rows (stop early below tol)."""
    n, d = X.shape
    finite = finite_rows(X)
    weights = finite / finite.sum() if finite.any() else np.full(n, 1.0 / n)
    z = combine_rows(X, weights)
    for _ in range(iterations):
        dist = distances_to_point(X, z)
        new_weights = weiszfeld_weights(dist, finite, nu)
        if new_weights is None:
            break
        # huge finite rows next to ordinary ones: float64 sums keep the ordinary rows' share
        combine = combine_rows_float64 if mixes_magnitudes(dist, finite) else combine_rows
        z_new = combine(X, new_weights)
        moved = float(distances_to_point(z_new[None, :], z)[0]) if tol > 0 else np.inf
        z, weights = z_new, new_weights
        if moved <= tol:
            break
    return Aggregation(z, None, weights)
