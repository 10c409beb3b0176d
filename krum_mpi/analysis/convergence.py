"""The protocol's convergence criterion: has a run's accuracy stopped moving?

    check = converged(steps, accuracy)                 # arrays of a results file (NaN rows skipped)
    check = run_converged(read_run(path))              # validation accuracy if recorded, else test
    check.converged, check.change, check.window        # verdict, change in the window, its steps

Criterion (docs/protocol.md): over the last ``window`` share of the run's steps (20% by default), the
accuracy changes by less than ``tolerance`` (0.005 = half a point). "Changes by" is the range
(max - min) of the evaluated accuracies whose step lies in the window, which is stricter than the
difference of its two ends. With fewer than ``min_points`` (3) evaluations in the window the verdict
is "not converged" with the reason "too few evaluations" (evaluate more often or run longer).
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
    if not 0 < window <= 1:
        raise ValueError(f"window = {window} must be in (0, 1]")
    if not tolerance > 0:
        raise ValueError(f"tolerance = {tolerance} must be > 0")
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
