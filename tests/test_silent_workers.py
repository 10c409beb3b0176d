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

CONFIG = REPO / "configs" / "paper-fig4-krum-f6.toml"
COMMON = ["--set", "run.steps=30", "--set", "run.eval_every=10", "--set", "workers.byzantine=3",
          "--set", "aggregator.f=3"]


def test_silent_rank_misses_deadline_and_run_completes(tmp_path, spambase_file):
    out = tmp_path / "slow.h5"
    t0 = time.monotonic()
    done = run_cli(["run", CONFIG, "--out", out, *COMMON, "--set", "run.gather_deadline_s=0.25",
                    "--set", "faults.slow_rank=2", "--set", "faults.slow_from=10", "--set", "faults.slow_until=14",
                    "--set", "faults.slow_delay_s=1.5", "--set", "run.watchdog_s=60"], ranks=3, timeout=120)
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    with h5py.File(out, "r") as h5:
        assert h5.attrs["status"] == "complete" and h5.attrs["steps_done"] == 30
        absent = h5["selection/absent"][()]
        worker_rank = h5["selection/worker_rank"][()]
        selected = h5["selection/selected"][()]
        gather_s = h5["timing/gather_s"][()]
    late_workers = worker_rank == 2
    for step in range(30):
        expected = late_workers if 10 <= step < 14 else np.zeros_like(late_workers)
        np.testing.assert_array_equal(absent[step], expected, err_msg=f"step {step}")
        # the rule ran on the vectors received: it never picks an absent worker
        assert not absent[step][selected[step][selected[step] >= 0]].any()
    assert (selected[10:14, 0] >= 0).all(), "14 of 20 workers arrived; Krum with f = 3 still runs"
    # rank 0 waited about the deadline, not the 1.5 s the slow rank slept
    assert (gather_s[10:14] < 1.0).all(), gather_s[10:14]
    assert elapsed < 100


def test_too_few_arrivals_skip_the_update(tmp_path, spambase_file):
    out = tmp_path / "skip.h5"
    done = run_cli(["run", CONFIG, "--out", out, "--set", "run.steps=12", "--set", "run.eval_every=6",
                    "--set", "run.gather_deadline_s=0.2", "--set", "faults.slow_rank=1", "--set", "faults.slow_from=3",
                    "--set", "faults.slow_until=5", "--set", "faults.slow_delay_s=1.0"], ranks=2, timeout=120)
    assert done.returncode == 0, done.stderr
    with h5py.File(out, "r") as h5:
        absent = h5["selection/absent"][()]
        selected = h5["selection/selected"][()]
    assert absent[3:5].sum(axis=1).tolist() == [10, 10]
    assert (selected[3:5] == -1).all()        # 10 < 2f + 3 = 15: no update, recorded as no selection
    assert (selected[5:] >= 0).all()


def test_watchdog_ends_a_hung_run_with_a_message(tmp_path, spambase_file):
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
