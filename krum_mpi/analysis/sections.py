"""The sections of ``krum-mpi report``, one function each, in the order of the page.

Every section writes to ``page.rep`` and may ``page.flag`` what the data cannot answer; the three
that answer the review return its short answers. ``Page`` holds what they share: the run summary,
the experiment keys, the tables, and where figures go.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..bench import schema as benchfile
from ..errors import KrumMPIError
from . import figures, sharded_section, tables
from .answers import (HEADERS, answer_cost, by_setting, key_columns, pivot, settings_table, train_rows,
                      varying)
from .derived import experiment_keys
from .markup import Report, missing, ms, pct, pct_ci, pp_ci, show, times

SAMPLE_KEYS = ("data.name", "data.n_train", "data.max_train", "data.path", "workers.batch_size")
MODEL_KEYS = ("model.name", "model.hidden", "data.n_features")
PAPER_ROUNDS = 500
LARGE_MODEL = 1e6   # parameters: below this, "model size" conclusions are about small models
LARGE_DATA = 1e5    # training samples: below this, "data size" conclusions are about small data
REVIEW_FRACTIONS = (0.01, 0.33)
NOT_MAIN = ("rule", "byz_fraction", "attack_label", "aggregator.f")


@dataclass
class Page:
    """What the sections share while one report is written."""

    fig_dir: Path
    figure_formats: tuple
    rep: Report = field(default_factory=Report)
    cannot: list = field(default_factory=list)
    summary: pd.DataFrame = None
    keys: list = None
    t: dict = field(default_factory=dict)   # the tables: acc, cost, phases, scale, selection, curves
    modal: dict = field(default_factory=dict)

    def flag(self, text):
        """A question the data cannot answer: said where it arises and in the closing list."""
        self.cannot.append(text)
        self.rep.p(f"*Cannot be answered from this data:* {text}")

    def draw(self, fig, name, caption):
        paths = figures.save(fig, self.fig_dir, name, formats=self.figure_formats)
        png = next((p for p in paths if p.suffix == ".png"), None)
        if png is not None:
            self.rep.figure(png, caption)

    @property
    def kc(self):
        return key_columns(self.keys)


def compute_tables(page, study):
    """Fill ``page`` with the study's run summary, experiment keys and tables."""
    summary = page.summary
    keys = page.keys = experiment_keys(summary)
    page.t = {"acc": tables.accuracy_table(summary, keys), "cost": tables.resilience_cost(summary, keys),
              "phases": tables.phase_times(summary, keys), "scale": tables.scaling_table(summary, keys),
              "selection": tables.byzantine_selection(summary, keys),
              "curves": tables.accuracy_curves(study, summary, keys)}
    page.modal = figures.modal_values(summary, keys)


def the_study(page):
    rep, summary, modal = page.rep, page.summary, page.modal
    rep.h(2, "The study")
    rep.table(settings_table(summary))
    main_setting = {k: v for k, v in modal.items() if k not in NOT_MAIN}
    if main_setting:
        rep.p("Experiments differ in: " + ", ".join(f"`{k}`" for k in page.keys) + ". Labels leave out the main "
              "setting (" + ", ".join(f"{k}={v}" for k, v in main_setting.items()) + ").")
    seeds = page.t["acc"]["n_seeds"]
    if seeds.max() < 2:
        page.flag("every experiment has a single seed: no confidence intervals, so no difference below the "
                  "run-to-run noise can be claimed.")
    elif seeds.min() < 2:
        rep.p(f"{int((seeds < 2).sum())} experiments have a single seed (no interval).")
    if summary["steps"].max() < PAPER_ROUNDS:
        page.flag(f"runs are at most {int(summary['steps'].max())} steps, fewer than the paper's {PAPER_ROUNDS} "
                  "rounds: final accuracies are early-training values, not converged ones.")


def cost_table(cost):
    """The cost-of-resilience table with its gaps written out (pp and interval)."""
    return cost.assign(gap=[pp_ci(g, c) for g, c in zip(cost["acc_gap"], cost["acc_gap_ci"])],
                       gain=[pp_ci(g, c) for g, c in zip(cost["vs_average"], cost["vs_average_ci"])])


