"""The tuning stage of a study: a part that tunes a grid per rule without attack on a validation split,
the choice recorded in tuning.json, the attacked parts run with the chosen values; one-line refusals;
the BLAS kernel pinned; and the review report built on it (tables with paired intervals, the grid, the
choice, the sensitivity figure, the convergence check). Real mpiexec runs on a tiny synthetic set."""
import json
import textwrap

import h5py
import pytest

from conftest import run_cli
from krum_mpi.errors import ConfigError
from krum_mpi.study import load_spec, make_plan
from krum_mpi.study.folder import StudyFolder, is_complete
from krum_mpi.study.kernel import coretype_of, pinned_env

SPEC = """
[study]
name = "tiny-tune"
jobs = 2

[base.run]
steps = 30
eval_every = 2
[base.workers]
n = 6
[base.data]
name = "synthetic"
n_train = 1200
n_test = 200
n_features = 6
[base.model]
name = "mlp"
hidden = [8]
[base.optimizer]
momentum = 0.9
momentum_form = "ema"

[launch]
ranks = 1
time = "00:03:00"

[parts.tune]
base = { "data.validation_fraction" = 0.2, "aggregator.f" = 1 }
[parts.tune.sweep]
"aggregator.name" = ["average", "centered-clipping"]
"run.seed" = [0, 1]
[parts.tune.tune]
"optimizer.lr" = [0.01, 0.2]
"aggregator.tau" = { "centered-clipping" = [0.1, 100.0] }

[parts.point1-clean]
tuned = "tune"
base = { "data.validation_fraction" = 0.2 }
[parts.point1-clean.sweep]
"aggregator.name" = ["average", "centered-clipping"]
"aggregator.f" = [1]
"run.seed" = [0, 1]

[parts.point1-attack]
tuned = "tune"
base = { "data.validation_fraction" = 0.2 }
[parts.point1-attack.sweep]
"aggregator.name" = ["average", "centered-clipping"]
"workers.byzantine" = [1]
"attack.name" = ["sign-flip", "alie"]
"run.seed" = [0, 1]
"""


