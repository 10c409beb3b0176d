"""Synthetic classification data at any scale, with no storage.

Sample g of a split is a pure function of (seed, split, g): its random numbers come from a
counter-based hash (SplitMix64) of (seed, split, g, column), so any row can be made on its own, on any
rank, in any order, and a worker of shard [start, stop) generates exactly its rows (sample i of worker
w is global sample start_w + i). A study of 10^9 samples needs no disk and no rank ever holds the set.

Generators (``data.generator``):
- ``teacher``: x ~ N(0, I_p); y = argmax_c (x . W[:, c]) for a fixed random teacher W ~ N(0, 1)^(p x C)
  (a softmax-regression teacher; with C = 2 a logistic one). Linearly separable when noise = 0.
- ``mixture``: y uniform over C classes; x = mu_y + N(0, I_p), with class means mu_c of norm 2 drawn
  at random (two means are about 2.8 apart: a Bayes error of about 8 % for two classes in high p).
With ``data.image_shape = [C, H, W]`` the rows are images for the convolutional models
(``n_features`` becomes C*H*W; use it with ``generator = "mixture"``): each class mean is a smooth
random pattern (a sum of low-frequency plane waves, see ``_image_means``, scaled to a pixel RMS of
0.5), so neighbouring pixels are correlated as in real images; the noise is N(0, I) per pixel.
For both, ``data.noise`` is the probability that a label is replaced by a uniformly random class.
The test set is a separate stream (split = test) of ``data.n_test`` samples.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..errors import DataError
from .base import TAG_TEACHER, TAG_TEST, TAG_TRAIN, Dataset

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_U32 = np.uint64(0xFFFFFFFF)
_LABEL_CHUNK = 1 << 16  # rows generated at a time when all labels are needed


def _splitmix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic; arrays do not warn on overflow)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def stream_key(seed: int, tag: int) -> np.uint64:
    """A 64-bit key per (seed, purpose), from NumPy's SeedSequence (which mixes any size of seed)."""
    return np.random.SeedSequence([seed, tag]).generate_state(1, dtype=np.uint64)[0]


def hash_bits(key: np.uint64, rows: np.ndarray, n_cols: int, col0: int = 0) -> np.ndarray:
    """(k, n_cols) uint64 random bits: entry (i, j) is a pure function of (key, rows[i], col0 + j)."""
    rows = np.asarray(rows, dtype=np.uint64).reshape(-1, 1)
    row_state = _splitmix(rows ^ np.full(1, key, dtype=np.uint64))
    cols = (np.arange(col0, col0 + n_cols, dtype=np.uint64) + np.uint64(1)) * _GOLDEN
    return _splitmix(row_state + cols.reshape(1, -1))


def hash_uniform(key, rows, n_cols, col0=0) -> np.ndarray:
    """Uniform floats in (0, 1), float64, (k, n_cols)."""
    bits = hash_bits(key, rows, n_cols, col0)
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


def hash_normal(key, rows, n_cols, col0=0) -> np.ndarray:
    """Standard normals, float32, (k, n_cols): Box-Muller on the two 32-bit halves of each hash."""
    bits = hash_bits(key, rows, n_cols, col0)
    u1 = ((bits >> np.uint64(32)).astype(np.float64) + 0.5) * 2.0 ** -32
    u2 = ((bits & _U32).astype(np.float64) + 0.5) * 2.0 ** -32
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)


def _check_model_size(p: int, C: int, image: bool) -> None:
    """The teacher weights or class means (p x C, drawn in float64) must fit in memory before they are
    drawn: DataError naming the key to lower, not an out-of-memory error minutes later."""
    from ..run.preflight import available_memory

    need, avail = 12.0 * p * C, available_memory()
    if need > avail:
        key = ("data.image_shape" if image else "data.n_features") if p >= C else "data.n_classes"
        raise DataError(f"synthetic data of {p} features and {C} classes needs {need / 2**30:.3g} GiB for its "
                        f"generator alone but {avail / 2**30:.3g} GiB is available: lower {key}")


