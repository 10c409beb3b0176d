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
import threading
import time
from pathlib import Path

import numpy as np

from . import aggregators, attacks, backend, checkpoint, config, data, models, outfiles, preflight, results, resume
from .comm import Comm, mpi_library_version
from .comm import block_counts as comm_block_counts
from .errors import ConfigError, KrumMPIError
from .server import Server
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
        self.attack = attacks.make(cfg["attack"]["name"], self.n, workers["byzantine"], cfg["aggregator"]["f"],
                                   **config.attack_params(cfg))
        self.colluding = cfg["attack"]["adversary"] == "colluding" and self.attack.kind not in ("none", "data")
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


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _agree_on_setup(cfg: dict, comm: Comm, ranks_here: int) -> Setup:
    """Build the setup on every rank, and check the run fits in memory before anything large is
    allocated; if any rank fails, the lowest failing rank reports and all stop."""
    error = None
    try:
        setup = Setup(cfg, comm)
        width = setup.aggregator.max_selected if comm.is_root else cfg["workers"]["n"]   # rank 0 knows the rule
        preflight.check_memory(cfg, setup.d, setup.dataset.n_features, setup.model.layer_sizes, comm.counts,
                               ranks_here, width)
    except KrumMPIError as exc:
        error, setup = exc, None
    first = comm.first_rank_where(error is not None)
    if first < comm.size:
        if comm.rank == first:
            raise error
        raise SystemExit(2)
    return setup


class Watchdog(threading.Thread):
    """Ends a run that stops making progress (a hung rank, a lost message): rank 0 keeps the last
    checkpoint on disk, says what happened in one line, and aborts every rank."""

    def __init__(self, timeout_s: float, writer, comm: Comm):
        super().__init__(daemon=True, name="krum-mpi-watchdog")
        self.timeout_s, self.writer, self.comm = timeout_s, writer, comm
        self.last = time.monotonic()
        self._stopped = threading.Event()

    def beat(self) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(min(1.0, self.timeout_s / 4)):
            if time.monotonic() - self.last > self.timeout_s:
                done = self.writer.done
                _flush_failed(self.writer)   # a full disk must not keep the watchdog from ending the run
                print(f"krum-mpi: error: no step finished for {self.timeout_s:g} s after step {done - 1} "
                      f"(a rank is hung or dead): results and last checkpoint kept in {self.writer.path}; "
                      "fix the cause, then rerun with --resume", file=sys.stderr, flush=True)
                self.comm.abort(4)
                return


class StopRequest:
    """Set by a signal handler (SIGTERM, SIGUSR1); checked collectively once per step."""

    def __init__(self):
        self.signal = 0

    def __call__(self, signum, frame=None):
        self.signal = signum


def _open_results(s: Setup, cfg: dict, out_path, comm: Comm, resume_run: bool, blas_threads: int, hostnames,
                  server: Server):
    """Rank 0: (writer, first step, checkpoint arrays or None), new or checked for --resume.

    Everything read is checked here, before rank 0 tells the others where to start (go or no-go)."""
    prov = results.provenance(mpi_library_version(), hostnames, comm.size, s.n, backend.device_description(s.device))
    prov.update({"dataset": s.dataset.provenance, "n_params": s.d, "adversary": cfg["attack"]["adversary"],
                 "blas_threads_per_rank": blas_threads or "library default"})
    max_selected = s.aggregator.max_selected
    preflight.check_disk(cfg, s.d, out_path, max_selected)
    args = (config.run_id(cfg), prov, s.byzantine, max_selected, False, cfg["run"]["gather_deadline_s"] > 0)
    if resume_run and Path(out_path).exists():
        expected = {"params": ((s.d,), "float32")}
        if server.momentum is not None:
            expected["server_momentum"] = ((s.d,), "float32")
        if cfg["optimizer"]["momentum"] > 0 and cfg["optimizer"]["momentum_at"] == "worker":
            expected["worker_momentum"] = ((s.n, s.d), "float32")
        writer, start, arrays = resume.load(out_path, cfg, args, s.d, expected, s.aggregator.rule.state_keys,
                                            into={"worker_momentum": server.X})   # X is free before step 1
    else:
        writer, start, arrays = results.ResultsWriter(out_path, cfg, *args), 0, None
    outfiles.remove_stale_files(out_path)
    writer.extra_attrs["adversary"] = cfg["attack"]["adversary"] if s.colluding else "omniscient"
    writer.extra_selection["worker_rank"] = np.repeat(np.arange(comm.size, dtype=np.int32), comm.counts)
    return writer, start, arrays


