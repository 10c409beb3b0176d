"""Before the first step: will this run fit in memory and on disk? Refuse what cannot, naming the key.

Memory: each rank's arrays are known from the config and the model (d parameters, n workers, k of
them on this rank): the parameters, its workers' gradient rows and momentum, one minibatch's
activations, and on rank 0 the gather buffer (n x d), the server's buffers, the rule's workspace,
a test-set chunk and the per-step rows kept between flushes. The estimate for a node (rank 0's
share plus the others', as if all ran here) is compared with the memory available now
(MemAvailable, or the cgroup's limit when lower). What the ranks already hold (the interpreter,
the data set) is already out of MemAvailable, so it is not counted again.

Disk (rank 0): the results rows of every step (twice: two files alternate, see results.py), the
checkpoint (twice while it is replaced), and what a flush reserves beyond its rows before HDF5
writes (``flush_reserve_bytes``: the first flush of a small run needs that, not its rows) against the
free space of the results folder.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..inputs.typed import Config

GIB = float(1 << 30)
ROWS_WITHOUT_COPY = ("average", "krum", "multi-krum")   # rules that need no (n, d) workspace


def _gib(x: float) -> str:
    return f"{x / GIB:.3g} GiB"


def _d_key(cfg: Config) -> str:
    return "model.hidden" if cfg.model.name == "mlp" else "data.n_features"


def _size_key(cfg: Config, layer_sizes) -> str:
    """The key that makes the model large: the wider end of its largest layer (the data's features,
    a hidden width, or the data's classes), so the message names the value to lower."""
    sizes = [int(v) for v in layer_sizes]
    if len(sizes) < 2:
        return _d_key(cfg)
    largest = max(range(len(sizes) - 1), key=lambda l: sizes[l] * sizes[l + 1])
    end = largest if sizes[largest] >= sizes[largest + 1] else largest + 1
    if end == 0:
        return "data.n_features"
    return "data.n_classes" if end == len(sizes) - 1 else "model.hidden"


def _chunk_key(n_features: int, widths: int, n_classes: int) -> str:
    """The key that makes a test-set chunk (inputs, activations, logits) large."""
    return max((n_features, "data.n_features"), (widths, "model.hidden"), (n_classes, "data.n_classes"))[1]


def row_bytes(n: int, max_selected: int) -> int:
    """Bytes of one step's record (every per-step dataset, weights and absent included)."""
    return 8 * 8 + n * (8 + 4 + 1) + 4 * max_selected


def rank_terms(cfg: Config, d: int, n_features: int, layer_sizes, k: int, root: bool, max_selected: int,
               n_test: int = 0) -> list:
    """(bytes, what, key) for one rank hosting k workers (and the server when ``root``); ``n_test``:
    test rows rank 0 will load (0 once they are loaded: then MemAvailable already holds them)."""
    n, opt = cfg.workers.n, cfg.optimizer
    batch = cfg.workers.batch_size
    widths = sum(layer_sizes[1:])
    worker_mom = opt.momentum > 0 and opt.momentum_at == "worker"
    server_mom = opt.momentum > 0 and opt.momentum_at == "server"
    dk = _size_key(cfg, layer_sizes)
    terms = [
        (4.0 * d * 3, "the parameters, a gradient and its copy", dk),
        (4.0 * k * d * (2 if worker_mom else 1), f"this rank's {k} gradient rows" +
         (" and worker momentum" if worker_mom else ""), dk),
        (4.0 * batch * (3 * n_features + 3 * widths + 4 * layer_sizes[-1]), "one minibatch's activations",
         "workers.batch_size"),
    ]
    if root:
        flush_every = cfg.run.checkpoint_every or cfg.run.eval_every
        rule = cfg.aggregator.name
        terms += [
            (4.0 * n * d, f"the gather buffer (workers.n = {n} rows of d = {d})", "workers.n" if 4.0 * d < 1e8 else dk),
            (4.0 * d * (4 if server_mom else 3), "the server's update buffers", dk),
            (4.0 * n * d * (rule not in ROWS_WITHOUT_COPY) + 8.0 * n * n * 4 + 8.0 * n * min(d, 1 << 16),
             f"the {rule} rule's workspace", "workers.n" if n * n * 32.0 > 4.0 * n * d else dk),
            (4.0 * 8192 * (n_features + 2 * widths + layer_sizes[-1]), "a test-set chunk",
             _chunk_key(n_features, sum(layer_sizes[1:-1]), layer_sizes[-1])),
            ((4.0 * n_features + 8.0) * n_test, f"the test set ({n_test} rows of {n_features} features)",
             "data.n_test"),
            (2.0 * min(flush_every, cfg.run.steps) * row_bytes(n, max_selected),
             "the per-step rows kept between flushes", "run.checkpoint_every"),
        ]
    return terms


def available_memory() -> float:
    """Bytes this node can still give: MemAvailable, capped by a cgroup v2 or v1 limit."""
    avail = float("inf")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024.0
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < (1 << 60):
            avail = min(avail, float(int(limit) - usage))
    return avail


def check_memory(cfg: Config, d: int, n_features: int, layer_sizes, counts, ranks_here: int, max_selected: int,
                 available: float | None = None, n_test: int = 0) -> None:
    """Raise ConfigError when this node's ranks cannot hold the run (rank 0's share counted here)."""
    k_max = int(np.max(counts))
    root = rank_terms(cfg, d, n_features, layer_sizes, int(counts[0]), True, max_selected, n_test)
    other = rank_terms(cfg, d, n_features, layer_sizes, k_max, False, max_selected)
    terms = root + [(b * (ranks_here - 1), f"{what} (x{ranks_here - 1} ranks)", key)
                    for b, what, key in other] if ranks_here > 1 else root
    need = sum(b for b, _, _ in terms)
    avail = available_memory() if available is None else available
    if need > avail:
        b, what, key = max(terms)
        raise ConfigError(f"this run needs about {_gib(need)} of memory on a node with {ranks_here} rank(s) but "
                          f"{_gib(avail)} is available; the largest part is {what}, {_gib(b)}: lower {key} "
                          "(or spread the ranks over more nodes)")


def check_sizes(cfg: Config, d: int, dataset, layer_sizes, counts, ranks_here: int) -> None:
    """The memory check as soon as the sizes are known (data opened, model described), before anything
    of their size is made: the workers' list and shards, the test set, the rule. Every worker may be
    selected (the rule is not built yet); the test set is counted as it is not loaded yet."""
    check_memory(cfg, d, dataset.n_features, layer_sizes, counts, ranks_here, cfg.workers.n,
                 n_test=int(getattr(dataset, "n_test", 0) or 0))


def flush_reserve_bytes(cfg: Config, max_selected: int) -> float:
    """What one flush allocates beyond the rows' own bytes (ResultsWriter._reserve): a fixed margin
    for HDF5's metadata and two partial chunks per per-step dataset, for the rows of one flush."""
    from .results import PER_STEP, _chunk_rows

    n = cfg.workers.n
    rows_per_flush = min(cfg.run.checkpoint_every or cfg.run.eval_every, cfg.run.steps)
    widths = {"": (), "n": (n,), "selected": (max_selected,)}
    need = float(1 << 18)
    for spec in PER_STEP:
        rows, row_bytes = _chunk_rows(widths[spec.width], spec.dtype)
        need += (-(-rows_per_flush // rows) + 2) * rows * row_bytes
    return need


def check_disk(cfg: Config, d: int, out_path, max_selected: int) -> None:
    """Raise ConfigError when the results and checkpoint cannot fit in the results folder."""
    n, opt = cfg.workers.n, cfg.optimizer
    rows = 2.0 * cfg.run.steps * row_bytes(n, max_selected) + flush_reserve_bytes(cfg, max_selected)
    worker_mom = opt.momentum > 0 and opt.momentum_at == "worker"
    ckpt = 2.0 * 4 * d * (3 + (n if worker_mom else 0))
    folder = Path(out_path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = float(shutil.disk_usage(folder).free)
    if rows + ckpt > free:
        key = "run.steps" if rows > ckpt else _d_key(cfg)
        raise ConfigError(f"the results of this run need about {_gib(rows + ckpt)} on disk (rows of "
                          f"{cfg.run.steps} steps and a flush's reserve: {_gib(rows)}, checkpoint: {_gib(ckpt)}) "
                          f"but {folder} has {_gib(free)} free: lower {key}, or choose another --out")
