"""Acceptance of the analysis on a small study of REAL runs (mpiexec + krum-mpi run): the tables
against values read directly with h5py, the report and its PNGs, the notebooks, and bad files in
the folder listed as skipped with their reason.

The study: average and krum, 0 and 2 Byzantine of 10 workers (Gaussian), seeds 0 and 1, on 2 MPI
ranks; plus average and krum without attack, seed 0, on 1 rank (strong scaling). Synthetic data,
30 steps: about 30 s on 2 cores.
"""
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import mpiexec_path, run_cli
from test_analysis_report import NOTEBOOKS, check_markdown_report, execute_notebook

from krum_mpi.analysis import load_study, tables

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "paper-fig4-average-f0.toml"
STEPS = 30
T975_DF1 = 12.706  # two seeds


def settings(rule, byz, seed):
    attack = ["--set", "attack.name=gaussian", "--set", "attack.sigma=200.0"] if byz else ["--set", "attack.name=none"]
    return ["--set", f"run.steps={STEPS}", "--set", "run.eval_every=10", "--set", f"run.seed={seed}",
            "--set", "data.name=synthetic", "--set", "data.n_train=2000", "--set", "data.n_test=500",
            "--set", "workers.n=10", "--set", "aggregator.f=2", "--set", f"aggregator.name={rule}",
            "--set", f"workers.byzantine={byz}", *attack]


