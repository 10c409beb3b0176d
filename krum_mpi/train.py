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

from . import aggregators, attacks, backend, config, data, models, results
from .comm import Comm, mpi_library_version
from .comm import block_counts as comm_block_counts
from .errors import ConfigError, KrumMPIError
from .progress import Progress
from .server import Server
from .sharded_step import ShardedStep
from .steps import StepLoop, Watchdog, peak_rss_mib
from .stop import StopRequest  # noqa: F401  (krum_mpi.train.StopRequest, as before)
from .summary import summarize_arrays
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

    def __init__(self, cfg: dict, comm: Comm):
        run, workers = cfg["run"], cfg["workers"]
        self.cfg = cfg
        self.seed = run["seed"]
        self.n = workers["n"]
        self.dataset = data.open_dataset(cfg["data"], seed=self.seed)
        self.model = models.make(cfg["model"], self.dataset.n_features, self.dataset.n_classes)
        self.d = self.model.n_params
        if cfg["aggregator"]["placement"] != "gather" and self.d < comm.size:
            raise ConfigError(f"aggregator.placement = {cfg['aggregator']['placement']!r} gives each rank a block of the "
                              f"{self.d} parameters: use at most {self.d} ranks, or placement = 'gather'")
        self.attack = attacks.make(cfg["attack"]["name"], self.n, workers["byzantine"], cfg["aggregator"]["f"],
                                   **config.attack_params(cfg))
        self.colluding = cfg["attack"]["adversary"] == "colluding" and self.attack.kind not in ("none", "data")
        if self.colluding and run["gather_deadline_s"] > 0:
            raise ConfigError("attack.adversary = 'colluding' cannot run with run.gather_deadline_s > 0 (its "
                              "Byzantine ranks agree in collectives, which steps without waiting would "
                              "mismatch): set run.gather_deadline_s = 0 or attack.adversary = 'omniscient'")
        if self.colluding:
            counts, self.byzantine = colluding_layout(self.n, workers["byzantine"], comm.size)
            comm.set_layout(counts)
        else:
            self.byzantine = byzantine_mask(self.n, workers["byzantine"], self.seed)
        self.local_workers = list(comm.worker_range())
        self.shards = [self.dataset.shard(w, self.n) for w in self.local_workers]
        self.worker_xp = backend.namespace(backend.resolve_device(workers["device"]))
        if comm.is_root:
            self.device = backend.resolve_device(run["device"])
            self.xp = backend.namespace(self.device)
            self.aggregator = aggregators.make(cfg["aggregator"]["name"], self.n, cfg["aggregator"]["f"],
                                               **config.aggregator_options(cfg))
            self.test_X, self.test_y = self.dataset.test_set()


