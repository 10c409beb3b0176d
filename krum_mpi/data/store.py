"""The on-disk dataset format of krum-mpi: one HDF5 file, read row by row.

Layout (format_version 1)::

    /                 attrs: format = "krum-mpi-dataset", format_version = 1, name, n_features,
                      n_classes, scaling ("feature" | "global" | "none"), source, source_sha256,
                      input_shape (optional: (channels, height, width) where rows are images)
                      (JSON: file name -> sha256 of the original files), created, description
    /feature_names    (p,) strings, where known
    /train/X          (N, p) float32, chunked by rows (about 64 KiB per chunk), so a worker reads
                      only the chunks of its own rows and never the file
    /train/y          (N,) int64 labels 0..C-1
    /train/mean, /train/std   (p,) float64 statistics of the TRAINING rows, for standardisation
    /test/X, /test/y  held-out rows (optional: without them, data.test_fraction splits the train rows)

``DatasetWriter`` builds such a file from chunks (streamed: any number of rows, constant memory) and
writes it atomically (a temporary file renamed at the end). ``H5Dataset`` (``data.name = "hdf5"``,
``data.path = FILE``) opens it: metadata only, then each batch reads its own rows.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import h5py
import numpy as np

from ..errors import DataError
from .base import Dataset, subsample, train_test_split
from ..inputs.files import regular_file_problem
from .paths import require_file
from .store_checks import FORMAT, FORMAT_VERSION, SCALINGS, FileProblem, check_file, statistics

CHUNK_BYTES = 1 << 16
LABEL_CHUNK = 1 << 16


class _RunningStats:
    """Per-feature mean and sum of squared deviations, merged chunk by chunk (Chan et al.), float64."""

    def __init__(self, p):
        self.n, self.mean, self.m2 = 0, np.zeros(p), np.zeros(p)

    def update(self, X):
        k = len(X)
        if k == 0:
            return
        mean_k = X.mean(axis=0, dtype=np.float64)
        m2_k = ((X - mean_k) ** 2).sum(axis=0, dtype=np.float64)
        delta = mean_k - self.mean
        total = self.n + k
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + m2_k + delta ** 2 * (self.n * k / total)
        self.n = total

    def finish(self, scaling):
        if self.n == 0 or scaling == "none":
            p = len(self.mean)
            return np.zeros(p), np.ones(p)
        if scaling == "global":
            p = len(self.mean)
            mean = self.mean.mean()
            var = (self.m2.sum() + self.n * ((self.mean - mean) ** 2).sum()) / (self.n * p)
            return np.full(p, mean), np.full(p, np.sqrt(var) or 1.0)
        std = np.sqrt(self.m2 / self.n)
        std[std == 0] = 1.0
        return self.mean, std


class DatasetWriter:
    """Write a dataset file chunk by chunk::

        with DatasetWriter("higgs.h5", n_features=28, name="higgs", source="...") as w:
            for X, y in chunks:
                w.append("train", X, y)
    """

    def __init__(self, path, n_features: int, name: str, n_classes: int | None = None,
                 source: str = "", source_sha256: dict | None = None, description: str = "",
                 feature_names=None, scaling: str = "feature", compression: str | None = None,
                 input_shape=None):
        if scaling not in SCALINGS:
            raise ValueError(f"scaling {scaling!r} is not one of {SCALINGS}")
        self.path = Path(path)
        problem = regular_file_problem(self.path)
        if problem and not problem.startswith("not found"):   # never rename over a device, FIFO or folder
            raise DataError(f"output {self.path} {problem}: give a file name for the dataset")
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.p = int(n_features)
        self.n_classes = n_classes
        self.scaling = scaling
        self.compression = compression
        self.stats = _RunningStats(self.p)
        self.max_label = -1
        self.file = h5py.File(self.tmp, "w")
        self.file.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, name=name,
                               n_features=self.p, scaling=scaling, source=source,
                               source_sha256=json.dumps(source_sha256 or {}), description=description,
                               created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if input_shape is not None:
            if int(np.prod(input_shape)) != self.p:
                raise ValueError(f"input_shape {tuple(input_shape)} does not hold {self.p} features")
            self.file.attrs["input_shape"] = np.asarray(input_shape, dtype=np.int64)
        if feature_names is not None:
            self.file.create_dataset("feature_names", data=np.array(feature_names, dtype=object),
                                     dtype=h5py.string_dtype())
        self.rows_per_chunk = max(1, CHUNK_BYTES // (4 * self.p))

    def _datasets(self, split):
        if split not in self.file:
            g = self.file.create_group(split)
            g.create_dataset("X", shape=(0, self.p), maxshape=(None, self.p), dtype=np.float32,
                             chunks=(self.rows_per_chunk, self.p), compression=self.compression)
            g.create_dataset("y", shape=(0,), maxshape=(None,), dtype=np.int64,
                             chunks=(LABEL_CHUNK,), compression=self.compression)
        return self.file[split]["X"], self.file[split]["y"]

    def append(self, split: str, X, y) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split {split!r} must be 'train' or 'test'")
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        if X.ndim != 2 or X.shape[1] != self.p or len(X) != len(y):
            raise ValueError(f"chunk of shape {X.shape} with {len(y)} labels does not fit {self.p} features")
        if len(y) == 0:
            return
        dX, dy = self._datasets(split)
        n = dX.shape[0]
        dX.resize(n + len(X), axis=0)
        dy.resize(n + len(y), axis=0)
        dX[n:] = X
        dy[n:] = y
        self.max_label = max(self.max_label, int(y.max()))
        if split == "train":
            self.stats.update(X)

    def close(self) -> Path:
        """Finish the file (statistics, class count) and move it into place; returns the path."""
        if "train" not in self.file:
            self.abort()
            raise DataError(f"{self.path}: no training rows were written")
        mean, std = self.stats.finish(self.scaling)
        self.file["train"].create_dataset("mean", data=mean)
        self.file["train"].create_dataset("std", data=std)
        n_classes = self.n_classes if self.n_classes is not None else max(self.max_label + 1, 2)
        self.file.attrs["n_classes"] = int(n_classes)
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.file.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            self.close()
        else:
            self.abort()
        return False


def write_arrays(path, X_train, y_train, X_test=None, y_test=None, chunk_rows: int = 65536, **meta) -> Path:
    """Write in-memory arrays to a dataset file (for small sets: spambase, MNIST)."""
    with DatasetWriter(path, n_features=X_train.shape[1], **meta) as w:
        for a in range(0, len(y_train), chunk_rows):
            w.append("train", X_train[a:a + chunk_rows], y_train[a:a + chunk_rows])
        if X_test is not None:
            for a in range(0, len(y_test), chunk_rows):
                w.append("test", X_test[a:a + chunk_rows], y_test[a:a + chunk_rows])
    return Path(path)


# ---------------------------------------------------------------------------------------------
def open_file(path) -> h5py.File:
    """Open a dataset file read-only and check its format; DataError (one line) otherwise."""
    path = require_file(path, "dataset file", "check data.path or create it with 'krum-mpi data convert'")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({' '.join(str(exc).split())}); "
                        "it may be truncated: convert it again") from None
    from ..run.preflight import available_memory

    try:
        check_file(f, available_memory())
    except FileProblem as exc:
        f.close()
        raise DataError(f"{path}: {exc}") from None
    return f


class H5Dataset(Dataset):
    def __init__(self, path, cfg, seed: int):
        super().__init__(split=cfg.split, alpha=cfg.alpha, gamma=cfg.gamma, seed=seed)
        self.path = Path(path)
        self.file = open_file(self.path)
        f = self.file
        self.name = str(f.attrs["name"])
        self.n_features = int(f.attrs["n_features"])
        self.n_classes = int(f.attrs["n_classes"])
        self.scaling = str(f.attrs.get("scaling", "feature"))
        if "input_shape" in f.attrs:
            self.input_shape = tuple(int(v) for v in f.attrs["input_shape"])
        self.X, self.y = f["train"]["X"], f["train"]["y"]
        n_rows = self.X.shape[0]
        # Rows of /train that form the training set (None: all of them, in order).
        self.train_rows = None
        self.test_rows = None
        if "test" not in f:
            self.train_rows, self.test_rows = train_test_split(n_rows, cfg.test_fraction, seed)
        if cfg.max_train > 0:
            rows = self.train_rows if self.train_rows is not None else np.arange(n_rows)
            self.train_rows = subsample(rows, cfg.max_train, seed)
        self.n_train = n_rows if self.train_rows is None else len(self.train_rows)
        self.n_test = f["test"]["y"].shape[0] if "test" in f else len(self.test_rows)
        self.standardized = bool(cfg.standardize) and self.scaling != "none"
        if self.standardized:
            try:
                mean, std = statistics(f["train"], self.n_features)
            except FileProblem as exc:
                raise DataError(f"{self.path}: {exc}") from None
            self.mean, self.inv_std = mean.astype(np.float32), (1.0 / std).astype(np.float32)
        self.provenance = {"source": str(f.attrs.get("source", "")), "file": str(self.path),
                           "source_sha256": json.loads(f.attrs.get("source_sha256", "{}")),
                           "created": str(f.attrs.get("created", "")), "scaling": self.scaling,
                           "standardized": self.standardized,
                           "test_split": "file" if "test" in f else
                           f"split from /train (seed {seed}, test_fraction {cfg.test_fraction})"}

    def _rows(self, X, y, rows: np.ndarray, where: str):
        """Read rows (any order, repeats allowed) of an (X, y) pair, reading each distinct row once."""
        unique, inverse = np.unique(rows, return_inverse=True)
        Xu = X[unique] if len(unique) else np.empty((0, self.n_features), np.float32)
        yu = y[unique] if len(unique) else np.empty(0, np.int64)
        with np.errstate(over="ignore"):   # float64 features beyond float32's range become inf: refused below
            Xu = np.asarray(Xu, dtype=np.float32)
        self._check(Xu, yu, unique, where)
        Xb, yb = Xu[inverse], yu[inverse].astype(np.int64)
        if self.standardized:
            with np.errstate(over="ignore", invalid="ignore"):
                Xb = (Xb - self.mean) * self.inv_std
            self._check(Xb, yb, rows, f"{where} (standardised)")
        return np.ascontiguousarray(Xb, dtype=np.float32), yb

    def _check(self, X, y, rows, where):
        if not np.isfinite(X).all():
            r = int(rows[np.argwhere(~np.isfinite(X))[0, 0]])
            raise DataError(f"{self.path}: NaN or infinite feature (or one beyond float32's range) in {where} "
                            f"row {r}; clean the source and convert again")
        bad = (y < 0) | (y >= self.n_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{self.path}: label {int(y[i])} in {where} row {int(rows[i])} is out of range "
                            f"for {self.n_classes} classes (expected 0..{self.n_classes - 1})")

    def read_train(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        rows = indices if self.train_rows is None else self.train_rows[indices]
        return self._rows(self.X, self.y, rows, "/train")

    def read_train_labels(self, start, stop):
        rows = np.arange(start, stop) if self.train_rows is None else self.train_rows[start:stop]
        return self._labels(rows)

    def _labels(self, rows):
        if self.train_rows is None and len(rows) and rows[-1] - rows[0] == len(rows) - 1:
            y = self.y[int(rows[0]):int(rows[-1]) + 1]
        else:
            y = self.y[...][rows]
        bad = (y < 0) | (y >= self.n_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{self.path}: label {int(y[i])} in /train row {int(rows[i])} is out of range "
                            f"for {self.n_classes} classes (expected 0..{self.n_classes - 1})")
        return y.astype(np.int64)

    def train_labels(self):
        if not hasattr(self, "_train_labels"):
            rows = np.arange(self.X.shape[0]) if self.train_rows is None else self.train_rows
            self._train_labels = self._labels(rows)
        return self._train_labels

    def test_set(self):
        if self.test_rows is None:
            g = self.file["test"]
            return self._rows(g["X"], g["y"], np.arange(g["y"].shape[0]), "/test")
        return self._rows(self.X, self.y, self.test_rows, "/train (test part)")

    def close(self):
        self.file.close()


def load(cfg, seed: int) -> H5Dataset:
    if not cfg.path:
        raise DataError("data.name = 'hdf5' needs data.path = the dataset file (see 'krum-mpi data convert')")
    return H5Dataset(cfg.path, cfg, seed)


def info(path) -> dict:
    """Summary of a dataset file: attributes, shapes, chunking, label counts (labels read in chunks)."""
    with open_file(path) as f:
        out = {k: (v.tolist() if isinstance(v, np.ndarray) else v.item() if hasattr(v, "item") else v)
               for k, v in f.attrs.items()}
        out["source_sha256"] = json.loads(out.get("source_sha256", "{}"))
        C = int(f.attrs["n_classes"])
        for split in ("train", "test"):
            if split not in f:
                continue
            X, y = f[split]["X"], f[split]["y"]
            counts = np.zeros(C, dtype=np.int64)
            for a in range(0, y.shape[0], 1 << 20):
                labels = y[a:a + (1 << 20)]
                if labels.size and (labels.min() < 0 or labels.max() >= C):
                    raise DataError(f"{path}: /{split}/y holds labels outside 0..{C - 1}")
                counts += np.bincount(labels, minlength=C)
            out[split] = {"rows": int(X.shape[0]), "chunks": list(X.chunks or ()),
                          "compression": X.compression, "label_counts": counts.tolist()}
        if "feature_names" in f:
            out["feature_names"] = [s.decode() if isinstance(s, bytes) else str(s)
                                    for s in f["feature_names"][...]]
    return out
