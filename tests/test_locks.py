"""One writer per results file: the flock on `<out>.lock` taken before setup (two runs started 0.05 s
apart: the second refused, the first's file intact), stale locks of dead processes recognised, and the
same for `study run` cells; `study run` stops its runs on SIGTERM (exit 3) and when it is killed; a
study name that is not a plain folder name is refused. Real processes, real files, real mpiexec."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import pytest

from conftest import REPO, run_cli, small_run_config
from krum_mpi.study import load_spec, make_plan


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"pid {os.getpid()} on host test since now".encode())
print("held", flush=True)
time.sleep(120)
"""


def _config(tmp_path, steps=20):
    path = tmp_path / "run.toml"
    path.write_text(small_run_config(steps=steps))
    return path


def _popen(args):
    return subprocess.Popen([sys.executable, "-m", "krum_mpi", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)


def _hold_lock(path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_two_runs_started_005_s_apart_one_is_refused(tmp_path):
    """Two configs (seeds 1 and 2), one --out, no --force: before the lock both exited 0 and the file
    held one of them. Now exactly one runs; the other is refused in one line; the file is the winner's."""
    config, out = _config(tmp_path, steps=300), tmp_path / "r.h5"
    first = _popen(["run", config, "--out", out, "--quiet", "--set", "run.seed=1"])
    time.sleep(0.05)
    second = _popen(["run", config, "--out", out, "--quiet", "--set", "run.seed=2"])
    outcomes = [(p.wait(timeout=300), p.stderr.read(), seed) for p, seed in ((first, 1), (second, 2))]
    assert sorted(rc for rc, _, _ in outcomes) == [0, 2], outcomes
    (_, _, winner), = [o for o in outcomes if o[0] == 0]
    (_, err, _), = [o for o in outcomes if o[0] == 2]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and ("in use by pid" in lines[0] or "already exists" in lines[0]), err
    with h5py.File(out, "r") as h5:
        assert h5.attrs["seed"] == winner and h5.attrs["status"] == "complete" and h5.attrs["steps_done"] == 300


def test_a_live_holder_is_named_and_a_dead_ones_lock_is_stale(tmp_path):
    config, out = _config(tmp_path), tmp_path / "r.h5"
    holder = _hold_lock(out.with_name("r.h5.lock"))
    try:
        done = run_cli(["run", config, "--out", out, "--quiet"], timeout=120)
        assert done.returncode == 2 and f"in use by pid {holder.pid}" in done.stderr, done.stderr
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead (killed, as by kill -9): its lock file is still there, its lock is not
    assert out.with_name("r.h5.lock").exists()
    done = run_cli(["run", config, "--out", out, "--quiet"], timeout=120)
    assert done.returncode == 0, done.stderr
    assert not out.with_name("r.h5.lock").exists()


SPEC = """
[study]
name = "locks"
[base.run]
steps = {steps}
checkpoint_every = 5
eval_every = 1000
[base.workers]
n = 4
batch_size = 4
[base.data]
name = "synthetic"
n_train = 400
n_test = 100
n_features = 8
[base.model]
hidden = [8]
[launch]
ranks = 2
time = "00:05:00"
[sweep]
"run.seed" = [1]
"""


def _spec(tmp_path, steps, name="locks"):
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(SPEC.format(steps=steps)).replace('name = "locks"', f'name = "{name}"'))
    return path


def _processes_naming(text: str) -> list:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def _steps_done(path) -> int:
    try:
        with h5py.File(path, "r") as h5:
            return int(h5.attrs["steps_done"])
    except (OSError, KeyError):
        return -1


@pytest.mark.mpi
def test_study_run_leaves_a_cell_another_process_writes(tmp_path, mpiexec):
    spec = _spec(tmp_path, steps=20)
    folder = tmp_path / "out"
    (run_id,) = [r.id for r in make_plan(load_spec(spec)).runs]
    (folder / "runs").mkdir(parents=True)
    holder = _hold_lock(folder / "runs" / f"{run_id}.h5.lock")
    try:
        done = run_cli(["study", "run", spec, "--dir", folder], timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 0, done.stderr
    assert "1 being written by another process" in done.stdout, done.stdout
    assert not (folder / "runs" / f"{run_id}.log").exists()     # never started here
    assert not (folder / "runs" / f"{run_id}.h5").exists()


def _study_running(spec, folder, result):
    """`study run` started, with its run past its first recorded step."""
    study = _popen(["study", "run", spec, "--dir", folder])
    deadline = time.monotonic() + 180
    while _steps_done(result) < 1:
        assert study.poll() is None and time.monotonic() < deadline, study.stderr.read()
        time.sleep(0.1)
    return study


@pytest.mark.mpi
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_study_run_stops_its_runs_on_a_signal_and_exits_3(tmp_path, mpiexec, signum):
    spec = _spec(tmp_path, steps=200000)
    folder = tmp_path / "out"
    (run_id,) = [r.id for r in make_plan(load_spec(spec)).runs]
    result = folder / "runs" / f"{run_id}.h5"
    study = _study_running(spec, folder, result)
    study.send_signal(signum)
    try:
        rc = study.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(study.pid, signal.SIGKILL)
        pytest.fail("study run did not end after the signal")
    err = study.stderr.read()
    assert rc == 3, err
    assert "stopped by signal" in err and run_id in err, err
    assert (folder / "runs" / f"{run_id}.exit").read_text().strip() == "3"
    with h5py.File(result, "r") as h5:
        assert h5.attrs["status"] == "interrupted"
    assert not _processes_naming(str(result))


@pytest.mark.mpi
def test_a_killed_study_run_leaves_no_run_writing(tmp_path, mpiexec):
    """SIGKILL to `study run` (no handler can run): its run's launcher gets SIGTERM from the kernel
    (PR_SET_PDEATHSIG), so the run checkpoints and ends instead of writing on as an orphan."""
    spec = _spec(tmp_path, steps=200000)
    folder = tmp_path / "out"
    (run_id,) = [r.id for r in make_plan(load_spec(spec)).runs]
    result = folder / "runs" / f"{run_id}.h5"
    study = _study_running(spec, folder, result)
    study.kill()
    study.wait()
    deadline = time.monotonic() + 60
    while _processes_naming(str(result)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_naming(str(result)), "the run went on after study run was killed"
    with h5py.File(result, "r") as h5:
        assert h5.attrs["status"] == "interrupted"


@pytest.mark.parametrize("name", ["..", ".", ".hidden"])
def test_a_study_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, name):
    spec = _spec(tmp_path, steps=20, name=name)
    done = run_cli(["study", "plan", spec], cwd=tmp_path, timeout=60)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "plain folder name" in lines[0], done.stderr
