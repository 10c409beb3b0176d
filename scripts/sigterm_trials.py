"""SIGTERM (or SIGUSR1) to mpiexec at random moments of a run, N times: every run must exit with
status 3, and ``--resume`` must end bitwise equal to an uninterrupted run.

    python scripts/sigterm_trials.py --trials 20 --ranks 2 [--signal USR1] [--steps 1200]

Runs on seeded synthetic data (no dataset needed), with worker momentum (per-worker state in the
checkpoint). The moment of each signal is drawn from a recorded seed: one trial in five during
start-up (--earliest to 1 s after the launch: imports, MPI start, setup), the others once the
results file shows a step drawn uniformly below 80% of the run. Prints one line per trial and a
summary; exit status 0 only when every trial passed.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "synthetic-krum-f6.toml"


def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    return os.environ.get("MPIEXEC") or (str(beside) if beside.exists() else shutil.which("mpiexec"))


def command(ranks: int, out: Path, steps: int, resume: bool = False) -> list[str]:
    return [mpiexec(), "-n", str(ranks), sys.executable, "-m", "krum_mpi", "run", str(CONFIG), "--out", str(out),
            "--quiet", "--set", f"run.steps={steps}", "--set", "run.checkpoint_every=7",
            "--set", "run.eval_every=50", "--set", "optimizer.momentum=0.9",
            "--set", "optimizer.momentum_at=worker"] + (["--resume"] if resume else ["--force"])


def outcome(path: Path) -> dict:
    """What must be equal after a resume: every step's loss and accuracy (functions of the
    parameters of that step), every selection, and the final parameters where the file holds them."""
    with h5py.File(path, "r") as h5:
        found = {"status": str(h5.attrs["status"]), "loss": h5["metrics/loss"][()],
                 "acc": h5["metrics/test_accuracy"][()], "selected": h5["selection/selected"][()]}
        if "checkpoint/params" in h5:
            found["params"] = h5["checkpoint/params"][()]
    return found


def steps_done(path: Path) -> int:
    try:
        with h5py.File(path, "r") as h5:
            return int(h5.attrs["steps_done"])
    except (OSError, KeyError):    # not there yet, or being replaced
        return -1


def wait_for_step(proc, path: Path, step: int) -> None:
    while proc.poll() is None and steps_done(path) < step:
        time.sleep(0.02)


def same(a: dict, b: dict) -> bool:
    keys = ["loss", "acc", "selected"] + (["params"] if "params" in a and "params" in b else [])
    return a["status"] == b["status"] == "complete" and all(a[k].tobytes() == b[k].tobytes() for k in keys)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--signal", choices=("TERM", "USR1"), default="TERM")
    p.add_argument("--earliest", type=float, default=0.3, help="earliest signal, seconds after the launch")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    signum = getattr(signal, f"SIG{args.signal}")
    folder = Path(tempfile.mkdtemp(prefix="krum-sigterm-"))
    ref = folder / "ref.h5"
    t0 = time.monotonic()
    done = subprocess.run(command(args.ranks, ref, args.steps), cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        print(f"reference run failed ({done.returncode}): {done.stderr}", file=sys.stderr)
        return 1
    expected = outcome(ref)
    print(f"reference: {args.steps} steps on {args.ranks} ranks in {wall:.1f} s; signals during start-up or past a random step")
    passed = 0
    for trial in range(args.trials):
        out = folder / f"t{trial}.h5"
        early = rng.random() < 0.2
        delay, target = rng.uniform(args.earliest, 1.0), rng.randrange(1, int(0.8 * args.steps))
        t_launch = time.monotonic()
        proc = subprocess.Popen(command(args.ranks, out, args.steps), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        if early:
            time.sleep(delay)
        else:
            wait_for_step(proc, out, target)
        delay = time.monotonic() - t_launch
        proc.send_signal(signum)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
        rc = proc.returncode
        stopped = ""
        if rc == 3:
            with h5py.File(out, "r") as h5:
                stopped = f"stopped after step {int(h5.attrs['steps_done']) - 1}"
        resumed = subprocess.run(command(args.ranks, out, args.steps, resume=True), cwd=REPO,
                                 capture_output=True, text=True)
        equal = resumed.returncode == 0 and same(outcome(out), expected)
        ok = rc == 3 and equal
        passed += ok
        print(f"trial {trial + 1:2d}: signal at {delay:5.2f} s, exit {rc} {stopped:24s} resume exit "
              f"{resumed.returncode}, bitwise equal: {equal}  {'ok' if ok else 'FAILED'}", flush=True)
        if not ok:
            print(f"  stderr: {err.strip()[-600:]}\n  resume stderr: {resumed.stderr.strip()[-600:]}", flush=True)
    print(f"{passed} of {args.trials} trials passed (SIG{args.signal}, mpiexec -n {args.ranks}); files in {folder}")
    if passed == args.trials:
        shutil.rmtree(folder)
    return 0 if passed == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
