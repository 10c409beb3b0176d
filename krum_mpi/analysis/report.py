"""``krum-mpi report STUDY_DIR``: a self-contained report that answers the review of the Krum paper
from the runs present, and says plainly what those runs cannot answer.

The review's three points: (1) without attack Krum lags averaging and only pays off near 33%
Byzantine workers; (2) the experiments used tiny data and models; (3) only data-parallel training
was considered, so what does resilience cost as workers grow? The report is Markdown with PNGs
(``--format md``) or one HTML file with the figures embedded (``--format html``).
"""
import argparse
import base64
import datetime
import html
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import KrumMPIError, ResultsError
from . import figures, tables
from .bench import read_bench
from .load import REPORT_MARKER, experiment_keys, load_study

SAMPLE_KEYS = ("data.name", "data.n_train", "data.max_train", "data.path", "workers.batch_size")
MODEL_KEYS = ("model.name", "model.hidden", "data.n_features")
PAPER_ROUNDS = 500
LARGE_MODEL = 1e6   # parameters: below this, "model size" conclusions are about small models
LARGE_DATA = 1e5    # training samples: below this, "data size" conclusions are about small data
REVIEW_FRACTIONS = (0.01, 0.33)


# ---------------------------------------------------------------------------------------------
# Formatting


def pct(x, digits=1):
    return "n/a" if _nan(x) else f"{100 * x:.{digits}f}%"


def pct_ci(mean, ci):
    return pct(mean) + ("" if _nan(ci) else f" ± {100 * ci:.1f}")


def pp_ci(gap, ci):
    if _nan(gap):
        return "n/a"
    text = f"{100 * gap:+.1f} pp"
    return text + ("" if _nan(ci) else f" [{100 * (gap - ci):+.1f}, {100 * (gap + ci):+.1f}]")


def times(x):
    return "n/a" if _nan(x) else f"{x:.2f}x"


def ms(x):
    return "n/a" if _nan(x) else f"{1e3 * x:.3g}"


def _nan(x):
    return x is None or (isinstance(x, float) and math.isnan(x))


def _show(frame, columns):
    """Select and rename columns for display; ``columns`` maps name -> (header, formatter or None)."""
    out = {}
    for name, (header, fmt) in columns.items():
        if name in frame:
            out[header] = frame[name].map(fmt) if fmt else frame[name]
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------
# Report content: a list of blocks rendered to Markdown or HTML


