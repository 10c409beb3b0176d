"""Round trips of the three file formats, each written by the real command and read by the real
reader: the bench file (``krum-mpi bench aggregate`` -> ``krum-mpi report --bench``), the results
file (``krum-mpi run`` under mpiexec -> the study loader), and the study folder (``krum-mpi study run``
-> ``krum-mpi study status`` and the loader)."""
import json
import re
import textwrap

import h5py
import numpy as np
import pytest

from conftest import run_cli
from krum_mpi.bench import schema as benchfile
from krum_mpi.run import results
from krum_mpi.analysis import load_study
from krum_mpi.analysis.load import read_partition
from krum_mpi.analysis.runtable import METRICS, STEP_TIMINGS
from krum_mpi.errors import ResultsError
from krum_mpi.study import folder as layout
from krum_mpi.study.folder import StudyFolder
from krum_mpi.study.plan import make_plan
from krum_mpi.study.spec import load_spec

BENCH = ["bench", "aggregate", "--rules", "krum,median", "--n", "7", "--d", "500", "--repeats", "2",
         "--pairloop-n", "0", "--no-memory"]
SPEC = """
[study]
name = "formats"
[base.run]
steps = 6
eval_every = 3
[base.workers]
n = 6
byzantine = 1
[base.data]
name = "synthetic"
n_train = 600
n_test = 100
n_features = 8
[base.model]
name = "logistic"
[base.attack]
name = "gaussian"
[launch]
ranks = 2
[sweep]
"aggregator.name" = ["average", "krum"]
"""


@pytest.fixture(scope="module")
def bench_files(tmp_path_factory):
    """One real ``krum-mpi bench aggregate`` run per encoding."""
    folder = tmp_path_factory.mktemp("bench")
    paths = {}
    for suffix in (".json", ".csv", ".h5"):
        paths[suffix] = folder / f"kernels{suffix}"
        proc = run_cli(BENCH + ["--out", paths[suffix]], timeout=180)
        assert proc.returncode == 0, proc.stderr
    return paths


@pytest.mark.parametrize("suffix", [".json", ".csv", ".h5"])
def test_bench_file_round_trip(bench_files, suffix):
    report = benchfile.read(bench_files[suffix])
    rows = report["results"]
    assert [(r["rule"], r["device"], r["input"], r["n"], r["d"], r["f"]) for r in rows] == [
        ("krum", "cpu", "gaussian", 7, 500, 1), ("median", "cpu", "gaussian", 7, 500, 1),
        ("krum", "cpu", "blinded", 7, 500, 1)]  # the blinded input: Krum-type rules only
    assert all(r["recomputed"] >= 0 for r in rows)
    for row in rows:
        assert row["x_floor"] == pytest.approx(row["min_ms"] / row["floor_ms"])
        assert row["min_ms"] == pytest.approx(min(row["times_ms"])) and len(row["times_ms"]) == 2
        assert row["peak_extra_pct"] is None   # --no-memory: not measured, and said so in every encoding
    assert [r["floor"] for r in rows] == ["max(read, gram)", "read", "max(read, gram)"]
    assert report["command"].startswith("krum-mpi bench aggregate") and report["machine"]["device"] == "cpu"
    assert report["gemm"]["flops_per_s"] > 0 and report["pairloop"] == []


