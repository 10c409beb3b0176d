"""The report's section "Byzantine ranks" (review point 3; docs/sharded.md, "Byzantine ranks").

From the runs table of a study (one row per complete run: the flattened config, ``n_ranks``,
``seed``, ``final_accuracy``, ``file``) and, per run, what its results file records per step
(``selection/selected``, ``byzantine_ranks/wanted``, ``replicas/outvoted``,
``selection/byzantine_through_ranks`` (steps x n; (n,) in older files), ``comm/bytes_sent`` and ``comm/bytes_received``,
``timing/step_s``), three tables:

- takeover: a run with a Byzantine rank in the sharded aggregation and no replicas against the
  honest gather run of the same setting and seed: the steps whose selection differs, the steps where
  Krum selected the lying rank's target, the steps where a Byzantine worker was selected, and the
  final accuracy;
- defence: the same with ``aggregator.replicas`` > 1 (selections equal to the honest gather's at
  every step? final parameters bitwise those of the honest run with the same replicas? which ranks
  the vote overruled, at how many steps), and under ``parallel.model`` > 1 a ``corrupt-activations``
  rank against the honest run with the same split (the steps where Krum selected a worker that only
  the lying rank made Byzantine: of its model group, not a declared Byzantine worker);
- cost: bytes sent and received per step by the busiest rank and seconds per step, per variant
  (gather, sharded r = 1, sharded r = 3, parallel.model = p, with or without a lying rank), with
  the ratios to sharded r = 1 and to the gather.

A run's setting is every config value but the placement, replicas, model-parallel degree, the
``[byzantine_ranks]`` section and the seed, plus the number of ranks. The section is written only
when some run has replicas or a Byzantine rank, and shows only the settings that have such runs.
"""
import h5py
import numpy as np
import pandas as pd

from .markup import missing, ms, pct, times

VARIED = ("aggregator.placement", "aggregator.replicas", "parallel.model", "run.checkpoint_every", "run.seed")
SHARDED_BEHAVIOURS = ("lie-distances", "corrupt-block")
MB = 1e6


def _number(runs, column, default):
    if column not in runs:
        return pd.Series(default, index=runs.index)
    return pd.to_numeric(runs[column], errors="coerce").fillna(default).astype(int)


def prepared(runs):
    """The runs with ``placement``, ``replicas``, ``p``, ``behaviour``, ``liars`` (the lying ranks as
    text), ``variant`` (a label of those), ``setting`` and, from each file, the per-step records."""
    s = runs.copy().reset_index(drop=True)
    s["placement"] = s["aggregator.placement"].fillna("gather") if "aggregator.placement" in s else "gather"
    s["replicas"], s["p"] = _number(s, "aggregator.replicas", 1), _number(s, "parallel.model", 1)
    s["behaviour"] = s["byzantine_ranks.behaviour"].fillna("none") if "byzantine_ranks.behaviour" in s else "none"
    s["liars"] = (s["byzantine_ranks.ranks"].fillna("[]").astype(str) if "byzantine_ranks.ranks" in s else "[]")
    s["variant"] = [_variant(r) for _, r in s.iterrows()]
    config = sorted(c for c in s.columns if "." in c and not c.startswith(("prov.", "byzantine_ranks."))
                    and c not in VARIED)
    s["setting"] = s[config].map(str).agg("|".join, axis=1) + "|ranks=" + s["n_ranks"].astype(str)
    records = [read_records(path) for path in s["file"]]
    for key in ("selected", "wanted", "byzantine", "through", "outvoted", "params", "busiest_sent",
                "busiest_received", "step_s"):
        s[key] = [r[key] for r in records]
    return s


def _variant(row):
    where = "gather" if row["placement"] == "gather" else f"{row['placement']} r={row['replicas']}"
    where = where if row["p"] == 1 else f"parallel.model={row['p']}"
    return where if row["behaviour"] == "none" else f"{where}, {row['behaviour']} {row['liars']}"


