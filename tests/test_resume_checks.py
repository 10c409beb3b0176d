"""--resume refuses what it cannot trust, under real mpiexec, without ever hanging: forged and damaged
checkpoints (a step of -5, a step past the recorded rows, NaN or flipped parameters, wrong shapes, a
missing array), damaged results files, a missing checkpoint; and a hypothesis search over random
damage that must end in a one-line refusal or in a resume bitwise equal to an uninterrupted run.
Synthetic data: no dataset files needed."""
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
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import REPO, checkpoint_header, mpiexec_path, steps_done

pytestmark = pytest.mark.mpi

CONFIG = """
[run]
steps = 240
checkpoint_every = 5
eval_every = 50
seed = 3
[workers]
n = 6
batch_size = 8
[data]
name = "synthetic"
n_train = 3000
n_test = 300
n_features = 12
[model]
hidden = [16]
[optimizer]
momentum = 0.9
momentum_at = "worker"
[faults]   # rank 1 sleeps 40 ms at steps 30..99: a window where a kill lands mid-run
slow_rank = 1
slow_from = 30
slow_until = 100
slow_delay_s = 0.04
"""
TIMEOUT = 180


def _cmd(config, out, *extra):
    return [mpiexec_path(), "-n", "2", sys.executable, "-m", "krum_mpi", "run", str(config), "--out", str(out),
            *extra]


def _run(config, out, *extra, timeout=TIMEOUT):
    proc = subprocess.Popen(_cmd(config, out, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, start_new_session=True)
    try:
        out_text, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"krum-mpi run {' '.join(extra)} hung for {timeout} s")
    return proc.returncode, err


