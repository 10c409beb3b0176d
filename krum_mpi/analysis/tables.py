"""Tables that answer the review: accuracy with confidence intervals, cost of resilience, time per
phase, scaling, and how often a Byzantine worker was selected.

Every table starts from ``run_summary(study)``: one pandas row per complete run (config columns,
final/best accuracy, mean seconds per phase). Experiments are told apart by
``derived.experiment_keys`` (rule, attack, Byzantine fraction, and every other config key that varies
except the seed); replicates of an experiment are its seeds. Confidence intervals are two-sided
95% Student t intervals over seeds (NaN with one seed).
"""
import hashlib

import dask
import numpy as np
import pandas as pd

from .derived import experiment_keys
from .load import _scheduler
from .runtable import PHASES, STEP_TIMINGS
from .stats import mean_ci, welch_diff_ci

BASELINE_RULE = "average"
# Keys that define "the same setting" when looking up the averaging baseline or a scaling series.
_TREATMENT_KEYS = ("rule", "attack_label", "byz_fraction", "aggregator.f")
_SCALE_KEYS = ("n_ranks", "workers.n", "workers.byzantine", "aggregator.f")


# ---------------------------------------------------------------------------------------------
# Reduce: one row of per-step summaries per run (one compute over all three frames)


def _reduce_metrics(part):
    rows = []
    for run, g in part.groupby("run", sort=False):
        acc = g["test_accuracy"].to_numpy()
        evaluated = np.flatnonzero(np.isfinite(acc))
        loss = g["loss"].to_numpy()
        finite_loss = np.flatnonzero(np.isfinite(loss))
        rows.append({
            "run": run,
            "last_step": int(g["step"].iloc[-1]) if len(g) else -1,
            "final_accuracy": acc[evaluated[-1]] if evaluated.size else np.nan,
            "final_accuracy_step": float(g["step"].iloc[evaluated[-1]]) if evaluated.size else np.nan,
            "best_accuracy": np.nanmax(acc) if evaluated.size else np.nan,
            "final_loss": loss[finite_loss[-1]] if finite_loss.size else np.nan,
        })
    return pd.DataFrame(rows, columns=["run", "last_step", "final_accuracy", "final_accuracy_step",
                                       "best_accuracy", "final_loss"])


def _reduce_timings(part, warmup_steps):
    rows = []
    for run, g in part.groupby("run", sort=False):
        timed = g.iloc[warmup_steps:] if len(g) > warmup_steps else g
        row = {"run": run, "n_timed": len(timed)}
        row.update({name: float(timed[name].mean()) for name in STEP_TIMINGS})
        rows.append(row)
    return pd.DataFrame(rows, columns=["run", "n_timed", *STEP_TIMINGS])


def _reduce_selections(part):
    rows = []
    for run, g in part.groupby("run", sort=False):
        rows.append({"run": run,
                     "byz_selected_frac": float(g["byz_selected"].mean()),
                     "top_byzantine_frac": float(g["top_byzantine"].mean()),
                     "byz_weight_mean": float(g["byz_weight"].mean()),
                     "mean_selected": float(g["n_selected"].mean())})
    return pd.DataFrame(rows, columns=["run", "byz_selected_frac", "top_byzantine_frac",
                                       "byz_weight_mean", "mean_selected"])


def _reduce_sharding(part, warmup_steps):
    """Per run: a digest of every step's selection, the per-step selection CRCs and losses (to find
    where two runs part), a CRC of the final parameters, the mean bytes received per step by the busiest
    rank and per rank (first ``warmup_steps`` left out: step 0 holds the initial broadcast), and for
    per-shard the mean share of blocks that selected a Byzantine worker."""
    rows = []
    for run, g in part.groupby("run", sort=False):
        timed = g.iloc[warmup_steps:] if len(g) > warmup_steps else g
        digest = hashlib.sha256(g["selection_crc"].to_numpy(np.int64).tobytes()).hexdigest()[:16]
        rows.append({"run": run, "selection_digest": digest, "selection_crcs": tuple(g["selection_crc"].tolist()),
                     "losses": tuple(g["loss"].tolist()), "params_crc": int(g["params_crc"].iloc[0]),
                     "busiest_received": float(timed["busiest_received"].mean()),
                     "mean_received": float(timed["mean_received"].mean()),
                     "byz_block_share": float(g["byz_block_share"].mean())})
    return pd.DataFrame(rows, columns=["run", "selection_digest", "selection_crcs", "losses", "params_crc",
                                       "busiest_received", "mean_received", "byz_block_share"])


