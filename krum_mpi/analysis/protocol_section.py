"""The protocol section of the review report (docs/protocol.md): how the numbers were made, printed
before the answers. The momentum form; seeds per cell; the tuning stage (its grid, the choice per rule,
the sensitivity figure), read from the study's ``tuning.json``; the convergence check of every
headline cell of point 1 (the clean cells and each rule's worst-case cell), with the accuracy over
steps of the cells that did not converge.
"""
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from . import protocol_figures as pfig
from . import review_tables as rt
from .convergence import cell_converged
from .derived import experiment_keys
from ..study.tuning import at_grid_edge
from .protocol import CONVERGENCE_TOLERANCE, CONVERGENCE_WINDOW, MIN_SEEDS

GROUP_LABELS = {"aggregator.name": "rule", "optimizer.momentum": "momentum", "optimizer.momentum_at": "momentum at",
                "optimizer.momentum_form": "momentum form"}
FORMS = {"ema": "m <- beta m + (1 - beta) g (damped)", "heavy-ball": "m <- beta m + g (heavy ball)"}


def protocol_section(page, study_dir, summary, points):
    rep = page.rep
    rep.h(2, "The protocol: tuning, momentum, seeds, convergence")
    momentum_form(page, summary)
    seeds_per_cell(page, summary)
    tuning(page, study_dir)
    if 1 in points:
        convergence(page, points[1])


def momentum_form(page, summary):
    mom = pd.to_numeric(summary.get("optimizer.momentum", pd.Series(0.0, index=summary.index)), errors="coerce")
    on = summary[mom.fillna(0) > 0]
    if not len(on):
        page.rep.p("**Momentum:** off in every run.")
        return
    form = on.get("optimizer.momentum_form", pd.Series("heavy-ball", index=on.index)).astype(str)
    where = on.get("optimizer.momentum_at", pd.Series("server", index=on.index)).astype(str)
    said = [f"beta = {b:g} at the {a}s, form `{f}`: {FORMS.get(f, f)} ({n} runs)"
            for (b, a, f), n in pd.DataFrame({"b": mom[on.index], "a": where, "f": form}).value_counts().sort_index().items()]
    page.rep.p("**Momentum:** " + "; ".join(said) + f"; off in {len(summary) - len(on)} runs.")


def seeds_per_cell(page, summary):
    """Seeds per experiment: the runs that differ only in their seed (every other varying key equal)."""
    cell = [c for c in experiment_keys(summary) if c in summary]
    seeds = summary.groupby(cell, dropna=False)["seed"].nunique() if cell else summary["seed"].agg(["nunique"])
    if not len(seeds):
        return
    low, high = int(seeds.min()), int(seeds.max())
    page.rep.p(f"**Seeds:** {low if low == high else f'{low} to {high}'} per cell ({len(seeds)} "
               f"cell{'s' if len(seeds) != 1 else ''}, a cell being the runs that differ only in their seed; the "
               "same seeds for every rule, so differences are paired by seed).")
    if low < MIN_SEEDS:
        page.flag(f"{int((seeds < MIN_SEEDS).sum())} of {len(seeds)} cells have fewer than {MIN_SEEDS} seeds "
                  "(the protocol's minimum): their intervals are wide.")


def tuning(page, study_dir):
    rep = page.rep
    record = read_tuning(study_dir)
    rep.h(3, "Tuning")
    if not record:
        page.flag("no tuning stage recorded (no tuning.json in the study folder): every rule ran with the "
                  "base config's hyperparameters, not tuned per rule.")
        return
    for part, entry in record.items():
        rep.p(f"Tuning part `{part}`: {entry['runs']} runs without attack, scored on the validation split. "
              f"Choice per {', '.join(f'`{k}`' for k in entry['by'])}: the {entry['criterion']}.")
        rep.table(pd.DataFrame([{"key": key, "rules": rule if rule != "*" else "every rule",
                                 "grid": ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)}
                                for key, by_rule in entry["grid"].items() for rule, values in by_rule.items()]))
        rep.table(pd.DataFrame([{**{GROUP_LABELS.get(k, k): v for k, v in c["group"].items()},
                                 "chosen": ", ".join(f"{k} = {v}" for k, v in c["chosen"].items()),
                                 "validation accuracy": f"{100 * c['score']:.1f}%",
                                 "seeds": len(next(iter(c["sensitivity"]))["by_seed"])}
                                for c in entry["choices"]]))
        rep.items(never_clips(entry))
        for line in at_grid_edge(entry):
            page.flag(f"tuning part `{part}`: {line}: the best value may lie beyond the grid, so this group "
                      "is not shown tuned (widen the grid).")
        page.draw(pfig.sensitivity(part, entry), "tuning_sensitivity" if len(record) == 1 else f"tuning_{part}",
                  "Sensitivity: mean final validation accuracy against the learning rate per rule, without attack "
                  "(star: the chosen point)")


def read_tuning(study_dir) -> dict:
    """The tuning record of the study folder (``tuning.json``, written by ``krum-mpi study run``)."""
    from ..study.tuning import read_record

    path = Path(study_dir)
    return read_record(path if path.is_dir() else path.parent)


