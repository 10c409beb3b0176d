"""The review report: one section per review point, each from its own part of the study.

A study such as ``studies/review.toml`` holds several grids (parts); each run records its part as
``run.name`` (``point1-clean``, ``point1-attack``, ``point2-samples``, ..., ``point3-placement``).
``krum-mpi report`` sees those names and writes this report instead of the generic one:

1. the cost without attack and the payoff under attack by Byzantine fraction, per rule and worker
   momentum, with the cost-of-resilience figure (accuracy without attack against worst-case accuracy);
2. how cost and payoff change with training samples, model size and minibatch size;
3. exact Krum on sharded gradients and the per-shard baseline against the gather (selections,
   accuracy, step time), followed by the generic time and scaling section on those runs.

Each point ends with plain-language verdicts that say where the seeds cannot decide. The accuracy
tables (``tables/point*.csv``) hold no timing; timings are in ``tables/*_timing.csv``.
"""
import pandas as pd

from . import byzantine_ranks_section
from . import point2_cells
from . import review_figures as rfig
from . import review_tables as rt
from .answers import settings_table
from .load import read_partition
from .markup import pct, pp_iv, show
from .protocol import MIN_ATTACKS, NUMERIC_ATTACKS
from .protocol_section import protocol_section
from .sections import short_answers

FRACTION = ("fraction", lambda f: f"{100 * f:.3g}%")
REVIEW_FRACTIONS = (0.01, 0.025, 0.05, 0.10, 0.20, 0.33)   # the fractions the review asks about
LARGE_MODEL, LARGE_DATA = 1e6, 1e7


def _save(tables, folder):
    if folder is None:
        return
    for name, frame in tables.items():
        if frame is not None and len(frame):
            frame.to_csv(folder / f"{name}.csv", index=False)


def _iv_col(frame, name):
    """A paired difference column as text: estimate and interval in points."""
    return [pp_iv(m, lo, hi) for m, lo, hi in zip(frame[name], frame[f"{name}_low"], frame[f"{name}_high"])]


def _iv(row, name):
    return pp_iv(getattr(row, name), getattr(row, f"{name}_low"), getattr(row, f"{name}_high"))


STATS_NOTE = ("Accuracies: mean with its 95% t interval over seeds, clipped to [0, 100]; a cell whose seeds "
              "split (a gap of 10 points or more) is shown as median with min and max and every seed listed. "
              "Differences against averaging are paired by seed (the same seed gives both rules the same data "
              "order, Byzantine workers and initial parameters): mean of the per-seed differences with its 95% "
              "paired t interval; a verdict (better / worse) stands only where the Holm-corrected test over the "
              "table's family of comparisons rejects \"no difference\" at 5%.")


def parts_table(summary):
    """What the study holds: each part, its runs, and the keys that vary inside it."""
    rows = []
    for name, g in summary.groupby("run.name", sort=True):
        varying = []
        for col in ("aggregator.name", "attack.name", "workers.byzantine", "aggregator.f", "optimizer.momentum",
                    "data.n_train", "model.hidden", "workers.batch_size", "aggregator.placement", "n_ranks",
                    "run.seed"):
            if col in g and g[col].astype(str).nunique() > 1:
                varying.append(f"{col} ({g[col].astype(str).nunique()})")
        rows.append({"part": name, "runs": len(g), "data": ", ".join(sorted(g["data.name"].astype(str).unique())),
                     "workers": ", ".join(str(v) for v in sorted(g["n_workers"].unique())),
                     "steps": ", ".join(str(v) for v in sorted(g["steps"].unique())),
                     "what varies (values)": ", ".join(varying)})
    return rows


