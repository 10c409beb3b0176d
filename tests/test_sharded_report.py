"""The report's part on placements (analysis/sharded_section.py) on a small real study: krum and
average under gather / sharded / per-shard on 2 ranks, run by `krum-mpi study run`."""
import re

import h5py
import numpy as np
import pytest

from conftest import REPO, mpiexec_path, run_cli
from krum_mpi.analysis import sharded_section
from krum_mpi.analysis.load import load_study
from krum_mpi.analysis.tables import run_summary

pytestmark = [pytest.mark.mpi, pytest.mark.slow]  # slow: minutes (left out of a plain run)

SPEC = """
[study]
name = "sharded-tiny"
[base.run]
name = "tiny"
steps = 12
eval_every = 6
[base.workers]
n = 10
byzantine = 2
batch_size = 3
[base.data]
name = "synthetic"
n_features = 200
n_train = 400
n_test = 200
n_classes = 2
[base.model]
name = "mlp"
hidden = [32]         # 6,498 parameters: the rows outweigh the (n, n) partials
[base.aggregator]
f = 2
sharded_min_d = 0     # the block exchange at this small d too
[base.attack]
name = "shard-target"
blocks = 2
adversary = "omniscient"
[launch]
ranks = 2
[sweep]
"aggregator.placement" = ["gather", "sharded", "per-shard"]
"aggregator.name" = ["krum", "average"]
"run.seed" = [0, 1]
[[exclude]]
"aggregator.name" = "average"
"run.seed" = 1
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    if mpiexec_path() is None:
        pytest.skip("no mpiexec found: pip install mpich")
    folder = tmp_path_factory.mktemp("sharded-tiny")
    spec = folder / "spec.toml"
    spec.write_text(SPEC)
    done = run_cli(["study", "run", spec, "--local", "--dir", folder / "study"], timeout=300)
    assert done.returncode == 0, done.stderr
    return folder / "study"


def test_summary_holds_what_the_files_hold(study):
    summary = run_summary(load_study(study))
    assert len(summary) == 9
    for _, row in summary.iterrows():
        with h5py.File(row["file"], "r") as h5:
            received = h5["comm/bytes_received"][()]
            loss = h5["metrics/loss"][()]
        assert row["busiest_received"] == pytest.approx(received[1:].max(axis=1).mean())
        assert row["mean_received"] == pytest.approx(received[1:].mean())
        assert np.array_equal(np.array(row["losses"]), loss)
    placement = summary["aggregator.placement"]
    assert summary.loc[placement == "per-shard", "byz_block_share"].notna().all()
    assert summary.loc[placement != "per-shard", "byz_block_share"].isna().all()


def test_section_tables(study):
    s = sharded_section.prepared(run_summary(load_study(study)))
    ex = sharded_section.exactness(s)
    sharded = ex[ex["placement"] == "sharded"]
    assert len(sharded) == 3 and sharded["identical"].all()           # krum x2 seeds, average: exact
    assert (sharded["reference"] == "gather, 2 ranks").all()
    # Krum's aggregate is one worker's row: the runs stay bitwise equal (a mean may round otherwise)
    assert sharded[sharded["setting"].str.startswith("krum")]["same_params"].all()
    t = sharded_section.traffic(s)
    krum = t[t["aggregator.name"] == "krum"].set_index("placement")
    # the gather funnels every row into rank 0; sharded spreads them over both ranks
    assert krum.loc["gather", "busiest_received"] > krum.loc["sharded", "busiest_received"]
    assert krum.loc["sharded", "busiest_vs_gather"] < 1 and krum.loc["gather", "busiest_vs_gather"] == 1
    extra = sharded_section.krum_extra(t)
    assert set(extra["placement"]) == {"gather", "sharded", "per-shard"}
    acc = sharded_section.accuracy(s)
    assert len(acc) == 1 and acc["seeds"].iloc[0] == 2      # krum, shard-target: per-shard vs sharded
    row = acc.iloc[0]
    assert row["diff"] == pytest.approx(row["per_shard"] - row["sharded"])
    assert row["verdict"] == sharded_section.verdict(row["diff"], row["diff_ci"])


def test_verdict_and_first_difference():
    assert sharded_section.verdict(-0.05, 0.02) == "per-shard lower"
    assert sharded_section.verdict(0.05, 0.02) == "per-shard higher"
    assert sharded_section.verdict(0.01, 0.02).startswith("cannot decide: the 95% interval")
    assert sharded_section.verdict(0.01, float("nan")).startswith("cannot decide: one seed")
    assert sharded_section.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert sharded_section.first_difference([1, 2, np.nan], [1, 2, np.nan]) is None
    assert sharded_section.first_difference([1, 5, 3], [1, 2, 4]) == 1
    assert sharded_section.first_difference([1, 2], [1, 2, 3]) == 2


def test_report_shows_the_part_only_with_other_placements(study, tmp_path):
    done = run_cli(["report", study, "--out", tmp_path / "all"], timeout=300)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "all" / "report.md").read_text()
    assert "Where the rule runs" in text and "Accuracy: per-shard against exact sharded selection (Krum)" in text
    assert re.search(r"Exactness, sharded: selections identical to the reference at every step in 3 of 3 runs", text)
    assert (tmp_path / "all" / "figures" / "sharded_placements.png").exists()
    gather_only = [p for p in (study / "runs").glob("*.h5")
                   if h5py.File(p, "r").attrs["config"].find('"placement": "gather"') >= 0]
    assert len(gather_only) == 3
    sub = tmp_path / "gather-only"
    sub.mkdir()
    for p in gather_only:
        (sub / p.name).write_bytes(p.read_bytes())
    done = run_cli(["report", sub, "--out", tmp_path / "g"], timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Where the rule runs" not in (tmp_path / "g" / "report.md").read_text()
