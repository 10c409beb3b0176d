"""The HDF5 results file of one run: schema, writer (rank 0 only), reader, provenance.

Schema (version 1; docs/results-schema.md is the reference for users):

    /                 attrs: schema_version, config (JSON), run_id, status, created, provenance (JSON),
                             n_workers, n_byzantine, f, aggregator, attack, seed, steps, steps_done,
                             last_checkpoint_step, row_digests (SHA-256 of every per-step dataset's
                             rows, see krum_mpi.run.digests)
    per-step datasets (PER_STEP below), each (steps_done, ...), chunked and resizable
    /selection/byzantine    bool    (n,)
    /selection/worker_rank  int32   (n,)  the MPI rank that hosted each worker
    /selection/byzantine_through_ranks  bool (steps_done, n), per step with [byzantine_ranks]: the workers a
                            Byzantine rank's group hosts (files written before it was per step: (n,))
    /checkpoint/            only in a complete run: attrs step; params float32 (d,), the final parameters

What a resume needs (parameters, momentum, rule state) lives in its own file, ``<out>.ckpt``
(krum_mpi.run.checkpoint), written whole at each flush.

Crash safety at a cost that grows with the new rows, not with the run: the writer keeps two files,
hidden names ``.<out>.<host-pid-random>.a`` and ``.b``; ``<out>`` is a hard link to the one
flushed last. A flush appends the rows the other one lacks (those of the last two flushes) in
place, fsyncs it, and links it over ``<out>`` with an atomic rename. The file ``<out>`` names is
never modified, so it opens after any kill; the lagging file is the one being written.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .outfiles import check_can_write  # noqa: F401  (the CLI checks the folder through results)
from .digests import ATTR as DIGESTS_ATTR
from .digests import RowHashes
from .outfiles import fsync_folder, os_error_text, unique_suffix, unlink_quietly
from ..errors import ResultsError
from .provenance import blas_info, provenance  # noqa: F401  (part of the results' schema: re-exported)

SCHEMA_VERSION = 1
METRICS = ("loss", "test_accuracy")
TIMINGS = ("compute_s", "gather_s", "aggregate_s", "update_s", "step_s")
# Timings added after schema 1's first files: a file written before lacks them (readers give NaN,
# a resume keeps the file without them). craft_s: rank 0 crafting the omniscient attack's rows.
LATER_TIMINGS = ("craft_s",)


@dataclass(frozen=True)
class PerStep:
    """One per-step dataset: a row per step. ``width``: "" (scalar rows), "n" (one value per worker)
    or "selected" (max_selected ids); ``when``: the writer flag that turns it on ("" = always)."""
    name: str
    dtype: type
    fill: object
    width: str = ""
    when: str = ""


# Adding a per-step dataset is one line here (and its value given to ResultsWriter.record).
PER_STEP = (
    PerStep("metrics/step", np.int64, 0),
    PerStep("metrics/loss", np.float64, np.nan),              # mean minibatch loss of the honest workers
    PerStep("metrics/test_accuracy", np.float64, np.nan),     # NaN where not evaluated
    PerStep("metrics/validation_accuracy", np.float64, np.nan, "", "validation"),  # with data.validation_fraction
    *(PerStep(f"timing/{k}", np.float64, np.nan) for k in TIMINGS),
    *(PerStep(f"timing/{k}", np.float64, np.nan, "", k) for k in LATER_TIMINGS),   # NaN: not measured
    PerStep("timing/worker_compute_s", np.float64, np.nan, "n"),   # NaN: absent
    PerStep("selection/selected", np.int32, -1, "selected"),  # worker ids, best first, -1 padded
    PerStep("selection/weights", np.float32, np.nan, "n", "weights"),
    PerStep("selection/absent", np.bool_, False, "n", "absent"),   # missed the gather deadline
    PerStep("selection/recomputed", np.int32, 0),  # distances the certified selection recomputed
    # with [byzantine_ranks]: the workers a Byzantine rank made Byzantine at that step
    PerStep("selection/byzantine_through_ranks", np.bool_, False, "n", "byzantine_ranks"),
)
CHUNK_BYTES = 1 << 14
LINK_UNSUPPORTED = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


def _chunk_rows(tail, dtype) -> tuple[int, int]:
    """Rows per chunk of a per-step dataset (about CHUNK_BYTES a chunk), and bytes per row."""
    row_bytes = max(1, int(np.prod([t or 1 for t in tail], dtype=np.int64)) * np.dtype(dtype).itemsize)
    return max(16, min(4096, CHUNK_BYTES // row_bytes)), row_bytes


def _can_open(path: Path, h5py) -> bool:
    try:
        h5py.File(path, "r+").close()
        return True
    except OSError:
        return False


class _Rows:
    """Per-step rows not yet in both files: one growable array per dataset, rows [base, base+count)."""

    def __init__(self, specs, tails: dict):
        self.specs, self.tails = specs, tails
        self.base = self.count = 0
        self.buf = {s.name: np.full((64, *tails[s.name]), s.fill, dtype=s.dtype) for s in specs}

    def append(self, values: dict) -> None:
        if self.count == len(next(iter(self.buf.values()))):
            for s in self.specs:
                grown = np.full((2 * self.count, *self.tails[s.name]), s.fill, dtype=s.dtype)
                grown[:self.count] = self.buf[s.name][:self.count]
                self.buf[s.name] = grown
        for s in self.specs:
            row = self.buf[s.name][self.count:self.count + 1]
            row[...] = s.fill if values.get(s.name) is None else values[s.name]
        self.count += 1

    def get(self, name: str, start: int, stop: int) -> np.ndarray:   # rows [start, stop), global ids
        return self.buf[name][start - self.base:stop - self.base]

    def drop_before(self, start: int) -> None:
        cut = start - self.base
        if cut <= 0:
            return
        for s in self.specs:
            b = self.buf[s.name]
            b[:self.count - cut] = b[cut:self.count].copy()
            b[self.count - cut:self.count] = s.fill
        self.base, self.count = start, self.count - cut


class ResultsWriter:
    """Collects per-step records and appends them to the results file at each flush (rank 0)."""

    def __init__(self, path, cfg: dict, run_id: str, provenance: dict, byzantine: np.ndarray,
                 max_selected: int, record_weights: bool, record_absent: bool = False,
                 later_timings=LATER_TIMINGS):
        self.path = Path(path)
        n = cfg["workers"]["n"]
        self.cfg, self.run_id, self.provenance = cfg, run_id, provenance
        self.byzantine = np.asarray(byzantine, dtype=bool)
        self.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        flags = {"": True, "weights": record_weights, "absent": record_absent,
                 "validation": cfg["data"].get("validation_fraction", 0) > 0,
                 "byzantine_ranks": bool(cfg.get("byzantine_ranks", {}).get("ranks")),
                 **{k: k in later_timings for k in LATER_TIMINGS}}
        self.specs = [s for s in PER_STEP if flags[s.when]]
        widths = {"": (), "n": (n,), "selected": (max_selected,)}
        self.tails = {s.name: widths[s.width] for s in self.specs}
        self.rows = _Rows(self.specs, self.tails)
        self.done = 0
        self.last_checkpoint_step = -1   # the checkpoint file on disk holds this step (-1: none yet)
        self.extra_attrs: dict = {}
        self.extra_selection: dict = {}       # per-worker arrays, e.g. worker_rank
        self.every_step: dict = {}            # per-step values recorded in every row unless the step gives its own
        suffix = unique_suffix()
        self.spares = [self.path.with_name(f".{self.path.name}.{suffix}.{x}") for x in "ab"]
        self.spare_rows: list = [None, None]   # rows each spare holds (None: not created yet)
        self.next_spare = 0
        self.broken = False                   # a flush failed (disk full): later flushes write nothing
        self._lock = threading.Lock()         # the watchdog thread may flush too
        self.extra_datasets: dict = {}        # name -> (steps, ...) array written whole at each flush (comm/*)
        self.hashes = RowHashes(s.name for s in self.specs)   # of the rows in the last flushed file
        self._next_hashes = None

    def row_digests(self) -> dict:
        """SHA-256 of each dataset's rows as of the last flush (the checkpoint written after it keeps them)."""
        return self.hashes.digests()

    def record(self, step: int, loss: float, test_accuracy: float, timing: dict, selected,
               weights=None, absent=None, worker_compute_s=None, values: dict | None = None) -> None:
        """One step's row. ``values``: more per-step values by dataset name (see PER_STEP)."""
        row = {"metrics/step": step, "metrics/loss": loss, "metrics/test_accuracy": test_accuracy,
               **{f"timing/{k}": timing.get(k) for k in TIMINGS + LATER_TIMINGS}, "selection/weights": weights,
               "selection/absent": absent, "timing/worker_compute_s": worker_compute_s, **self.every_step,
               **(values or {})}
        if selected is not None:
            width = self.tails["selection/selected"][0]
            sel = np.asarray(selected)[:width]
            row["selection/selected"] = np.concatenate([sel, np.full(width - sel.size, -1)])
        self.rows.append(row)
        self.done += 1

    def note_checkpoint(self, step: int) -> None:
        """The checkpoint file now holds ``step`` (recorded at the next flush)."""
        self.last_checkpoint_step = int(step)

    def flush(self, status: str = "running", final: dict | None = None) -> None:
        """Append the new rows and attributes, then make them the file ``<out>`` names (atomic).

        ``final`` (at the end): {"step", "params"}, kept in the results as the final parameters."""
        import h5py

        with self._lock:
            if self.broken:
                return
            i = self.next_spare
            self._next_hashes = self.hashes.advanced(self.rows.get, self.done)
            try:
                self._update(i, status, final, h5py)
                self._publish(self.spares[i])
            except (OSError, RuntimeError) as exc:   # disk full, read-only, permissions, quota
                self.broken = True
                unlink_quietly(self.spares[i])   # a half-written spare must not hold the space
                kept = self.spare_rows[1 - i]
                what = f"results up to {kept} steps kept in {self.path}" if kept else "nothing written yet"
                raise ResultsError(f"cannot write {self.path}: {os_error_text(exc)}; {what}: free space or "
                                   "fix the folder, then rerun with --resume") from None
            self.hashes = self._next_hashes
            self.spare_rows[i] = self.done
            self.next_spare = 1 - i
            self.rows.drop_before(min(r or 0 for r in self.spare_rows))
            if final is not None:            # the run is over: <out> keeps the only name of its file
                for spare in self.spares:
                    unlink_quietly(spare)

    def _update(self, i: int, status: str, final, h5py) -> None:
        spare, have = self.spares[i], self.spare_rows[i]
        if have is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(spare, "w") as h5:
                self._create(h5)
            have = 0
        elif not _can_open(spare, h5py):   # a reader holds it (it was <out> two flushes ago): HDF5's lock
            have = self._replace_busy_spare(i)
            spare = self.spares[i]
        self._reserve(spare, have, final)
        h5 = h5py.File(spare, "r+")
        with h5:
            k = self.done
            for s in self.specs:
                ds = h5[s.name]
                ds.resize(k, axis=0)
                if k > have:
                    ds[have:k] = self.rows.get(s.name, have, k)
            attrs = h5.attrs
            attrs["status"] = status
            attrs["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            attrs["steps_done"] = k
            attrs["last_checkpoint_step"] = self.last_checkpoint_step
            attrs[DIGESTS_ATTR] = self._next_hashes.attr()
            for key, value in self.extra_attrs.items():
                attrs[key] = value
            for name, value in self.extra_datasets.items():   # small (steps x ranks): rewritten whole
                if name in h5:
                    del h5[name]
                h5.create_dataset(name, data=value[:k])
            if final is not None:
                g = h5.require_group("checkpoint")
                g.attrs["step"] = int(final["step"])
                if "params" in g:
                    del g["params"]
                g.create_dataset("params", data=final["params"])
        with open(spare, "rb+") as fh:   # data on disk before the rename makes it visible
            os.fsync(fh.fileno())

    def _reserve(self, spare: Path, have: int, final) -> None:
        """Allocate, before HDF5 writes, the disk space this flush can take: a write that fails inside
        HDF5 (a full disk) can crash the process, a failed allocation here is a clean OSError. HDF5
        writes its new blocks from its end of file on, into this space, and truncates what is left
        when it closes the file."""
        need = (1 << 18) + (0 if final is None else final["params"].nbytes)
        for s in self.specs:
            rows, row_bytes = _chunk_rows(self.tails[s.name], s.dtype)
            need += (-(-(self.done - have) // rows) + 2) * rows * row_bytes
        fd = os.open(spare, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            try:
                os.posix_fallocate(fd, size, need)
            except OSError as exc:
                os.ftruncate(fd, size)
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise
                vfs = os.statvfs(spare)   # no fallocate on this file system: check the free space
                if vfs.f_bavail * vfs.f_frsize < need:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
        finally:
            os.close(fd)

    def _replace_busy_spare(self, i: int) -> int:
        """Copy the other (published) file to a fresh name for this flush; the reader keeps its inode."""
        other = self.spares[1 - i]
        fresh = self.path.with_name(f".{self.path.name}.{unique_suffix()}.{'ab'[i]}")
        shutil.copyfile(other, fresh)
        self.spares[i].unlink(missing_ok=True)
        self.spares[i] = fresh
        return self.spare_rows[1 - i] or 0

    def _create(self, h5) -> None:
        cfg = self.cfg
        attrs = h5.attrs
        attrs["schema_version"] = SCHEMA_VERSION
        attrs["config"] = json.dumps(cfg, sort_keys=True)
        attrs["run_id"] = self.run_id
        attrs["created"] = self.created
        attrs["provenance"] = json.dumps(self.provenance, sort_keys=True)
        attrs.update({"n_workers": cfg["workers"]["n"], "n_byzantine": cfg["workers"]["byzantine"],
                      "f": cfg["aggregator"]["f"], "aggregator": cfg["aggregator"]["name"],
                      "attack": cfg["attack"]["name"], "seed": cfg["run"]["seed"], "steps": cfg["run"]["steps"]})
        for s in self.specs:
            tail = self.tails[s.name]
            rows, _ = _chunk_rows(tail, s.dtype)   # a zero width (a rule that selects
            h5.create_dataset(s.name, shape=(0, *tail), dtype=s.dtype, fillvalue=s.fill,  # none) chunks as 1
                              maxshape=(None, *(t or None for t in tail)), chunks=(rows, *(t or 1 for t in tail)))
        h5.create_dataset("selection/byzantine", data=self.byzantine)
        for name, value in self.extra_selection.items():
            h5.create_dataset(f"selection/{name}", data=value)

    def _publish(self, spare: Path) -> None:
        """Make ``spare`` the file ``<out>`` names: a hard link renamed over it (atomic)."""
        tmp = self.path.with_name(f".{self.path.name}.{unique_suffix()}.link")
        try:
            os.link(spare, tmp)
        except OSError as exc:
            if exc.errno not in LINK_UNSUPPORTED:
                raise
            shutil.copyfile(spare, tmp)   # no hard links here: a copy, fsynced (costs the whole file)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        try:
            os.replace(tmp, self.path)
        except OSError:
            unlink_quietly(tmp)
            raise
        fsync_folder(self.path.parent)






def read_run(path) -> dict:
    """Read a results file into a dict: attrs (config and provenance decoded), and every array."""
    import h5py

    path = Path(path)
    if not path.is_file():      # stat only: a FIFO or a device is never opened
        raise ResultsError(f"{path}: results file not found" if not os.path.lexists(path) else
                           f"{path} is not a regular file, so not a results file")
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
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise ResultsError(f"{path}: incomplete or damaged results file ({' '.join(str(exc).split())[:200]})")
    return out


def _plain(value):
    return value.decode() if isinstance(value, bytes) else value.item() if isinstance(value, np.generic) else value
