"""The report's part on where the rule runs (``aggregator.placement``, docs/sharded.md), for the
review's third point. It is shown only when some run of the study is not under ``gather``.

- exactness: runs that differ only in placement, rank count or model-parallel degree (same seed)
  are compared through a digest of the selection of every step (``tables._reduce_sharding``);
- traffic and time: bytes received per step by the busiest rank (``comm/bytes_received``) and
  seconds per step, per placement and rank count, and Krum's extra time over averaging;
- accuracy: final test accuracy of ``per-shard`` against exact ``sharded`` under each attack, with
  95% intervals over seeds and a verdict that says where the data cannot decide.

A study without ``parallel.model`` counts as model-parallel degree 1; when the key is present its
values are shown as a column.
"""
import numpy as np
import pandas as pd

from . import figures
from .markup import missing, ms, pct, pp_ci, times
from .stats import mean_ci, welch_diff_ci

PLACEMENTS = ("gather", "sharded", "per-shard")
NOT_IN_CELL = ("aggregator.placement", "parallel.model", "run.checkpoint_every")   # what may differ in a cell
MB = 1e6
# coordinate-wise rules: per-shard is sharded by construction (sharded.BLOCKWISE_RULES), nothing to compare
COORDINATEWISE = ("average", "median", "trimmed-mean", "meamed")


def prepared(summary):
    """The summary with ``placement``, ``model_parallel`` (1 where absent), ``d`` (parameters),
    ``cell`` (every config value but placement, model-parallel degree and ranks) and ``setting``
    (the cell without the seed)."""
    s = summary.copy()
    s["placement"] = s["aggregator.placement"].fillna("gather") if "aggregator.placement" in s else "gather"
    s["model_parallel"] = (pd.to_numeric(s["parallel.model"], errors="coerce").fillna(1).astype(int)
                           if "parallel.model" in s else 1)
    s["d"] = pd.to_numeric(s["prov.n_params"], errors="coerce") if "prov.n_params" in s else np.nan
    config = sorted(c for c in s.columns if "." in c and not c.startswith("prov.") and c not in NOT_IN_CELL)
    text = s[config].map(str)   # NaN too (astype(str) may keep it a float)
    s["cell"] = text.agg("|".join, axis=1) if config else ""
    setting = [c for c in config if c != "run.seed"]
    s["setting"] = text[setting].agg("|".join, axis=1) if setting else ""
    s["attack_text"] = _attack_texts(s, text)
    return s


def _attack_texts(s, text):
    """``name(key=value, ..., adversary)``: the attack's parameters that differ among the runs of that
    attack (a default counts as a value, which the run table's own label leaves out)."""
    if "attack.name" not in s:
        return s["attack_label"].astype(str)
    params = [c for c in text.columns if c.startswith("attack.") and c not in ("attack.name", "attack.adversary")]
    out = pd.Series("", index=s.index, dtype=object)
    for name, g in text.groupby(s["attack.name"].astype(str), sort=False):
        varying = [c for c in params if g[c].nunique() > 1]
        for idx in g.index:
            shown = [f"{c[len('attack.'):]}={g.at[idx, c]}" for c in varying if not missing(s.at[idx, c])]
            out[idx] = name + (f"({', '.join(shown)})" if shown else "")
    adversary = s["attack.adversary"].astype(str) if "attack.adversary" in s else "omniscient"
    none = pd.to_numeric(s["n_byzantine"], errors="coerce").fillna(0) == 0
    return (out + " (" + adversary + ")").where(~none, "none")


def _label(row):
    d = "d=?" if missing(row["d"]) else f"d={int(row['d']):,}"
    return f"{row['aggregator.name']}, {row['attack_text']}, n={int(row['n_workers'])}, {d}"


