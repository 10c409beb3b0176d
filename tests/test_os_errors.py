"""What the OS and the machine refuse, said in one line before any setup where it can be: an undecodable
config, a results name that is a path, a read-only or full results folder, sizes that cannot fit in
memory or on disk. Real mpiexec, real tmpfs (skipped where it cannot be mounted). Synthetic data."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from conftest import REPO, mpiexec_path, one_line_error, run_cli, small_run_config

BASE = small_run_config(steps=60, n_train=1000)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(BASE)
    return path


def test_a_binary_config_isone_line_error(tmp_path):
    path = tmp_path / "run.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary")
    one_line_error(run_cli(["run", path, "--out", tmp_path / "r.h5"], timeout=60), "not UTF-8 text", "byte 0x89")


@pytest.mark.mpi
@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_run_name_cannot_leave_the_results_folder(tmp_path, config, where):
    token = os.urandom(4).hex()
    name = f"../../escaped-{token}" if where == "relative" else f"/tmp/krum-absolute-escape-{token}"
    done = run_cli(["run", config, "--set", f'run.name="{name}"'], ranks=2, cwd=tmp_path, timeout=120)
    one_line_error(done, "run.name", "--out")
    assert not list(tmp_path.parent.parent.glob(f"escaped-{token}*"))
    assert not list(Path("/tmp").glob(f"krum-absolute-escape-{token}*"))


@pytest.fixture
def tmpfs(mount_tmpfs):
    return mount_tmpfs("4m")


@pytest.mark.mpi
def test_a_read_only_folder_is_refused_before_setup(tmpfs, config):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    done = run_cli(["run", config, "--out", tmpfs / "r.h5", "--set", "data.n_train=100000000000"], ranks=2,
                   timeout=120)   # a data set that would take long to set up: refused before
    one_line_error(done, "Read-only file system")


@pytest.mark.mpi
def test_a_disk_that_fills_mid_run_ends_every_rank_inone_line_error(tmpfs, config):
    """The results folder fills while the run goes on: one line, exit 2, every rank ends, the results
    up to the last flush stay readable, and no temporary holds the space."""
    out = tmpfs / "r.h5"
    cmd = [mpiexec_path(), "-n", "2", sys.executable, "-m", "krum_mpi", "run", str(config), "--out", str(out),
           "--set", "run.steps=5000", "--set", "run.checkpoint_every=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not out.with_name("r.h5.ckpt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.02)
    with open(tmpfs / "filler", "wb", buffering=0) as fh:   # every byte left; unbuffered: close flushes nothing
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run did not end after the disk filled")
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2, err
    assert len(lines) == 1 and "No space left on device" in lines[0] and "--resume" in lines[0], err
    with h5py.File(out, "r") as h5:
        assert h5.attrs["steps_done"] > 0 and h5["metrics/step"].shape == (h5.attrs["steps_done"],)
    names = sorted(p.name for p in tmpfs.iterdir())
    assert not [n for n in names if n.endswith((".tmp", ".link"))], names


@pytest.mark.mpi
@pytest.mark.parametrize("override, key", [
    ("model.hidden=[1000000000]", "model.hidden"),
    ("workers.batch_size=100000000", "workers.batch_size"),
    ("run.steps=1000000000000", "run.steps"),
    ("run.checkpoint_every=100000000000", "run.checkpoint_every"),
])
def test_sizes_that_cannot_fit_are_refused_naming_the_key(tmp_path, config, override, key):
    done = run_cli(["run", config, "--out", tmp_path / "r.h5", "--set", override,
                    "--set", "run.steps=1000000000000" if "checkpoint_every" in override else "run.seed=0"],
                   ranks=2, timeout=120)
    line = one_line_error(done, f"lower {key}")
    assert "memory" in line or "on disk" in line
    assert not (tmp_path / "r.h5").exists()


def test_memory_estimate_counts_rank_zero_and_the_others():
    """d = 1.9e6, n = 16 with worker momentum on 4 ranks of 4 workers: rank 0 holds the gather buffer
    (16 x d floats, 119 MB) and its 4 workers' rows and momentum; each other rank 8 x d floats."""
    from krum_mpi import config as cfgmod
    from krum_mpi.run import preflight
    from krum_mpi.errors import ConfigError

    cfg = cfgmod.resolve({"workers": {"n": 16}, "optimizer": {"momentum": 0.9, "momentum_at": "worker"}})
    d = 1_863_690
    args = (cfg, d, 784, [784, 1024, 1024, 10], [4, 4, 4, 4])
    preflight.check_memory(*args, 4, 1, available=1 * 2**30)      # all 4 ranks on one node: 0.6 GiB
    preflight.check_memory(*args, 1, 1, available=512 * 2**20)    # one rank per node: rank 0 alone fits
    with pytest.raises(ConfigError, match=r"needs about 0.595 GiB of memory on a node with 4 rank.*lower model.hidden"):
        preflight.check_memory(*args, 4, 1, available=512 * 2**20)
