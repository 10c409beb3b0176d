"""The result file of ``krum-mpi bench aggregate``: its one schema, its writer and its reader.

``krum_mpi.bench.aggregate`` writes it and ``krum-mpi report --bench`` (``krum_mpi.analysis``) reads it, both
through this module, so the columns cannot drift apart. One row per (rule, n, d):

    rule, device          the rule's name, "cpu" or "gpu"
    input                 "gaussian" (i.i.d. N(0, 1) rows), or "blinded": the same with row 0 at the
                          blind attack's magnitude (its squares overflow a float32 sum) and row 1
                          at -1000, the input that once took Krum over through arithmetic, or a
                          crafted family of ``--input`` (measure.craft_input): "near-tie", "mirror"
                          (the last f rows one-ulp clones of row 0), "simplex", "sparse"
    n, d, f               workers, parameters, declared Byzantine workers
    recomputed            distances the certified selection recomputed (direct or exact) in a call
    min_ms, median_ms     the rule's time over the repetitions
    floor                 "read" or "max(read, gram)": which floor applies to the rule
    floor_ms, x_floor     the floor's time, and min_ms as a multiple of it
    gb_per_s              the input's bytes over min_ms
    peak_extra_pct        peak extra memory as a share of the input (CPU; empty when not measured)
    times_ms              every repetition's time
    x_honest              a crafted input's min_ms over the same rule's min_ms on the gaussian input
                          of the same shape (empty for gaussian and blinded rows; version 2)

Three encodings, chosen by the file's suffix, each carrying ``format`` and ``format_version``:
- ``.json``: {"format", "format_version", "command", "machine", "gemm", "floors", "pairloop",
  "results": [row, ...]};
- ``.csv``: the rows (``times_ms`` as space-separated numbers), and beside it ``NAME.meta.json``
  holding everything else;
- ``.h5``: root attributes ``format``, ``format_version``, ``command`` and the JSON texts ``machine``,
  ``gemm``, ``floors``, ``pairloop``; group ``results`` with one 1-D dataset per column
  (``times_ms``: 2-D, one row per result).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ResultsError

FORMAT = "krum-mpi bench aggregate"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)   # version 1: no x_honest column (read as empty)
TEXT_COLUMNS = ("rule", "device", "input", "floor")
INT_COLUMNS = ("n", "d", "f", "recomputed")
FLOAT_COLUMNS = ("min_ms", "median_ms", "floor_ms", "x_floor", "gb_per_s", "peak_extra_pct", "x_honest")
COLUMNS = ("rule", "device", "input", "n", "d", "f", "recomputed", "min_ms", "median_ms", "floor", "floor_ms", "x_floor",
           "gb_per_s", "peak_extra_pct", "x_honest")
OPTIONAL_COLUMNS = ("x_honest",)  # absent from version 1 files
META_KEYS = ("command", "machine", "gemm", "floors", "pairloop")
SUFFIXES = (".json", ".csv", ".h5", ".hdf5")


def check_suffix(path) -> None:
    """ConfigError unless ``path`` names one of the encodings (before a benchmark runs for nothing)."""
    if Path(path).suffix.lower() not in SUFFIXES:
        raise ConfigError(f"--out must end in .h5, .json or .csv, got {Path(path).name!r}")


# -- writer ---------------------------------------------------------------------------------------

def write(report: dict, path) -> None:
    """Write ``report`` ({META_KEYS..., "results": [row, ...]}) in the encoding of ``path``'s suffix."""
    path = Path(path)
    check_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **{k: report[k] for k in META_KEYS}}
    rows = [{k: row.get(k) if k in OPTIONAL_COLUMNS else row[k] for k in COLUMNS + ("times_ms",)}
            for row in report["results"]]
    suffix = path.suffix.lower()
    if suffix == ".json":
        path.write_text(json.dumps({**meta, "results": rows}, indent=2, default=float))
    elif suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS + ("times_ms",))
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, **{c: "" for c in ("peak_extra_pct", "x_honest") if row[c] is None},
                                 "times_ms": " ".join(repr(float(t)) for t in row["times_ms"])})
        meta_path(path).write_text(json.dumps(meta, indent=2, default=float))
    else:
        _write_h5(meta, rows, path)


def meta_path(csv_path: Path) -> Path:
    return csv_path.with_suffix(".meta.json")


