"""The protocol's run-side pieces, through real runs (mpiexec) and real results files:

- momentum in the damped form (optimizer.momentum_form = "ema") beside heavy ball, recorded;
- the validation split carved from the training rows, seeded, recorded, evaluated per eval step;
- the paired design: the same seed gives two rules the same minibatches, Byzantine set and
  initial parameters (what paired differences across seeds rest on).
"""
import json

import h5py
import numpy as np
import pytest

from conftest import REPO, run_cli
from krum_mpi import config
from krum_mpi.data import open_dataset
from krum_mpi.errors import ConfigError
from krum_mpi.run.server import momentum_step

SYNTH = REPO / "configs" / "synthetic-krum-f6.toml"
SHORT = ["--set", "run.steps=30", "--set", "run.eval_every=10", "--quiet"]


def run(tmp_path, name, *sets, ranks=2):
    out = tmp_path / f"{name}.h5"
    args = ["run", SYNTH, "--out", out, *SHORT]
    for s in sets:
        args += ["--set", s]
    done = run_cli(args, ranks=ranks, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


# ---- momentum ----------------------------------------------------------------------------------------

def test_momentum_step_forms():
    g = np.array([1.0, -2.0], np.float32)
    m = np.array([4.0, 4.0], np.float32)
    heavy, ema = m.copy(), m.copy()
    momentum_step(heavy, g, 0.9, "heavy-ball")
    momentum_step(ema, g, 0.9, "ema")
    np.testing.assert_allclose(heavy, [4.6, 1.6], rtol=1e-6)            # 0.9 m + g
    np.testing.assert_allclose(ema, [3.7, 3.4], rtol=1e-6)              # 0.9 m + 0.1 g
    steady = np.zeros(2, np.float32)
    for _ in range(400):                                                # constant g: m -> g (ema), g / (1 - beta)
        momentum_step(steady, g, 0.9, "ema")
    np.testing.assert_allclose(steady, g, rtol=1e-4)


@pytest.mark.parametrize("raw, message", [
    ({"optimizer": {"momentum_form": "nesterov"}}, "optimizer.momentum_form"),
    ({"optimizer": {"momentum": 1.0, "momentum_form": "ema"}}, "never moves"),
    ({"data": {"validation_fraction": 1.5}}, "data.validation_fraction"),
])
def test_bad_protocol_keys_are_one_line_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message) as err:
        config.validate(raw)
    assert "\n" not in str(err.value)


def test_new_keys_hold_their_defaults_and_keep_old_run_ids():
    cfg = config.validate({})
    assert cfg["optimizer"]["momentum_form"] == "heavy-ball" and cfg["data"]["validation_fraction"] == 0.0
    from krum_mpi.run.runid import identity
    ident = identity(cfg, config.DEFAULTS)
    assert "momentum_form" not in ident["optimizer"] and "validation_fraction" not in ident["data"]
    changed = config.validate({"optimizer": {"momentum_form": "ema"}})
    assert identity(changed, config.DEFAULTS)["optimizer"]["momentum_form"] == "ema"


@pytest.mark.mpi
@pytest.mark.parametrize("at", ["server", "worker"])
def test_ema_momentum_runs_differ_from_heavy_ball_and_record_the_form(tmp_path, at):
    common = ["optimizer.momentum=0.9", f"optimizer.momentum_at={at}"]
    heavy = run(tmp_path, "heavy", *common)
    ema = run(tmp_path, "ema", *common, 'optimizer.momentum_form="ema"')
    with h5py.File(heavy, "r") as a, h5py.File(ema, "r") as b:
        assert json.loads(b.attrs["config"])["optimizer"]["momentum_form"] == "ema"
        assert json.loads(a.attrs["config"])["optimizer"]["momentum_form"] == "heavy-ball"
        assert not np.array_equal(a["metrics/loss"][1:], b["metrics/loss"][1:])
        np.testing.assert_array_equal(a["metrics/loss"][0], b["metrics/loss"][0])   # same start


# ---- validation split ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, extra", [("synthetic", {"n_train": 1000, "n_test": 100}),
                                         ("spambase", {})])
def test_validation_rows_come_from_training_rows_only_and_are_seeded(name, extra, request):
    if name == "spambase":
        request.getfixturevalue("spambase_file")
    base = open_dataset({"name": name, **extra}, seed=3)
    ds = open_dataset({"name": name, "validation_fraction": 0.25, **extra}, seed=3)
    assert ds.n_validation == round(base.n_train * 0.25) and ds.n_train + ds.n_validation == base.n_train
    assert ds.provenance["validation"]["rows"] == ds.n_validation
    Xv, yv = ds.validation_set()
    Xall, _ = base.read_train(np.arange(base.n_train))
    Xt, _ = ds.read_train(np.arange(ds.n_train))
    kept = np.arange(ds.n_train) if ds.kept is None else ds.kept
    assert not set(kept) & set(ds.validation_rows)                   # disjoint from what workers train on
    assert len(kept) + len(ds.validation_rows) == base.n_train       # together: every training row
    np.testing.assert_array_equal(Xv, Xall[ds.validation_rows])      # carved from the training rows
    np.testing.assert_array_equal(Xt, Xall[kept])
    np.testing.assert_array_equal(ds.test_set()[0], base.test_set()[0])   # the test set is untouched
    again = open_dataset({"name": name, "validation_fraction": 0.25, **extra}, seed=3)
    np.testing.assert_array_equal(again.validation_set()[0], Xv)
    if name == "spambase":    # a permutation: another seed, other rows
        other = open_dataset({"name": name, "validation_fraction": 0.25, **extra}, seed=4)
        assert not np.array_equal(other.validation_set()[1], yv) or not np.array_equal(other.validation_set()[0], Xv)


