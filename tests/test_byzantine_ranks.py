"""Byzantine ranks in one process: the one-line refusals of [byzantine_ranks] (config and world
checks), the hosted workers a Byzantine rank makes Byzantine, the f check, the run id kept at the
defaults, and the corruption itself (seeded, and only while a worker's gradient is computed)."""
import numpy as np
import pytest

from krum_mpi import config, models
from krum_mpi.errors import ConfigError
from krum_mpi.parallel import byzantine_ranks
from krum_mpi.parallel.model_parallel import Grid, SplitMLP

# n = 20 workers, Krum with f = 6, no Byzantine worker: only Byzantine ranks
BASE = ["workers.n=20", "aggregator.name=krum", "aggregator.f=6", "parallel.model=2",
        "byzantine_ranks.behaviour=corrupt-activations"]


def cfg_with(*overrides):
    return config.load(None, [*BASE, *overrides])


@pytest.mark.parametrize("overrides, message", [
    (["byzantine_ranks.ranks=[0, 3]"], "rank 0 must be trusted (it holds the server, the results file"),
    (["byzantine_ranks.ranks=[3, 3]"], "names a rank twice"),
    (["byzantine_ranks.ranks=[-1]"], "holds a negative rank"),
    (["byzantine_ranks.ranks=[2.5]"], "must be a list of MPI ranks"),
    (["byzantine_ranks.ranks=2"], "must be a list of MPI ranks"),
    (["byzantine_ranks.ranks=[]"], "byzantine_ranks.ranks is empty"),
    (["byzantine_ranks.ranks=[3]", "byzantine_ranks.behaviour=none"], "but byzantine_ranks.behaviour = 'none'"),
    (["byzantine_ranks.ranks=[3]", "byzantine_ranks.behaviour=bogus"], "is not one of"),
    (["byzantine_ranks.ranks=[3]", "byzantine_ranks.sigma=-1"], "byzantine_ranks.sigma = -1.0 must be >= 0.0"),
    (["byzantine_ranks.ranks=[3]", "parallel.model=1"], "corrupt-activations' corrupts the sums inside a model "
                                                        "group: it needs parallel.model >= 2"),
    (["byzantine_ranks.ranks=[3]", "parallel.model=1", "byzantine_ranks.behaviour=lie-distances"],
     "needs aggregator.placement = 'sharded', not 'gather'"),
    (["byzantine_ranks.ranks=[3]", "byzantine_ranks.behaviour=lie-distances"],
     "'lie-distances' lies in the sharded aggregation of whole rows, which parallel.model = 2 does not run"),
    (["byzantine_ranks.ranks=[3]", "parallel.model=1", "aggregator.placement=per-shard",
      "byzantine_ranks.behaviour=corrupt-block"], "needs aggregator.placement = 'sharded', not 'per-shard'"),
    (["byzantine_ranks.ranks=[3]", "parallel.model=1", "aggregator.placement=sharded", "aggregator.name=median",
      "byzantine_ranks.behaviour=lie-distances"], "falsifies pairwise distances, which aggregator.name = 'median' "
                                                  "never reads"),
    (["parallel.model=1", "aggregator.placement=sharded", "aggregator.replicas=2"], "must be odd"),
    (["parallel.model=1", "aggregator.placement=sharded", "aggregator.replicas=0"], "must be >= 1"),
    (["parallel.model=1", "aggregator.replicas=3"], "replicates the coordinate blocks of aggregator.placement = "
                                                    "'sharded', not 'gather'"),
    (["aggregator.replicas=3", "byzantine_ranks.ranks=[3]"], "replicated model groups are not built"),
])
def test_what_a_placement_cannot_express_is_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as caught:
        cfg_with(*overrides)
    text = str(caught.value)
    assert message in text and "\n" not in text


def test_defaults_keep_the_run_id_and_the_section_is_accepted():
    plain = config.load_config(None, ["workers.n=20", "aggregator.name=krum", "aggregator.f=6"])
    assert plain["byzantine_ranks"] == {"ranks": [], "behaviour": "none", "scale": -4.0, "sigma": 1.0}
    assert plain["aggregator"]["replicas"] == 1 and "replicas" not in config.identity(plain)["aggregator"]
    assert "byzantine_ranks" not in config.identity(plain)   # run ids of existing runs unchanged
    cfg = cfg_with("byzantine_ranks.ranks=[5]")
    assert cfg.byzantine_ranks.ranks == (5,) and cfg.aggregator.placement == "sharded"
    assert config.run_id(cfg) != config.run_id(cfg_with("byzantine_ranks.ranks=[4]"))