class Report:
    def __init__(self):
        self.blocks = []

    def h(self, level, text):
        self.blocks.append(("h", level, text))

    def p(self, text):
        self.blocks.append(("p", text))

    def items(self, lines):
        if lines:
            self.blocks.append(("ul", list(lines)))

    def table(self, frame):
        if frame is not None and len(frame):
            self.blocks.append(("table", frame))

    def figure(self, png, caption):
        self.blocks.append(("img", Path(png), caption))

    def markdown(self, out_dir):
        lines = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                lines += ["#" * block[1] + " " + block[2], ""]
            elif kind == "p":
                lines += [block[1], ""]
            elif kind == "ul":
                lines += [f"- {item}" for item in block[1]] + [""]
            elif kind == "table":
                frame = block[1].map(_text)
                cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
                lines.append("| " + " | ".join(cell(c) for c in frame.columns) + " |")
                lines.append("|" + "---|" * len(frame.columns))
                lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
                lines.append("")
            elif kind == "img":
                rel = block[1].relative_to(out_dir).as_posix()
                lines += [f"![{block[2]}]({rel})", "", f"*{block[2]}*", ""]
        return "\n".join(lines)

    def html(self, title):
        esc = html.escape
        body = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                body.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "table":
                frame = block[1].map(_text)
                head = "".join(f"<th>{esc(str(c))}</th>" for c in frame.columns)
                rows = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>"
                               for row in frame.itertuples(index=False))
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "img":
                data = base64.b64encode(block[1].read_bytes()).decode()
                body.append(f'<figure><img alt="{esc(block[2])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{esc(block[2])}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;line-height:1.4}"
                 "table{border-collapse:collapse;font-size:85%}td,th{border:1px solid #ccc;padding:2px 6px}"
                 "img{max-width:100%}code{background:#f4f4f4}")
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
                f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _text(value):
    """A table cell as text; missing values as "-" (pandas keeps NaN through astype(str))."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _inline(text):
    """Markdown ``code`` and **bold** spans to HTML, everything else escaped."""
    parts = html.escape(text).split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    bold = out.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(bold))


# ---------------------------------------------------------------------------------------------
# The analysis behind each section


def _varying(summary, candidates):
    return [k for k in candidates if k in summary and summary[k].astype(str).nunique() > 1]


HEADERS = {"rule": "rule", "attack_label": "attack", "byz_fraction": "Byzantine", "aggregator.f": "declared f",
           "workers.n": "workers", "n_ranks": "ranks", "model.hidden": "hidden layers",
           "data.max_train": "max train samples", "data.n_train": "train samples",
           "workers.batch_size": "batch", "data.name": "dataset", "model.name": "model"}


def _key_columns(keys):
    return {k: (HEADERS.get(k, k), pct if k == "byz_fraction" else None) for k in keys}


def _settings(summary):
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


def _train_rows(summary):
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


def _by_setting(cost, keys, key, modal):
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


def _verdict(gap, ci, n):
    if _nan(gap):
        return "no baseline"
    if _nan(ci):
        return "one seed on a side: no interval, no claim either way"
    if gap + ci < 0:
        return "a loss the seeds confirm"
    if gap - ci > 0:
        return "a gain the seeds confirm"
    return f"no difference detectable with {int(n)} seeds"


def _answer_cost(cost, keys, modal):
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
                     f"({_verdict(r['acc_gap'], r['acc_gap_ci'], r['n_seeds'])}); time per step "
                     f"{times(r['time_ratio'])} averaging's.")
    attacked = cost[cost["attack_label"] != "none"]
    context = [k for k in keys if k not in ("rule", "aggregator.f")]
    details = []
    for values, g in attacked.groupby(context, sort=True, dropna=False):
        row = dict(zip(context, values if isinstance(values, tuple) else (values,)))
        extra = figures.context_label(row, context, modal)
        avg = g[g["rule"] == tables.BASELINE_RULE]
        parts = [f"{r['rule']} {pct(r['final_mean'])}" + ("" if r["rule"] == tables.BASELINE_RULE or _nan(r["vs_average"])
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
            verdicts.setdefault(_verdict(r["vs_average"], r["vs_average_ci"], r["n_seeds"]), []).append(
                pct(r["byz_fraction"]))
        said = "; ".join(f"{v} at {', '.join(f)}" for v, f in verdicts.items())
        lines.append(f"Under attack ({row['attack_label']}{', ' + extra if extra else ''}), **{row['rule']}** "
                     f"against averaging: {said}.")
    return lines, details


def _pivot(frame, keys, by, value, fmt):
    """Rows: experiments without ``by`` (and the declared f); columns: the values of ``by``."""
    index = [k for k in keys if k not in (by, "aggregator.f")]
    cells = frame.assign(_v=frame[value].map(fmt)).groupby(index + [by], dropna=False, sort=True)["_v"].first()
    table = cells.unstack(by)  # only the combinations present, never their Cartesian product
    table.columns = [f"{HEADERS.get(by, by)} = {c}" for c in table.columns]
    table = table.reset_index().fillna("-")
    if "byz_fraction" in table:
        table["byz_fraction"] = table["byz_fraction"].map(pct)
    return table.rename(columns={k: HEADERS.get(k, k) for k in index})


def build(study_dir, out_dir=None, fmt="md", bench_files=(), figure_formats=("png", "svg"), command=None,
          write_tables=True):
    """Load the study, compute the tables, draw the figures, write the report; return its path."""
    study = load_study(study_dir)
    study_path = Path(study_dir)
    out = Path(out_dir) if out_dir else (study_path if study_path.is_dir() else study_path.parent) / "report"
    fig_dir, table_dir = out / "figures", out / "tables"
    for d in (out, fig_dir) + ((table_dir,) if write_tables else ()):
        d.mkdir(parents=True, exist_ok=True)
    (out / REPORT_MARKER).write_text("written by krum-mpi report; the study loader skips this folder\n")
    command = command or "krum-mpi report " + shlex.quote(str(study_dir))
    head, rep, cannot, answers = Report(), Report(), [], {}

    def flag(text):
        """A question the data cannot answer: said where it arises and in the closing list."""
        cannot.append(text)
        rep.p(f"*Cannot be answered from this data:* {text}")

    head.h(1, "krum-mpi report: what Byzantine-robust aggregation costs and buys")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head.p(f"Made with `{command}` (krum-mpi {__version__}, {stamp}) from the run files in "
           f"`{study_path.name}`: {len(study.runs)} readable runs, {len(study.skipped)} files skipped.")
    summary = tables.run_summary(study) if len(study.runs) else pd.DataFrame()
    incomplete = study.runs[study.runs["status"] != "complete"] if len(study.runs) else study.runs
    if not len(summary):
        head.p("**No complete run could be read, so none of the review's questions can be answered "
               "from this folder.** The files and why they were skipped are listed below.")
        _skipped_section(head, study, incomplete)
        return _write(head, out, fmt)

    keys = experiment_keys(summary)
    acc = tables.accuracy_table(summary, keys)
    cost = tables.resilience_cost(summary, keys)
    phases = tables.phase_times(summary, keys)
    scale = tables.scaling_table(summary, keys)
    selection = tables.byzantine_selection(summary, keys)
    curves = tables.accuracy_curves(study, summary, keys)
    run_cols = ["run", "status", *keys, "seed", "n_workers", "n_byzantine", "steps_done", "final_accuracy",
                "best_accuracy", "final_loss", "compute_s", "gather_s", "aggregate_s", "update_s", "step_s",
                "byz_selected_frac", "top_byzantine_frac", "byz_weight_mean", "prov.n_params"]
    for name, frame in (("runs", summary[[c for c in dict.fromkeys(run_cols) if c in summary]]),
                        ("accuracy", acc), ("cost_of_resilience", cost), ("time_per_phase", phases),
                        ("scaling", scale), ("byzantine_selection", selection)):
        if len(frame) and write_tables:
            frame.to_csv(table_dir / f"{name}.csv", index=False)
    kc = _key_columns(keys)
    modal = figures.modal_values(summary, keys)

    def draw(fig, name, caption):
        paths = figures.save(fig, fig_dir, name, formats=figure_formats)
        png = next((p for p in paths if p.suffix == ".png"), None)
        if png is not None:
            rep.figure(png, caption)

    rep.h(2, "The study")
    rep.table(_settings(summary))
    main_setting = {k: v for k, v in modal.items() if k not in ("rule", "byz_fraction", "attack_label", "aggregator.f")}
    if main_setting:
        rep.p("Experiments differ in: " + ", ".join(f"`{k}`" for k in keys) + ". Labels leave out the main "
              "setting (" + ", ".join(f"{k}={v}" for k, v in main_setting.items()) + ").")
    seeds = acc["n_seeds"]
    if seeds.max() < 2:
        flag("every experiment has a single seed: no confidence intervals, so no difference below the "
             "run-to-run noise can be claimed.")
    elif seeds.min() < 2:
        rep.p(f"{int((seeds < 2).sum())} experiments have a single seed (no interval).")
    if summary["steps"].max() < PAPER_ROUNDS:
        flag(f"runs are at most {int(summary['steps'].max())} steps, fewer than the paper's {PAPER_ROUNDS} "
             "rounds: final accuracies are early-training values, not converged ones.")

    # ---- point 1
    rep.h(2, "1. The cost without attack, and what robustness buys at 1-33% Byzantine")
    has_base = (summary["aggregator.name"] == tables.BASELINE_RULE) & (summary["n_byzantine"] == 0)
    if not has_base.any():
        flag("no averaging run without attack: the cost of resilience (accuracy gap, time overhead) has no baseline.")
    if not (summary["aggregator.name"] != tables.BASELINE_RULE).any():
        flag("no robust rule was run: there is nothing to compare with averaging.")
    answers[1], details = _answer_cost(cost, keys, modal)
    rep.items(answers[1] + details)
    fractions = sorted(f for f in summary["byz_fraction"].unique() if f > 0)
    if not fractions:
        flag("no run has Byzantine workers: what robustness buys under attack is not measured.")
    else:
        if min(fractions) > 0.05:
            flag(f"the smallest Byzantine fraction is {pct(min(fractions))}: small fractions (1-5%) are not covered.")
        if max(fractions) < REVIEW_FRACTIONS[1] - 0.04:
            flag(f"the largest Byzantine fraction is {pct(max(fractions))}: the review's 33% is not covered.")
    rep.p("Accuracy gap to averaging without attack in the same setting (pp = percentage points, "
          "[95% Welch interval over seeds]) and time per step relative to it:")
    cost_show = cost.assign(gap=[pp_ci(g, c) for g, c in zip(cost["acc_gap"], cost["acc_gap_ci"])],
                            gain=[pp_ci(g, c) for g, c in zip(cost["vs_average"], cost["vs_average_ci"])])
    rep.table(_show(cost_show, {**kc, "n_seeds": ("seeds", None), "final_mean": ("final accuracy", pct),
                                "baseline_final": ("averaging, no attack", pct), "gap": ("gap", None),
                                "gain": ("vs averaging, same attack", None),
                                "time_ratio": ("time/step vs averaging", times)}))
    rep.p("Final and best test accuracy, mean ± 95% t-interval half-width over seeds:")
    acc_show = acc.assign(final=[pct_ci(m, c) for m, c in zip(acc["final_mean"], acc["final_ci"])],
                          best=[pct_ci(m, c) for m, c in zip(acc["best_mean"], acc["best_ci"])])
    rep.table(_show(acc_show, {**kc, "n_seeds": ("seeds", None), "final": ("final", None), "best": ("best", None)}))
    draw(figures.accuracy_over_steps(curves, keys, modal=modal), "accuracy_over_steps",
         "Test error over rounds per rule and Byzantine fraction, main setting (cf. Krum paper, Figure 4)")
    if fractions:
        draw(figures.accuracy_vs_fraction(acc, keys, modal=modal), "accuracy_vs_fraction",
             "Final test accuracy against the Byzantine fraction, per rule, main setting")
    if len(selection):
        rep.p("How often a Byzantine worker got in: share of steps where one was among the selected "
              "workers (averaging takes everyone), and where it was the rule's first choice:")
        rep.table(_show(selection, {**kc, "n_seeds": ("seeds", None),
                                    "byz_selected": ("steps with a Byzantine selected", pct),
                                    "top_byzantine": ("Byzantine first choice", pct),
                                    "byz_weight": ("Byzantine weight share", pct)}))

    # ---- point 2
    rep.h(2, "2. How this changes with the number of samples and the model size")
    answers[2] = []
    for label, candidates in (("samples", SAMPLE_KEYS), ("model size", MODEL_KEYS)):
        varying = [k for k in _varying(summary, candidates) if k in keys]
        if not varying:
            present = {k: summary[k].iloc[0] for k in candidates if k in summary and str(summary[k].iloc[0]) != ""}
            flag(f"one {label} setting only ({', '.join(f'{k}={v}' for k, v in present.items())}): how the "
                 f"cost changes with {label} is not measured.")
            answers[2].append(f"{label}: not measured (one setting).")
            continue
        for key in varying:
            rep.p(f"Accuracy gap to averaging without attack (pp) by {HEADERS.get(key, key)} (`{key}`):")
            rep.table(_pivot(cost_show, keys, key, "gap", str))
            answers[2] += _by_setting(cost, keys, key, modal)
        if label == "model size" and "prov.n_params" in summary and "model.hidden" in summary:
            rep.p("Parameters per model: " + ", ".join(
                f"{h} -> d = {d}" for h, d in summary.groupby("model.hidden")["prov.n_params"].first().items()) + ".")
    # The review's point is scale itself: say how small the largest setting here is.
    d_max = pd.to_numeric(summary["prov.n_params"], errors="coerce").max() if "prov.n_params" in summary else np.nan
    if not _nan(d_max) and d_max < LARGE_MODEL:
        flag(f"the largest model has d = {int(d_max)} parameters: what is said here about model size holds "
             f"for small models only (nothing near {LARGE_MODEL:.0e}).")
    rows_max = _train_rows(summary)
    if not _nan(rows_max) and rows_max < LARGE_DATA:
        flag(f"the largest training set has about {int(rows_max)} samples: what is said here about data size "
             f"holds for small data only (nothing near {LARGE_DATA:.0e}).")

    # ---- point 3
    rep.h(2, "3. Time overhead as workers grow")
    answers[3] = []
    spread = summary.groupby(keys, dropna=False)["step_s"].agg(lambda x: x.std(ddof=1) / x.mean() if len(x) > 1
                                                                else np.nan).dropna()
    if len(spread) and spread.median() > 0.15:
        answers[3].append(f"Timings are noisy in this study (repeats differ by {pct(spread.median(), 0)}): "
                          "the ratios below are indicative only.")
        flag(f"the time per step of repeats of one experiment varies by {pct(spread.median(), 0)} (median "
             "coefficient of variation over seeds): the machine was probably shared or oversubscribed while the "
             "runs ran, so time ratios here are indicative only.")
    rep.p("Mean milliseconds per step in each phase (compute: the slowest worker; the first step is left out):")
    rep.table(_show(phases, {**kc, "compute_s": ("compute", ms), "gather_s": ("gather", ms),
                             "aggregate_s": ("aggregate", ms), "update_s": ("update", ms), "other_s": ("other", ms),
                             "step_s": ("step", ms), "aggregate_share": ("aggregate share", pct)}))
    draw(figures.phase_stack(phases, keys, modal=modal), "time_per_phase", "Time per phase per step")
    if "workers.n" in keys:
        rep.p("Time per step relative to averaging without attack, by number of workers:")
        ratio = _pivot(cost, keys, "workers.n", "time_ratio", times)
        rep.table(ratio)
        no_attack = cost[(cost["attack_label"] == "none") & (cost["rule"] != tables.BASELINE_RULE)]
        for k in keys:  # the main setting in everything but the number of workers
            if k not in ("rule", "byz_fraction", "attack_label", "aggregator.f", "workers.n") and k in modal:
                no_attack = no_attack[no_attack[k].astype(str) == modal[k]]
        for rule, g in no_attack.groupby("rule"):
            pts = ", ".join(f"n={int(n)}: {times(t)}" for n, t in g.groupby("workers.n")["time_ratio"].mean().items())
            answers[3].append(f"{rule} without attack, time per step against averaging: {pts}.")
    else:
        flag("one number of workers only: the time overhead as workers grow is not measured.")
    if len(scale):
        rep.p("Speed-up and parallel efficiency over MPI ranks:")
        rep.table(_show(scale, {**_key_columns([k for k in keys if k in scale.columns and k != "n_ranks"]),
                                "mode": ("mode", None), "series": ("series", None),
                                "n_ranks": ("ranks", None), "workers.n": ("workers", None), "step_s": ("ms/step", ms), "speedup": ("speed-up", times),
                                "efficiency": ("efficiency", pct)}))
        draw(figures.scaling(scale), "scaling", "Strong and weak scaling over MPI ranks")
        series_keys = [k for k in keys if k in scale.columns and k not in ("n_ranks", "workers.n")]
        for _, g in scale.groupby(series_keys + ["mode", "series"], dropna=False, sort=True):
            first, last = g.sort_values("n_ranks").iloc[0], g.sort_values("n_ranks").iloc[-1]
            extra = figures.row_label(last, series_keys, modal)
            answers[3].append(f"{extra}, {last['mode']} scaling ({last['series']}) from {int(first['n_ranks'])} to "
                              f"{int(last['n_ranks'])} ranks: speed-up {times(last['speedup'])}, "
                              f"efficiency {pct(last['efficiency'])}.")
    elif summary["n_ranks"].isna().all():
        flag("the files do not record the number of MPI ranks (no provenance): scaling is not measured.")
    else:
        flag("one number of MPI ranks only: speed-up and parallel efficiency are not measured.")
    hosts = _settings(summary).set_index("setting")["values in this study"].get("hosts", "")
    if not hosts:
        flag("the files do not record host names: whether any run spanned nodes is unknown.")
    elif "," not in str(hosts):
        flag("all runs ran on one host: communication between nodes, which dominates at scale, is not measured.")
    if summary["n_ranks"].max() < 8:
        flag(f"at most {int(summary['n_ranks'].max())} MPI ranks: scaling beyond that is not measured.")
    if summary["n_workers"].max() < 50:
        rep.p(f"The largest number of workers here is {int(summary['n_workers'].max())}; published "
              "Byzantine-robust trainings reach about 50.")

    # ---- kernels
    bench = _bench(list(study.bench_files) + [Path(b) for b in bench_files], rep)
    rep.h(2, "Aggregation kernels against their floor")
    if bench is not None:
        cols = [c for c in ("rule", "n", "d", "backend", "time_s", "floor_s", "ratio") if c in bench]
        rep.table(bench[cols])
        draw(figures.kernel_vs_floor(bench), "kernel_vs_floor", "Kernel time as a multiple of its floor")
    else:
        rep.p("No `krum-mpi bench aggregate` result (CSV/JSON/HDF5 with rule, time and floor columns) in "
              "the study folder or given with `--bench`.")

    rep.h(2, "What this data cannot support")
    rep.items(cannot or ["Nothing flagged by the checks above; the intervals only cover seed-to-seed noise."])
    _skipped_section(rep, study, incomplete)
    rep.h(2, "Runs")
    rep.table(_show(summary, {"run": ("run", None), "rule": ("rule", None), "attack_label": ("attack", None),
                              "byz_fraction": ("Byzantine", pct), "n_workers": ("n", None),
                              "n_ranks": ("ranks", None), "seed": ("seed", None), "steps_done": ("steps", None),
                              "final_accuracy": ("final accuracy", pct), "step_s": ("ms/step", ms)}))
    rep.p(("Tables as CSV: `tables/`. " if write_tables else "") + "Figures as PNG" +
          (" and SVG" if "svg" in figure_formats else "") + ": `figures/`.")

    head.h(2, "Short answers to the review")
    titles = {1: "(1) The cost without attack, and what robustness buys under attack",
              2: "(2) How it changes with the number of samples and the model size",
              3: "(3) The time overhead as workers grow"}
    for point, title in titles.items():
        head.p(f"**{title}**")
        head.items(answers[point] or ["Not answerable from this data (see below)."])
    if cannot:
        head.p(f"What these runs cannot answer ({len(cannot)} points) is listed under "
               "*What this data cannot support*.")
    head.blocks += rep.blocks
    return _write(head, out, fmt)


def _bench(paths, rep):
    frames = []
    for path in paths:
        try:
            frames.append(read_bench(path))
        except KrumMPIError as exc:
            rep.p(f"Bench file skipped: {exc}")
    return pd.concat(frames, ignore_index=True) if frames else None


def _skipped_section(rep, study, incomplete):
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


def _write(rep, out, fmt):
    if fmt == "html":
        path = out / "report.html"
        path.write_text(rep.html("krum-mpi report"))
    else:
        path = out / "report.md"
        path.write_text(rep.markdown(out))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="krum-mpi report", description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study folder (searched recursively for .h5 run files) or one run file")
    parser.add_argument("--out", help="output folder (default: STUDY/report)")
    parser.add_argument("--format", choices=("md", "html"), default="md",
                        help="md: Markdown + PNG files; html: one file, figures embedded")
    parser.add_argument("--bench", action="append", default=[],
                        help="a 'krum-mpi bench aggregate' result file to include (repeatable)")
    parser.add_argument("--figure-formats", default="png,svg", help="comma-separated (default png,svg)")
    parser.add_argument("--no-tables", action="store_true", help="do not write the tables as CSV files")
    parser.add_argument("--scheduler", help="address of a dask.distributed scheduler to compute on")
    args = parser.parse_args(argv)
    formats = tuple(f.strip() for f in args.figure_formats.split(",") if f.strip())
    if "png" not in formats:
        raise KrumMPIError("--figure-formats must include png (the report shows PNGs): e.g. png,svg")
    if not Path(args.study).exists():
        raise ResultsError(f"study folder {args.study} does not exist: give the folder of the run files")
    command = "krum-mpi report " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    client = None
    if args.scheduler:
        from distributed import Client
        client = Client(args.scheduler)
    try:
        path = build(args.study, args.out, args.format, args.bench, formats, command=command,
                     write_tables=not args.no_tables)
    finally:
        if client is not None:
            client.close()
    print(f"report written to {path}")
    return 0
