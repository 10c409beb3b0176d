"""Load a study (a folder of run files, or any list of them) into tables.

One HDF5 file per run (schema in ``krum_mpi.results``). What comes out:

- ``Study.runs``: pandas, one row per readable run: the quick attributes, the flattened resolved
  config (``"aggregator.name"``, ``"workers.n"``, ...), provenance (``"prov.n_ranks"``, ...) and
  derived columns (``rule``, ``attack_label``, ``byz_fraction``, ``n_ranks``). It is small and is
  computed at once (in one Dask ``compute``), because its columns depend on every file's config.
- ``Study.metrics`` / ``Study.timings`` / ``Study.selections``: lazy Dask DataFrames, one partition
  per file (or per ``files_per_partition`` files), read with h5py through ``dask.dataframe.from_map``
  with ``meta`` taken from a real file. Column selections are pushed into the read.
- ``Study.skipped``: every file that could not be used, with the reason. Nothing is dropped silently
  and no single file can make loading fail.

Works the same on the default threaded scheduler and on a ``dask.distributed`` cluster (a Client
created before loading is used for every compute).
"""
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import dask
import dask.dataframe as dd
import h5py
import numpy as np
import pandas as pd

from ..errors import ResultsError

SCHEMA_VERSION = 1
RESULTS_SUFFIXES = (".h5", ".hdf5")
PHASES = ("compute_s", "gather_s", "aggregate_s", "update_s")
METRICS = ("step", "loss", "test_accuracy")
TIMINGS = PHASES + ("step_s",)
# Config keys that tell replicates apart rather than experiments.
REPLICATE_KEYS = ("run.seed", "run.name", "run.checkpoint_every")
# Written by ``krum-mpi report`` into its output folder, so a report inside a study is not re-read.
REPORT_MARKER = ".krum-mpi-report"
PROBE_BATCH = 64  # files whose attributes one Dask task reads
QUICK_ATTRS = ("n_workers", "n_byzantine", "f", "aggregator", "attack", "seed", "steps")


# ---------------------------------------------------------------------------------------------
# Small helpers


def _attr(value):
    """An HDF5 attribute as a plain Python value (bytes -> str, NumPy scalar -> Python)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [_attr(v) for v in value.tolist()]
    return value


def _cell(value):
    """A config or provenance value as a hashable table cell (lists and dicts -> JSON text)."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return value


def flatten(tree, prefix=""):
    """Nested dict -> {"a.b": value}; lists stay whole (as one cell)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = _cell(value)
    return out


class _Skip(Exception):
    """Internal: a file that cannot be used, with the one-line reason."""


def _open(path):
    try:
        if not h5py.is_hdf5(path):
            raise _Skip("not an HDF5 file")
        return h5py.File(path, "r")
    except _Skip:
        raise
    except OSError as exc:  # truncated, corrupt, locked by a writer, no permission
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _Skip(f"cannot be read by HDF5 ({reason})") from None


# ---------------------------------------------------------------------------------------------
# One file -> one run-table row


def probe(path):
    """Read one run file's attributes into a run-table row (dict); ``_Skip`` with the reason if unusable."""
    path = Path(path)
    with _open(path) as h5:
        attrs = {k: _attr(v) for k, v in h5.attrs.items()}
        if "schema_version" not in attrs:
            raise _Skip("not a krum-mpi results file (no schema_version attribute)")
        if attrs["schema_version"] != SCHEMA_VERSION:
            raise _Skip(f"schema_version {attrs['schema_version']}, this reader knows {SCHEMA_VERSION}: "
                        "use the krum-mpi version that wrote it")
        for name in ("config", "run_id", "status"):
            if name not in attrs:
                raise _Skip(f"root attribute '{name}' missing")
        try:
            config = json.loads(attrs["config"])
            prov = json.loads(attrs.get("provenance") or "{}")
        except (TypeError, json.JSONDecodeError):
            raise _Skip("config or provenance attribute is not valid JSON") from None
        if not isinstance(config, dict):
            raise _Skip("config attribute is not a JSON object")
        lengths = {}
        for group, names in (("metrics", METRICS), ("timing", TIMINGS)):
            for name in names:
                key = f"{group}/{name}"
                if key not in h5 or not isinstance(h5[key], h5py.Dataset) or h5[key].ndim != 1:
                    raise _Skip(f"dataset '{key}' missing or not 1-D")
                lengths[key] = h5[key].shape[0]
        if len(set(lengths.values())) > 1:
            raise _Skip(f"per-step datasets differ in length ({min(lengths.values())} to "
                        f"{max(lengths.values())} rows)")
        steps_done = lengths["metrics/step"]
        has_selection = "selection/selected" in h5 and "selection/byzantine" in h5

    cfg = flatten(config)
    row = {
        "run_id": str(attrs["run_id"]),
        "file": str(path),
        "status": str(attrs["status"]),
        "created": str(attrs.get("created", "")),
        "steps_done": int(steps_done),
        "has_selection": bool(has_selection),
    }
    workers = config.get("workers", {}) if isinstance(config.get("workers"), dict) else {}
    fallback = {"n_workers": workers.get("n"), "n_byzantine": workers.get("byzantine"),
                "f": config.get("aggregator", {}).get("f"), "aggregator": cfg.get("aggregator.name"),
                "attack": cfg.get("attack.name"), "seed": cfg.get("run.seed"),
                "steps": cfg.get("run.steps")}
    for name in QUICK_ATTRS:
        row[name] = attrs.get(name, fallback[name])
    row.update(cfg)
    if isinstance(prov, dict):
        row.update({f"prov.{k}": v for k, v in flatten(prov).items()})
    return row


