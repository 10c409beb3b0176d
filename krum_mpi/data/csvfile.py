"""Plain CSV: numeric features and one integer label column, read in chunks with line-exact errors.

Rows are checked as they are read: every row must have the same number of fields, every field must
be a finite number, the label an integer in 0..n_classes-1. A problem raises a one-line DataError that
names the file, the line and the fix.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import DataError
from .textio import open_text, reading


def iter_chunks(path, label_column: int = -1, chunk_rows: int = 65536, delimiter: str = ",",
                n_classes: int | None = None, skip_header: bool = False):
    """Yield (X float64 (k, p), y int64 (k,)) chunks of a CSV file, checked row by row."""
    path = Path(path)
    n_fields = None
    X_rows, y_rows = [], []
    with reading(path), open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if skip_header and lineno == 1:
                continue
            line = line.strip()
            if not line:
                continue
            fields = line.split(delimiter)
            if n_fields is None:
                n_fields = len(fields)
                if n_fields < 2:
                    raise DataError(f"{path}: line {lineno} has {n_fields} field; a CSV dataset needs "
                                    f"features and a label (is the delimiter {delimiter!r} right?)")
                label_at = label_column % n_fields
            elif len(fields) != n_fields:
                raise DataError(f"{path}: ragged rows: line {lineno} has {len(fields)} fields, earlier "
                                f"lines have {n_fields}; fix or remove that line")
            try:
                values = [float(v) for v in fields]
            except ValueError:
                bad = next(v for v in fields if not _is_float(v))
                raise DataError(f"{path}: line {lineno}: {bad.strip()!r} is not a number; "
                                "the file must hold numbers only (use skip_header for a header line)")
            label = values.pop(label_at)
            if not all(math.isfinite(v) for v in values):
                raise DataError(f"{path}: line {lineno} has a NaN or infinite feature; "
                                "clean the file (impute or drop the row) before using it")
            check_label(path, f"line {lineno}", label, n_classes)
            X_rows.append(values)
            y_rows.append(int(label))
            if len(X_rows) == chunk_rows:
                yield np.array(X_rows, dtype=np.float64), np.array(y_rows, dtype=np.int64)
                X_rows, y_rows = [], []
    if n_fields is None:
        raise DataError(f"{path}: the file is empty; expected comma-separated rows of numbers")
    if X_rows:
        yield np.array(X_rows, dtype=np.float64), np.array(y_rows, dtype=np.int64)


def header_names(path, label_column: int = -1, delimiter: str = ",") -> list[str]:
    """The feature names of a header line (the label column left out)."""
    with reading(path), open_text(path) as fh:
        fields = [f.strip() for f in fh.readline().strip().split(delimiter)]
    del fields[label_column % len(fields)]
    return fields


def check_label(path, where: str, label: float, n_classes: int | None) -> None:
    if not math.isfinite(label) or label != int(label) or label < 0:
        raise DataError(f"{path}: {where}: label {label!r} is not a class index 0, 1, 2, ...; "
                        "map the labels to 0..C-1 first")
    if n_classes is not None and label >= n_classes:
        raise DataError(f"{path}: {where}: label {int(label)} is out of range for {n_classes} classes "
                        f"(expected 0..{n_classes - 1})")


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_csv(path, label_column: int = -1, n_classes: int | None = None, delimiter: str = ",",
             skip_header: bool = False):
    """The whole file as (X float64 (N, p), y int64 (N,)): for small files such as spambase."""
    chunks = list(iter_chunks(path, label_column, delimiter=delimiter, n_classes=n_classes,
                              skip_header=skip_header))
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])