def read_records(path):
    """One results file's per-step records (module doc): selections, evidence, traffic, time."""
    with h5py.File(path, "r") as h5:
        steps = h5["metrics/step"].shape[0]
        timed = slice(1, None) if steps > 1 else slice(None)   # step 0 holds the initial broadcast
        get = lambda name: h5[name][()] if name in h5 else None  # noqa: E731
        sent, received = get("comm/bytes_sent"), get("comm/bytes_received")
        return {"selected": h5["selection/selected"][()].reshape(steps, -1)[:, 0],
                "wanted": None if get("byzantine_ranks/wanted") is None else get("byzantine_ranks/wanted")[:, 0],
                "byzantine": h5["selection/byzantine"][()].astype(bool),
                "through": _per_step(get("selection/byzantine_through_ranks"), steps),
                "outvoted": get("replicas/outvoted"),
                "params": get("checkpoint/params").tobytes() if "checkpoint/params" in h5 else None,
                "busiest_sent": np.nan if sent is None else float(np.median(sent[timed].max(axis=1))),
                "busiest_received": np.nan if received is None else float(np.median(received[timed].max(axis=1))),
                "step_s": float(np.median(h5["timing/step_s"][timed]))}


def _per_step(through, steps: int):
    """The workers Byzantine through a rank as (steps, n) bool: recorded per step, or (files written
    before it was) once per run as (n,), the same at every step."""
    if through is None:
        return None
    through = np.asarray(through, dtype=bool)
    return np.broadcast_to(through, (steps, through.shape[-1])) if through.ndim == 1 else through


def _at_selected(per_step, sel):
    """Per step: whether the worker selected at that step is marked in (steps, n) ``per_step``."""
    return per_step[np.arange(len(sel)), sel]


def _reference(s, row, **want):
    """The honest run of ``row``'s setting and seed with the given placement, replicas and p."""
    match = s[(s["setting"] == row["setting"]) & (s["seed"] == row["seed"]) & (s["behaviour"] == "none")]
    for key, value in want.items():
        match = match[match[key] == value]
    return match.iloc[0] if len(match) else None


def _differing(a, b):
    k = min(len(a), len(b))
    return int(np.sum(a[:k] != b[:k])) + abs(len(a) - len(b))


def compared(s):
    """One row per run with a Byzantine rank: its selections against the honest gather run's and the
    honest run's with the same replicas and split, its evidence, its accuracy and theirs."""
    rows = []
    for _, r in s[s["behaviour"] != "none"].iterrows():
        gather = _reference(s, r, placement="gather", p=1)
        same = _reference(s, r, placement=r["placement"], replicas=r["replicas"], p=r["p"])
        sel, steps = r["selected"], len(r["selected"])
        through = r["through"] if r["through"] is not None else np.zeros((steps, len(r["byzantine"])), dtype=bool)
        byz = r["byzantine"][None, :] | through   # per step: declared, or Byzantine through a rank at that step
        row = {"variant": r["variant"], "setting": r["setting"], "seed": r["seed"], "behaviour": r["behaviour"],
               "replicas": r["replicas"], "p": r["p"], "steps": steps, "accuracy": r["final_accuracy"],
               "byzantine_selected": int(_at_selected(byz, sel).sum()),
               "through_selected": None if r["through"] is None else int(_at_selected(
                   through & ~r["byzantine"][None, :], sel).sum()),
               "wanted_selected": None if r["wanted"] is None else int(np.sum(r["wanted"] == sel)),
               "outvoted": _outvoted(r["outvoted"])}
        for name, ref in (("gather", gather), ("same", same)):
            row[f"differ_{name}"] = None if ref is None else _differing(sel, ref["selected"])
            row[f"accuracy_{name}"] = np.nan if ref is None else ref["final_accuracy"]
            row[f"byzantine_{name}"] = None if ref is None else int(ref["byzantine"][ref["selected"]].sum())
        row["same_params"] = None if same is None or r["params"] is None else r["params"] == same["params"]
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values(["variant", "seed"]).reset_index(drop=True) if len(out) else out


def _outvoted(table):
    """'rank 2: 60 steps' for each rank the vote overruled at some step ('none'; None without replicas)."""
    if table is None:
        return None
    ran = table[(table >= 0).all(axis=1)]
    counts = (ran > 0).sum(axis=0)
    return ", ".join(f"rank {q}: {int(c)} of {len(ran)} steps" for q, c in enumerate(counts) if c) or "none"