def summarise_runs(study, warmup_steps=1):
    """The run table plus per-run reductions of the per-step frames (one Dask compute).

    Adds: ``final_accuracy`` (test accuracy at the last evaluated step), ``best_accuracy``,
    ``final_loss``, ``last_step``; mean seconds per step of each phase (``compute_s`` ...
    ``step_s``) leaving out the first ``warmup_steps`` steps (start-up costs); and the fraction of
    steps in which a Byzantine worker was among the selected (``byz_selected_frac``), was the first
    choice (``top_byzantine_frac``), and the mean weight share of Byzantine workers
    (``byz_weight_mean``, NaN where the file stores no weights); for comparing placements,
    ``selection_digest``, ``busiest_received``, ``mean_received`` and ``byz_block_share``
    (``_reduce_sharding``).
    """
    runs = study.runs
    if not len(runs):
        return runs.copy()
    reducers = [(study.metrics, _reduce_metrics, {}), (study.timings, _reduce_timings,
                {"warmup_steps": warmup_steps}), (study.selections, _reduce_selections, {}),
                (study.sharding, _reduce_sharding, {"warmup_steps": warmup_steps})]
    lazy = []
    for frame, fn, kw in reducers:
        meta = fn(frame._meta, **kw)
        lazy.append(frame.map_partitions(fn, **kw, meta=meta))
    parts = dask.compute(*lazy, scheduler=_scheduler())
    out = runs
    for part in parts:
        out = out.merge(part, on="run", how="left")
    return out


# ---------------------------------------------------------------------------------------------
# Tables


def run_summary(study, warmup_steps=1, complete_only=True):
    """One row per run with its per-step reductions; only complete runs unless told otherwise."""
    summary = summarise_runs(study, warmup_steps=warmup_steps)
    if complete_only and len(summary):
        summary = summary[summary["status"] == "complete"]
    return summary.reset_index(drop=True)


def _keys(summary, keys):
    return list(keys) if keys is not None else experiment_keys(summary)


def _groups(summary, keys):
    """Group rows by ``keys``; NaN/None values group together (options absent for some rules)."""
    return summary.groupby(keys, dropna=False, sort=True)


def _row(keys, values):
    values = values if isinstance(values, tuple) else (values,)
    return dict(zip(keys, values))


def _context(row, context_keys):
    return tuple(str(row[k]) for k in context_keys)


def accuracy_table(summary, keys=None, level=0.95):
    """Final and best test accuracy per experiment: mean and CI half-width over seeds."""
    keys = _keys(summary, keys)
    rows = []
    for values, g in _groups(summary, keys):
        final, final_ci, n = mean_ci(g["final_accuracy"], level)
        best, best_ci, _ = mean_ci(g["best_accuracy"], level)
        rows.append({**_row(keys, values), "n_seeds": n, "seeds": _seeds(g),
                     "final_mean": final, "final_ci": final_ci, "best_mean": best, "best_ci": best_ci,
                     "final_step": g["final_accuracy_step"].max()})
    return pd.DataFrame(rows)


def _seeds(group):
    return " ".join(str(s) for s in sorted(group["seed"].dropna().unique()))


def resilience_cost(summary, keys=None, level=0.95):
    """The cost of resilience of each experiment against averaging without attack in the same setting.

    ``acc_gap``: mean final accuracy minus the baseline's (negative: the rule loses accuracy), with
    the half-width of its Welch t interval (``acc_gap_ci``). ``time_ratio``: mean seconds per step
    over the baseline's (1.2 = 20% slower); ``aggregate_ratio`` the same for the aggregation phase.
    ``vs_average``: what the rule buys under the same attack: its mean final accuracy minus that of
    averaging at the same Byzantine fraction and attack (``vs_average_ci``: Welch half-width).
    Rows without a matching baseline get NaN (and ``baseline_runs`` 0).
    """
    keys = _keys(summary, keys)
    context = [k for k in keys if k not in _TREATMENT_KEYS]
    is_avg = summary["aggregator.name"] == BASELINE_RULE
    baselines, attacked_avg = {}, {}
    for idx, avg_row in summary[is_avg].iterrows():
        attacked_avg.setdefault(_context(avg_row, context + ["attack_label", "byz_fraction"]), []).append(idx)
        if not avg_row["n_byzantine"] > 0:
            baselines.setdefault(_context(avg_row, context), []).append(idx)
    rows = []
    for values, g in _groups(summary, keys):
        row = _row(keys, values)
        found = baselines.get(_context(g.iloc[0], context))
        base = summary.loc[found] if found else None
        gap, gap_ci = welch_diff_ci(g["final_accuracy"], base["final_accuracy"], level) \
            if base is not None else (np.nan, np.nan)
        same_attack = attacked_avg.get(_context(g.iloc[0], context + ["attack_label", "byz_fraction"]))
        gain, gain_ci = welch_diff_ci(g["final_accuracy"], summary.loc[same_attack, "final_accuracy"], level) \
            if same_attack else (np.nan, np.nan)
        step, step_ci, n = mean_ci(g["step_s"], level)
        base_step = base["step_s"].mean() if base is not None else np.nan
        base_agg = base["aggregate_s"].mean() if base is not None else np.nan
        rows.append({**row, "n_seeds": n, "final_mean": g["final_accuracy"].mean(),
                     "baseline_final": base["final_accuracy"].mean() if base is not None else np.nan,
                     "acc_gap": gap, "acc_gap_ci": gap_ci, "vs_average": gain, "vs_average_ci": gain_ci,
                     "step_s": step, "step_s_ci": step_ci,
                     "time_ratio": step / base_step, "aggregate_s": g["aggregate_s"].mean(),
                     "aggregate_ratio": g["aggregate_s"].mean() / base_agg,
                     "baseline_runs": 0 if base is None else len(base)})
    return pd.DataFrame(rows)


