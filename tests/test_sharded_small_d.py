"""``placement = "sharded"`` chooses its exchange by d (aggregator.sharded_min_d, docs/sharded.md
"Cost at small d"): below the threshold the gather's exchange, at or above it the blocks'. Either
way the run records which exchange ran and why, and selects, loses and ends bit for bit as the
gather does. Byzantine ranks keep the block exchange at any d (their threat lives there)."""
import numpy as np
import pytest

from conftest import REPO, mpiexec_path, run_cli
from krum_mpi import config
from krum_mpi.errors import ConfigError
from krum_mpi.parallel.placements.blocks import exchange_for

KRUM_F6 = REPO / "configs" / "synthetic-krum-f6.toml"   # MLP 57-20-20-2: d = 1,622
D = 1622


def load(*sets):
    """The preset under placement 'sharded' (its Gaussian attack from the colluding ranks)."""
    return config.load(KRUM_F6, ["aggregator.placement=sharded", "attack.adversary=colluding", *sets])


def test_the_exchange_follows_the_threshold():
    default = load()
    assert default.aggregator.sharded_min_d == 35_000
    assert exchange_for(default, D)[0] == "gather"
    assert exchange_for(default, 35_000)[0] == "sharded"
    at = load(f"aggregator.sharded_min_d={D}")
    exchange, why = exchange_for(at, D)
    assert exchange == "sharded" and f"d = {D} >= aggregator.sharded_min_d = {D}" in why
    above = load(f"aggregator.sharded_min_d={D + 1}")
    exchange, why = exchange_for(above, D)
    assert exchange == "gather" and f"d = {D} < aggregator.sharded_min_d = {D + 1}" in why


def test_byzantine_ranks_keep_the_block_exchange_at_small_d():
    """A gather-style exchange would take the Byzantine ranks' lies out of the run without a word
    (corrupt activations lie in the model groups' compute instead: tests/test_model_parallel_small_d.py)."""
    cfg = load("byzantine_ranks.ranks=[3]", "byzantine_ranks.behaviour=lie-distances")
    assert cfg.aggregator.sharded_min_d > D
    exchange, why = exchange_for(cfg, D)
    assert exchange == "sharded" and "byzantine_ranks.ranks = [3]" in why


@pytest.mark.parametrize("value", ["-1", "1.5", "true"])
def test_a_bad_threshold_is_refused(value):
    with pytest.raises(ConfigError, match="aggregator.sharded_min_d"):
        load(f"aggregator.sharded_min_d={value}")


def test_the_default_threshold_keeps_run_ids():
    """Runs that never named the key keep their ids; naming another value makes another run."""
    plain = load()
    assert "sharded_min_d" not in config.identity(plain)["aggregator"]
    assert config.run_id(plain) != config.run_id(load("aggregator.sharded_min_d=0"))


@pytest.mark.mpi
def test_both_sides_of_the_threshold_equal_the_gather_bit_for_bit(tmp_path):
    """3 ranks, 10 steps of Krum under ALIE (crafted where the rows meet) with a checkpoint in between:
    the threshold just above d (gather's exchange) and at d (blocks) give the gather's selections,
    losses and final parameters, bit for bit, and each file says which exchange ran."""
    import h5py

    from krum_mpi.run import results
    if mpiexec_path() is None:
        pytest.skip("no mpiexec found: pip install mpich")
    cfg = tmp_path / "config.toml"
    cfg.write_text(KRUM_F6.read_text().replace('name = "gaussian"', 'name = "alie"').replace("sigma = 200.0", ""))
    runs = {}
    for name, extra in {"gather": [], "below": [f"aggregator.sharded_min_d={D + 1}"],
                        "at": [f"aggregator.sharded_min_d={D}"]}.items():
        out = tmp_path / f"{name}.h5"
        sets = [a for s in ["run.steps=10", "run.eval_every=5", "run.checkpoint_every=4", *extra,
                            *([] if name == "gather" else ["aggregator.placement=sharded"])] for a in ("--set", s)]
        done = run_cli(["run", cfg, "--out", out, *sets], ranks=3)
        assert done.returncode == 0, done.stderr
        runs[name] = results.read_run(out)
    assert "exchange" not in runs["gather"]["attrs"]
    assert runs["below"]["attrs"]["exchange"] == "gather"
    assert f"d = {D} < aggregator.sharded_min_d = {D + 1}" in runs["below"]["attrs"]["exchange_reason"]
    assert runs["at"]["attrs"]["exchange"] == "sharded"
    assert f"d = {D} >= aggregator.sharded_min_d = {D}" in runs["at"]["attrs"]["exchange_reason"]
    # the gather's exchange: every row reaches rank 0; the blocks': rank 0 receives a block of each
    received = {}
    for name in runs:
        with h5py.File(tmp_path / f"{name}.h5", "r") as h5:
            received[name] = h5["comm/bytes_received"][:, 0]
    assert (received["below"] == received["gather"]).all()
    assert (received["at"][1:] < received["gather"][1:]).all()
    gather = runs["gather"]
    for name in ("below", "at"):
        assert np.array_equal(runs[name]["selection"]["selected"], gather["selection"]["selected"]), name
        assert np.array_equal(runs[name]["metrics"]["loss"], gather["metrics"]["loss"]), name
        assert np.array_equal(runs[name]["checkpoint"]["params"], gather["checkpoint"]["params"]), name


