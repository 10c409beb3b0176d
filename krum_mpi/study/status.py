"""Where each run of a study stands: done, running, failed or pending.

The results file is the truth for "done" (it exists, opens, and says status == "complete"). A run's
exit file says it ended; SLURM (squeue, then sacct) says whether its array task is queued, running,
or ended without a word (time limit, cancelled, node failure).
"""
from __future__ import annotations

from dataclasses import dataclass

from .folder import StudyFolder, is_complete

DONE, RUNNING, FAILED, PENDING = "done", "running", "failed", "pending"
QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED"}
ACTIVE = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"}


@dataclass
class RunState:
    id: str
    state: str        # done | running | failed | pending
    detail: str       # why, in a few words
    job: str = ""     # "JOB_TASK" while the run is queued or running in SLURM


def latest_tasks(submissions: list[dict]) -> dict:
    """{run id: (array job id, task index, submission time)} from the newest submission of each run."""
    where = {}
    for record in submissions:
        for script, job in record["arrays"].items():
            for index, ids in enumerate(record["tasks"][script]):
                for run_id in ids:
                    where[run_id] = (job, index, record["time"])
    return where


def run_states(plan: dict, folder: StudyFolder, slurm_states: dict | None) -> list[RunState]:
    """The state of every run of ``plan``; ``slurm_states`` maps "JOB_TASK" to a SLURM job state
    (None: SLURM could not be asked)."""
    where = latest_tasks(folder.submissions())
    return [_state(r["id"], folder, where.get(r["id"]), slurm_states) for r in plan["runs"]]


def _state(run_id: str, folder: StudyFolder, task, slurm_states: dict | None) -> RunState:
    if is_complete(folder.result(run_id)):
        return RunState(run_id, DONE, "results complete")
    rc = folder.exit_status(run_id)
    ended_at = _mtime(folder.exit_file(run_id))
    if task is None:   # never submitted to SLURM: a local run, or none yet
        if rc is not None:
            return RunState(run_id, FAILED, _exit_detail(rc))
        if folder.log(run_id).exists():
            return RunState(run_id, RUNNING, "started locally, no exit status yet")
        return RunState(run_id, PENDING, "not started")
    job, index, submitted = task
    name = f"{job}_{index}"
    if rc is not None and ended_at >= submitted:
        return RunState(run_id, FAILED, f"{_exit_detail(rc)} in SLURM job {name}")
    if slurm_states is None:
        return RunState(run_id, PENDING, f"submitted as SLURM job {name}; SLURM not reachable to say more", name)
    slurm = slurm_states.get(name)
    if slurm in QUEUED:
        return RunState(run_id, PENDING, f"SLURM job {name} {slurm.lower()}", name)
    if slurm in ACTIVE:
        if _mtime(folder.log(run_id)) >= submitted:
            return RunState(run_id, RUNNING, f"SLURM job {name}", name)
        return RunState(run_id, PENDING, f"SLURM job {name} running, this run not started yet", name)
    if slurm is None:
        return RunState(run_id, FAILED, f"SLURM job {name} unknown to squeue and sacct, and no exit status")
    return RunState(run_id, FAILED, f"SLURM job {name} ended {slurm} without an exit status "
                                    "(time limit, cancelled or node failure?)")


def _exit_detail(rc: int) -> str:
    if rc == 0:
        return "exit 0 but results not complete"
    if rc == 124:
        return "time limit (launch.time) reached"
    return f"exit status {rc}"


def _mtime(path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


def format_status(plan: dict, folder: StudyFolder, states: list[RunState], tail: int = 8,
                  report: str | None = None) -> str:
    """A table of runs, counts, and the log tail of each failed run."""
    by_id = {r["id"]: r for r in plan["runs"]}
    rows = [(s.id, s.state, s.detail, " ".join(f"{k}={v}" for k, v in by_id[s.id]["labels"].items()))
            for s in states]
    widths = [max([len(r[j]) for r in rows] + [5]) for j in range(3)]
    lines = [f"study {plan['name']}: {folder.path}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    counts = {k: sum(s.state == k for s in states) for k in (DONE, RUNNING, FAILED, PENDING)}
    lines.append(", ".join(f"{v} {k}" for k, v in counts.items()) + f" (of {len(states)} runs)"
                 + (f"; analysis job {report}" if report else ""))
    return "\n".join(lines + format_failures(folder, states, tail))


def format_failures(folder: StudyFolder, states: list[RunState], tail: int = 8) -> list[str]:
    """For each failed run: what failed, and the last lines of its log."""
    lines = []
    for s in states:
        if s.state == FAILED:
            lines.append(f"--- failed run {s.id} ({s.detail}): last lines of {folder.log(s.id)}")
            lines += ["    " + line for line in folder.log_tail(s.id, tail)] or ["    (no log)"]
    return lines
