"""`krum-mpi study run --local`: real mpiexec runs, a failing run, resuming, time limits."""
import json
import os
import textwrap

import h5py
import numpy as np
import pytest

from conftest import run_cli
from krum_mpi.study import make_plan, load_spec

pytestmark = pytest.mark.mpi

# Three runs on 2 ranks: two train on synthetic data, one points spambase at a file that does not
# exist, so it passes every config check and fails when it starts (a DataError on every rank).
SPEC = """
[study]
name = "local"

[base.run]
steps = 20
eval_every = 10
[base.workers]
n = 8
[base.data]
name = "synthetic"
n_train = 1000
n_test = 100
n_features = 8
[base.model]
name = "logistic"

[launch]
ranks = 2
time = "00:02:00"

[sweep]
"aggregator.name" = ["average", "krum"]
data = [{ "data.name" = "synthetic" }, { "data.name" = "spambase", "data.path" = "/nonexistent/spambase.data" }]

[[exclude]]
"data.name" = "spambase"
"aggregator.name" = "krum"
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(SPEC))
    return path


def test_local_study_runs_fails_one_and_resumes(spec, tmp_path, mpiexec):
    folder = tmp_path / "out"
    plan = make_plan(load_spec(spec))
    good = [r.id for r in plan.runs if r.config["data"]["name"] == "synthetic"]
    bad = [r.id for r in plan.runs if r.config["data"]["name"] == "spambase"]
    assert len(good) == 2 and len(bad) == 1

    first = run_cli(["study", "run", spec, "--local", "--jobs", "2", "--dir", folder], timeout=120)
    assert first.returncode == 1, first.stderr
    for run_id in good:
        with h5py.File(folder / "runs" / f"{run_id}.h5", "r") as f:
            assert f.attrs["status"] == "complete"
            assert f["selection/selected"].shape[0] == 20
            # two runs at a time share the cores: each rank's BLAS threads are set, and recorded
            # (large products round differently with other counts)
            threads = json.loads(f.attrs["provenance"])["blas_threads_per_rank"]
            if not any(os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")):
                assert threads == max(1, (os.cpu_count() or 1) // (2 * f["comm/bytes_sent"].shape[1]))
    assert "2 runs done, 1 failed" in first.stdout
    # the failed run is named, with the tail of its log (the run's own error message)
    assert f"--- failed run {bad[0]} (exit status 2)" in first.stdout
    assert "spambase not found at /nonexistent/spambase.data" in first.stdout
    assert "runs: 2 done, 1 failed, 0 running" in first.stderr   # the progress bar

    status = run_cli(["study", "status", folder], timeout=60)
    assert status.returncode == 0
    assert "2 done, 0 running, 1 failed, 0 pending" in status.stdout
    assert f"--- failed run {bad[0]}" in status.stdout

    # again: the complete runs are skipped (files untouched), the failed one runs again
    stamps = {i: os.stat(folder / "runs" / f"{i}.h5").st_mtime_ns for i in good}
    second = run_cli(["study", "run", spec, "--local", "--dir", folder], timeout=120)
    assert second.returncode == 1
    assert "0 runs done, 1 failed, 2 already complete" in second.stdout
    assert stamps == {i: os.stat(folder / "runs" / f"{i}.h5").st_mtime_ns for i in good}
    assert (folder / "runs" / f"{bad[0]}.log").read_text().count("== run ") == 2


def test_same_seed_same_selections(tmp_path, mpiexec):
    """Two local runs of the same study give the same per-step selections (the runs are seeded)."""
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(SPEC).split("[sweep]")[0] + '[sweep]\n"aggregator.name" = ["krum"]\n')
    selections = []
    for out in ("a", "b"):
        result = run_cli(["study", "run", path, "--local", "--dir", tmp_path / out], timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        (h5,) = (tmp_path / out / "runs").glob("*.h5")
        with h5py.File(h5, "r") as f:
            selections.append(f["selection/selected"][()])
    assert selections[0].shape == (20, 1)
    np.testing.assert_array_equal(selections[0], selections[1])


def test_a_run_past_its_time_limit_is_stopped(tmp_path):
    """launch.time bounds a local run: a launcher that hangs is killed and the run reported failed."""
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nsleep 60\n")
    hang.chmod(0o755)
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(SPEC).split("[sweep]")[0].replace('"00:02:00"', '"0:01"'))
    result = run_cli(["study", "run", path, "--local", "--mpiexec", hang, "--dir", tmp_path / "o"], timeout=60)
    assert result.returncode == 1
    assert "time limit (launch.time) reached" in result.stdout


def test_run_runs_here_without_local(spec, tmp_path):
    """`study run` runs here with or without --local (`submit` is the SLURM path); --jobs must be >= 1."""
    result = run_cli(["study", "run", spec, "--jobs", "0", "--dir", tmp_path / "o"], timeout=60)
    assert result.returncode != 0 and "--jobs 0 must be >= 1" in result.stderr