def test_report_reads_what_bench_writes(bench_files, tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    out = tmp_path / "report"
    args = ["report", study, "--out", out]
    for path in bench_files.values():
        args += ["--bench", path]
    proc = run_cli(args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = (out / "report.md").read_text()
    assert "Bench file skipped" not in text and "figures/kernel_vs_floor.png" in text
    assert (out / "figures" / "kernel_vs_floor.png").stat().st_size > 1000
    for path in bench_files.values():
        for row in benchfile.read(path)["results"]:
            cells = (f"| {row['rule']} | cpu | {row['input']} | 7 | 500 | 1 | {row['recomputed']} | "
                     f"{row['min_ms']:.3g} | {row['floor']} | ")
            assert cells in text, f"{path.name}: {row['rule']} missing from the report"
            assert f" | {row['x_floor']:.2f}x |" in text


def test_the_loader_finds_bench_files_in_a_study_and_refuses_strangers(bench_files, tmp_path):
    (tmp_path / "kernels.h5").write_bytes(bench_files[".h5"].read_bytes())   # no "bench" in its name
    study = load_study(tmp_path)
    assert [p.name for p in study.bench_files] == ["kernels.h5"] and len(study.skipped) == 0
    stranger = tmp_path / "bench.csv"
    stranger.write_text("rule,time_s,floor_s\nkrum,0.5,0.25\n")
    with pytest.raises(ResultsError, match="is not a readable krum-mpi bench file") as caught:
        benchfile.read(stranger)
    assert "\n" not in str(caught.value)
    with h5py.File(tmp_path / "kernels.h5", "a") as h5:
        h5.attrs["format_version"] = 99
    with pytest.raises(ResultsError, match="format_version 99, this reader knows 1"):
        benchfile.read(tmp_path / "kernels.h5")


@pytest.fixture(scope="module")
def study_run(tmp_path_factory, mpiexec):
    """A two-run study run here with ``krum-mpi study run --local`` (real mpiexec runs)."""
    root = tmp_path_factory.mktemp("study")
    spec = root / "formats.toml"
    spec.write_text(textwrap.dedent(SPEC))
    proc = run_cli(["study", "run", spec, "--local", "--dir", root / "out"], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return spec, root / "out"


@pytest.mark.slow
@pytest.mark.mpi
def test_results_file_round_trip(study_run):
    """Every per-step dataset the writer makes reaches the loader's frames unchanged."""
    _, out = study_run
    study = load_study(out)
    assert len(study.runs) == 2 and len(study.skipped) == 0
    for _, row in study.runs.iterrows():
        written = results.read_run(row["file"])
        assert row["status"] == "complete" and row["steps_done"] == written["attrs"]["steps_done"] == 6
        metrics = read_partition([(row["file"], row["run"])], "metrics")
        timings = read_partition([(row["file"], row["run"])], "timings")
        assert list(metrics.columns) == ["run", *METRICS] and list(timings.columns) == ["run", "step", *STEP_TIMINGS]
        np.testing.assert_array_equal(metrics["step"], written["metrics"]["step"])
        for name in results.METRICS:
            np.testing.assert_array_equal(metrics[name], written["metrics"][name])
        for name in results.TIMINGS + results.LATER_TIMINGS:   # a run written now has them all
            np.testing.assert_array_equal(timings[name], written["timing"][name])
        assert row["aggregator.name"] == written["attrs"]["config"]["aggregator"]["name"]


@pytest.mark.slow
@pytest.mark.mpi
def test_study_folder_round_trip(study_run):
    spec, out = study_run
    plan = make_plan(load_spec(spec)).to_dict()
    folder = StudyFolder(out)
    assert folder.read_plan() == plan
    for run in plan["runs"]:
        assert folder.result(run["id"]) == out / layout.RUNS_DIR / f"{run['id']}{layout.RESULT}"
        assert folder.exit_status(run["id"]) == 0 and folder.log(run["id"]).stat().st_size > 0
    keys = sorted(load_study(out).runs["run"])
    assert keys == sorted(f"{layout.RUNS_DIR}/{r['id']}{layout.RESULT}" for r in plan["runs"])
    status = run_cli(["study", "status", out], timeout=120)
    assert status.returncode == 0, status.stderr
    assert re.search(r"\b2 done\b", status.stdout), status.stdout
    # the job scripts write to the same places (their paths come from the same names)
    script = run_cli(["study", "render", spec, "--profile", "local-test", "--out", out / "scripts",
                      "--study-dir", out], timeout=120)
    assert script.returncode == 0, script.stderr
    array = next((out / "scripts").glob("array-*.sbatch")).read_text()
    assert f'RUNS="$STUDY/{layout.RUNS_DIR}"' in array
    assert f'local out="$RUNS/$id{layout.RESULT}" log="$RUNS/$id{layout.LOG}"' in array
    assert f'> "$RUNS/$id{layout.EXIT}"' in array
    assert json.loads((out / layout.PLAN_FILE).read_text())["name"] == "formats"
