"""--resume: read and check everything a resumed run starts from, on rank 0, before any rank goes on.

The results file (``<out>``) gives the recorded rows; the checkpoint file (``<out>.ckpt``) gives the
state after step s (parameters, momentum, rule state). Both are checked against this run's config
(run id, shapes, dtypes, step range, per-array checksums, the SHA-256 of every recorded row, the
checkpoint's binding to the rows it continues, finiteness as saved, the Byzantine set);
the first problem found is refused with one line, and rank 0 tells every rank (go or no-go) so none
waits in a collective. Rows recorded past the checkpoint are dropped: the resumed run redoes them.
"""
from __future__ import annotations

import numpy as np

from . import checkpoint, digests
from ..errors import ResultsError
from .results import LATER_TIMINGS, ResultsWriter, read_run

STATE_PREFIX = "aggregator_state."
STATUSES = ("running", "interrupted", "failed", "complete")
STATE_LINES = {   # what --resume says before it starts (unless --quiet)
    "fresh": "krum-mpi: note: --resume: no checkpoint: starting fresh ({out} holds no step to continue from)",
    "complete": "krum-mpi: already complete: {out} holds all {steps} steps of this run; nothing to do "
                "(exit 0; --force instead of --resume runs it again)",
}


def state_before_start(path, cfg: dict, run_id: str) -> str:
    """Rank 0, before any setup: "fresh" (no file, or a file stopped before its first checkpoint),
    "complete" (this run, finished, every row matching its checksums) or "go" (resume.load checks
    and continues it, or refuses it in one line)."""
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        return "fresh"
    try:
        old = read_run(path)
        attrs = _checked_attrs(path, old["attrs"], cfg)
    except ResultsError:
        return "go"      # load says what is wrong, in its own words
    if attrs["run_id"] != run_id:
        return "go"
    if attrs["status"] == "complete":
        # a model-parallel run keeps its final shards in the checkpoint: load checks them (and the split)
        params = (old.get("checkpoint") or {}).get("params")
        whole = (attrs.get("parallel_model", 1) == 1 and params is not None and params.dtype == np.float32
                 and params.ndim == 1 and attrs["steps_done"] == cfg["run"]["steps"])
        return "complete" if whole and _rows_mismatch(path, old, attrs["steps_done"]) is None else "go"
    if attrs["last_checkpoint_step"] < 0 and not checkpoint.path_for(path).exists():
        return "fresh"
    return "go"


def _checked_attrs(path, attrs: dict, cfg: dict) -> dict:
    """The root attributes a resume reads, each of the type it must have; one line for the first that is not."""
    for key, kind in (("run_id", str), ("status", str), ("created", str), ("steps_done", int),
                      ("last_checkpoint_step", int)):
        value = attrs.get(key, -1 if key == "last_checkpoint_step" else None)
        if type(value) is not kind:
            what = "missing" if key not in attrs else f"{type(value).__name__} {str(value)[:40]!r}"
            raise ResultsError(f"{path}: attribute {key} is {what}, not a {kind.__name__}: the file is damaged or "
                               "not a krum-mpi results file; rerun with --force instead of --resume")
        attrs[key] = value
    if attrs["status"] not in STATUSES:
        raise ResultsError(f"{path}: status {attrs['status'][:40]!r} is not one of {', '.join(STATUSES)}: the file "
                           "is damaged; rerun with --force instead of --resume")
    resumed = np.atleast_1d(attrs.get("resumed_at_steps", np.zeros(0, np.int64)))
    if resumed.dtype.kind not in "iu" or resumed.ndim != 1:
        raise ResultsError(f"{path}: attribute resumed_at_steps is not a list of step counts: the file is damaged")
    attrs["resumed_at_steps"] = resumed
    return attrs


def _rows_mismatch(path, old: dict, done: int, names=None) -> str | None:
    """The first recorded dataset whose rows do not match the file's own checksums, else None
    (digests.ATTR when the checksums are missing, or do not cover ``names``, every per-step dataset)."""
    parsed = digests.parse_attr(old["attrs"].get(digests.ATTR))
    if parsed is None or parsed[0] != done or (names is not None and set(parsed[1]) != set(names)):
        return digests.ATTR
    arrays = {f"{g}/{n}": a for g in ("metrics", "timing", "selection") for n, a in old.get(g, {}).items()
              if f"{g}/{n}" in parsed[1]}
    if any(a.shape[:1] != (done,) for a in arrays.values()):
        return digests.ATTR
    return digests.first_mismatch(arrays, done, parsed[1])


