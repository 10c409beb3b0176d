"""Model parallelism in one process: the split MLP with all p shards local (the group's sums and
gathers are the list itself), against models.Model; the hosted workers computed together against
one call per worker (bitwise, corrupted activations included); the layout, the seeded initialisation, the
config checks and the streamed checkpoint arrays."""
import numpy as np
import pytest

from krum_mpi.run import checkpoint
from krum_mpi import config, models
from krum_mpi.parallel import model_parallel
from krum_mpi.errors import ConfigError, ResultsError
from krum_mpi.parallel.model_parallel import Grid, ShardLayout, SplitMLP

# 2, 3 and 4 layers (row- and column-parallel last layers), uneven splits, a binary output
SHAPES = [[7, 5, 3], [57, 20, 20, 2], [9, 6, 5, 3], [9, 5, 7, 4, 3], [8, 6, 1]]


def local_group(model, p):
    """All p shards in this process: the group's gather is the list of the shards' own arrays."""
    return SplitMLP(model, p, range(p), gather=lambda parts, widths: list(parts))


def split_params(split, theta):
    """Each shard's vector cut from the natural one, and the replicated biases copied from shard 0."""
    layout = split.layout
    thetas = [theta[layout.natural_index(s)].copy() for s in range(layout.p)]
    owner = split.layers(thetas[0], 0)
    for s in range(1, layout.p):
        for l, kind in enumerate(layout.kinds):
            if kind == "row":
                split.layers(thetas[s], s)[l][1][...] = owner[l][1]
    return thetas


def natural(layout, parts, d):
    out = np.full(d, np.nan, dtype=parts[0].dtype)
    for s, part in enumerate(parts):
        out[layout.natural_index(s)] = part
    return out


def model_of(sizes):
    return models.Model("mlp", sizes, binary=sizes[-1] == 1)


