"""Byzantine ranks in the sharded aggregation under real ``mpiexec`` (docs/sharded.md "Byzantine ranks").

The acceptance runs (slow): 6 ranks, synthetic data, n = 20, Krum with f = 4, an MLP 57-300-300-2
(108,302 parameters), 60 steps, placement sharded, rank 2 Byzantine. Without replicas a
lie-distances rank decides every selection (Krum selects the worker it wanted, which the results
record) and a corrupt-block rank changes the parameters everyone applies; with 3 replicas the
selections are the honest run's at every step, the final parameters bitwise equal to it, and
rank 2's outvoted values are recorded, no other rank's. A run with replicas and a lying rank, and
one with a corrupt-block rank and no replicas, resume after SIGTERM bitwise.

The quick test (default run): the same on 3 ranks (one block, three replicas), 6 steps, a small MLP.
"""
import h5py
import numpy as np
import pytest

from conftest import mpiexec_path, run_cli, sigterm_after_steps

pytestmark = pytest.mark.mpi

CONFIG = """
[run]
steps = {steps}
seed = 0
eval_every = 20
[workers]
n = 20
batch_size = 3
[data]
name = "synthetic"
n_features = 57
n_train = 3680
n_test = 921
[model]
name = "mlp"
hidden = {hidden}
[optimizer]
lr = 0.1
[aggregator]
name = "krum"
f = 4
placement = "sharded"
"""
BIG = (60, "[300, 300]")    # 57*300 + 300 + 300*300 + 300 + 300*2 + 2 = 108,302 parameters


def byzantine(behaviour, rank=2):
    return ["--set", f"byzantine_ranks.ranks=[{rank}]", "--set", f"byzantine_ranks.behaviour={behaviour}"]


def replicas(r):
    return ["--set", f"aggregator.replicas={r}"]


def run(folder, name, extra, ranks, size=BIG):
    if mpiexec_path() is None:
        pytest.skip("no mpiexec found: pip install mpich")
    config = folder / "byz.toml"
    config.write_text(CONFIG.format(steps=size[0], hidden=size[1]))
    path = folder / f"{name}.h5"
    done = run_cli(["run", config, "--out", path, "--quiet", *extra], ranks=ranks, timeout=600)
    assert done.returncode == 0, done.stderr
    with h5py.File(path) as h5:
        assert h5.attrs["status"] == "complete"
        out = {"selected": h5["selection/selected"][()].ravel(), "params": h5["checkpoint/params"][()].tobytes(),
               "block_of_rank": h5.attrs.get("replica_block_of_rank")}
        for name in ("replicas/outvoted", "byzantine_ranks/wanted"):
            out[name] = h5[name][()] if name in h5 else None
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("byzsharded")
    plan = {"honest1": [], "honest3": replicas(3)}
    for behaviour in ("lie-distances", "corrupt-block"):
        for r in (1, 3):
            plan[f"{behaviour}{r}"] = byzantine(behaviour) + replicas(r)
    return {name: run(folder, name, extra, 6) for name, extra in plan.items()}


@pytest.mark.slow
@pytest.mark.parametrize("behaviour", ["lie-distances", "corrupt-block"])
def test_without_replicas_one_rank_takes_over_silently(runs, behaviour):
    honest, lying = runs["honest1"], runs[f"{behaviour}1"]
    differ = lying["selected"] != honest["selected"]
    assert differ.any() and lying["params"] != honest["params"]
    assert lying["replicas/outvoted"] is None          # r = 1: nobody to compare with, nothing detected
    if behaviour == "lie-distances":                   # the evidence: Krum selected what rank 2 wanted
        wanted = lying["byzantine_ranks/wanted"].ravel()
        assert np.array_equal(lying["selected"], wanted), "the lie did not decide every selection"
        assert differ.sum() >= 30


@pytest.mark.slow
@pytest.mark.parametrize("behaviour", ["lie-distances", "corrupt-block"])
def test_three_replicas_outvote_the_rank_at_every_step(runs, behaviour):
    honest, lying = runs["honest3"], runs[f"{behaviour}3"]
    assert np.array_equal(lying["selected"], honest["selected"])
    assert lying["params"] == honest["params"], "final parameters differ from the honest run with r = 3"
    outvoted = lying["replicas/outvoted"]
    assert outvoted.shape == (60, 6) and list(lying["block_of_rank"]) == [0, 1, 0, 1, 0, 1]
    assert (np.delete(outvoted, 2, axis=1) == 0).all()     # only rank 2 (block 0) was ever outvoted
    assert (outvoted[:, 2] > 0).sum() >= 50                 # ... at (nearly) every step
    assert (honest["replicas/outvoted"] == 0).all()
    assert runs["honest3"]["params"] == runs["honest1"]["params"]   # exact Krum: the split changes nothing