def grid_for(rank, ranks=6, p=2, n=20):
    return Grid(p, n, ranks, rank, models.Model("mlp", [57, 20, 20, 2], binary=False))


def test_hosted_workers_are_the_groups_and_count_against_f():
    cfg = cfg_with("byzantine_ranks.ranks=[5]")                  # 6 ranks, p = 2: groups host 7, 7, 6 workers
    hosted = byzantine_ranks.hosted_workers(cfg, 6, grid_for(0))
    assert list(np.flatnonzero(hosted)) == list(range(14, 20))  # group 2 = ranks 4, 5
    byzantine_ranks.check_f(cfg, np.zeros(20, dtype=bool), hosted)   # 6 <= f = 6
    overlapping = np.zeros(20, dtype=bool)
    overlapping[[15, 16]] = True                                 # already Byzantine: counted once
    byzantine_ranks.check_f(cfg, overlapping, hosted)
    overlapping[3] = True                                        # one more: 7 > f
    with pytest.raises(ConfigError, match="host 6 workers, which become Byzantine; with workers.byzantine that "
                                          "makes 7 Byzantine workers, more than aggregator.f = 6"):
        byzantine_ranks.check_f(cfg, overlapping, hosted)
    both = byzantine_ranks.hosted_workers(cfg_with("byzantine_ranks.ranks=[3, 4]"), 6, grid_for(0))
    assert both.sum() == 13


@pytest.mark.parametrize("world, overrides, message", [
    (6, ["byzantine_ranks.ranks=[6]"], "rank 6 does not exist in a run of 6 ranks (0 .. 5)"),
    (2, ["aggregator.replicas=3"], "aggregator.replicas = 3 on 2 ranks: every coordinate block needs 3 ranks: "
                                   "launch at least 3 ranks"),
])
def test_a_world_the_replicas_or_ranks_do_not_fit_is_refused(world, overrides, message):
    cfg = config.load(None, ["workers.n=20", "aggregator.name=krum", "aggregator.f=4",
                             "aggregator.placement=sharded", "byzantine_ranks.behaviour=corrupt-block",
                             "byzantine_ranks.ranks=[2]", *overrides])
    with pytest.raises(ConfigError) as caught:
        byzantine_ranks.check_world(cfg, world)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    byzantine_ranks.check_world(cfg, 4 if world != 6 else 12)   # 4 ranks: one block, 4 replicas


@pytest.mark.parametrize("ranks, message", [
    ("[6]", "rank 6 does not exist in a run of 6 ranks (0 .. 5)"),
    ("[1]", "rank 1 is in model group 0 (ranks 0 .. 1), which computes the test accuracy rank 0 records"),
])
def test_ranks_the_world_cannot_hold_are_refused(ranks, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        byzantine_ranks.hosted_workers(cfg_with(f"byzantine_ranks.ranks={ranks}"), 6, grid_for(0))


def test_the_corruption_is_seeded_scaled_and_only_in_gradients():
    cfg = cfg_with("byzantine_ranks.ranks=[3]", "run.seed=5")
    corrupt = byzantine_ranks.ActivationCorruption(cfg, 3)
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    a, b = corrupt(x, 7, 2, 0), corrupt(x, 7, 2, 0)
    assert a.dtype == np.float32 and a.tobytes() == b.tobytes()          # the same draw on a rerun
    assert corrupt(x, 8, 2, 0).tobytes() != a.tobytes()                  # another step, another draw
    noise = np.random.default_rng([5, byzantine_ranks.SEED_BYZANTINE_RANKS, 3, 7, 2, 0]).standard_normal(x.shape)
    np.testing.assert_array_equal(a, x * np.float32(-4.0) + noise.astype(np.float32))
    # a one-shard group (its gather is the list itself): the gradient changes, the accuracy does not
    model = models.Model("mlp", [6, 5, 4, 3], binary=False)
    split = SplitMLP(model, 1, [0], gather=lambda parts, widths: list(parts))
    theta = model.init(np.random.default_rng(0))
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 3, 8)
    honest, lied = np.empty_like(theta), np.empty_like(theta)
    split.gradient_into(theta, X, y, honest, worker=2, step=7)
    acc = split.accuracy(theta, X, y)
    split.corrupt = corrupt
    split.gradient_into(theta, X, y, lied, worker=2, step=7)
    assert not np.allclose(lied, honest)
    assert split.accuracy(theta, X, y) == acc and split._message is None