def test_validation_fraction_that_leaves_nothing_is_one_line():
    from krum_mpi.errors import DataError
    with pytest.raises(DataError, match="validation_fraction = 0.9999 leaves no training"):
        open_dataset({"name": "synthetic", "n_train": 100, "n_test": 10, "validation_fraction": 0.9999})


@pytest.mark.mpi
def test_validation_accuracy_is_recorded_at_every_eval_step(tmp_path):
    out = run(tmp_path, "val", "data.validation_fraction=0.2")
    plain = run(tmp_path, "plain")
    with h5py.File(out, "r") as h5:
        val, test = h5["metrics/validation_accuracy"][()], h5["metrics/test_accuracy"][()]
        np.testing.assert_array_equal(np.isfinite(val), np.isfinite(test))
        assert np.isfinite(val).sum() == 3 and ((val[np.isfinite(val)] >= 0) & (val[np.isfinite(val)] <= 1)).all()
        assert json.loads(h5.attrs["config"])["data"]["validation_fraction"] == 0.2
        prov = json.loads(h5.attrs["provenance"])
        assert prov["blas_kernel"].startswith(("openblas", "mkl", "blis", "flexiblas", "unknown"))
        assert "blas_threads" in prov and "blas_coretype_env" in prov
    with h5py.File(plain, "r") as h5:
        assert "validation_accuracy" not in h5["metrics"]


# ---- the paired design ---------------------------------------------------------------------------

@pytest.mark.mpi
def test_same_seed_gives_two_rules_the_same_batches_byzantine_set_and_start(tmp_path):
    """Paired differences across seeds assume that, for one seed, every rule sees the same data order,
    the same Byzantine workers and the same initial parameters. Checked on real runs: the step-0
    losses (the same minibatches at the same initial parameters) and the Byzantine masks agree; another
    seed changes them."""
    krum = run(tmp_path, "krum", "run.seed=5")
    median = run(tmp_path, "median", "run.seed=5", 'aggregator.name="median"')
    other = run(tmp_path, "other", "run.seed=6", 'aggregator.name="median"')
    with h5py.File(krum, "r") as a, h5py.File(median, "r") as b, h5py.File(other, "r") as c:
        np.testing.assert_array_equal(a["selection/byzantine"][()], b["selection/byzantine"][()])
        assert a["metrics/loss"][0] == b["metrics/loss"][0]
        assert a["metrics/loss"][0] != c["metrics/loss"][0]
        assert not np.array_equal(a["metrics/loss"][1:], b["metrics/loss"][1:])   # the rules do differ


def test_minibatches_and_byzantine_set_depend_on_the_seed_only():
    """The code-level half of the claim: the batch of (seed, worker, step) and the Byzantine mask of
    (n, byzantine, seed) take no argument that names the rule or the attack."""
    from krum_mpi.run.train import byzantine_mask
    ds = open_dataset({"name": "synthetic", "n_train": 500, "n_test": 50}, seed=2)
    a = ds.shard(3, 10).batch(7, 4)
    b = open_dataset({"name": "synthetic", "n_train": 500, "n_test": 50}, seed=2).shard(3, 10).batch(7, 4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(byzantine_mask(20, 6, 1), byzantine_mask(20, 6, 1))
    assert not np.array_equal(byzantine_mask(20, 6, 1), byzantine_mask(20, 6, 2))


# ---- provenance: the BLAS kernel ---------------------------------------------------------------------

def test_blas_kernel_names_library_version_core_type_threads_and_the_forced_core_type():
    from krum_mpi.run.provenance import blas_kernel
    info = [{"internal_api": "openblas", "version": "0.3.31", "architecture": "Haswell", "num_threads": 2},
            {"internal_api": "openmp", "version": None, "num_threads": 2}]
    got = blas_kernel(info, env={"OPENBLAS_CORETYPE": "Haswell"})
    assert got == {"kernel": "openblas 0.3.31 Haswell", "threads": 2, "coretype_env": "Haswell"}
    two = info + [{"internal_api": "mkl", "version": "2024.1", "architecture": None, "num_threads": 4}]
    assert blas_kernel(two, env={}) == {"kernel": "openblas 0.3.31 Haswell + mkl 2024.1 ?", "threads": [2, 4],
                                        "coretype_env": None}
    assert blas_kernel([], env={})["kernel"] == "unknown"
