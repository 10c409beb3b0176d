"""Converters from the source formats to the HDF5 dataset format (``krum_mpi.data.store``).

Sources without a test part get one here, seeded: row r goes to the test part when a hash of
(seed, r) falls below ``test_fraction`` (streamed sources), or through the same seeded permutation as
the in-memory loaders (spambase, MNIST t10k). Each converter returns the output path.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..run.progress import Progress
from . import cifar10, csvfile, libsvm, mnist, spambase
from .base import TAG_TEST_SPLIT, train_test_split
from .spambase import sha256_of
from .store import DatasetWriter, write_arrays
from .synthetic import hash_uniform, stream_key

CHUNK_ROWS = 65536


class _StreamSplitter:
    """Sends each row of a stream to 'train' or 'test' by a seeded hash of its row number."""

    def __init__(self, writer: DatasetWriter, test_fraction: float, seed: int):
        self.writer, self.fraction = writer, test_fraction
        self.key = stream_key(seed, TAG_TEST_SPLIT)
        self.row = 0

    def append(self, X, y):
        rows = np.arange(self.row, self.row + len(y))
        self.row += len(y)
        if self.fraction <= 0:
            self.writer.append("train", X, y)
            return
        test = hash_uniform(self.key, rows, 1)[:, 0] < self.fraction
        self.writer.append("train", X[~test], y[~test])
        self.writer.append("test", X[test], y[test])


def spambase_to_h5(src, out, test_fraction: float = 0.2, seed: int = 0, compression=None) -> Path:
    path = spambase.locate(str(src)) if src else spambase.locate("")
    X, y = csvfile.read_csv(path, n_classes=2)
    train, test = train_test_split(len(y), test_fraction, seed)
    return write_arrays(out, X[train], y[train], X[test], y[test], name="spambase", n_classes=2,
                        feature_names=spambase.feature_names(path),
                        source="UCI Spambase (Hopkins, Reeber, Forman, Suermondt 1999)",
                        source_sha256={path.name: sha256_of(path)}, compression=compression,
                        description=f"test part: seeded split (seed {seed}, fraction {test_fraction})")


def mnist_to_h5(src, out, test_fraction: float = 0.2, seed: int = 0, compression=None) -> Path:
    folder, has_train = mnist.locate(str(src) if src else "")
    files = mnist.TEST_FILES + (mnist.TRAIN_FILES if has_train else ())
    sums = {}
    for name in files:
        found = mnist._find(folder, name)
        sums[found.name] = sha256_of(found)
    X_t10k, y_t10k = mnist.read_pair(mnist._find(folder, mnist.TEST_FILES[0]),
                                     mnist._find(folder, mnist.TEST_FILES[1]))
    if has_train:
        X_train, y_train = mnist.read_pair(mnist._find(folder, mnist.TRAIN_FILES[0]),
                                           mnist._find(folder, mnist.TRAIN_FILES[1]))
        X_test, y_test = X_t10k, y_t10k
        note = "official split: 60,000 training images, 10,000 test images"
    else:
        train, test = train_test_split(len(y_t10k), test_fraction, seed)
        X_train, y_train, X_test, y_test = X_t10k[train], y_t10k[train], X_t10k[test], y_t10k[test]
        note = (f"train and test parts both split from the 10,000 MNIST TEST images "
                f"(seed {seed}, test fraction {test_fraction})")
    return write_arrays(out, X_train, y_train, X_test, y_test, name="mnist", n_classes=10,
                        source="MNIST (LeCun, Cortes, Burges); pixels scaled to [0, 1]",
                        source_sha256=sums, description=note, scaling="global", compression=compression,
                        input_shape=mnist.INPUT_SHAPE)


def fashion_mnist_to_h5(src, out, compression=None) -> Path:
    """Fashion-MNIST (the same IDX files as MNIST, in data_dir()/fashion-mnist by default)."""
    folder = Path(src) if src else mnist.resolve("", "fashion-mnist")
    files = mnist.TRAIN_FILES + mnist.TEST_FILES
    found = [mnist._find(folder, name) for name in files]
    if not all(found):
        raise DataError(f"Fashion-MNIST not found in {folder} (need {', '.join(files)}): "
                        "run 'krum-mpi data download fashion-mnist'")
    X_train, y_train = mnist.read_pair(found[0], found[1])
    X_test, y_test = mnist.read_pair(found[2], found[3])
    return write_arrays(out, X_train, y_train, X_test, y_test, name="fashion-mnist", n_classes=10,
                        source="Fashion-MNIST (Xiao, Rasul, Vollgraf 2017); pixels scaled to [0, 1]",
                        source_sha256={f.name: sha256_of(f) for f in found}, scaling="global",
                        description="official split: 60,000 training images, 10,000 test images",
                        compression=compression, input_shape=mnist.INPUT_SHAPE)


def cifar10_to_h5(src, out, compression=None) -> Path:
    """CIFAR-10 from the official binary archive (or its extracted folder); per-pixel statistics
    (``scaling = "feature"``) standardise each channel-pixel with the training images' mean and std."""
    source = cifar10.locate(str(src) if src else "")
    X_train, y_train, X_test, y_test = cifar10.read(source)
    sums = {source.name: sha256_of(source)} if source.is_file() else {}
    return write_arrays(out, X_train, y_train, X_test, y_test, name="cifar10", n_classes=10,
                        source="CIFAR-10 (Krizhevsky 2009), binary version; pixels scaled to [0, 1]",
                        source_sha256=sums, scaling="feature", compression=compression,
                        description="official split: 50,000 training images, 10,000 test images; "
                                    "rows are (3, 32, 32) channel-major", input_shape=cifar10.INPUT_SHAPE)


