"""Tables of the review report: a study whose runs carry review parts (``run.name`` = ``point1-...``,
``point2-...``, ``point3-...``, as ``studies/review.toml`` writes them) is answered point by point,
each point from its own runs.

Every accuracy is the final test accuracy, mean and 95% t half-width over seeds
(``stats.mean_ci``); every difference a Welch interval (``stats.welch_diff_ci``). The tables hold
no timing column: the timings are in their own tables (``*_timing``), so that two runs of the same
study give the same accuracy tables to the last digit.
"""
import numpy as np
import pandas as pd

from .stats import mean_ci, welch_diff_ci

POINTS = {1: "point1", 2: "point2", 3: "point3"}
BASELINE = "average"
# point 2: the part, the column that is its axis, and what the axis is called
EFFECT_COLUMNS = ["axis", "value", "rule", "cost", "cost_ci", "cost_verdict", "payoff", "payoff_ci", "payoff_verdict"]
AGREEMENT_COLUMNS = ["part", "rule", "threat", "ranks", "placement", "seeds", "steps_same", "steps_same_min",
                     "accuracy_diff_max"]
POINT2_AXES = (("point2-samples", "data.n_train", "training samples"),
               ("point2-model", "prov.n_params", "model parameters d"),
               ("point2-batch", "workers.batch_size", "minibatch size"))


def review_points(summary):
    """{point: its runs} for the review points whose parts are present; {} for any other study."""
    if "run.name" not in summary or not len(summary):
        return {}
    names = summary["run.name"].astype(str)
    found = {p: summary[names.str.startswith(prefix)] for p, prefix in POINTS.items()}
    # the rule is its name: a part fixes the rule's options, and the study-wide label would name options
    # that vary in another part only (krum(placement=gather) in point 1)
    return {p: runs.assign(rule=runs["aggregator.name"].astype(str)).reset_index(drop=True)
            for p, runs in found.items() if len(runs)}


def momentum_label(frame):
    """``off``, or ``0.9 at workers``: worker momentum is what changes the vectors a rule sees."""
    mom = pd.to_numeric(frame.get("optimizer.momentum", pd.Series(0.0, index=frame.index)), errors="coerce")
    at = frame.get("optimizer.momentum_at", pd.Series("server", index=frame.index)).astype(str)
    return pd.Series([("off" if not m > 0 else f"{m:g} at {a}s") for m, a in zip(mom.fillna(0.0), at)],
                     index=frame.index)


def verdict(diff, ci, n_seeds):
    """Plain words for a difference and its interval; says when the seeds cannot decide."""
    if diff is None or not np.isfinite(diff):
        return "no comparison"
    if not np.isfinite(ci):
        return "cannot decide (one seed: no interval)"
    if diff - ci > 0:
        return "better (interval above 0)"
    if diff + ci < 0:
        return "worse (interval below 0)"
    return f"cannot decide (interval crosses 0, {int(n_seeds)} seeds)"


def _acc(values):
    mean, ci, n = mean_ci(values)
    return mean, ci, n


def point1_frame(runs):
    """Point 1's runs with ``momentum``, ``k`` (the number of Byzantine workers the rule is told of,
    or that attack), ``fraction`` = k / n, and ``threat`` (the attack, or ``none``)."""
    runs = runs.copy()
    runs["momentum"] = momentum_label(runs)
    byz = pd.to_numeric(runs["n_byzantine"], errors="coerce").fillna(0).astype(int)
    runs["k"] = np.where(byz > 0, byz, pd.to_numeric(runs["f"], errors="coerce").fillna(0).astype(int))
    runs["fraction"] = runs["k"] / pd.to_numeric(runs["n_workers"], errors="coerce")
    runs["threat"] = np.where(byz > 0, runs["attack.name"].astype(str), "none")
    return runs