def _write_h5(meta: dict, rows: list, path: Path) -> None:
    import h5py

    with h5py.File(path, "w") as h5:
        for key, value in meta.items():
            h5.attrs[key] = value if isinstance(value, (str, int)) else json.dumps(value, default=float)
        group = h5.create_group("results")
        for key in COLUMNS:
            values = [row[key] for row in rows]
            if key in TEXT_COLUMNS:
                group.create_dataset(key, data=np.array(values, dtype=h5py.string_dtype()))
            elif key in INT_COLUMNS:
                group.create_dataset(key, data=np.array(values, dtype=np.int64))
            else:
                group.create_dataset(key, data=np.array([np.nan if v is None else v for v in values], dtype=np.float64))
        group.create_dataset("times_ms", data=np.array([row["times_ms"] for row in rows], dtype=np.float64))


# -- reader ---------------------------------------------------------------------------------------

def read(path) -> dict:
    """The file as written: {META_KEYS..., "results": [row, ...]} (rows with every column of
    COLUMNS and ``times_ms``; ``peak_extra_pct`` None where not measured). ResultsError, one line,
    when it is not a bench file of this version."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"bench file {path} not found: give a file written by 'krum-mpi bench aggregate'")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            meta, rows = data, data.get("results")
        elif suffix == ".csv":
            meta, rows = _read_csv(path)
        elif suffix in (".h5", ".hdf5"):
            meta, rows = _read_h5(path)
        else:
            raise ValueError(f"suffix {suffix or '(none)'} is none of {', '.join(SUFFIXES)}")
        _check(meta, rows)
        return {**{k: meta[k] for k in META_KEYS}, "results": [_typed(row) for row in rows]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ResultsError(f"{path} is not a readable krum-mpi bench file ({reason}): "
                           "write it with 'krum-mpi bench aggregate --out FILE'") from None


def _check(meta: dict, rows) -> None:
    if meta.get("format") != FORMAT:
        raise ValueError(f"format is {meta.get('format')!r}, not {FORMAT!r}")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(f"format_version {meta.get('format_version')!r}, this reader knows "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    missing = [k for k in META_KEYS if k not in meta]
    if missing or not isinstance(rows, list):
        raise ValueError(f"missing {', '.join(missing) or 'results'}")
    for row in rows:
        absent = [c for c in COLUMNS + ("times_ms",) if c not in row and c not in OPTIONAL_COLUMNS]
        if absent:
            raise ValueError(f"a result lacks column {absent[0]}")


def _typed(row: dict) -> dict:
    out = {c: str(row[c]) for c in TEXT_COLUMNS}
    out.update({c: int(row[c]) for c in INT_COLUMNS})
    for c in FLOAT_COLUMNS:
        value = row.get(c)
        out[c] = None if value is None or value == "" or (isinstance(value, float) and np.isnan(value)) else float(value)
    out["times_ms"] = [float(t) for t in row["times_ms"]]
    return out


def _read_csv(path: Path):
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = tuple(reader.fieldnames or ())
        version_1 = tuple(c for c in COLUMNS if c not in OPTIONAL_COLUMNS) + ("times_ms",)
        if fields not in (COLUMNS + ("times_ms",), version_1):
            raise ValueError(f"columns {reader.fieldnames} are not {list(COLUMNS) + ['times_ms']}")
        rows = [{**row, "times_ms": row["times_ms"].split()} for row in reader]
    meta = json.loads(meta_path(path).read_text())
    return meta, rows


def _read_h5(path: Path):
    import h5py

    with h5py.File(path, "r") as h5:
        meta = {}
        for key, value in h5.attrs.items():
            value = value.decode() if isinstance(value, bytes) else value
            value = value.item() if isinstance(value, np.generic) else value
            meta[key] = json.loads(value) if key in META_KEYS[1:] else value
        group = h5["results"]
        columns = {k: group[k][()] for k in COLUMNS + ("times_ms",) if k in group or k not in OPTIONAL_COLUMNS}
    count = len(columns["rule"])
    rows = []
    for i in range(count):
        row = {k: columns[k][i] for k in columns}
        rows.append({k: v.decode() if isinstance(v, bytes) else v for k, v in row.items()})
    return meta, rows


def is_bench_file(path) -> bool:
    """True when ``path`` reads as a bench file (for sorting a study folder's files)."""
    try:
        read(path)
    except ResultsError:
        return False
    return True


def read_frame(path):
    """The rows of a bench file as a pandas DataFrame (the columns of COLUMNS), for reports."""
    import pandas as pd

    rows = read(path)["results"]
    return pd.DataFrame([{c: row[c] for c in COLUMNS} for row in rows], columns=list(COLUMNS))
