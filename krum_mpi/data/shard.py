"""Split policies: how the training set is divided among n workers (seeded, exact partitions).

- ``iid``: a seeded random permutation cut into n near-equal parts (sizes differ by at most one).
- ``dirichlet``: label skew after Hsu, Qi and Brown (2019), "Measuring the effects of non-identical data
  distribution for federated visual classification": for every class c, proportions
  p_c ~ Dirichlet(alpha * 1_n) over the n workers, and worker w receives the fraction p_c[w] of class
  c's samples (rounded so counts add up). Small alpha: each worker sees few classes; large alpha: IID.
  The draw is repeated (seeded) until every worker holds at least min(10, N // n) samples.
  ``label_target`` of a shard = the label distribution the draw states for it, p_c[w] * n_c normalised
  (the realised counts differ from it by rounding only).
- ``gamma``: the gamma-similarity split of Karimireddy, He and Jaggi (ICLR 2022), "Byzantine-robust
  learning on heterogeneous datasets via bucketing": a fraction gamma of the samples, drawn at random,
  is dealt out IID; the rest is sorted by label and cut into n contiguous blocks. gamma = 1: IID;
  gamma = 0: each worker holds a contiguous run of labels (one or two classes when n >= C).

All functions return, per worker, (sorted int64 indices, label_target or None); the index sets of all
workers partition range(N) exactly.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .streams import TAG_SHARD

MAX_DIRICHLET_TRIES = 1000


def contiguous_bounds(n: int, n_workers: int, worker: int) -> tuple[int, int]:
    """[start, stop) of worker's block when n items are cut into n_workers near-equal blocks."""
    base, extra = divmod(n, n_workers)
    start = worker * base + min(worker, extra)
    return start, start + base + (worker < extra)


def _cut(order: np.ndarray, n_workers: int) -> list[np.ndarray]:
    return [order[slice(*contiguous_bounds(len(order), n_workers, w))] for w in range(n_workers)]


def iid(n: int, n_workers: int, seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng([seed, TAG_SHARD, n_workers]).permutation(n)
    return [np.sort(part) for part in _cut(perm, n_workers)]


def iid_part(n: int, n_workers: int, worker: int, seed: int) -> np.ndarray:
    """Worker's part of ``iid`` alone: the permutation is made and dropped, so a rank keeps only the
    index arrays of its own workers (8 bytes a sample of theirs), never the whole assignment."""
    perm = np.random.default_rng([seed, TAG_SHARD, n_workers]).permutation(n)
    return np.sort(perm[slice(*contiguous_bounds(n, n_workers, worker))])


def dirichlet(labels: np.ndarray, n_classes: int, n_workers: int, alpha: float, seed: int):
    """Per-class Dirichlet(alpha) proportions over workers; returns [(indices, target distribution)]."""
    rng = np.random.default_rng([seed, TAG_SHARD, n_workers, 1])
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(n_classes)]
    min_size = min(10, len(labels) // n_workers)
    for _ in range(MAX_DIRICHLET_TRIES):
        props = rng.dirichlet(np.full(n_workers, alpha), size=n_classes)        # (C, n)
        props = np.nan_to_num(props)  # alpha so small that the draw underflows: rows of zeros
        counts = np.stack([_apportion(len(idx), p) for idx, p in zip(by_class, props)])  # (C, n)
        if counts.sum(axis=0).min() >= min_size:
            break
    else:
        raise DataError(f"dirichlet split: with data.alpha = {alpha} some of the {n_workers} workers get "
                        f"fewer than {min_size} samples in every one of {MAX_DIRICHLET_TRIES} draws: "
                        "raise data.alpha or use fewer workers")
    bounds = np.concatenate([np.zeros((n_classes, 1), np.int64), np.cumsum(counts, axis=1)], axis=1)
    out = []
    for w in range(n_workers):
        parts = [by_class[c][bounds[c, w]:bounds[c, w + 1]] for c in range(n_classes)]
        expected = props[:, w] * np.array([len(idx) for idx in by_class])   # before rounding
        target = expected / expected.sum()
        out.append((np.sort(np.concatenate(parts)), target))
    return out


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer counts proportional to weights that sum to total (largest remainders get the rest)."""
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    short = total - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


def gamma_similarity(labels: np.ndarray, n_workers: int, gamma: float, seed: int):
    """A fraction gamma dealt IID, the rest sorted by label in contiguous blocks; [(indices, None)]."""
    rng = np.random.default_rng([seed, TAG_SHARD, n_workers, 2])
    perm = rng.permutation(len(labels))
    n_iid = int(round(gamma * len(labels)))
    iid_part, rest = perm[:n_iid], perm[n_iid:]
    rest = rest[np.argsort(labels[rest], kind="stable")]   # ties stay in random order
    return [(np.sort(np.concatenate([a, b])), None)
            for a, b in zip(_cut(iid_part, n_workers), _cut(rest, n_workers))]


def split(dataset, n_workers: int):
    """The split policy of ``dataset`` applied to its training set: [(indices, label_target)] per worker."""
    if dataset.split == "iid":
        return [(idx, None) for idx in iid(dataset.n_train, n_workers, dataset.seed)]
    labels = dataset.train_labels()
    if dataset.split == "dirichlet":
        return dirichlet(labels, dataset.n_classes, n_workers, dataset.alpha, dataset.seed)
    if dataset.split == "gamma":
        return gamma_similarity(labels, n_workers, dataset.gamma, dataset.seed)
    raise DataError(f"unknown data.split {dataset.split!r}: use iid, dirichlet or gamma")