def point_1(page, runs, table_dir):
    """Cost and payoff by Byzantine fraction; returns the verdicts."""
    rep = page.rep
    rep.h(2, "1. The cost without attack and the payoff under attack, by Byzantine fraction")
    runs = rt.point1_frame(runs)
    acc, res = rt.point1_accuracy(runs), rt.point1_resilience(runs)
    _save({"point1_accuracy": acc, "point1_resilience": res,
           "point1_timing": rt.timing(runs, ["rule", "momentum", "k", "threat"])}, table_dir)
    n = int(runs["n_workers"].iloc[0])
    rep.p(f"{len(runs)} runs, n = {n} workers. *Without attack* the rule is told f = k and every worker is "
          "honest; *under attack* k workers are Byzantine. Cost = accuracy without attack minus averaging's "
          "without attack; payoff = worst-case accuracy over the attacks minus averaging's worst case at the "
          "same fraction. " + STATS_NOTE)
    if not len(res):
        page.flag("point 1 has no run with Byzantine workers or a declared f > 0: cost and payoff by fraction "
                  "are not measured.")
        return []
    if not (res["attacks"] > 0).any() or not res["clean"].notna().any():
        page.flag("point 1 lacks either its runs without attack or its runs under attack: the cost-of-resilience "
                  "figure needs both.")
    have = sorted(res["fraction"].unique())
    missing = [f for f in REVIEW_FRACTIONS if not any(abs(f - h) <= 0.1 * f for h in have)]   # 13/40 is 33%
    if missing:
        page.flag(f"Byzantine fractions {', '.join(pct(f, 1) for f in missing)} of the review are not run here "
                  f"(n = {n}: fractions run are {', '.join(pct(f, 1) for f in have)}).")
    if (res["worst_seeds"] > 0).any():
        rep.p("The worst case is the crafted attack with the lowest mean accuracy; taking the minimum over attacks "
              "biases it down a little, and its interval is that attack's over seeds. Numeric attacks "
              f"({', '.join(NUMERIC_ATTACKS)}: they overflow the arithmetic rather than mislead the learning) are "
              "never the worst case: their accuracy is the column *numeric attack*.")
    few = res[(res["attacks"] > 0) & (res["attacks"] < MIN_ATTACKS)]
    if len(few):
        page.flag(f"{len(few)} of {len(res)} cells of point 1 take their worst case over fewer than {MIN_ATTACKS} "
                  f"crafted attacks (the protocol's minimum; here {int(res['attacks'].min())} to "
                  f"{int(res['attacks'].max())}): a stronger attack may be missing.")
    page.draw(rfig.cost_of_resilience(res), "cost_of_resilience",
              "Cost of resilience: accuracy without attack (x) against worst-case accuracy over the attacks (y), "
              "per rule, one panel per Byzantine fraction")
    page.draw(rfig.worst_vs_fraction(res), "point1_worst_vs_fraction",
              "Worst-case accuracy over the attacks against the Byzantine fraction, per rule")
    rep.p(f"Family of point 1's verdicts: {int(res['family'].iloc[0])} paired comparisons (cost and payoff of "
          "each robust rule against averaging, per momentum setting and fraction, with at least one seed on both "
          "sides), Holm-corrected together.")
    shown = res.assign(cost_s=_iv_col(res, "cost"), pay_s=_iv_col(res, "payoff"),
                       numeric_s=[f"{a}: {pct(m)}" if a else "-" for a, m in
                                  zip(res["numeric_worst_attack"], res["numeric_worst"])])
    rep.table(show(shown,
                   {"rule": ("rule", None), "momentum": ("momentum", None), "fraction": FRACTION,
                    "clean_text": ("no attack", None), "worst_text": ("worst case", None),
                    "worst_attack": ("worst attack", None), "numeric_s": ("numeric attack", None),
                    "cost_s": ("cost vs averaging", None),
                    "cost_verdict": ("cost verdict", None), "pay_s": ("payoff vs averaging", None),
                    "payoff_verdict": ("payoff verdict", None)}))
    rep.p("Final accuracy under each attack (columns), rule told f = k; `none`: no Byzantine worker:")
    wide = acc.assign(cell=acc["accuracy_text"]).pivot_table(
        index=["rule", "momentum", "fraction"], columns="threat", values="cell", aggfunc="first").reset_index()
    wide["fraction"] = wide["fraction"].map(FRACTION[1])
    rep.table(wide.fillna("-"))
    return point_1_verdicts(res)