def exactness(s):
    """Each run of a cell with more than one run against the cell's reference: the gathered run on
    the fewest ranks if there is one, else the run on the fewest ranks."""
    rows = []
    for _, g in s.groupby("cell", sort=False):
        if len(g) < 2:
            continue
        order = g.assign(_p=g["placement"].map({p: i for i, p in enumerate(PLACEMENTS)}).fillna(9))
        order = order.sort_values(["_p", "n_ranks", "model_parallel"])
        ref = order.iloc[0]
        ref_name = f"{ref['placement']}, {int(ref['n_ranks'])} rank{'s' if ref['n_ranks'] > 1 else ''}"
        for _, r in order.iloc[1:].iterrows():
            rows.append({"setting": _label(r), "seed": r["seed"], "placement": r["placement"],
                         "n_ranks": r["n_ranks"], "model_parallel": r["model_parallel"], "steps": r["last_step"] + 1,
                         "reference": ref_name,
                         "identical": r["selection_digest"] == ref["selection_digest"],
                         "first_selection_diff": first_difference(r["selection_crcs"], ref["selection_crcs"]),
                         "first_loss_diff": first_difference(r["losses"], ref["losses"]),
                         "loss_gap": relative_gap(r["losses"], ref["losses"]),
                         "same_params": r["params_crc"] == ref["params_crc"] and r["params_crc"] >= 0})
    out = pd.DataFrame(rows)
    return out.sort_values(["setting", "placement", "n_ranks", "seed"]).reset_index(drop=True) if len(out) else out


def relative_gap(a, b):
    """|a - b| / |b| at the first step where the losses differ (NaN where they never do): about 1e-9
    says the parameters parted by a rounding, not by a different update."""
    k = first_difference(a, b)
    if k is None or k >= min(len(a), len(b)):
        return np.nan
    return abs(a[k] - b[k]) / abs(b[k]) if b[k] else np.inf


def first_difference(a, b):
    """The first step where two per-step sequences differ (NaN equals NaN), or None."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    k = min(a.size, b.size)
    same = (a[:k] == b[:k]) | (np.isnan(a[:k]) & np.isnan(b[:k]))
    where = np.flatnonzero(~same)
    return int(where[0]) if where.size else (None if a.size == b.size else k)


def traffic(s):
    """Mean over seeds and attacks per (rule, d, workers, ranks, model-parallel degree, placement),
    with the ratios to the gathered placement in the same setting."""
    keys = ["aggregator.name", "d", "n_workers", "n_ranks", "model_parallel", "placement"]
    t = s.groupby(keys, dropna=False, sort=True).agg(
        runs=("run", "size"), busiest_received=("busiest_received", "mean"),
        mean_received=("mean_received", "mean"), step_s=("step_s", "mean"),
        aggregate_s=("aggregate_s", "mean")).reset_index()
    # the reference of every run, model-parallel or not, is the gather of whole rows (parallel.model = 1)
    gather = t[(t["placement"] == "gather") & (t["model_parallel"].fillna(1) == 1)].set_index(keys[:-2])
    ref = t.set_index(keys[:-2]).index
    with np.errstate(invalid="ignore", divide="ignore"):   # one rank: no bytes at all
        t["busiest_vs_gather"] = t["busiest_received"].to_numpy() / gather["busiest_received"].reindex(ref).to_numpy()
        t["step_vs_gather"] = t["step_s"].to_numpy() / gather["step_s"].reindex(ref).to_numpy()
    return t.sort_values(["d", "aggregator.name", "n_ranks", "placement"], ascending=[False, True, True, True])


def krum_extra(t):
    """Krum's extra time over averaging's, per placement, where both ran in the same setting: the
    difference of their rule phases (the only work that differs; whole steps on shared cores vary by
    more than that), and that difference as a share of Krum's step."""
    keys = ["d", "n_workers", "n_ranks", "model_parallel", "placement"]
    avg = t[t["aggregator.name"] == "average"].set_index(keys)
    krum = t[t["aggregator.name"] == "krum"].set_index(keys)
    both = krum.index.intersection(avg.index)
    out = pd.DataFrame({"krum_s": krum.loc[both, "step_s"], "average_s": avg.loc[both, "step_s"],
                        "krum_rule_s": krum.loc[both, "aggregate_s"],
                        "average_rule_s": avg.loc[both, "aggregate_s"]}).reset_index()
    out["extra_s"] = out["krum_rule_s"] - out["average_rule_s"]
    out["share"] = out["extra_s"] / out["krum_s"]
    return out