def final(path):
    with h5py.File(path) as h5:
        assert h5.attrs["status"] == "complete"
        rows = (h5["selection/selected"][()].tobytes(), h5["metrics/loss"][()].tobytes())
        evidence = h5["replicas/outvoted"][()] if "replicas/outvoted" in h5 else None
        return rows, evidence, int(h5["checkpoint"].attrs["step"]), h5["checkpoint/params"][()].tobytes()


@pytest.mark.slow
@pytest.mark.parametrize("extra", [byzantine("lie-distances") + replicas(3), byzantine("corrupt-block")],
                         ids=["lie-distances-r3", "corrupt-block-r1"])
def test_resume_after_sigterm_is_bitwise_the_uninterrupted_run(tmp_path, extra):
    """The lie's target and the block's noise are keyed on (seed, rank, step): a resume draws the same."""
    if mpiexec_path() is None:
        pytest.skip("no mpiexec found: pip install mpich")
    config = tmp_path / "byz.toml"
    config.write_text(CONFIG.format(steps=30, hidden="[300, 300]"))
    args = [*extra, "--set", "run.checkpoint_every=5", "--quiet"]
    ref = tmp_path / "ref.h5"
    done = run_cli(["run", config, "--out", ref, *args], ranks=6, timeout=600)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "term.h5"
    code, err = sigterm_after_steps([config, "--out", out, *args], out, 8, ranks=6)
    assert code == 3, err
    with h5py.File(out) as h5:
        assert h5.attrs["status"] == "interrupted" and 8 <= h5.attrs["steps_done"] < 30
        resumed_at = int(h5.attrs["steps_done"])
    resumed = run_cli(["run", config, "--out", out, "--resume", *args], ranks=6, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    (want_rows, want_evidence, want_step, want_body), (rows, evidence, step, body) = final(ref), final(out)
    assert rows == want_rows and step == want_step == 29 and body == want_body
    if want_evidence is not None:   # the steps the resumed process ran: the same evidence
        assert np.array_equal(evidence[resumed_at:], want_evidence[resumed_at:])
        assert (evidence[resumed_at:, 2] > 0).all()


def test_quick_three_replicas_of_one_block_outvote_a_lying_rank(tmp_path):
    """Default run: 3 ranks hold the one block; rank 2 lies. Alone (no replicas, 3 blocks) it decides."""
    small = (6, "[20, 20]")
    honest = run(tmp_path, "honest", replicas(3), 3, small)
    lying = run(tmp_path, "lying", byzantine("lie-distances") + replicas(3), 3, small)
    alone = run(tmp_path, "alone", byzantine("lie-distances"), 3, small)
    assert np.array_equal(lying["selected"], honest["selected"]) and lying["params"] == honest["params"]
    assert (lying["replicas/outvoted"][:, :2] == 0).all() and (lying["replicas/outvoted"][:, 2] > 0).all()
    assert np.array_equal(alone["selected"], alone["byzantine_ranks/wanted"].ravel())
    assert not np.array_equal(alone["selected"], honest["selected"])


@pytest.mark.slow
def test_replicas_that_do_not_divide_the_ranks_outvote_a_lying_rank(tmp_path):
    """4 ranks, replicas = 3: one block on all four ranks (the rank left over joins it); rank 3 lies."""
    small = (6, "[20, 20]")
    honest = run(tmp_path, "honest", replicas(3), 4, small)
    lying = run(tmp_path, "lying", byzantine("corrupt-block", rank=3) + replicas(3), 4, small)
    assert list(lying["block_of_rank"]) == [0, 0, 0, 0]
    assert np.array_equal(lying["selected"], honest["selected"]) and lying["params"] == honest["params"]
    assert (lying["replicas/outvoted"][:, :3] == 0).all() and (lying["replicas/outvoted"][:, 3] > 0).all()