def never_clips(entry) -> list:
    """For centered clipping: do its clean runs at the chosen point equal averaging's at the same lr?"""
    lines = []
    for choice in entry["choices"]:
        if choice["group"].get("aggregator.name") != "centered-clipping":
            continue
        rest = {k: v for k, v in choice["group"].items() if k != "aggregator.name"}
        where = "centered clipping" + (f" ({_words(rest)})" if rest else "")
        avg = next((c for c in entry["choices"] if c["group"] == {**rest, "aggregator.name": "average"}), None)
        lr = choice["chosen"].get("optimizer.lr")
        mine = next(e["by_seed"] for e in choice["sensitivity"] if e["point"] == choice["chosen"])
        theirs = next((e["by_seed"] for e in (avg or {}).get("sensitivity", [])
                       if e["point"].get("optimizer.lr") == lr), None)
        tau = choice["chosen"].get("aggregator.tau")
        if theirs is None:
            lines.append(f"{where}: no averaging run at lr {lr} to compare with.")
        elif mine == theirs:
            lines.append(f"{where}: at the chosen tau = {tau} its validation accuracy "
                         "equals averaging's at the same lr on every seed: this tau does not clip here (or too "
                         "rarely to change an accuracy), so its clean runs are in effect averaging's.")
        else:
            lines.append(f"{where}: at the chosen tau = {tau} it differs from "
                         "averaging at the same lr (it clips).")
    return lines


def _words(group: dict) -> str:
    return ", ".join(f"{GROUP_LABELS.get(k, k)} {v}" for k, v in group.items())


def convergence(page, runs):
    """Point 1's headline cells: each rule's clean cells and its worst-case cell per fraction."""
    rep = page.rep
    runs = rt.point1_frame(runs)
    res = rt.point1_resilience(runs)
    keep = runs["threat"] == "none"
    for r in res.itertuples():
        keep |= ((runs["rule"] == r.rule) & (runs["momentum"] == r.momentum) & (runs["k"] == r.k)
                 & (runs["threat"] == r.worst_attack))
    rows, drawn = [], []
    for (rule, mom, k, threat), g in runs[keep].groupby(["rule", "momentum", "k", "threat"], sort=True):
        curves = []
        for run in g.itertuples():
            steps, acc, metric = read_curve(run.file)
            curves.append((int(run.seed), steps, acc))
        curves.sort(key=lambda c: c[0])   # one colour per seed in every panel of the figure
        total = int(g["steps"].max()) if "steps" in g else max(int(s.max()) + 1 for _, s, _ in curves)
        check = cell_converged([(s, a) for _, s, a in curves], total, CONVERGENCE_WINDOW, CONVERGENCE_TOLERANCE)
        rows.append({"rule": rule, "momentum": mom, "k": int(k), "threat": threat, "accuracy": metric,
                     "seeds": len(curves), "trend over the window (points)": 100 * check.change,
                     "converged": "yes" if check.converged else "**no**",
                     "why not": "" if check.converged else check.reason})
        if not check.converged:
            drawn.append((f"{rule}, {mom}, k = {k}, {threat}", check.window, curves))
    table = pd.DataFrame(rows)
    rep.h(3, "Convergence")
    rep.p(f"A cell has converged when its accuracy (validation where recorded, else test), averaged over its seeds, "
          f"rises or falls by less than {100 * CONVERGENCE_TOLERANCE:g} points over the last {CONVERGENCE_WINDOW:.0%} "
          "of the steps (the least-squares line through the evaluations in that window: the trend, not the "
          "evaluation noise of single runs). Headline cells: each rule's cells without attack and its worst-case "
          "cell at each fraction.")
    rep.table(table.assign(**{"trend over the window (points)": table["trend over the window (points)"].map(
        lambda v: "-" if not np.isfinite(v) else f"{v:+.2f}")}))
    if len(drawn):
        page.flag(f"{len(drawn)} of {len(table)} headline cells did not converge ("
                  + "; ".join(t for t, _, _ in drawn[:12]) + ("; ..." if len(drawn) > 12 else "")
                  + "): their accuracy still moves over the last steps, or was evaluated too rarely there to tell "
                  "(see *why not*); their final accuracies are not the converged ones.")
        page.draw(pfig.cell_curves(drawn), "not_converged", "Accuracy over steps of the headline cells that did "
                  "not converge, one line per seed (shaded: the last 20% of the steps)")
    avg = table[(table["rule"] == rt.BASELINE) & (table["threat"] == "none")] if len(table) else table
    if len(avg) and (avg["converged"] != "yes").any():
        page.flag("averaging's own clean runs did not converge: the run length is too short for the protocol.")


def read_curve(path):
    """(steps, accuracy, which accuracy) of one results file: validation where recorded, else test."""
    with h5py.File(path, "r") as f:
        steps = f["metrics/step"][()]
        if "metrics/validation_accuracy" in f:
            return steps, f["metrics/validation_accuracy"][()], "validation"
        return steps, f["metrics/test_accuracy"][()], "test"
