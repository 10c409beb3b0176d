"""A validation split carved from the training set (``data.validation_fraction``), never from the test set.

``with_validation(ds, fraction, seed)`` wraps any Dataset: round(n_train * fraction) training rows
become the validation set, the others stay the training set every worker is sharded from. Which rows:
a seeded permutation of the training indices (``default_rng([seed, TAG_VALIDATION])``); for a dataset
whose training rows are already in random order (``contiguous_iid``: synthetic data) the last rows,
so that no index array of a 10^9-row set is built. The same seed gives the same split whatever the
rule, the attack or the number of ranks. Feature scaling is unchanged: datasets standardised with
training statistics computed them on the training rows before the split (labels never leak; the
validation rows' features take part in the mean and variance).
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .base import Dataset
from .streams import TAG_VALIDATION


def validation_split(n_train: int, fraction: float, seed: int, contiguous: bool):
    """(kept training indices or None for the first n_keep rows, validation indices), both sorted."""
    n_val = int(round(n_train * fraction))
    if n_val < 1 or n_val >= n_train:
        raise DataError(f"data.validation_fraction = {fraction} leaves no training or no validation row of "
                        f"{n_train}: use a value between 0 and 1 that leaves both")
    if contiguous:
        return None, np.arange(n_train - n_val, n_train, dtype=np.int64)
    perm = np.random.default_rng([seed, TAG_VALIDATION]).permutation(n_train)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class WithValidation(Dataset):
    """``inner`` less its validation rows; ``validation_set()`` returns them."""

    def __init__(self, inner: Dataset, fraction: float, seed: int):
        super().__init__(split=inner.split, alpha=inner.alpha, gamma=inner.gamma, seed=inner.seed)
        self.inner = inner
        self.contiguous_iid = inner.contiguous_iid
        self.kept, self.validation_rows = validation_split(inner.n_train, fraction, seed, inner.contiguous_iid)
        self.name, self.n_features, self.n_classes = inner.name, inner.n_features, inner.n_classes
        self.input_shape, self.n_test = inner.input_shape, inner.n_test
        self.n_train = inner.n_train - len(self.validation_rows)
        self.n_validation = len(self.validation_rows)
        self.provenance = {**inner.provenance, "validation": {
            "fraction": fraction, "rows": self.n_validation, "seed": seed,
            "rows_from": "the last training rows (already in random order)" if self.kept is None
            else "a seeded permutation of the training rows"}}

    def _map(self, indices):
        return indices if self.kept is None else self.kept[indices]

    def read_train(self, indices):
        return self.inner.read_train(self._map(np.asarray(indices, dtype=np.int64)))

    def train_labels(self):
        labels = self.inner.train_labels()
        return labels[:self.n_train] if self.kept is None else labels[self.kept]

    def read_train_labels(self, start, stop):
        if self.kept is None:
            return self.inner.read_train_labels(start, stop)
        return self.train_labels()[start:stop]

    def test_set(self):
        return self.inner.test_set()

    def validation_set(self):
        return self.inner.read_train(self.validation_rows)

    def describe(self) -> dict:
        return {**super().describe(), "n_validation": self.n_validation}


def with_validation(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """``ds`` unchanged for fraction 0, else wrapped (see the module docstring)."""
    return ds if fraction <= 0 else WithValidation(ds, fraction, seed)
