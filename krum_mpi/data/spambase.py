"""UCI Spambase (Hopkins, Reeber, Forman, Suermondt, 1999): 4,601 e-mails, 57 features, spam = 1.

The file is a CSV of 58 columns (label last), LF or CRLF line endings. It has no test part: a seeded
split holds out ``data.test_fraction`` of the rows. Features span 0..15841 (capital-run lengths), so
they are standardised with the training statistics (``data.standardize``): unscaled, SGD stalls.
"""
from __future__ import annotations

import hashlib

from ..errors import DataError
from .base import ArrayDataset, standardize, subsample, train_test_split
from .csvfile import read_csv
from ..inputs.files import regular_file_problem
from .paths import resolve

N_ROWS, N_FEATURES = 4601, 57


def locate(path: str = ""):
    """The spambase.data file: ``data.path`` (the file or its folder), else data_dir()/spambase/."""
    p = resolve(path, "spambase/spambase.data")
    if p.is_dir():
        p = p / "spambase.data"
    problem = regular_file_problem(p)
    if problem and not problem.startswith("not found"):
        raise DataError(f"spambase file {p} {problem}: set data.path to the spambase.data file or its folder")
    if problem:
        raise DataError(f"spambase not found at {p}: run 'krum-mpi data download spambase', "
                        "set KRUM_MPI_DATA to the folder holding spambase/, or set data.path; offline, run the "
                        "same setting on synthetic data: --set data.name=synthetic --set data.n_features=57 "
                        "(or configs/synthetic-*.toml)")
    return p


def load(cfg, seed: int) -> ArrayDataset:
    path = locate(cfg.path)
    X, y = read_csv(path, label_column=-1, n_classes=2)
    if X.shape[1] != N_FEATURES:
        raise DataError(f"{path}: {X.shape[1] + 1} columns, spambase has {N_FEATURES + 1} (57 features "
                        "and the label): is this the right file?")
    train, test = train_test_split(len(y), cfg.test_fraction, seed)
    train = subsample(train, cfg.max_train, seed)
    X_train, X_test = X[train], X[test]
    provenance = {"source": "UCI Spambase", "file": str(path), "sha256": sha256_of(path),
                  "rows": int(len(y)), "test_fraction": cfg.test_fraction, "split_seed": seed,
                  "standardized": bool(cfg.standardize)}
    if cfg.standardize:
        _, _, X_train, X_test = standardize(X_train, X_test)
    return ArrayDataset("spambase", X_train, y[train], X_test, y[test], n_classes=2,
                        provenance=provenance, split=cfg.split, alpha=cfg.alpha,
                        gamma=cfg.gamma, seed=seed)


def feature_names(data_path) -> list[str] | None:
    """The 57 attribute names from ``spambase.names`` next to the data file, if it is there."""
    names_file = data_path.with_name("spambase.names")
    if not names_file.is_file():
        return None
    names = [line.split(":")[0].strip() for line in names_file.read_text(errors="replace").splitlines()
             if line.strip().endswith("continuous.") and ":" in line]
    return names if len(names) == N_FEATURES else None


def sha256_of(path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            h.update(chunk)
    return h.hexdigest()
