"""CIFAR-10 (Krizhevsky 2009) from its official binary archive, read without extracting it.

The binary version (``cifar-10-binary.tar.gz``, folder ``cifar-10-batches-bin/``) holds six files
of fixed-length records: 1 label byte (0..9), then 3072 pixel bytes (the 1024 red, 1024 green,
1024 blue values of a 32 x 32 image, row-major). ``data_batch_1.bin`` .. ``data_batch_5.bin`` are
the 50,000 training images, ``test_batch.bin`` the 10,000 test images. The members are read from
the tar stream by name (nothing is extracted, so no archive path can write anywhere); a folder
with the six files works too. Every size and label is checked (one-line DataError naming the file).
Images are used through the HDF5 store: ``krum-mpi data convert cifar10 ARCHIVE OUT.h5``.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from ..errors import DataError

RECORD = 1 + 3072
INPUT_SHAPE = (3, 32, 32)
TRAIN_MEMBERS = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_MEMBERS = ("test_batch.bin",)
FOLDER = "cifar-10-batches-bin"
N_CLASSES = 10


def parse_records(data: bytes, where: str):
    """(X uint8 (N, 3072) in the archive's channel-major order, y int64 (N,)) from one batch file."""
    if len(data) == 0 or len(data) % RECORD:
        raise DataError(f"{where}: {len(data)} bytes is not a whole number of {RECORD}-byte CIFAR-10 records; "
                        "download the archive again")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    y = records[:, 0].astype(np.int64)
    if y.max() >= N_CLASSES:
        bad = int(np.argmax(y >= N_CLASSES))
        raise DataError(f"{where}: label {int(y[bad])} of record {bad} is out of range 0..9")
    return records[:, 1:], y


def _read_members(source: Path, names) -> list[bytes]:
    if source.is_dir():
        folder = source / FOLDER if (source / FOLDER).is_dir() else source
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DataError(f"{folder}: CIFAR-10 file {missing[0]} missing: run 'krum-mpi data download cifar10'")
        return [(folder / n).read_bytes() for n in names]
    try:
        with tarfile.open(source, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in names if n not in members]
            if missing:
                raise DataError(f"{source}: the archive has no {missing[0]}: not the CIFAR-10 binary archive "
                                "(cifar-10-binary.tar.gz)")
            return [tar.extractfile(members[n]).read() for n in names]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{source}: not a readable tar archive ({' '.join(str(exc).split())}); "
                        "download it again") from None


def locate(path: str = "") -> Path:
    """The archive or folder: data.path / SRC, else data_dir()/cifar10/ (archive or extracted)."""
    from .paths import require_file, resolve

    source = resolve(path, "cifar10")
    if source.is_dir() and (source / "cifar-10-binary.tar.gz").is_file() and not (source / FOLDER).is_dir():
        source = source / "cifar-10-binary.tar.gz"
    if not source.exists():
        raise DataError(f"CIFAR-10 not found at {source}: run 'krum-mpi data download cifar10' or give the "
                        "archive's path")
    if not source.is_dir():   # the archive: a regular file (a FIFO would block tarfile.open)
        require_file(source, "CIFAR-10 archive", "give the path of cifar-10-binary.tar.gz or its folder")
    return source


def read(source) -> tuple:
    """(X_train, y_train, X_test, y_test): X float32 (N, 3072) pixels in [0, 1], channel-major
    (reshape to (N, 3, 32, 32)); y int64."""
    source = Path(source)
    blobs = _read_members(source, TRAIN_MEMBERS + TEST_MEMBERS)
    parts = [parse_records(b, f"{source}:{n}") for b, n in zip(blobs, TRAIN_MEMBERS + TEST_MEMBERS)]
    X_train = np.concatenate([p[0] for p in parts[:5]]).astype(np.float32) / 255.0
    y_train = np.concatenate([p[1] for p in parts[:5]])
    X_test = parts[5][0].astype(np.float32) / 255.0
    return X_train, y_train, X_test, parts[5][1]