def test_one_exchange_finds_distances_finiteness_and_identical_rows():
    """The sharded rows' certified distances cost ONE exchange of partials, however many rows are
    identical (six copies, as ALIE sends), and find the same identical pairs as asking block by
    block: rows equal on one block only, or holding NaN, are not identical."""
    from krum_mpi.parallel import sharded
    rng = np.random.default_rng(5)
    X = rng.standard_normal((12, 23)).astype(np.float32)
    X[6:12] = X[5]                       # rows 5..11 identical
    X[1, 10:] = X[0, 10:]                # rows 0, 1: equal on the last blocks only
    X[3] = X[2]
    X[3, 0] = np.nan                     # rows 2, 3: equal but for a NaN
    bounds = sharded.block_bounds(23, 3)
    parts = [X[:, lo:hi] for lo, hi in zip(bounds, bounds[1:])]
    calls = []

    def exchange(local):                 # this process holds every block: the stack is the exchange
        calls.append(local.shape)
        return local

    blocks = sharded.Blocks(parts, exchange, len(parts))
    certified = blocks.certified()
    assert len(calls) == 1
    asked = sharded.ShardedRows(blocks)  # one exchange per question
    for i in range(12):
        for j in range(i + 1, 12):
            if certified.finite[i] and certified.finite[j]:
                assert certified.rows.identical(i, j) == asked.identical(i, j), (i, j)
    assert list(certified.group) == [0, 1, 2, 3, 4] + [5] * 7


def test_the_benchmark_finds_the_crossover_from_ratios_to_the_gather_of_the_same_repeat():
    """scripts/bench_placement_cost.py: each run against the gather run next to it, and the crossover
    where the block exchange's ratio passes 1 (log-log between the sizes around it)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_placement_cost", REPO / "scripts" / "bench_placement_cost.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runs = []
    for hidden, d, gather_s, blocks_s in ((20, 1_000, (1.0, 4.0), (2.0, 8.0)), (100, 100_000, (1.0, 1.0), (0.5, 0.5))):
        for repeat in (0, 1):   # the load quadruples in repeat 1: the ratio stays 2
            runs.append({"placement": "gather", "hidden": hidden, "d": d, "exchange": "gather",
                         "step_s": gather_s[repeat], "phases_s": [0.0] * 4, "repeat": repeat})
            runs.append({"placement": "sharded-blocks", "hidden": hidden, "d": d, "exchange": "sharded",
                         "step_s": blocks_s[repeat], "phases_s": [0.0] * 4, "repeat": repeat})
    summary = bench.summarise(runs, [20, 100], ["gather", "sharded-blocks"])
    ratios = {(s["d"], s["placement"]): s["vs_gather"] for s in summary}
    assert ratios[(1_000, "sharded-blocks")] == 2.0 and ratios[(100_000, "sharded-blocks")] == 0.5
    assert bench.crossover(summary) == 10_000   # ratio 2 at 1e3, 0.5 at 1e5: 1 at 1e4 in log-log
    assert bench.crossover([s for s in summary if s["d"] == 1_000]) is None
