"""Tables of the review report: a study whose runs carry review parts (``run.name`` = ``point1-...``,
``point2-...``, ``point3-...``, as ``studies/review.toml`` writes them) is answered point by point,
each point from its own runs.

Every accuracy is the final test accuracy over seeds: the mean with its 95% t interval clipped to
[0, 1] (``accuracy_text``; the half-width ``*_ci`` is kept for the error bars), or, for a cell whose
seeds split into two groups, the median with min-max and every seed listed (``paired.split_summary``).
Every difference against averaging is paired by seed (the same seed gives both rules the same data
order, Byzantine workers and initial parameters): a paired t interval on the per-seed differences,
and its verdict Holm-corrected over the family of the table's comparisons (``paired.family_verdicts``;
the family size is in ``family``). The tables hold no timing column: the timings are in their own
tables (``*_timing``), so that two runs of the same study give the same accuracy tables to the last digit.
"""
import numpy as np
import pandas as pd

from .paired import accuracy_interval, family_verdicts, split_summary
from .protocol import FAMILY_ALPHA, NUMERIC_ATTACKS, worst_case
from .stats import mean_ci

POINTS = {1: "point1", 2: "point2", 3: "point3"}
BASELINE = "average"
# point 2: the part, the column that is its axis, and what the axis is called
COMPARED = ("cost", "payoff")
EFFECT_COLUMNS = ["axis", "value", "rule"] + [f"{n}{s}" for n in COMPARED for s in
                                              ("", "_low", "_high", "_p_holm", "_seeds", "_verdict")] + ["family"]
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


def by_seed(frame) -> dict:
    """{seed: final accuracy} of a cell's runs (the mean where a seed has several runs)."""
    if not len(frame):
        return {}
    return {int(s): float(v) for s, v in frame.groupby("seed")["final_accuracy"].mean().items()}


def cell_text(values_by_seed: dict) -> str:
    """A table cell: "91.0% [90.1, 91.8] (5 seeds)", the interval inside [0, 100]; or for a cell whose
    seeds split, "median 60.5% (min 41.2, max 90.1; seeds 1: 41.2, 0: 60.5, 2: 90.1)"."""
    split = split_summary(values_by_seed)
    if split.split:
        listed = ", ".join(f"{s}: {100 * v:.1f}" for s, v in zip(split.seeds, split.values))
        return f"median {100 * split.median:.1f}% (min {100 * split.low:.1f}, max {100 * split.high:.1f}; seeds {listed})"
    ci = accuracy_interval(list(values_by_seed.values()))
    if ci.n < 2:
        return f"{100 * ci.estimate:.1f}% (1 seed)" if ci.n else "n/a"
    return f"{100 * ci.estimate:.1f}% [{100 * ci.low:.1f}, {100 * ci.high:.1f}] ({ci.n} seeds)"


def _acc(frame):
    """(mean, t half-width, seeds, cell text) of a cell's final accuracies."""
    mean, ci, n = mean_ci(frame["final_accuracy"]) if len(frame) else (np.nan, np.nan, 0)
    return mean, ci, n, cell_text(by_seed(frame))


def paired_family(rows: list, pairs: dict, alpha: float = FAMILY_ALPHA) -> int:
    """Fill each row's cost / payoff columns from ``pairs`` {(row index, name): (a_by_seed, b_by_seed)}:
    the mean paired difference a - b, its paired t interval, the Holm-adjusted p-value over this whole
    family and the verdict in words; returns the family size (comparisons with at least one common seed)."""
    usable = {k: v for k, v in pairs.items() if set(v[0]) & set(v[1])}
    for row in rows:
        for name in COMPARED:
            row.update({name: np.nan, f"{name}_low": np.nan, f"{name}_high": np.nan, f"{name}_p_holm": np.nan,
                        f"{name}_seeds": 0, f"{name}_verdict": "no comparison"})
    verdicts = family_verdicts(usable, "t", alpha) if usable else []
    for v in verdicts:
        i, name = v.name
        iv = v.interval
        if iv.n < 2:
            words = "cannot decide (one paired seed: no interval)"
        elif v.verdict == "cannot decide":
            words = f"cannot decide (Holm p = {v.p_holm:.2g}, {iv.n} paired seeds)"
        else:
            words = f"{v.verdict} (Holm p = {v.p_holm:.2g})"
        rows[i].update({name: iv.estimate, f"{name}_low": iv.low, f"{name}_high": iv.high, f"{name}_p_holm": v.p_holm,
                        f"{name}_seeds": iv.n, f"{name}_verdict": words})
    for row in rows:
        row["family"] = len(usable)
    return len(usable)


def point1_frame(runs):
    """Point 1's runs with ``momentum``, ``k`` (the number of Byzantine workers the rule is told of,
    or that attack), ``fraction`` = k / n, and ``threat`` (the attack's label with the options that
    vary among its runs, e.g. ``alie(z=1.5)``, or ``none``)."""
    runs = runs.copy()
    runs["momentum"] = momentum_label(runs)
    byz = pd.to_numeric(runs["n_byzantine"], errors="coerce").fillna(0).astype(int)
    runs["k"] = np.where(byz > 0, byz, pd.to_numeric(runs["f"], errors="coerce").fillna(0).astype(int))
    runs["fraction"] = runs["k"] / pd.to_numeric(runs["n_workers"], errors="coerce")
    # the attack with the options that tell its variants apart (alie and alie(z=1.5) are two attacks)
    attack = runs["attack_label"] if "attack_label" in runs else runs["attack.name"]
    runs["threat"] = np.where(byz > 0, attack.astype(str), "none")
    return runs


