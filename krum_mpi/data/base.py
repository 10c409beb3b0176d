"""Dataset and Shard: what the training loop sees of any data source.

A ``Dataset`` knows its sizes and can read training rows by index; ``Dataset.shard(w, n)`` gives worker
w its part of the training set (a pure function of the dataset, n, w, the split policy and the seed),
and ``Shard.batch(step, b)`` draws that worker's minibatch for one step, a pure function of
(seed, worker, step). Every random draw below is seeded by ``numpy.random.default_rng([seed, TAG, ...])``
with a distinct TAG per purpose, so no two purposes share a stream.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .streams import (TAG_BATCH, TAG_SHARD, TAG_SUBSAMPLE, TAG_TEACHER, TAG_TEST,  # noqa: F401 (re-exported)
                      TAG_TEST_SPLIT, TAG_TRAIN)


class Shard:
    """The training samples of one worker: ``indices`` into the dataset's training set.

    A contiguous shard (synthetic data) is kept as (start, stop) and never materialised, so a worker
    of a 10^9-sample study holds two integers, not an index array.
    """

    def __init__(self, dataset, worker: int, n_workers: int, seed: int, indices=None,
                 start: int = 0, stop: int = 0, label_target=None):
        self.dataset = dataset
        self.worker = worker
        self.n_workers = n_workers
        self.seed = seed
        self._indices = None if indices is None else np.ascontiguousarray(indices, dtype=np.int64)
        self.start, self.stop = start, stop
        # the label distribution the split policy aimed at for this worker (None for iid)
        self.label_target = label_target

    def __len__(self) -> int:
        return len(self._indices) if self._indices is not None else self.stop - self.start

    @property
    def indices(self) -> np.ndarray:
        """Sorted int64 indices into the training set (materialised on demand for a contiguous shard)."""
        if self._indices is None:
            return np.arange(self.start, self.stop, dtype=np.int64)
        return self._indices

    def positions_to_indices(self, positions: np.ndarray) -> np.ndarray:
        if self._indices is None:
            return self.start + positions.astype(np.int64)
        return self._indices[positions]

    def batch(self, step: int, batch_size: int):
        """Minibatch of step ``step``: ``batch_size`` samples drawn uniformly, with replacement, from this
        shard. Returns (X float32 (b, p) C-contiguous, y int64 (b,)); same (seed, worker, step), same batch."""
        if len(self) == 0:
            raise DataError(f"worker {self.worker} of {self.n_workers} has no training samples in "
                            f"{self.dataset.name}: use fewer workers or a larger data.alpha")
        rng = np.random.default_rng([self.seed, TAG_BATCH, self.worker, step])
        positions = rng.integers(0, len(self), size=batch_size)
        return self.dataset.read_train(self.positions_to_indices(positions))

    def labels(self) -> np.ndarray:
        """The labels of every sample of this shard (reads them all: for tests and reports)."""
        return self.dataset.train_labels()[self.indices] if self._indices is not None \
            else self.dataset.read_train_labels(self.start, self.stop)

    def __repr__(self):
        return f"Shard({self.dataset.name}, worker={self.worker}/{self.n_workers}, samples={len(self)})"


class Dataset:
    """Base class. Subclasses set the attributes and implement ``read_train``, ``train_labels``,
    ``test_set``; ``shard`` comes from here."""

    name: str
    n_features: int
    n_classes: int
    n_train: int
    n_test: int
    provenance: dict
    input_shape = None   # (channels, height, width) where rows are images, for the image models

    def __init__(self, split: str = "iid", alpha: float = 1.0, gamma: float = 1.0, seed: int = 0):
        self.split = split
        self.alpha = alpha
        self.gamma = gamma
        self.seed = seed
        self._splits = {}   # n_workers -> list of (indices, label_target), computed once per rank

    # -- to implement ------------------------------------------------------------------------
    def read_train(self, indices: np.ndarray):
        """(X float32 (k, p) C-contiguous, y int64 (k,)) for training indices (any order, repeats allowed)."""
        raise NotImplementedError

    def train_labels(self) -> np.ndarray:
        """int64 labels of the whole training set (needed by the label-skew split policies)."""
        raise NotImplementedError

    def read_train_labels(self, start: int, stop: int) -> np.ndarray:
        return self.train_labels()[start:stop]

    def test_set(self):
        raise NotImplementedError

    def validation_set(self):
        """(X, y) of the validation rows, or (None, None) without data.validation_fraction."""
        return None, None

    # -- sharding ----------------------------------------------------------------------------
    def shard(self, worker: int, n_workers: int) -> Shard:
        """Worker ``worker``'s part of the training set; the parts of all workers partition it exactly."""
        if not 0 <= worker < n_workers:
            raise ValueError(f"worker {worker} is not in 0..{n_workers - 1}")
        if n_workers > self.n_train:
            raise DataError(f"{self.name}: {n_workers} workers but only {self.n_train} training samples: "
                            "use fewer workers or more data")
        from . import shard as policies

        if self.split == "iid" and self.contiguous_iid:
            start, stop = policies.contiguous_bounds(self.n_train, n_workers, worker)
            return Shard(self, worker, n_workers, self.seed, start=start, stop=stop)
        if self.split == "iid":
            indices = policies.iid_part(self.n_train, n_workers, worker, self.seed)
            return Shard(self, worker, n_workers, self.seed, indices=indices)
        # label-skew splits are computed for all workers at once, then kept for this rank's other workers
        if n_workers not in self._splits:
            self._splits[n_workers] = policies.split(self, n_workers)
        indices, target = self._splits[n_workers][worker]
        return Shard(self, worker, n_workers, self.seed, indices=indices, label_target=target)

    def label_counts(self, n_workers: int) -> np.ndarray:
        """(n_workers, n_classes) int64: how many samples of each class every worker holds (reads all
        training labels: for the results file and reports, not for the training loop)."""
        out = np.zeros((n_workers, self.n_classes), dtype=np.int64)
        for w in range(n_workers):
            out[w] = np.bincount(self.shard(w, n_workers).labels(), minlength=self.n_classes)
        return out

    # True where the training samples are already in random order (synthetic data), so that an
    # IID shard may be a contiguous block that needs no index array.
    contiguous_iid = False

    def describe(self) -> dict:
        return {"name": self.name, "n_features": self.n_features, "n_classes": self.n_classes,
                "n_train": self.n_train, "n_test": self.n_test, "split": self.split,
                "provenance": self.provenance}

    def __repr__(self):
        return (f"{type(self).__name__}({self.name}: {self.n_train} train, {self.n_test} test, "
                f"{self.n_features} features, {self.n_classes} classes)")


