"""The report's section "Byzantine ranks" (analysis/byzantine_ranks_section.py) on a small real study
run by `krum-mpi study run` on 6 ranks: the honest gather, sharded r = 1 and r = 3, rank 2 lying
(lie-distances) under r = 1 and r = 3, parallel.model = 2 honest and with rank 5 corrupting its
group's activations. 14 workers (one sign-flip), Krum f = 5, an MLP 57-16-2, 8 steps, seed 0."""
import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import mpiexec_path, run_cli
from krum_mpi.analysis import byzantine_ranks_section as section
from krum_mpi.analysis.load import load_study
from krum_mpi.analysis.sections import Page
from krum_mpi.analysis.tables import run_summary

pytestmark = [pytest.mark.mpi, pytest.mark.slow]   # 7 runs of 6 ranks: about a minute

SPEC = """
[study]
name = "byzantine-ranks-tiny"
[base.run]
name = "point3-byzantine-ranks"
steps = 8
eval_every = 4
[base.workers]
n = 14
byzantine = 1
batch_size = 3
[base.data]
name = "synthetic"
n_features = 57
n_train = 600
n_test = 200
[base.model]
name = "mlp"
hidden = [16]
[base.aggregator]
name = "krum"
f = 5
[base.attack]
name = "sign-flip"
[launch]
ranks = 6
[sweep]
variant = [{ "aggregator.placement" = "gather" },
           { "aggregator.placement" = "sharded" },
           { "aggregator.placement" = "sharded", "aggregator.replicas" = 3 },
           { "aggregator.placement" = "sharded", "byzantine_ranks.ranks" = [2], "byzantine_ranks.behaviour" = "lie-distances" },
           { "aggregator.placement" = "sharded", "aggregator.replicas" = 3, "byzantine_ranks.ranks" = [2], "byzantine_ranks.behaviour" = "lie-distances" },
           { "parallel.model" = 2 },
           { "parallel.model" = 2, "byzantine_ranks.ranks" = [5], "byzantine_ranks.behaviour" = "corrupt-activations" }]
"run.seed" = [0]
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    if mpiexec_path() is None:
        pytest.skip("no mpiexec found: pip install mpich")
    folder = tmp_path_factory.mktemp("byzantine-ranks-tiny")
    spec = folder / "spec.toml"
    spec.write_text(SPEC)
    done = run_cli(["study", "run", spec, "--local", "--dir", folder / "study"], timeout=600)
    assert done.returncode == 0, done.stderr
    return folder / "study"


@pytest.fixture(scope="module")
def runs(study):
    return run_summary(load_study(study))


def by_variant(frame):
    return {row["variant"]: row for _, row in frame.iterrows()}


def test_takeover_and_defence_from_the_files(runs):
    rows = by_variant(section.compared(section.prepared(runs)))
    assert set(rows) == {"sharded r=1, lie-distances [2]", "sharded r=3, lie-distances [2]",
                         "parallel.model=2, corrupt-activations [5]"}
    alone = rows["sharded r=1, lie-distances [2]"]
    with h5py.File(runs.loc[runs["aggregator.replicas"].eq(1) & runs["byzantine_ranks.behaviour"].eq("lie-distances"),
                            "file"].iloc[0], "r") as h5:
        wanted, selected = h5["byzantine_ranks/wanted"][()][:, 0], h5["selection/selected"][()][:, 0]
    assert alone["wanted_selected"] == int(np.sum(wanted == selected)) == 8   # the rank decided every step
    assert alone["differ_gather"] > 0 and pd.isna(alone["outvoted"])   # no replicas: no vote
    outvoted = rows["sharded r=3, lie-distances [2]"]
    assert outvoted["differ_gather"] == 0 and outvoted["differ_same"] == 0 and outvoted["same_params"]
    assert outvoted["outvoted"] == "rank 2: 8 of 8 steps"
    group = rows["parallel.model=2, corrupt-activations [5]"]
    with h5py.File(runs.loc[runs["byzantine_ranks.behaviour"].eq("corrupt-activations"), "file"].iloc[0], "r") as h5:
        through, selected = h5["selection/byzantine_through_ranks"][()], h5["selection/selected"][()][:, 0]
        only = through & ~h5["selection/byzantine"][()][None, :]
    assert through.shape == (len(selected), only.shape[1])       # recorded per step
    for row in through:                                           # group 2 (ranks 4, 5) hosts workers 10 .. 13
        assert list(np.flatnonzero(row)) == [10, 11, 12, 13]
    assert group["through_selected"] == int(only[np.arange(len(selected)), selected].sum())
    assert pd.isna(group["outvoted"])


def test_the_reader_takes_the_per_step_record_and_the_older_per_run_one():
    once = np.zeros(6, dtype=bool)
    once[4:] = True
    per_step = section._per_step(once, 3)                          # an older file: (n,), the same every step
    assert per_step.shape == (3, 6) and all(list(np.flatnonzero(r)) == [4, 5] for r in per_step)
    steps = np.zeros((3, 6), dtype=bool)
    steps[1, 2] = True
    assert section._per_step(steps, 3) is not None and section._per_step(steps, 3)[1, 2]
    assert section._per_step(None, 3) is None
    # the selected worker counted at the steps where it was Byzantine through a rank, not at the others
    assert list(section._at_selected(steps, np.array([2, 2, 2]))) == [False, True, False]


def test_cost_is_the_files_bytes_and_times(runs):
    s = section.prepared(runs)
    t = section.cost(s).set_index("variant")
    r3 = s[(s["replicas"] == 3) & (s["behaviour"] == "none")].iloc[0]
    with h5py.File(r3["file"], "r") as h5:
        sent = h5["comm/bytes_sent"][()]
    assert t.loc["sharded r=3", "busiest_sent"] == np.median(sent[1:].max(axis=1))
    # each block goes to 3 replicas: the busiest rank sends more than without replicas
    assert t.loc["sharded r=3", "busiest_sent_vs_sharded r=1"] > 1
    assert t.loc["gather", "busiest_sent_vs_gather"] == 1


def test_the_section_renders_and_answers(runs, tmp_path):
    page = Page(fig_dir=tmp_path, figure_formats=("png",))
    answers = section.section(page, runs, tmp_path)
    text = page.rep.markdown(tmp_path)
    assert "### Byzantine ranks" in text and "Without replicas: one lying rank takes over" in text
    assert any(a.startswith("Takeover, sharded r=1, lie-distances [2], no replicas: selections differ")
               for a in answers)
    assert "Defence, sharded r=3, lie-distances [2]: selections equal to the honest gather's at every step in " \
           "1 of 1 seeds; final parameters bitwise those of the honest run in 1 of 1" in " ".join(answers)
    assert any(a.startswith("Price of sharded r=3 at d = 962 on 6 ranks") for a in answers)
    assert any(a.startswith("Krum across model groups, parallel.model=2, corrupt-activations [5]: a worker "
                            "Byzantine only through the lying rank selected at ") for a in answers)
    assert (tmp_path / "point3_byzantine_ranks.csv").exists()
    honest_only = runs[runs["byzantine_ranks.behaviour"].eq("none") & runs["aggregator.replicas"].eq(1)]
    assert section.section(Page(fig_dir=tmp_path, figure_formats=("png",)), honest_only) == []


def test_the_review_report_holds_the_section_under_point_3(study, tmp_path):
    done = run_cli(["report", study, "--out", tmp_path / "report"], timeout=300)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    point_3 = text.index("## 3. Exact Krum on sharded gradients")
    assert text.index("### Byzantine ranks") > point_3
    assert "Defence, sharded r=3, lie-distances [2]: selections equal to the honest gather's at every step" in text
    assert (tmp_path / "report" / "tables" / "point3_byzantine_ranks_timing.csv").exists()