@pytest.fixture(scope="session")
def real_study(tmp_path_factory):
    if mpiexec_path() is None:
        pytest.skip("no mpiexec found: pip install mpich (or set MPIEXEC)")
    if not BASE.is_file():
        pytest.skip(f"{BASE.name} not found")
    folder = tmp_path_factory.mktemp("real-study")
    runs = [(2, rule, byz, seed) for rule in ("average", "krum") for byz in (0, 2) for seed in (0, 1)]
    runs += [(1, rule, 0, 0) for rule in ("average", "krum")]
    for ranks, rule, byz, seed in runs:
        out = folder / f"{rule}-b{byz}-s{seed}-r{ranks}.h5"
        proc = run_cli(["run", BASE, "--quiet", "--out", out, *settings(rule, byz, seed)], ranks=ranks, timeout=180)
        assert proc.returncode == 0, f"krum-mpi run failed for {out.name}: {proc.stderr[-2000:]}"
    # files a real study folder may also hold
    good = folder / "krum-b0-s0-r2.h5"
    data = good.read_bytes()
    (folder / "broken.h5").write_bytes(data[: len(data) // 2])
    with h5py.File(folder / "foreign.h5", "w") as h5:
        h5["table"] = np.arange(4)
    shutil.copy(good, folder / "interrupted.h5.tmp")
    (folder / "notes.txt").write_text("a note")
    return folder


def direct(folder):
    """Per run file, read straight from HDF5: attrs, final accuracy, mean step time, Byzantine picks."""
    out = []
    for path in sorted(folder.glob("*-r[12].h5")):
        with h5py.File(path, "r") as h5:
            acc = h5["metrics/test_accuracy"][()]
            sel = h5["selection/selected"][()]
            byz = h5["selection/byzantine"][()]
            timing = {k: h5[f"timing/{k}"][()] for k in ("step_s", "aggregate_s")}
            out.append({"file": path.name, "rule": h5.attrs["aggregator"], "byz": int(h5.attrs["n_byzantine"]),
                        "seed": int(h5.attrs["seed"]), "ranks": int(path.stem[-1]),
                        "final": acc[np.isfinite(acc)][-1], "best": np.nanmax(acc),
                        "step_s": timing["step_s"][1:].mean(), "aggregate_s": timing["aggregate_s"][1:].mean(),
                        "byz_picked": np.mean([byz[s[s >= 0]].any() for s in sel])})
    return out


def pick(rows, **match):
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


@pytest.fixture(scope="session")
def loaded(real_study):
    study = load_study(real_study)
    return study, tables.run_summary(study), direct(real_study)


def test_run_table_matches_the_files(loaded):
    study, summary, rows = loaded
    assert len(summary) == len(rows) == 10
    by_run = summary.set_index("run")
    for r in rows:
        got = by_run.loc[r["file"]]
        assert (got["aggregator.name"], got["workers.byzantine"], got["seed"], got["n_ranks"]) == \
            (r["rule"], r["byz"], r["seed"], r["ranks"])
        assert got["status"] == "complete" and got["steps_done"] == STEPS
        assert got["final_accuracy"] == r["final"] and got["best_accuracy"] == r["best"]
    assert study.metrics.npartitions == 10


def test_accuracy_table_against_h5py(loaded):
    _, summary, rows = loaded
    acc = tables.accuracy_table(summary).set_index(["rule", "byz_fraction", "n_ranks"])
    for rule in ("average", "krum"):
        for byz in (0, 2):
            finals = [r["final"] for r in pick(rows, rule=rule, byz=byz, ranks=2)]
            row = acc.loc[(rule, byz / 10, 2)]
            assert row["n_seeds"] == 2
            assert row["final_mean"] == pytest.approx(np.mean(finals))
            assert row["final_ci"] == pytest.approx(T975_DF1 * np.std(finals, ddof=1) / math.sqrt(2), rel=1e-3)
    single = acc.loc[("krum", 0.0, 1)]
    assert single["n_seeds"] == 1 and math.isnan(single["final_ci"])


def test_cost_of_resilience_against_h5py(loaded):
    _, summary, rows = loaded
    cost = tables.resilience_cost(summary).set_index(["rule", "byz_fraction", "n_ranks"])
    base = pick(rows, rule="average", byz=0, ranks=2)
    for byz in (0, 2):
        robust = pick(rows, rule="krum", byz=byz, ranks=2)
        row = cost.loc[("krum", byz / 10, 2)]
        assert row["acc_gap"] == pytest.approx(np.mean([r["final"] for r in robust]) - np.mean([r["final"] for r in base]))
        assert row["time_ratio"] == pytest.approx(np.mean([r["step_s"] for r in robust]) /
                                                  np.mean([r["step_s"] for r in base]))
        assert row["aggregate_ratio"] == pytest.approx(np.mean([r["aggregate_s"] for r in robust]) /
                                                       np.mean([r["aggregate_s"] for r in base]))


def test_time_per_phase_and_byzantine_selection_against_h5py(loaded):
    _, summary, rows = loaded
    phases = tables.phase_times(summary).set_index(["rule", "byz_fraction", "n_ranks"])
    krum = pick(rows, rule="krum", byz=2, ranks=2)
    assert phases.loc[("krum", 0.2, 2), "step_s"] == pytest.approx(np.mean([r["step_s"] for r in krum]))
    sel = tables.byzantine_selection(summary).set_index(["rule", "n_ranks"])
    assert sel.loc[("krum", 2), "byz_selected"] == pytest.approx(np.mean([r["byz_picked"] for r in krum]))
    assert sel.loc[("average", 2), "byz_selected"] == 1.0  # averaging takes every worker


def test_strong_scaling_against_h5py(loaded):
    _, summary, rows = loaded
    scale = tables.scaling_table(summary)
    krum = scale[(scale["rule"] == "krum") & (scale["byz_fraction"] == 0)].set_index("n_ranks")
    assert set(krum["mode"]) == {"strong"}
    t1 = np.mean([r["step_s"] for r in pick(rows, rule="krum", byz=0, ranks=1)])
    t2 = np.mean([r["step_s"] for r in pick(rows, rule="krum", byz=0, ranks=2)])
    assert krum.loc[2, "speedup"] == pytest.approx(t1 / t2)
    assert krum.loc[2, "efficiency"] == pytest.approx(t1 / t2 / 2)


def test_bad_files_in_the_study_are_skipped_with_the_reason(loaded):
    study = loaded[0]
    reasons = dict(zip([Path(f).name for f in study.skipped["file"]], study.skipped["reason"]))
    assert "cannot be read by HDF5" in reasons["broken.h5"]
    assert "not a krum-mpi results file" in reasons["foreign.h5"]
    assert "temporary file" in reasons["interrupted.h5.tmp"]
    assert study.other_files == {".txt": 1}


def test_report_cli_on_real_runs(real_study, tmp_path):
    proc = run_cli(["report", real_study, "--out", tmp_path / "report"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = check_markdown_report(tmp_path / "report" / "report.md")
    for name in ("accuracy_over_steps", "accuracy_vs_fraction", "time_per_phase", "scaling"):
        assert f"figures/{name}.png" in text
    skipped = text[text.index("## Files skipped"):]
    assert "broken.h5" in skipped and "foreign.h5" in skipped and "interrupted.h5.tmp" in skipped
    assert "Without attack, **krum" in text
    html = run_cli(["report", real_study, "--out", tmp_path / "html", "--format", "html"], timeout=300)
    assert html.returncode == 0, html.stderr[-2000:]
    assert (tmp_path / "html" / "report.html").read_text().count("data:image/png;base64,") >= 4


def test_report_cli_error_is_one_line(tmp_path):
    proc = run_cli(["report", tmp_path / "missing"])
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("krum-mpi: error:") and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_on_real_runs(path, real_study):
    nb = execute_notebook(path, real_study)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("10 runs, 3 files skipped" in o.get("text", "") for o in outputs)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, "the notebook drew no figure"
