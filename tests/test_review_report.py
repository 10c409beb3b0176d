"""The review report on real runs: a small study with the three review points (real mpiexec runs,
synthetic data), run twice with different parallelism, reported twice; the accuracy tables must
agree to the last digit, the report must hold a section per point with tables, figures, intervals
and verdicts, and the comparison script must catch a changed accuracy."""
import importlib.util
import shutil
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import run_cli

pytestmark = [pytest.mark.mpi, pytest.mark.slow]  # slow: minutes (left out of a plain run)

ROOT = Path(__file__).resolve().parents[1]
THREATS = """threat = [{ "attack.name" = "none", "workers.byzantine" = 0, "aggregator.f" = 2 },
          { "attack.name" = "alie", "workers.byzantine" = 2, "aggregator.f" = 2 }]"""
SPEC = f"""
[study]
name = "mini-review"

[base.run]
steps = 8
eval_every = 4
[base.workers]
n = 8
[base.data]
name = "synthetic"
n_train = 2000
n_test = 200
n_features = 6
[base.model]
name = "mlp"
hidden = [8]

[launch]
ranks = 1
time = "00:03:00"

[parts.point1-clean.sweep]
"aggregator.name" = ["average", "krum"]
"aggregator.f" = [0, 2]
"run.seed" = [0, 1]
[[parts.point1-clean.exclude]]
"aggregator.name" = "average"
"aggregator.f" = 2

[parts.point1-attack.sweep]
"aggregator.name" = ["average", "krum"]
"workers.byzantine" = [2]
"attack.name" = ["alie", "sign-flip"]
"run.seed" = [0, 1]

[parts.point2-samples.sweep]
"data.n_train" = [1000, 4000]
"aggregator.name" = ["average", "krum"]
{THREATS}
"run.seed" = [0, 1]

[parts.point3-placement.launch]
ranks = 2
[parts.point3-placement.sweep]
"aggregator.placement" = ["gather", "sharded"]
"aggregator.sharded_min_d" = [0]
"aggregator.name" = ["krum"]
{THREATS}
"run.seed" = [0, 1]
"""


def load_checker():
    spec = importlib.util.spec_from_file_location("check_review", ROOT / "scripts" / "check_review_reproduces.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reports(tmp_path_factory, mpiexec):
    """The study run twice (one run at a time, then two), each reported."""
    root = tmp_path_factory.mktemp("review")
    spec = root / "study.toml"
    spec.write_text(textwrap.dedent(SPEC))
    out = []
    for jobs in ("1", "2"):
        folder = root / f"study-j{jobs}"
        run = run_cli(["study", "run", spec, "--jobs", jobs, "--dir", folder], timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
        report = run_cli(["report", folder, "--out", root / f"report-j{jobs}", "--figure-formats", "png"],
                         timeout=300)
        assert report.returncode == 0, report.stdout + report.stderr
        out.append((folder, root / f"report-j{jobs}"))
    return out


def test_report_has_a_section_per_point_with_tables_figures_and_verdicts(reports):
    _, report = reports[0]
    text = (report / "report.md").read_text()
    for heading in ("## Verdicts", "## 1. The cost without attack", "## 2. How cost and payoff change",
                    "## 3. Exact Krum on sharded gradients"):
        assert heading in text
    for name in ("point1_accuracy", "point1_resilience", "point2_samples_accuracy", "point2_samples_effects",
                 "point3_accuracy", "point3_selections", "point1_timing", "point3_timing"):
        assert (report / "tables" / f"{name}.csv").is_file(), name
    for name in ("cost_of_resilience", "point1_worst_vs_fraction", "point2_scale", "point3_placements"):
        assert (report / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "**krum** (no momentum). Cost without attack, against averaging: 25.0%:" in text
    assert " ± " in text and "[95% Welch" in text
    assert "cannot decide" in text or "interval below 0" in text or "interval above 0" in text


def test_tables_match_the_run_files(reports):
    """point1_accuracy's krum/alie cell is the mean of the final accuracies read with h5py."""
    folder, report = reports[0]
    finals = []
    for path in sorted((folder / "runs").glob("*.h5")):
        with h5py.File(path, "r") as h5:
            if (h5.attrs["aggregator"], h5.attrs["attack"], int(h5.attrs["n_byzantine"])) == ("krum", "alie", 2) \
                    and h5.attrs["config"].find("point1-attack") >= 0:
                acc = h5["metrics/test_accuracy"][()]
                finals.append(acc[np.isfinite(acc)][-1])
    assert len(finals) == 2
    table = pd.read_csv(report / "tables" / "point1_accuracy.csv")
    row = table[(table["rule"] == "krum") & (table["threat"] == "alie")]
    assert len(row) == 1 and row["n_seeds"].iloc[0] == 2
    assert row["accuracy"].iloc[0] == pytest.approx(np.mean(finals), abs=1e-12)
    assert np.isfinite(row["accuracy_ci"].iloc[0])
    # exact sharded Krum picks what the gather picks, at every step
    sel = pd.read_csv(report / "tables" / "point3_selections.csv")
    assert (sel["placement"] == "sharded").all() and (sel["steps_same_min"] == 1.0).all()


def test_a_rerun_with_other_parallelism_reproduces_the_tables(reports, tmp_path):
    checker = load_checker()
    (_, first), (_, second) = reports
    assert checker.compare(first / "tables", second / "tables") == []
    # the check is not vacuous: a changed accuracy, or a missing table, is reported
    copy = tmp_path / "tables"
    shutil.copytree(second / "tables", copy)
    table = pd.read_csv(copy / "point1_accuracy.csv")
    table.loc[0, "accuracy"] += 1e-9
    table.to_csv(copy / "point1_accuracy.csv", index=False)
    (copy / "point3_accuracy.csv").unlink()
    problems = checker.compare(first / "tables", copy)
    assert any(p.startswith("point1_accuracy.csv: row") and "accuracy" in p for p in problems)
    assert f"point3_accuracy.csv: only in {first / 'tables'}" in problems
    # timing columns and tables are left out of the comparison
    timing = pd.read_csv(second / "tables" / "point1_timing.csv")
    assert "step_ms" in timing and not checker.TIMING_FILES.search("point1_accuracy")
