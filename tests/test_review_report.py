"""The review report on real runs: a small study with the three review points (real mpiexec runs,
synthetic data), run twice with different parallelism, reported twice; the accuracy tables must
agree to the last digit, the report must hold a section per point with tables, figures, intervals
and verdicts, and the comparison script must catch a changed accuracy."""
import importlib.util
import json
import re
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
    assert "paired by seed" in text and "Holm" in text and "Welch" not in text
    assert "cannot decide" in text or "better (Holm p" in text or "worse (Holm p" in text


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


def _finals(folder):
    """{(part, rule, f, byzantine, attack): {seed: final test accuracy}} read with h5py."""
    out = {}
    for path in sorted((folder / "runs").glob("*.h5")):
        with h5py.File(path, "r") as h5:
            cfg = json.loads(h5.attrs["config"])
            acc = h5["metrics/test_accuracy"][()]
        key = (cfg["run"]["name"], cfg["aggregator"]["name"], cfg["aggregator"]["f"], cfg["workers"]["byzantine"],
               cfg["attack"]["name"] if cfg["workers"]["byzantine"] else "none")
        out.setdefault(key, {})[cfg["run"]["seed"]] = float(acc[np.isfinite(acc)][-1])
    return out


def test_paired_intervals_and_holm_recomputed_from_the_run_files(reports):
    """point1_resilience's krum row: the cost is krum (told f = 2) minus averaging without attack, seed by
    seed; its interval and p-value are scipy's paired t test; the payoff pairs the worst attacks; Holm over
    the family of 2 (averaging's row is the baseline, not a comparison)."""
    stats = pytest.importorskip("scipy.stats")
    folder, report = reports[0]
    finals = _finals(folder)
    krum_clean = finals[("point1-clean", "krum", 2, 0, "none")]
    avg_clean = finals[("point1-clean", "average", 0, 0, "none")]
    seeds = sorted(krum_clean)
    attacked = {rule: {a: finals[("point1-attack", rule, 2, 2, a)] for a in ("alie", "sign-flip")}
                for rule in ("krum", "average")}
    worst = {rule: min(by_attack.values(), key=lambda v: (np.mean(list(v.values())))) for rule, by_attack in
             attacked.items()}
    table = pd.read_csv(report / "tables" / "point1_resilience.csv").set_index("rule")
    assert table.loc["average", "cost_verdict"] == "baseline" and (table["family"] == 2).all()
    p = {}
    for name, mine, theirs in (("cost", krum_clean, avg_clean), ("payoff", worst["krum"], worst["average"])):
        a, b = [mine[s] for s in seeds], [theirs[s] for s in seeds]
        diffs = np.subtract(a, b)
        assert table.loc["krum", name] == pytest.approx(diffs.mean(), abs=1e-12)
        assert table.loc["krum", f"{name}_seeds"] == len(seeds)
        if np.ptp(diffs) == 0:   # no spread: the interval is the point
            assert table.loc["krum", f"{name}_low"] == table.loc["krum", f"{name}_high"] == pytest.approx(diffs.mean())
            p[name] = 1.0 if diffs.mean() == 0 else 0.0
            continue
        test = stats.ttest_rel(a, b)
        ci = test.confidence_interval(0.95)
        assert table.loc["krum", f"{name}_low"] == pytest.approx(ci.low, rel=1e-9, abs=1e-12)
        assert table.loc["krum", f"{name}_high"] == pytest.approx(ci.high, rel=1e-9, abs=1e-12)
        p[name] = test.pvalue
    # Holm over 2 by hand: the smaller p times 2, the larger times 1 (never below the first), capped at 1
    small, large = sorted(p, key=p.get)
    assert table.loc["krum", f"{small}_p_holm"] == pytest.approx(min(1.0, 2 * p[small]), rel=1e-9)
    assert table.loc["krum", f"{large}_p_holm"] == pytest.approx(min(1.0, max(2 * p[small], p[large])), rel=1e-9)
    # accuracy cells stay inside [0, 100] and name their seeds
    acc = pd.read_csv(report / "tables" / "point1_accuracy.csv")
    for text in acc["accuracy_text"]:
        numbers = [float(x) for x in re.findall(r"-?\d+\.\d+", text)]
        assert all(0.0 <= x <= 100.0 for x in numbers), text
        assert "seeds" in text or "(1 seed)" in text


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
