"""Silent and slow workers: the gather deadline, absent workers recorded, the watchdog."""
import json
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import REPO, mpiexec_path, run_cli

pytestmark = pytest.mark.mpi

CONFIG = REPO / "configs" / "synthetic-krum-f6.toml"   # no dataset needed
COMMON = ["--set", "run.steps=30", "--set", "run.eval_every=10", "--set", "workers.byzantine=3",
          "--set", "aggregator.f=3"]


@pytest.mark.slow
def test_deadline_bounds_the_step_and_the_late_rank_catches_up(tmp_path):
    """Rank 2 sleeps 0.5 s at step 10. With a 0.25 s deadline rank 0 neither waits for it nor for
    its late reply: its workers are absent from step 10 on, the other ranks go on stepping, and
    once its (dropped) reply arrives it is given the current step and is present again. (1000
    steps: the run must outlast the sleep even where a step takes 1 ms.)"""
    out = tmp_path / "slow.h5"
    steps = 1000
    done = run_cli(["run", CONFIG, "--out", out, *COMMON, "--set", f"run.steps={steps}", "--set", "run.gather_deadline_s=0.25",
                    "--set", "faults.slow_rank=2", "--set", "faults.slow_from=10", "--set", "faults.slow_until=11",
                    "--set", "faults.slow_delay_s=0.5"], ranks=3, timeout=300)
    assert done.returncode == 0, done.stderr
    with h5py.File(out, "r") as h5:
        assert h5.attrs["status"] == "complete" and h5.attrs["steps_done"] == steps
        absent = h5["selection/absent"][()]
        worker_rank = h5["selection/worker_rank"][()]
        selected = h5["selection/selected"][()]
        step_s = h5["timing/step_s"][()]
    late = worker_rank == 2
    np.testing.assert_array_equal(absent[:, ~late], False)          # nobody else ever missed it
    missed = np.flatnonzero(absent[:, late].all(axis=1))
    assert missed[0] == 10 and (absent[:, late].any(axis=1) == absent[:, late].all(axis=1)).all()
    np.testing.assert_array_equal(missed, np.arange(10, 10 + missed.size))   # one stretch, from step 10
    assert missed.size > 4, "the other ranks waited for the late one (absent only where it slept)"
    assert missed[-1] < steps - 1 and not absent[missed[-1] + 1:].any(), "the late rank never caught up"
    for step in range(steps):   # the rule ran on the vectors received: it never picks an absent worker
        assert not absent[step][selected[step][selected[step] >= 0]].any()
    assert (selected[10:10 + missed.size, 0] >= 0).all(), "14 of 20 workers arrived; Krum with f = 3 still runs"
    # rank 0 stepped on while rank 2 slept 0.5 s: those steps together took about the sleep (not a
    # deadline each: 0.25 s x the steps missed)
    assert step_s[10] >= 0.25 and step_s[missed].sum() < 0.5 + 0.25, step_s[missed]


@pytest.mark.slow
def test_too_few_arrivals_skip_the_update(tmp_path):
    out = tmp_path / "skip.h5"
    done = run_cli(["run", CONFIG, "--out", out, "--set", "run.steps=300", "--set", "run.eval_every=50",
                    "--set", "run.gather_deadline_s=0.2", "--set", "faults.slow_rank=1", "--set", "faults.slow_from=3",
                    "--set", "faults.slow_until=5", "--set", "faults.slow_delay_s=1.0"], ranks=2, timeout=300)
    assert done.returncode == 0, done.stderr
    with h5py.File(out, "r") as h5:
        absent = h5["selection/absent"][()]
        selected = h5["selection/selected"][()]
    missed = np.flatnonzero(absent.any(axis=1))
    np.testing.assert_array_equal(missed, np.arange(3, 3 + missed.size))
    assert absent[missed].sum(axis=1).tolist() == [10] * missed.size
    assert (selected[missed] == -1).all()       # 10 < 2f + 3 = 15: no update, recorded as no selection
    assert (selected[:3] >= 0).all() and (selected[missed[-1] + 1:] >= 0).all()


def test_watchdog_ends_a_hung_run_with_a_message(tmp_path):
    out = tmp_path / "hung.h5"
    cmd = [mpiexec_path(), "-n", "2", sys.executable, "-m", "krum_mpi", "run", str(CONFIG), "--out", str(out),
           "--set", "run.steps=50", "--set", "run.checkpoint_every=5", "--set", "run.watchdog_s=3",
           "--set", "faults.slow_rank=1", "--set", "faults.slow_from=12", "--set", "faults.slow_until=13",
           "--set", "faults.slow_delay_s=600"]
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert time.monotonic() - t0 < 90
    assert done.returncode != 0
    assert "no step finished for 3 s after step 11" in done.stderr and "--resume" in done.stderr
    with h5py.File(out, "r") as h5:
        assert h5.attrs["status"] == "failed"
    raw = out.with_name(out.name + ".ckpt").read_bytes()   # the last checkpoint before the hang: step 9
    assert json.loads(raw[20:20 + int.from_bytes(raw[12:20], "little")])["step"] == 9
