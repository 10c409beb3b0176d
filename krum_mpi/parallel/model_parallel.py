"""Model parallelism (``parallel.model = p``): the NumPy MLP split Megatron-style over a group of p ranks.

Layers z_l = a_{l-1} W_l + b_l alternate between two kinds (Megatron-LM's MLP split):

- column-parallel (even l): W_l's output units are split in p contiguous blocks (``block_bounds``),
  the bias with them; the input is replicated, the output stays split. Forward: nothing to
  exchange; backward: the partial input gradients dz_s W_s^T are summed over the group.
- row-parallel (odd l): W_l's input units are split to match the previous layer's output split;
  the partial products a_s W_s are summed over the group, then the replicated bias is added.
  Backward: each shard keeps its own part of the input gradient (nothing to exchange).

So one sum over the group per pair of layers in the forward pass and one in the backward. When the
last layer is column-parallel (an odd number of layers), its logits (batch x classes) are gathered
in the group, so every shard computes the same loss and the same logit gradient. A shard may get no
output unit of a layer (2 classes over 4 shards): its arrays are empty.

Every sum over the group is an allgather of the partials followed by a sum in shard order: every
shard gets bitwise the same values whatever reduction algorithm the MPI library picks. The workers
a group hosts are computed together (``gradients_into``): each exchange carries all their partials,
stacked along the batch rows, so a step costs one group collective per exchange point, not one per
worker. Consecutive workers with the same batch size are one stack: a layer's products for them
are one matmul over it (one BLAS call per worker, with its operands), the sums and the activations
elementwise, the cross-entropy row by row, so every worker's values are bitwise those of a call for
it alone, at a fraction of the Python (at d = 1,622 collectives and Python, not bytes, are the cost).

A parameter belongs to exactly one shard. The replicated bias of a row-parallel layer belongs to
shard 0; the other shards keep a copy (``replica_views``), refreshed from shard 0 after each update.
Shard s's parameters form one contiguous vector, layer by layer: its W piece (row-major), then its
bias piece when it owns one. ``ShardLayout.natural_index`` maps it to the natural flat layout of
models.py. A ``SplitMLP`` holds a list of local shards (one under MPI; all p in a one-process test)
and a ``gather`` that returns the partials of all p shards in shard order, as sharded.Blocks does.
"""
from __future__ import annotations

import math

import numpy as np

from .. import models
from ..inputs import typed
from .comm import block_counts
from ..errors import ConfigError
from .sharded import BLOCKWISE_ATTACKS, block_bounds

SPLIT_MODELS = models.NUMPY_MODELS
INIT_CHUNK_BYTES = 1 << 25   # the seeded initial weights are drawn in row chunks of at most 32 MiB