def point1_accuracy(runs):
    """One row per rule, momentum, fraction and threat: final accuracy over seeds."""
    rows = []
    for (rule, mom, k, frac, threat), g in runs.groupby(["rule", "momentum", "k", "fraction", "threat"], sort=True):
        mean, ci, n = _acc(g["final_accuracy"])
        rows.append({"rule": rule, "momentum": mom, "k": int(k), "fraction": frac, "threat": threat,
                     "n_seeds": n, "seeds": " ".join(str(s) for s in sorted(g["seed"].unique())),
                     "accuracy": mean, "accuracy_ci": ci})
    return pd.DataFrame(rows)


def point1_resilience(runs):
    """Per rule, momentum and fraction (k > 0): accuracy without attack (the rule told f = k), the
    worst case over the attacks run, and both against averaging (Welch intervals).

    The cost is the clean accuracy minus averaging's without attack; the payoff the worst-case
    accuracy minus averaging's worst case at the same fraction. The worst case is the attack with the
    lowest mean, so its interval is that attack's over seeds (picking the minimum biases it down a little).
    """
    rows = []
    avg_clean = runs[(runs["rule"] == BASELINE) & (runs["threat"] == "none")]
    for (rule, mom, k, frac), g in runs[runs["k"] > 0].groupby(["rule", "momentum", "k", "fraction"], sort=True):
        clean = g[g["threat"] == "none"]["final_accuracy"]
        if rule == BASELINE:   # averaging ignores f: its clean runs are the f = 0 ones
            clean = avg_clean[avg_clean["momentum"] == mom]["final_accuracy"]
        attacked = g[g["threat"] != "none"]
        worst, worst_acc = _worst(attacked)
        avg = runs[(runs["rule"] == BASELINE) & (runs["momentum"] == mom) & (runs["k"] == k)
                   & (runs["threat"] != "none")]
        avg_worst, avg_worst_acc = _worst(avg)
        base = avg_clean[avg_clean["momentum"] == mom]["final_accuracy"]
        c_mean, c_ci, c_n = _acc(clean)
        w_mean, w_ci, w_n = _acc(worst_acc)
        cost, cost_ci = welch_diff_ci(clean, base) if len(clean) and len(base) else (np.nan, np.nan)
        pay, pay_ci = welch_diff_ci(worst_acc, avg_worst_acc) if len(worst_acc) and len(avg_worst_acc) \
            else (np.nan, np.nan)
        rows.append({"rule": rule, "momentum": mom, "k": int(k), "fraction": frac,
                     "clean": c_mean, "clean_ci": c_ci, "clean_seeds": c_n,
                     "attacks": attacked["threat"].nunique(), "worst_attack": worst,
                     "worst": w_mean, "worst_ci": w_ci, "worst_seeds": w_n,
                     "cost": cost, "cost_ci": cost_ci, "cost_verdict": verdict(cost, cost_ci, min(c_n, len(base))),
                     "average_worst_attack": avg_worst,
                     "payoff": pay, "payoff_ci": pay_ci, "payoff_verdict": verdict(pay, pay_ci, w_n)})
    return pd.DataFrame(rows)


def _worst(attacked):
    """(name of the attack with the lowest mean final accuracy, its runs' accuracies)."""
    if not len(attacked):
        return "", pd.Series(dtype=float)
    means = attacked.groupby("threat")["final_accuracy"].mean().sort_index()
    name = means.idxmin()
    return name, attacked[attacked["threat"] == name]["final_accuracy"]


def threat_frame(runs):
    """Runs with ``threat``: ``none`` or ``<attack> k/n`` (point 2 and 3 compare one attack)."""
    runs = runs.copy()
    byz = pd.to_numeric(runs["n_byzantine"], errors="coerce").fillna(0).astype(int)
    runs["threat"] = [("none" if b == 0 else f"{a} {b}/{n}")
                      for b, a, n in zip(byz, runs["attack.name"].astype(str), runs["n_workers"])]
    return runs


def axis_accuracy(runs, axis):
    """Final accuracy per value of ``axis``, rule and threat (point 2)."""
    rows = []
    for (value, rule, threat), g in runs.groupby([axis, "rule", "threat"], sort=True):
        mean, ci, n = _acc(g["final_accuracy"])
        rows.append({"axis": axis, "value": value, "rule": rule, "threat": threat, "n_seeds": n,
                     "accuracy": mean, "accuracy_ci": ci})
    return pd.DataFrame(rows)


