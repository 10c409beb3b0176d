"""Study specs with several grids ([parts.<name>]): planning, one-line errors, slices (--part,
--limit), real runs, job scripts, and the review specs of the repository."""
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli
from krum_mpi.errors import ConfigError
from krum_mpi.study import load_spec, make_plan
from krum_mpi.study.folder import StudyFolder, is_complete
from krum_mpi.study.plan import select_runs

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
[study]
name = "parts"
jobs = 2

[base.run]
steps = 6
eval_every = 3
name = "ignored"
[base.workers]
n = 8
[base.data]
name = "synthetic"
n_train = 500
n_test = 100
n_features = 6
[base.model]
name = "logistic"

[launch]
ranks = 1
time = "00:02:00"

[parts.point1-a.sweep]
"aggregator.name" = ["average", "krum"]
"run.seed" = [0, 1]

[[parts.point1-a.exclude]]
"aggregator.name" = "average"
"run.seed" = 1

[parts.point3-b.base]
"workers.n" = 6
"run.steps" = 4
[parts.point3-b.launch]
ranks = 2
[parts.point3-b.sweep]
"aggregator.name" = ["average", "krum"]
"""


def write(tmp_path, text, name="study.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def spec(tmp_path):
    return write(tmp_path, SPEC)


def test_parts_make_the_union_of_their_grids(spec):
    plan = make_plan(load_spec(spec))
    by_part = {}
    for run in plan.runs:
        by_part.setdefault(run.labels["part"], []).append(run)
    # point1-a: 2 rules x 2 seeds less the excluded (average, seed 1); point3-b: 2 rules
    assert sorted((p, len(r)) for p, r in by_part.items()) == [("point1-a", 3), ("point3-b", 2)]
    for run in by_part["point1-a"]:
        assert run.config["run"]["name"] == "point1-a" and run.ranks == 1
        assert run.config["workers"]["n"] == 8 and run.config["run"]["steps"] == 6
    for run in by_part["point3-b"]:   # the part's base and launch override the study's
        assert run.config["run"]["name"] == "point3-b" and run.ranks == 2
        assert run.config["workers"]["n"] == 6 and run.config["run"]["steps"] == 4
    # the part's exclusion drops only its own runs: point3-b keeps average
    assert {r.config["aggregator"]["name"] for r in by_part["point3-b"]} == {"average", "krum"}
    assert len({r.id for r in plan.runs}) == 5
    assert load_spec(spec).jobs == 2


def test_same_config_in_two_parts_gives_two_runs(tmp_path):
    """The part is part of the run (run.name), so two parts never share a results file."""
    text = SPEC.replace('"workers.n" = 6\n"run.steps" = 4\n', "").replace("ranks = 2", "ranks = 1")
    plan = make_plan(load_spec(write(tmp_path, text)))
    assert len(plan.runs) == 5 and len({r.id for r in plan.runs}) == 5


@pytest.mark.parametrize("change, message", [
    (lambda s: s + '\n[sweep]\n"run.seed" = [0]\n', "a spec with [parts] sweeps in each part: move [sweep]"),
    (lambda s: s.replace("[parts.point3-b.launch]", "[parts.point3-b.lunch]"),
     "unknown key parts.point3-b.lunch: known keys are base, launch, sweep, exclude"),
    (lambda s: s.replace('"workers.n" = 6', '"workers.nn" = 6'), "unknown key workers.nn in parts.point3-b.base"),
    (lambda s: s.replace('"workers.n" = 6', '"launch.ranks" = 6'),
     "parts.point3-b.base sets launch.ranks: put launch settings in parts.point3-b.launch"),
    (lambda s: s.replace("ranks = 2", "ranks = 0"), "launch.ranks = 0 must be an integer >= 1"),
    (lambda s: s.replace('"aggregator.name" = "average"\n"run.seed" = 1', ""),
     "an empty [[exclude]] table of part point1-a would drop every run"),
    (lambda s: s.replace("jobs = 2", "jobs = 0"), "study.jobs = 0 must be an integer >= 1"),
    (lambda s: s.replace("[parts.point1-a.sweep]", '[parts."bad name".sweep]').replace(
        "[[parts.point1-a.exclude]]", '[[parts."bad name".exclude]]'), "part name 'bad name' must be a word"),
])
def test_bad_parts_are_one_line_errors(tmp_path, change, message):
    path = write(tmp_path, change(textwrap.dedent(SPEC)))
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_part_on_the_command_line(spec, tmp_path):
    result = run_cli(["study", "run", spec, "--part", "nope", "--dir", tmp_path / "o"], timeout=60)
    assert result.returncode != 0
    assert "no part 'nope' in this study: its parts are point1-a, point3-b" in result.stderr
    runs = make_plan(load_spec(spec)).to_dict()["runs"]
    assert [r["labels"]["part"] for r in select_runs(runs, ["point3-b"])] == ["point3-b", "point3-b"]
    assert select_runs(runs, [], limit=2) == runs[:2]


@pytest.mark.mpi
def test_a_slice_runs_then_the_rest(spec, tmp_path, mpiexec):
    """--part and --limit run a slice (real mpiexec runs); status shows the rest pending; a plain run
    then does only what is left."""
    folder = tmp_path / "out"
    first = run_cli(["study", "run", spec, "--part", "point3-b", "--limit", "1", "--dir", folder], timeout=180)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "1 runs done, 0 failed" in first.stdout
    plan = StudyFolder(folder).read_plan()
    done = [r for r in plan["runs"] if is_complete(StudyFolder(folder).result(r["id"]))]
    assert [r["labels"]["part"] for r in done] == ["point3-b"] and len(plan["runs"]) == 5
    status = run_cli(["study", "status", folder], timeout=60)
    assert status.returncode == 0 and "pending" in status.stdout
    rest = run_cli(["study", "run", spec, "--dir", folder], timeout=300)
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert "4 runs done, 0 failed, 1 already complete" in rest.stdout


def test_render_a_slice_of_parts_gives_valid_scripts(spec, tmp_path):
    out = tmp_path / "scripts"
    result = run_cli(["study", "render", spec, "--profile", "local-test", "--limit", "2", "--out", out], timeout=60)
    assert result.returncode == 0, result.stderr
    scripts = sorted(out.glob("*.sbatch")) + [out / "submit.sh"]
    arrays = [p for p in scripts if p.name.startswith("array")]
    assert arrays and sum(p.read_text().count("--set run.name=") for p in arrays) == 2
    for path in scripts:
        check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, f"{path.name}: {check.stderr}"


@pytest.mark.parametrize("name", ["review.toml", "review-cluster.toml"])
def test_the_review_specs_plan_and_render(name, tmp_path):
    """Both review specs plan without an invalid run, hold the three points, and render scripts that
    pass bash -n for a site profile."""
    spec = load_spec(ROOT / "studies" / name)
    plan = make_plan(spec, check_models=False)
    assert not plan.invalid
    parts = {r.labels["part"] for r in plan.runs + plan.awaiting}   # awaiting: the parts a tuning stage tunes
    assert {p.split("-")[0] for p in parts} - {"tune"} == {"point1", "point2", "point3"}
    seeds = {r.config["run"]["seed"] for r in plan.runs}
    assert len(seeds) >= (5 if "cluster" in name else 3)
    out = tmp_path / "scripts"
    result = run_cli(["study", "render", ROOT / "studies" / name, "--profile", "example-cluster", "--out", out],
                     timeout=120)
    assert result.returncode == 0, result.stderr
    for path in sorted(out.glob("*.sbatch")) + [out / "submit.sh"]:
        check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, f"{path.name}: {check.stderr}"
