"""The Attack interface and the checks every attack shares.

An attack is built once per run by ``krum_mpi.attacks.make`` (which validates the parameters) and
then called every step::

    crafted = attack.craft(honest, n_byzantine, rng, aggregate=rule)   # (n_byzantine, d) float32

``honest`` is what the adversary knows: every honest gradient of the step in the omniscient model,
the Byzantine workers' own honest gradients in the colluding model. ``rng`` is a
``numpy.random.Generator`` (random draws happen on the host, so a seed gives the same vectors on
NumPy and CuPy). ``aggregate`` maps an (n, d) array to the (d,) aggregate of the rule in use; only
the line-search attacks need it. Inputs may be NumPy or CuPy: ``xp`` is taken from ``honest`` and
the output lives in the same namespace.
"""
from __future__ import annotations

import numbers

import numpy as np

from krum_mpi.backend import array_namespace, astype, chunk_columns

MOMENT_CHUNK = 8192   # columns per chunk of honest_mean / honest_std on the CPU: float64 temporaries in L2


class Attack:
    """Base class: subclasses set ``name``, ``kind``, ``defaults`` and override ``_craft``."""

    name = "?"
    kind = "gradient"       # "none" | "gradient" | "data" | "nonfinite"
    defaults: dict = {}     # parameter -> default value; anything else given to make() is an error
    source = ""             # where the attack comes from (shown in docs/attacks.md)

    def __init__(self, n_workers: int, n_byzantine: int, f: int, **params):
        self.n_workers = check_int("n_workers", n_workers, low=1)
        self.n_byzantine = check_int("n_byzantine", n_byzantine, low=0)
        self.f = check_int("f", f, low=0)
        if self.n_byzantine >= self.n_workers:
            raise ValueError(f"n_byzantine = {n_byzantine} leaves no honest worker among n_workers = "
                             f"{n_workers}: use n_byzantine < n_workers")
        if self.f >= self.n_workers:
            raise ValueError(f"f = {f} must be < n_workers = {n_workers}")
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"attack {self.name!r} has no parameter {unknown[0]!r} (its parameters: {known})")
        self.params = {**self.defaults, **params}
        self._validate()

    def _validate(self) -> None:
        """Check ``self.params``; raise ValueError with one line. Override per attack."""

    def label_map(self, y, n_classes: int):
        """Labels the Byzantine workers train on: unchanged except for data attacks."""
        return y

    takes_columns = False   # True: _craft also takes ``columns`` (an attack whose values depend on the coordinate)

    def craft(self, honest, n_byzantine: int, rng=None, aggregate=None, columns=None):
        """The Byzantine vectors of one step: (n_byzantine, d) float32, same namespace as ``honest``.
        ``columns``: (first, d_total) when ``honest`` holds only the coordinates first..first + d - 1
        of longer vectors (block-by-block crafting of the sharded placement); None: whole rows."""
        xp = array_namespace(honest)
        if getattr(honest, "ndim", None) != 2:
            raise ValueError(f"honest must be a 2-D (h, d) array, got shape {getattr(honest, 'shape', None)}")
        n_byzantine = check_int("n_byzantine", n_byzantine, low=0)
        if n_byzantine == 0:
            return xp.empty((0, honest.shape[1]), dtype=xp.float32)
        if self.takes_columns:
            out = self._craft(xp, honest, n_byzantine, rng, aggregate, columns=columns)
        else:
            out = self._craft(xp, honest, n_byzantine, rng, aggregate)
        return xp.ascontiguousarray(out, dtype=xp.float32)

    def _craft(self, xp, honest, n_byzantine, rng, aggregate):
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({self.name!r}, n={self.n_workers}, byz={self.n_byzantine}, f={self.f}{', ' if args else ''}{args})"


# ---- shared helpers ---------------------------------------------------------------------------------

def check_int(name: str, value, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} = {value} must be >= {low}")
    return int(value)


def check_real(name: str, value, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} = {value} must be >= {low}")
    return float(value)


def check_rng(rng, attack: str) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"attack {attack!r} needs rng, a numpy.random.Generator (got {type(rng).__name__})")
    return rng


def by_columns(xp, honest, per_chunk, rows=1):
    """(rows, d) float64: per_chunk(chunk) -> (rows, c) for column chunks of honest, written into one
    array (every statistic here is per column: the same values as on the whole array), with
    cache-sized float64 temporaries on the CPU (np.std of 16 x 1.1e6 float32 rows made four 141 MB
    temporaries and took most of a step)."""
    d = honest.shape[1]
    step = max(1, chunk_columns(xp, d, MOMENT_CHUNK))
    out = xp.empty((rows, d), dtype=xp.float64)
    for c in range(0, d, step):
        out[:, c:c + step] = per_chunk(honest[:, c:c + step])
    return out


def honest_mean(xp, honest):
    """Per-coordinate mean, accumulated in float64 (h is small, d may be large)."""
    rows = honest.shape[0]
    return by_columns(xp, honest, lambda h: (xp.sum(h, axis=0, dtype=xp.float64) / rows)[None, :])[0, :]


def honest_std(xp, honest):
    """Per-coordinate sample standard deviation (ddof = 1, as torch.std in the ALIE code); 0 for h = 1."""
    return honest_moments(xp, honest)[1]


def honest_moments(xp, honest):
    """(honest_mean, honest_std) in one pass over each column chunk: bitwise NumPy's mean and its
    std's steps (deviations from that mean, squared, summed, divided by h - 1, square root)."""
    h = honest.shape[0]
    if h < 2:
        return honest_mean(xp, honest), xp.zeros(honest.shape[1], dtype=xp.float64)

    def both(chunk):
        mean = xp.sum(chunk, axis=0, dtype=xp.float64) / h   # NumPy's mean, in the standard's terms
        dev = astype(xp, chunk, xp.float64)
        dev -= mean
        dev *= dev
        return xp.stack([mean, xp.sqrt(xp.sum(dev, axis=0) / (h - 1))])

    pair = by_columns(xp, honest, both, rows=2)
    return pair[0, :], pair[1, :]


def repeat_rows(xp, vector, n_byzantine: int):
    """Every Byzantine worker sends the same vector (colluders agree on one point)."""
    return xp.broadcast_to(vector.astype(xp.float32), (n_byzantine, vector.shape[0]))