def point_1_cost(page):
    """The cost without attack, and what robustness buys under attack; returns the short answers."""
    rep, summary, keys, modal, t = page.rep, page.summary, page.keys, page.modal, page.t
    rep.h(2, "1. The cost without attack, and what robustness buys at 1-33% Byzantine")
    has_base = (summary["aggregator.name"] == tables.BASELINE_RULE) & (summary["n_byzantine"] == 0)
    if not has_base.any():
        page.flag("no averaging run without attack: the cost of resilience (accuracy gap, time overhead) has no "
                  "baseline.")
    if not (summary["aggregator.name"] != tables.BASELINE_RULE).any():
        page.flag("no robust rule was run: there is nothing to compare with averaging.")
    answers, details = answer_cost(t["cost"], keys, modal)
    rep.items(answers + details)
    fractions = sorted(f for f in summary["byz_fraction"].unique() if f > 0)
    if not fractions:
        page.flag("no run has Byzantine workers: what robustness buys under attack is not measured.")
    elif min(fractions) > 0.05:
        page.flag(f"the smallest Byzantine fraction is {pct(min(fractions))}: small fractions (1-5%) are not covered.")
    if fractions and max(fractions) < REVIEW_FRACTIONS[1] - 0.04:
        page.flag(f"the largest Byzantine fraction is {pct(max(fractions))}: the review's 33% is not covered.")
    rep.p("Accuracy gap to averaging without attack in the same setting (pp = percentage points, "
          "[95% Welch interval over seeds]) and time per step relative to it:")
    rep.table(show(cost_table(t["cost"]), {
        **page.kc, "n_seeds": ("seeds", None), "final_mean": ("final accuracy", pct),
        "baseline_final": ("averaging, no attack", pct), "gap": ("gap", None),
        "gain": ("vs averaging, same attack", None), "time_ratio": ("time/step vs averaging", times)}))
    acc = t["acc"]
    rep.p("Final and best test accuracy, mean ± 95% t-interval half-width over seeds:")
    acc_show = acc.assign(final=[pct_ci(m, c) for m, c in zip(acc["final_mean"], acc["final_ci"])],
                          best=[pct_ci(m, c) for m, c in zip(acc["best_mean"], acc["best_ci"])])
    rep.table(show(acc_show, {**page.kc, "n_seeds": ("seeds", None), "final": ("final", None),
                              "best": ("best", None)}))
    page.draw(figures.accuracy_over_steps(t["curves"], keys, modal=modal), "accuracy_over_steps",
              "Test error over rounds per rule and Byzantine fraction, main setting (cf. Krum paper, Figure 4)")
    if fractions:
        page.draw(figures.accuracy_vs_fraction(acc, keys, modal=modal), "accuracy_vs_fraction",
                  "Final test accuracy against the Byzantine fraction, per rule, main setting")
    if len(t["selection"]):
        rep.p("How often a Byzantine worker got in: share of steps where one was among the selected "
              "workers (averaging takes everyone), and where it was the rule's first choice:")
        rep.table(show(t["selection"], {**page.kc, "n_seeds": ("seeds", None),
                                        "byz_selected": ("steps with a Byzantine selected", pct),
                                        "top_byzantine": ("Byzantine first choice", pct),
                                        "byz_weight": ("Byzantine weight share", pct)}))
    return answers


def point_2_scale(page):
    """How the cost changes with the number of samples and the model size; returns the short answers."""
    rep, summary, keys = page.rep, page.summary, page.keys
    rep.h(2, "2. How this changes with the number of samples and the model size")
    answers = []
    for label, candidates in (("samples", SAMPLE_KEYS), ("model size", MODEL_KEYS)):
        swept = [k for k in varying(summary, candidates) if k in keys]
        if not swept:
            present = {k: summary[k].iloc[0] for k in candidates if k in summary and str(summary[k].iloc[0]) != ""}
            page.flag(f"one {label} setting only ({', '.join(f'{k}={v}' for k, v in present.items())}): how the "
                      f"cost changes with {label} is not measured.")
            answers.append(f"{label}: not measured (one setting).")
            continue
        for key in swept:
            rep.p(f"Accuracy gap to averaging without attack (pp) by {HEADERS.get(key, key)} (`{key}`):")
            rep.table(pivot(cost_table(page.t["cost"]), keys, key, "gap", str))
            answers += by_setting(page.t["cost"], keys, key, page.modal)
        if label == "model size" and "prov.n_params" in summary and "model.hidden" in summary:
            rep.p("Parameters per model: " + ", ".join(
                f"{h} -> d = {d}" for h, d in summary.groupby("model.hidden")["prov.n_params"].first().items()) + ".")
    # The review's point is scale itself: say how small the largest setting here is.
    d_max = pd.to_numeric(summary["prov.n_params"], errors="coerce").max() if "prov.n_params" in summary else np.nan
    if not missing(d_max) and d_max < LARGE_MODEL:
        page.flag(f"the largest model has d = {int(d_max)} parameters: what is said here about model size holds "
                  f"for small models only (nothing near {LARGE_MODEL:.0e}).")
    rows_max = train_rows(summary)
    if not missing(rows_max) and rows_max < LARGE_DATA:
        page.flag(f"the largest training set has about {int(rows_max)} samples: what is said here about data size "
                  f"holds for small data only (nothing near {LARGE_DATA:.0e}).")
    return answers