def _probe_batch(paths):
    return [_probe_or_reason(p) for p in paths]


def _probe_or_reason(path):
    try:
        return probe(path)
    except _Skip as exc:
        return {"file": str(path), "skip_reason": str(exc)}
    except Exception as exc:  # never fatal: a file we cannot parse is reported, not raised
        return {"file": str(path), "skip_reason": f"unreadable ({type(exc).__name__}: {exc})".splitlines()[0]}


# ---------------------------------------------------------------------------------------------
# One file -> per-step frames (these run inside Dask tasks)


def _key(run, n):
    return pd.Series([run] * n, dtype="str")


def _columns_frame(h5, run, sources, columns):
    """A frame of 1-D datasets (``sources``: column -> dataset path, dtype); reads only ``columns``."""
    n = h5["metrics/step"].shape[0]
    wanted = list(sources) if columns is None else [c for c in sources if c in columns]
    frame = {"run": _key(run, n)} if columns is None or "run" in columns else {}
    for name in wanted:
        path, dtype = sources[name]
        frame[name] = h5[path][()].astype(dtype)
    return pd.DataFrame(frame, index=pd.RangeIndex(n))


def _metrics_frame(h5, run, columns=None):
    sources = {"step": ("metrics/step", np.int64), "loss": ("metrics/loss", np.float64),
               "test_accuracy": ("metrics/test_accuracy", np.float64)}
    return _columns_frame(h5, run, sources, columns)


def _timings_frame(h5, run, columns=None):
    sources = {"step": ("metrics/step", np.int64),
               **{name: (f"timing/{name}", np.float64) for name in TIMINGS}}
    return _columns_frame(h5, run, sources, columns)


def _selections_frame(h5, run, columns=None):
    """Per step: how many workers the rule selected, the first (best) one, and whether any was Byzantine."""
    steps = h5["metrics/step"][()].astype(np.int64)
    n = steps.shape[0]
    nan = np.full(n, np.nan)
    frame = {"run": _key(run, n), "step": steps,
             "n_selected": np.zeros(n, np.int64), "top": np.full(n, -1, np.int64),
             "byz_selected": nan, "top_byzantine": nan.copy(), "byz_weight": nan.copy()}
    if "selection/selected" in h5 and "selection/byzantine" in h5:
        byz = h5["selection/byzantine"][()].astype(bool)
        sel = h5["selection/selected"][()].astype(np.int64)
        sel = sel.reshape(sel.shape[0], -1)[:n]
        valid = (sel >= 0) & (sel < byz.size)
        frame["n_selected"] = valid.sum(axis=1)
        is_byz = np.zeros(sel.shape, bool)
        is_byz[valid] = byz[sel[valid]]
        any_byz = is_byz.any(axis=1).astype(np.float64)
        frame["byz_selected"] = np.where(frame["n_selected"] > 0, any_byz, np.nan)
        if sel.shape[1] > 0:
            top = np.where(valid[:, 0], sel[:, 0], -1)
            frame["top"] = top
            frame["top_byzantine"] = np.where(top >= 0, is_byz[:, 0].astype(np.float64), np.nan)
        if "selection/weights" in h5:
            w = np.abs(h5["selection/weights"][()].astype(np.float64))[:n]
            total = w.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                frame["byz_weight"] = np.where(total > 0, w[:, byz].sum(axis=1) / total, np.nan)
    return pd.DataFrame(frame)


_FRAMES = {"metrics": _metrics_frame, "timings": _timings_frame, "selections": _selections_frame}


def read_partition(runs, kind, columns=None):
    """Read one partition: the ``kind`` frame ("metrics", "timings", "selections") of these runs.

    ``runs``: (path, run key) pairs; the key fills the ``run`` column. ``columns`` lets Dask push a
    column selection into the read.
    """
    parts = []
    for path, run in runs:
        with h5py.File(path, "r") as h5:
            parts.append(_FRAMES[kind](h5, run, columns))
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return frame[list(columns)] if columns is not None else frame


