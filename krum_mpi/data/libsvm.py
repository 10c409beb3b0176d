"""LIBSVM / svmlight text: ``label idx:value idx:value ...`` per line, indices from 1, streamed.

Sparse lines (only the non-zero features) and dense lines (every feature) are the same format; both
become dense float32 rows. The file is read twice, line by line, never whole: the first pass finds
the number of rows and features and the label set, the second writes rows in chunks to the HDF5
format. So HIGGS's 11 million rows never sit in memory at once. Labels are mapped, in sorted order,
to 0..C-1 (e.g. -1/+1 -> 0/1, covtype's 1..7 -> 0..6); the mapping is stored in the file's
description. .gz, .bz2 and .xz files are read as they are.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .textio import open_text, reading

MAX_CLASSES = 1000


@dataclass
class Scan:
    rows: int = 0
    n_features: int = 0
    labels: set = field(default_factory=set)


def _parse_tokens(path, lineno: int, line: str):
    """(label float, indices int list (0-based), values float list) of one line, token by token."""
    parts = line.split()
    try:
        label = float(parts[0])
    except ValueError:
        raise DataError(f"{path}: line {lineno}: label {parts[0]!r} is not a number") from None
    if not math.isfinite(label):
        raise DataError(f"{path}: line {lineno}: label {parts[0]!r} is not finite")
    idx, val = [], []
    for token in parts[1:]:
        if token.startswith("#"):
            break
        key, sep, value = token.partition(":")
        try:
            i, v = int(key), float(value)
        except ValueError:
            raise DataError(f"{path}: line {lineno}: {token!r} is not index:value; "
                            "is this a LIBSVM file?") from None
        if not sep or i < 1:
            raise DataError(f"{path}: line {lineno}: {token!r}: feature indices start at 1")
        if not math.isfinite(v):
            raise DataError(f"{path}: line {lineno}: feature {i} is NaN or infinite; clean the file first")
        idx.append(i - 1)
        val.append(v)
    return label, idx, val


def _blocks(path, block_lines: int = 8192):
    """Lists of (line number, line) of the data lines (blank and comment lines skipped)."""
    block = []
    with reading(path), open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                block.append((lineno, line))
                if len(block) == block_lines:
                    yield block
                    block = []
    if block:
        yield block


def _parse_block_fast(block):
    """(labels, rows, 0-based indices, values) of a block with one C-level number parse, or None if
    anything is irregular (then the line-by-line parser finds and names the problem)."""
    texts = [line.split("#", 1)[0] if "#" in line else line for _, line in block]
    counts = np.fromiter((t.count(":") for t in texts), dtype=np.int64, count=len(texts))
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # a partial read warns: treat it as irregular
        try:
            nums = np.fromstring(" ".join(texts).replace(":", " "), dtype=np.float64, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
    sizes = 1 + 2 * counts
    if len(nums) != sizes.sum() or not np.isfinite(nums).all():
        return None
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    is_pair = np.ones(len(nums), dtype=bool)
    is_pair[starts] = False
    pairs = nums[is_pair].reshape(-1, 2)
    idx = pairs[:, 0]
    if (idx < 1).any() or (idx != np.floor(idx)).any():
        return None
    rows = np.repeat(np.arange(len(block)), counts)
    return nums[starts], rows, idx.astype(np.int64) - 1, pairs[:, 1]


def _parse_block(path, block):
    parsed = _parse_block_fast(block)
    if parsed is not None:
        return parsed
    labels, rows, idx, vals = [], [], [], []
    for r, (lineno, line) in enumerate(block):
        label, i, v = _parse_tokens(path, lineno, line)
        labels.append(label)
        rows += [r] * len(i)
        idx += i
        vals += v
    return (np.array(labels, dtype=np.float64), np.array(rows, dtype=np.int64),
            np.array(idx, dtype=np.int64), np.array(vals, dtype=np.float64))


def scan(path) -> Scan:
    """First pass: rows, features (the largest index), labels."""
    s = Scan()
    for block in _blocks(path):
        labels, _, idx, _ = _parse_block(path, block)
        s.rows += len(block)
        if len(idx):
            s.n_features = max(s.n_features, int(idx.max()) + 1)
        s.labels.update(np.unique(labels).tolist())
        if len(s.labels) > MAX_CLASSES:
            raise DataError(f"{path}: more than {MAX_CLASSES} distinct labels: a regression file? "
                            "krum-mpi needs class labels")
    if s.rows == 0:
        raise DataError(f"{path}: no data lines: an empty or truncated LIBSVM file")
    return s


def iter_chunks(path, n_features: int, label_map: dict, chunk_rows: int = 65536):
    """Second pass: yield (X float32 (k, p), y int64 (k,)) chunks of at most chunk_rows rows."""
    known = np.array(sorted(label_map), dtype=np.float64)
    for block in _blocks(path, block_lines=min(chunk_rows, 8192)):
        labels, rows, idx, vals = _parse_block(path, block)
        pos = np.searchsorted(known, labels).clip(0, len(known) - 1)
        bad = known[pos] != labels
        if bad.any():
            lineno = block[int(np.argmax(bad))][0]
            raise DataError(f"{path}: line {lineno}: label {labels[bad][0]:g} is not among the known "
                            f"labels {known.tolist()}")
        if len(idx) and idx.max() >= n_features:
            lineno = block[int(rows[np.argmax(idx)])][0]
            raise DataError(f"{path}: line {lineno}: feature index {int(idx.max()) + 1} exceeds {n_features}")
        X = np.zeros((len(block), n_features), dtype=np.float32)
        X[rows, idx] = vals
        yield X, np.array([label_map[v] for v in known[pos].tolist()], dtype=np.int64)


def label_map_of(labels) -> dict:
    """Sorted labels -> 0..C-1."""
    return {v: i for i, v in enumerate(sorted(labels))}