def cost(s):
    """Per setting and variant: the busiest rank's MB sent and received per step and seconds per step
    (mean over seeds), with the ratios to sharded r = 1 and to the gather of the same setting."""
    t = s.groupby(["setting", "variant"], sort=False).agg(
        d=("prov.n_params", "first"), ranks=("n_ranks", "first"), seeds=("seed", "nunique"),
        busiest_sent=("busiest_sent", "mean"), busiest_received=("busiest_received", "mean"),
        step_s=("step_s", "mean")).reset_index()
    for ref in ("sharded r=1", "gather"):
        base = t[t["variant"] == ref].set_index("setting")
        for col in ("busiest_sent", "step_s"):
            t[f"{col}_vs_{ref}"] = t[col].to_numpy() / base[col].reindex(t["setting"]).to_numpy()
    order = [("," in v, v != "gather", v) for v in t["variant"]]   # gather, the honest, then the lying
    return t.iloc[sorted(range(len(t)), key=lambda i: (t["setting"].iloc[i], order[i]))].reset_index(drop=True)


def _steps(v, steps):
    return "n/a" if missing(v) else f"{int(v)} of {int(steps)}"


def _steps_of(c, column):
    """'k of steps' per row of ``c`` for a count of steps."""
    return [_steps(v, n) for v, n in zip(c[column], c["steps"])]


def _accuracies(c, reference):
    """'0.585 (0.606)': the run's final accuracy and, in brackets, its honest reference's."""
    return [f"{a:.3f} ({'n/a' if missing(h) else f'{h:.3f}'})" for a, h in zip(c["accuracy"], c[reference])]


def section(page, runs, table_dir=None):
    """Write "Byzantine ranks" into ``page.rep`` from ``runs`` (a study's runs table, e.g. the runs of
    review point 3); returns its verdict lines ([] when no run has replicas or a Byzantine rank)."""
    if not len(runs):
        return []
    s = prepared(runs)
    mine = s.loc[(s["replicas"] > 1) | (s["behaviour"] != "none"), "setting"]
    if not len(mine):
        return []
    s = s[s["setting"].isin(set(mine))].reset_index(drop=True)   # the settings that have such runs
    rep, c, t = page.rep, compared(s), cost(s)
    if table_dir is not None:
        for name, frame in (("point3_byzantine_ranks", c), ("point3_byzantine_ranks_timing", t)):
            frame.drop(columns=["setting"], errors="ignore").to_csv(table_dir / f"{name}.csv", index=False)
    rep.h(3, "Byzantine ranks")
    rep.p("A Byzantine *rank* lies in what it sends to other ranks (`[byzantine_ranks]`): `lie-distances` and "
          "`corrupt-block` in the sharded aggregation, `corrupt-activations` inside a model group. The defence in "
          "the sharded aggregation is `aggregator.replicas = r`: every coordinate block on r ranks, receivers take "
          "the bitwise majority. Under model parallelism, Krum counts the lying rank's group as Byzantine workers.")
    answers = _takeover(page, c[(c["replicas"] == 1) & c["behaviour"].isin(SHARDED_BEHAVIOURS)] if len(c) else c)
    answers += _defence(page, c[(c["replicas"] > 1) | (c["behaviour"] == "corrupt-activations")] if len(c) else c)
    answers += _cost(page, t)
    rep.items(answers)
    return answers


def _per_variant(c):
    return c.groupby("variant", sort=False)


def _takeover(page, c):
    rep = page.rep
    rep.h(4, "Without replicas: one lying rank takes over")
    if not len(c):
        page.flag("no run has a lying rank in the sharded aggregation without replicas: the takeover is not shown.")
        return []
    rep.table(pd.DataFrame({
        "variant": c["variant"], "seed": c["seed"],
        "steps selected differently from the honest gather": _steps_of(c, "differ_gather"),
        "steps Krum selected the rank's target": _steps_of(c, "wanted_selected"),
        "steps a Byzantine worker was selected (honest gather)": [
            f"{a} ({b})" for a, b in zip(_steps_of(c, "byzantine_selected"), _steps_of(c, "byzantine_gather"))],
        "final accuracy (honest gather)": _accuracies(c, "accuracy_gather")}))
    answers = []
    for variant, g in _per_variant(c):
        known = g.dropna(subset=["differ_gather"])
        if not len(known):
            page.flag(f"{variant}: no honest gather run of the same setting and seed to compare selections with.")
            continue
        answers.append(f"Takeover, {variant}, no replicas: selections differ from the honest gather's in "
                       f"{int(known['differ_gather'].sum())} of {int(known['steps'].sum())} steps ({len(known)} "
                       f"seeds); final accuracy {known['accuracy'].mean():.3f} against "
                       f"{known['accuracy_gather'].mean():.3f}.")
    return answers


