"""The study folder: where a study's plan, run configs, results and logs live. Its layout is
defined here once; the job scripts (``templates``) get the names from here, and ``krum-mpi report``
reads the results files anywhere below the folder.

    studies/<name>/
        study.json            the expanded plan: every run's id, launch settings and overrides
        base-<hash>.toml      the base run config; run = base + that run's --set overrides
        runs/<id>.h5          results of run <id> (krum_mpi.run.results schema; status "complete" when done)
        runs/<id>.log         its output (every attempt appended, with a header line)
        runs/<id>.exit        its exit status, written when it ends (absent while it runs)
        slurm/NNN/            the scripts of submission NNN (array-*.sbatch, report.sbatch, submit.sh)
        slurm/logs/           SLURM's own output of each array task and report job
        slurm/submissions.json  job ids of every submission (read by `krum-mpi study status`)

``python -m krum_mpi.study.folder --complete FILE.h5`` exits 0 when FILE holds a finished run (the
job scripts use it to skip runs already done).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import KrumMPIError

PLAN_FILE = "study.json"
RUNS_DIR = "runs"                  # runs/<id>.h5, runs/<id>.log, runs/<id>.exit
RESULT, LOG, EXIT = ".h5", ".log", ".exit"
STARTED = ".started"               # runs/<id>.started while a job's run is up (krum_mpi.launch.mark_started)
SLURM_DIR = "slurm"                # slurm/NNN/ scripts of submission NNN, slurm/logs/, submissions.json
LOGS_DIR = f"{SLURM_DIR}/logs"
SUBMISSIONS_FILE = "submissions.json"


def is_complete(path) -> bool:
    """A results file that exists, opens, and says status == "complete"."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        import h5py

        with h5py.File(path, "r") as f:
            status = f.attrs.get("status")
    except (OSError, KeyError):
        return False
    if isinstance(status, bytes):
        status = status.decode()
    return status == "complete"


class StudyFolder:
    def __init__(self, path):
        self.path = Path(path).resolve()
        self.runs = self.path / RUNS_DIR
        self.slurm = self.path / SLURM_DIR

    def result(self, run_id: str) -> Path:
        return self.runs / f"{run_id}{RESULT}"

    def log(self, run_id: str) -> Path:
        return self.runs / f"{run_id}{LOG}"

    def exit_file(self, run_id: str) -> Path:
        return self.runs / f"{run_id}{EXIT}"

    def exit_status(self, run_id: str):
        """The run's exit status (int) if it ended, else None."""
        try:
            return int(self.exit_file(run_id).read_text().strip())
        except (OSError, ValueError):
            return None

    def log_tail(self, run_id: str, lines: int = 8) -> list[str]:
        try:
            with open(self.log(run_id), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]

    # -- the plan --------------------------------------------------------------------------
    def write_plan(self, plan_dict: dict, base_name: str, base_text: str) -> None:
        self.runs.mkdir(parents=True, exist_ok=True)
        base = self.path / base_name
        if not base.is_file() or base.read_text() != base_text:
            _write_atomic(base, base_text)
        _write_atomic(self.path / PLAN_FILE, json.dumps(plan_dict, indent=1) + "\n")

    def read_plan(self) -> dict:
        path = self.path / PLAN_FILE
        try:
            return json.loads(path.read_text())
        except OSError:
            raise KrumMPIError(f"{path} not found: give a study folder made by 'krum-mpi study plan|run|submit', "
                               "or the study's spec file")
        except json.JSONDecodeError as exc:
            raise KrumMPIError(f"{path}: not valid JSON ({exc}): plan the study again")

    # -- SLURM submissions -----------------------------------------------------------------
    def submissions(self) -> list[dict]:
        path = self.slurm / SUBMISSIONS_FILE
        if not path.is_file():
            return []
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise KrumMPIError(f"{path}: not valid JSON ({exc}): move it away to forget old submissions")

    def add_submission(self, record: dict) -> None:
        records = self.submissions() + [record]
        self.slurm.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.slurm / SUBMISSIONS_FILE, json.dumps(records, indent=1) + "\n")

    def next_submission_dir(self) -> Path:
        number = len(self.submissions()) + 1
        while (self.slurm / f"{number:03d}").exists():
            number += 1
        return self.slurm / f"{number:03d}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--complete":
        print("usage: python -m krum_mpi.study.folder --complete FILE.h5", file=sys.stderr)
        sys.exit(2)
    sys.exit(0 if is_complete(sys.argv[2]) else 1)
