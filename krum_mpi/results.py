"""The HDF5 results file of one run: schema, writer (rank 0 only), reader, provenance.

Schema (version 1; docs/results-schema.md is the reference for users):

    /                 attrs: schema_version, config (JSON), run_id, status, created, provenance (JSON),
                             n_workers, n_byzantine, f, aggregator, attack, seed, steps, steps_done
    /metrics/step           int64   (steps_done,)
    /metrics/loss           float64 (steps_done,)  mean minibatch loss of the honest workers
    /metrics/test_accuracy  float64 (steps_done,)  NaN where not evaluated
    /timing/{compute_s, gather_s, aggregate_s, update_s, step_s}  float64 (steps_done,)
    /timing/worker_compute_s  float64 (steps_done, n)  every worker's gradient time (NaN: absent)
    /selection/selected     int32   (steps_done, max_selected)  worker ids, best first, -1 padded
    /selection/weights      float32 (steps_done, n)  only for rules that weight workers
    /selection/byzantine    bool    (n,)
    /selection/worker_rank  int32   (n,)  the MPI rank that hosted each worker
    /selection/absent       bool    (steps_done, n)  workers that missed the gather deadline (with one)
    /checkpoint/            attrs: step (the last step done); datasets: params float32 (d,), and where
                            used server_momentum (d,), worker_momentum (n, d), aggregator state

Crash safety: the writer keeps the run in memory and, at every flush, writes the whole file to
``<out>.tmp`` and renames it over ``<out>`` (rename is atomic on POSIX). So the file on disk is
always a complete, readable HDF5 file holding every step up to the last flush, whatever kills the
process, and ``status`` says whether the run finished.
"""
from __future__ import annotations

import getpass
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import ResultsError
from .native import status as native_status

SCHEMA_VERSION = 1
METRICS = ("loss", "test_accuracy")
TIMINGS = ("compute_s", "gather_s", "aggregate_s", "update_s", "step_s")


