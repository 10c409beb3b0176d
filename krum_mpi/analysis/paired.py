"""Statistics for a reviewer: paired differences across seeds, their intervals, Holm's correction,
accuracy intervals inside [0, 1], and a summary for cells whose seeds split into two groups.

Why paired: the same ``run.seed`` gives every rule the same minibatches (seeded by seed, worker,
step), the same Byzantine workers (seed, 3) and the same initial parameters (seed, 0) (run/train.py;
tests/test_protocol_runs.py checks it on real runs). Two rules' results on one seed therefore differ
by the rule alone, and the seed-to-seed spread cancels in the per-seed difference. An interval on the
per-seed differences is the right one; an unpaired (Welch) interval on the two means is wider.

    diffs, seeds = paired_differences({0: .91, 1: .90}, {0: .88, 1: .89})
    paired_t(diffs)                 # Interval(estimate, low, high, n, p_value, "paired t")
    bootstrap(diffs, seed=0)        # Interval(..., "percentile bootstrap")
    holm([p1, p2, ...], alpha=0.05) # Holm: which verdicts stand, adjusted p-values, the family size
    family_verdicts({"krum vs average, clean": (a, b), ...})   # intervals + Holm + verdict words
    accuracy_interval(values)       # mean and a t interval clipped to [0, 1]
    split_summary(values_by_seed)   # median, min, max, the seeds: for bimodal cells
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .stats import t_cdf, t_quantile


@dataclass(frozen=True)
class Interval:
    estimate: float     # mean of the per-seed differences (or of the values)
    low: float
    high: float
    n: int              # seeds used
    p_value: float      # two-sided, against "no difference" (NaN where not defined)
    method: str

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_differences(a: dict, b: dict):
    """(differences a - b, seeds) over the seeds both sides have with finite values, sorted by seed."""
    seeds = sorted(s for s in set(a) & set(b) if np.isfinite(a[s]) and np.isfinite(b[s]))
    return np.array([float(a[s]) - float(b[s]) for s in seeds]), seeds


def paired_t(diffs, level: float = 0.95) -> Interval:
    """The paired t interval (a one-sample t interval on the differences) and its two-sided p-value.
    Fewer than two differences: NaN bounds. Zero spread: the interval is the point, p = 0 unless the
    mean difference is 0 (then p = 1)."""
    d = _finite(diffs)
    n = d.size
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan, "paired t")
    mean = float(d.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1, math.nan, "paired t")
    sem = float(d.std(ddof=1)) / math.sqrt(n)
    if sem == 0.0:
        return Interval(mean, mean, mean, n, 1.0 if mean == 0 else 0.0, "paired t")
    half = t_quantile(0.5 + level / 2.0, n - 1) * sem
    p = 2.0 * (1.0 - t_cdf(abs(mean) / sem, n - 1))
    return Interval(mean, mean - half, mean + half, n, min(1.0, p), "paired t")


def bootstrap(diffs, level: float = 0.95, resamples: int = 10000, seed: int = 0) -> Interval:
    """Percentile bootstrap of the mean difference: resample the seeds with replacement (seeded, so the
    interval is reproducible), take the (1 - level)/2 and (1 + level)/2 quantiles of the resampled means
    (numpy's "linear" quantile). p-value: twice the smaller share of resampled means on either side of 0
    (at least 1 / resamples)."""
    d = _finite(diffs)
    n = d.size
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan, "percentile bootstrap")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    p = 2.0 * min((means <= 0).mean(), (means >= 0).mean())
    return Interval(float(d.mean()), float(low), float(high), n, float(min(1.0, max(p, 1.0 / resamples))),
                    "percentile bootstrap")


@dataclass(frozen=True)
class Holm:
    rejected: list        # per hypothesis, in the order given: the verdict stands after correction
    adjusted: list        # Holm-adjusted p-values, in the order given
    family_size: int
    alpha: float


def holm(p_values, alpha: float = 0.05) -> Holm:
    """Holm-Bonferroni over a family of m verdicts: sort the p-values, compare the k-th smallest
    (k = 1..m) with alpha / (m - k + 1), stop at the first that fails; controls the family-wise error
    at alpha under any dependence. A NaN p-value counts in the family and is never rejected."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(np.where(np.isnan(p), np.inf, p), kind="stable")
    rejected, adjusted = [False] * m, [math.nan] * m
    running, stopped = 0.0, False
    for k, i in enumerate(order):
        if np.isnan(p[i]):
            stopped = True
            continue
        running = max(running, min(1.0, (m - k) * p[i]))
        adjusted[i] = running
        if not stopped and p[i] <= alpha / (m - k):
            rejected[i] = True
        else:
            stopped = True
    return Holm(rejected, adjusted, m, alpha)


@dataclass(frozen=True)
class Verdict:
    name: str
    interval: Interval    # of the paired differences a - b
    p_holm: float         # Holm-adjusted p-value within the family
    verdict: str          # "better" | "worse" (a against b, surviving Holm) | "cannot decide"
    family_size: int


def family_verdicts(comparisons: dict, method: str = "t", alpha: float = 0.05, seed: int = 0) -> list:
    """One Verdict per comparison name -> (a_by_seed, b_by_seed): the paired interval (``method`` "t"
    or "bootstrap"), Holm over the whole family, and "better" / "worse" only where the Holm-corrected
    test rejects "no difference" (the interval is then reported at the uncorrected level, with the
    adjusted p-value beside it)."""
    if method not in ("t", "bootstrap"):
        raise ValueError(f"method must be t or bootstrap, got {method!r}")
    intervals = {}
    for name, (a, b) in comparisons.items():
        diffs, _ = paired_differences(a, b)
        intervals[name] = paired_t(diffs, 1 - alpha) if method == "t" else bootstrap(diffs, 1 - alpha, seed=seed)
    correction = holm([iv.p_value for iv in intervals.values()], alpha)
    out = []
    for (name, iv), stands, p_adj in zip(intervals.items(), correction.rejected, correction.adjusted):
        verdict = ("better" if iv.estimate > 0 else "worse") if stands else "cannot decide"
        out.append(Verdict(name, iv, p_adj, verdict, correction.family_size))
    return out


def accuracy_interval(values, level: float = 0.95) -> Interval:
    """Mean accuracy with its t interval clipped to [0, 1] (an accuracy cannot leave it; the clipped
    side is then the bound itself). NaN bounds with fewer than two seeds."""
    x = _finite(values)
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan, "t, clipped to [0, 1]")
    t = paired_t(x, level)
    low, high = (max(0.0, t.low), min(1.0, t.high)) if x.size > 1 else (math.nan, math.nan)
    return Interval(t.estimate, low, high, x.size, math.nan, "t, clipped to [0, 1]")