def verdict(diff, ci):
    if missing(ci):
        return "cannot decide: one seed on a side, no interval"
    if diff - ci > 0:
        return "per-shard higher"
    if diff + ci < 0:
        return "per-shard lower"
    return "cannot decide: the 95% interval includes 0"


def accuracy(s, level=0.95):
    """per-shard against sharded, per setting where both ran (rules that select: Krum, Multi-Krum, ...):
    means, intervals, difference, verdict."""
    rows = []
    pair = s[s["placement"].isin(("sharded", "per-shard")) & ~s["aggregator.name"].isin(COORDINATEWISE)]
    for _, g in pair.groupby(["setting", "n_ranks", "model_parallel"], sort=False, dropna=False):
        exact, naive = g[g["placement"] == "sharded"], g[g["placement"] == "per-shard"]
        if not len(exact) or not len(naive):
            continue
        e_mean, e_ci, e_n = mean_ci(exact["final_accuracy"], level)
        p_mean, p_ci, p_n = mean_ci(naive["final_accuracy"], level)
        diff, diff_ci = welch_diff_ci(naive["final_accuracy"], exact["final_accuracy"], level)
        first = g.iloc[0]
        rows.append({"setting": _label(first), "attack": first["attack_text"], "n_ranks": first["n_ranks"],
                     "model_parallel": first["model_parallel"], "seeds": min(e_n, p_n),
                     "sharded": e_mean, "sharded_ci": e_ci, "per_shard": p_mean, "per_shard_ci": p_ci,
                     "diff": diff, "diff_ci": diff_ci, "verdict": verdict(diff, diff_ci),
                     "byz_sharded": exact["byz_selected_frac"].mean(), "byz_blocks": naive["byz_block_share"].mean(),
                     "by_seed": f"{by_seed(exact)} / {by_seed(naive)}"})
    out = pd.DataFrame(rows)
    return out.sort_values(["n_ranks", "setting"]).reset_index(drop=True) if len(out) else out


def by_seed(runs):
    """Final accuracies in seed order, e.g. "0.722 0.660 0.740"."""
    return " ".join(f"{a:.3f}" for a in runs.sort_values("seed")["final_accuracy"])


def judged(acc):
    """The settings with at least two seeds on each side, when there are any (else all of them)."""
    if not len(acc) or not (acc["seeds"] >= 2).any():
        return acc
    return acc[acc["seeds"] >= 2].reset_index(drop=True)


def acc_ci(mean, ci):
    return "n/a" if missing(mean) else f"{mean:.3f}" + ("" if missing(ci) else f" ± {ci:.3f}")


def megabytes(x):
    return "n/a" if missing(x) else f"{x / MB:.3g}"


def _model_column(frame, show_model):
    return {"model_parallel": ("model-parallel", None)} if show_model else {}


def section(page):
    """Write the part on placements into ``page``; returns its short answers ([] without such runs)."""
    summary = page.summary
    if "aggregator.placement" not in summary or (summary["aggregator.placement"].fillna("gather") == "gather").all():
        return []
    rep, s = page.rep, prepared(summary)
    show_model = "parallel.model" in summary
    rep.h(3, "Where the rule runs: gathered, exact sharded, per-shard")
    rep.p("`gather`: rank 0 receives every row and runs the rule. `sharded`: each rank holds a block of "
          "coordinates of every row, the distances are summed over the blocks and every rank derives the "
          "exact selection. `per-shard`: each rank runs the rule on its block alone (not exact Krum).")
    answers = _exactness_part(page, s, show_model)
    t = traffic(s)
    answers += _traffic_part(page, t, show_model)
    acc = accuracy(s)
    answers += _accuracy_part(page, acc, show_model)
    _figure(page, t, judged(acc))
    return answers


