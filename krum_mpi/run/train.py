"""The training loop: a synchronous parameter server over MPI.

    rank 0                                   every rank (rank 0 hosts workers too)
    theta --Bcast----------------------->    theta
                                             for each local worker w:
                                                 batch = shard_w.batch(step)   (seeded by seed, w, step)
                                                 g_w   = model gradient (label-flipped for data attacks)
    X[n, d] <--Gatherv (float32)---------    g_w rows
    Byzantine rows <- attack.craft(honest rows)   (omniscient adversary: crafted where gradients meet)
    g = aggregator(X)        (NumPy or CuPy)
    theta <- SGD step (momentum at the server or at the workers)
    record step metrics, timings, selections -> HDF5 (rank 0, atomic flush)

Every random draw derives from ``run.seed``: parameters from (seed, 0), the Byzantine set from
(seed, 3), attack noise from (seed, 2, step), batches from the data module's (seed, worker, step).
So a rerun with the same seed gives the same selections.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from .. import aggregators, attacks, backend, config, data, models
from ..inputs.typed import Config
from . import checkpoint, outfiles, preflight, results, resume
from ..parallel import byzantine_ranks, model_parallel, mp_state, placements
from ..parallel.comm import Comm, mpi_library_version
from ..parallel.comm import block_counts as comm_block_counts
from ..errors import ConfigError, KrumMPIError
from .progress import Progress
from .audit import write_audit
from .steps import StepLoop, Watchdog, flush_or_note, peak_rss_mib
from .stop import StopRequest  # noqa: F401  (krum_mpi.train.StopRequest, as before)
from ..summary import summarize_arrays
from .workers import LocalWorkers

SEED_PARAMS, SEED_BYZANTINE = 0, 3   # attack noise: (seed, 2, step), see server.py and workers.py


def byzantine_mask(n: int, n_byzantine: int, seed: int) -> np.ndarray:
    """Which workers are Byzantine: a seeded random subset of size n_byzantine."""
    mask = np.zeros(n, dtype=bool)
    if n_byzantine:
        rng = np.random.default_rng([seed, SEED_BYZANTINE])
        mask[rng.choice(n, size=n_byzantine, replace=False)] = True
    return mask


def colluding_layout(n: int, n_byzantine: int, n_ranks: int):
    """Worker counts per rank and Byzantine mask for the colluding adversary.

    The Byzantine workers (the last ``n_byzantine`` ids) live on ranks of their own, never rank 0
    (the server sees every gradient), so no honest gradient ever reaches a Byzantine process: the
    adversary knows only its own honest gradients and what it shares among its ranks.
    """
    if n_ranks < 2:
        raise ConfigError("attack.adversary = 'colluding' needs at least 2 MPI ranks (honest and Byzantine "
                          "workers on separate processes): launch with mpiexec -n 2 or more")
    byz_ranks = min(max(1, round(n_ranks * n_byzantine / n)), n_ranks - 1, n_byzantine)
    counts = comm_block_counts(n - n_byzantine, n_ranks - byz_ranks) + comm_block_counts(n_byzantine, byz_ranks)
    mask = np.zeros(n, dtype=bool)
    mask[n - n_byzantine:] = True
    return counts, mask


class Setup:
    """What every rank builds before the first collective; errors here are caught collectively."""

    def __init__(self, cfg: Config, comm: Comm, ranks_here: int = 1):
        run, workers, agg = cfg.run, cfg.workers, cfg.aggregator
        self.cfg = cfg
        self.seed = run.seed
        self.n = workers.n
        self.dataset = data.open_dataset(cfg.data, seed=self.seed)
        self.model = models.make(cfg.model, self.dataset.n_features, self.dataset.n_classes,
                                 getattr(self.dataset, "input_shape", None))
        self.grid = None   # parallel.model > 1: this rank's place in the grid of model groups
        if cfg.parallel.model > 1:
            self.grid = model_parallel.Grid(cfg.parallel.model, self.n, comm.size, comm.rank, self.model)
            self.model = self.grid.model   # this rank's shard of the split MLP (d below: the shard's size)
            comm.set_layout(self.grid.world_counts)
        self.d = self.model.n_params   # model parallelism: this rank's shard
        self.d_total = sum(self.grid.layout.sizes) if self.grid else self.d
        preflight.check_sizes(cfg, self.d, self.dataset, _layer_sizes(self), comm.counts, ranks_here)   # nothing big yet
        placements.check_fits(cfg, self.d, comm.size, self.grid)
        self.attack = attacks.make(cfg.attack.name, self.n, workers.byzantine, agg.f, **cfg.attack.option_kwargs())
        self.colluding = cfg.attack.adversary == "colluding" and self.attack.kind not in ("none", "data")
        if self.colluding and run.gather_deadline_s > 0:
            raise ConfigError("attack.adversary = 'colluding' cannot run with run.gather_deadline_s > 0 (its "
                              "Byzantine ranks agree in collectives, which steps without waiting would "
                              "mismatch): set run.gather_deadline_s = 0 or attack.adversary = 'omniscient'")
        if self.colluding:
            counts, self.byzantine = colluding_layout(self.n, workers.byzantine, comm.size)
            comm.set_layout(counts)
        else:
            self.byzantine = byzantine_mask(self.n, workers.byzantine, self.seed)
        self.through_ranks = byzantine_ranks.attach(cfg, comm, self.grid, self.byzantine)   # workers of lying ranks
        self.local_workers = list(self.grid.workers if self.grid else comm.worker_range())
        self.shards = [self.dataset.shard(w, self.n) for w in self.local_workers]
        self.worker_xp = backend.namespace(backend.resolve_device(workers.device))
        if comm.is_root:
            self.device = backend.resolve_device(run.device)
            self.xp = backend.namespace(self.device)
            self.aggregator = aggregators.make(agg.name, self.n, agg.f, **agg.option_kwargs())
        if comm.is_root or (self.grid is not None and self.grid.group_id == 0):   # group 0 evaluates together
            self.test_X, self.test_y = self.dataset.test_set()
            self.val_X, self.val_y = self.dataset.validation_set()


def limit_blas_threads(comm: Comm) -> int:
    """One node's cores split between its ranks: oversubscribed BLAS threads made a 2-core node with
    4 ranks about ten times slower per gradient. An explicit OMP/OPENBLAS/MKL_NUM_THREADS wins."""
    chosen = [os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")]
    if any(chosen):   # recorded in provenance: large products round differently with other counts
        value = next(v for v in chosen if v)
        return int(value) if value.strip().isdigit() else 0
    threads = max(1, (os.cpu_count() or 1) // comm.ranks_on_this_node())
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=threads, user_api="blas")
    except Exception:   # threadpoolctl missing or no BLAS found: keep the library's default
        return 0
    return threads


def _layer_sizes(setup: Setup) -> list:
    """The model's layer widths for the memory estimate: a torch model's activations are not estimated
    (its layers are its own), so its inputs and outputs only."""
    return getattr(setup.model, "layer_sizes", None) or [setup.dataset.n_features, setup.dataset.n_classes]


def _agree_on_setup(cfg: Config, comm: Comm, ranks_here: int) -> Setup:
    """Build the setup on every rank, and check the run fits in memory before anything large is
    allocated; if any rank fails, the lowest failing rank reports and all stop."""
    error = None
    try:
        setup = Setup(cfg, comm, ranks_here)
        width = setup.aggregator.max_selected if comm.is_root else cfg.workers.n   # rank 0 knows the rule
        preflight.check_memory(cfg, setup.d, setup.dataset.n_features, _layer_sizes(setup), comm.counts, ranks_here,
                               width)
    except KrumMPIError as exc:
        error, setup = exc, None
    first = comm.first_rank_where(error is not None)
    if first < comm.size:
        if comm.rank == first:
            raise error
        raise SystemExit(2)
    return setup


def _open_results(s: Setup, cfg: Config, out_path, comm: Comm, resume_run: bool, blas_threads: int, hostnames,
                  placement):
    """Rank 0: (writer, first step, checkpoint arrays or None), new or checked for --resume.

    Everything read is checked here, before rank 0 tells the others where to start (go or no-go)."""
    prov = results.provenance(mpi_library_version(), hostnames, comm.size, s.n, backend.device_description(s.device))
    prov.update({"dataset": s.dataset.provenance, "n_params": s.d_total, "adversary": cfg.attack.adversary,
                 "blas_threads_per_rank": blas_threads or "library default"})
    max_selected = s.aggregator.max_selected
    preflight.check_disk(cfg, s.d_total, out_path, max_selected)
    resolved = cfg.to_dict()   # what the results file stores
    args = (config.run_id(resolved), prov, s.byzantine, max_selected, False, placement.drops_rows)
    if resume_run and Path(out_path).exists() and placement.splits_params:
        writer, start, arrays = mp_state.load(out_path, cfg, args, s.grid, s.n)
    elif resume_run and Path(out_path).exists():
        mp_state.check_layout(out_path, 1)
        expected = {"params": ((s.d,), "float32")}
        if placement.momentum is not None:
            expected["server_momentum"] = ((s.d,), "float32")
        rows = None
        if cfg.optimizer.momentum > 0 and cfg.optimizer.momentum_at == "worker":
            expected["worker_momentum"] = ((s.n, s.d), "float32")
            rows = placement.momentum_rows()   # free before step 1
        expected.update(placement.state_arrays())
        writer, start, arrays = resume.load(out_path, resolved, args, s.d, expected, s.aggregator.rule.state_keys,
                                            into={"worker_momentum": rows})
    else:
        writer, start, arrays = results.ResultsWriter(out_path, resolved, *args), 0, None
    outfiles.remove_stale_files(out_path)
    writer.extra_attrs["adversary"] = cfg.attack.adversary if s.colluding else "omniscient"
    writer.extra_selection["worker_rank"] = np.repeat(np.arange(comm.size, dtype=np.int32), comm.counts)
    if cfg.byzantine_ranks.ranks:   # a per-step record (results.PER_STEP): today the same workers at every step
        writer.every_step["selection/byzantine_through_ranks"] = s.through_ranks
    return writer, start, arrays


def _start(s: Setup, cfg: Config, out_path, comm: Comm, resume_run: bool, blas_threads: int, theta: np.ndarray,
           workers: LocalWorkers, placement):
    """Collective: rank 0 opens (or reopens and checks) the results and tells every rank where to
    start (go or no-go: -1 and every rank leaves); parameters, momentum and the rule's state restored
    on a resume. Returns (placement, writer, checkpoint store, first step); the writer and the store
    are None off rank 0."""
    hostnames = comm.hostnames()
    writer = store = arrays = None
    if comm.is_root:
        error = None
        try:
            writer, start, arrays = _open_results(s, cfg, out_path, comm, resume_run, blas_threads, hostnames,
                                                  placement)
        except KrumMPIError as exc:
            error = exc
        start = comm.bcast_flag(-1 if error else start)
        if error:
            raise error
        store = checkpoint.CheckpointStore(checkpoint.path_for(out_path), writer.run_id)
        if arrays:
            theta[:] = arrays["params"]
            if start < cfg.run.steps:
                placement.restore(arrays)
                store.last_step = start - 1
        else:
            theta[:] = s.model.init(np.random.default_rng([s.seed, SEED_PARAMS]))
    else:
        start = comm.bcast_flag(0)
        if start < 0:
            raise SystemExit(2)
    if workers.momentum is not None and 0 < start < cfg.run.steps:
        comm.scatter_rows(arrays["worker_momentum"] if comm.is_root else None, workers.momentum)
    if 0 < start < cfg.run.steps:
        placement.share_restored_state()
    return placement, writer, store, start


def run(cfg: Config, out_path, comm: Comm | None = None, resume: bool = False,
        stop: StopRequest | None = None, quiet: bool = True) -> dict:
    """Train under ``cfg`` (a validated Config, ``config.load``); rank 0 writes ``out_path`` and returns a summary dict (others: the status).

    With ``resume``, a run continues from the checkpoint in ``out_path`` when there is one. When
    ``stop`` is set on any rank, every rank leaves at the same step, rank 0 checkpoints, and the
    summary says ``interrupted``. Unless ``quiet``, rank 0 shows its progress (krum_mpi.run.progress).
    """
    comm = comm or Comm(cfg.workers.n)
    stop = stop or StopRequest()
    blas_threads = limit_blas_threads(comm)
    s = _agree_on_setup(cfg, comm, comm.ranks_on_this_node())
    run_cfg = cfg.run
    placement = placements.build(s, cfg, comm)   # collective for parallel.model > 1 (its groups)
    workers = LocalWorkers(s, comm, cfg.optimizer, cfg.workers, cfg.model, cfg.aggregator)
    theta = np.empty(s.d, dtype=np.float32)   # model parallelism: this rank's shard only

    if placement.splits_params:   # no rank holds the whole vector: checkpoints shard by shard
        groups = placement.groups
        _, writer, store, start = mp_state.start(s, cfg, out_path, comm, resume, blas_threads, theta, workers,
                                                 placement, groups, _open_results,
                                                 np.random.default_rng([s.seed, SEED_PARAMS]))
        save = mp_state.saver(comm, groups, s.grid, workers, writer, store, theta, _all_agree, s.n)
    else:
        _, writer, store, start = _start(s, cfg, out_path, comm, resume, blas_threads, theta, workers, placement)
        save = _saver(comm, workers, placement, writer, store, theta)

    if start == 0:
        _all_agree(comm, (lambda: writer.flush("running")) if comm.is_root else None)
    watchdog = progress = None
    if comm.is_root:
        if run_cfg.watchdog_s > 0:
            watchdog = Watchdog(run_cfg.watchdog_s, writer, comm, stop)
            watchdog.start()
        progress = Progress(run_cfg.steps, "train", unit="step", quiet=quiet, start=start)
    loop = StepLoop(s, run_cfg, cfg.faults, comm, workers, placement, writer, theta, stop, save, watchdog, progress)
    try:
        step, interrupted = loop.run(start)
    except KrumMPIError as exc:    # found by one rank mid-run (a bad row in a dataset file, say)
        flush_or_note(writer, "failed", exc)
        # the other ranks wait in a collective: end them all, with the message (unless all know already)
        if comm.size > 1 and not getattr(exc, "agreed", False):
            print(f"krum-mpi: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
            comm.abort(2)
        raise
    except BaseException:
        flush_or_note(writer, "failed")    # records so far; the last checkpoint stays the one on disk
        raise

    if watchdog is not None:
        watchdog.stop()
    if progress is not None:
        progress.close()
    status = "interrupted" if interrupted else "complete"
    save(step, status)
    write_audit(comm)
    if not comm.is_root:
        return {"status": status}
    return {**summarize(writer, s.byzantine), "status": status}


def _saver(comm: Comm, workers: LocalWorkers, placement, writer, store, theta: np.ndarray):
    """The run's ``save(step_done, status, peak_rss=None)``."""

    def save(step_done: int, status: str, peak_rss=None) -> None:
        """Collective: rank 0 appends the new rows, then replaces the checkpoint; every rank learns
        whether that worked (a full disk ends all ranks with one line, no rank left waiting).

        With ``peak_rss`` (the ranks' peak memory as rank 0 last heard it): rank 0 alone, used with a
        gather deadline when the workers hold no momentum; a failed write then raises on rank 0,
        whose error handler ends the other ranks."""
        final = status == "complete"
        if peak_rss is not None:
            rss = peak_rss.copy()
            rss[0] = peak_rss_mib()
        else:
            rss = comm.gather_values(peak_rss_mib())
            if workers.momentum is not None and not final:
                # the gather buffer is free between steps; with a gather deadline the step loop has
                # drained every late reply first (and those land in the exchange's own buffers). A
                # sharded placement has none: the momentum rows get a buffer of their own.
                rows = placement.momentum_rows() if comm.is_root else None
                comm.gather_rows(workers.momentum, rows)
        if not final:
            placement.gather_state()   # the rule's state (a centre held block by block) reaches rank 0
        if not comm.is_root:
            return _all_agree(comm, None)
        writer.extra_attrs["peak_rss_mib"] = rss     # per rank, at this flush
        if final:
            def write():
                writer.flush(status, final={"step": step_done, "params": theta})
        else:
            def write():
                writer.flush(status)
                store.write(step_done, {"params": theta, **placement.state(),
                                        "worker_momentum": placement.momentum_rows()
                                        if workers.momentum is not None else None},
                            rows=writer.row_digests())
                writer.note_checkpoint(step_done)
        if peak_rss is not None:
            write()
        else:
            _all_agree(comm, write)
        if final:
            store.remove()

    return save


