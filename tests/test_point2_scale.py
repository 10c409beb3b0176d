"""Point 2 at scale: the study file's cells draw what they say (>= 1 epoch of every shard of 1e6 and
1e7 training rows, d >= 1e6, LeNet-5 on the MNIST test images), its comment quotes `study plan`'s
figure, datasets record their training rows, and `study plan` sizes runs on public sets it does not
hold from their published shapes."""
import math
import re
from pathlib import Path

import pytest
from conftest import run_cli

from krum_mpi.data import open_dataset
from krum_mpi.data.catalogue import SHAPES, planned_shape
from krum_mpi.study.plan import core_hours, estimate_seconds, make_plan
from krum_mpi.study.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
SCALE = REPO / "studies" / "point2-scale.toml"


def test_core_hours_three_significant_digits():
    assert core_hours(1.91 * 3600) == "1.91"
    assert core_hours(48.24 * 3600) == "48.2"
    assert core_hours(12_912 * 3600) == "12,900"
    assert core_hours(0.0123 * 3600) == "0.0123"
    assert core_hours(0) == "0"


def test_datasets_record_their_training_rows():
    ds = open_dataset({"name": "synthetic", "n_train": 1_010_101, "validation_fraction": 0.01}, seed=3)
    assert ds.provenance["train_rows"] == ds.n_train == 1_000_000
    assert ds.provenance["validation"]["rows"] == 10_101
    plain = open_dataset({"name": "synthetic", "n_train": 5000}, seed=3)
    assert plain.provenance["train_rows"] == 5000


def test_planned_shape_of_public_sets():
    assert planned_shape({"name": "hdf5", "path": "higgs.h5"}) == ("higgs", 28, 2)
    assert planned_shape({"name": "hdf5", "path": "sets/epsilon.h5"}) == ("epsilon", 2000, 2)
    assert planned_shape({"name": "mnist", "path": "mnist-t10k"}) == ("mnist", 784, 10)
    assert planned_shape({"name": "hdf5", "path": "mine.h5"}) is None
    assert planned_shape({"name": "synthetic"}) is None
    assert all(p > 0 and c >= 2 for _, p, c in SHAPES.values())


def test_the_catalogue_names_the_files_the_download_hints_write():
    from krum_mpi.data.download import DATASETS

    for name, (converted, _, _) in SHAPES.items():
        assert name in DATASETS
        if converted:   # `data download NAME` ends by printing the convert command that writes this file
            assert converted in DATASETS[name].convert_hint.split()


def test_plan_sizes_a_public_set_that_is_not_here(tmp_path, monkeypatch):
    monkeypatch.setenv("KRUM_MPI_DATA", str(tmp_path / "empty"))
    spec = tmp_path / "s.toml"
    spec.write_text('[study]\nname = "s"\n[base.run]\nsteps = 100\n[base.data]\nname = "hdf5"\n'
                    '[base.model]\nname = "mlp"\nhidden = [10]\n[launch]\nranks = 2\n'
                    '[sweep]\n"data.path" = ["higgs.h5", "mine.h5"]\n')
    plan = make_plan(load_spec(spec))
    sized = {r.config["data"]["path"]: r.n_params for r in plan.runs}
    assert sized == {"higgs.h5": 28 * 10 + 10 + 10 * 2 + 2, "mine.h5": None}
    assert any("published shape of higgs (28 features, 2 classes)" in n for n in plan.notes)
    assert any("'hdf5' not readable here" in n and "not checked" in n for n in plan.notes)
    out = run_cli(["study", "plan", spec], timeout=60, env={"KRUM_MPI_DATA": str(tmp_path / "empty")})
    assert out.returncode == 0, out.stderr
    assert "for the 1 runs estimated (1 not)" in out.stdout


@pytest.fixture(scope="module")
def scale_plan():
    return make_plan(load_spec(SCALE))


def _part(plan, name):
    return [r for r in plan.runs if r.labels.get("part") == name]


def _train_rows(run):
    return open_dataset(run.config["data"], seed=run.config["run"]["seed"]).n_train


def test_scale_cells_draw_an_epoch_of_every_shard(scale_plan):
    runs = _part(scale_plan, "point2-scale-samples") + _part(scale_plan, "point2-scale-model")
    sizes = set()
    for run in runs:
        rows, n = _train_rows(run), run.config["workers"]["n"]
        b, steps = run.config["workers"]["batch_size"], run.config["run"]["steps"]
        assert b >= 32
        assert steps * b >= math.ceil(rows / n), (run.labels, rows, steps)      # every worker: one epoch
        assert steps * b <= 4 * math.ceil(rows / n)     # a few epochs at most: the set's size still acts
        sizes.add(rows)
        # the convergence criterion needs >= 3 evaluations in the last 20% of the steps
        assert 0.2 * steps / run.config["run"]["eval_every"] >= 3
    assert sizes == {1_000_000, 10_000_000}
    model = _part(scale_plan, "point2-scale-model")
    assert model and min(r.n_params for r in model) >= 1_000_000