@dataclass(frozen=True)
class SplitSummary:
    median: float
    low: float            # min over seeds
    high: float           # max over seeds
    seeds: list           # every seed, sorted by its value
    values: list
    split: bool           # the seeds fall into two groups (a gap of at least ``gap``)


def split_summary(values_by_seed: dict, gap: float = 0.1) -> SplitSummary:
    """For a cell whose seeds may split (some converge, some collapse): median, min-max, and the seeds
    listed by value. ``split`` is True when the sorted values have a gap of at least ``gap`` (10 points
    of accuracy by default) with seeds on both sides: a mean +- interval then describes no seed."""
    items = sorted((float(v), s) for s, v in values_by_seed.items() if np.isfinite(v))
    if not items:
        return SplitSummary(math.nan, math.nan, math.nan, [], [], False)
    vals = np.array([v for v, _ in items])
    is_split = vals.size > 1 and float(np.diff(vals).max()) >= gap
    return SplitSummary(float(np.median(vals)), float(vals[0]), float(vals[-1]), [s for _, s in items],
                        vals.tolist(), bool(is_split))


def describe_cell(values_by_seed: dict, level: float = 0.95, gap: float = 0.1) -> str:
    """One table cell: "mean [low, high] (n seeds)", or for a split cell "median m (min a, max b;
    seeds s1=v1 s2=v2 ...)"."""
    split = split_summary(values_by_seed, gap)
    if split.split:
        listed = " ".join(f"{s}={v:.3f}" for s, v in zip(split.seeds, split.values))
        return f"median {split.median:.3f} (min {split.low:.3f}, max {split.high:.3f}; seeds {listed})"
    ci = accuracy_interval(list(values_by_seed.values()), level)
    if ci.n < 2:
        return f"{ci.estimate:.3f} (1 seed)" if ci.n else "no data"
    return f"{ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}] ({ci.n} seeds)"


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[np.isfinite(x)]
