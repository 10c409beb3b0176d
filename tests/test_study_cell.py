"""One cell of a study: ``krum-mpi run --from-study SPEC --cell KEY=VALUE`` runs exactly the config
that ``krum-mpi study run`` would run for that cell."""
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli
from krum_mpi.run import results
from krum_mpi.errors import ConfigError
from krum_mpi.study.cell import cell_config
from krum_mpi.study.plan import make_plan
from krum_mpi.study.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
ATTACKS = REPO / "jobs" / "attack-table.toml"
ALIE = {"name": "alie", "adversary": "omniscient", "z_formula": "paper"}   # as the former preset
SPEC = """
[study]
name = "cells"
[base.run]
steps = 4
eval_every = 2
[base.workers]
n = 6
[base.data]
name = "synthetic"
n_train = 600
n_test = 100
n_features = 8
[base.model]
name = "logistic"
[launch]
ranks = 2
[sweep]
"aggregator.name" = ["average", "krum"]
attack = [{ "attack.name" = "none", "workers.byzantine" = 0 },
          { "attack.name" = "gaussian", "workers.byzantine" = 1, "attack.sigma" = 5.0 }]
"run.seed" = [0, 1]
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "cells.toml"
    path.write_text(textwrap.dedent(SPEC))
    return path


def test_a_cell_is_the_plans_run_with_the_overrides_on_top(spec):
    cfg, run = cell_config(spec, ["aggregator.name=krum", "attack.name=gaussian", "run.seed=1"])
    planned = {r.id: r for r in make_plan(load_spec(spec), check_models=False).runs}[run.id]
    assert cfg == planned.config
    assert cfg["attack"]["sigma"] == 5.0 and cfg["workers"]["byzantine"] == 1 and cfg["run"]["seed"] == 1
    assert cell_config(spec, [run.id])[0] == planned.config
    shorter, _ = cell_config(spec, [run.id], ["run.steps=2"])
    assert shorter["run"]["steps"] == 2 and {**shorter, "run": cfg["run"]} == cfg


@pytest.mark.parametrize("cells, message", [
    ([], "say which cell with --cell"),
    (["optimizer.lr=0.1"], "optimizer.lr is not swept in this study: select by aggregator.name, attack.name"),
    (["aggregator.name=median"], "no run has aggregator.name=median"),
    (["aggregator.name=krum", "attack.name=none"], "2 runs have aggregator.name=krum attack.name=none: "
                                                   "add --cell for run.seed"),
    (["0123456789"], "no run has id '0123456789'"),
])
def test_a_cell_that_is_not_one_run_is_a_one_line_error(spec, cells, message):
    with pytest.raises(ConfigError, match=message) as caught:
        cell_config(spec, cells)
    assert "\n" not in str(caught.value)


def test_every_attack_of_the_table_is_a_cell_for_average_krum_and_multi_krum():
    plan = make_plan(load_spec(ATTACKS), check_models=False)
    cells = {(r.labels["attack.name"], r.labels["aggregator.name"]) for r in plan.runs}
    invalid = set(plan.invalid)
    attacks = ("none", "gaussian", "omniscient", "sign-flip", "label-flip", "alie", "alie-opt", "ipm", "ipm-opt",
               "mimic", "nan", "inf", "zero")
    assert cells >= {(a, r) for a in attacks for r in ("average", "krum", "multi-krum")}
    blind = {r for a, r in cells if a == "blind"} | {line.split("aggregator.name=")[1].split()[0]
                                                     for line in invalid if "attack.name=blind" in line}
    assert blind == {"average", "krum", "multi-krum", "median", "trimmed-mean", "meamed", "geometric-median",
                     "centered-clipping", "mda", "bulyan", "nnm+krum", "nnm+average", "nnm+trimmed-mean"}
    alie = next(r for r in plan.runs if r.labels["attack.name"] == "alie" and r.labels["aggregator.name"] == "krum")
    assert alie.config["attack"] == ALIE
    none = next(r for r in plan.runs if r.labels["attack.name"] == "none")
    assert none.config["workers"]["byzantine"] == 0 and none.config["aggregator"]["f"] == 6


@pytest.mark.mpi
def test_run_from_study_runs_the_cell_under_mpiexec(spec, tmp_path, mpiexec):
    out = tmp_path / "cell.h5"
    proc = run_cli(["run", "--from-study", spec, "--cell", "aggregator.name=krum", "--cell", "attack.name=gaussian",
                    "--cell", "run.seed=0", "--out", out], ranks=2, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "cell " in proc.stdout and "(the study runs it on 2 ranks)" in proc.stdout
    run = results.read_run(out)
    expected, _ = cell_config(spec, ["aggregator.name=krum", "attack.name=gaussian", "run.seed=0"])
    assert run["attrs"]["status"] == "complete" and run["attrs"]["config"] == expected
    bad = run_cli(["run", "--from-study", spec, "--cell", "aggregator.name=median", "--out", tmp_path / "x.h5"],
                  ranks=2, timeout=180)
    assert bad.returncode == 2 and bad.stderr.count("krum-mpi: error: ") == 1
    assert not (tmp_path / "x.h5").exists()