def test_scale_zoo_is_lenet5_on_mnist_split_three_ways(scale_plan, mnist_dir):
    zoo = _part(scale_plan, "point2-scale-zoo")
    assert zoo and {r.config["model"]["name"] for r in zoo} == {"lenet5"}
    ds = open_dataset(zoo[0].config["data"], seed=0)
    assert ds.name == "mnist" and ds.n_validation > 0 and ds.n_test > 0
    assert ds.n_train + ds.n_validation + ds.n_test == 10_000
    assert "TEST images" in ds.provenance["split"]


def test_scale_comment_and_docs_quote_the_plan(scale_plan):
    # the LeNet-5 cell is sized by counting its forward flops with torch; without it the plan says
    # those runs are not estimated, and the quoted figure (made with torch) cannot be recomputed
    pytest.importorskip("torch", reason="sizing the LeNet-5 cell needs PyTorch: pip install -e '.[torch]'")
    total = sum(estimate_seconds(r) * r.ranks for r in scale_plan.runs)
    head = SCALE.read_text().split("[study]")[0]
    quoted = re.search(r"(\d+) runs, ~([\d.,]+) core-hours", head)
    assert quoted, "the comment of point2-scale.toml states its runs and core-hours"
    assert (int(quoted.group(1)), quoted.group(2)) == (len(scale_plan.runs), core_hours(total))
    row = next(line for line in (REPO / "docs" / "studies.md").read_text().splitlines()
               if line.startswith("| `studies/point2-scale`"))
    assert f"| {len(scale_plan.runs)} | {core_hours(total)} core-h |" in row


@pytest.mark.slow
def test_cluster_docs_quote_the_plan():
    """The spec's comment, docs/studies.md and docs/review/README.md give review-cluster.toml's runs and
    core-hours as `krum-mpi study plan` prints them (about a minute: 7,595 runs are checked)."""
    pytest.importorskip("torch", reason="sizing the zoo cells (LeNet-5, ResNet-20) needs PyTorch: "
                                         "pip install -e '.[torch]'")
    plan = make_plan(load_spec(REPO / "studies" / "review-cluster.toml"))
    known = [(estimate_seconds(r), r.ranks) for r in plan.runs]
    assert all(s is not None for s, _ in known), "every cluster run is sized (public sets by their shape)"
    hours = core_hours(sum(s * k for s, k in known))
    runs = f"{len(plan.runs):,}"
    row = next(line for line in (REPO / "docs" / "studies.md").read_text().splitlines()
               if line.startswith("| `studies/review-cluster`"))
    assert f"| {runs} | {hours} core-h |" in row
    head = (REPO / "studies" / "review-cluster.toml").read_text().split("[study]")[0]
    assert f"# {runs} runs, ~{hours} core-hours" in head
    review = (REPO / "docs" / "review" / "README.md").read_text()
    assert f"{runs} runs, {hours} core-hours" in " ".join(review.split())


def test_plan_counts_the_flops_of_convolutions():
    """A convolution reuses its weights at every position: the cost model counts LeNet-5's forward
    flops (torch's counter) instead of 2 d, so a LeNet-5 step is estimated dearer than an MLP's of
    the same d (the 2 d of dense layers stays as it was)."""
    pytest.importorskip("torch")
    from krum_mpi import models
    from krum_mpi.study.plan import forward_flops

    lenet = models.make({"name": "lenet5"}, 784, 10)
    # conv1 6x(1x5x5)x28x28, conv2 16x(6x5x5)x10x10, fc 400x120, 120x84, 84x10 multiply-adds (x2)
    macs = 6 * 25 * 28 * 28 + 16 * 150 * 10 * 10 + 400 * 120 + 120 * 84 + 84 * 10
    assert forward_flops(lenet) == pytest.approx(2 * macs, rel=0.01)
    assert forward_flops(models.make({"name": "mlp", "hidden": [20]}, 20, 2)) is None


def test_a_conv_run_is_estimated_dearer_than_an_mlp_of_its_size(tmp_path):
    pytest.importorskip("torch")
    spec = tmp_path / "s.toml"
    spec.write_text('[study]\nname = "s"\n[base.run]\nsteps = 100\n[base.data]\nname = "synthetic"\n'
                    'n_features = 784\nn_classes = 10\n[launch]\nranks = 2\n[sweep]\n'
                    'model = [{ "model.name" = "lenet5" }, { "model.name" = "mlp", "model.hidden" = [78] }]\n')
    plan = make_plan(load_spec(spec))
    by = {r.config["model"]["name"]: r for r in plan.runs}
    assert abs(by["lenet5"].n_params - by["mlp"].n_params) < 0.05 * by["mlp"].n_params
    assert by["mlp"].flops is None and by["lenet5"].flops > 10 * by["lenet5"].n_params
    assert estimate_seconds(by["lenet5"]) > 2 * estimate_seconds(by["mlp"])
