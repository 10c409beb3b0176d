"""Run a study on this machine: each run under ``mpiexec -n RANKS``, a few runs at a time.

Each run writes ``runs/<id>.h5``, appends its output to ``runs/<id>.log`` and, when it ends, its exit
status to ``runs/<id>.exit`` (the same files a SLURM array task writes). Runs whose results are
already complete are skipped, so an interrupted study is resumed by running it again; a run whose
results file another process holds (its lock, krum_mpi.run.outfiles) is left to that process.

SIGTERM or SIGINT to ``study run`` stops every running run as a scheduler would (SIGTERM to its
process group: each checkpoints and exits 3), waits for them, and ends ``study run`` with status 3.
Each run's launcher also gets SIGTERM if ``study run`` itself dies (Linux: PR_SET_PDEATHSIG), so a
killed ``study run`` leaves no run writing on its own. Each rank starts with the stop signals blocked
until its handlers are installed (krum_mpi.launch.rank_command), so a run stopped while its ranks
start checkpoints and exits 3 too.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime

from ..launch import mpiexec_path, rank_command, stop_with_parent
from ..run.outfiles import lock_holder
from .folder import StudyFolder, is_complete

POLL_S = 0.1
EXIT_TIMEOUT = 124       # what timeout(1) returns; written when a run overruns launch.time
STOP_GRACE_S = 60        # a stopped run's time to checkpoint before it is killed
KILLED_BEFORE_START = (15, 143, 9, 137)   # SIGTERM / SIGKILL as mpiexec or a shell reports them


class StudyStopped(Exception):
    """``study run`` got SIGTERM or SIGINT; its running runs were stopped (``signum``, ``stopped``)."""

    def __init__(self, signum: int, stopped: list):
        super().__init__(signum, stopped)
        self.signum, self.stopped = signum, stopped


def run_command(folder: StudyFolder, base_name: str, run: dict, mpiexec: str) -> list[str]:
    """The command of one run: ``mpiexec -n R [env --block-signal=...] python -m krum_mpi run BASE
    --set ... --out runs/ID.h5 --resume`` (each rank starts with the stop signals blocked until its
    handlers are installed: krum_mpi.launch.rank_command)."""
    args = ["run", folder.path / base_name]
    for item in run["overrides"]:
        args += ["--set", item]
    return rank_command(mpiexec, int(run["ranks"]), args + ["--out", folder.result(run["id"]), "--resume"])


class Progress:
    """A plain-text progress bar over runs on stderr (redrawn in place on a terminal)."""

    def __init__(self, total: int, stream=None, width: int = 30):
        self.total, self.width = total, width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self.last = None

    def update(self, done: int, failed: int, running: int, final: bool = False) -> None:
        state = (done, failed, running)
        if state == self.last and not (final and self.tty):
            return
        self.last = state
        finished = done + failed
        filled = self.width * finished // max(self.total, 1)
        elapsed = int(time.monotonic() - self.start)
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {finished}/{self.total} runs: "
                f"{done} done, {failed} failed, {running} running ({elapsed // 60}:{elapsed % 60:02d})")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class _Running:
    def __init__(self, run: dict, cmd: list[str], folder: StudyFolder, env: dict, time_s: float):
        self.run, self.folder = run, folder
        folder.exit_file(run["id"]).unlink(missing_ok=True)
        self.log = open(folder.log(run["id"]), "a")
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        self.log.write(f"== run {run['id']}: local, {stamp}\n== {' '.join(cmd)}\n")
        self.log.flush()
        # a session of its own, so a timeout or Ctrl-C stops mpiexec and every rank together
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, preexec_fn=stop_with_parent)
        self.deadline = time.monotonic() + time_s

    def poll(self):
        """The exit status once the run has ended (killing it past its time limit), else None."""
        rc = self.proc.poll()
        if rc is None and time.monotonic() > self.deadline:
            self.stop("time limit (launch.time) reached")
            rc = EXIT_TIMEOUT
        elif rc is not None and rc < 0:
            rc = 128 - rc   # killed by signal -rc: report as a shell would
        if rc is not None:
            self.finish(rc)
        return rc

    def stop(self, why: str, grace_s: float = 5) -> None:
        self.log.write(f"== stopping: {why}\n")
        self.log.flush()
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def finish(self, rc: int) -> None:
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        self.log.write(f"== exit {rc}, {stamp}\n")
        self.log.close()
        self.folder.exit_file(self.run["id"]).write_text(f"{rc}\n")


BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def blas_threads_env(jobs: int, ranks: int) -> dict:
    """Each rank's BLAS threads when ``jobs`` runs of ``ranks`` ranks share this machine's cores."""
    threads = str(max(1, (os.cpu_count() or 1) // max(1, jobs * ranks)))
    return {name: threads for name in BLAS_THREAD_VARIABLES}


def run_local(plan: dict, folder: StudyFolder, jobs: int = 1, mpiexec: str | None = None,
              stream=None, extra_env: dict | None = None) -> dict:
    """Run every run of ``plan`` (a study.json dict) not yet complete, ``jobs`` at a time, each with
    ``extra_env`` added to its environment (the pinned BLAS kernel, ``study.kernel``).

    Returns {"done": [ids], "failed": [ids], "skipped": [ids], "busy": [ids]} (busy: written by
    another process now, left to it). Raises StudyStopped after SIGTERM or SIGINT.
    """
    from .spec import parse_time

    mpiexec = mpiexec or mpiexec_path()
    todo = [r for r in plan["runs"] if not is_complete(folder.result(r["id"]))]
    skipped = [r["id"] for r in plan["runs"] if r not in todo]
    busy = []
    progress = Progress(len(todo), stream)
    env = {**os.environ, **(extra_env or {})}
    running, done, failed = [], [], []
    # BLAS threads: the cores shared by the runs that run together, unless the user chose. Large
    # matrix products round differently with other thread counts, so this also makes a rerun with
    # the same jobs on the same machine give bitwise the same results (the count is in provenance).
    pinned = any(env.get(k) for k in BLAS_THREAD_VARIABLES)
    queue = list(todo)
    stop = _StopSignals()
    try:
        while (queue or running) and not stop.signum:
            while queue and len(running) < jobs:
                run = queue.pop(0)
                if lock_holder(folder.result(run["id"])) is not None:   # another study run has it
                    busy.append(run["id"])
                    continue
                cmd = run_command(folder, plan["base"], run, mpiexec)
                run_env = env if pinned else {**env, **blas_threads_env(jobs, int(run.get("ranks", 1)))}
                running.append(_Running(run, cmd, folder, run_env, parse_time(run["time"])))
            for r in list(running):
                rc = r.poll()
                if rc is None:
                    continue
                running.remove(r)
                ok = rc == 0 and is_complete(folder.result(r.run["id"]))
                (done if ok else failed).append(r.run["id"])
            progress.update(len(done), len(failed), len(running))
            time.sleep(POLL_S)
    finally:   # the handlers stay while the runs are stopped: a second signal must not kill us mid-way
        if stop.signum or running:    # a signal, or an error of our own: no run is left behind
            for r in running:
                r.stop(f"study run got signal {stop.signum}" if stop.signum else "study run failed", STOP_GRACE_S)
                rc = r.proc.wait()
                rc = rc if rc >= 0 else 128 - rc
                if stop.signum and rc in KILLED_BEFORE_START and not folder.result(r.run["id"]).exists():
                    # signalled before its handlers were installed (interpreter start-up, where env has
                    # no --block-signal to hold the signal until then): nothing was written, so it is
                    # what a stop with a checkpoint is, a run to start again
                    r.log.write("== stopped before start (the signal came before the run could checkpoint)\n")
                    rc = 3
                r.finish(rc)
        stop.restore()
    if stop.signum:
        raise StudyStopped(stop.signum, [r.run["id"] for r in running])
    progress.update(len(done), len(failed), 0, final=True)
    return {"done": done, "failed": failed, "skipped": skipped, "busy": busy}


class _StopSignals:
    """SIGTERM and SIGINT recorded (the loop then stops the runs), the previous handlers restored after."""

    def __init__(self):
        self.signum = 0
        self.previous = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[signum] = signal.signal(signum, self._record)
            except ValueError:        # not the main thread: the caller handles signals
                pass

    def _record(self, signum, frame=None) -> None:
        self.signum = signum

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