def _final_params(path):
    with h5py.File(path, "r") as h5:
        assert h5.attrs["status"] == "complete"
        return h5["checkpoint/params"][()].tobytes()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A config, its uninterrupted final parameters, and a killed run's results and checkpoint files."""
    folder = tmp_path_factory.mktemp("resume-checks")
    config = folder / "run.toml"
    config.write_text(CONFIG)
    rc, err = _run(config, folder / "ref.h5")
    assert rc == 0, err
    killed = folder / "killed.h5"
    proc = subprocess.Popen(_cmd(config, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    while not (killed.with_name("killed.h5.ckpt").exists() and steps_done(killed) >= 45):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    time.sleep(0.5)
    pristine = folder / "pristine"
    pristine.mkdir()
    shutil.copyfile(killed, pristine / "run.h5")
    shutil.copyfile(killed.with_name("killed.h5.ckpt"), pristine / "run.h5.ckpt")
    return {"config": config, "reference": _final_params(folder / "ref.h5"), "pristine": pristine}


def _fresh(setup, tmp_path):
    out = tmp_path / "run.h5"
    shutil.copyfile(setup["pristine"] / "run.h5", out)
    shutil.copyfile(setup["pristine"] / "run.h5.ckpt", tmp_path / "run.h5.ckpt")
    return out, tmp_path / "run.h5.ckpt"


def _forge(ckpt, edit):
    """Change header fields and make the header checksum match again (a forged file, not a torn one)."""
    raw, length, meta = checkpoint_header(ckpt)
    edit(meta)
    text = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()[:length].ljust(length)
    ckpt.write_bytes(raw[:20] + text + struct.pack("<I", zlib.crc32(text)) + raw[24 + length:])


def _entry(meta, name):
    return next(e for e in meta["arrays"] if e["name"] == name)


def _assert_refused(setup, out, message):
    before = out.read_bytes()
    rc, err = _run(setup["config"], out, "--resume")
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("krum-mpi: error:") and message in lines[0], err
    assert out.read_bytes() == before, "a refused resume changed the results file"


def test_the_pristine_state_resumes_bitwise(setup, tmp_path):
    out, _ = _fresh(setup, tmp_path)
    rc, err = _run(setup["config"], out, "--resume")
    assert rc == 0, err
    assert _final_params(out) == setup["reference"]


def _nan_params(ckpt):
    raw, length, meta = checkpoint_header(ckpt)
    e = _entry(meta, "params")
    params = np.frombuffer(raw, np.float32, e["shape"][0], e["offset"]).copy()
    params[0] = np.nan
    ckpt.write_bytes(raw[:e["offset"]] + params.tobytes() + raw[e["offset"] + params.nbytes:])
    _forge(ckpt, lambda m: _entry(m, "params").update(crc32=zlib.crc32(params.tobytes())))


def _flip_bit(ckpt):
    raw, _, meta = checkpoint_header(ckpt)
    at = _entry(meta, "params")["offset"] + 17
    ckpt.write_bytes(raw[:at] + bytes([raw[at] ^ 0x04]) + raw[at + 1:])


@pytest.mark.parametrize("damage, message", [
    (lambda c: _forge(c, lambda m: m.update(step=-5)), "step -5 is outside"),
    (lambda c: _forge(c, lambda m: m.update(step=m["step"] + 40)), "is beyond the"),
    (lambda c: _forge(c, lambda m: m.update(step=10**6)), "is outside this run's steps"),
    (_nan_params, "NaN or Inf, but was finite"),
    (_flip_bit, "checksum mismatch in params"),
    (lambda c: _forge(c, lambda m: _entry(m, "params").update(shape=[5])), "this run needs float32"),
    (lambda c: _forge(c, lambda m: _entry(m, "worker_momentum").update(shape=[5, 50])), "worker_momentum is"),
    (lambda c: _forge(c, lambda m: m.update(arrays=[e for e in m["arrays"] if e["name"] != "params"])),
     "lacks params"),
    (lambda c: c.unlink(), "is missing"),
    (lambda c: c.write_bytes(b""), "not a krum-mpi checkpoint"),
])
def test_a_checkpoint_it_cannot_trust_is_refused(setup, tmp_path, damage, message):
    out, ckpt = _fresh(setup, tmp_path)
    damage(ckpt)
    _assert_refused(setup, out, message)


def _drop(name):
    def edit(out):
        with h5py.File(out, "r+") as h5:
            del h5[name]
    return edit


def _reshape_selected(out):
    with h5py.File(out, "r+") as h5:
        k = h5["selection/selected"].shape[0]
        del h5["selection/selected"]
        h5["selection/selected"] = np.zeros((k, 2), np.int32)


def _steps_done_attr(value):
    def edit(out):
        with h5py.File(out, "r+") as h5:
            h5.attrs["steps_done"] = value
    return edit


@pytest.mark.parametrize("damage, message", [
    (_drop("metrics/loss"), "metrics/loss is missing"),
    (_reshape_selected, "selection/selected is int32"),
    (_steps_done_attr(-5), "steps_done = -5"),
    (_steps_done_attr(10**6), "steps_done = 1000000"),
    (lambda out: out.write_bytes(b"junk"), "not a readable HDF5 file"),
])
def test_a_results_file_it_cannot_trust_is_refused(setup, tmp_path, damage, message):
    out, _ = _fresh(setup, tmp_path)
    damage(out)
    _assert_refused(setup, out, message)


def test_another_config_is_refused(setup, tmp_path):
    out, _ = _fresh(setup, tmp_path)
    before = out.read_bytes()
    rc, err = _run(setup["config"], out, "--resume", "--set", "run.seed=4")
    assert rc == 2 and "holds another run" in err and "Traceback" not in err
    assert out.read_bytes() == before


FIELDS = ["step", "run_id", "arrays.name", "arrays.dtype", "arrays.shape", "arrays.offset", "arrays.nbytes",
          "arrays.crc32", "arrays.finite"]
VALUES = st.one_of(st.integers(-2**40, 2**40), st.sampled_from([0, 1, -1, 239, 240, 10**6]), st.text(max_size=8),
                   st.booleans(), st.lists(st.integers(-3, 10**6), max_size=3), st.none(),
                   st.sampled_from(["float32", "float64", "int32", "params", "worker_momentum", "x"]))


def _apply(ckpt, damage):
    kind, where, value = damage
    if kind == "bytes":
        raw = bytearray(ckpt.read_bytes())
        for position, xor in where:
            raw[position % len(raw)] ^= xor
        ckpt.write_bytes(bytes(raw))
    elif kind == "truncate":
        raw = ckpt.read_bytes()
        ckpt.write_bytes(raw[:where % len(raw)])
    else:
        field, index = where

        def edit(meta):
            if field.startswith("arrays."):
                meta["arrays"][index % len(meta["arrays"])][field.split(".")[1]] = value
            else:
                meta[field] = value
        _forge(ckpt, edit)


DAMAGE = st.one_of(
    st.tuples(st.just("bytes"), st.lists(st.tuples(st.integers(0, 2**31), st.integers(1, 255)), min_size=1,
                                         max_size=4), st.none()),
    st.tuples(st.just("truncate"), st.integers(0, 2**31), st.none()),
    st.tuples(st.just("field"), st.tuples(st.sampled_from(FIELDS), st.integers(0, 5)), VALUES),
)


@pytest.mark.slow
@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(damage=DAMAGE)
def test_random_damage_is_refused_or_resumes_bitwise(setup, tmp_path, damage):
    folder = tmp_path / f"case-{time.monotonic_ns()}"
    folder.mkdir()
    out, ckpt = _fresh(setup, folder)
    _apply(ckpt, damage)
    before = out.read_bytes()
    rc, err = _run(setup["config"], out, "--resume")    # fails the test if it hangs
    event("resumed" if rc == 0 else "refused")
    if rc == 0:
        assert _final_params(out) == setup["reference"], f"{damage}: resumed to different parameters"
    else:
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("krum-mpi: error:"), (damage, rc, err)
        assert out.read_bytes() == before
    shutil.rmtree(folder)
