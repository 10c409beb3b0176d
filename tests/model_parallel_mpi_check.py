"""Run under ``mpiexec -n R`` (tests/test_model_parallel_mpi.py): for every p dividing R, the split
MLP over real group communicators gives each rank its shard of the unsplit model's gradient (to
float32 rounding), and the same loss and accuracy; three workers computed together (one exchange per
pair of layers, the last rank corrupting what it sends) bitwise equal one call per worker; the hosted
workers' minibatches, each drawn by one shard and shared in the group, bitwise the ones drawn alone.
Rank 0 prints one JSON line."""
import json

import numpy as np

from krum_mpi import models
from krum_mpi.parallel.comm import Comm
from krum_mpi.parallel.groups import ModelGroups
from krum_mpi import config
from krum_mpi.parallel.byzantine_ranks import ActivationCorruption
from krum_mpi.parallel.model_parallel import SplitMLP

SHAPES = [[7, 5, 3], [57, 20, 20, 2], [9, 5, 7, 4, 3], [8, 6, 1]]
CORRUPT = config.load(None, ["run.seed=4", "parallel.model=2", "byzantine_ranks.ranks=[3]",
                                "byzantine_ranks.behaviour=corrupt-activations"])   # its scale and sigma


def check(comm, p, sizes, failures):
    groups = ModelGroups(comm, p, n_workers=comm.size // p)
    model = models.Model("mlp", sizes, binary=sizes[-1] == 1)
    split = SplitMLP(model, p, [groups.shard], gather=groups.gather)
    rng = np.random.default_rng([len(sizes), p, groups.group_id])   # each group its own batch
    theta = model.init(np.random.default_rng([7, 0]))
    theta += np.random.default_rng(1).standard_normal(theta.size).astype(np.float32) * np.float32(0.1)
    X = rng.standard_normal((5, sizes[0])).astype(np.float32)
    y = rng.integers(0, 2 if sizes[-1] == 1 else sizes[-1], 5)
    want_loss, want = model.loss_and_grad(theta, X, y)
    index = split.layout.natural_index(groups.shard)
    mine = theta[index].copy()
    groups.bcast_from_shard0(split.replica_views(mine))   # the replicated biases, as after an update
    out = np.empty_like(mine)
    loss = split.gradient_into(mine, X, y, out)
    tol = 64 * np.finfo(np.float32).eps * float(np.abs(want).max())
    if not np.allclose(out, want[index], rtol=0, atol=tol) or abs(loss - want_loss) > 1e-6 * max(1, abs(want_loss)):
        failures.append(f"p={p} {sizes}: rank {comm.rank} max error {float(np.abs(out - want[index]).max())}")
    if split.accuracy(mine, X, y) != model.accuracy(theta, X, y):
        failures.append(f"p={p} {sizes}: accuracy differs on rank {comm.rank}")
    check_together(comm, p, split, mine, rng, sizes, failures)
    check_shared_batches(comm, p, groups, split, sizes, failures)


def check_together(comm, p, split, theta, rng, sizes, failures):
    """Three hosted workers (uneven batches) in one call, the last rank corrupting what it sends:
    every worker's loss and gradient block bitwise those of one call per worker."""
    if comm.rank == comm.size - 1:
        split.corrupt = ActivationCorruption(CORRUPT, comm.rank)
    Xs = [rng.standard_normal((r, sizes[0])).astype(np.float32) for r in (4, 2, 3)]
    ys = [rng.integers(0, 2 if sizes[-1] == 1 else sizes[-1], len(X)) for X in Xs]
    rows = np.empty((3, theta.size), dtype=np.float32)
    losses = split.gradients_into(theta, Xs, ys, list(rows), workers=[5, 6, 7], step=3)
    for j, worker in enumerate([5, 6, 7]):
        alone = np.empty_like(theta)
        loss = split.gradient_into(theta, Xs[j], ys[j], alone, worker=worker, step=3)
        if loss != losses[j] or alone.tobytes() != rows[j].tobytes():
            failures.append(f"p={p} {sizes}: worker {worker} computed together differs on rank {comm.rank}")


def check_shared_batches(comm, p, groups, split, sizes, failures):
    """Seven hosted workers' minibatches: each shard draws only its block of them, and after the
    group's allgather every shard holds every batch, bitwise the one it would have drawn itself."""
    def batch(j):
        rng = np.random.default_rng([11, j])
        return rng.standard_normal((3, sizes[0])).astype(np.float32), rng.integers(0, 5, 3)

    drawn = []
    split.share = groups.allgather_bytes
    try:
        got = split.draw_batches(lambda j: drawn.append(j) or batch(j), 7, 3)
    finally:
        split.share = None
    mine = np.array_split(np.arange(7), p)[groups.shard].tolist()
    if drawn != mine:
        failures.append(f"p={p} {sizes}: shard {groups.shard} drew workers {drawn}, not its block {mine}")
    for j, (X, y) in enumerate(got):
        want_X, want_y = batch(j)
        if X.tobytes() != want_X.tobytes() or y.dtype != np.int64 or not np.array_equal(y, want_y):
            failures.append(f"p={p} {sizes}: shared batch of worker {j} differs on rank {comm.rank}")


def main():
    comm = Comm(n_workers=1)
    failures = []
    for p in [q for q in (1, 2, 3, 4) if comm.size % q == 0]:
        for sizes in SHAPES:
            check(comm, p, sizes, failures)
    every = comm.gather_values(float(len(failures)))   # typed buffers: each rank's count of failures
    if comm.is_root:
        print(json.dumps({"ranks": comm.size, "failing_ranks": int((every > 0).sum()), "failures": failures}))


if __name__ == "__main__":
    main()