def libsvm_to_h5(src, out, name: str | None = None, test_file=None, test_fraction: float = 0.0,
                 seed: int = 0, n_features: int | None = None, compression=None) -> Path:
    src = Path(src)
    scans = [libsvm.scan(src)] + ([libsvm.scan(test_file)] if test_file else [])
    labels = set().union(*(s.labels for s in scans))
    p = max([s.n_features for s in scans] + [n_features or 0])
    if p == 0:
        raise DataError(f"{src}: no feature appears in any line")
    label_map = libsvm.label_map_of(labels)
    sums = {src.name: sha256_of(src)}
    if test_file:
        sums[Path(test_file).name] = sha256_of(test_file)
    mapping = ", ".join(f"{k:g}->{v}" for k, v in label_map.items())
    with DatasetWriter(out, n_features=p, name=name or src.name.split(".")[0], n_classes=len(label_map),
                       source=f"LIBSVM file {src.name}", source_sha256=sums, compression=compression,
                       description=f"labels mapped {mapping}") as w:
        splitter = _StreamSplitter(w, 0.0 if test_file else test_fraction, seed)
        bar = Progress(sum(s.rows for s in scans), f"convert {src.name}", unit="row", stream=sys.stderr)
        for X, y in libsvm.iter_chunks(src, p, label_map, CHUNK_ROWS):
            splitter.append(X, y)
            bar.update(bar.done + len(y))
        if test_file:
            for X, y in libsvm.iter_chunks(test_file, p, label_map, CHUNK_ROWS):
                w.append("test", X, y)
                bar.update(bar.done + len(y))
        bar.close()
    return Path(out)


def csv_to_h5(src, out, name: str | None = None, label_column: int = -1, n_classes: int | None = None,
              test_fraction: float = 0.0, seed: int = 0, delimiter: str = ",", skip_header: bool = False,
              compression=None) -> Path:
    src = Path(src)
    writer = None
    names = csvfile.header_names(src, label_column, delimiter) if skip_header else None
    bar = Progress(None, f"convert {src.name}", unit="row", stream=sys.stderr)
    try:
        for X, y in csvfile.iter_chunks(src, label_column, CHUNK_ROWS, delimiter, n_classes, skip_header):
            if writer is None:
                if names is not None and len(names) != X.shape[1]:
                    names = None
                writer = DatasetWriter(out, n_features=X.shape[1], name=name or src.name.split(".")[0],
                                       n_classes=n_classes, source=f"CSV file {src.name}", feature_names=names,
                                       source_sha256={src.name: sha256_of(src)}, compression=compression)
                splitter = _StreamSplitter(writer, test_fraction, seed)
            splitter.append(X, y)
            bar.update(bar.done + len(y))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    bar.close()
    writer.close()
    return Path(out)


def synthetic_to_h5(dataset, out, compression=None) -> Path:
    """Write a SyntheticDataset (train and test) to the HDF5 format, chunk by chunk."""
    with DatasetWriter(out, n_features=dataset.n_features, name=dataset.name,
                       n_classes=dataset.n_classes, compression=compression,
                       source=f"krum-mpi synthetic generator {dataset.generator!r}",
                       scaling="none", description=json.dumps(dataset.provenance),
                       input_shape=dataset.input_shape) as w:
        for X, y in dataset.iter_train(CHUNK_ROWS):
            w.append("train", X, y)
        w.append("test", *dataset.test_set())
    return Path(out)
