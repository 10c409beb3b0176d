"""End-to-end runs under real ``mpiexec`` (oversubscribed on small machines).

They run on the synthetic presets (configs/synthetic-*.toml: no dataset, no network); one
acceptance test runs the paper's spambase preset when the real data is there (KRUM_MPI_DATA)."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import REPO, run_cli

pytestmark = pytest.mark.mpi

KRUM_F6 = REPO / "configs" / "synthetic-krum-f6.toml"
PAPER_KRUM_F6 = REPO / "configs" / "paper-fig4-krum-f6.toml"
SHORT = ["--set", "run.steps=40", "--set", "run.eval_every=10"]


def _check_schema(path, n=20, steps=40, byz=6, max_selected=1):
    with h5py.File(path, "r") as h5:
        a = h5.attrs
        assert a["schema_version"] == 1
        cfg = json.loads(a["config"])
        assert cfg["workers"]["n"] == n and cfg["run"]["steps"] == steps
        prov = json.loads(a["provenance"])
        for key in ("packages", "mpi_library_version", "hostnames", "n_ranks", "n_workers", "device", "blas"):
            assert key in prov, key
        assert prov["n_workers"] == n and len(prov["hostnames"]) == prov["n_ranks"]
        assert "MPICH" in prov["mpi_library_version"] or "Open MPI" in prov["mpi_library_version"]
        assert a["status"] == "complete" and a["steps_done"] == steps
        m = h5["metrics"]
        assert m["step"].dtype == np.int64 and m["step"].shape == (steps,)
        np.testing.assert_array_equal(m["step"][()], np.arange(steps))
        assert m["loss"].dtype == np.float64 and np.isfinite(m["loss"][()]).all()
        acc = m["test_accuracy"][()]
        assert acc.dtype == np.float64 and acc.shape == (steps,)
        evaluated = np.flatnonzero(~np.isnan(acc))
        np.testing.assert_array_equal(evaluated, np.arange(9, steps, 10))
        assert ((acc[evaluated] >= 0) & (acc[evaluated] <= 1)).all()
        for name in ("compute_s", "gather_s", "aggregate_s", "update_s", "step_s"):
            t = h5["timing"][name][()]
            assert t.dtype == np.float64 and t.shape == (steps,) and (t >= 0).all(), name
        sel = h5["selection"]["selected"][()]
        assert sel.dtype == np.int32 and sel.shape == (steps, max_selected)
        assert ((sel >= 0) & (sel < n)).all()
        mask = h5["selection"]["byzantine"][()]
        assert mask.dtype == bool and mask.shape == (n,) and mask.sum() == byz
        return sel, mask, prov


@pytest.mark.parametrize("ranks", [2, 4])
def test_krum_run_writes_every_field(tmp_path, ranks):
    out = tmp_path / "krum.h5"
    done = run_cli(["run", KRUM_F6, "--out", out, *SHORT], ranks=ranks)
    assert done.returncode == 0, done.stderr
    assert "results:" in done.stdout
    sel, mask, prov = _check_schema(out)
    assert prov["n_ranks"] == ranks
    assert not mask[sel[:, 0]].any(), "Krum selected a Gaussian Byzantine worker"


def test_paper_preset_on_spambase(tmp_path, spambase_file):
    """The acceptance run on the real data: the paper's preset, unchanged."""
    out = tmp_path / "paper.h5"
    done = run_cli(["run", PAPER_KRUM_F6, "--out", out, *SHORT], ranks=2, env={"KRUM_MPI_DATA": str(spambase_file.parents[1])})
    assert done.returncode == 0, done.stderr
    sel, mask, prov = _check_schema(out)
    assert json.loads(h5py.File(out, "r").attrs["config"])["data"]["name"] == "spambase"
    assert not mask[sel[:, 0]].any(), "Krum selected a Gaussian Byzantine worker"


def test_progress_shown_unless_quiet(tmp_path):
    """Rank 0 prints its progress (in a log: every few seconds, and at the end); --quiet silences it."""
    done = run_cli(["run", KRUM_F6, "--out", tmp_path / "p.h5", *SHORT], ranks=2)
    assert done.returncode == 0, done.stderr
    lines = [l for l in done.stdout.splitlines() if l.startswith("train:")]
    assert lines, done.stdout
    assert "40/40 steps (100.0%)" in lines[-1] and "step/s" in lines[-1]
    assert "loss" in lines[-1] and "acc" in lines[-1] and "ETA" in lines[-1]
    quiet = run_cli(["run", KRUM_F6, "--out", tmp_path / "q.h5", *SHORT, "--quiet"], ranks=2)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "" and quiet.stderr == ""


def test_run_without_mpiexec_says_it_runs_on_one_rank(tmp_path):
    done = run_cli(["run", KRUM_F6, "--out", tmp_path / "one.h5", "--set", "run.steps=5"])
    assert done.returncode == 0, done.stderr
    assert "running on 1 MPI rank" in done.stderr and "mpiexec -n" in done.stderr
    under = run_cli(["run", KRUM_F6, "--out", tmp_path / "two.h5", "--set", "run.steps=5"], ranks=1)
    assert under.returncode == 0 and "running on 1 MPI rank" not in under.stderr


