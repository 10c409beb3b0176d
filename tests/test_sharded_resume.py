"""Centered clipping under the sharded placements resumes bitwise: its centre, held block by block,
is gathered into the checkpoint and handed back block by block (3 ranks, uneven blocks)."""
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import REPO, mpiexec_path, run_cli, steps_done

pytestmark = pytest.mark.mpi

CONFIG = REPO / "configs" / "synthetic-krum-f6.toml"   # 1,622 parameters: blocks of 541, 541, 540
SETTINGS = ["--set", "run.steps=600", "--set", "run.checkpoint_every=7", "--set", "run.eval_every=50",
            "--set", "aggregator.name=centered-clipping", "--set", "attack.adversary=colluding"]
# per run, not per step: wall times, and the byte counts of the steps each process ran
PER_PROCESS = ("timing/", "comm/")


def _datasets(path):
    out = {}
    with h5py.File(path, "r") as h5:
        assert h5.attrs["status"] == "complete"
        h5.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.mark.parametrize("placement", ["sharded", "per-shard"])
def test_centered_clipping_resumes_bitwise(tmp_path, placement):
    if mpiexec_path() is None:
        pytest.skip("no mpiexec found: pip install mpich")
    settings = [*SETTINGS, "--set", f"aggregator.placement={placement}"]
    ref = tmp_path / "ref.h5"
    done = run_cli(["run", CONFIG, "--out", ref, *settings], ranks=3)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "stopped.h5"
    cmd = [mpiexec_path(), "-n", "3", sys.executable, "-m", "krum_mpi", "run", str(CONFIG), "--out", str(out),
           *settings]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 120
    while steps_done(out) < 30 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    stopped_at = steps_done(out)
    assert 30 <= stopped_at < 600
    assert b'"name": "aggregator_state.center"' in out.with_name(out.name + ".ckpt").read_bytes()[:4096]
    resumed = run_cli(["run", CONFIG, "--out", out, "--resume", *settings], ranks=3)
    assert resumed.returncode == 0, resumed.stderr
    want, got = _datasets(ref), _datasets(out)
    assert sorted(want) == sorted(got)
    compared = [name for name in want if not name.startswith(PER_PROCESS)]
    assert {"checkpoint/params", "metrics/loss", "metrics/test_accuracy"} <= set(compared)
    for name in compared:
        assert want[name].tobytes() == got[name].tobytes(), f"{name} differs after the resume at step {stopped_at}"
    # the steps after the resume moved the same bytes as the uninterrupted run's (the first one also
    # receives the one broadcast of the parameters, as step 0 does)
    sent = got["comm/bytes_sent"]
    assert (sent[:stopped_at - 1] == -1).all() or (sent[:stopped_at] >= 0).all()
    assert np.array_equal(got["comm/bytes_received"][-100:], want["comm/bytes_received"][-100:])