def point_1_verdicts(res):
    """One line per robust rule and momentum setting: its cost and payoff at each fraction, in words."""
    lines = []
    robust = res[res["rule"] != rt.BASELINE]
    groups = sorted(robust.groupby(["momentum", "rule"], sort=True), key=lambda item: item[0][0] != "off")
    for (mom, rule), g in groups:
        tag = "no momentum" if mom == "off" else f"momentum {mom}"
        cost = "; ".join(f"{pct(r.fraction, 1)}: {_iv(r, 'cost')} {_word(r.cost_verdict, 'loss', 'gain')}"
                         for r in g.itertuples())
        pays = [r for r in g.itertuples() if r.payoff_verdict.startswith("better")]
        unsure = [r for r in g.itertuples() if r.payoff_verdict.startswith("cannot")]
        worse = [r for r in g.itertuples() if r.payoff_verdict.startswith("worse")]
        pay = (("beats averaging's worst case at " + ", ".join(f"{pct(r.fraction, 1)} ({_iv(r, 'payoff')}, "
                                                               f"worst: {r.worst_attack})" for r in pays))
               if pays else "never beats averaging's worst case")
        if worse:
            pay += "; is worse than it at " + ", ".join(pct(r.fraction, 1) for r in worse)
        if unsure:
            pay += "; the seeds cannot decide at " + ", ".join(pct(r.fraction, 1) for r in unsure)
        if not g["payoff"].notna().any():
            pay = "is not measured (no runs under attack next to averaging's)"
        lines.append(f"**{rule}** ({tag}). Cost without attack, against averaging: {cost}. Under attack it {pay}.")
    return lines


def _word(verdict, low, high):
    if verdict.startswith("worse"):
        return f"({low})"
    if verdict.startswith("better"):
        return f"({high})"
    return "(cannot decide)" if verdict.startswith("cannot") else f"({verdict})"


def _names(rules):
    return ", ".join(rules) if rules else "none"


def point_2(page, runs, table_dir):
    rep = page.rep
    rep.h(2, "2. How cost and payoff change with training samples, model size and minibatch size")
    runs = rt.threat_frame(runs)
    panels, verdicts, tables = [], [], {}
    for part, axis, title in rt.POINT2_AXES:
        sub = runs[runs["run.name"] == part]
        if not len(sub):
            page.flag(f"no runs of part {part}: how the cost changes with {title} is not measured.")
            continue
        acc, eff = rt.axis_accuracy(sub, axis), rt.axis_effects(sub, axis)
        short = part.split("-", 1)[1]
        tables.update({f"point2_{short}_accuracy": acc, f"point2_{short}_effects": eff,
                       f"point2_{short}_timing": rt.timing(sub, [axis, "rule", "threat"])})
        panels.append((title, acc))
        rep.h(3, f"By {title} (`{axis}`)")
        rep.p(f"{len(sub)} runs: {sub['data.name'].iloc[0]} data, n = {int(sub['n_workers'].iloc[0])} workers, "
              f"{int(sub['steps'].iloc[0])} steps. Final accuracy (mean [95% interval inside 0-100] over seeds, or median (min, max; seeds) for a split cell):")
        wide = acc.assign(cell=acc["accuracy_text"]).pivot_table(
            index="value", columns=["rule", "threat"], values="cell", aggfunc="first")
        wide.columns = [f"{r}, {t}" for r, t in wide.columns]
        rep.table(wide.reset_index().rename(columns={"value": title}))
        rep.p("Cost (no attack) and payoff (under attack) of each robust rule against averaging, paired by "
              f"seed [95% paired t]; Holm over this table's family of {int(eff['family'].max()) if len(eff) else 0} "
              "comparisons:")
        rep.table(show(eff.assign(cost_s=_iv_col(eff, "cost"), pay_s=_iv_col(eff, "payoff")),
                       {"value": (title, None), "rule": ("rule", None), "cost_s": ("cost", None),
                        "cost_verdict": ("cost verdict", None), "pay_s": ("payoff", None),
                        "payoff_verdict": ("payoff verdict", None)}))
        if not len(eff):
            page.flag(f"by {title}: no robust rule next to averaging in the same cells, so no cost or payoff.")
        verdicts += _trend(eff, title)
        largest = float(sub[axis].astype(float).max())
        if axis == "data.n_train":
            seen = int(sub["steps"].max() * sub["n_workers"].max() * sub["workers.batch_size"].max())
            rep.p(f"The runs draw {seen} samples in all ({int(sub['steps'].max())} steps x n x minibatch): with "
                  f"{largest:.0e} training samples most are never drawn, so a fixed step budget cannot show an "
                  "effect of the set's size beyond that; epochs over the large sets are the cluster version's.")
    _save(tables, table_dir)
    _point_2_flags(page, runs)
    point2_cells.section(page, runs[runs["run.name"].astype(str).str.startswith("point2-")], table_dir)
    if panels:
        page.draw(rfig.scale_axes(panels), "point2_scale",
                  "Final accuracy against training samples, model size and minibatch size (solid: no attack)")
    return verdicts


