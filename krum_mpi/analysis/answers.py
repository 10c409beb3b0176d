"""The analysis behind the report's sections: the study's settings, the sentences that answer the
review's points, and pivot tables (``report`` and ``sections`` put them on the page)."""
import json

import numpy as np
import pandas as pd

from . import figures, tables
from .markup import missing, pct, pp_ci, times


def varying(summary, candidates):
    return [k for k in candidates if k in summary and summary[k].astype(str).nunique() > 1]


HEADERS = {"rule": "rule", "attack_label": "attack", "byz_fraction": "Byzantine", "aggregator.f": "declared f",
           "workers.n": "workers", "n_ranks": "ranks", "model.hidden": "hidden layers",
           "data.max_train": "max train samples", "data.n_train": "train samples",
           "workers.batch_size": "batch", "data.name": "dataset", "model.name": "model"}


def key_columns(keys):
    return {k: (HEADERS.get(k, k), pct if k == "byz_fraction" else None) for k in keys}


def settings_table(summary):
    """One line per setting: the values present in the study."""
    def values(col, fmt=str):
        if col not in summary:
            return None
        vals = sorted(summary[col].dropna().unique(), key=lambda v: (str(type(v)), v))
        return ", ".join(fmt(v) for v in vals)

    hosts = None
    if "prov.hostnames" in summary:
        names = set()
        for text in summary["prov.hostnames"].dropna():
            names.update(json.loads(text) if str(text).startswith("[") else [text])
        hosts = ", ".join(sorted(map(str, names)))
    rows = [("rules", values("rule")), ("attacks", values("attack_label")),
            ("Byzantine fractions", values("byz_fraction", lambda v: pct(v, 1))),
            ("declared f", values("aggregator.f")), ("workers (n)", values("n_workers")),
            ("MPI ranks", values("n_ranks")), ("dataset", values("data.name")),
            ("dataset rows", values("prov.dataset.rows")), ("max train samples (0 = all)", values("data.max_train")),
            ("model", values("model.name")), ("hidden layers", values("model.hidden")),
            ("parameters (d)", values("prov.n_params")), ("batch size per worker", values("workers.batch_size")),
            ("learning rate", values("optimizer.lr")), ("steps", values("steps")), ("seeds", values("seed")),
            ("hosts", hosts), ("MPI library", values("prov.mpi_library_version", lambda v: str(v)[:60])),
            ("aggregation device", values("prov.device"))]
    return pd.DataFrame([(k, v) for k, v in rows if v], columns=["setting", "values in this study"])


def train_rows(summary):
    """The largest number of training samples: synthetic n_train, or the dataset's rows (capped by max_train)."""
    rows = pd.Series(np.nan, index=summary.index)
    if "prov.dataset.rows" in summary:
        frac = (pd.to_numeric(summary["data.test_fraction"], errors="coerce").fillna(0.0)
                if "data.test_fraction" in summary else 0.0)
        rows = pd.to_numeric(summary["prov.dataset.rows"], errors="coerce") * (1 - frac)
    if "data.name" in summary and "data.n_train" in summary:
        synthetic = summary["data.name"] == "synthetic"
        rows = rows.where(~synthetic, pd.to_numeric(summary["data.n_train"], errors="coerce"))
    if "data.max_train" in summary:
        cap = pd.to_numeric(summary["data.max_train"], errors="coerce").fillna(0)
        rows = rows.where(cap <= 0, np.minimum(rows, cap))
    return rows.max()


def by_setting(cost, keys, key, modal):
    """One sentence per robust rule and attack: its accuracy gap at each value of ``key``, with the
    other keys at the main setting."""
    rows = cost[cost["rule"] != tables.BASELINE_RULE]
    for k in keys:
        if k not in ("rule", "byz_fraction", "attack_label", "aggregator.f", key) and k in modal:
            rows = rows[rows[k].astype(str) == modal[k]]
    lines = []
    for (rule, frac, attack), g in rows.groupby(["rule", "byz_fraction", "attack_label"], sort=True):
        if g[key].nunique() < 2:
            continue
        where = "without attack" if attack == "none" else f"at {pct(frac)} {attack}"
        pts = "; ".join(f"{r[key]}: {pp_ci(r['acc_gap'], r['acc_gap_ci'])}" for _, r in g.sort_values(key).iterrows())
        lines.append(f"{rule} {where}, gap to averaging without attack by `{key}`: {pts}.")
    return lines