def _exactness_part(page, s, show_model):
    rep, ex = page.rep, exactness(s)
    rep.h(4, "Exactness")
    if not len(ex):
        page.flag("no setting was run under more than one placement or rank count with the same seed: "
                  "whether sharded selections equal gathered ones is not checked here.")
        return []
    rep.p("Each run against its reference run (same config and seed; the gathered run on the fewest ranks "
          "where there is one): are the selected workers the same at every step? (A digest of every step's "
          "selection, each step's set sorted.)")
    step = lambda v: "-" if v is None or missing(v) else str(int(v))  # noqa: E731
    shown = ex.assign(identical=ex["identical"].map({True: "identical", False: "differ"}),
                      first_selection_diff=ex["first_selection_diff"].map(step),
                      first_loss_diff=ex["first_loss_diff"].map(step),
                      same_params=ex["same_params"].map({True: "yes", False: "no"}),
                      loss_gap=ex["loss_gap"].map(lambda v: "-" if missing(v) else f"{v:.1e}"))
    rep.table(shown.rename(columns={"n_ranks": "ranks", "model_parallel": "model-parallel",
                                    "identical": "selections", "first_selection_diff": "first step selected differs",
                                    "first_loss_diff": "first step loss differs", "loss_gap": "relative loss gap there",
                                    "same_params": "final parameters bitwise equal"})
              [["setting", "seed", "placement", "ranks", *(["model-parallel"] if show_model else []), "steps",
                "reference", "selections", "first step selected differs", "first step loss differs",
                "relative loss gap there", "final parameters bitwise equal"]])
    rep.p("A run whose loss parts from its reference's before its selection does had already followed other "
          "parameters, and its selections then differ on other inputs. A selection that differs before the "
          "loss does is a different decision on the same parameters. Under model parallelism (parallel.model > 1) "
          "the gradients themselves are computed by the split layers, so they equal the unsplit model's to float32 "
          "rounding, not bitwise: such a run parts from the gathered one by a rounding (a relative gap near 1e-8) "
          "at its first step, and its selections follow the same parameters only as long as that rounding does "
          "not change a choice.")
    answers = []
    for placement in ("gather", "sharded", "per-shard"):
        g = ex[ex["placement"] == placement]
        if placement == "per-shard":
            g = g[g["n_ranks"] > 1]   # one block: per-shard is the gathered rule
        if len(g):
            differ = g[~g["identical"]]
            decided = np.array([missing(r["first_loss_diff"]) or r["first_selection_diff"] < r["first_loss_diff"]
                                for _, r in differ.iterrows()], dtype=bool)
            drift = differ[~decided]["loss_gap"]
            text = (f"Exactness, {placement}: selections identical to the reference at every step in "
                    f"{int(g['identical'].sum())} of {len(g)} runs")
            if len(differ):
                text += (f"; of the {len(differ)} others, {int(decided.sum())} chose differently on the same "
                         f"parameters and {len(drift)} only after their loss had parted")
                text += f" (relative loss gap {drift.min():.0e} to {drift.max():.0e})" if len(drift) else ""
            answers.append(text + ".")
    rep.items(answers)
    return answers


def _p_label(row):
    """' (parallel.model = p)' for a model-parallel run, '' otherwise."""
    p = row.get("model_parallel", 1)
    return "" if missing(p) or int(p) == 1 else f" (parallel.model = {int(p)})"