# ---------------------------------------------------------------------------------------------
# Study


@dataclass
class Study:
    """A loaded study. ``runs`` and ``skipped`` are pandas; the per-step frames are lazy Dask."""

    source: str
    runs: pd.DataFrame
    skipped: pd.DataFrame
    bench_files: list = field(default_factory=list)
    other_files: dict = field(default_factory=dict)
    files_per_partition: int = 1

    @property
    def files(self):
        return list(self.runs["file"]) if len(self.runs) else []

    def _frame(self, kind):
        pairs = list(zip(self.files, self.runs["run"])) if len(self.runs) else []
        if not pairs:
            raise ResultsError(f"no readable run files in {self.source}: see Study.skipped for why")
        size = max(1, int(self.files_per_partition))
        groups = [tuple(pairs[i:i + size]) for i in range(0, len(pairs), size)]
        meta = read_partition(pairs[:1], kind).iloc[:0]  # from a real file: dtypes exactly as read
        return dd.from_map(read_partition, groups, kind=kind, meta=meta, label=f"krum-{kind}",
                           enforce_metadata=False)

    @cached_property
    def metrics(self):
        """Lazy: run, step, loss, test_accuracy (NaN where not evaluated)."""
        return self._frame("metrics")

    @cached_property
    def timings(self):
        """Lazy: run, step, compute_s, gather_s, aggregate_s, update_s, step_s."""
        return self._frame("timings")

    @cached_property
    def selections(self):
        """Lazy: run, step, n_selected, top, byz_selected, top_byzantine, byz_weight."""
        return self._frame("selections")

    def complete_runs(self):
        return self.runs[self.runs["status"] == "complete"]


def _scheduler():
    """The active distributed Client if one is set, else threads (h5py reads need no processes)."""
    return None if dask.config.get("scheduler", None) else "threads"


def discover(source):
    """Split a folder or a list of paths into result candidates, bench files, skipped and other files."""
    if isinstance(source, (str, Path)):
        root = Path(source)
        if not root.exists():
            raise ResultsError(f"study path {root} does not exist: give a study folder or run files")
        if root.is_dir():
            report_dirs = {p.parent for p in root.rglob(REPORT_MARKER)}
            paths = [p for p in sorted(root.rglob("*"))
                     if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
                     and not any(d in p.parents for d in report_dirs)]
        else:
            paths = [root]
    else:
        paths = [Path(p) for p in source]
    candidates, bench, skipped, other = [], [], [], Counter()
    for p in paths:
        name = p.name.lower()
        if name.endswith(".tmp"):
            skipped.append((str(p), "temporary file of a write in progress (or of a killed writer)"))
        elif not p.is_file():
            skipped.append((str(p), "no such file"))
        elif name.endswith(RESULTS_SUFFIXES):
            candidates.append(p)
        elif "bench" in name and name.endswith((".json", ".csv")):
            bench.append(p)
        else:
            other[p.suffix.lower() or "(no suffix)"] += 1
    return candidates, bench, skipped, dict(other)


def load_study(source, files_per_partition=1):
    """Load a study folder (searched recursively), a single run file, or a list of run files.

    Files that are not usable runs (not HDF5, truncated, another schema, temporary, duplicated run
    ids) end up in ``Study.skipped`` with the reason; HDF5 files that hold a bench table (written
    by ``krum-mpi bench aggregate``) go to ``Study.bench_files``.
    """
    from .bench import is_bench_table  # bench reads HDF5 tables with this module's helpers

    candidates, bench, skipped, other = discover(source)
    # One task per batch of files: reading attributes takes about a millisecond, as does a task.
    batches = [[str(p) for p in candidates[i:i + PROBE_BATCH]] for i in range(0, len(candidates), PROBE_BATCH)]
    done = dask.compute(*[dask.delayed(_probe_batch)(b) for b in batches], scheduler=_scheduler())
    rows = [row for batch in done for row in batch]
    good = []
    for row in rows:
        if "skip_reason" not in row:
            good.append(row)
        elif is_bench_table(row["file"]):
            bench.append(Path(row["file"]))
        else:
            skipped.append((row["file"], row["skip_reason"]))
    runs = pd.DataFrame(good)
    if len(runs):
        runs, dupes = _drop_duplicates(runs)
        skipped += dupes
        runs.insert(0, "run", _run_keys(source, runs["file"]))
        runs = add_derived_columns(runs)
    skipped = pd.DataFrame(skipped, columns=["file", "reason"])
    return Study(source=str(source), runs=runs, skipped=skipped, bench_files=bench,
                 other_files=other, files_per_partition=files_per_partition)


