"""What `--out` may name: a regular file or nothing. FIFOs, devices, sockets and folders are refused in
one line before anything is written (and nothing is opened that could block); `--force` replaces only a
results file krum-mpi wrote; a name too long for the file system is refused at the start; the disk
preflight counts what the first flush reserves. Real processes, real files, a real device node."""
import os
import socket
import stat
import subprocess

import h5py
import pytest

from conftest import one_line_error, run_cli, small_run_config
from krum_mpi.errors import ResultsError
from krum_mpi.run import outfiles

BASE = small_run_config()


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(BASE)
    return path


def _run(config, out, *flags, timeout=60):
    """One rank, so that a run that blocks in open() shows as a timeout, not as a hung mpiexec."""
    try:
        return run_cli(["run", config, "--out", out, "--quiet", *flags], timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"krum-mpi run blocked on {out}")


@pytest.mark.parametrize("flags", [[], ["--force"], ["--resume"]])
def test_a_fifo_is_refused_without_blocking(tmp_path, config, flags):
    fifo = tmp_path / "r.h5"
    os.mkfifo(fifo)
    one_line_error(_run(config, fifo, *flags), "FIFO", "regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5", "run.toml"]   # nothing written beside it


def test_a_fifo_as_the_checkpoint_is_refused_without_blocking(tmp_path, config):
    out = tmp_path / "r.h5"
    assert _run(config, out).returncode == 0
    out.with_name("r.h5.ckpt").unlink(missing_ok=True)
    os.mkfifo(out.with_name("r.h5.ckpt"))
    for flags in (["--resume"], ["--force"]):
        one_line_error(_run(config, out, *flags), "r.h5.ckpt", "FIFO")
    assert stat.S_ISFIFO(os.lstat(out.with_name("r.h5.ckpt")).st_mode)


def test_a_folder_and_a_socket_areone_line_error(tmp_path, config):
    folder = tmp_path / "r.h5"
    folder.mkdir()
    one_line_error(_run(config, folder, "--force"), "is a folder")
    path = tmp_path / "s.h5"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        one_line_error(_run(config, path, "--force"), "socket")
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_a_device_node_is_never_replaced(tmp_path, config):
    """A character device (the null device's numbers) made in a temporary folder: --force must not
    rename a results file over it (it did: /dev/null became a regular file)."""
    node = tmp_path / "null.h5"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs root")
    one_line_error(_run(config, node, "--force"), "character device")
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".null.h5")]


def test_dev_null_is_refused_before_anything_is_written():
    """The check itself, on the real /dev/null (checked with lstat: nothing is opened or written)."""
    with pytest.raises(ResultsError, match="character device"):
        outfiles.check_can_write("/dev/null", force=True)
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_force_replaces_only_a_krum_mpi_results_file(tmp_path, config):
    foreign = tmp_path / "notes.h5"
    foreign.write_bytes(b"my own notes, not a results file\n")
    one_line_error(_run(config, foreign, "--force"), "not a krum-mpi results file")
    assert foreign.read_bytes() == b"my own notes, not a results file\n"
    other_hdf5 = tmp_path / "other.h5"
    with h5py.File(other_hdf5, "w") as h5:
        h5["x"] = [1, 2, 3]
    one_line_error(_run(config, other_hdf5, "--force"), "not a krum-mpi results file")
    ours = tmp_path / "ours.h5"
    assert _run(config, ours).returncode == 0
    done = _run(config, ours, "--force", "--set", "run.seed=3")
    assert done.returncode == 0, done.stderr
    with h5py.File(ours, "r") as h5:
        assert h5.attrs["seed"] == 3 and h5.attrs["status"] == "complete"


def test_a_foreign_checkpoint_beside_out_is_not_replaced(tmp_path, config):
    out = tmp_path / "r.h5"
    out.with_name("r.h5.ckpt").write_bytes(b"someone else's file")
    one_line_error(_run(config, out, "--force"), "not a krum-mpi checkpoint")
    assert out.with_name("r.h5.ckpt").read_bytes() == b"someone else's file"


def test_a_name_too_long_is_refused_at_the_start(tmp_path, config):
    """229 bytes fit the file system alone, but not with '.ckpt' and a temporary suffix: refused at
    the start with the limit, not at the first checkpoint with advice about free space."""
    out = tmp_path / ("r" * 226 + ".h5")
    done = _run(config, out)
    one_line_error(done, "over this file system's limit of 255", "choose a name of at most")
    assert "space" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.toml"]


@pytest.mark.mpi
def test_the_disk_preflight_counts_the_first_flush(mount_tmpfs, config):
    """A folder with 300 kB free: enough for this run's rows and checkpoint (all the old estimate
    counted, a few kB), not for what the first flush reserves before HDF5 writes. Refused before
    setup, naming it."""
    folder = mount_tmpfs("300k")
    done = run_cli(["run", config, "--out", folder / "r.h5", "--quiet"], ranks=2, timeout=120)
    one_line_error(done, "on disk", "a flush's reserve")
    assert not (folder / "r.h5").exists()


def test_the_lock_file_is_gone_after_a_run(tmp_path, config):
    out = tmp_path / "r.h5"
    assert _run(config, out).returncode == 0
    assert not out.with_name("r.h5.lock").exists()