def _traffic_part(page, t, show_model):
    rep = page.rep
    rep.h(4, "Traffic and time per step")
    if t["busiest_received"].isna().all():
        page.flag("the files record no bytes per rank (comm/bytes_received): traffic is not measured.")
        return []
    rep.p("Megabytes received per step by the busiest rank and per rank on average (payload bytes, the first "
          "step left out), and milliseconds per step; mean over seeds and attacks. The ratios are to the "
          "gathered placement in the same setting.")
    cols = {"aggregator.name": ("rule", None), "d": ("d", lambda v: "n/a" if missing(v) else f"{int(v):,}"),
            "n_workers": ("workers", None), "n_ranks": ("ranks", None), **_model_column(t, show_model),
            "placement": ("placement", None), "runs": ("runs", None),
            "busiest_received": ("busiest rank MB/step", megabytes), "mean_received": ("MB/step per rank", megabytes),
            "busiest_vs_gather": ("busiest vs gather", times), "step_s": ("ms/step", ms),
            "step_vs_gather": ("time vs gather", times)}
    rep.table(pd.DataFrame({h: (t[c].map(f) if f else t[c]) for c, (h, f) in cols.items()}))
    answers = []
    top = t[t["d"] == t["d"].max()]
    for (rule, ranks), g in top.groupby(["aggregator.name", "n_ranks"], sort=True):
        parts = [f"{r['placement']}{_p_label(r)} {megabytes(r['busiest_received'])} MB and {ms(r['step_s'])} ms"
                 for _, r in g.iterrows()]
        answers.append(f"{rule}, d={int(g['d'].iloc[0]):,} on {int(ranks)} ranks, busiest rank per step: "
                       + "; ".join(parts) + ".")
    extra = krum_extra(t)
    if len(extra):
        rep.p("Krum's extra time per step over averaging, same setting and placement: the difference of their "
              "rule phases (the rest of the step is the same work), and its share of Krum's step:")
        rep.table(pd.DataFrame({"d": extra["d"].map(lambda v: f"{int(v):,}"), "workers": extra["n_workers"],
                                "ranks": extra["n_ranks"], **({"model-parallel": extra["model_parallel"]}
                                                              if show_model else {}),
                                "placement": extra["placement"],
                                "krum ms/step": extra["krum_s"].map(ms), "average ms/step": extra["average_s"].map(ms),
                                "krum rule ms": extra["krum_rule_s"].map(ms),
                                "average rule ms": extra["average_rule_s"].map(ms),
                                "extra ms": extra["extra_s"].map(ms), "share of Krum's step": extra["share"].map(pct)}))
        for _, r in extra[extra["d"] == extra["d"].max()].iterrows():
            answers.append(f"Krum over averaging, {r['placement']}{_p_label(r)}, d={int(r['d']):,}, {int(r['n_ranks'])} ranks: "
                           f"{ms(r['extra_s'])} ms per step in the rule, {pct(r['share'])} of Krum's step.")
    else:
        page.flag("Krum and averaging never ran in the same setting and placement: Krum's extra time is not measured.")
    rep.items(answers)
    return answers


def _accuracy_part(page, acc, show_model):
    rep = page.rep
    rep.h(4, "Accuracy: per-shard against exact sharded selection (Krum)")
    if not len(acc):
        page.flag("no setting ran under both sharded and per-shard: their accuracy is not compared.")
        return []
    if len(judged(acc)) < len(acc):
        rep.p(f"{len(acc) - len(judged(acc))} settings ran under both placements with one seed only (the exactness "
              "runs); they are left out here.")
        acc = judged(acc)
    rep.p("Final test accuracy, mean ± 95% t interval over seeds; difference per-shard minus sharded with its "
          "Welch 95% interval (percentage points). Byzantine selected: share of steps where exact Krum selected "
          "a Byzantine worker, and share of (step, block) selections of per-shard that did.")
    rep.table(pd.DataFrame({
        "setting": acc["setting"], "ranks": acc["n_ranks"],
        **({"model-parallel": acc["model_parallel"]} if show_model else {}), "seeds": acc["seeds"],
        "sharded": [acc_ci(m, c) for m, c in zip(acc["sharded"], acc["sharded_ci"])],
        "per-shard": [acc_ci(m, c) for m, c in zip(acc["per_shard"], acc["per_shard_ci"])],
        "per-shard - sharded": [pp_ci(d, c) for d, c in zip(acc["diff"], acc["diff_ci"])],
        "verdict": acc["verdict"], "by seed: sharded / per-shard": acc["by_seed"],
        "Byzantine selected, sharded": acc["byz_sharded"].map(pct),
        "per-shard blocks": acc["byz_blocks"].map(pct)}))
    answers = [f"per-shard vs sharded Krum, {r['attack']} on {int(r['n_ranks'])} ranks ({int(r['seeds'])} seeds): "
               f"{acc_ci(r['per_shard'], r['per_shard_ci'])} vs {acc_ci(r['sharded'], r['sharded_ci'])}, "
               f"{pp_ci(r['diff'], r['diff_ci'])}: {r['verdict']}." for _, r in acc.iterrows()]
    undecided = acc["verdict"].str.startswith("cannot").sum()
    if undecided:
        page.flag(f"for {undecided} of {len(acc)} attack settings the seeds do not decide whether per-shard loses "
                  "accuracy against exact sharded Krum (the interval of the difference includes 0 or is missing).")
    rep.items(answers)
    return answers