def _at(row, col, with_value):
    """``20`` or ``20 (-2.5 pp [-3.7, -1.4])``: an axis value, with the difference when it is decided."""
    text = f"{float(row.value):g}"
    return text + (f" ({_iv(row, col)})" if with_value else "")


def _point_2_flags(page, runs):
    """What point 2's runs leave out: large models, large data, real sets, the PyTorch zoo."""
    d = runs["prov.n_params"].astype(float).max() if "prov.n_params" in runs else float("nan")
    if not d >= LARGE_MODEL:
        page.flag(f"the largest model has d = {d:.3g} parameters: nothing near 1e6.")
    if not runs["data.name"].isin(["hdf5", "mnist"]).any():
        page.flag("no real large data set in point 2 (only synthetic rows and spambase): the real sets "
                  "(covtype, SUSY, HIGGS) are the cluster version's.")
    if not (~runs["model.name"].isin(["mlp", "logistic", "softmax"])).any():
        page.flag("no PyTorch zoo model in point 2 (lenet5, resnet20): the cluster version's point2-zoo.")
    # samples drawn against the sets' sizes: the cell table (point2_cells.flags)

def _trend(eff, title):
    """One verdict per robust rule: where its cost and payoff are decided, which way, and by how much."""
    lines = []
    for rule, g in eff.groupby("rule", sort=True):
        clauses = []
        for col, when in (("cost", "Without attack"), ("payoff", "Under attack")):
            said = []
            for word, text in (("worse", "worse than averaging"), ("better", "better than averaging"),
                               ("cannot", "the seeds cannot decide")):
                rows = [r for r in g.itertuples() if getattr(r, f"{col}_verdict").startswith(word)]
                if rows:
                    said.append(f"{text} at " + ", ".join(_at(r, col, word != "cannot") for r in rows))
            clauses.append(f"{when}, " + "; ".join(said or ["no comparison"]))
        lines.append(f"**{rule}** by {title}. " + ". ".join(clauses) + ".")
    return lines