def _run_keys(source, files):
    """A short unique name per run: its path inside the study folder (else its name, else its path)."""
    paths = [Path(f) for f in files]
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        return [p.relative_to(source).as_posix() for p in paths]
    names = [p.name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def _drop_duplicates(runs):
    """Keep one file per (run_id, n_ranks): the complete one with the most steps; list the others.

    The run id hashes the config, which does not hold the number of MPI ranks: the same config on
    1 and 4 ranks (a scaling study) is two runs; the same config on the same ranks twice is a copy
    or a rerun, and counting it twice would shrink the confidence intervals.
    """
    ranks = runs["prov.n_ranks"].astype(str) if "prov.n_ranks" in runs else ""
    order = runs.assign(_complete=runs["status"].eq("complete"), _ranks=ranks).sort_values(
        ["_complete", "steps_done", "created", "file"], ascending=[False, False, False, True])
    keep = order.drop_duplicates(["run_id", "_ranks"], keep="first")
    kept_file = {(r, k): f for r, k, f in zip(keep["run_id"], keep["_ranks"], keep["file"])}
    dropped = order.loc[~order.index.isin(keep.index)]
    dupes = [(f, f"same config and ranks as {Path(kept_file[(r, k)]).name} (run {r}), which is kept")
             for f, r, k in zip(dropped["file"], dropped["run_id"], dropped["_ranks"])]
    keep = keep.drop(columns=["_complete", "_ranks"]).sort_values("file").reset_index(drop=True)
    return keep, dupes


# ---------------------------------------------------------------------------------------------
# Derived columns and experiment keys


def _label(runs, name_col, prefix, skip):
    """``name(opt=v, ...)`` with only the options that vary among runs of that name."""
    opts = [c for c in runs.columns if c.startswith(prefix) and c not in skip]
    labels = pd.Series(runs[name_col].astype(str).to_numpy(), index=runs.index, dtype=object)
    for name, sub in runs.groupby(name_col, dropna=False):
        varying = [c for c in opts if _varies(sub[c])]
        for idx, row in sub.iterrows():
            parts = [f"{c[len(prefix):]}={row[c]}" for c in varying if not _isnan(row[c])]
            if parts:
                labels[idx] = f"{name}({', '.join(parts)})"
    return labels


def _isnan(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def fill_missing_defaults(runs):
    """Files written before a config key existed lack it: give it today's default in those rows.

    Otherwise a study that spans a new config key would split every experiment in two (key
    missing / key at its default). Only keys present in some files and with a known default are filled.
    """
    try:
        from ..config import DEFAULTS
    except ImportError:  # a reader without the training side
        return runs
    runs = runs.copy()
    for col, value in flatten(DEFAULTS).items():
        if value is None or col not in runs:
            continue
        missing = runs[col].isna()
        if missing.any() and not missing.all():
            present = runs[col].dropna().iloc[0]
            if isinstance(present, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # the column became float around the NaNs: keep one type
            runs[col] = runs[col].astype(object).where(~missing, value)
    return runs


def _varies(column):
    """More than one distinct value among the rows that have one."""
    return column.dropna().astype(str).nunique() > 1


def add_derived_columns(runs):
    """Add ``rule``, ``attack_label`` (``"none"`` without Byzantine workers), ``byz_fraction``, ``n_ranks``."""
    runs = fill_missing_defaults(runs)
    if "aggregator.name" not in runs:
        runs["aggregator.name"] = runs["aggregator"]
    if "attack.name" not in runs:
        runs["attack.name"] = runs["attack"]
    runs["rule"] = _label(runs, "aggregator.name", "aggregator.", {"aggregator.name", "aggregator.f"})
    attack = _label(runs, "attack.name", "attack.", {"attack.name"})
    n_byz = pd.to_numeric(runs["n_byzantine"], errors="coerce").fillna(0)
    runs["attack_label"] = attack.where(n_byz > 0, "none")
    runs["byz_fraction"] = n_byz / pd.to_numeric(runs["n_workers"], errors="coerce")
    runs["n_ranks"] = pd.to_numeric(runs["prov.n_ranks"], errors="coerce") if "prov.n_ranks" in runs else np.nan
    return runs


def experiment_keys(runs):
    """Columns that tell experiments apart: rule, attack, Byzantine fraction, then every other
    config key that varies in this study (except replicate keys such as the seed)."""
    keys = ["rule", "byz_fraction", "attack_label"]
    covered = {"aggregator.name", "attack.name", "workers.byzantine"}
    for col in runs.columns:
        is_cfg = "." in col and not col.startswith("prov.")
        if not is_cfg or col in REPLICATE_KEYS or col in covered:
            continue
        if col.startswith(("aggregator.", "attack.")) and col != "aggregator.f":
            continue  # already in the rule / attack labels
        if _varies(runs[col]):
            keys.append(col)
    if "n_ranks" in runs and runs["n_ranks"].nunique(dropna=False) > 1:
        keys.append("n_ranks")
    return keys