class ResultsWriter:
    """Collects per-step records in preallocated arrays and flushes them atomically to HDF5."""

    def __init__(self, path, cfg: dict, run_id: str, provenance: dict, byzantine: np.ndarray,
                 max_selected: int, record_weights: bool, record_absent: bool = False):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        steps, n = cfg["run"]["steps"], cfg["workers"]["n"]
        self.cfg, self.run_id, self.provenance = cfg, run_id, provenance
        self.byzantine = np.asarray(byzantine, dtype=bool)
        self.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.done = 0
        self.step = np.zeros(steps, dtype=np.int64)
        self.metrics = {k: np.full(steps, np.nan) for k in METRICS}
        self.timing = {k: np.full(steps, np.nan) for k in TIMINGS}
        self.selected = np.full((steps, max_selected), -1, dtype=np.int32)
        self.weights = np.full((steps, n), np.nan, dtype=np.float32) if record_weights else None
        self.absent = np.zeros((steps, n), dtype=bool) if record_absent else None
        self.worker_compute = np.full((steps, n), np.nan)
        self.extra_attrs: dict = {}
        self.checkpoint: dict | None = None   # set by the training loop before each flush
        self.extra_selection: dict = {}       # per-worker arrays, e.g. worker_rank
        self.extra_datasets: dict = {}        # path -> array, e.g. comm/bytes_sent (steps x ranks)

    @classmethod
    def resume(cls, path, cfg: dict, run_id: str, provenance: dict, byzantine, max_selected: int,
               record_weights: bool, record_absent: bool = False) -> tuple["ResultsWriter", dict]:
        """Reopen an interrupted run's file: the records up to its checkpoint, and the checkpoint
        (None, with a fresh writer, when the run stopped before its first checkpoint)."""
        old = read_run(path)
        attrs = old["attrs"]
        if attrs["run_id"] != run_id:
            raise ResultsError(f"{path} holds another run (run_id {attrs['run_id']}, this config is {run_id}): "
                               "resume with the same config and overrides, or choose another --out")
        w = cls(path, cfg, run_id, provenance, byzantine, max_selected, record_weights, record_absent)
        if "checkpoint" not in old:   # stopped before its first checkpoint: nothing to keep, start again
            return w, None
        w.created = attrs["created"]
        k = int(old["checkpoint"]["step"]) + 1   # records past the checkpoint are redone
        w.done = k
        w.step[:k] = old["metrics"]["step"][:k]
        for name in METRICS:
            w.metrics[name][:k] = old["metrics"][name][:k]
        for name in TIMINGS:
            w.timing[name][:k] = old["timing"][name][:k]
        if "worker_compute_s" in old["timing"]:
            w.worker_compute[:k] = old["timing"]["worker_compute_s"][:k]
        w.selected[:k] = old["selection"]["selected"][:k]
        if w.weights is not None and "weights" in old["selection"]:
            w.weights[:k] = old["selection"]["weights"][:k]
        if w.absent is not None and "absent" in old["selection"]:
            w.absent[:k] = old["selection"]["absent"][:k]
        w.extra_attrs["resumed_at_steps"] = list(attrs.get("resumed_at_steps", [])) + [k]
        return w, old["checkpoint"]

    def record(self, step: int, loss: float, test_accuracy: float, timing: dict,
               selected, weights=None, absent=None, worker_compute_s=None) -> None:
        i = self.done
        self.step[i] = step
        self.metrics["loss"][i] = loss
        self.metrics["test_accuracy"][i] = test_accuracy
        for k in TIMINGS:
            self.timing[k][i] = timing[k]
        if selected is not None:
            sel = np.asarray(selected)[: self.selected.shape[1]]
            self.selected[i, : sel.size] = sel
        if self.weights is not None and weights is not None:
            self.weights[i] = weights
        if self.absent is not None and absent is not None:
            self.absent[i] = absent
        if worker_compute_s is not None:
            self.worker_compute[i] = worker_compute_s
        self.done += 1

    def flush(self, status: str = "running") -> None:
        import h5py

        self.path.parent.mkdir(parents=True, exist_ok=True)
        k = self.done
        cfg = self.cfg
        with h5py.File(self.tmp, "w") as h5:
            attrs = h5.attrs
            attrs["schema_version"] = SCHEMA_VERSION
            attrs["config"] = json.dumps(cfg, sort_keys=True)
            attrs["run_id"] = self.run_id
            attrs["status"] = status
            attrs["created"] = self.created
            attrs["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            attrs["provenance"] = json.dumps(self.provenance, sort_keys=True)
            attrs["n_workers"] = cfg["workers"]["n"]
            attrs["n_byzantine"] = cfg["workers"]["byzantine"]
            attrs["f"] = cfg["aggregator"]["f"]
            attrs["aggregator"] = cfg["aggregator"]["name"]
            attrs["attack"] = cfg["attack"]["name"]
            attrs["seed"] = cfg["run"]["seed"]
            attrs["steps"] = cfg["run"]["steps"]
            attrs["steps_done"] = k
            for key, value in self.extra_attrs.items():
                attrs[key] = value
            g = h5.create_group("metrics")
            g.create_dataset("step", data=self.step[:k])
            for name, arr in self.metrics.items():
                g.create_dataset(name, data=arr[:k])
            g = h5.create_group("timing")
            for name, arr in self.timing.items():
                g.create_dataset(name, data=arr[:k])
            g.create_dataset("worker_compute_s", data=self.worker_compute[:k])
            g = h5.create_group("selection")
            g.create_dataset("selected", data=self.selected[:k])
            if self.weights is not None:
                g.create_dataset("weights", data=self.weights[:k])
            if self.absent is not None:
                g.create_dataset("absent", data=self.absent[:k])
            g.create_dataset("byzantine", data=self.byzantine)
            for name, value in self.extra_selection.items():
                g.create_dataset(name, data=value)
            for name, value in self.extra_datasets.items():
                h5.create_dataset(name, data=value[:k])
            if self.checkpoint is not None:
                g = h5.create_group("checkpoint")
                for name, value in self.checkpoint.items():
                    if value is None:
                        continue
                    if name == "step":
                        g.attrs["step"] = int(value)
                    else:
                        g.create_dataset(name, data=value)
            h5.flush()
        with open(self.tmp, "rb+") as fh:   # data on disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)


def check_can_write(path, force: bool) -> None:
    """Refuse to overwrite an existing results file unless asked (no lost data)."""
    path = Path(path)
    if path.exists() and not force:
        raise ResultsError(f"{path} already exists: choose another --out or pass --force to overwrite it")
    if path.is_dir():
        raise ResultsError(f"{path} is a folder: --out must name a file such as results/run.h5")


def read_run(path) -> dict:
    """Read a results file into a dict: attrs (config and provenance decoded), and every array."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: results file not found")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise ResultsError(f"{path}: not a readable HDF5 file ({' '.join(str(exc).split())})")
    with h5:
        attrs = {k: _plain(v) for k, v in h5.attrs.items()}
        version = attrs.get("schema_version")
        if version is None:
            raise ResultsError(f"{path}: not a krum-mpi results file (no schema_version attribute)")
        if version != SCHEMA_VERSION:
            raise ResultsError(f"{path}: schema_version {version} is not {SCHEMA_VERSION}: "
                               "read it with the krum-mpi version that wrote it")
        try:
            attrs["config"] = json.loads(attrs["config"])
            attrs["provenance"] = json.loads(attrs["provenance"])
            out = {"attrs": attrs}
            for group in ("metrics", "timing", "selection"):
                out[group] = {name: ds[()] for name, ds in h5[group].items()}
            if "checkpoint" in h5:
                ck = h5["checkpoint"]
                out["checkpoint"] = {name: ds[()] for name, ds in ck.items()}
                out["checkpoint"]["step"] = int(ck.attrs["step"])
        except (KeyError, ValueError) as exc:
            raise ResultsError(f"{path}: incomplete results file ({exc}): rerun the run")
    return out


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


# -- provenance ---------------------------------------------------------------------------------
def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:
        return None


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def blas_info() -> list:
    try:
        from threadpoolctl import threadpool_info
        keep = ("internal_api", "version", "num_threads", "architecture", "threading_layer", "filepath")
        return [{k: v for k, v in info.items() if k in keep} for info in threadpool_info()]
    except Exception as exc:
        return [{"error": type(exc).__name__}]


def provenance(mpi_library: str, hostnames: list, n_ranks: int, n_workers: int, device: str) -> dict:
    env_keys = [k for k in os.environ if k.startswith(("SLURM_", "OPENBLAS_", "OMP_", "MKL_", "KRUM_MPI_"))]
    return {
        "uuid": str(uuid.uuid4()),
        "time_unix": time.time(),
        "time_iso": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cmdline": " ".join(sys.argv),
        "cwd": os.getcwd(),
        "user": _safe(getpass.getuser),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {m: _version(m) for m in ("krum-mpi", "numpy", "h5py", "mpi4py", "mpich", "cupy-cuda12x")},
        "git_commit": _git_commit(),
        "mpi_library_version": mpi_library,
        "hostnames": hostnames,
        "n_ranks": n_ranks,
        "n_workers": n_workers,
        "device": device,
        "blas": blas_info(),
        "native_kernels": _safe(native_status),  # compiled kernels and ISA: near-ties can differ by ISA
        "env": {k: os.environ[k] for k in sorted(env_keys)},
    }


def _safe(fn):
    try:
        return fn()
    except Exception:
        return None
