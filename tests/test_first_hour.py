"""A new user's first hour: missing optional extras, offline presets, the stop-signal handlers."""
import subprocess
import sys

import pytest

from conftest import REPO, run_cli


def test_report_without_the_analysis_extra_names_the_pip_command(tmp_path):
    """pandas made unimportable the way a missing package is (ModuleNotFoundError with its name)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "pandas.py").write_text("raise ModuleNotFoundError(\"No module named 'pandas'\", name='pandas')\n")
    done = run_cli(["report", str(tmp_path)], env={"PYTHONPATH": str(hide)})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'krum-mpi[analysis]'" in lines[0], done.stderr


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "configs").glob("synthetic-*.toml")))
def test_synthetic_presets_need_no_dataset(tmp_path, preset):
    """The offline twins of the paper presets: no dataset, no network (KRUM_MPI_DATA points nowhere)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_cli(["run", REPO / "configs" / preset, "--out", tmp_path / "r.h5", "--set", "run.steps=3",
                    "--quiet"], env={"KRUM_MPI_DATA": str(empty)}, timeout=120)
    assert done.returncode == 0, done.stderr


def test_stop_handlers_come_before_heavy_imports():
    """Installing the handlers must not import NumPy, h5py or mpi4py (their import takes long
    enough for a signal to land before a handler that waits for them)."""
    code = ("import sys; from krum_mpi.run.stop import StopRequest; StopRequest().install(); "
            "print(sorted(m for m in ('numpy', 'h5py', 'mpi4py') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