def _defence(page, c):
    rep = page.rep
    rep.h(4, "With replicas (and Krum across model groups): the defence")
    if not len(c):
        page.flag("no run has a lying rank with aggregator.replicas > 1 or under parallel.model > 1: the defence "
                  "is not measured.")
        return []
    rep.table(pd.DataFrame({
        "variant": c["variant"], "seed": c["seed"],
        "steps selected differently from the honest gather": _steps_of(c, "differ_gather"),
        "... from the honest run with the same r and p": _steps_of(c, "differ_same"),
        "final parameters bitwise those of that run": c["same_params"].map(
            lambda v: "n/a" if missing(v) else ("yes" if v else "no")),
        "values overruled by the vote": c["outvoted"].map(lambda v: "n/a" if missing(v) else v),
        "steps a worker Byzantine only through the rank was selected": _steps_of(c, "through_selected"),
        "final accuracy (honest, same r and p)": _accuracies(c, "accuracy_same")}))
    answers = []
    for variant, g in _per_variant(c):
        if g["behaviour"].iloc[0] == "corrupt-activations":
            answers.append(_krum_across_groups(variant, g))
            continue
        known = g.dropna(subset=["differ_gather"])
        if not len(known):
            page.flag(f"{variant}: no honest gather run of the same setting and seed to compare selections with.")
            continue
        text = (f"Defence, {variant}: selections equal to the honest gather's at every step in "
                f"{int((known['differ_gather'] == 0).sum())} of {len(known)} seeds")
        params = g["same_params"].dropna()
        if len(params):
            text += f"; final parameters bitwise those of the honest run in {int(params.sum())} of {len(params)}"
        answers.append(text + f"; final accuracy {g['accuracy'].mean():.3f} against {g['accuracy_same'].mean():.3f}.")
    return answers


def _krum_across_groups(variant, g):
    """Under model parallelism the lying group's gradients differ, so the run follows other parameters
    than the honest one: what Krum must do is keep out the workers only the rank made Byzantine."""
    steps = int(g["steps"].sum())
    return (f"Krum across model groups, {variant}: a worker Byzantine only through the lying rank selected at "
            f"{int(g['through_selected'].fillna(0).sum())} of {steps} steps ({len(g)} seeds); final accuracy "
            f"{g['accuracy'].mean():.3f} against {g['accuracy_same'].mean():.3f} for the honest run with the "
            "same split.")


def _cost(page, t):
    rep = page.rep
    rep.h(4, "The price: bytes and time per step")
    if t["busiest_sent"].isna().all():
        page.flag("the files record no bytes per rank (comm/bytes_sent): the price of replicas is not measured.")
        return []
    rep.p("Megabytes sent and received per step by the busiest rank (payload, the first step left out) and "
          "milliseconds per step (median over a run's steps, mean over seeds); ratios to sharded r = 1 and to "
          "the gather of the same setting.")
    mb = lambda v: "n/a" if missing(v) else f"{v / MB:.3g}"  # noqa: E731
    rep.table(pd.DataFrame({
        "d": t["d"].map(lambda v: "n/a" if missing(v) else f"{int(v):,}"), "ranks": t["ranks"],
        "variant": t["variant"], "seeds": t["seeds"], "busiest rank MB sent": t["busiest_sent"].map(mb),
        "x r=1": t["busiest_sent_vs_sharded r=1"].map(times), "x gather": t["busiest_sent_vs_gather"].map(times),
        "busiest rank MB received": t["busiest_received"].map(mb), "ms/step": t["step_s"].map(ms),
        "time x r=1": t["step_s_vs_sharded r=1"].map(times), "time x gather": t["step_s_vs_gather"].map(times)}))
    answers = []
    for _, r in t[t["variant"].str.startswith("sharded r=") & (t["variant"] != "sharded r=1")].iterrows():
        if "," in r["variant"]:
            continue
        answers.append(f"Price of {r['variant']} at d = {int(r['d']):,} on {int(r['ranks'])} ranks: the busiest "
                       f"rank sends {times(r['busiest_sent_vs_sharded r=1'])} the bytes of r = 1 and "
                       f"{times(r['busiest_sent_vs_gather'])} the gather's; a step takes "
                       f"{times(r['step_s_vs_sharded r=1'])} r = 1's and {times(r['step_s_vs_gather'])} the gather's.")
    if not (pd.to_numeric(t["d"], errors="coerce") >= 1e6).any():
        page.flag("no run of the Byzantine-ranks variants has d >= 1e6: the price of replicas at scale is not "
                  "measured here.")
    return answers
