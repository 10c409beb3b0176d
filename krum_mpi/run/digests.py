"""Checksums of the recorded rows of a results file: one SHA-256 per per-step dataset, over its
rows [0, k) in C order, little-endian. The writer feeds each row to the hash once, at the flush
that first writes it (a flush costs the new rows, not the run), and stores the digests with the
row count in the root attribute ``row_digests`` (JSON: {"rows": k, "sha256": {name: hex}}). The
checkpoint header keeps the digests of the rows up to its step, so a checkpoint is bound to the
rows it continues. What these detect, and what they do not, is in docs/reliability.md.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

ATTR = "row_digests"


def _le_bytes(rows: np.ndarray) -> np.ndarray:
    """The rows' bytes as a flat uint8 array (no copy when already C-ordered little-endian; a rule
    that selects none records rows of width 0)."""
    a = np.ascontiguousarray(rows)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a.reshape(-1).view(np.uint8)


class RowHashes:
    """Running SHA-256 of each dataset's rows; ``rows``: how many rows were fed so far."""

    def __init__(self, names):
        self.names = list(names)
        self.rows = 0
        self.hashes = {name: hashlib.sha256() for name in self.names}

    def advanced(self, get, stop: int) -> "RowHashes":
        """A copy fed rows [self.rows, stop) (``get(name, start, stop)`` gives them); self unchanged,
        so a flush that fails leaves the hashes of the last good one."""
        new = RowHashes.__new__(RowHashes)
        new.names, new.rows = self.names, stop
        new.hashes = {name: h.copy() for name, h in self.hashes.items()}
        if stop > self.rows:
            for name in self.names:
                new.hashes[name].update(_le_bytes(get(name, self.rows, stop)))
        return new

    def digests(self) -> dict:
        return {name: h.hexdigest() for name, h in self.hashes.items()}

    def attr(self) -> str:
        return json.dumps({"rows": self.rows, "sha256": self.digests()}, sort_keys=True)


def of_rows(arrays: dict, rows: int) -> dict:
    """{name: hex} of rows [0, rows) of each array."""
    return {name: hashlib.sha256(_le_bytes(a[:rows])).hexdigest() for name, a in arrays.items()}


def parse_attr(value) -> tuple[int, dict] | None:
    """(rows, {name: hex}) from a ``row_digests`` attribute; None when it is missing or malformed."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str) or len(value) > 1 << 16:
        return None
    try:
        meta = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(meta, dict) or type(meta.get("rows")) is not int or not isinstance(meta.get("sha256"), dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta["sha256"].items()):
        return None
    return meta["rows"], meta["sha256"]


def first_mismatch(arrays: dict, rows: int, expected: dict) -> str | None:
    """The first dataset whose rows [0, rows) do not hash to ``expected`` (or that it lacks), else None."""
    if set(expected) != set(arrays):
        missing = sorted(set(arrays) ^ set(expected))
        return missing[0]
    found = of_rows(arrays, rows)
    for name in sorted(arrays):
        if found[name] != expected[name]:
            return name
    return None
