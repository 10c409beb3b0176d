"""MNIST (LeCun, Cortes, Burges) from its IDX files, gzip-compressed or not.

IDX: a big-endian header (magic = 0x0000 08 NDIM for unsigned bytes: 2051 for the 3-D image file,
2049 for the 1-D label file), NDIM int32 sizes, then the bytes. Every field is checked, so a truncated
file, a wrong magic number or labels outside 0..9 give a one-line DataError naming the file.

Where only the 10,000-image test set is present (folder ``mnist-t10k``), the loader splits those
images into train and test parts with ``data.test_fraction`` and says so in the provenance.
Pixels are scaled to [0, 1]; ``data.standardize`` then shifts and scales them with the mean and
standard deviation of all training pixels (one scalar each: per-pixel statistics would blow up the
border pixels that are almost always 0).
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import ArrayDataset, subsample, train_test_split
from ..inputs.files import folder_problem, regular_file_problem
from .paths import resolve
from .textio import open_binary, reading

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
TRAIN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
N_CLASSES = 10
INPUT_SHAPE = (1, 28, 28)   # channels, height, width: the image models reshape rows to it


def read_idx(path, expected_magic: int) -> np.ndarray:
    """An IDX file (optionally .gz) as a uint8 array of the shape its header states."""
    path = Path(path)
    with reading(path), open_binary(path) as fh:
        data = fh.read()
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != expected_magic:
        kind = "image" if expected_magic == IMAGES_MAGIC else "label"
        raise DataError(f"{path}: wrong magic number {magic} (expected {expected_magic} for an IDX "
                        f"{kind} file): not an MNIST {kind} file, or not decompressed")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX file (header needs {header} bytes, file has {len(data)})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{path}: IDX file {problem}: header says {'x'.join(map(str, shape))} "
                        f"= {expected} bytes, file has {len(data)}; download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_pair(images_path, labels_path):
    """(X float32 (N, 784) pixels in [0, 1], y int64 (N,)) from an image file and a label file."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) == 0:
        raise DataError(f"{images_path}: the IDX file holds no images")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    if labels.size and labels.max() >= N_CLASSES:
        bad = int(np.argmax(labels >= N_CLASSES))
        raise DataError(f"{labels_path}: label {int(labels[bad])} at item {bad} is out of range 0..9")
    X = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return X, labels.astype(np.int64)


def _find(folder: Path, name: str) -> Path | None:
    """name or name without .gz."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        problem = regular_file_problem(candidate)
        if problem is None:
            return candidate
        if not problem.startswith("not found"):   # a FIFO or device of that name: never opened
            raise DataError(f"MNIST file {candidate} {problem}: put the IDX file there or set data.path")
    return None


def locate(path: str = "") -> tuple[Path, bool]:
    """(folder, has_training_files): data.path, else data_dir()/mnist, else data_dir()/mnist-t10k."""
    candidates = [resolve(path, "")] if path else [resolve("", "mnist"), resolve("", "mnist-t10k")]
    problem = folder_problem(candidates[0]) if path else None
    if problem and not problem.startswith("not found"):
        raise DataError(f"data.path {candidates[0]} {problem}: for mnist it is the folder of the IDX files")
    for folder in candidates:
        if _find(folder, TEST_FILES[0]) and _find(folder, TEST_FILES[1]):
            return folder, bool(_find(folder, TRAIN_FILES[0]) and _find(folder, TRAIN_FILES[1]))
    raise DataError(f"MNIST not found in {' or '.join(map(str, candidates))}: run 'krum-mpi data download "
                    "mnist', set KRUM_MPI_DATA to the folder holding mnist/ or mnist-t10k/, or set data.path; "
                    "offline: --set data.name=synthetic --set data.n_features=784 --set data.n_classes=10")


def load(cfg, seed: int) -> ArrayDataset:
    folder, has_train = locate(cfg.path)
    X_test, y_test = read_pair(_find(folder, TEST_FILES[0]), _find(folder, TEST_FILES[1]))
    if has_train:
        X_train, y_train = read_pair(_find(folder, TRAIN_FILES[0]), _find(folder, TRAIN_FILES[1]))
        split_note = "official split: 60,000 training images, 10,000 test images"
    else:
        train, test = train_test_split(len(y_test), cfg.test_fraction, seed)
        X_train, y_train = X_test[train], y_test[train]
        X_test, y_test = X_test[test], y_test[test]
        split_note = (f"train and test parts both split (seed {seed}, test_fraction "
                      f"{cfg.test_fraction}) from the 10,000 MNIST TEST images: no official training image used")
    keep = subsample(np.arange(len(y_train)), cfg.max_train, seed)
    X_train, y_train = X_train[keep], y_train[keep]
    provenance = {"source": "MNIST (LeCun, Cortes, Burges)", "folder": str(folder), "split": split_note,
                  "standardized": bool(cfg.standardize)}
    if cfg.standardize:
        mean = float(X_train.mean(dtype=np.float64))
        std = float(X_train.std(dtype=np.float64)) or 1.0
        X_train = (X_train - mean) / std
        X_test = (X_test - mean) / std
        provenance.update(pixel_mean=mean, pixel_std=std)
    dataset = ArrayDataset("mnist", X_train, y_train, X_test, y_test, N_CLASSES, provenance,
                           split=cfg.split, alpha=cfg.alpha, gamma=cfg.gamma, seed=seed)
    dataset.input_shape = INPUT_SHAPE
    return dataset
