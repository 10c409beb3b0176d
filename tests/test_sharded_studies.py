"""The sharded studies (studies/sharded-*.toml) plan without invalid runs and render valid job scripts."""
import subprocess

from conftest import REPO
from krum_mpi.study import slurm
from krum_mpi.study.plan import make_plan
from krum_mpi.study.spec import load_spec

SPECS = ("sharded-local", "sharded-scaling")


def _plan(name):
    return make_plan(load_spec(REPO / "studies" / f"{name}.toml"), check_models=False)


def test_cluster_spec_sweeps_ranks_placements_and_model_sizes():
    runs = _plan("sharded-scaling").runs
    ranks = {r.ranks for r in runs}
    assert ranks == {1, 2, 4, 8, 16, 32, 64}
    assert {r.config["aggregator"]["placement"] for r in runs} == {"gather", "sharded", "per-shard"}
    assert {r.config["aggregator"]["name"] for r in runs} == {"average", "krum"}
    widths = {(r.config["data"]["n_features"], tuple(r.config["model"]["hidden"])) for r in runs}
    sizes = sorted(sum(a * b + b for a, b in zip(s, s[1:])) for s in ([f, *h, 10] for f, h in widths))
    assert sizes[0] > 1e6 and 9e7 < sizes[-1] < 1.1e8
    strong = {(r.ranks, r.config["workers"]["n"]) for r in runs if r.config["run"]["name"] == "strong"}
    weak = {(r.ranks, r.config["workers"]["n"]) for r in runs if r.config["run"]["name"] == "weak"}
    assert {n for _, n in strong} == {64} and all(n == 4 * p for p, n in weak) and (64, 256) in weak
    assert {r.config["parallel"]["model"] for r in runs} == {1, 2, 4}
    assert all(r.config["aggregator"]["placement"] == "sharded" and r.ranks % r.config["parallel"]["model"] == 0
               for r in runs if r.config["parallel"]["model"] > 1)


def test_local_spec_has_the_three_parts():
    runs = _plan("sharded-local").runs
    parts = {}
    for r in runs:
        parts.setdefault(r.config["run"]["name"], []).append(r)
    assert {(r.ranks, r.config["aggregator"]["placement"]) for r in parts["exactness"]} == \
        {(p, pl) for p in (1, 2, 4) for pl in ("gather", "sharded", "per-shard")}
    assert {r.config["workers"]["n"] for r in parts["traffic"]} == {16}
    attacks = {r.config["attack"]["name"] for r in parts["accuracy"]}
    assert "shard-target" in attacks and len(attacks) >= 4
    assert {r.config["run"]["seed"] for r in parts["accuracy"]} == {0, 1, 2}


def test_specs_render_valid_bash(tmp_path):
    profile = slurm.load_profile("example-cluster")
    for name in SPECS:
        plan = _plan(name)
        assert plan.invalid == []
        plan_dict = plan.to_dict()
        files, _ = slurm.render(plan_dict, plan_dict["runs"], profile, f"studies/{name}", plan.base_text)
        for file, text in files.items():
            (tmp_path / file).write_text(text)
            assert subprocess.run(["bash", "-n", tmp_path / file]).returncode == 0, f"{name}: {file}"
            assert "@{" not in text
