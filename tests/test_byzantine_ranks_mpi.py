"""A Byzantine rank under real ``mpiexec -n 6`` (parallel.model = 2: three model groups hosting 7, 7
and 6 of 20 workers): rank 5 corrupts the activations and partial gradients it sends in group 2, so
the 6 workers that group hosts are Byzantine. They are recorded, Krum (f = 6) never selects them,
and the accuracy stays within the honest runs' interval, over seeds 0, 1, 2 (60 steps each). A run
with the lying rank resumes after SIGTERM bitwise, its per-step record of those workers included."""
import h5py
import numpy as np
import pytest

from conftest import REPO, checkpoint_header, mpiexec_path, run_cli, sigterm_after_steps
from krum_mpi.run import checkpoint

pytestmark = pytest.mark.mpi
SEEDS = (0, 1, 2)
HOSTED = list(range(14, 20))   # block_counts(20, 3) = [7, 7, 6]: group 2 (ranks 4, 5) hosts workers 14..19
COMMON = ["--set", "run.steps=60", "--set", "run.eval_every=20", "--set", "attack.name=none",
          "--set", "workers.byzantine=0", "--set", "aggregator.f=6", "--set", "parallel.model=2", "--quiet"]
LYING = ["--set", "byzantine_ranks.ranks=[5]", "--set", "byzantine_ranks.behaviour=corrupt-activations"]
T_95_2DOF = 4.303   # Student's t, 95% two-sided, 2 degrees of freedom (3 seeds)


def preset_without_sigma(folder):
    """The Krum f = 6 preset without its Gaussian attack's sigma (these runs have no attack)."""
    config = folder / "synthetic-krum-f6.toml"
    preset = (REPO / "configs" / "synthetic-krum-f6.toml").read_text().splitlines()
    config.write_text("\n".join(line for line in preset if not line.startswith("sigma")))
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if mpiexec_path() is None:
        pytest.skip("no mpiexec found: pip install mpich")
    folder = tmp_path_factory.mktemp("byzranks")
    config = preset_without_sigma(folder)
    out = {}
    for kind, extra in (("honest", []), ("lying", LYING)):
        for seed in SEEDS:
            path = folder / f"{kind}{seed}.h5"
            done = run_cli(["run", config, "--out", path, *COMMON, *extra, "--set", f"run.seed={seed}"], ranks=6)
            assert done.returncode == 0, done.stderr
            with h5py.File(path) as h5:
                assert h5.attrs["status"] == "complete"
                out[kind, seed] = {"selected": h5["selection/selected"][()].ravel(),
                                   "accuracy": h5["metrics/test_accuracy"][()][-1],
                                   "through": h5["selection"].get("byzantine_through_ranks"),
                                   "byzantine": h5["selection/byzantine"][()]}
                if out[kind, seed]["through"] is not None:
                    out[kind, seed]["through"] = out[kind, seed]["through"][()]
    return out


def test_the_hosted_workers_are_recorded_as_byzantine_through_the_rank(runs):
    for seed in SEEDS:
        through = runs["lying", seed]["through"]
        assert through.shape == (60, 20)                          # one row per step
        assert all(list(np.flatnonzero(row)) == HOSTED for row in through)
        assert not runs["lying", seed]["byzantine"].any()        # no Byzantine worker was declared
        assert runs["honest", seed]["through"] is None           # no Byzantine rank: no dataset


def test_krum_never_selects_the_hosted_workers(runs):
    for seed in SEEDS:
        assert not np.isin(runs["lying", seed]["selected"], HOSTED).any(), f"seed {seed}: a hosted worker selected"
    # the check can fail: without the lying rank Krum does select those workers
    assert sum(np.isin(runs["honest", seed]["selected"], HOSTED).sum() for seed in SEEDS) > 0


def test_accuracy_stays_within_the_honest_interval(runs):
    honest = np.array([runs["honest", seed]["accuracy"] for seed in SEEDS])
    lying = np.array([runs["lying", seed]["accuracy"] for seed in SEEDS])
    half = T_95_2DOF * honest.std(ddof=1) / np.sqrt(len(SEEDS))
    assert np.isfinite(lying).all()
    assert honest.mean() - half <= lying.mean() <= honest.mean() + half, (honest, lying)


def _final(path):
    with h5py.File(path) as h5:
        assert h5.attrs["status"] == "complete"
        rows = (h5["selection/selected"][()], h5["metrics/loss"][()], h5["selection/byzantine_through_ranks"][()])
    raw, _, header = checkpoint_header(checkpoint.path_for(path))
    return rows, header["step"], raw[min(e["offset"] for e in header["arrays"]):]


def test_resume_after_sigterm_with_a_lying_rank_is_bitwise_the_uninterrupted_run(tmp_path):
    """The corruption's noise is keyed on (seed, rank, step, worker, message): a resume draws the same."""
    if mpiexec_path() is None:
        pytest.skip("no mpiexec found: pip install mpich")
    config = preset_without_sigma(tmp_path)
    args = [*COMMON, *LYING, "--set", "run.steps=40", "--set", "run.checkpoint_every=5"]
    ref = tmp_path / "ref.h5"
    done = run_cli(["run", config, "--out", ref, *args], ranks=6)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "term.h5"
    code, err = sigterm_after_steps([config, "--out", out, *args], out, 10, ranks=6)
    assert code == 3, err
    with h5py.File(out) as h5:
        assert h5.attrs["status"] == "interrupted" and 10 <= h5.attrs["steps_done"] < 40
    resumed = run_cli(["run", config, "--out", out, "--resume", *args], ranks=6)
    assert resumed.returncode == 0, resumed.stderr
    (want_sel, want_loss, want_hosted), want_step, want_body = _final(ref)
    (sel, loss, hosted), step, body = _final(out)
    assert hosted.shape == (40, 20) and hosted.tobytes() == want_hosted.tobytes()   # per step, kept by the resume
    assert all(list(np.flatnonzero(row)) == HOSTED for row in hosted)
    assert np.array_equal(sel, want_sel) and loss.tobytes() == want_loss.tobytes()
    assert step == want_step == 39 and body == want_body, "resumed shards differ from the uninterrupted run"
