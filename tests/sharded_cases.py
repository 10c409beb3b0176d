"""Inputs and rules shared by the sharded-aggregation tests (single process and mpiexec)."""
import numpy as np

from krum_mpi import aggregators

N, F = 11, 2
RULES = ["average", "krum", "multi-krum", "bulyan", "mda", "median", "trimmed-mean", "meamed",
         "geometric-median", "centered-clipping", "nnm+krum", "nnm+median"]
BULYAN_N = 11   # bulyan needs n >= 4f + 3


def inputs(d=37, seed=0):
    """name -> (n, d) float32 rows: ordinary ones and the adversarial numerical cases."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(N, d)).astype(np.float32)
    cases = {"normal": base}
    huge = base.copy()
    huge[3] = 3.4e38
    huge[7, ::2] = -3.4e38
    cases["huge"] = huge
    far = base.copy()
    far[5] = -1000.0
    cases["far"] = far
    bad = base.copy()
    bad[1, 3] = np.nan
    bad[9, -1] = np.inf
    cases["nonfinite"] = bad
    # small integers on a large offset: exact ties between different rows, and intervals from the
    # fast kernel too wide to order them (the direct and exact levels decide)
    tied = (1e6 + rng.integers(-2, 3, size=(N, d))).astype(np.float32)
    tied[4] = tied[6]
    cases["ties"] = tied
    return cases


def gathered(name, X, f=F):
    agg = aggregators.make(name, X.shape[0], f)(X)
    return agg.vector, agg.selected


def same_selection(name, a, b):
    """Multi-Krum's selection is exact as a set (its listed order follows the bounds)."""
    if a is None or b is None:
        return a is None and b is None
    if name.endswith("multi-krum") or name.endswith("mda"):
        return sorted(a.tolist()) == sorted(b.tolist())
    return a.tolist() == b.tolist()


def close(a, b, X):
    """Equal to float32 rounding (non-finite entries in the same places): per coordinate within
    1e-5 of the largest finite input there (a float32 mean of rows that cancel is only that exact)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return False
    ok = np.isfinite(a)
    largest = np.max(np.where(np.isfinite(X), np.abs(X.astype(np.float64)), 0.0), axis=0)
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), largest)[ok]
    return bool(np.all(np.abs(a[ok] - b[ok]) <= 1e-5 * scale + 1e-6))