class ShardLayout:
    """Where each shard's parameters sit, for a models.Model split over p shards."""

    def __init__(self, model: models.Model, p: int):
        self.model, self.p = model, p
        self.kinds = ["col" if l % 2 == 0 else "row" for l in range(len(model.shapes))]
        self.splits = [block_bounds(o if kind == "col" else i, p) for (i, o), kind in zip(model.shapes, self.kinds)]
        self.sizes = [sum(r * c + nb for r, c, nb in self.piece_shapes(s)) for s in range(p)]

    def piece_shapes(self, s: int):
        """Per layer: (rows, columns) of shard s's W piece and the length of its bias piece (0: not owned)."""
        out = []
        for (i, o), kind, split in zip(self.model.shapes, self.kinds, self.splits):
            width = int(split[s + 1] - split[s])
            out.append((i, width, width) if kind == "col" else (width, o, o if s == 0 else 0))
        return out

    def natural_index(self, s: int) -> np.ndarray:
        """int64 positions in the natural flat vector (models.py) of shard s's parameters, in order."""
        parts, at = [], 0
        for (i, o), kind, split in zip(self.model.shapes, self.kinds, self.splits):
            lo, hi = int(split[s]), int(split[s + 1])
            if kind == "col":
                parts += [(at + np.arange(i)[:, None] * o + np.arange(lo, hi)[None, :]).ravel(),
                          at + i * o + np.arange(lo, hi)]
            else:
                parts.append(at + np.arange(lo * o, hi * o))
                if s == 0:
                    parts.append(at + i * o + np.arange(o))
            at += i * o + o
        return np.concatenate(parts).astype(np.int64)

    def views(self, flat, s: int):
        """Per layer: (W piece, bias piece or None) as views into shard s's flat vector, or into each
        row of a stack of them (..., size): then (..., rows, columns) and (..., length)."""
        out, at, lead = [], 0, flat.shape[:-1]
        for (rows, cols, nb), kind in zip(self.piece_shapes(s), self.kinds):
            W = flat[..., at:at + rows * cols].reshape(*lead, rows, cols)
            at += rows * cols
            out.append((W, flat[..., at:at + nb] if kind == "col" or s == 0 else None))
            at += nb
        return out

    def init_shard(self, rng: np.random.Generator, s: int, out=None) -> np.ndarray:
        """Shard s of models.Model.init(rng), bitwise, without the whole vector: the same draws in row
        chunks (a Generator's normals drawn in pieces are the same stream), keeping shard s's part.
        Written into ``out`` when given (no second shard-sized array)."""
        theta = np.zeros(self.sizes[s], dtype=np.float32) if out is None else out
        theta[...] = 0
        if len(self.model.shapes) == 1:
            return theta
        last = len(self.model.shapes) - 1
        for l, ((i, o), kind, split, (W, _)) in enumerate(zip(self.model.shapes, self.kinds, self.splits,
                                                               self.views(theta, s))):
            scale = math.sqrt((1.0 if l == last else 2.0) / i)
            lo, hi = int(split[s]), int(split[s + 1])
            chunk = max(1, INIT_CHUNK_BYTES // (8 * max(o, 1)))
            for r0 in range(0, i, chunk):
                r1 = min(i, r0 + chunk)
                draw = rng.standard_normal((r1 - r0, o)) * scale
                if kind == "col":
                    W[r0:r1] = draw[:, lo:hi]
                elif r1 > lo and r0 < hi:
                    W[max(r0, lo) - lo:min(r1, hi) - lo] = draw[max(r0, lo) - r0:min(r1, hi) - r0]
        return theta


class SplitMLP:
    """The local shards of a models.Model split over p shards, with the worker-side model interface
    (n_params, set_threads, gradient_into, accuracy) when one shard is local (under MPI).

    ``gather(parts, widths)``: the list of local (..., w) arrays, one per local shard -> the list of
    all p shards' arrays in shard order, shard q's of last dimension widths[q] (collective)."""

    def __init__(self, model: models.Model, p: int, local, gather=None):
        self.full, self.layout = model, ShardLayout(model, p)
        self.layer_sizes = model.layer_sizes   # the memory preflight's activation estimate
        self.local, self.gather = list(local), gather
        self.n_params = self.layout.sizes[self.local[0]]
        self.replicas: dict = {}   # (shard, layer) -> copy of a row-parallel bias owned by shard 0
        self.corrupt = None        # a Byzantine rank's ActivationCorruption (parallel/byzantine_ranks.py)
        self._message = None       # (step, workers, count of messages sent) while gradients are computed
        self._rows = [0]           # where each worker's rows start in a stacked exchange, and the end
        self._runs = []            # (first, end) workers of each run of equal batch sizes in a call
        self.share = None          # bytes -> every shard's bytes in shard order (groups.allgather_bytes)

    def set_threads(self, threads: int) -> None:
        """BLAS threads are limited by the training loop, as for the whole model."""

    def draw_batches(self, draw, count: int, batch_size: int) -> list:
        """The hosted workers' minibatches, ``draw(j)`` -> (X float32 (b, features), y int64 (b,)) for
        worker j of ``count``. Every shard of a group needs every batch: under MPI shard s draws the
        contiguous block s of them and one allgather in the group shares them, bitwise the batches
        each shard would draw (a batch is a pure function of seed, worker and step). Drawing them all
        on every shard cost p times the sampling: at d = 1,622 on synthetic data, more than the
        split model's arithmetic and its exchanges together."""
        p = self.layout.p
        if self.share is None or len(self.local) != 1 or p == 1:
            return [draw(j) for j in range(count)]
        s, features = self.local[0], self.full.layer_sizes[0]
        x_bytes, y_bytes = 4 * batch_size * features, 8 * batch_size
        starts = np.concatenate([[0], np.cumsum(block_counts(count, p))]).astype(np.int64)
        mine = [draw(j) for j in range(int(starts[s]), int(starts[s + 1]))]
        sent = np.empty(len(mine) * (x_bytes + y_bytes), dtype=np.uint8)
        for k, (X, y) in enumerate(mine):
            at = k * (x_bytes + y_bytes)
            sent[at:at + x_bytes] = np.ascontiguousarray(X, dtype=np.float32).reshape(-1).view(np.uint8)
            sent[at + x_bytes:at + x_bytes + y_bytes] = np.ascontiguousarray(y, dtype=np.int64).view(np.uint8)
        every = self.share(sent, np.diff(starts) * (x_bytes + y_bytes))
        batches = []
        for j in range(count):
            at = j * (x_bytes + y_bytes)
            batches.append((every[at:at + x_bytes].view(np.float32).reshape(batch_size, features),
                            every[at + x_bytes:at + x_bytes + y_bytes].view(np.int64)))
        return batches

    def layers(self, theta, s: int):
        """Per layer: (W piece, bias) of shard s, the bias a replica where shard s does not own it."""
        out = []
        for l, (W, b) in enumerate(self.layout.views(theta, s)):
            if b is None:
                o = self.full.shapes[l][1]
                b = self.replicas.setdefault((s, l), np.zeros(o, dtype=theta.dtype))
            out.append((W, b))
        return out

    def replica_views(self, theta) -> list:
        """The row-parallel biases of the local shard: views into theta on shard 0, copies elsewhere
        (shard 0 broadcasts them in its group after each update)."""
        s = self.local[0]
        return [b for l, (W, b) in enumerate(self.layers(theta, s)) if self.layout.kinds[l] == "row"]

    # -- the sums and gathers over the group: one collective for all the workers of a call --------
    # The workers of a call travel in runs: consecutive workers with the same batch size, stacked
    # (count, batch, ...). A product on a stack is NumPy's matmul over it, one BLAS call per worker
    # with that worker's operands, so bitwise the worker's own product (tests/test_model_parallel.py);
    # elementwise steps are elementwise. Stacking spares the Python of one call per worker and layer.
    def _outgoing(self, parts):
        """What this rank sends: parts[r][k] (run r of the call, local shard k), or on a
        corrupt-activations rank each worker's part corrupted under that worker's key, exactly as if
        it were sent alone. Only while computing gradients: the test accuracy is a measurement."""
        if self.corrupt is None or self._message is None:
            return parts
        step, workers, k = self._message
        self._message = (step, workers, k + 1)
        return [[np.stack([self.corrupt(x, step, workers[w], k) for w, x in zip(range(lo, hi), stack)])
                 for stack in per] for (lo, hi), per in zip(self._runs, parts)]

    def _exchange(self, parts, widths):
        """One gather for every worker of the call: per local shard, the workers' parts stacked along
        the batch rows in worker order -> every shard's stacked array, in shard order."""
        sent = self._outgoing(parts)
        stacked = [_rows_of(per[0]) if len(per) == 1 else np.concatenate([_rows_of(x) for x in per])
                   for per in zip(*sent)]
        return self.gather(stacked, widths)

    def _per_run(self, stacked):
        """A stacked (rows, w) array cut back into the runs, (count, batch, w) each: per run, the same
        view for every local shard."""
        rows = self._rows
        return [[stacked[rows[lo]:rows[hi]].reshape(hi - lo, (rows[hi] - rows[lo]) // (hi - lo), stacked.shape[-1])]
                * len(self.local) for lo, hi in self._runs]

    def _sum(self, partials):
        """Sum over the group's shards, in shard order. Elementwise, so each worker's rows get the sums
        they would get alone, bitwise."""
        every = self._exchange(partials, [partials[0][0].shape[-1]] * self.layout.p)
        total = every[0].copy()
        for part in every[1:]:
            total += part
        return self._per_run(total)

    def _concat(self, parts, l: int):
        split = self.layout.splits[l]
        every = self._exchange(parts, [int(w) for w in np.diff(split)])
        return self._per_run(np.concatenate(every, axis=1))

    # -- forward and backward --------------------------------------------------------------
    def _forward(self, thetas, Xs):
        """Every worker's batch in Xs through the split model: (per local shard: its layers; per run,
        the stacked batches; per run, per local shard: every layer's pre-activations)."""
        params = [self.layers(t, s) for s, t in zip(self.local, thetas)]
        sizes = [len(X) for X in Xs]
        self._rows = np.cumsum([0] + sizes).tolist()
        cuts = [0] + [w for w in range(1, len(Xs)) if sizes[w] != sizes[w - 1]] + [len(Xs)]
        self._runs = list(zip(cuts[:-1], cuts[1:]))
        last = len(self.layout.kinds) - 1
        xs = [np.stack(Xs[lo:hi]) for lo, hi in self._runs]
        a = [[x] * len(self.local) for x in xs]
        zs = [[[] for _ in self.local] for _ in xs]
        for l, kind in enumerate(self.layout.kinds):
            if kind == "col":
                z = [[_affine(ai, p[l]) for ai, p in zip(ar, params)] for ar in a]
                if l == last:
                    z = self._concat(z, l)
            else:
                sums = self._sum([[ai @ p[l][0] for ai, p in zip(ar, params)] for ar in a])
                z = [[zi + p[l][1] for zi, p in zip(zr, params)] for zr in sums]
            for zr, into in zip(z, zs):
                for zi, shard in zip(zr, into):
                    shard.append(zi)
            a = [[np.maximum(zi, 0) for zi in zr] for zr in z] if l < last else z
        return params, xs, zs

    def _logit_grads(self, zs, ys):
        """Per worker: its mean cross-entropy; per run and local shard: the stacked columns of the
        logit gradients (each worker's batch mean its own)."""
        last = len(self.layout.kinds) - 1
        split = self.layout.splits[last]
        losses, dz = [], []
        for (lo, hi), zr in zip(self._runs, zs):
            logits = zr[0][-1]   # (count, batch, classes): the run's batches one after another
            count, batch = logits.shape[:2]
            loss, full = models.cross_entropy(logits.reshape(count * batch, -1), np.concatenate(ys[lo:hi]),
                                              self.full.binary, np, batch=batch)
            losses += [float(m) for m in loss.astype(np.float64).reshape(count, batch).mean(axis=1)]
            full = full.reshape(count, batch, -1)
            if self.layout.kinds[last] == "col":
                dz.append([full[..., int(split[s]):int(split[s + 1])] for s in self.local])
            else:
                dz.append([full] * len(self.local))
        return losses, dz

    def losses_and_grads(self, thetas, Xs, ys, outs=None):
        """Per worker (one batch in Xs, ys each): its mean cross-entropy, and each local shard's gradient
        block (outs[w][k] when given). One group collective per pair of layers for all the workers."""
        Xs = [np.asarray(X, dtype=thetas[0].dtype) for X in Xs]
        if not Xs:
            return [], []
        params, xs, zs = self._forward(thetas, Xs)
        losses, dz = self._logit_grads(zs, ys)
        stacks = [[np.empty((hi - lo, t.size), dtype=t.dtype) for t in thetas] for lo, hi in self._runs]
        layers = [[self.layout.views(G, s) for s, G in zip(self.local, per)] for per in stacks]
        for l in range(len(self.layout.kinds) - 1, -1, -1):
            for r, x in enumerate(xs):
                for k in range(len(self.local)):
                    a_prev = x if l == 0 else np.maximum(zs[r][k][l - 1], 0)
                    gW, gb = layers[r][k][l]
                    np.matmul(a_prev.transpose(0, 2, 1), dz[r][k], out=gW)
                    if gb is not None:
                        gb[...] = dz[r][k].sum(axis=1)
            if l == 0:
                break
            da = [[dk @ p[l][0].T for dk, p in zip(dzr, params)] for dzr in dz]
            if self.layout.kinds[l] == "col":   # replicated input: the partial input gradients summed
                da = self._sum(da)
            dz = [[dak * (zs[r][k][l - 1] > 0) for k, dak in enumerate(dar)] for r, dar in enumerate(da)]
        grads = [list(per) for (lo, hi), G in zip(self._runs, stacks) for per in zip(*G)]
        if outs is not None:
            for into, per in zip(outs, grads):
                for out, g in zip(into, per):
                    out[...] = g
        return losses, grads if outs is None else outs

    def loss_and_grads(self, thetas, X, y, outs=None):
        """One batch: its mean cross-entropy and each local shard's gradient block."""
        losses, grads = self.losses_and_grads(thetas, [X], [y], None if outs is None else [outs])
        return losses[0], grads[0]

    def gradients_into(self, theta, Xs, ys, outs, *, seed: int = 0, workers=(0,), step: int = 0) -> list:
        """Every hosted worker's gradient block into its row of ``outs`` at once (krum_mpi.run.workers),
        one group collective per pair of layers for them all: each worker's loss and gradient are
        bitwise those of gradient_into called for it alone."""
        self._message = (step, tuple(workers), 0)
        try:
            losses, _ = self.losses_and_grads([theta], Xs, ys, [[out] for out in outs])
        finally:
            self._message = None
        return losses

    def gradient_into(self, theta, X, y, out, *, seed: int = 0, worker: int = 0, step: int = 0) -> float:
        """The worker interface (models.py) for the one local shard: its gradient block into ``out``."""
        return self.gradients_into(theta, [X], [y], [out], seed=seed, workers=(worker,), step=step)[0]

    def logits(self, thetas, X):
        _, _, zs = self._forward(thetas, [np.asarray(X, dtype=thetas[0].dtype)])
        return zs[0][0][-1][0]

    def accuracy(self, theta, X, y, chunk: int = 8192) -> float:
        """Fraction of correct predictions; collective over the group (every shard passes the same X)."""
        correct = 0
        for a in range(0, len(y), chunk):
            z = self.logits([theta], X[a:a + chunk])
            pred = (z[:, 0] > 0) if self.full.binary else z.argmax(axis=1)
            correct += int((pred.astype(np.int64) == np.asarray(y[a:a + chunk])).sum())
        return correct / max(len(y), 1)


def _rows_of(stack):
    """A run's (count, batch, w) stack as (count * batch, w) rows (explicit: w may be 0)."""
    return stack.reshape(stack.shape[0] * stack.shape[1], stack.shape[2])


def _affine(a, layer):
    z = a @ layer[0]
    z += layer[1]
    return z


class Grid:
    """Rank r = g * p + s: shard s of model group g. Group g hosts the workers
    block_counts(n, G)[g] (contiguous ids); shard s's parameters are split in G aggregation blocks,
    the g-th owned by rank (g, s). Pure arithmetic: the communicators come later (comm_groups)."""

    def __init__(self, p: int, n_workers: int, ranks: int, rank: int, model):
        if ranks % p:
            raise ConfigError(f"parallel.model = {p} splits the ranks into groups of {p}, but there are {ranks} "
                              f"ranks: launch a multiple of {p} (mpiexec -n {p * max(1, ranks // p)}) "
                              "or change parallel.model")
        if not isinstance(model, models.Model):
            raise ConfigError(f"parallel.model = {p} splits the NumPy models ({', '.join(SPLIT_MODELS)}): "
                              "set parallel.model = 1 for a PyTorch model")
        self.p, self.groups = p, ranks // p
        self.group_id, self.shard = divmod(rank, p)
        self.counts = np.asarray(block_counts(n_workers, self.groups), dtype=np.int64)
        self.displs = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        start = int(self.displs[self.group_id])
        self.workers = range(start, start + int(self.counts[self.group_id]))
        # the world layout: shard 0 of each group reports its workers' losses (every shard has them)
        self.world_counts = [int(self.counts[r // p]) if r % p == 0 else 0 for r in range(ranks)]
        self.layout = ShardLayout(model, p)
        if min(self.layout.sizes) < self.groups:
            raise ConfigError(f"parallel.model = {p} gives shards of {min(self.layout.sizes)} to "
                              f"{max(self.layout.sizes)} parameters, but each shard needs at least one per model "
                              f"group ({self.groups}) to aggregate: widen model.hidden (or the model's outputs), or "
                              "use fewer ranks or a smaller parallel.model")
        self.model = SplitMLP(model, p, [self.shard])


def resolve(cfg):
    """parallel.model > 1: what the split covers, refused in one line before any MPI work. The
    aggregation is sharded by construction: placement 'gather' (the default) becomes 'sharded', in
    the Config returned (``cfg``, a krum_mpi.inputs.typed.Config, is never changed)."""
    p = cfg.parallel.model
    if p == 1:
        return cfg
    name = cfg.model.name
    if name not in SPLIT_MODELS:
        raise ConfigError(f"parallel.model = {p} splits the NumPy models ({', '.join(SPLIT_MODELS)}), not "
                          f"model.name = {name!r}: set parallel.model = 1")
    if cfg.aggregator.placement == "gather":
        cfg = typed.replace(cfg, "aggregator", placement="sharded")
    agg = cfg.aggregator
    if agg.placement != "sharded":
        raise ConfigError(f"parallel.model = {p} aggregates the parameter shards where they live (placement "
                          f"'sharded'), not with aggregator.placement = {agg.placement!r}: set it to 'sharded'")
    if agg.name.endswith("centered-clipping"):   # its centre is kept by block, checkpointed by world rank
        raise ConfigError(f"parallel.model = {p} does not carry centered clipping's centre across shards yet: "
                          "choose another rule, or parallel.model = 1")
    if cfg.workers.device != "cpu":
        raise ConfigError(f"parallel.model = {p} computes on the CPU: set workers.device = 'cpu'")
    _check_attack(cfg, p)
    return cfg


def _check_attack(cfg, p: int) -> None:
    from .. import attacks
    attack = cfg.attack
    kind = attacks.make(attack.name, cfg.workers.n, cfg.workers.byzantine, cfg.aggregator.f,
                        **attack.option_kwargs()).kind
    if kind in ("none", "data"):
        return
    if attack.adversary == "colluding":
        raise ConfigError(f"parallel.model = {p}: the colluding adversary is not split by shard yet; set "
                          "attack.adversary = 'omniscient' (crafted block by block) or parallel.model = 1")
    split_attacks = [a for a in BLOCKWISE_ATTACKS if a != "shard-target"]   # its blocks cut the natural layout
    if attack.name not in split_attacks:
        raise ConfigError(f"parallel.model = {p}: no rank holds a whole gradient, so the omniscient adversary "
                          f"crafts block by block, which {attack.name!r} cannot (it can: "
                          f"{', '.join(split_attacks)}); choose one of those, or parallel.model = 1")
