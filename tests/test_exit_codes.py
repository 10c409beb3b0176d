"""Exit statuses that mean one thing, and resumes that check every recorded row. Real mpiexec, real
signals, real HDF5 and checkpoint files:

- 0: complete, also when SIGTERM or SIGUSR1 comes after the file is complete (no BAD TERMINATION);
- 3: stopped with a checkpoint, for SIGINT as for SIGTERM (no traceback, no MPI_Abort);
- SIGQUIT: not 3 (its signal number, which mpiexec used to report as the status);
- a read-only remount mid-run: one line, the last flush kept, not 3;
- --resume refuses in one line: a flipped bit in any recorded row, a checkpoint whose header step was
  changed (with its CRC recomputed), missing or non-numeric attributes, a 300k-deep JSON header, a
  shape of 2^64 elements; and says "no checkpoint: starting fresh" or "already complete".
"""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, checkpoint_header, mpiexec_path, run_cli, sigterm_after_steps, steps_done
from krum_mpi.errors import ResultsError
from krum_mpi.run import checkpoint

BASE = """
[run]
steps = {steps}
checkpoint_every = 5
eval_every = 3
[workers]
n = 6
batch_size = 4
[data]
name = "synthetic"
n_train = 400
n_test = 100
n_features = 8
[model]
hidden = [8]
[aggregator]
name = "krum"
f = 1
"""


def _config(folder, steps):
    path = folder / f"run-{steps}.toml"
    path.write_text(BASE.format(steps=steps))
    return path


def _one_line(done, rc, *needles):
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == rc, done.stderr
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _launch(config, out, ranks=2, extra=()):
    cmd = [mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "krum_mpi", "run", str(config), "--out", str(out),
           *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)