def point_3_time(page):
    """Time per phase, and the overhead as workers grow; returns the short answers."""
    rep, summary, keys, modal, cost = page.rep, page.summary, page.keys, page.modal, page.t["cost"]
    rep.h(2, "3. Time overhead as workers grow")
    answers = []
    spread = summary.groupby(keys, dropna=False)["step_s"].agg(
        lambda x: x.std(ddof=1) / x.mean() if len(x) > 1 else np.nan).dropna()
    if len(spread) and spread.median() > 0.15:
        answers.append(f"Timings are noisy in this study (repeats differ by {pct(spread.median(), 0)}): "
                       "the ratios below are indicative only.")
        page.flag(f"the time per step of repeats of one experiment varies by {pct(spread.median(), 0)} (median "
                  "coefficient of variation over seeds): the machine was probably shared or oversubscribed while "
                  "the runs ran, so time ratios here are indicative only.")
    rep.p("Mean milliseconds per step in each phase (compute: the slowest worker; the first step is left out):")
    phases = page.t["phases"]
    if "craft_s" in phases and not np.isfinite(phases["craft_s"].to_numpy(dtype=float)).any():
        phases = phases.drop(columns="craft_s")   # no run recorded it (files written before it existed)
    rep.table(show(phases, {
        **page.kc, "compute_s": ("compute", ms), "gather_s": ("gather", ms), "aggregate_s": ("aggregate", ms),
        "update_s": ("update", ms), "craft_s": ("craft", ms), "other_s": ("other", ms), "step_s": ("step", ms),
        "aggregate_share": ("aggregate share", pct)}))
    page.draw(figures.phase_stack(page.t["phases"], keys, modal=modal), "time_per_phase", "Time per phase per step")
    if "workers.n" in keys:
        rep.p("Time per step relative to averaging without attack, by number of workers:")
        rep.table(pivot(cost, keys, "workers.n", "time_ratio", times))
        no_attack = cost[(cost["attack_label"] == "none") & (cost["rule"] != tables.BASELINE_RULE)]
        for k in keys:  # the main setting in everything but the number of workers
            if k not in NOT_MAIN + ("workers.n",) and k in modal:
                no_attack = no_attack[no_attack[k].astype(str) == modal[k]]
        for rule, g in no_attack.groupby("rule"):
            pts = ", ".join(f"n={int(n)}: {times(t)}" for n, t in g.groupby("workers.n")["time_ratio"].mean().items())
            answers.append(f"{rule} without attack, time per step against averaging: {pts}.")
    else:
        page.flag("one number of workers only: the time overhead as workers grow is not measured.")
    answers += scaling(page)
    answers += sharded_section.section(page)   # only when some run is not under placement = gather
    return answers


def scaling(page):
    """Speed-up and efficiency over MPI ranks, and what the hosts and rank counts leave out."""
    rep, summary, keys, scale = page.rep, page.summary, page.keys, page.t["scale"]
    answers = []
    if len(scale):
        rep.p("Speed-up and parallel efficiency over MPI ranks:")
        rep.table(show(scale, {**key_columns([k for k in keys if k in scale.columns and k != "n_ranks"]),
                               "mode": ("mode", None), "series": ("series", None), "n_ranks": ("ranks", None),
                               "workers.n": ("workers", None), "step_s": ("ms/step", ms),
                               "speedup": ("speed-up", times), "efficiency": ("efficiency", pct)}))
        page.draw(figures.scaling(scale), "scaling", "Strong and weak scaling over MPI ranks")
        series_keys = [k for k in keys if k in scale.columns and k not in ("n_ranks", "workers.n")]
        for _, g in scale.groupby(series_keys + ["mode", "series"], dropna=False, sort=True):
            first, last = g.sort_values("n_ranks").iloc[0], g.sort_values("n_ranks").iloc[-1]
            extra = figures.row_label(last, series_keys, page.modal)
            answers.append(f"{extra}, {last['mode']} scaling ({last['series']}) from {int(first['n_ranks'])} to "
                           f"{int(last['n_ranks'])} ranks: speed-up {times(last['speedup'])}, "
                           f"efficiency {pct(last['efficiency'])}.")
    elif summary["n_ranks"].isna().all():
        page.flag("the files do not record the number of MPI ranks (no provenance): scaling is not measured.")
    else:
        page.flag("one number of MPI ranks only: speed-up and parallel efficiency are not measured.")
    hosts = settings_table(summary).set_index("setting")["values in this study"].get("hosts", "")
    if not hosts:
        page.flag("the files do not record host names: whether any run spanned nodes is unknown.")
    elif "," not in str(hosts):
        page.flag("all runs ran on one host: communication between nodes, which dominates at scale, is not measured.")
    if summary["n_ranks"].max() < 8:
        page.flag(f"at most {int(summary['n_ranks'].max())} MPI ranks: scaling beyond that is not measured.")
    if summary["n_workers"].max() < 50:
        rep.p(f"The largest number of workers here is {int(summary['n_workers'].max())}; published "
              "Byzantine-robust trainings reach about 50.")
    return answers