@pytest.mark.parametrize("sizes", SHAPES, ids=["-".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_split_gradient_equals_the_unsplit_model(sizes, p):
    model = model_of(sizes)
    rng = np.random.default_rng([len(sizes), p])
    theta = model.init(np.random.default_rng([7, 0]))
    theta += rng.standard_normal(theta.size).astype(np.float32) * np.float32(0.1)   # biases away from 0
    X = rng.standard_normal((5, sizes[0])).astype(np.float32)
    y = rng.integers(0, 2 if sizes[-1] == 1 else sizes[-1], 5)
    want_loss, want = model.loss_and_grad(theta, X, y)
    split = local_group(model, p)
    loss, grads = split.loss_and_grads(split_params(split, theta), X, y)
    got = natural(split.layout, grads, model.n_params)
    if p == 1:   # one shard: the same operations in the same order
        assert got.tobytes() == want.tobytes() and loss == want_loss
        return
    # float32 rounding: a sum of p partial products instead of one product; bound relative to the
    # largest entry, with room for the depth of the network
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=64 * np.finfo(np.float32).eps * scale)
    assert abs(loss - want_loss) <= 1e-6 * max(1.0, abs(want_loss))
    assert not np.array_equal(got, np.zeros_like(got))


def worker_batches(sizes, rows=(5, 3, 1)):
    """One batch per hosted worker, of uneven lengths."""
    rng = np.random.default_rng([len(sizes), sum(rows)])
    return ([rng.standard_normal((r, sizes[0])).astype(np.float32) for r in rows],
            [rng.integers(0, 2 if sizes[-1] == 1 else sizes[-1], r) for r in rows])


@pytest.mark.parametrize("sizes", SHAPES, ids=["-".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_hosted_workers_computed_together_equal_one_call_per_worker(sizes, p):
    """The workers a group hosts share each exchange (one per pair of layers); every worker's loss
    and gradient are bitwise those of a call for it alone."""
    model = model_of(sizes)
    theta = model.init(np.random.default_rng([7, 1]))
    theta += np.random.default_rng(2).standard_normal(theta.size).astype(np.float32) * np.float32(0.1)
    Xs, ys = worker_batches(sizes)
    split = local_group(model, p)
    thetas = split_params(split, theta)
    losses, grads = split.losses_and_grads(thetas, Xs, ys)
    for X, y, loss, grad in zip(Xs, ys, losses, grads):
        alone_loss, alone = split.loss_and_grads(thetas, X, y)
        assert loss == alone_loss
        assert all(a.tobytes() == b.tobytes() for a, b in zip(grad, alone))


@pytest.mark.parametrize("sizes", SHAPES, ids=["-".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("rows", [(3,) * 7, (3, 3, 5, 5, 5, 1, 3), (1, 1), (32, 32, 7)])
def test_stacked_workers_equal_the_unsplit_model_per_worker(sizes, rows):
    """Runs of equal batches are computed as stacks (one matmul over the run): with one shard every
    worker's loss and gradient are bitwise the unsplit model's 2-D call for it alone (models.py),
    so stacking changes no BLAS call, however the batches are cut into runs."""
    model = model_of(sizes)
    theta = model.init(np.random.default_rng([7, 2]))
    theta += np.random.default_rng(4).standard_normal(theta.size).astype(np.float32) * np.float32(0.1)
    Xs, ys = worker_batches(sizes, rows)
    split = local_group(model, 1)
    losses, grads = split.losses_and_grads(split_params(split, theta), Xs, ys)
    for X, y, loss, grad in zip(Xs, ys, losses, grads):
        want_loss, want = model.loss_and_grad(theta, X, y)
        assert loss == want_loss and natural(split.layout, grad, model.n_params).tobytes() == want.tobytes()


def test_corrupted_activations_computed_together_equal_one_call_per_worker():
    """A corrupt-activations rank corrupts each worker's part of a shared exchange under that
    worker's own key: the values of one call per worker, and different per worker."""
    cfg = config.load(None, ["workers.n=20", "aggregator.f=6", "parallel.model=2", "run.seed=3",
                             "byzantine_ranks.ranks=[3]", "byzantine_ranks.behaviour=corrupt-activations"])
    from krum_mpi.parallel.byzantine_ranks import ActivationCorruption
    for sizes in ([9, 5, 7, 4, 3], [57, 20, 20, 2], [7, 5, 3]):
        model = model_of(sizes)
        split = SplitMLP(model, 1, [0], gather=lambda parts, widths: list(parts))
        split.corrupt = ActivationCorruption(cfg, 3)
        theta = model.init(np.random.default_rng(0))
        Xs, ys = worker_batches(sizes, rows=(4, 4, 2))
        Xs[1] = Xs[0]; ys[1] = ys[0]   # two workers on the same batch: only their keys differ
        together = [np.empty_like(theta) for _ in Xs]
        losses = split.gradients_into(theta, Xs, ys, together, workers=[11, 12, 13], step=9)
        for worker, X, y, loss, row in zip([11, 12, 13], Xs, ys, losses, together):
            alone = np.empty_like(theta)
            assert split.gradient_into(theta, X, y, alone, worker=worker, step=9) == loss
            assert alone.tobytes() == row.tobytes()
        assert together[0].tobytes() != together[1].tobytes()
        assert split._message is None


@pytest.mark.parametrize("p", [2, 3, 4])
def test_split_accuracy_and_logits_equal_the_unsplit_model(p):
    model = model_of([57, 20, 20, 2])
    theta = model.init(np.random.default_rng([1, 0]))
    X = np.random.default_rng(3).standard_normal((300, 57)).astype(np.float32)
    split = local_group(model, p)
    thetas = split_params(split, theta)
    np.testing.assert_allclose(split.logits(thetas, X), model.logits(theta, X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sizes", SHAPES, ids=["-".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_layout_is_a_permutation_and_init_is_the_unsplit_init(sizes, p, monkeypatch):
    model = model_of(sizes)
    layout = ShardLayout(model, p)
    index = np.concatenate([layout.natural_index(s) for s in range(p)])
    assert np.array_equal(np.sort(index), np.arange(model.n_params))
    assert [layout.natural_index(s).size for s in range(p)] == layout.sizes
    monkeypatch.setattr(model_parallel, "INIT_CHUNK_BYTES", 8 * 7)   # rows drawn a few at a time
    want = model.init(np.random.default_rng([5, 0]))
    for s in range(p):
        assert layout.init_shard(np.random.default_rng([5, 0]), s).tobytes() == want[layout.natural_index(s)].tobytes()


def test_shard_zero_owns_the_replicated_biases():
    layout = ShardLayout(model_of([57, 20, 20, 2]), 4)
    assert layout.kinds == ["col", "row", "col"]
    biases = [57 * 20 + 20 + 20 * 20 + np.arange(20)]    # layer 1's bias in the natural layout
    owned = [np.isin(biases[0], layout.natural_index(s)).all() for s in range(4)]
    assert owned == [True, False, False, False]
    assert layout.sizes == [57 * 5 + 5 + 5 * 20 + 20 + 20 + 1, 57 * 5 + 5 + 5 * 20 + 20 + 1, 390, 390]


def test_grid_places_ranks_and_refuses_what_it_cannot_split():
    model = model_of([57, 20, 20, 2])
    grid = Grid(2, 7, 4, 3, model)    # rank 3: shard 1 of group 1, which hosts workers 4..6
    assert (grid.group_id, grid.shard, list(grid.workers)) == (1, 1, [4, 5, 6])
    assert grid.world_counts == [4, 0, 3, 0]
    with pytest.raises(ConfigError, match="there are 3 ranks"):
        Grid(2, 7, 3, 0, model)
    with pytest.raises(ConfigError, match="shards of 0 to"):
        Grid(4, 7, 4, 0, models.Model("softmax", [57, 2], binary=False))


@pytest.mark.parametrize("value, message", [(0, "must be >= 1"), (-2, "must be >= 1"), (1.5, "must be an integer"),
                                            ("two", "must be an integer"), (True, "must be an integer")])
def test_bad_parallel_model_values_are_refused(value, message):
    with pytest.raises(ConfigError, match=f"parallel.model = .* {message}"):
        config.validate({"parallel": {"model": value}})


@pytest.mark.parametrize("overrides, message", [
    (["model.name=lenet5"], "splits the NumPy models"),
    (["aggregator.placement=per-shard"], "not with aggregator.placement = 'per-shard'"),
    (["workers.byzantine=2", "aggregator.name=krum", "attack.name=alie", "attack.adversary=colluding"],
     "colluding adversary is not split"),
    (["workers.byzantine=2", "aggregator.name=krum", "attack.name=gaussian"], "which 'gaussian' cannot"),
    (["optimizer.momentum=0.9"], "momentum at the workers only"),
    (["aggregator.name=bucketing+krum"], "placement = 'sharded' covers")])
def test_what_model_parallelism_cannot_do_is_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        config.load_config(None, ["parallel.model=2", *overrides])
    assert "\n" not in str(err.value)


def test_model_parallelism_aggregates_sharded_and_keeps_old_run_ids():
    cfg = config.load_config(None, ["parallel.model=2"])
    assert cfg["aggregator"]["placement"] == "sharded"
    plain = config.load_config(None)
    assert "parallel" not in config.identity(plain)      # results written before the key keep their id
    assert config.run_id(plain) == config.run_id(config.load_config(None, ["parallel.model=1"]))
    assert config.run_id(cfg) != config.run_id(config.load_config(None, ["parallel.model=4"]))


def test_streamed_checkpoint_arrays_round_trip(tmp_path):
    store = checkpoint.CheckpointStore(tmp_path / "x.h5.ckpt", "run1")
    a = np.arange(10, dtype=np.float32)
    b = np.arange(12, dtype=np.float32).reshape(4, 3)
    store.write(3, {"params.shard0": checkpoint.Streamed((10,), np.float32, lambda: iter([a[:4], a[4:]])),
                    "worker_momentum.shard0": checkpoint.Streamed((4, 3), np.float32, lambda: iter([b[:1], b[1:]]))})
    step, arrays = checkpoint.read(tmp_path / "x.h5.ckpt", "run1",
                                   {"params.shard0": ((10,), "float32"), "worker_momentum.shard0": ((4, 3), "float32")})
    assert step == 3 and np.array_equal(arrays["params.shard0"], a) and np.array_equal(arrays["worker_momentum.shard0"], b)
    with pytest.raises(ResultsError, match="pieces do not fit"):
        store.write(4, {"params.shard0": checkpoint.Streamed((10,), np.float32, lambda: iter([a[:4]]))})