def _start(s: Setup, cfg: dict, out_path, comm: Comm, resume_run: bool, blas_threads: int, theta: np.ndarray,
           workers: LocalWorkers):
    """Collective: rank 0 opens (or reopens and checks) the results and tells every rank where to
    start (go or no-go: -1 and every rank leaves); parameters and momentum restored on a resume.
    Returns (server, writer, checkpoint store, first step); the first three are None off rank 0."""
    hostnames = comm.hostnames()
    server = writer = store = arrays = None
    if comm.is_root:
        server = Server(s, cfg)
        error = None
        try:
            writer, start, arrays = _open_results(s, cfg, out_path, comm, resume_run, blas_threads, hostnames,
                                                  server)
        except KrumMPIError as exc:
            error = exc
        start = comm.bcast_flag(-1 if error else start)
        if error:
            raise error
        store = checkpoint.CheckpointStore(checkpoint.path_for(out_path), writer.run_id)
        if arrays:
            theta[:] = arrays["params"]
            if start < cfg["run"]["steps"]:
                server.restore(arrays)
                store.last_step = start - 1
        else:
            theta[:] = s.model.init(np.random.default_rng([s.seed, SEED_PARAMS]))
    else:
        start = comm.bcast_flag(0)
        if start < 0:
            raise SystemExit(2)
    if workers.momentum is not None and 0 < start < cfg["run"]["steps"]:
        comm.scatter_rows(arrays["worker_momentum"] if comm.is_root else None, workers.momentum)
    return server, writer, store, start