def axis_effects(runs, axis):
    """Per value of ``axis`` and robust rule: cost (without attack) and payoff (under attack) against
    averaging in the same cell, Welch intervals."""
    rows = []
    for value, cell in runs.groupby(axis, sort=True):
        avg = cell[cell["rule"] == BASELINE]
        for rule, g in cell[cell["rule"] != BASELINE].groupby("rule", sort=True):
            row = {"axis": axis, "value": value, "rule": rule}
            for name, attacked in (("cost", False), ("payoff", True)):
                mine = g[(g["threat"] != "none") == attacked]["final_accuracy"]
                theirs = avg[(avg["threat"] != "none") == attacked]["final_accuracy"]
                diff, ci = welch_diff_ci(mine, theirs) if len(mine) and len(theirs) else (np.nan, np.nan)
                row.update({name: diff, f"{name}_ci": ci,
                            f"{name}_verdict": verdict(diff, ci, min(len(mine), len(theirs)))})
            rows.append(row)
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def timing(runs, keys):
    """Mean milliseconds per step (first step left out) and its 95% half-width, per ``keys``."""
    rows = []
    for values, g in runs.groupby(keys, sort=True):
        mean, ci, n = mean_ci(g["step_s"])
        values = values if isinstance(values, tuple) else (values,)
        rows.append({**dict(zip(keys, values)), "n_runs": n, "step_ms": 1e3 * mean,
                     "step_ms_ci": 1e3 * ci, "aggregate_ms": 1e3 * g["aggregate_s"].mean()})
    return pd.DataFrame(rows)


def placement_accuracy(runs):
    """Point 3: final accuracy per part, placement, ranks, rule and threat."""
    rows = []
    for (part, rule, threat, ranks, placement), g in runs.groupby(
            ["run.name", "rule", "threat", "n_ranks", "aggregator.placement"], sort=True):
        mean, ci, n = _acc(g["final_accuracy"])
        rows.append({"part": part, "rule": rule, "threat": threat, "ranks": int(ranks), "placement": placement,
                     "n_seeds": n, "accuracy": mean, "accuracy_ci": ci,
                     "byz_selected": g["byz_selected_frac"].mean()})
    return pd.DataFrame(rows)


def selection_agreement(runs, selected_by_run):
    """Point 3: for each sharded / per-shard run, the share of steps whose selection equals that of
    the gather run of the same part, rule, threat, seed and ranks, and the accuracy difference to it.

    ``selected_by_run``: {run: tuple of per-step first choices}."""
    rows = []
    key = ["run.name", "rule", "threat", "seed", "n_ranks"]
    gathered = {tuple(r[k] for k in key): r for _, r in runs[runs["aggregator.placement"] == "gather"].iterrows()}
    for _, r in runs[runs["aggregator.placement"] != "gather"].iterrows():
        ref = gathered.get(tuple(r[k] for k in key))
        if ref is None:
            continue
        mine, theirs = selected_by_run.get(r["run"]), selected_by_run.get(ref["run"])
        same = np.nan
        if mine is not None and theirs is not None and len(mine) == len(theirs) and len(mine):
            same = float(np.mean([a == b for a, b in zip(mine, theirs)]))
        rows.append({"part": r["run.name"], "rule": r["rule"], "threat": r["threat"], "ranks": int(r["n_ranks"]),
                     "placement": r["aggregator.placement"], "seed": int(r["seed"]), "steps_same": same,
                     "accuracy_diff": r["final_accuracy"] - ref["final_accuracy"]})
    frame = pd.DataFrame(rows)
    if not len(frame):
        return pd.DataFrame(columns=AGREEMENT_COLUMNS)
    return (frame.groupby(["part", "rule", "threat", "ranks", "placement"], sort=True)
            .agg(seeds=("seed", "count"), steps_same=("steps_same", "mean"),
                 steps_same_min=("steps_same", "min"), accuracy_diff_max=("accuracy_diff", lambda x: x.abs().max()))
            .reset_index())