def kernels(page, paths):
    """The ``krum-mpi bench aggregate`` results found in the study or given with ``--bench``."""
    rep, frames = page.rep, []
    for path in paths:
        try:
            frames.append(benchfile.read_frame(path))
        except KrumMPIError as exc:
            rep.p(f"Bench file skipped: {exc}")
    rep.h(2, "Aggregation kernels against their floor")
    if not frames:
        rep.p("No `krum-mpi bench aggregate` result in the study folder or given with `--bench`.")
        return
    bench = pd.concat(frames, ignore_index=True)
    rep.table(show(bench, {"rule": ("rule", None), "device": ("device", None), "input": ("input", None),
                           "n": ("n", None), "d": ("d", None), "f": ("f", None),
                           "recomputed": ("recomputed", None), "min_ms": ("min ms", lambda v: f"{v:.3g}"),
                           "floor": ("floor", None), "floor_ms": ("floor ms", lambda v: f"{v:.3g}"),
                           "x_floor": ("x floor", times)}))
    page.draw(figures.kernel_vs_floor(bench), "kernel_vs_floor", "Kernel time as a multiple of its floor")


def skipped(rep, study):
    """The files not read, and the runs left out because they are not complete."""
    incomplete = study.runs[study.runs["status"] != "complete"] if len(study.runs) else study.runs
    rep.h(2, "Files skipped")
    if len(study.skipped):
        rep.table(study.skipped.assign(file=study.skipped["file"].map(lambda f: Path(f).name)))
    else:
        rep.p("No results file was skipped.")
    if len(incomplete):
        rep.p(f"{len(incomplete)} runs are not complete and are left out of every table:")
        rep.table(incomplete.assign(file=incomplete["file"].map(lambda f: Path(f).name))[
            ["file", "status", "steps_done", "steps"]])
    if study.other_files:
        rep.p("Other files in the folder, not read: " +
              ", ".join(f"{n} x {ext}" for ext, n in sorted(study.other_files.items())) + ".")


def closing(page, study, write_tables):
    """What the data cannot support, the skipped files, and every run."""
    rep = page.rep
    rep.h(2, "What this data cannot support")
    rep.items(page.cannot or ["Nothing flagged by the checks above; the intervals only cover seed-to-seed noise."])
    skipped(rep, study)
    rep.h(2, "Runs")
    rep.table(show(page.summary, {"run": ("run", None), "rule": ("rule", None), "attack_label": ("attack", None),
                                  "byz_fraction": ("Byzantine", pct), "n_workers": ("n", None),
                                  "n_ranks": ("ranks", None), "seed": ("seed", None), "steps_done": ("steps", None),
                                  "final_accuracy": ("final accuracy", pct), "step_s": ("ms/step", ms)}))
    rep.p(("Tables as CSV: `tables/`. " if write_tables else "") + "Figures as PNG" +
          (" and SVG" if "svg" in page.figure_formats else "") + ": `figures/`.")


SHORT_TITLES = {1: "(1) The cost without attack, and what robustness buys under attack",
                2: "(2) How it changes with the number of samples and the model size",
                3: "(3) The time overhead as workers grow"}


def short_answers(head, answers, cannot, heading="Short answers to the review", titles=SHORT_TITLES, note=""):
    """The review's three points answered in a few lines, at the top of the report; ``note`` follows
    the count of what the runs cannot answer."""
    head.h(2, heading)
    for point, title in titles.items():
        head.p(f"**{title}**")
        head.items(answers.get(point) or ["Not answerable from this data (see below)."])
    if cannot:
        head.p(f"What these runs cannot answer ({len(cannot)} points) is listed under "
               "*What this data cannot support*." + note)