def reopen(path, cfg: dict, run_id: str, provenance: dict, byzantine, max_selected: int,
           record_weights: bool, record_absent: bool = False):
    """A writer holding the checked rows of the results file ``path``: (writer, attrs, final params)."""
    old = read_run(path)
    attrs = _checked_attrs(path, old["attrs"], cfg)
    if attrs["run_id"] != run_id:
        raise ResultsError(f"{path} holds another run (run_id {attrs['run_id']}, this config is {run_id}): "
                           "resume with the same config and overrides, or choose another --out")
    w = ResultsWriter(path, cfg, run_id, provenance, byzantine, max_selected, record_weights, record_absent,
                      later_timings=[k for k in LATER_TIMINGS if k in old.get("timing", {})])
    done = attrs.get("steps_done")
    if type(done) is not int or not 0 <= done <= cfg["run"]["steps"]:
        raise ResultsError(f"{path}: steps_done = {done!r} is not a step count of this run "
                           f"(0..{cfg['run']['steps']})")
    arrays = {}
    for s in w.specs:
        group, name = s.name.split("/")
        a = old.get(group, {}).get(name)
        if a is None:
            raise ResultsError(f"{path}: dataset {s.name} is missing: the file cannot be resumed")
        if a.shape != (done, *w.tails[s.name]) or a.dtype != np.dtype(s.dtype):
            raise ResultsError(f"{path}: {s.name} is {a.dtype} {a.shape}, expected {np.dtype(s.dtype)} "
                               f"{(done, *w.tails[s.name])}")
        arrays[s.name] = a
    if not np.array_equal(arrays["metrics/step"], np.arange(done)):
        raise ResultsError(f"{path}: metrics/step is not 0, 1, ..., {done - 1}: the file is damaged")
    bad = _rows_mismatch(path, old, done, [s.name for s in w.specs])
    if bad == digests.ATTR:
        raise ResultsError(f"{path}: its row checksums ({digests.ATTR}) are missing or do not describe its {done} "
                           "rows: the file is damaged (or an older krum-mpi wrote it); rerun with --force")
    if bad is not None:
        raise ResultsError(f"{path}: the rows of {bad} do not match their checksum (the file is damaged): "
                           "restore it, or rerun with --force instead of --resume")
    if not np.array_equal(old["selection"].get("byzantine"), w.byzantine):
        raise ResultsError(f"{path}: selection/byzantine differs from this config's Byzantine workers")
    w.created = attrs["created"]
    w.done = w.rows.count = done
    for s in w.specs:
        w.rows.buf[s.name] = np.concatenate([arrays[s.name], np.full((64, *w.tails[s.name]), s.fill, s.dtype)])
    w.last_checkpoint_step = attrs["last_checkpoint_step"]
    w.extra_attrs["resumed_at_steps"] = [int(x) for x in attrs["resumed_at_steps"]]
    return w, attrs, old.get("checkpoint")


def load(path, cfg: dict, writer_args: tuple, d: int, expected: dict, state_keys, into: dict,
         final_in_checkpoint: bool = False, select=None):
    """(writer, first step to run, checkpoint arrays or None). ``writer_args``: what ResultsWriter
    takes after the path; ``expected``: name -> (shape, dtype) of the arrays the checkpoint must hold.
    ``final_in_checkpoint``: a complete run keeps its final parameters in the checkpoint file (the
    shards of a model-parallel run), not in the results. ``select``: as checkpoint.read (the arrays
    not selected are None)."""
    steps = cfg["run"]["steps"]
    writer, attrs, in_results = reopen(path, cfg, *writer_args)
    complete = attrs["status"] == "complete"
    if complete and not final_in_checkpoint:
        params = (in_results or {}).get("params")
        if writer.done != steps or params is None or params.shape != (d,) or params.dtype != np.float32:
            raise ResultsError(f"{path} says complete but lacks its {steps} steps or final float32 ({d},) "
                               "parameters: the file is damaged; rerun with --force instead of --resume")
        return writer, steps, {"params": params}
    ck = checkpoint.path_for(path)
    if not ck.exists():
        if writer.last_checkpoint_step >= 0 or complete:
            raise ResultsError(f"checkpoint {ck} is missing (the results record one after step "
                               f"{writer.last_checkpoint_step}): restore it, or start over with --force "
                               "instead of --resume")
        if in_results is not None:
            raise ResultsError(f"{path} keeps its checkpoint inside (an older krum-mpi wrote it): finish the "
                               "run with that version, or start over with --force instead of --resume")
        return ResultsWriter(path, cfg, *writer_args), 0, None   # stopped before its first checkpoint
    header = {}
    step, arrays = checkpoint.read(ck, writer.run_id, expected, STATE_PREFIX, into, select, header)
    if not -1 <= step < steps:   # -1: stopped before its first step
        raise ResultsError(f"checkpoint {ck}: step {step} is outside this run's steps 0..{steps - 1}")
    if step + 1 > writer.done:
        raise ResultsError(f"checkpoint {ck}: step {step} is beyond the {writer.done} steps recorded in {path}")
    rows = {s.name: writer.rows.buf[s.name] for s in writer.specs}
    if "rows" not in header or digests.first_mismatch(rows, step + 1, header["rows"]) is not None:
        raise ResultsError(f"checkpoint {ck}: its step {step} does not match the rows recorded in {path} up to that "
                           "step (a changed header, or files that do not belong together): rerun with --force")
    if step < writer.last_checkpoint_step:
        raise ResultsError(f"checkpoint {ck}: step {step} is older than the one {path} records "
                           f"({writer.last_checkpoint_step}): it is not this run's latest checkpoint")
    for name, a in arrays.items():
        if name.startswith(STATE_PREFIX) and (name[len(STATE_PREFIX):] not in state_keys
                                              or a.shape not in ((), (d,)) or a.dtype.kind not in "fiu"):
            raise ResultsError(f"checkpoint {ck}: {name} ({a.dtype} {a.shape}) is not state of this run's rule")
    if complete:
        if step != steps - 1 or writer.done != steps:
            raise ResultsError(f"checkpoint {ck}: step {step} is not the last step of the complete run in {path} "
                               "(the files do not belong together): rerun with --force instead of --resume")
        return writer, steps, arrays
    if step == -1:    # nothing done yet: start over from the seeded parameters, as a fresh run would
        return ResultsWriter(path, cfg, *writer_args), 0, None
    writer.done = writer.rows.count = step + 1
    writer.extra_attrs["resumed_at_steps"] = writer.extra_attrs["resumed_at_steps"] + [step + 1]
    writer.last_checkpoint_step = step
    return writer, step + 1, arrays