def run(cfg: dict, out_path, comm: Comm | None = None, resume: bool = False,
        stop: StopRequest | None = None) -> dict:
    """Train under ``cfg``; rank 0 writes ``out_path`` and returns a summary dict (others: the status).

    With ``resume``, a run continues from the checkpoint in ``out_path`` when there is one. When
    ``stop`` is set on any rank, every rank leaves at the same step, rank 0 checkpoints, and the
    summary says ``interrupted``.
    """
    comm = comm or Comm(cfg["workers"]["n"])
    stop = stop or StopRequest()
    blas_threads = limit_blas_threads(comm)
    s = _agree_on_setup(cfg, comm, comm.ranks_on_this_node())
    run_cfg, faults = cfg["run"], cfg["faults"]
    steps, eval_every = run_cfg["steps"], run_cfg["eval_every"]
    flush_every = run_cfg["checkpoint_every"] or eval_every
    deadline = run_cfg["gather_deadline_s"]
    workers = LocalWorkers(s, cfg, comm)
    theta = np.empty(s.d, dtype=np.float32)

    server, writer, store, start = _start(s, cfg, out_path, comm, resume, blas_threads, theta, workers)

    def save(step_done: int, status: str) -> None:
        """Collective: rank 0 appends the new rows, then replaces the checkpoint; every rank learns
        whether that worked (a full disk ends all ranks with one line, no rank left waiting)."""
        final = status == "complete"
        rss = comm.gather_values(peak_rss_mib())
        if workers.momentum is not None and not final:
            comm.finish_late()   # late receives of a deadline gather still target X
            comm.gather_rows(workers.momentum, server.X if comm.is_root else None)   # X is free between steps
        if not comm.is_root:
            return _all_agree(comm, None)
        writer.extra_attrs["peak_rss_mib"] = rss     # per rank, at this flush
        if final:
            _all_agree(comm, lambda: writer.flush(status, final={"step": step_done, "params": theta}))
            store.remove()
            return
        worker_momentum = server.X if workers.momentum is not None else None
        _all_agree(comm, lambda: (writer.flush(status),
                                  store.write(step_done, {"params": theta, **server.state(),
                                                          "worker_momentum": worker_momentum}),
                                  writer.note_checkpoint(step_done)))

    if start == 0:
        _all_agree(comm, (lambda: writer.flush("running")) if comm.is_root else None)
    watchdog = None
    if comm.is_root and run_cfg["watchdog_s"] > 0:
        watchdog = Watchdog(run_cfg["watchdog_s"], writer, comm)
        watchdog.start()
    everyone = np.ones(s.n, dtype=bool)
    interrupted = 0
    step = start - 1
    try:
        for step in range(start, steps):
            if comm.any_true(stop.signal != 0):
                interrupted = stop.signal or -1
                step -= 1
                break
            t_step = comm.wtime()
            comm.bcast_params(theta)
            workers.compute(theta, step)
            workers.collude(step)
            if comm.rank == faults["slow_rank"] and faults["slow_from"] <= step < faults["slow_until"]:
                time.sleep(faults["slow_delay_s"])          # injected fault: a slow or silent worker
            t_gather = comm.wtime()
            X, meta = (server.X, server.meta) if server else (None, None)
            if deadline > 0:
                present_ranks = comm.gather_rows_deadline(workers.rows, workers.meta, X, meta, deadline)
            else:
                comm.gather_rows(workers.rows, X)
                comm.gather_rows(workers.meta, meta)
                present_ranks = None
            gather_s = comm.wtime() - t_gather

            if comm.is_root:
                present = everyone if present_ranks is None else np.repeat(present_ranks, comm.counts)
                server.craft(step, present)
                t_agg = comm.wtime()
                agg, selected, g = server.aggregate(present)
                aggregate_s = comm.wtime() - t_agg
                t_upd = comm.wtime()
                server.apply(theta, g)
                update_s = comm.wtime() - t_upd
                step_s = comm.wtime() - t_step

                acc = np.nan
                if (step + 1) % eval_every == 0 or step == steps - 1:
                    acc = s.model.accuracy(theta, s.test_X, s.test_y)
                counted = server.honest & present
                honest_loss = float(np.mean(meta[counted, 0])) if counted.any() else float("nan")
                timing = {"compute_s": float(meta[present, 1].max()), "gather_s": gather_s,
                          "aggregate_s": aggregate_s, "update_s": update_s, "step_s": step_s}
                writer.record(step, honest_loss, acc, timing, selected, None if agg is None else agg.weights,
                              absent=~present, worker_compute_s=np.where(present, meta[:, 1], np.nan))
                if watchdog is not None:
                    watchdog.beat()
            if (step + 1) % flush_every == 0 and step != steps - 1:
                save(step, "running")
    except KrumMPIError as exc:    # found by one rank mid-run (a bad row in a dataset file, say)
        _flush_failed(writer)
        # the other ranks wait in a collective: end them all, with the message (unless all know already)
        if comm.size > 1 and not getattr(exc, "agreed", False):
            print(f"krum-mpi: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
            comm.abort(2)
        raise
    except BaseException:
        _flush_failed(writer)    # records so far; the last checkpoint stays the one on disk
        raise

    if watchdog is not None:
        watchdog.stop()
    comm.finish_late()
    save(step, "interrupted" if interrupted else "complete")
    comm.write_audit()
    status = "interrupted" if interrupted else "complete"
    if not comm.is_root:
        return {"status": status}
    return {**summarize(writer, s.byzantine), "status": status}


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


def _flush_failed(writer) -> None:
    """On an error: mark the results failed if the disk allows; the first error is the one reported."""
    if writer is None:
        return
    try:
        writer.flush("failed")
    except KrumMPIError as exc:
        print(f"krum-mpi: note: {exc}", file=sys.stderr, flush=True)


def summarize(writer: results.ResultsWriter, byzantine: np.ndarray) -> dict:
    run = results.read_run(writer.path)
    k = int(run["attrs"]["steps_done"])
    metrics, timing = run["metrics"], run["timing"]
    return {
        "path": str(writer.path),
        "aggregator": writer.cfg["aggregator"]["name"],
        "attack": writer.cfg["attack"]["name"],
        "byzantine": int(byzantine.sum()),
        "steps": k,
        "final_loss": float(metrics["loss"][k - 1]) if k else float("nan"),
        "mean_aggregate_s": float(np.mean(timing["aggregate_s"][:k])) if k else float("nan"),
        **summarize_arrays(metrics["test_accuracy"][:k], run["selection"]["selected"][:k], byzantine,
                           timing["step_s"][:k]),
    }
