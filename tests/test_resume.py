"""Runs that survive: kill -9 and resume (bitwise), SIGTERM checkpoints, readable files after a kill."""
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import REPO, mpiexec_path, run_cli

pytestmark = pytest.mark.mpi

CONFIG = REPO / "configs" / "paper-fig4-krum-f6.toml"
# Worker momentum makes the checkpoint carry per-worker state that must be scattered back. Long
# enough (1200 steps) that a kill after at most 150 steps always lands mid-run.
SETTINGS = ["--set", "run.steps=1200", "--set", "run.checkpoint_every=7", "--set", "run.eval_every=50",
            "--set", "optimizer.momentum=0.9", "--set", "optimizer.momentum_at=worker"]


def _start(out, extra=()):
    cmd = [mpiexec_path(), "-n", "2", sys.executable, "-m", "krum_mpi", "run", str(CONFIG),
           "--out", str(out), *SETTINGS, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)


def _steps_done(path):
    try:
        with h5py.File(path, "r") as h5:
            return int(h5.attrs["steps_done"])
    except (OSError, KeyError):
        return -1


def _wait_for_steps(proc, path, at_least, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _steps_done(path) >= at_least:
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before step {at_least}: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no step {at_least} within {timeout} s")


def _rank_pids(out):
    """PIDs of the rank processes of the run writing ``out`` (their command line names it)."""
    found = subprocess.run(["pgrep", "-f", f"krum_mpi run .* --out {out}"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def _checkpoint_step(out):
    """The step of the checkpoint file beside ``out`` (its header is JSON after 20 bytes)."""
    raw = out.with_name(out.name + ".ckpt").read_bytes()
    length = int.from_bytes(raw[12:20], "little")
    return json.loads(raw[20:20 + length])["step"]


def h5_last_checkpoint(out):
    with h5py.File(out, "r") as h5:
        return int(h5.attrs["last_checkpoint_step"])


def _final_params(path):
    with h5py.File(path, "r") as h5:
        assert h5.attrs["status"] == "complete"
        return h5["checkpoint/params"][()], h5["selection/selected"][()], h5["metrics/loss"][()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, spambase_file):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    done = run_cli(["run", CONFIG, "--out", out, *SETTINGS], ranks=2)
    assert done.returncode == 0, done.stderr
    return _final_params(out)


def test_kill9_then_resume_is_bitwise_identical(tmp_path, uninterrupted):
    out = tmp_path / "killed.h5"
    proc = _start(out)
    _wait_for_steps(proc, out, at_least=int(np.random.default_rng().integers(30, 150)))
    pids = [p for p in _rank_pids(out) if p != proc.pid]
    assert pids, "no rank process found"
    os.kill(pids[-1], signal.SIGKILL)          # one rank dies hard
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The file survives the kill: it opens and holds every step up to its last flush.
    with h5py.File(out, "r") as h5:
        done = int(h5.attrs["steps_done"])
        assert h5.attrs["status"] in ("running", "failed")
        assert 0 < done < 1200
        assert h5["metrics/step"].shape == (done,)
        np.testing.assert_array_equal(h5["metrics/step"][()], np.arange(done))
        assert -1 <= h5.attrs["last_checkpoint_step"] <= done - 1
    ckpt_step = _checkpoint_step(out)    # the results may be one flush ahead of the checkpoint
    assert h5_last_checkpoint(out) <= ckpt_step <= done - 1
    resumed = run_cli(["run", CONFIG, "--out", out, "--resume", *SETTINGS], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    params, selected, loss = _final_params(out)
    ref_params, ref_selected, ref_loss = uninterrupted
    assert params.tobytes() == ref_params.tobytes(), "resumed parameters differ from the uninterrupted run"
    np.testing.assert_array_equal(selected, ref_selected)
    np.testing.assert_array_equal(loss, ref_loss)
    with h5py.File(out, "r") as h5:
        assert list(h5.attrs["resumed_at_steps"]) == [ckpt_step + 1]


def test_sigterm_checkpoints_and_resumes(tmp_path, uninterrupted):
    out = tmp_path / "term.h5"
    proc = _start(out)
    _wait_for_steps(proc, out, at_least=40)
    proc.send_signal(signal.SIGTERM)           # mpiexec forwards it to every rank
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "interrupted by a signal" in err and "--resume" in err
    with h5py.File(out, "r") as h5:
        assert h5.attrs["status"] == "interrupted"
        assert _checkpoint_step(out) == h5.attrs["steps_done"] - 1
    resumed = run_cli(["run", CONFIG, "--out", out, "--resume", *SETTINGS], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert _final_params(out)[0].tobytes() == uninterrupted[0].tobytes()


def test_resume_refuses_another_config(tmp_path, uninterrupted, spambase_file):
    out = tmp_path / "x.h5"
    done = run_cli(["run", CONFIG, "--out", out, "--set", "run.steps=10"], ranks=1)
    assert done.returncode == 0, done.stderr
    again = run_cli(["run", CONFIG, "--out", out, "--resume", "--set", "run.steps=20"], ranks=2)
    assert again.returncode == 2
    assert "holds another run" in again.stderr and "Traceback" not in again.stderr


def test_resume_without_a_file_starts_fresh(tmp_path, spambase_file):
    out = tmp_path / "new.h5"
    done = run_cli(["run", CONFIG, "--out", out, "--resume", "--set", "run.steps=10"], ranks=2)
    assert done.returncode == 0, done.stderr
    with h5py.File(out, "r") as h5:
        assert h5.attrs["status"] == "complete" and h5.attrs["steps_done"] == 10


def test_stateful_rule_resumes_bitwise(tmp_path, spambase_file):
    """Centered clipping carries its centre between steps: the checkpoint must hold it."""
    rule = ["--set", "aggregator.name=centered-clipping"]
    ref = tmp_path / "ref.h5"
    done = run_cli(["run", CONFIG, "--out", ref, *SETTINGS, *rule], ranks=2)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "cc.h5"
    proc = _start(out, rule)
    _wait_for_steps(proc, out, at_least=40)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert b'"name": "aggregator_state.center"' in out.with_name(out.name + ".ckpt").read_bytes()[:4096]
    resumed = run_cli(["run", CONFIG, "--out", out, "--resume", *SETTINGS, *rule], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert _final_params(out)[0].tobytes() == _final_params(ref)[0].tobytes()