def limit_blas_threads(comm: Comm) -> int:
    """One node's cores split between its ranks: oversubscribed BLAS threads made a 2-core node with
    4 ranks about ten times slower per gradient. An explicit OMP/OPENBLAS/MKL_NUM_THREADS wins."""
    if any(os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")):
        return 0
    threads = max(1, (os.cpu_count() or 1) // comm.ranks_on_this_node())
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=threads, user_api="blas")
    except Exception:   # threadpoolctl missing or no BLAS found: keep the library's default
        return 0
    return threads


def _agree_on_setup(cfg: dict, comm: Comm) -> Setup:
    """Build the setup on every rank; if any rank fails, the lowest failing rank reports and all stop."""
    error = None
    try:
        setup = Setup(cfg, comm)
    except KrumMPIError as exc:
        error, setup = exc, None
    first = comm.first_rank_where(error is not None)
    if first < comm.size:
        if comm.rank == first:
            raise error
        raise SystemExit(2)
    return setup


def _open_results(s: Setup, cfg: dict, out_path, comm: Comm, resume: bool, blas_threads: int, hostnames):
    """Rank 0: a results writer, new or reopened at its checkpoint (None when there is none)."""
    prov = results.provenance(mpi_library_version(), hostnames, comm.size, s.n, backend.device_description(s.device))
    prov.update({"dataset": s.dataset.provenance, "n_params": s.d, "adversary": cfg["attack"]["adversary"],
                 "blas_threads_per_rank": blas_threads or "library default"})
    args = (out_path, cfg, config.run_id(cfg), prov, s.byzantine, s.aggregator.max_selected, False,
            cfg["run"]["gather_deadline_s"] > 0)
    if resume and Path(out_path).exists():
        writer, checkpoint = results.ResultsWriter.resume(*args)
    else:
        writer, checkpoint = results.ResultsWriter(*args), None
    writer.extra_attrs["adversary"] = cfg["attack"]["adversary"] if s.colluding else "omniscient"
    writer.extra_selection["worker_rank"] = np.repeat(np.arange(comm.size, dtype=np.int32), comm.counts)
    return writer, checkpoint


def run(cfg: dict, out_path, comm: Comm | None = None, resume: bool = False,
        stop: StopRequest | None = None, quiet: bool = True) -> dict:
    """Train under ``cfg``; rank 0 writes ``out_path`` and returns a summary dict (others: the status).

    With ``resume``, a run continues from the checkpoint in ``out_path`` when there is one. When
    ``stop`` is set on any rank, every rank leaves at the same step, rank 0 checkpoints, and the
    summary says ``interrupted``. Unless ``quiet``, rank 0 shows its progress (krum_mpi.progress).
    """
    comm = comm or Comm(cfg["workers"]["n"])
    stop = stop or StopRequest()
    blas_threads = limit_blas_threads(comm)
    s = _agree_on_setup(cfg, comm)
    run_cfg = cfg["run"]
    steps = run_cfg["steps"]
    workers = LocalWorkers(s, cfg, comm)
    hostnames = comm.hostnames()
    theta = np.empty(s.d, dtype=np.float32)

    # Rank 0 opens (or reopens) the results and tells every rank where to start; -1: it failed.
    server = writer = checkpoint = None
    sharded = ShardedStep(s, cfg, comm) if cfg["aggregator"]["placement"] != "gather" else None
    if comm.is_root:
        server = sharded or Server(s, cfg)   # sharded: no (n, d) buffer anywhere
        error = None
        try:
            writer, checkpoint = _open_results(s, cfg, out_path, comm, resume, blas_threads, hostnames)
        except KrumMPIError as exc:
            error = exc
        start = comm.bcast_flag(-1 if error else (checkpoint["step"] + 1 if checkpoint else 0))
        if error:
            raise error
        if checkpoint:
            theta[:] = checkpoint["params"]
            server.restore(checkpoint)
        else:
            theta[:] = s.model.init(np.random.default_rng([s.seed, SEED_PARAMS]))
    else:
        start = comm.bcast_flag(0)
        if start < 0:
            raise SystemExit(2)
    if workers.momentum is not None and start > 0:
        comm.scatter_rows(checkpoint["worker_momentum"] if comm.is_root else None, workers.momentum)

    def save(step_done: int, status: str, peak_rss=None) -> None:
        """Collective (unless ``peak_rss`` is given: rank 0 alone, no worker momentum): gather what a
        resume needs; rank 0 flushes results and checkpoint atomically."""
        all_momentum = None
        if peak_rss is None:
            rss = comm.gather_values(peak_rss_mib())
            if workers.momentum is not None:
                all_momentum = np.empty((s.n, s.d), dtype=np.float32) if comm.is_root else None
                comm.gather_rows(workers.momentum, all_momentum)
        else:
            rss = peak_rss.copy()
            rss[0] = peak_rss_mib()
        if not comm.is_root:
            return
        writer.extra_attrs["peak_rss_mib"] = rss     # per rank, at this flush
        writer.checkpoint = {"step": step_done, "params": theta.copy(), "worker_momentum": all_momentum,
                             **server.state()}
        writer.flush(status)

    watchdog = progress = None
    if comm.is_root:
        if start == 0:
            writer.flush("running")
        if run_cfg["watchdog_s"] > 0:
            watchdog = Watchdog(run_cfg["watchdog_s"], writer, comm, stop)
            watchdog.start()
        progress = Progress(steps, "train", unit="step", quiet=quiet, start=start)
    loop = StepLoop(s, cfg, comm, workers, server, writer, theta, stop, save, watchdog, progress, sharded)
    try:
        step, interrupted = loop.run(start)
    except KrumMPIError as exc:    # found by one rank mid-run (a bad row in a dataset file, say)
        if writer is not None:
            writer.flush("failed")
        if comm.size > 1:          # the other ranks wait in a collective: end them all, with the message
            print(f"krum-mpi: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
            comm.abort(2)
        raise
    except BaseException:
        if writer is not None:
            writer.flush("failed")   # records so far; the last checkpoint stays the one on disk
        raise

    if watchdog is not None:
        watchdog.stop()
    if progress is not None:
        progress.close()
    status = "interrupted" if interrupted else "complete"
    save(step, status)
    comm.write_audit()
    if not comm.is_root:
        return {"status": status}
    return {**summarize(writer, s.byzantine), "status": status}


def summarize(writer: results.ResultsWriter, byzantine: np.ndarray) -> dict:
    k = writer.done
    return {
        "path": str(writer.path),
        "aggregator": writer.cfg["aggregator"]["name"],
        "attack": writer.cfg["attack"]["name"],
        "byzantine": int(byzantine.sum()),
        "steps": k,
        "final_loss": float(writer.metrics["loss"][k - 1]) if k else float("nan"),
        "mean_aggregate_s": float(np.mean(writer.timing["aggregate_s"][:k])) if k else float("nan"),
        **summarize_arrays(writer.metrics["test_accuracy"][:k], writer.selected[:k], byzantine,
                           writer.timing["step_s"][:k]),
    }
