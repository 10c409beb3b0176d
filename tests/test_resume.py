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

from conftest import REPO, mpiexec_path, run_cli, steps_done

pytestmark = pytest.mark.mpi

CONFIG = REPO / "configs" / "synthetic-krum-f6.toml"   # no dataset needed
# Worker momentum makes the checkpoint carry per-worker state that must be scattered back. Long
# enough (1200 steps) that a kill after at most 150 steps always lands mid-run.
SETTINGS = ["--set", "run.steps=1200", "--set", "run.checkpoint_every=7", "--set", "run.eval_every=50",
            "--set", "optimizer.momentum=0.9", "--set", "optimizer.momentum_at=worker"]


def _start(out, extra=()):
    cmd = [mpiexec_path(), "-n", "2", sys.executable, "-m", "krum_mpi", "run", str(CONFIG),
           "--out", str(out), *SETTINGS, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)


def _wait_for_steps(proc, path, at_least, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if steps_done(path) >= at_least:
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
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    done = run_cli(["run", CONFIG, "--out", out, *SETTINGS], ranks=2)
    assert done.returncode == 0, done.stderr
    return _final_params(out)


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["TERM", "USR1"])
def test_stop_signal_checkpoints_and_resumes(tmp_path, uninterrupted, signum):
    out = tmp_path / "term.h5"
    proc = _start(out)
    _wait_for_steps(proc, out, at_least=40)
    proc.send_signal(signum)                   # mpiexec forwards it to every rank
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "BAD TERMINATION" not in err
    assert "interrupted by a signal" in err and "--resume" in err
    with h5py.File(out, "r") as h5:
        assert h5.attrs["status"] == "interrupted"
        assert _checkpoint_step(out) == h5.attrs["steps_done"] - 1
    resumed = run_cli(["run", CONFIG, "--out", out, "--resume", *SETTINGS], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert _final_params(out)[0].tobytes() == uninterrupted[0].tobytes()


def _catches_sigterm(pid) -> bool:
    """Whether the process has a handler for SIGTERM (bit 15 of SigCgt in /proc/PID/status)."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return False
    caught = int(status.split("SigCgt:")[1].split()[0], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def _cmdline(pid) -> str:
    try:
        return open(f"/proc/{pid}/cmdline").read()
    except OSError:           # gone already
        return "mpiexec"


def _mpi_loaded(pid) -> bool:
    try:
        return "libmpi" in open(f"/proc/{pid}/maps").read()
    except OSError:
        return True


@pytest.mark.slow
def test_stop_signal_before_the_first_step_exits_3(tmp_path, uninterrupted):
    """The handlers come before the heavy imports: a rank that got the signal while importing
    NumPy or MPI used to die of it, and mpiexec then ended with 15 or 9 instead of 3."""
    out = tmp_path / "early.h5"
    proc = _start(out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = [p for p in _rank_pids(out) if p != proc.pid and "mpiexec" not in _cmdline(p)]
        if len(pids) == 2 and all(_catches_sigterm(p) for p in pids):
            break
        time.sleep(0.001)
    else:
        proc.kill()
        pytest.fail("the ranks never installed a SIGTERM handler")
    early = [not _mpi_loaded(p) for p in pids]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "BAD TERMINATION" not in err
    assert all(early), "the SIGTERM handler was installed only after MPI was loaded"
    resumed = run_cli(["run", CONFIG, "--out", out, "--resume", *SETTINGS], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert _final_params(out)[0].tobytes() == uninterrupted[0].tobytes()


def test_stop_signal_is_honoured_while_a_rank_is_silent(tmp_path):
    """Rank 1 stops answering (a 600 s sleep) with no deadline: rank 0 is blocked in the gather,
    where Python cannot run its handler. The watchdog (on by default) sees the signal and ends
    the run with status 3, the last checkpoint kept."""
    out = tmp_path / "silent.h5"
    proc = _start(out, ["--set", "faults.slow_rank=1", "--set", "faults.slow_from=60", "--set", "faults.slow_until=61",
                        "--set", "faults.slow_delay_s=600"])
    _wait_for_steps(proc, out, at_least=56)
    time.sleep(1.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("SIGTERM was not honoured while a rank was silent")
    assert proc.returncode == 3, err
    assert time.monotonic() - t0 < 60
    assert "interrupted by a signal" in err and "--resume" in err
    with h5py.File(out, "r") as h5:
        assert h5.attrs["status"] == "interrupted"
    assert _checkpoint_step(out) == 55          # the last checkpoint before the silence


@pytest.mark.slow
def test_resume_refuses_another_config(tmp_path, uninterrupted):
    out = tmp_path / "x.h5"
    done = run_cli(["run", CONFIG, "--out", out, "--set", "run.steps=10"], ranks=1)
    assert done.returncode == 0, done.stderr
    again = run_cli(["run", CONFIG, "--out", out, "--resume", "--set", "run.steps=20"], ranks=2)
    assert again.returncode == 2
    assert "holds another run" in again.stderr and "Traceback" not in again.stderr


def test_resume_without_a_file_starts_fresh(tmp_path):
    out = tmp_path / "new.h5"
    done = run_cli(["run", CONFIG, "--out", out, "--resume", "--set", "run.steps=10"], ranks=2)
    assert done.returncode == 0, done.stderr
    with h5py.File(out, "r") as h5:
        assert h5.attrs["status"] == "complete" and h5.attrs["steps_done"] == 10


@pytest.mark.slow
def test_stateful_rule_resumes_bitwise(tmp_path):
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


@pytest.mark.slow
def test_stop_with_a_gather_deadline_resumes_bitwise(tmp_path):
    """Steps that move point-to-point (a deadline nobody misses) stop and resume like collective ones,
    worker momentum included (its checkpoints wait for every rank)."""
    deadline = ["--set", "run.gather_deadline_s=30", "--set", "run.steps=600"]
    ref = tmp_path / "ref.h5"
    done = run_cli(["run", CONFIG, "--out", ref, *SETTINGS, *deadline], ranks=2)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "deadline.h5"
    proc = _start(out, deadline)
    _wait_for_steps(proc, out, at_least=40)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    resumed = run_cli(["run", CONFIG, "--out", out, "--resume", *SETTINGS, *deadline], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert _final_params(out)[0].tobytes() == _final_params(ref)[0].tobytes()
    with h5py.File(out, "r") as h5:
        assert not h5["selection/absent"][()].any()