def verdict(gap, ci, n):
    if missing(gap):
        return "no baseline"
    if missing(ci):
        return "one seed on a side: no interval, no claim either way"
    if gap + ci < 0:
        return "a loss the seeds confirm"
    if gap - ci > 0:
        return "a gain the seeds confirm"
    return f"no difference detectable with {int(n)} seeds"


def answer_cost(cost, keys, modal):
    """Sentences for point 1 from the cost table."""
    lines = []
    no_attack = cost[(cost["attack_label"] == "none") & (cost["rule"] != tables.BASELINE_RULE)]
    for _, r in no_attack.iterrows():
        if r["baseline_runs"] == 0:
            continue
        extra = figures.context_label(r, keys, modal)
        label = r["rule"] + (f" ({extra})" if extra else "")
        lines.append(f"Without attack, **{label}** reaches {pct(r['final_mean'])} against "
                     f"{pct(r['baseline_final'])} for averaging: {pp_ci(r['acc_gap'], r['acc_gap_ci'])} "
                     f"({verdict(r['acc_gap'], r['acc_gap_ci'], r['n_seeds'])}); time per step "
                     f"{times(r['time_ratio'])} averaging's.")
    attacked = cost[cost["attack_label"] != "none"]
    context = [k for k in keys if k not in ("rule", "aggregator.f")]
    details = []
    for values, g in attacked.groupby(context, sort=True, dropna=False):
        row = dict(zip(context, values if isinstance(values, tuple) else (values,)))
        extra = figures.context_label(row, context, modal)
        avg = g[g["rule"] == tables.BASELINE_RULE]
        parts = [f"{r['rule']} {pct(r['final_mean'])}" + ("" if r["rule"] == tables.BASELINE_RULE or missing(r["vs_average"])
                 else f" ({pp_ci(r['vs_average'], r['vs_average_ci'])} over averaging)") for _, r in g.iterrows()]
        details.append(f"At {pct(row['byz_fraction'])} Byzantine ({row['attack_label']}{', ' + extra if extra else ''}): "
                       + ", ".join(parts) + ("" if len(avg) else " (no averaging run under this attack)") + ".")
    # Where does robustness start to pay? Per rule and attack: the fractions with a confirmed gain.
    robust = attacked[(attacked["rule"] != tables.BASELINE_RULE) & attacked["vs_average"].notna()]
    series = [k for k in keys if k not in ("byz_fraction", "aggregator.f")]
    for values, g in robust.groupby(series, sort=True, dropna=False):
        row = dict(zip(series, values if isinstance(values, tuple) else (values,)))
        extra = figures.context_label(row, series, modal)
        verdicts = {}
        for _, r in g.sort_values("byz_fraction").iterrows():
            verdicts.setdefault(verdict(r["vs_average"], r["vs_average_ci"], r["n_seeds"]), []).append(
                pct(r["byz_fraction"]))
        said = "; ".join(f"{v} at {', '.join(f)}" for v, f in verdicts.items())
        lines.append(f"Under attack ({row['attack_label']}{', ' + extra if extra else ''}), **{row['rule']}** "
                     f"against averaging: {said}.")
    return lines, details


def pivot(frame, keys, by, value, fmt):
    """Rows: experiments without ``by`` (and the declared f); columns: the values of ``by``."""
    index = [k for k in keys if k not in (by, "aggregator.f")]
    cells = frame.assign(_v=frame[value].map(fmt)).groupby(index + [by], dropna=False, sort=True)["_v"].first()
    table = cells.unstack(by)  # only the combinations present, never their Cartesian product
    table.columns = [f"{HEADERS.get(by, by)} = {c}" for c in table.columns]
    table = table.reset_index().fillna("-")
    if "byz_fraction" in table:
        table["byz_fraction"] = table["byz_fraction"].map(pct)
    return table.rename(columns={k: HEADERS.get(k, k) for k in index})