def bar_labels(top):
    """One distinct label per bar of the traffic panel: rule and placement, the model split where there
    is one, then the workers where two bars are still alike (then a count: nothing may read twice)."""
    def split(r):
        p = r.get("model_parallel", 1)
        return "" if missing(p) or int(p) == 1 else f", p={int(p)}"

    labels = [f"{r['aggregator.name']}\n{r['placement']}{split(r)}" for _, r in top.iterrows()]
    if len(set(labels)) < len(labels) and "n_workers" in top:
        labels = [f"{label}\nn={r['n_workers']}" for label, (_, r) in zip(labels, top.iterrows())]
    total, seen = {label: labels.count(label) for label in labels}, {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if total[label] > 1:
            labels[i] = f"{label} #{seen[label]}"
    return labels


def _figure(page, t, acc):
    """Left: busiest rank's MB per step at the largest d, per placement and rule. Right: final accuracy
    of sharded and per-shard per attack with 95% intervals (clipped to [0, 1])."""
    panels = int(t["busiest_received"].notna().any()) + int(len(acc) > 0)
    if not panels:
        return
    fig = figures.new_figure(max(5.0, 1.1 * len(acc)) * panels + 1.0, 4.2)
    axes = list(np.atleast_1d(fig.subplots(1, panels)))
    if t["busiest_received"].notna().any():
        ax = axes.pop(0)
        top = t[(t["d"] == t["d"].max()) & (t["n_ranks"] == t[t["d"] == t["d"].max()]["n_ranks"].max())]
        top = top[top["busiest_received"].notna()]   # a placement not measured gets no bar
        ax.bar(range(len(top)), top["busiest_received"] / MB, color="tab:blue")
        ax.set_xticks(range(len(top)), bar_labels(top), fontsize=7)
        ax.set_ylabel("MB received per step, busiest rank")
        ax.set_title(f"d = {int(top['d'].iloc[0]):,}, {int(top['n_ranks'].iloc[0])} ranks", fontsize=9)
    if len(acc):
        ax = axes.pop(0)
        x = np.arange(len(acc))
        for shift, (col, name) in zip((-0.15, 0.15), (("sharded", "sharded (exact Krum)"), ("per_shard", "per-shard"))):
            ax.errorbar(x + shift, acc[col], yerr=figures.clipped_err(acc[col], acc[f"{col}_ci"]), fmt="o", capsize=3,
                        label=name)
        figures.category_ticks(ax, x, [f"{a}\n{int(r)} ranks" for a, r in zip(acc["attack"], acc["n_ranks"])])
        ax.set_ylabel("final test accuracy (95% interval)")
        figures.legend_below(fig, ax)
    page.draw(fig, "sharded_placements", "Sharded aggregation: traffic of the busiest rank, and per-shard vs "
              "exact sharded Krum accuracy")
