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

from . import aggregators, attacks, backend, config, data, models, results
from .comm import Comm, mpi_library_version
from .comm import block_counts as comm_block_counts
from .errors import ConfigError, KrumMPIError

SEED_PARAMS, SEED_ATTACK, SEED_BYZANTINE = 0, 2, 3


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
                self.writer.flush("failed")
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


def run(cfg: dict, out_path, comm: Comm | None = None, resume: bool = False,
        stop: StopRequest | None = None) -> dict | None:
    """Train under ``cfg``; rank 0 writes ``out_path`` and returns a summary dict (others: the status).

    With ``resume``, a run continues from the checkpoint in ``out_path`` when there is one. When
    ``stop`` is set on any rank, every rank leaves at the same step, rank 0 checkpoints, and the
    summary says ``interrupted``.
    """
    comm = comm or Comm(cfg["workers"]["n"])
    stop = stop or StopRequest()
    blas_threads = limit_blas_threads(comm)
    s = _agree_on_setup(cfg, comm)
    run_cfg, opt = cfg["run"], cfg["optimizer"]
    steps, eval_every, batch_size = run_cfg["steps"], run_cfg["eval_every"], cfg["workers"]["batch_size"]
    flush_every = run_cfg["checkpoint_every"] or eval_every
    deadline, faults = run_cfg["gather_deadline_s"], cfg["faults"]
    lr, mu, worker_momentum = opt["lr"], opt["momentum"], opt["momentum_at"] == "worker"
    n, d, k = s.n, s.d, len(s.local_workers)
    local_is_byz = s.byzantine[s.local_workers]
    flip_labels = s.attack.kind == "data"
    byz_comm = comm.split_byzantine(bool(local_is_byz.any())) if s.colluding else None
    if byz_comm is not None:   # this rank crafts, with its fellow Byzantine ranks, from their own gradients
        byz_counts = comm.counts[comm.counts.size - byz_comm.Get_size():]
        byz_offset = int(comm.displs[comm.rank] - (n - int(s.byzantine.sum())))
        known = np.empty((int(s.byzantine.sum()), d), dtype=np.float32)
        rule_for_attack = aggregators.get(cfg["aggregator"]["name"])
        attack_opts = config.aggregator_options(cfg)

    theta = np.empty(d, dtype=np.float32)
    local = np.empty((k, d), dtype=np.float32)           # this rank's gradients, one row per worker
    local_meta = np.empty((k, 2), dtype=np.float64)      # per worker: minibatch loss, compute seconds
    worker_mom = np.zeros((k, d), dtype=np.float32) if (worker_momentum and mu > 0) else None
    hostnames = comm.hostnames()

    writer = checkpoint = None
    X = meta = None
    if comm.is_root:
        X = np.empty((n, d), dtype=np.float32)            # the gather buffer lives on rank 0 only
        meta = np.empty((n, 2), dtype=np.float64)
        server_mom = np.zeros(d, dtype=np.float32) if (mu > 0 and not worker_momentum) else None
        honest = ~s.byzantine
        crafted_rows = np.flatnonzero(s.byzantine) \
            if (s.attack.kind not in ("none", "data") and not s.colluding) else []
        rule = aggregators.get(cfg["aggregator"]["name"])
        rule_opts = config.aggregator_options(cfg)
        f_declared = cfg["aggregator"]["f"]

        def aggregate_fn(Z):  # the rule in use, as a pure function, for attacks that search against it
            return rule(Z, f_declared, **rule_opts)

        everyone = np.ones(n, dtype=bool)
        zero_update = np.zeros(d, dtype=np.float32)
        rules_by_count = {n: s.aggregator}

        def aggregate_present(X, present):
            """The rule on the rows that arrived (all of them unless a deadline was missed).

            With absent workers the rule runs on the m vectors received with the same declared f;
            if m is below the rule's bound the step applies no update (selected stays empty)."""
            if present.all():
                agg = s.aggregator(backend.to_device(X, s.xp))
                return agg, agg.selected
            ids = np.flatnonzero(present)
            try:
                if ids.size not in rules_by_count:
                    rules_by_count[ids.size] = aggregators.make(cfg["aggregator"]["name"], ids.size, f_declared,
                                                                **rule_opts)
            except ValueError:
                return None, None
            agg = rules_by_count[ids.size](backend.to_device(X[ids], s.xp))
            return agg, (None if agg.selected is None else ids[np.asarray(agg.selected)])

        prov = results.provenance(mpi_library_version(), hostnames, comm.size, n, backend.device_description(s.device))
        prov["dataset"] = s.dataset.provenance
        prov["n_params"] = d
        prov["adversary"] = cfg["attack"]["adversary"]
        prov["blas_threads_per_rank"] = blas_threads or "library default"
        args = (out_path, cfg, config.run_id(cfg), prov, s.byzantine, s.aggregator.max_selected, False,
                deadline > 0)
        worker_rank = np.repeat(np.arange(comm.size, dtype=np.int32), comm.counts)
        error = None
        try:
            if resume and Path(out_path).exists():
                writer, checkpoint = results.ResultsWriter.resume(*args)
            else:
                writer = results.ResultsWriter(*args)
        except KrumMPIError as exc:
            error = exc
        start = comm.bcast_flag(-1 if error else (checkpoint["step"] + 1 if checkpoint else 0))
        if error:
            raise error
        writer.extra_attrs["adversary"] = cfg["attack"]["adversary"] if s.colluding else "omniscient"
        writer.extra_selection["worker_rank"] = worker_rank
        if checkpoint:
            theta[:] = checkpoint["params"]
            if server_mom is not None:
                server_mom[:] = checkpoint["server_momentum"]
            prefix = "aggregator_state."
            saved = {k[len(prefix):]: backend.to_device(v, s.xp) for k, v in checkpoint.items() if k.startswith(prefix)}
            if saved:                 # stateful rules (centered clipping) carry state between steps
                s.aggregator.state = saved
        else:
            theta[:] = s.model.init(np.random.default_rng([s.seed, SEED_PARAMS]))
    else:
        start = comm.bcast_flag(0)
        if start < 0:
            raise SystemExit(2)
    if worker_mom is not None and start > 0:
        comm.scatter_rows(checkpoint["worker_momentum"] if comm.is_root else None, worker_mom)

    def save(step_done: int, status: str) -> None:
        """Collective: gather what a resume needs; rank 0 flushes results and checkpoint atomically."""
        rss = comm.gather_values(peak_rss_mib())
        all_mom = None
        if worker_mom is not None:
            all_mom = np.empty((n, d), dtype=np.float32) if comm.is_root else None
            comm.gather_rows(worker_mom, all_mom)
        if not comm.is_root:
            return
        writer.extra_attrs["peak_rss_mib"] = rss     # per rank, at this flush
        writer.checkpoint = {"step": step_done, "params": theta.copy(),
                             "server_momentum": None if server_mom is None else server_mom.copy(),
                             "worker_momentum": all_mom}
        for key, value in getattr(s.aggregator, "state", {}).items():
            writer.checkpoint[f"aggregator_state.{key}"] = backend.to_host(value)
        writer.flush(status)

    if comm.is_root and start == 0:
        writer.flush("running")
    watchdog = None
    if comm.is_root and run_cfg["watchdog_s"] > 0:
        watchdog = Watchdog(run_cfg["watchdog_s"], writer, comm)
        watchdog.start()
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
            theta_w = backend.to_device(theta, s.worker_xp)
            for j, w in enumerate(s.local_workers):
                t0 = time.perf_counter()
                xb, yb = s.shards[j].batch(step, batch_size)
                if flip_labels and local_is_byz[j]:
                    yb = s.attack.label_map(yb, s.dataset.n_classes)
                loss, grad = s.model.loss_and_grad(theta_w, backend.to_device(xb, s.worker_xp),
                                                   backend.to_device(yb, s.worker_xp))
                grad = backend.to_host(grad)
                if worker_mom is not None:
                    worker_mom[j] *= mu
                    worker_mom[j] += grad
                    grad = worker_mom[j]
                local[j] = grad
                local_meta[j] = (loss, time.perf_counter() - t0)
            if byz_comm is not None:
                comm.allgather_rows_in(byz_comm, local, known, byz_counts)
                rng = np.random.default_rng([s.seed, SEED_ATTACK, step])
                crafted = s.attack.craft(known, known.shape[0], rng,
                                         aggregate=lambda Z: rule_for_attack(Z, cfg["aggregator"]["f"], **attack_opts))
                local[:] = backend.to_host(crafted)[byz_offset:byz_offset + k]
            if comm.rank == faults["slow_rank"] and faults["slow_from"] <= step < faults["slow_until"]:
                time.sleep(faults["slow_delay_s"])          # injected fault: a slow or silent worker
            t_gather = comm.wtime()
            if deadline > 0:
                present_ranks = comm.gather_rows_deadline(local, local_meta, X, meta, deadline)
            else:
                comm.gather_rows(local, X)
                comm.gather_rows(local_meta, meta)
                present_ranks = None
            gather_s = comm.wtime() - t_gather

            if comm.is_root:
                present = np.repeat(present_ranks, comm.counts) if present_ranks is not None else everyone
                if len(crafted_rows):
                    rng = np.random.default_rng([s.seed, SEED_ATTACK, step])
                    X[crafted_rows] = backend.to_host(
                        s.attack.craft(X[honest & present], len(crafted_rows), rng, aggregate=aggregate_fn))
                t_agg = comm.wtime()
                agg, selected = aggregate_present(X, present)
                g = zero_update if agg is None else backend.to_host(agg.vector).astype(np.float32, copy=False)
                backend.synchronize(s.xp)
                aggregate_s = comm.wtime() - t_agg

                t_upd = comm.wtime()
                if server_mom is not None:
                    server_mom *= mu
                    server_mom += g
                    g = server_mom
                theta -= np.float32(lr) * g
                update_s = comm.wtime() - t_upd
                step_s = comm.wtime() - t_step

                acc = np.nan
                if (step + 1) % eval_every == 0 or step == steps - 1:
                    acc = s.model.accuracy(theta, s.test_X, s.test_y)
                counted = honest & present
                honest_loss = float(np.mean(meta[counted, 0])) if counted.any() else float("nan")
                timing = {"compute_s": float(meta[present, 1].max()), "gather_s": gather_s,
                          "aggregate_s": aggregate_s, "update_s": update_s, "step_s": step_s}
                writer.record(step, honest_loss, acc, timing, selected, None if agg is None else agg.weights,
                              absent=~present, worker_compute_s=np.where(present, meta[:, 1], np.nan))
                if watchdog is not None:
                    watchdog.beat()
            if (step + 1) % flush_every == 0 and step != steps - 1:
                save(step, "running")
    except BaseException:
        if writer is not None:
            writer.flush("failed")   # records so far; the last checkpoint stays the one on disk
        raise

    if watchdog is not None:
        watchdog.stop()
    comm.finish_late()
    save(step, "interrupted" if interrupted else "complete")
    comm.write_audit()
    if not comm.is_root:
        return {"status": "interrupted" if interrupted else "complete"}
    summary = summarize(writer, s.byzantine)
    summary["status"] = "interrupted" if interrupted else "complete"
    return summary


def summarize(writer: results.ResultsWriter, byzantine: np.ndarray) -> dict:
    k = writer.done
    acc = writer.metrics["test_accuracy"][:k]
    evaluated = acc[~np.isnan(acc)]
    sel = writer.selected[:k]
    byz_ids = np.flatnonzero(byzantine)
    byz_selected = np.isin(sel, byz_ids).any(axis=1) if byz_ids.size else np.zeros(k, dtype=bool)
    return {
        "path": str(writer.path),
        "aggregator": writer.cfg["aggregator"]["name"],
        "attack": writer.cfg["attack"]["name"],
        "byzantine": int(byzantine.sum()),
        "steps": k,
        "final_loss": float(writer.metrics["loss"][k - 1]),
        "final_test_accuracy": float(evaluated[-1]) if evaluated.size else float("nan"),
        "byzantine_selected_steps": int(byz_selected.sum()),
        "mean_step_s": float(np.mean(writer.timing["step_s"][:k])),
        "mean_aggregate_s": float(np.mean(writer.timing["aggregate_s"][:k])),
    }