def write(tmp_path, text, name="study.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_tuning_part_crosses_each_rule_with_its_grid(tmp_path):
    """average gets the lr grid, centered clipping lr x tau; the attacked parts wait (no id) until the
    tuning has chosen, and the plan still counts them."""
    plan = make_plan(load_spec(write(tmp_path, SPEC)), check_models=False)
    tune = [r for r in plan.runs if r.labels["part"] == "tune"]
    by_rule = {}
    for r in tune:
        by_rule.setdefault(r.labels["aggregator.name"], set()).add(
            (r.config["optimizer"]["lr"], r.config["aggregator"].get("tau")))
    assert by_rule == {"average": {(0.01, None), (0.2, None)},
                       "centered-clipping": {(0.01, 0.1), (0.01, 100.0), (0.2, 0.1), (0.2, 100.0)}}
    assert len(tune) == 12 and len(plan.runs) == 12
    assert len(plan.awaiting) == 12 and not any(r.id for r in plan.awaiting)


@pytest.mark.parametrize("change, message", [
    ('tuned = "tune"', "names no tuning part"),                                         # no such part
    ('"optimizer.lr" = [0.1]', "sets optimizer.lr, which it takes from tuning part"),   # set where tuned
    ('"run.seed" = [0, 1]\n"workers.byzantine" = [1]\n"attack.name" = ["gaussian"]', "must run without attack"),      # attacked tuning
])
def test_bad_tuning_specs_are_one_line_errors(tmp_path, change, message):
    text = SPEC
    if change.startswith("tuned"):
        text = text.replace('[parts.point1-clean]\ntuned = "tune"', '[parts.point1-clean]\ntuned = "nope"')
    elif change.startswith('"optimizer.lr"'):
        text = text.replace('"aggregator.f" = [1]\n', '"aggregator.f" = [1]\n' + change + "\n")
    else:
        text = text.replace('[parts.tune.sweep]\n"aggregator.name" = ["average", "centered-clipping"]\n"run.seed" = [0, 1]',
                            '[parts.tune.sweep]\n"aggregator.name" = ["average", "centered-clipping"]\n' + change)
    path = write(tmp_path, text)
    try:
        plan = make_plan(load_spec(path), check_models=False)
    except ConfigError as exc:
        assert message in str(exc) and "\n" not in str(exc)
        return
    assert any(message in line for line in plan.invalid), plan.invalid


def test_a_rule_without_tuning_runs_is_an_invalid_run(tmp_path):
    path = write(tmp_path, SPEC.replace('"attack.name" = ["sign-flip", "alie"]',
                                        '"attack.name" = ["sign-flip"]').replace(
        '[parts.point1-attack.sweep]\n"aggregator.name" = ["average", "centered-clipping"]',
        '[parts.point1-attack.sweep]\n"aggregator.name" = ["average", "median"]'))
    plan = make_plan(load_spec(path), check_models=False)
    assert any("has no runs with aggregator.name=median" in line for line in plan.invalid)


def test_the_kernel_is_read_from_the_recorded_provenance():
    assert coretype_of("openblas 0.3.31.188.0 Haswell") == "Haswell"
    assert coretype_of("openblas 0.3.31 Haswell + mkl 2024 x") == ""
    assert coretype_of("unknown") == ""


# the tuning part also tunes per momentum setting (one choice per rule and momentum); the tuned parts
# run at momentum 0.9 and take that group's choice
SPEC_BY_MOMENTUM = SPEC.replace('''[parts.tune.sweep]
"aggregator.name" = ["average", "centered-clipping"]''',
                                '''[parts.tune.sweep]
"optimizer.momentum" = [0.0, 0.9]
"aggregator.name" = ["average", "centered-clipping"]''')


@pytest.mark.mpi
@pytest.mark.slow
def test_a_study_tunes_chooses_runs_the_attacked_parts_and_reports(tmp_path, mpiexec):
    spec = write(tmp_path, SPEC_BY_MOMENTUM)
    folder = tmp_path / "out"
    refused = run_cli(["study", "run", spec, "--dir", folder, "--part", "point1-attack"], timeout=60)
    assert refused.returncode == 2 and "has not chosen them yet" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr

    done = run_cli(["study", "run", spec, "--dir", folder], timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    study = StudyFolder(folder)
    plan = study.read_plan()
    assert len(plan["runs"]) == 36 and not plan["awaiting"]
    assert all(is_complete(study.result(r["id"])) for r in plan["runs"])

    # the choice: the grid point with the best mean final validation accuracy, recomputed by hand
    record = json.loads((folder / "tuning.json").read_text())["parts"]["tune"]
    scores = {}
    for r in (r for r in plan["runs"] if r["labels"]["part"] == "tune"):
        with h5py.File(study.result(r["id"]), "r") as f:
            acc = f["metrics/validation_accuracy"][()]
            cfg = json.loads(f.attrs["config"])
        point = (cfg["optimizer"]["lr"], cfg["aggregator"].get("tau"))
        group = (cfg["aggregator"]["name"], cfg["optimizer"]["momentum"])
        scores.setdefault(group, {}).setdefault(point, []).append(acc[-1])
    assert len(record["choices"]) == 4 and set(record["by"]) == {"optimizer.momentum", "aggregator.name"}
    for entry in record["choices"]:
        rule, momentum = entry["group"]["aggregator.name"], entry["group"]["optimizer.momentum"]
        means = {p: sum(v) / len(v) for p, v in scores[(rule, momentum)].items()}
        best = max(means.values())
        chosen = (entry["chosen"]["optimizer.lr"], entry["chosen"].get("aggregator.tau"))
        assert means[chosen] == pytest.approx(best, abs=1e-12)
        # the attacked and clean runs of this rule use exactly the chosen values
        for r in plan["runs"]:
            if r["labels"]["part"] != "tune" and r["labels"]["aggregator.name"] == rule and momentum == 0.9:
                assert r["tuned"] == entry["chosen"]
                with h5py.File(study.result(r["id"]), "r") as f:
                    cfg = json.loads(f.attrs["config"])
                assert cfg["optimizer"]["lr"] == entry["chosen"]["optimizer.lr"]

    # every run of the study ran on one recorded BLAS kernel, and study run now pins it
    runs = plan["runs"]
    pin, _ = pinned_env("tiny-tune", "", runs, study, {})
    with h5py.File(study.result(runs[0]["id"]), "r") as f:
        coretype = coretype_of(json.loads(f.attrs["provenance"])["blas_kernel"])
    if coretype:
        assert pin == {"OPENBLAS_CORETYPE": coretype}
        with pytest.raises(ConfigError, match="OPENBLAS_CORETYPE=Nehalem in the environment"):
            pinned_env("tiny-tune", "", runs, study, {"OPENBLAS_CORETYPE": "Nehalem"})

    report = run_cli(["report", folder, "--out", tmp_path / "report"], timeout=600)
    assert report.returncode == 0, report.stdout + report.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    for needle in ("Tuning", "optimizer.lr", "aggregator.tau", "chosen", "ema", "Convergence",
                   "paired", "Holm", "family of"):
        assert needle in text, needle
    assert (tmp_path / "report" / "figures" / "tuning_sensitivity.png").is_file()
    # centered clipping, per momentum setting: the report says whether the chosen tau made its clean runs
    # averaging's (the same validation accuracy on every seed at the same lr)
    for momentum in (0.0, 0.9):
        cc, avg = (next(e for e in record["choices"] if e["group"] == {"optimizer.momentum": momentum,
                                                                       "aggregator.name": rule})
                   for rule in ("centered-clipping", "average"))
        same_lr = next(e["by_seed"] for e in avg["sensitivity"]
                       if e["point"]["optimizer.lr"] == cc["chosen"]["optimizer.lr"])
        mine = next(e["by_seed"] for e in cc["sensitivity"] if e["point"] == cc["chosen"])
        line = next(line for line in text.splitlines() if line.startswith(f"- centered clipping (momentum {momentum})"))
        assert ("this tau does not clip here" in line) == (mine == same_lr) and ("it clips" in line) == (mine != same_lr)
    # the convergence table: one row per headline cell (each rule's clean cell and worst-case cell), a
    # trend over the last 20% of the 30 steps (evaluations at steps 25, 27, 29), a verdict
    block = text.split("### Convergence", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("| average") or line.startswith("| centered")]
    assert len(rows) == 4 and all(("| yes |" in r) or ("| **no** |" in r) for r in rows), block
    assert "trend over the window" in block and "too few evaluations" not in block
    # point 1's family: centered clipping's cost and payoff against averaging (averaging is the baseline)
    assert "Family of point 1's verdicts: 2 paired comparisons" in text


def test_the_review_spec_is_on_the_protocol():
    """studies/review.toml: a tuning part on the validation split without attack, one choice per rule and
    momentum setting, taken by both point-1 parts; damped momentum; 5 seeds in every point-1 and point-3
    cell, the same for every rule; at least 8 crafted attacks in every attacked point-1 cell, Min-Max and
    Min-Sum among them."""
    from pathlib import Path
    from krum_mpi.analysis.protocol import MIN_ATTACKS, MIN_SEEDS, NUMERIC_ATTACKS

    spec = load_spec(Path(__file__).resolve().parents[1] / "studies" / "review.toml")
    plan = make_plan(spec, check_models=False)
    assert not plan.invalid
    tune = next(p for p in spec.parts if p.tune is not None)
    assert tune.tune.by == ["aggregator.name", "optimizer.momentum"] and "optimizer.lr" in tune.tune.grid
    assert {p.name for p in spec.parts if p.tuned == tune.name} == {"point1-clean", "point1-attack"}
    tuning_runs = [r for r in plan.runs if r.labels["part"] == tune.name]
    assert all(r.config["workers"]["byzantine"] == 0 and r.config["data"]["validation_fraction"] > 0
               for r in tuning_runs)
    assert {r.config["optimizer"]["momentum"] for r in tuning_runs} == {0.0, 0.9}
    point1 = [r for r in plan.awaiting if r.labels["part"].startswith("point1")]
    assert point1 and not [r for r in plan.runs if r.labels["part"].startswith("point1")]
    cells, attacks = {}, {}
    for r in point1:
        cfg = r.config
        assert cfg["optimizer"]["momentum_form"] == "ema" and cfg["data"]["validation_fraction"] > 0
        cell = (r.labels["part"], cfg["aggregator"]["name"], cfg["aggregator"]["f"], cfg["workers"]["byzantine"],
                cfg["attack"]["name"], cfg["optimizer"]["momentum"])
        cells.setdefault(cell, set()).add(cfg["run"]["seed"])
        if cfg["workers"]["byzantine"]:
            attacks.setdefault(cell[1:4] + cell[5:], set()).add(json.dumps(cfg["attack"], sort_keys=True))
    assert len({frozenset(s) for s in cells.values()}) == 1 and len(next(iter(cells.values()))) >= MIN_SEEDS
    for variants in attacks.values():   # an attack with other parameters (ALIE's z) is another attack
        crafted = [json.loads(a) for a in variants if json.loads(a)["name"] not in NUMERIC_ATTACKS]
        assert len(crafted) >= MIN_ATTACKS and {"min-max", "min-sum"} <= {a["name"] for a in crafted}
    point3 = {}
    for r in plan.runs:
        if r.labels["part"].startswith("point3"):
            point3.setdefault(json.dumps({k: v for k, v in r.labels.items() if k != "run.seed"}), set()).add(
                r.config["run"]["seed"])
    assert point3 and min(len(s) for s in point3.values()) >= MIN_SEEDS


def test_a_choice_on_the_edge_of_its_grid_is_named():
    """A chosen value that is the largest or smallest of a numeric grid of >= 3 values may not be the
    best: the study run notes it and the report flags it; an interior choice, a 2-value grid and a
    non-numeric grid are not named."""
    from krum_mpi.study.tuning import at_grid_edge

    def entry(grid, chosen, rule="krum"):
        return {"grid": grid, "choices": [{"group": {"aggregator.name": rule, "optimizer.momentum": 0.0},
                                           "chosen": chosen}]}

    lr = {"optimizer.lr": {"*": [0.02, 0.05, 0.2]}}
    assert at_grid_edge(entry(lr, {"optimizer.lr": 0.05})) == []
    top = at_grid_edge(entry(lr, {"optimizer.lr": 0.2}))
    assert len(top) == 1 and "optimizer.lr = 0.2 is the largest value of its grid (0.02, 0.05, 0.2)" in top[0]
    assert "aggregator.name = krum" in top[0]
    assert "smallest" in at_grid_edge(entry(lr, {"optimizer.lr": 0.02}))[0]
    assert at_grid_edge(entry({"optimizer.lr": {"*": [0.05, 0.2]}}, {"optimizer.lr": 0.2})) == []
    # a per-rule grid: the rule's own values count, not another rule's
    tau = {"aggregator.tau": {"centered-clipping": [1.0, 10.0, 100.0]}}
    both = at_grid_edge(entry({**lr, **tau}, {"optimizer.lr": 0.05, "aggregator.tau": 1.0}, "centered-clipping"))
    assert len(both) == 1 and "aggregator.tau = 1 is the smallest" in both[0]
    assert at_grid_edge(entry({"workers.attack": {"*": ["a", "b", "c"]}}, {"workers.attack": "c"})) == []
