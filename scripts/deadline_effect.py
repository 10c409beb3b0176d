"""What a gather deadline does to the step time with one slow rank.

    python scripts/deadline_effect.py [--ranks 4] [--steps 100] [--delay 0.5] [--deadlines 0,0.1]

Runs configs/synthetic-krum-f6.toml (20 workers, f = 6; no dataset needed) under
``mpiexec -n RANKS`` with the last rank sleeping ``--delay`` seconds before sending its gradients at
every step (faults.slow_rank), once per deadline (0: wait for every rank), and prints one row per
run: the wall time of the whole command, the sum and median of the recorded step_s, and the share
of steps the slow rank's workers missed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--delay", type=float, default=0.5)
    p.add_argument("--deadlines", default="0,0.1")
    args = p.parse_args()
    beside = Path(sys.executable).parent / "mpiexec"
    mpiexec = os.environ.get("MPIEXEC") or (str(beside) if beside.exists() else shutil.which("mpiexec"))
    folder = Path(tempfile.mkdtemp(prefix="krum-deadline-"))
    print(f"mpiexec -n {args.ranks}, {args.steps} steps, rank {args.ranks - 1} sleeps {args.delay} s every step")
    print(f"{'deadline_s':>10} {'wall_s':>8} {'sum step_s':>10} {'median step_s':>13} {'slow rank absent':>16}")
    for deadline in (float(x) for x in args.deadlines.split(",")):
        out = folder / f"d{deadline}.h5"
        cmd = [mpiexec, "-n", str(args.ranks), sys.executable, "-m", "krum_mpi", "run",
               str(REPO / "configs" / "synthetic-krum-f6.toml"), "--out", str(out), "--quiet",
               "--set", f"run.steps={args.steps}", "--set", f"run.gather_deadline_s={deadline}",
               "--set", f"faults.slow_rank={args.ranks - 1}", "--set", "faults.slow_from=0",
               "--set", f"faults.slow_until={args.steps}", "--set", f"faults.slow_delay_s={args.delay}"]
        t0 = time.monotonic()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if done.returncode != 0:
            print(f"deadline {deadline}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
            return 1
        with h5py.File(out, "r") as h5:
            step_s = h5["timing/step_s"][()]
            absent = h5["selection/absent"][()].any(axis=1).mean() if "absent" in h5["selection"] else 0.0
        print(f"{deadline:10g} {wall:8.1f} {step_s.sum():10.2f} {np.median(step_s):13.4f} {absent:16.0%}")
    shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
