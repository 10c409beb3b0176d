"""The protocol's convergence criterion: has a cell's accuracy stopped moving?

    check = cell_converged([(steps, accuracy), ...], total_steps)   # one cell: every seed's curve
    check = converged(steps, accuracy)                 # one run: arrays of a results file (NaN rows skipped)
    check = run_converged(read_run(path))              # validation accuracy if recorded, else test
    check.converged, check.change, check.window        # verdict, change in the window, its steps

The criterion of the protocol (docs/protocol.md) is the cell's, ``cell_converged``: over the last
``window`` share of the steps (20% by default), the least-squares line through the cell's accuracy
averaged over its seeds rises or falls by less than ``tolerance`` (0.005 = half a point) across the
window. The trend, not the range: one run's accuracy on a validation split of a few hundred rows jumps
by a point between evaluations (one row is 0.27 points on spambase's 368), so a range criterion is
never met by minibatch SGD however long it runs, while a trend of half a point says the curve still
climbs (or falls). ``converged`` is the stricter per-run check (the range, max - min, of the
evaluated accuracies in the window), kept for runs judged alone. With fewer than ``min_points`` (3)
evaluations in the window either verdict is "not converged" with the reason "too few evaluations"
(evaluate more often or run longer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Convergence:
    converged: bool
    change: float          # max - min of the accuracies in the window (NaN: too few points)
    window: tuple          # (first step, last step) of the window, inclusive
    points: int            # evaluations in the window
    reason: str            # why, in words


def converged(steps, accuracy, total_steps: int | None = None, window: float = 0.2,
              tolerance: float = 0.005, min_points: int = 3) -> Convergence:
    """The criterion on one run's evaluated (step, accuracy) pairs; ``total_steps`` defaults to the last
    step + 1 (pass the configured steps to judge an unfinished run as such)."""
    if not tolerance > 0:
        raise ValueError(f"tolerance = {tolerance} must be > 0")
    _window(1, window)
    steps, acc = np.asarray(steps, dtype=np.int64), np.asarray(accuracy, dtype=float)
    keep = np.isfinite(acc)
    steps, acc = steps[keep], acc[keep]
    if steps.size == 0:
        return Convergence(False, math.nan, (0, 0), 0, "no evaluation recorded")
    total = int(steps.max()) + 1 if total_steps is None else int(total_steps)
    first = total - max(1, int(math.ceil(window * total)))
    inside = steps >= first
    window_steps = (first, total - 1)
    if inside.sum() < min_points:
        return Convergence(False, math.nan, window_steps, int(inside.sum()),
                           f"too few evaluations in the last {window:.0%} of the steps "
                           f"({int(inside.sum())} < {min_points})")
    change = float(acc[inside].max() - acc[inside].min())
    ok = change < tolerance
    verdict = "<" if ok else ">="
    return Convergence(ok, change, window_steps, int(inside.sum()),
                       f"accuracy changes by {100 * change:.2f} points {verdict} {100 * tolerance:.2f} "
                       f"over steps {first}..{total - 1}")


def run_converged(run: dict, window: float = 0.2, tolerance: float = 0.005, min_points: int = 3) -> Convergence:
    """The criterion on a results file read by ``krum_mpi.run.results.read_run``: validation accuracy
    where the run recorded it, else test accuracy; judged against the configured number of steps."""
    metrics = run["metrics"]
    acc = metrics.get("validation_accuracy")
    if acc is None:
        acc = metrics["test_accuracy"]
    total = run["attrs"]["config"]["run"]["steps"]
    return converged(metrics["step"], acc, total, window, tolerance, min_points)


def _window(total: int, window: float) -> int:
    if not 0 < window <= 1:
        raise ValueError(f"window = {window} must be in (0, 1]")
    return total - max(1, int(math.ceil(window * total)))


def cell_converged(curves, total_steps: int, window: float = 0.2, tolerance: float = 0.005,
                   min_points: int = 3) -> Convergence:
    """The protocol's criterion on one cell: ``curves`` = [(steps, accuracy), ...], one per seed. The
    accuracies are averaged over the seeds at the steps every seed evaluated (NaN rows skipped); over the
    window the least-squares line's rise (slope x the window's length in steps) must be below
    ``tolerance`` in absolute value. ``change`` is that rise (signed)."""
    if not tolerance > 0:
        raise ValueError(f"tolerance = {tolerance} must be > 0")
    total = int(total_steps)
    first = _window(total, window)
    window_steps = (first, total - 1)
    common, per_seed = None, []
    for steps, acc in curves:
        steps, acc = np.asarray(steps, dtype=np.int64), np.asarray(acc, dtype=float)
        keep = np.isfinite(acc) & (steps >= first) & (steps < total)
        per_seed.append(dict(zip(steps[keep].tolist(), acc[keep].tolist())))
        common = set(per_seed[-1]) if common is None else common & set(per_seed[-1])
    if not per_seed:
        return Convergence(False, math.nan, window_steps, 0, "no run in the cell")
    at = np.array(sorted(common), dtype=float)
    if at.size < min_points:
        return Convergence(False, math.nan, window_steps, int(at.size),
                           f"too few evaluations in the last {window:.0%} of the steps ({at.size} < {min_points})")
    mean = np.array([np.mean([seed[int(s)] for seed in per_seed]) for s in at])
    slope = np.polyfit(at, mean, 1)[0]
    rise = float(slope * (total - first))
    ok = abs(rise) < tolerance
    return Convergence(ok, rise, window_steps, int(at.size),
                       f"the mean over {len(per_seed)} seeds {'rises' if rise >= 0 else 'falls'} by "
                       f"{100 * abs(rise):.2f} points {'<' if ok else '>='} {100 * tolerance:.2f} over steps "
                       f"{first}..{total - 1} (least-squares line)")