def _all_agree(comm: Comm, write) -> None:
    """Collective: rank 0 runs ``write`` (None elsewhere); if it fails (a full disk, a read-only
    folder), every rank leaves together: rank 0 with the one-line error, the others with status 2."""
    error = None
    if write is not None:
        try:
            write()
        except KrumMPIError as exc:
            error = exc
    if comm.bcast_flag(error is not None):
        if error is None:
            raise SystemExit(2)
        error.agreed = True      # every rank knows: no abort needed
        raise error


def summarize(writer: results.ResultsWriter, byzantine: np.ndarray) -> dict:
    run = results.read_run(writer.path)
    k = int(run["attrs"]["steps_done"])
    metrics, timing = run["metrics"], run["timing"]
    return {
        "path": str(writer.path),
        "aggregator": str(run["attrs"]["aggregator"]),
        "attack": str(run["attrs"]["attack"]),
        "byzantine": int(byzantine.sum()),
        "steps": k,
        "final_loss": float(metrics["loss"][k - 1]) if k else float("nan"),
        "mean_aggregate_s": float(np.mean(timing["aggregate_s"][:k])) if k else float("nan"),
        **summarize_arrays(metrics["test_accuracy"][:k], run["selection"]["selected"][:k], byzantine,
                           timing["step_s"][:k]),
    }