class SyntheticDataset(Dataset):
    contiguous_iid = True   # samples are IID by construction: an IID shard is a block of indices

    def __init__(self, cfg, seed: int):
        super().__init__(split=cfg.split, alpha=cfg.alpha, gamma=cfg.gamma, seed=seed)
        self.generator = cfg.generator
        self.name = f"synthetic-{self.generator}"
        shape = [int(v) for v in cfg.image_shape]
        if shape and len(shape) != 3:
            raise DataError(f"data.image_shape = {shape} must be [channels, height, width]")
        self.input_shape = tuple(shape) if shape else None
        self.n_features = math.prod(shape) if shape else int(cfg.n_features)   # exact: np.prod wraps
        self.n_classes = int(cfg.n_classes)
        self.n_train = int(cfg.n_train)
        if cfg.max_train > 0:
            self.n_train = min(self.n_train, int(cfg.max_train))
        self.n_test = int(cfg.n_test)
        self.noise = float(cfg.noise)
        p, C = self.n_features, self.n_classes
        _check_model_size(p, C, bool(shape))
        if self.generator not in ("teacher", "mixture"):
            raise ValueError(f"unknown data.generator {self.generator!r}: use teacher or mixture")
        self._seed = seed   # the teacher or the class means are drawn at first use (after the memory preflight)
        self._keys = {TAG_TRAIN: stream_key(seed, TAG_TRAIN), TAG_TEST: stream_key(seed, TAG_TEST)}
        self.provenance = {"source": "synthetic", "generator": self.generator, "seed": seed,
                           "n_features": p, "n_classes": C, "noise": self.noise,
                           "n_train": self.n_train, "n_test": self.n_test,
                           "standardized": False, "input_shape": list(shape)}

    @functools.cached_property
    def weights(self) -> np.ndarray:
        """The teacher W (p, C) float32 (generator = teacher)."""
        rng = np.random.default_rng([self._seed, TAG_TEACHER])
        return rng.standard_normal((self.n_features, self.n_classes)).astype(np.float32)

    @functools.cached_property
    def means(self) -> np.ndarray:
        """The class means (C, p) float32 (generator = mixture)."""
        rng = np.random.default_rng([self._seed, TAG_TEACHER])
        p, C = self.n_features, self.n_classes
        means = _image_means(rng, C, self.input_shape) if self.input_shape else rng.standard_normal((C, p))
        scale = 2.0 * (np.sqrt(p / 16) if self.input_shape else 1.0)
        return (scale * means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)

    # Columns of a row's random stream: 0..p-1 features, p: label noise coin, p+1: noisy label,
    # p+2: class (mixture).
    def generate(self, tag: int, rows: np.ndarray):
        """(X float32 (k, p), y int64 (k,)) for global sample numbers ``rows`` of split ``tag``."""
        key, p, C = self._keys[tag], self.n_features, self.n_classes
        rows = np.asarray(rows, dtype=np.int64)
        X = hash_normal(key, rows, p)
        extra = hash_uniform(key, rows, 3, col0=p)
        if self.generator == "teacher":
            y = np.argmax(X @ self.weights, axis=1).astype(np.int64)
        else:
            y = np.minimum((extra[:, 2] * C).astype(np.int64), C - 1)
            X += self.means[y]
        if self.noise > 0:
            flip = extra[:, 0] < self.noise
            y[flip] = np.minimum((extra[flip, 1] * C).astype(np.int64), C - 1)
        return np.ascontiguousarray(X), y

    def read_train(self, indices):
        return self.generate(TAG_TRAIN, indices)

    def _labels(self, tag: int, rows: np.ndarray) -> np.ndarray:
        """Labels alone: the mixture draws them without features (cheap); the teacher needs the features."""
        if self.generator == "teacher":
            return self.generate(tag, rows)[1]
        key, p, C = self._keys[tag], self.n_features, self.n_classes
        extra = hash_uniform(key, rows, 3, col0=p)
        y = np.minimum((extra[:, 2] * C).astype(np.int64), C - 1)
        if self.noise > 0:
            flip = extra[:, 0] < self.noise
            y[flip] = np.minimum((extra[flip, 1] * C).astype(np.int64), C - 1)
        return y

    def read_train_labels(self, start: int, stop: int) -> np.ndarray:
        out = np.empty(stop - start, dtype=np.int64)
        for a in range(start, stop, _LABEL_CHUNK):
            b = min(a + _LABEL_CHUNK, stop)
            out[a - start:b - start] = self._labels(TAG_TRAIN, np.arange(a, b))
        return out

    def train_labels(self) -> np.ndarray:
        """All training labels, for the label-skew splits (int64, 8 bytes a sample). The mixture draws
        labels without features; the teacher generates every sample once, in chunks (O(N p) time)."""
        if not hasattr(self, "_train_labels"):
            self._train_labels = self.read_train_labels(0, self.n_train)
        return self._train_labels

    def test_set(self):
        return self.generate(TAG_TEST, np.arange(self.n_test))

    def iter_train(self, chunk_rows: int = _LABEL_CHUNK):
        """Yield the training set in order, chunk by chunk (to write it to the HDF5 format)."""
        for a in range(0, self.n_train, chunk_rows):
            yield self.generate(TAG_TRAIN, np.arange(a, min(a + chunk_rows, self.n_train)))


def _image_means(rng: np.random.Generator, n_classes: int, shape) -> np.ndarray:
    """(C, c*h*w) smooth patterns: per class and channel, a sum of 4 plane waves of random direction,
    frequency (at most 3 cycles across the image) and phase."""
    c, h, w = shape
    yy, xx = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
    out = np.zeros((n_classes, c, h, w))
    for k in range(n_classes):
        for ch in range(c):
            for _ in range(4):
                fy, fx = rng.uniform(-3, 3, size=2)
                out[k, ch] += np.cos(2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 2 * np.pi))
    return out.reshape(n_classes, -1)


def load(cfg, seed: int) -> SyntheticDataset:
    return SyntheticDataset(cfg, seed)