def phase_times(summary, keys=None):
    """Mean seconds per step in each phase (compute, gather, aggregate, update, craft, other) per
    experiment. ``craft_s`` is NaN where no run of the experiment recorded it (older files, sharded
    placements). ``other_s`` is the step time not covered by the phases, at least 0.
    """
    keys = _keys(summary, keys)
    rows = []
    for values, g in _groups(summary, keys):
        row = {**_row(keys, values), "n_runs": len(g)}
        for phase in PHASES:
            row[phase] = g[phase].mean() if phase in g else np.nan
        row["step_s"] = g["step_s"].mean()
        row["other_s"] = max(0.0, row["step_s"] - float(np.nansum([row[p] for p in PHASES])))
        row["aggregate_share"] = row["aggregate_s"] / row["step_s"] if row["step_s"] > 0 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def scaling_table(summary, keys=None, level=0.95):
    """Speed-up and parallel efficiency over MPI ranks, per series of runs that differ only in scale.

    Within one experiment (every key but ranks and workers equal), a *strong* series holds the
    runs with the same number of workers on different rank counts (speed-up = T(p0)/T(p),
    efficiency = speed-up * p0/p); a *weak* series the runs with the same workers per rank
    (efficiency = T(p0)/T(p), scaled speed-up = efficiency * p/p0). p0 is the series' smallest
    rank count. ``series`` names it ("n=20" or "n/rank=10"). Empty when ranks never vary.
    """
    keys = _keys(summary, keys)
    if "n_ranks" not in summary or summary["n_ranks"].nunique() < 2:
        return pd.DataFrame()
    series_keys = [k for k in keys if k not in _SCALE_KEYS]
    rows = []
    for values, group in _groups(summary, series_keys):
        points = []
        for (ranks, workers), g in group.groupby(["n_ranks", "workers.n"], sort=True):
            step, step_ci, n = mean_ci(g["step_s"], level)
            points.append((int(ranks), int(workers), n, step, step_ci))
        for mode, series_of in (("strong", lambda r, w: f"n={w}"), ("weak", lambda r, w: f"n/rank={w / r:g}")):
            series = {}
            for point in points:
                series.setdefault(series_of(point[0], point[1]), []).append(point)
            for name, pts in series.items():
                if len({p[0] for p in pts}) < 2:
                    continue
                p0, t0 = pts[0][0], pts[0][3]
                for ranks, workers, n, step, step_ci in pts:
                    ratio = t0 / step
                    speedup, efficiency = (ratio, ratio * p0 / ranks) if mode == "strong" else \
                        (ratio * ranks / p0, ratio)
                    rows.append({**_row(series_keys, values), "mode": mode, "series": name, "n_ranks": ranks,
                                 "workers.n": workers, "n_seeds": n, "step_s": step, "step_s_ci": step_ci,
                                 "speedup": speedup, "efficiency": efficiency})
    return pd.DataFrame(rows)


def byzantine_selection(summary, keys=None, level=0.95):
    """How often the rule let a Byzantine worker in, for runs with Byzantine workers.

    ``byz_selected``: fraction of steps where a Byzantine worker was among the selected (averaging
    selects everyone: 1); ``top_byzantine``: fraction where the first choice was Byzantine;
    ``byz_weight``: mean weight share of Byzantine workers (NaN where no weights are stored).
    """
    keys = _keys(summary, keys)
    attacked = summary[summary["n_byzantine"].fillna(0) > 0]
    rows = []
    for values, g in _groups(attacked, keys) if len(attacked) else []:
        frac, frac_ci, n = mean_ci(g["byz_selected_frac"], level)
        # With every worker selected (averaging) the first choice means nothing.
        everyone = g["mean_selected"].mean() >= g["n_workers"].max()
        rows.append({**_row(keys, values), "n_seeds": n, "byz_selected": frac, "byz_selected_ci": frac_ci,
                     "top_byzantine": np.nan if everyone else g["top_byzantine_frac"].mean(), "byz_weight": g["byz_weight_mean"].mean(),
                     "mean_selected": g["mean_selected"].mean()})
    return pd.DataFrame(rows)


def accuracy_curves(study, summary, keys=None):
    """Test accuracy per evaluated step, mean and min/max over seeds, per experiment (pandas).

    Reads only ``run, step, test_accuracy`` (the projection is pushed into the HDF5 reads).
    """
    keys = _keys(summary, keys)
    metrics = study.metrics[["run", "step", "test_accuracy"]].dropna().compute()
    merged = metrics.merge(summary[["run", *keys]], on="run")
    grouped = merged.groupby([*keys, "step"], dropna=False, sort=True)["test_accuracy"]
    return grouped.agg(["mean", "min", "max", "count"]).reset_index()
