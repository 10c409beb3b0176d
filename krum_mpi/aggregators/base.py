"""What every aggregation rule shares: the result record, input checks and the array namespace.

A rule is a pure function ``rule(X, f, **options) -> Aggregation`` of an (n, d) float array from
NumPy or CuPy. ``Aggregation.vector`` lives in the input's namespace; ``selected`` and ``weights``
are small NumPy arrays (they go to the results file every step).
"""
from dataclasses import dataclass

import numpy as np

from krum_mpi.backend import array_namespace, host_dtype, to_host  # noqa: F401 (array_namespace: re-exported for the rules)


@dataclass(frozen=True)
class Aggregation:
    """One aggregation step.

    vector:   (d,) aggregate, same namespace and dtype as the input.
    selected: NumPy int64 row indices, best first, or None when the rule selects no rows.
    weights:  NumPy float64 (n,) weight of each input row in ``vector`` when ``vector`` is a
              weighted mean of the rows (sum 1), or None for non-linear rules (median ...).
    recomputed: distances the certified selection recomputed beyond the fast kernel (direct
              float64 or exact; 0 in ordinary runs), counted by the Aggregator.
    """

    vector: object
    selected: np.ndarray | None = None
    weights: np.ndarray | None = None
    recomputed: int = 0


def to_numpy(x):
    """A small device array (scores, distances, indices) as a NumPy array (backend.to_host)."""
    return to_host(x)


def check_input(X, f):
    """Validate the (n, d) input and f; returns (n, d). ValueError with one line otherwise."""
    if not hasattr(X, "ndim") or not hasattr(X, "dtype"):
        raise ValueError(f"input must be a NumPy or CuPy array, got {type(X).__name__}")
    if X.ndim != 2:
        raise ValueError(f"input must be 2-D (n workers, d parameters), got shape {tuple(X.shape)}")
    n, d = X.shape
    if n == 0 or d == 0:
        raise ValueError(f"input is empty (shape {tuple(X.shape)}): need at least one row and one column")
    if host_dtype(X) not in (np.float32, np.float64):
        raise ValueError(f"input dtype must be float32 or float64, got {host_dtype(X)}")
    check_f(f)
    if host_dtype(X) == np.float64:   # not X.dtype == np.float64: array API dtypes never equal NumPy's
        check_float64_range(X)
    return n, d


# The largest finite |x| of float64 input whose decisions are certified exact: n d (2 x)^2 stays
# far inside float64's range (below 2^1000 for n d < 2^100), so every squared distance, score,
# bound and exact value converts to a finite float64, and sums of two values (the coordinate-wise
# windows, the median) never overflow. float32 input is always inside (|x| < 2^128).
FLOAT64_BOUND = 2.0**448


def check_float64_range(X):
    """ValueError (one line) when a finite entry of float64 X reaches FLOAT64_BOUND; one pass over X
    in column chunks (no copy of X). NaN and +-inf are ordinary non-finite entries, not refused."""
    xp = array_namespace(X)
    n, d = X.shape
    step = max(1, (1 << 20) // n)
    largest = 0.0
    for c in range(0, d, step):
        block = X[:, c:min(c + step, d)]   # the array API refuses a stop past the end
        largest = max(largest, float(xp.max(xp.where(xp.isfinite(block), xp.abs(block), 0.0))))
    if largest >= FLOAT64_BOUND:
        raise ValueError(f"float64 input holds |x| = {largest:.3g}, at or above 2^448 = {FLOAT64_BOUND:.3g}, "
                         "the largest magnitude whose decisions are certified exact: scale the rows down "
                         "(the rules are scale-equivariant) or send float32")


def check_f(f):
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)):
        raise ValueError(f"f (declared number of Byzantine workers) must be an int, got {f!r}")
    if f < 0:
        raise ValueError(f"f (declared number of Byzantine workers) must be >= 0, got {f}")


def one_hot_weights(n, rows):
    """Uniform weights over ``rows`` (the rows a Krum-type rule averaged)."""
    weights = np.zeros(n, dtype=np.float64)
    weights[np.asarray(rows)] = 1.0 / len(rows)
    return weights


def weighted_rows(X, weights):
    """sum_i weights[i] * X[i] without copying rows: one (n,) x (n, d) product in X's namespace."""
    xp = array_namespace(X)
    return xp.asarray(weights, dtype=X.dtype) @ X
