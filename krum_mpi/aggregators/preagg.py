"""Pre-aggregation steps that compose with any rule: ``make("nnm+krum", n, f)``.

Each step maps the n input rows to n' new rows, X' = M @ X for a NumPy (n', n) mixing matrix M that
it derives from a rows source (rows.py: gathered or sharded, the same function), and
names the workers behind each new row (``owners``) so that the final rule's selection and weights can
be reported per worker. Steps (left to right in the name, then the rule):

nnm        nearest-neighbour mixing (Allouah et al., AISTATS 2023): row i becomes the mean of its
           n - f nearest rows, itself included (ties to the lowest index). n' = n.
bucketing  (Karimireddy, He, Jaggi, ICLR 2022): shuffle the rows (seeded, a new permutation every
           step), average consecutive buckets of ``bucket_size`` rows. n' = ceil(n / bucket_size).
clipping   static norm clipping: x_i * min(1, clip_norm / ||x_i||). n' = n.
Non-finite rows stay non-finite (and stay at most f) through every step, for the rule to handle.
"""
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from krum_mpi.aggregators.certify import nearest_rows_all
from krum_mpi.aggregators.registry import Option


@dataclass(frozen=True)
class PreStep:
    """apply(rows, f, options, step) -> (mixing (n', n) NumPy float64, owners: list of int64 arrays)."""

    name: str
    apply: Callable
    summary: str
    options: dict = field(default_factory=dict)
    rows_out: Callable = lambda n, options: n
    owners_per_row: Callable = lambda options: 1


def nnm_mixing(rows, f, options, step):
    return nnm_mixing_from(rows.certified(), f)


def nnm_mixing_from(cert, f):
    """NNM's mixing matrix and owners from certified distances (wherever the rows are held)."""
    n = cert.n
    mixing = np.zeros((n, n))
    nearest = nearest_rows_all(cert, n - f - 1)  # refinements of all rows batched
    for i in range(n):  # itself first, then its n - f - 1 exactly nearest (ties: lowest index)
        mixing[i, i] = mixing[i, nearest[i]] = 1.0 / (n - f)
    return mixing, [np.array([i], dtype=np.int64) for i in range(n)]


def bucket_count(n, options):
    return -(-n // options["bucket_size"])


def bucketing_mixing(rows, f, options, step):
    n = rows.n
    size = options["bucket_size"]
    order = np.random.default_rng([options["seed"], step]).permutation(n)
    buckets = [np.sort(order[k:k + size]).astype(np.int64) for k in range(0, n, size)]
    mixing = np.zeros((len(buckets), n))
    for k, members in enumerate(buckets):
        mixing[k, members] = 1.0 / len(members)
    return mixing, buckets


def clipping_mixing(rows, f, options, step):
    n = rows.n
    norms = np.sqrt(rows.sq_distances_to(rows.zeros()))
    with np.errstate(divide="ignore"):
        scale = np.minimum(1.0, options["clip_norm"] / norms)
    if not np.isfinite(norms).all():   # non-finite rows pass through unchanged; a finite float64 row
        scale = np.where(rows.finite(), scale, 1.0)   # beyond ~1e154 (norm inf) is scaled to 0
    return np.diag(scale), [np.array([i], dtype=np.int64) for i in range(n)]


PRE_STEPS = {
    "nnm": PreStep("nnm", nnm_mixing, "nearest-neighbour mixing over the n - f nearest rows"),
    "bucketing": PreStep(
        "bucketing", bucketing_mixing, "average random buckets of bucket_size rows",
        {"bucket_size": Option(2, int, minimum=1, help="rows per bucket (s)"),
         "seed": Option(0, int, minimum=0, help="seed of the per-step shuffles")},
        rows_out=bucket_count, owners_per_row=lambda o: o["bucket_size"]),
    "clipping": PreStep(
        "clipping", clipping_mixing, "scale each row to norm <= clip_norm",
        {"clip_norm": Option(1.0, float, help="norm bound (> 0)")}),
}


def check_pre_options(name, options):
    if name == "clipping" and not options["clip_norm"] > 0:
        raise ValueError(f"option 'clip_norm' of step 'clipping' must be > 0, got {options['clip_norm']}")
