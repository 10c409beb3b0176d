"""$KRUM_MPI_STARTED_FILE (krum_mpi.launch.mark_started): rank 0 of a real `mpiexec -n 2` run creates
it once the world is up, holding the world's size; a file already there is left as it was. The SLURM
job scripts wait for it to tell a run whose ranks are stuck in MPI_Init (tests/test_slurm.py)."""
import h5py
import pytest

from conftest import run_cli, small_run_config

pytestmark = pytest.mark.mpi


def _run(tmp_path, env, ranks=2):
    config = tmp_path / "run.toml"
    config.write_text(small_run_config(steps=5))
    out = tmp_path / "run.h5"
    done = run_cli(["run", config, "--out", out, "--quiet"], ranks=ranks, env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "complete"
    return done


def test_rank_0_creates_the_started_file_with_the_world_size(tmp_path):
    started = tmp_path / "run.started"
    _run(tmp_path, {"KRUM_MPI_STARTED_FILE": str(started)})
    assert started.read_text() == "2\n"


def test_a_started_file_already_there_is_not_replaced(tmp_path):
    started = tmp_path / "run.started"
    started.write_text("someone else's\n")
    _run(tmp_path, {"KRUM_MPI_STARTED_FILE": str(started)})
    assert started.read_text() == "someone else's\n"


def test_a_started_file_that_cannot_be_created_is_a_warning_not_a_failure(tmp_path):
    started = tmp_path / "no-such-folder" / "run.started"
    done = _run(tmp_path, {"KRUM_MPI_STARTED_FILE": str(started)})
    assert not started.exists()
    assert "krum-mpi: warning: cannot create" in done.stderr and "KRUM_MPI_STARTED_FILE" in done.stderr