def test_more_than_f_nonfinite_rows_are_reported(tmp_path):
    """A learning rate that overflows every gradient: Krum gets 20 non-finite rows, f = 6."""
    out = tmp_path / "nan.h5"
    done = run_cli(["run", KRUM_F6, "--out", out, "--set", "run.steps=20", "--set", "run.eval_every=10",
                    "--set", "optimizer.lr=1e30"], ranks=2)
    assert done.returncode == 0, done.stderr
    warnings = [l for l in done.stderr.splitlines() if "warning" in l and "not finite" in l]
    assert len(warnings) == 1 and "more than f = 6" in warnings[0], done.stderr
    with h5py.File(out, "r") as h5:
        first = int(h5.attrs["first_nonfinite_update_step"])
        assert 0 <= first < 20 and h5.attrs["nonfinite_update_steps"] >= 1


def test_same_seed_same_selections_across_rank_counts(tmp_path):
    files = []
    for ranks in (1, 3):
        out = tmp_path / f"r{ranks}.h5"
        done = run_cli(["run", KRUM_F6, "--out", out, "--set", "run.steps=15", "--set", "run.eval_every=5"],
                       ranks=ranks)
        assert done.returncode == 0, done.stderr
        files.append(out)
    a, b = (h5py.File(f, "r") for f in files)
    with a, b:
        np.testing.assert_array_equal(a["selection/selected"][()], b["selection/selected"][()])
        np.testing.assert_allclose(a["metrics/loss"][()], b["metrics/loss"][()], rtol=1e-5)


def test_multi_krum_and_average_selection_width(tmp_path):
    out = tmp_path / "mk.h5"
    done = run_cli(["run", KRUM_F6, "--out", out, "--set", "aggregator.name=multi-krum",
                    "--set", "aggregator.m=14", "--set", "run.steps=10", "--set", "run.eval_every=5"], ranks=2)
    assert done.returncode == 0, done.stderr
    with h5py.File(out, "r") as h5:
        sel = h5["selection/selected"][()]
        assert sel.shape == (10, 14) and (sel >= 0).all()
        assert all(len(set(row)) == 14 for row in sel)
    out = tmp_path / "avg.h5"
    done = run_cli(["run", KRUM_F6, "--out", out, "--set", "aggregator.name=average",
                    "--set", "run.steps=5", "--set", "run.eval_every=5"], ranks=2)
    assert done.returncode == 0, done.stderr
    with h5py.File(out, "r") as h5:
        np.testing.assert_array_equal(h5["selection/selected"][()], np.tile(np.arange(20), (5, 1)))


def _one_line_error(done, fragment):
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = [l for l in done.stderr.splitlines() if l.startswith("krum-mpi: error:")]
    assert len(lines) == 1, done.stderr
    assert fragment in lines[0], lines[0]


BAD_RUNS = [
    (["--set", "workers.n=14"], "krum"),                       # n < 2f + 3 with f = 6
    (["--set", "aggregator.name=krumm"], "krumm"),
    (["--set", "attack.name=nosuch"], "nosuch"),
    (["--set", "optimizer.lr=-1"], "optimizer.lr = -1.0 must be > 0"),
    (["--set", "run.stepz=3"], "unknown config key run.stepz"),
    (["--set", "data.path=/nonexistent/spam.csv"], "/nonexistent/spam.csv"),
]


@pytest.mark.parametrize("extra, fragment", BAD_RUNS, ids=[f for _, f in BAD_RUNS])
def test_bad_input_under_mpiexec(tmp_path, extra, fragment):
    done = run_cli(["run", PAPER_KRUM_F6, "--out", tmp_path / "x.h5", *extra], ranks=2, timeout=120)
    _one_line_error(done, fragment)
    assert not (tmp_path / "x.h5").exists()


def test_missing_dataset_names_the_fix(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_cli(["run", PAPER_KRUM_F6, "--out", tmp_path / "x.h5"], ranks=2, timeout=120,
                   env={"KRUM_MPI_DATA": str(empty)})
    _one_line_error(done, "spambase")
    assert "download" in done.stderr
    assert "--set data.name=synthetic" in done.stderr      # the offline way, in the same line


def test_existing_results_are_not_overwritten(tmp_path):
    out = tmp_path / "keep.h5"
    out.write_bytes(b"precious")
    done = run_cli(["run", KRUM_F6, "--out", out, *SHORT], ranks=2, timeout=120)
    _one_line_error(done, "already exists")
    assert out.read_bytes() == b"precious"


def test_cli_usage_errors():
    done = run_cli(["frobnicate"])
    _one_line_error(done, "unknown command")
    done = run_cli(["run"])
    _one_line_error(done, "give a run config file, or --from-study SPEC")
    done = run_cli(["run", "nope.toml"])
    _one_line_error(done, "nope.toml not found")