class ArrayDataset(Dataset):
    """A dataset held in memory (spambase, the MNIST test set: a few MB)."""

    def __init__(self, name, X_train, y_train, X_test, y_test, n_classes, provenance, **split_options):
        super().__init__(**split_options)
        self.name = name
        self.X_train = np.ascontiguousarray(X_train, dtype=np.float32)
        self.y_train = np.ascontiguousarray(y_train, dtype=np.int64)
        self.X_test = np.ascontiguousarray(X_test, dtype=np.float32)
        self.y_test = np.ascontiguousarray(y_test, dtype=np.int64)
        self.n_features = self.X_train.shape[1]
        self.n_classes = int(n_classes)
        self.n_train = len(self.y_train)
        self.n_test = len(self.y_test)
        self.provenance = provenance

    def read_train(self, indices):
        return np.ascontiguousarray(self.X_train[indices]), self.y_train[indices]

    def train_labels(self):
        return self.y_train

    def test_set(self):
        return self.X_test, self.y_test


def train_test_split(n: int, test_fraction: float, seed: int):
    """Seeded split of n rows into (train_idx, test_idx), both sorted; test gets round(n * fraction)."""
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n_test >= n:
        raise DataError(f"data.test_fraction = {test_fraction} leaves no train or no test sample of {n}: "
                        "use a value between 0 and 1 that leaves both")
    perm = np.random.default_rng([seed, TAG_TEST_SPLIT]).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def subsample(indices: np.ndarray, max_train: int, seed: int) -> np.ndarray:
    """At most ``max_train`` of the indices (a seeded random subset, sorted); all when max_train is 0."""
    if max_train <= 0 or max_train >= len(indices):
        return indices
    keep = np.random.default_rng([seed, TAG_SUBSAMPLE]).choice(len(indices), max_train, replace=False)
    return indices[np.sort(keep)]


def standardize(X_train: np.ndarray, *others):
    """Scale features to zero mean, unit variance with the TRAINING statistics (constant features: scale 1).

    Returns (mean, std, X_train_scaled, *others_scaled). Statistics in float64: spambase features span
    0..15841 and a float32 sum over thousands of rows loses digits.
    """
    mean = X_train.mean(axis=0, dtype=np.float64)
    std = X_train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    scaled = [((X - mean) / std).astype(np.float32) for X in (X_train, *others)]
    return (mean, std, *scaled)
