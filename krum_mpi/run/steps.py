"""The step loop of a run, on every rank, and the watchdog that ends a run that stopped moving.

Two ways to move a step (``run.gather_deadline_s``):

* 0 (default): collectives. Every rank checks for a stop (``Allreduce``), receives the parameters
  (``Bcast``), computes, and rank 0 gathers every row (``Gatherv``): the slowest rank sets the pace.
* > 0: point-to-point (``comm.DeadlineExchange``). Rank 0 waits at most the deadline for the other
  ranks' rows; a late rank's gradient is dropped (it was computed on old parameters) and the rank
  is given the current step as soon as it answers, so nobody waits for it. The step's wall time is
  bounded by rank 0's own compute + the deadline + the aggregation and update.

``step_s`` is the wall time of the whole step on rank 0, from the top of the loop (the stop check
included) to the end of the update: every wait is in it.
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np

from ..parallel.comm import TASK_END, TASK_SAVE, TASK_STEP, DeadlineExchange
from ..errors import KrumMPIError
from ..parallel.sharded_step import note_traffic, run_sharded


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def flush_or_note(writer, status: str) -> None:
    """On an error or a hung run: record ``status`` if the disk allows (a full disk must not keep the
    run from ending); the first error is the one reported, this one is a note."""
    if writer is None:
        return
    try:
        writer.flush(status)
    except KrumMPIError as exc:
        print(f"krum-mpi: note: {exc}", file=sys.stderr, flush=True)


STOP_GRACE_S = 10.0   # after a stop signal, how long a step may still take before the watchdog ends it


class Watchdog(threading.Thread):
    """Ends a run that stops making progress (a hung rank, a lost message): rank 0 keeps the last
    checkpoint on disk, says what happened in one line, and aborts every rank (status 4). After a
    stop signal it also ends a run whose main thread cannot notice it (blocked in an MPI call on a
    rank that never answers): status 3, as a stop that was noticed."""

    def __init__(self, timeout_s: float, writer, comm, stop):
        super().__init__(daemon=True, name="krum-mpi-watchdog")
        self.timeout_s, self.writer, self.comm, self.stop_request = timeout_s, writer, comm, stop
        self.last = time.monotonic()
        self.longest_step_s = 0.0
        self.stop_seen_at = None
        self._stopped = threading.Event()

    def beat(self, step_s: float = 0.0) -> None:
        self.last = time.monotonic()
        self.longest_step_s = max(self.longest_step_s, step_s)

    def stop(self) -> None:
        self._stopped.set()

    def stop_grace_s(self) -> float:
        """A step in flight when the stop came may finish: 10 s, or 3 times the longest step so far."""
        return min(self.timeout_s, max(STOP_GRACE_S, 3 * self.longest_step_s))

    def _end(self, status: str, code: int, message: str) -> None:
        flush_or_note(self.writer, status)   # the records so far; the checkpoint stays the last one saved
        print(f"krum-mpi: {message}: results and last checkpoint kept in {self.writer.path}; "
              "continue with the same command plus --resume", file=sys.stderr, flush=True)
        self.comm.abort(code)

    def run(self) -> None:
        while not self._stopped.wait(min(0.25, self.timeout_s / 4)):
            now = time.monotonic()
            if self.stop_request is not None and self.stop_seen_at is None and self.stop_request.seen():
                self.stop_seen_at = now
            done = self.writer.done
            if self.stop_seen_at is not None and now - max(self.stop_seen_at, self.last) > self.stop_grace_s():
                return self._end("interrupted", 3, f"interrupted by a signal, but no step finished for "
                                 f"{self.stop_grace_s():g} s after it (a rank is hung): stopped after step {done - 1}")
            if now - self.last > self.timeout_s:
                return self._end("failed", 4, f"error: no step finished for {self.timeout_s:g} s after step "
                                 f"{done - 1} (a rank is hung or dead; run.watchdog_s sets the limit)")


class StepLoop:
    """Runs steps ``start`` .. ``run.steps - 1``; ``run()`` returns (last step done, stop signal)."""

    def __init__(self, s, cfg, comm, workers, server, writer, theta, stop, save, watchdog=None, progress=None,
                 sharded=None):
        self.s, self.cfg, self.comm, self.workers = s, cfg, comm, workers
        self.server, self.writer, self.theta, self.stop, self.save = server, writer, theta, stop, save
        self.watchdog, self.progress = watchdog, progress
        run = cfg["run"]
        self.steps, self.eval_every = run["steps"], run["eval_every"]
        self.flush_every = run["checkpoint_every"] or self.eval_every
        self.deadline = run["gather_deadline_s"]
        self.faults = cfg["faults"]
        self.everyone = np.ones(s.n, dtype=bool)
        self.nonfinite_steps = 0
        self.sharded = sharded                    # a ShardedStep: aggregator.placement is not "gather"
        self.traffic, self.traffic_mark = None, comm.traffic.copy()   # bytes per step and rank (rank 0)

    def run(self, start: int):
        if self.sharded is not None:
            return run_sharded(self, start)
        if self.deadline > 0:
            exchange = DeadlineExchange(self.comm, self.s.d)
            return self._deadline_root(start, exchange) if self.comm.is_root else self._deadline_worker(exchange)
        return self._collective(start)

    def _flush_due(self, step: int) -> bool:
        return (step + 1) % self.flush_every == 0 and step != self.steps - 1

    def _compute(self, step: int) -> None:
        self.workers.compute(self.theta, step)
        self.workers.collude(step)
        f = self.faults
        if self.comm.rank == f["slow_rank"] and f["slow_from"] <= step < f["slow_until"]:
            time.sleep(f["slow_delay_s"])          # injected fault: a slow or silent worker

    # -- collectives ----------------------------------------------------------------------
    def _collective(self, start: int):
        comm, server = self.comm, self.server
        step = start - 1
        for step in range(start, self.steps):
            t_step = comm.wtime()
            if comm.any_true(self.stop.signal != 0):
                return step - 1, self.stop.signal or -1
            comm.bcast_params(self.theta)
            t_compute = comm.wtime()
            self._compute(step)
            t_gather = comm.wtime()
            comm.gather_rows(self.workers.rows, server.X if server else None)
            comm.gather_rows(self.workers.meta, server.meta if server else None)
            t_rest = comm.wtime()
            if comm.is_root:
                self._finish_step(step, self.everyone, t_step, t_rest - t_gather)
            t_end = comm.wtime()   # phases of this rank (GATHER_PHASES): they add up to its step
            note_traffic(self, step, phases=np.array([t_compute - t_step, t_gather - t_compute, t_rest - t_gather,
                                                      t_end - t_rest]))
            if self._flush_due(step):
                self.save(step, "running")
        return step, 0

    # -- a gather deadline ----------------------------------------------------------------
    def _deadline_root(self, start: int, exchange: DeadlineExchange):
        comm, server, step, signal = self.comm, self.server, start - 1, 0
        for step in range(start, self.steps):
            t_step = comm.wtime()
            signal = self.stop.signal or exchange.stop_signal
            if signal:
                step -= 1
                break
            exchange.send_step(step, self.theta)
            self._compute(step)
            t_gather = comm.wtime()
            present = exchange.collect(step, self.workers.rows, self.workers.meta, server.X, server.meta,
                                       self.deadline)
            self._finish_step(step, np.repeat(present, comm.counts), t_step, comm.wtime() - t_gather)
            if self._flush_due(step):
                if self.workers.momentum is None:      # rank 0 holds every state a resume needs
                    self.save(step, "running", peak_rss=exchange.peak_rss)
                else:                                  # every worker's momentum, at one step
                    exchange.drain()
                    exchange.command(TASK_SAVE, step)
                    self.save(step, "running")
        else:
            signal = 0
        exchange.drain()                               # the late ranks finish their step ...
        exchange.command(TASK_END, step, signal)       # ... and join the final checkpoint
        return step, signal

    def _deadline_worker(self, exchange: DeadlineExchange):
        while True:
            step, kind, signal = exchange.receive_task(self.theta)
            if kind == TASK_END:
                return step, signal
            if kind == TASK_SAVE:
                self.save(step, "running")
                continue
            assert kind == TASK_STEP
            self._compute(step)
            exchange.reply(self.workers.rows, self.workers.meta, self.stop.signal, peak_rss_mib())

    # -- rank 0: the rest of a step -------------------------------------------------------
    def _finish_step(self, step: int, present, t_step: float, gather_s: float) -> None:
        comm, server, s = self.comm, self.server, self.s
        meta = server.meta
        server.craft(step, present)
        t_agg = comm.wtime()
        agg, selected, g = server.aggregate(present)
        aggregate_s = comm.wtime() - t_agg
        t_upd = comm.wtime()
        server.apply(self.theta, g)
        update_s = comm.wtime() - t_upd
        step_s = comm.wtime() - t_step
        if not np.isfinite(g).all():
            self._nonfinite(step, present)
        acc, values = np.nan, {"selection/recomputed": 0 if agg is None else agg.recomputed}
        if (step + 1) % self.eval_every == 0 or step == self.steps - 1:
            acc = s.model.accuracy(self.theta, s.test_X, s.test_y)
            if s.val_X is not None:
                values["metrics/validation_accuracy"] = s.model.accuracy(self.theta, s.val_X, s.val_y)
        counted = server.honest & present
        loss = float(np.mean(meta[counted, 0])) if counted.any() else float("nan")
        timing = {"compute_s": float(meta[present, 1].max()), "gather_s": gather_s,
                  "aggregate_s": aggregate_s, "update_s": update_s, "step_s": step_s}
        self.writer.record(step, loss, acc, timing, selected, None if agg is None else agg.weights,
                           absent=~present, worker_compute_s=np.where(present, meta[:, 1], np.nan),
                           values=values)
        if self.watchdog is not None:
            self.watchdog.beat(step_s)
        if self.progress is not None:
            self.progress.update(step + 1, loss=loss, acc=float(acc))

    def _nonfinite(self, step: int, present) -> None:
        """An update with NaN or Inf: count it in the results, and say so once on the console."""
        X = self.server.X
        rows = int(sum(not np.isfinite(X[i]).all() for i in np.flatnonzero(present)))
        self.nonfinite_steps += 1
        attrs = self.writer.extra_attrs
        attrs["nonfinite_update_steps"] = self.nonfinite_steps
        attrs.setdefault("first_nonfinite_update_step", step)
        if self.nonfinite_steps == 1:
            f, rule = self.s.cfg["aggregator"]["f"], self.s.cfg["aggregator"]["name"]
            why = (f"more than f = {f}: {rule} cannot exclude them all" if rows > f
                   else f"at most f = {f}, but {rule} does not exclude them" if rows else "from finite inputs")
            print(f"krum-mpi: warning: step {step}: the update is not finite ({rows} of {int(present.sum())} "
                  f"gradients hold NaN or Inf, {why}); steps like this are counted in the results "
                  "attribute nonfinite_update_steps", file=sys.stderr, flush=True)
