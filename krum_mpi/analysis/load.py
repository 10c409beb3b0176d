"""Load a study (a folder of run files, or any list of them) into tables.

One HDF5 file per run (schema in ``krum_mpi.run.results``). What comes out:

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
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import dask
import dask.dataframe as dd
import h5py
import numpy as np
import pandas as pd

from ..bench import schema as benchfile
from ..errors import ResultsError
from .derived import add_derived_columns
from .runtable import LATER_TIMINGS, STEP_TIMINGS, probe_batch

RESULTS_SUFFIXES = (".h5", ".hdf5")
# Written by ``krum-mpi report`` into its output folder, so a report inside a study is not re-read.
REPORT_MARKER = ".krum-mpi-report"
PROBE_BATCH = 64  # files whose attributes one Dask task reads


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
    """Per step: the timings; those added after a file was written (LATER_TIMINGS) are NaN there."""
    absent = {name for name in LATER_TIMINGS if f"timing/{name}" not in h5}
    sources = {"step": ("metrics/step", np.int64),
               **{name: (f"timing/{name}", np.float64) for name in STEP_TIMINGS if name not in absent}}
    frame = _columns_frame(h5, run, sources, columns)
    for name in sorted(absent):
        if columns is None or name in columns:
            frame[name] = np.nan
    return frame[[c for c in ("run", "step", *STEP_TIMINGS) if c in frame.columns]]


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
        # explicit width: a run that has just started has 0 rows, and reshape(0, -1) is ambiguous
        sel = sel.reshape(sel.shape[0], int(np.prod(sel.shape[1:], dtype=np.int64)))[:n]
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


def _sharding_frame(h5, run, columns=None):
    """Per step, for comparing placements (docs/sharded.md): the bytes received by the busiest rank
    and per rank on average (NaN where not recorded), a CRC of the step's selection with each row's
    entries sorted (a set for Multi-Krum), the loss, for per-shard the share of blocks whose own
    selection includes a Byzantine worker, and a CRC of the final parameters (-1: none)."""
    steps = h5["metrics/step"][()].astype(np.int64)
    n = steps.shape[0]
    frame = {"run": _key(run, n), "step": steps, "busiest_received": np.full(n, np.nan),
             "mean_received": np.full(n, np.nan), "selection_crc": np.full(n, -1, np.int64),
             "byz_block_share": np.full(n, np.nan), "loss": h5["metrics/loss"][()].astype(np.float64)[:n],
             "params_crc": np.full(n, -1, np.int64)}
    if "checkpoint/params" in h5:   # the final parameters of a complete run, the same on every row
        frame["params_crc"][:] = zlib.crc32(h5["checkpoint/params"][()].tobytes())
    if "comm/bytes_received" in h5:
        received = h5["comm/bytes_received"][()].astype(np.float64)[:n]
        received[received < 0] = np.nan     # -1: a step this process did not run (before a resume)
        frame["busiest_received"][:len(received)] = received.max(axis=1)
        frame["mean_received"][:len(received)] = received.mean(axis=1)
    if "selection/selected" in h5:
        sel = h5["selection/selected"][()].astype(np.int64)
        sel = np.sort(sel.reshape(sel.shape[0], -1) if sel.ndim != 1 else sel[:, None], axis=1)[:n]
        frame["selection_crc"][:len(sel)] = [zlib.crc32(row.tobytes()) for row in sel]
    if "selection/per_block" in h5 and "selection/byzantine" in h5:
        byz = h5["selection/byzantine"][()].astype(bool)
        blocks = h5["selection/per_block"][()].astype(np.int64)[:n]   # (steps, ranks, width), -1 empty
        hit = np.where(blocks >= 0, byz[np.clip(blocks, 0, byz.size - 1)], False).any(axis=2)
        frame["byz_block_share"][:len(blocks)] = hit.mean(axis=1)
    return pd.DataFrame(frame)


_FRAMES = {"metrics": _metrics_frame, "timings": _timings_frame, "selections": _selections_frame,
           "sharding": _sharding_frame}


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
        """Lazy: run, step, compute_s, gather_s, aggregate_s, update_s, step_s, craft_s (NaN in older files)."""
        return self._frame("timings")

    @cached_property
    def selections(self):
        """Lazy: run, step, n_selected, top, byz_selected, top_byzantine, byz_weight."""
        return self._frame("selections")

    @cached_property
    def sharding(self):
        """Lazy: run, step, busiest_received, mean_received, selection_crc, byz_block_share, loss, params_crc."""
        return self._frame("sharding")

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
    candidates, bench, skipped, other, plans = [], [], [], Counter(), {}
    for p in paths:
        name = p.name.lower()
        if name.endswith(".tmp"):
            skipped.append((str(p), "temporary file of a write in progress (or of a killed writer)"))
        elif not p.is_file():
            skipped.append((str(p), "no such file"))
        elif name.endswith(RESULTS_SUFFIXES):
            stale = _not_planned(p, plans)
            if stale:
                skipped.append((str(p), stale))
            else:
                candidates.append(p)
        elif name.endswith(".meta.json"):   # beside a bench CSV: read with it
            other[".meta.json"] += 1
        elif "bench" in name and name.endswith((".json", ".csv")):
            bench.append(p)
        else:
            other[p.suffix.lower() or "(no suffix)"] += 1
    return candidates, bench, skipped, dict(other)


def _not_planned(path: Path, plans: dict) -> str:
    """Why a run file in a study folder (``STUDY/runs/ID.h5`` beside ``STUDY/study.json``) is not one
    of the study's planned runs, or "": a file left from an earlier plan (a tuning choice made again
    after its grid changed gives the tuned parts new run ids) must not be pooled with the runs of
    the present plan as extra seeds."""
    from ..study.folder import PLAN_FILE, RUNS_DIR

    if path.parent.name != RUNS_DIR or not (path.parent.parent / PLAN_FILE).is_file():
        return ""
    folder = path.parent.parent
    if folder not in plans:
        try:
            plan = json.loads((folder / PLAN_FILE).read_text())
            plans[folder] = {r["id"] for r in plan.get("runs", [])}
        except (OSError, ValueError, KeyError, TypeError):
            plans[folder] = None            # an unreadable plan decides nothing: keep the files
    ids = plans[folder]
    run_id = path.name.split(".", 1)[0]
    if ids is None or run_id in ids:
        return ""
    return (f"not a run of the study's present plan ({folder.name}/{PLAN_FILE}): left from an earlier "
            "plan (for instance a tuning choice since made again); move it out of the study folder")


def load_study(source, files_per_partition=1):
    """Load a study folder (searched recursively), a single run file, or a list of run files.

    Files that are not usable runs (not HDF5, truncated, another schema, temporary, duplicated run
    ids) end up in ``Study.skipped`` with the reason; HDF5 files that hold a bench table (written
    by ``krum-mpi bench aggregate``) go to ``Study.bench_files``.
    """
    candidates, bench, skipped, other = discover(source)
    # One task per batch of files: reading attributes takes about a millisecond, as does a task.
    batches = [[str(p) for p in candidates[i:i + PROBE_BATCH]] for i in range(0, len(candidates), PROBE_BATCH)]
    done = dask.compute(*[dask.delayed(probe_batch)(b) for b in batches], scheduler=_scheduler())
    rows = [row for batch in done for row in batch]
    good = []
    for row in rows:
        if "skip_reason" not in row:
            good.append(row)
        elif benchfile.is_bench_file(row["file"]):
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