def point1_accuracy(runs):
    """One row per rule, momentum, fraction and threat: final accuracy over seeds."""
    rows = []
    for (rule, mom, k, frac, threat), g in runs.groupby(["rule", "momentum", "k", "fraction", "threat"], sort=True):
        mean, ci, n, text = _acc(g)
        rows.append({"rule": rule, "momentum": mom, "k": int(k), "fraction": frac, "threat": threat,
                     "n_seeds": n, "seeds": " ".join(str(s) for s in sorted(g["seed"].unique())),
                     "accuracy": mean, "accuracy_ci": ci, "accuracy_text": text})
    return pd.DataFrame(rows)


def point1_resilience(runs):
    """Per rule, momentum and fraction (k > 0): accuracy without attack (the rule told f = k), the
    worst case over the crafted attacks run, and both against averaging, paired by seed, Holm over
    the table's comparisons of the robust rules (averaging's own rows are its baseline: no comparison).

    The cost is the clean accuracy minus averaging's without attack; the payoff the worst-case
    accuracy minus averaging's worst case at the same fraction (each side's worst attack, paired by
    seed). The worst case is the crafted attack with the lowest mean, so its interval is that attack's
    over seeds (picking the minimum biases it down a little); the numeric attacks (``blind``: a float
    overflow, not an attack on learning) are never the worst case, their lowest mean is reported apart
    (``numeric_worst``, ``numeric_worst_attack``), and ``attacks`` counts the crafted attacks compared.
    """
    rows, pairs = [], {}
    avg_clean = runs[(runs["rule"] == BASELINE) & (runs["threat"] == "none")]
    for (rule, mom, k, frac), g in runs[runs["k"] > 0].groupby(["rule", "momentum", "k", "fraction"], sort=True):
        clean = g[g["threat"] == "none"]
        if rule == BASELINE:   # averaging ignores f: its clean runs are the f = 0 ones
            clean = avg_clean[avg_clean["momentum"] == mom]
        attacked = g[g["threat"] != "none"]
        crafted = attacked[~attacked["threat"].isin(NUMERIC_ATTACKS)]
        worst, worst_runs = _worst(crafted)
        numeric, numeric_runs = _worst(attacked[attacked["threat"].isin(NUMERIC_ATTACKS)])
        avg = runs[(runs["rule"] == BASELINE) & (runs["momentum"] == mom) & (runs["k"] == k)
                   & (runs["threat"] != "none") & ~runs["threat"].isin(NUMERIC_ATTACKS)]
        avg_worst, avg_worst_runs = _worst(avg)
        base = avg_clean[avg_clean["momentum"] == mom]
        c_mean, c_ci, c_n, c_text = _acc(clean)
        w_mean, w_ci, w_n, w_text = _acc(worst_runs)
        if rule != BASELINE:
            pairs[(len(rows), "cost")] = (by_seed(clean), by_seed(base))
            pairs[(len(rows), "payoff")] = (by_seed(worst_runs), by_seed(avg_worst_runs))
        rows.append({"rule": rule, "momentum": mom, "k": int(k), "fraction": frac,
                     "clean": c_mean, "clean_ci": c_ci, "clean_seeds": c_n, "clean_text": c_text,
                     "attacks": crafted["threat"].nunique(), "worst_attack": worst,
                     "worst": w_mean, "worst_ci": w_ci, "worst_seeds": w_n, "worst_text": w_text,
                     "average_worst_attack": avg_worst, "numeric_worst_attack": numeric,
                     "numeric_worst": numeric_runs["final_accuracy"].mean() if len(numeric_runs) else np.nan})
    paired_family(rows, pairs)
    for row in rows:
        if row["rule"] == BASELINE:
            row.update({f"{name}_verdict": "baseline" for name in COMPARED})
    return pd.DataFrame(rows)


def _worst(attacked):
    """(name of the attack with the lowest mean final accuracy, its runs); ties to the first name. Over
    crafted attacks it is ``protocol.worst_case`` (numeric ones set apart); the caller passes the
    numeric attacks alone to get their lowest."""
    if not len(attacked):
        return "", attacked
    by_attack = {a: by_seed(g) for a, g in attacked.groupby("threat", sort=True)}
    if all(a in NUMERIC_ATTACKS for a in by_attack):
        means = {a: np.mean(list(v.values())) for a, v in by_attack.items()}
        name = min(means, key=lambda a: (means[a], a))
    else:
        try:
            name = worst_case(by_attack, 0).attack
        except ValueError:   # no finite accuracy in the cell
            return "", attacked.iloc[:0]
    return name, attacked[attacked["threat"] == name]


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
        mean, ci, n, text = _acc(g)
        rows.append({"axis": axis, "value": value, "rule": rule, "threat": threat, "n_seeds": n,
                     "accuracy": mean, "accuracy_ci": ci, "accuracy_text": text})
    return pd.DataFrame(rows)


def axis_effects(runs, axis):
    """Per value of ``axis`` and robust rule: cost (without attack) and payoff (under attack) against
    averaging in the same cell, paired by seed, Holm over the table's comparisons."""
    rows, pairs = [], {}
    for value, cell in runs.groupby(axis, sort=True):
        avg = cell[cell["rule"] == BASELINE]
        for rule, g in cell[cell["rule"] != BASELINE].groupby("rule", sort=True):
            for name, attacked in (("cost", False), ("payoff", True)):
                pairs[(len(rows), name)] = (by_seed(g[(g["threat"] != "none") == attacked]),
                                            by_seed(avg[(avg["threat"] != "none") == attacked]))
            rows.append({"axis": axis, "value": value, "rule": rule})
    paired_family(rows, pairs)
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
        mean, ci, n, text = _acc(g)
        rows.append({"part": part, "rule": rule, "threat": threat, "ranks": int(ranks), "placement": placement,
                     "n_seeds": n, "accuracy": mean, "accuracy_ci": ci, "accuracy_text": text,
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
