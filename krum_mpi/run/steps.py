"""The step loop of a run, on every rank, and the watchdog that ends a run that stopped moving.

The step is written once (``StepLoop.run``): stop check -> compute -> exchange -> craft ->
aggregate -> apply -> record -> traffic -> checkpoint. Where rows travel and who holds what is the
placement's business (krum_mpi.parallel.placements: gather, gather with a deadline, sharded,
per-shard, model-parallel); the loop calls its phases and never asks which one it is.

``step_s`` is the wall time of the whole step on rank 0, from the top of the loop (the stop check
included) to the end of the update: every wait is in it.
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np

from ..errors import KrumMPIError, ResultsError


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def flush_or_note(writer, status: str, cause: BaseException | None = None) -> None:
    """On an error or a hung run: record ``status`` if the disk allows (a full disk must not keep the
    run from ending); the first error is the one reported, this one is a note. When the first error
    was itself a failed write (``cause`` a ResultsError: the disk is full, the folder read-only), the
    note would only say it again: the one line stays one line."""
    if writer is None:
        return
    try:
        writer.flush(status)
    except KrumMPIError as exc:
        if not isinstance(cause, ResultsError):
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
    """Runs steps ``start`` .. ``run.steps - 1`` through ``placement``'s phases; ``run()`` returns
    (last step done, stop signal). ``writer``, ``watchdog`` and ``progress`` live on rank 0."""

    def __init__(self, s, run, faults, comm, workers, placement, writer, theta, stop, save, watchdog=None,
                 progress=None):
        """``run``, ``faults``: the run's [run] and [faults] sections (inputs.typed)."""
        self.s, self.comm, self.workers = s, comm, workers
        self.placement, self.writer, self.theta, self.stop, self.save = placement, writer, theta, stop, save
        self.watchdog, self.progress = watchdog, progress
        self.steps, self.eval_every = run.steps, run.eval_every
        self.flush_every = run.checkpoint_every or self.eval_every
        self.faults = faults
        self.nonfinite_steps = 0

    def run(self, start: int):
        """The one step loop, every rank, every placement."""
        p, clock, theta = self.placement, self.comm.wtime, self.theta
        p.begin(theta, self.save, self.writer, self.steps)
        step, signal, left = start - 1, 0, False
        for step in range(start, self.steps):
            marks = [clock()]                                   # base.MARKS
            turn = p.start_step(step, theta, self.stop)         # the stop check (and the parameters)
            if turn.leave:
                step, signal, left = turn.step, turn.signal, True
                break
            marks.append(clock())
            self._compute(turn.step)
            marks.append(clock())
            present = p.exchange(turn.step, self.workers)
            marks.append(clock())
            p.craft(turn.step, present)                         # the omniscient adversary
            marks.append(clock())
            outcome = p.aggregate(present)
            marks.append(clock())
            p.apply(theta, outcome)
            marks.append(clock())
            self._after_step(turn.step, outcome, marks)
            if self._flush_due(step):
                p.checkpoint(step)
        return p.end(step, signal, left)

    def _flush_due(self, step: int) -> bool:
        return (step + 1) % self.flush_every == 0 and step != self.steps - 1

    def _compute(self, step: int) -> None:
        self.workers.compute(self.theta, step)
        self.workers.collude(step)
        f = self.faults
        if self.comm.rank == f.slow_rank and f.slow_from <= step < f.slow_until:
            time.sleep(f.slow_delay_s)          # injected fault: a slow or silent worker

    def _after_step(self, step: int, outcome, marks) -> None:
        """The update's finiteness, the test accuracy when due, rank 0's record, the traffic."""
        p = self.placement
        if outcome is not None and self.comm.is_root:
            bad = p.nonfinite_rows(outcome)
            if bad is not None:
                self._nonfinite(step, bad, outcome.present)
        if outcome is not None:
            outcome.update = None   # dead now: freed before the next step's aggregate exists
        evaluate = (step + 1) % self.eval_every == 0 or step == self.steps - 1
        s = self.s   # the ranks that evaluate hold the sets (rank 0; group 0 of a split model)
        test, val = getattr(s, "test_X", None), getattr(s, "val_X", None)
        acc = p.accuracy(self.theta, test, s.test_y) if evaluate and test is not None else np.nan
        values = {"selection/recomputed": 0 if outcome is None else outcome.recomputed}
        if val is not None:   # data.validation_fraction: accuracy on the held-out training rows
            values["metrics/validation_accuracy"] = p.accuracy(self.theta, val, s.val_y) if evaluate else np.nan
        if self.comm.is_root:
            self._record(step, outcome, marks, acc, values)
        p.note_traffic(step, outcome, marks)

    def _record(self, step: int, outcome, marks, acc: float, values: dict) -> None:
        """Rank 0: the step's row of the results; the watchdog and the progress line hear of it."""
        p = self.placement
        meta, present = p.meta, outcome.present
        lo, hi = p.EXCHANGE_MARKS
        step_s = marks[6] - marks[0]
        timing = {"compute_s": float(meta[present, 1].max()), "gather_s": marks[hi] - marks[lo],
                  "aggregate_s": marks[5] - marks[4], "update_s": marks[6] - marks[5], "step_s": step_s,
                  # the adversary's crafting on rank 0, where gather_s does not already hold it
                  "craft_s": marks[4] - marks[3] if hi <= 3 else float("nan")}
        counted = p.honest & present
        loss = float(np.mean(meta[counted, 0])) if counted.any() else float("nan")
        self.writer.record(step, loss, acc, timing, outcome.selected, outcome.weights, absent=~present,
                           worker_compute_s=np.where(present, meta[:, 1], np.nan),
                           values=values)
        if self.watchdog is not None:
            self.watchdog.beat(step_s)
        if self.progress is not None:
            self.progress.update(step + 1, loss=loss, acc=float(acc))

    def _nonfinite(self, step: int, rows: int, present) -> None:
        """An update with NaN or Inf (``rows`` of the arrived rows hold some): count it in the
        results, and say so once on the console."""
        self.nonfinite_steps += 1
        attrs = self.writer.extra_attrs
        attrs["nonfinite_update_steps"] = self.nonfinite_steps
        attrs.setdefault("first_nonfinite_update_step", step)
        if self.nonfinite_steps == 1:
            f, rule = self.s.cfg.aggregator.f, self.s.cfg.aggregator.name
            why = (f"more than f = {f}: {rule} cannot exclude them all" if rows > f
                   else f"at most f = {f}, but {rule} does not exclude them" if rows else "from finite inputs")
            print(f"krum-mpi: warning: step {step}: the update is not finite ({rows} of {int(present.sum())} "
                  f"gradients hold NaN or Inf, {why}); steps like this are counted in the results "
                  "attribute nonfinite_update_steps", file=sys.stderr, flush=True)
