"""Results of ``krum-mpi bench aggregate`` for the "kernel against its floor" figure.

Read from CSV, JSON records, or an HDF5 file holding a group of equal-length 1-D datasets; the
columns are recognised by name (aliases below) and renamed to ``rule, time_s, floor_s, ratio``
(+ ``n, d, backend`` where present).
"""
import json
from pathlib import Path

import h5py
import pandas as pd

from ..errors import ResultsError
from .load import _attr

BENCH_ALIASES = {
    "rule": ("rule", "aggregator", "name"),
    "time_s": ("time_s", "median_s", "seconds", "median", "time"),
    "floor_s": ("floor_s", "floor"),
    "ratio": ("x_floor", "ratio", "floor_ratio", "times_floor"),
    "n": ("n", "n_workers"),
    "d": ("d", "dim", "n_params"),
    "backend": ("backend", "device", "xp"),
}


def _bench_columns(frame):
    """Rename a bench table's columns to the canonical names; None if it is not a bench table."""
    lower = {str(c).lower(): c for c in frame.columns}
    renamed = {}
    for canon, names in BENCH_ALIASES.items():
        for name in names:
            if name in lower:
                renamed[lower[name]] = canon
                break
    have = set(renamed.values())
    if "rule" not in have or "time_s" not in have or not ({"floor_s", "ratio"} & have):
        return None
    frame = frame.rename(columns=renamed)
    if "floor_s" not in frame:
        frame["floor_s"] = frame["time_s"] / frame["ratio"]
    if "ratio" not in frame:
        frame["ratio"] = frame["time_s"] / frame["floor_s"]
    return frame


def _h5_table(path):
    """The first HDF5 group whose members are 1-D datasets of one length, as a DataFrame."""
    found = []

    def visit(name, obj):
        if found or not isinstance(obj, h5py.Group):
            return
        cols = {k: v for k, v in obj.items() if isinstance(v, h5py.Dataset) and v.ndim == 1}
        if cols and len({v.shape[0] for v in cols.values()}) == 1:
            frame = pd.DataFrame({k: [_attr(x) for x in v[()]] for k, v in cols.items()})
            if _bench_columns(frame) is not None:
                found.append(frame)

    with h5py.File(path, "r") as h5:
        visit("", h5)
        h5.visititems(visit)
    return found[0] if found else None


def is_bench_table(path):
    try:
        return _h5_table(path) is not None
    except Exception:
        return False


def read_bench(path):
    """A bench result file (CSV, JSON records, or HDF5 table) as a DataFrame with canonical columns
    ``rule, time_s, floor_s, ratio`` (+ ``n, d, backend`` where present); ResultsError if it is not one."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path)
        elif path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                data = next((data[k] for k in ("results", "rows", "records") if k in data), [data])
            frame = pd.DataFrame(data)
        else:
            frame = _h5_table(path)
    except (OSError, ValueError) as exc:
        raise ResultsError(f"bench file {path} cannot be read ({exc}): expected CSV, JSON or HDF5") from None
    out = _bench_columns(frame) if frame is not None else None
    if out is None:
        raise ResultsError(f"bench file {path} has no rule/time/floor columns: "
                           "write it with 'krum-mpi bench aggregate'")
    return out