def point_3(page, runs, table_dir):
    rep = page.rep
    rep.h(2, "3. Exact Krum on sharded gradients, the per-shard baseline, and the gather")
    runs = rt.threat_frame(runs)
    if "parallel.model" in runs:   # a model-parallel run is its own placement in these tables
        model = pd.to_numeric(runs["parallel.model"], errors="coerce").fillna(1).astype(int)
        runs["aggregator.placement"] = [pl if p == 1 else f"{pl}, parallel.model={p}"
                                        for pl, p in zip(runs["aggregator.placement"], model)]
    acc = rt.placement_accuracy(runs)
    sel = read_partition(list(zip(runs["file"], runs["run"])), "selections", ["run", "step", "top"])
    by_run = {run: tuple(g.sort_values("step")["top"]) for run, g in sel.groupby("run")}
    agree = rt.selection_agreement(runs, by_run)
    timing = rt.timing(runs.rename(columns={"aggregator.placement": "placement", "n_ranks": "ranks", "run.name": "part"}),
                       ["part", "rule", "threat", "ranks", "placement"])
    _save({"point3_accuracy": acc, "point3_selections": agree, "point3_timing": timing}, table_dir)
    rep.p(f"{len(runs)} runs. Final accuracy per placement (mean [95% interval] over seeds) and the share of "
          "steps in which a Byzantine worker was selected:")
    rep.table(show(acc.assign(a=acc["accuracy_text"]),
                   {"part": ("part", None), "rule": ("rule", None), "threat": ("threat", None),
                    "ranks": ("ranks", None), "placement": ("placement", None), "n_seeds": ("seeds", None),
                    "a": ("final accuracy", None),
                    "byz_selected": ("Byzantine selected", pct)}))
    rep.p("Selections against the gather run of the same part, rule, threat, seed and ranks (share of steps with the "
          "same first choice; largest accuracy difference over seeds):")
    rep.table(show(agree, {"part": ("part", None), "rule": ("rule", None), "threat": ("threat", None),
                           "ranks": ("ranks", None),
                           "placement": ("placement", None), "seeds": ("seeds", None),
                           "steps_same": ("steps same, mean", pct), "steps_same_min": ("steps same, min", pct),
                           "accuracy_diff_max": ("max |accuracy difference|", pct)}))
    rep.p("Milliseconds per step on this machine (timings vary between reruns; not part of the reproduced tables):")
    rep.table(show(timing, {"part": ("part", None), "rule": ("rule", None), "threat": ("threat", None),
                            "ranks": ("ranks", None),
                            "placement": ("placement", None), "step_ms": ("ms/step", lambda v: f"{v:.3g}"),
                            "aggregate_ms": ("aggregate ms", lambda v: f"{v:.3g}")}))
    page.draw(rfig.placements(acc, timing), "point3_placements",
              "Final accuracy and time per step of exact sharded Krum, per-shard Krum and the gather, by ranks")
    verdicts = []
    if not len(agree):
        page.flag("point 3 has no sharded or per-shard run with a gather run of the same rule, threat, seed and "
                  "ranks: whether the selections are identical is not measured.")
    for place, g in agree.groupby("placement", sort=True):
        same = g["steps_same"].min()
        verdicts.append(f"{place} against gather: {pct(same)} of steps with the same selection at worst "
                        f"({'identical' if same == 1.0 else 'not identical'}), accuracy differs by at most "
                        f"{pct(g['accuracy_diff_max'].max())}.")
    return verdicts + byzantine_ranks_section.section(page, runs, table_dir)   # Byzantine ranks, replicas


def review_sections(page, study, points, table_dir, generic_point_3):
    """Write the review report's sections into ``page.rep``; returns {point: verdict lines}."""
    rep, summary = page.rep, page.summary
    rep.h(2, "The study")
    rep.table(settings_table(summary))
    rep.p("The study's parts (a run's part is its `run.name`):")
    rep.table(pd.DataFrame(parts_table(summary)))
    protocol_section(page, study.source, summary, points)
    answers = {}
    writers = {1: point_1, 2: point_2, 3: point_3}
    for point, writer in writers.items():
        if point in points:
            answers[point] = writer(page, points[point], table_dir)
        else:
            page.flag(f"no runs of review point {point} (run.name {rt.POINTS[point]}-...) in this study.")
    if 3 in points:
        answers.setdefault(3, [])
        answers[3] += generic_point_3(points[3])
    return answers


VERDICT_TITLES = {1: "(1) Cost without attack and payoff under attack, by Byzantine fraction",
                  2: "(2) With training samples, model size and minibatch size",
                  3: "(3) Exact Krum on sharded gradients against the gather and the per-shard baseline"}


def short_verdicts(head, answers, cannot):
    short_answers(head, answers, cannot, heading="Verdicts", titles=VERDICT_TITLES,
                  note=" \"Cannot decide\" means the paired difference is not significant at 5% after Holm's "
                       "correction over its family of comparisons: more seeds, or larger effects, are needed.")


def closing(page, study, write_tables, skipped):
    rep = page.rep
    rep.h(2, "What this data cannot support")
    rep.items(page.cannot or ["Nothing flagged by the checks above; the intervals only cover seed-to-seed noise."])
    skipped(rep, study)
    rep.p(("Tables as CSV in `tables/` (every run: `runs.csv`; timings only in `*_timing.csv` and `runs.csv`). "
           if write_tables else "") + "Figures as PNG" + (" and SVG" if "svg" in page.figure_formats else "")
          + " in `figures/`.")