def _finish(proc, timeout=120):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run did not end")
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A run of 4000 steps stopped by SIGTERM after some 40 steps: its results and checkpoint files."""
    folder = tmp_path_factory.mktemp("interrupted")
    config, out = _config(folder, 4000), folder / "r.h5"
    rc, err = sigterm_after_steps([config, "--out", out, "--quiet"], out, 40, ranks=2)
    assert rc == 3, err
    return config, out


def _copy(interrupted, folder):
    config, out = interrupted
    for name in (out.name, out.name + ".ckpt"):
        shutil.copyfile(out.with_name(name), folder / name)
    return config, folder / out.name


def _resume(config, out):
    return run_cli(["run", config, "--out", out, "--resume", "--quiet"], timeout=300)


# -- signals ----------------------------------------------------------------------------------------

@pytest.mark.mpi
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_after_the_file_is_complete_exits_0(tmp_path, signum):
    out = tmp_path / "r.h5"
    proc = _launch(_config(tmp_path, 30), out)
    for line in proc.stdout:                      # the summary table, then "results: <file>"
        if line.startswith("results:"):
            proc.send_signal(signum)
            break
    rc, _, err = _finish(proc)
    assert rc == 0 and "BAD TERMINATION" not in err, err
    with h5py.File(out, "r") as h5:
        assert h5.attrs["status"] == "complete" and h5.attrs["steps_done"] == 30


def _launched_past(config, out, steps):
    """A quiet run launched and past ``steps`` recorded steps (it is still running)."""
    proc = _launch(config, out, extra=["--quiet"])
    deadline = time.monotonic() + 120
    while steps_done(out) < steps:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    return proc


@pytest.mark.mpi
def test_sigint_stops_like_sigterm(tmp_path):
    """Ctrl-C (SIGINT, which mpiexec passes to every rank): checkpoint, exit 3, no traceback."""
    config, out = _config(tmp_path, 4000), tmp_path / "r.h5"
    proc = _launched_past(config, out, 10)
    proc.send_signal(signal.SIGINT)
    rc, _, err = _finish(proc)
    assert rc == 3 and "Traceback" not in err and "BAD TERMINATION" not in err, err
    assert "checkpoint saved" in err
    with h5py.File(out, "r") as h5:
        assert h5.attrs["status"] == "interrupted"
    assert out.with_name("r.h5.ckpt").is_file()


@pytest.mark.mpi
def test_sigquit_is_not_the_status_of_a_checkpointed_stop(tmp_path):
    config, out = _config(tmp_path, 4000), tmp_path / "r.h5"
    proc = _launched_past(config, out, 10)
    proc.send_signal(signal.SIGQUIT)
    rc, _, err = _finish(proc)
    assert rc not in (0, 3), err
    assert steps_done(out) >= 10     # the last flush is whole and readable


@pytest.mark.mpi
def test_a_read_only_remount_mid_run_is_one_line_and_keeps_the_last_flush(mount_tmpfs, tmp_path):
    folder = mount_tmpfs("32m")
    config, out = _config(tmp_path, 20000), folder / "r.h5"
    proc = _launch(config, out, extra=["--quiet", "--set", "run.checkpoint_every=1"])
    deadline = time.monotonic() + 120
    while steps_done(out) < 20:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    for _ in range(200):     # "busy" while a flush has a file open for writing: as an admin would, retry
        if subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True).returncode == 0:
            break
        time.sleep(0.01)
    else:
        pytest.fail("could not remount the folder read-only")
    rc, _, err = _finish(proc)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc not in (0, 3) and len(lines) == 1, err
    assert "Read-only file system" in lines[0] and "Traceback" not in err, err
    with h5py.File(out, "r") as h5:
        k = int(h5.attrs["steps_done"])
        assert k >= 20 and h5["metrics/loss"].shape == (k,)


# -- resume: every recorded row checked -------------------------------------------------------------

ROW_DATASETS = ["metrics/loss", "metrics/test_accuracy", "selection/selected", "metrics/step", "timing/step_s",
                "timing/worker_compute_s", "selection/recomputed"]


@pytest.mark.mpi
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(ROW_DATASETS), where=st.floats(0, 1), bit=st.integers(0, 31))
def test_a_flipped_bit_in_any_recorded_row_is_refused(interrupted, tmp_path_factory, name, where, bit):
    config, out = _copy(interrupted, tmp_path_factory.mktemp("flip"))
    with h5py.File(out, "r+") as h5:
        ds = h5[name]
        rows = ds[()]
        flat = rows.reshape(-1).view(np.uint8)
        i = min(int(where * flat.size), flat.size - 1)
        flat[i] ^= np.uint8(1 << (bit % 8))
        ds[...] = rows
    before = out.read_bytes()
    done = _resume(config, out)
    assert done.returncode == 2, done.stderr
    _one_line(done, 2, "damaged")
    assert out.read_bytes() == before


@pytest.mark.mpi
def test_a_forged_checkpoint_step_with_a_valid_crc_is_refused(interrupted, tmp_path):
    config, out = _copy(interrupted, tmp_path)
    ck = out.with_name(out.name + ".ckpt")
    raw, length, header = checkpoint_header(ck)
    forged = header["step"] - 2   # a step whose rows exist: only the digests tell it from the real one
    assert forged >= 0
    header["step"] = forged
    text = json.dumps(header, sort_keys=True).encode().ljust(length)
    ck.write_bytes(raw[:20] + text + struct.pack("<I", zlib.crc32(text)) + raw[24 + length:])
    _one_line(_resume(config, out), 2, "does not match the rows")


def _forge_checkpoint(path, header: bytes, tail: bytes = b""):
    path.write_bytes(checkpoint.MAGIC + struct.pack("<IQ", checkpoint.FORMAT, len(header)) + header
                     + struct.pack("<I", zlib.crc32(header)) + tail)


@pytest.mark.mpi
def test_a_deep_json_header_is_one_line(interrupted, tmp_path):
    config, out = _copy(interrupted, tmp_path)
    _forge_checkpoint(out.with_name(out.name + ".ckpt"), b"[" * 300000 + b"]" * 300000)
    _one_line(_resume(config, out), 2, "header is not a valid checkpoint description")


@pytest.mark.parametrize("shape", [[2 ** 64], [2 ** 32, 2 ** 32], [2 ** 62, 4]])
def test_a_shape_of_2_64_elements_is_refused(tmp_path, shape):
    entry = {"name": "aggregator_state.center", "dtype": "float32", "shape": shape, "offset": 64, "nbytes": 4,
             "crc32": 0, "finite": False}
    header = json.dumps({"run_id": "r", "step": 0, "arrays": [entry]}).encode()
    path = tmp_path / "r.h5.ckpt"
    _forge_checkpoint(path, header, b"\0" * 128)
    with pytest.raises(ResultsError, match="inconsistent with its shape"):
        checkpoint.read(path, "r", {})


@pytest.mark.mpi
@pytest.mark.parametrize("attr, value", [("run_id", None), ("status", None), ("created", None),
                                         ("steps_done", "forty"), ("last_checkpoint_step", "x"),
                                         ("steps_done", 1.5)])
def test_results_attributes_it_cannot_trust_are_one_line(interrupted, tmp_path, attr, value):
    config, out = _copy(interrupted, tmp_path)
    with h5py.File(out, "r+") as h5:
        if value is None:
            del h5.attrs[attr]
        else:
            h5.attrs[attr] = value
    _one_line(_resume(config, out), 2, attr)


# -- resume: what it says ---------------------------------------------------------------------------

def test_resume_without_a_file_says_it_starts_fresh(tmp_path):
    config, out = _config(tmp_path, 20), tmp_path / "r.h5"
    done = run_cli(["run", config, "--out", out, "--resume"], timeout=120)
    assert done.returncode == 0 and "no checkpoint: starting fresh" in done.stderr, done.stderr


def test_resume_of_a_complete_run_says_so_and_changes_nothing(tmp_path):
    config, out = _config(tmp_path, 20), tmp_path / "r.h5"
    assert run_cli(["run", config, "--out", out, "--quiet"], timeout=120).returncode == 0
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    done = run_cli(["run", config, "--out", out, "--resume"], timeout=120)
    assert done.returncode == 0 and "already complete" in done.stderr and "step/s" not in done.stderr, done.stderr
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
