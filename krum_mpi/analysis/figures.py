"""Figures from the tables (matplotlib, no pyplot state: safe in scripts, workers and notebooks).

Each function takes a table from ``tables`` and returns a ``matplotlib.figure.Figure``;
``save(fig, folder, name)`` writes it as PNG and SVG. Figures are drawn with the Agg renderer.
"""
import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .runtable import PHASES

PHASE_LABELS = {"compute_s": "compute (slowest worker)", "gather_s": "gather", "aggregate_s": "aggregate",
                "update_s": "update", "craft_s": "craft (the adversary)", "other_s": "other"}
_TREATMENT = ("rule", "attack_label", "byz_fraction", "aggregator.f")


def new_figure(width=6.4, height=4.0):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig, folder, name, formats=("png", "svg"), dpi=110):
    """Write ``fig`` as ``folder/name.png`` and ``.svg``; return the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = folder / f"{name}.{fmt}"
        fig.savefig(path, dpi=dpi, metadata={"Date": None} if fmt == "svg" else None)
        paths.append(path)
    return paths


def clipped_err(mean, half, lo=0.0, hi=1.0):
    """Error-bar lengths, shape (2, N), of mean +- half clipped to [lo, hi]: an accuracy's interval
    cannot leave [0, 1] (a t interval over 2 seeds often does). A missing half-width: no bar."""
    mean = np.asarray(mean, dtype=float)
    half = np.nan_to_num(np.asarray(half, dtype=float), nan=0.0, posinf=0.0)
    low, high = np.clip(mean - half, lo, hi), np.clip(mean + half, lo, hi)
    return np.nan_to_num(np.vstack([np.maximum(mean - low, 0.0), np.maximum(high - mean, 0.0)]))


def legend_below(fig, axes, fontsize=7, max_cols=5, **keywords):
    """One legend for ``axes`` under the panels (constrained layout keeps it clear of the data),
    each label once."""
    seen = {}
    for ax in np.atleast_1d(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", fontsize=fontsize,
                   ncol=min(len(seen), max_cols), **keywords)


def category_ticks(ax, positions, labels, fontsize=7, width=12):
    """Category labels on the x axis, each line wrapped at ``width`` characters so that long labels
    stack instead of running into their neighbours (the figure gives each category room for that)."""
    wrapped = ["\n".join(textwrap.fill(line, width, break_long_words=False) for line in str(label).split("\n"))
               for label in labels]
    ax.set_xticks(positions, wrapped, fontsize=fontsize)


def drop_overlapping_texts(fig, texts, pad=1.0):
    """Hide every text (point names) that would overlap one drawn before it, in the order given: a
    name that cannot be read is worse than none (the legend names every point too)."""
    if not texts:
        return
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()   # settle the layout: the boxes are where the texts will be drawn
    kept = []
    for text in texts:
        box = text.get_window_extent(renderer).padded(pad)
        if any(box.overlaps(other) for other in kept):
            text.set_visible(False)
        else:
            kept.append(box)


def percent(fraction):
    return f"{100 * fraction:.3g}%"


def modal_values(frame, keys):
    """The most common value of each key: the study's main setting, left out of labels."""
    return {k: frame[k].astype(str).mode().iloc[0] for k in keys if k in frame and len(frame)}


def main_setting(frame, keys, modal):
    """The rows at the study's main setting in every key but rule, attack and Byzantine fraction."""
    keep = np.ones(len(frame), bool)
    for k in keys:
        if k not in _TREATMENT and k in modal and k in frame:
            keep &= (frame[k].astype(str) == modal[k]).to_numpy()
    return frame[keep]


def context_label(row, keys, modal=None):
    """``key=value`` for the keys beyond rule / attack / fraction (e.g. workers.n=40), leaving out
    those at the study's main setting (``modal``)."""
    modal = modal or {}
    return ", ".join(f"{k}={row[k]}" for k in keys
                     if k not in _TREATMENT and (k not in modal or str(row[k]) != modal[k]))


def _grid(fig, count, max_cols=3):
    cols = min(count, max_cols)
    rows = math.ceil(count / cols)
    fig.set_size_inches(max(6.4, 4.2 * cols), 3.3 * rows + 0.4)
    return fig.subplots(rows, cols, squeeze=False).ravel()


def _colors(labels):
    cycle = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
             "#bcbd22", "#17becf"]
    return {label: cycle[i % len(cycle)] for i, label in enumerate(sorted(set(labels)))}


def accuracy_over_steps(curves, keys, max_panels=9, modal=None):
    """Error (1 - test accuracy) against round, one panel per attack and Byzantine fraction, one line
    per rule: the layout of Figure 4 of the Krum paper. Band: min to max over seeds. Only the
    study's main setting is drawn (other settings are in the tables)."""
    modal = modal or modal_values(curves, keys)
    curves = main_setting(curves, keys, modal)
    panels = curves[["attack_label", "byz_fraction"]].drop_duplicates().sort_values(
        ["byz_fraction", "attack_label"]).to_numpy().tolist()[:max_panels]
    fig = new_figure()
    axes = _grid(fig, max(1, len(panels)))
    line_keys = [k for k in keys if k not in ("attack_label", "byz_fraction", "aggregator.f")]
    colors = _colors(curves["rule"].astype(str))
    for ax, (attack, frac) in zip(axes, panels):
        sub = curves[(curves["attack_label"] == attack) & (curves["byz_fraction"] == frac)]
        for values, g in sub.groupby(line_keys, dropna=False, sort=True):
            values = values if isinstance(values, tuple) else (values,)
            row = dict(zip(line_keys, values))
            extra = context_label(row, line_keys, modal)
            label = str(row["rule"]) + (f" ({extra})" if extra else "")
            color = colors[str(row["rule"])]
            ax.plot(g["step"], 1 - g["mean"], label=label, color=color, lw=1.5)
            if (g["count"] > 1).any():
                ax.fill_between(g["step"], 1 - g["max"], 1 - g["min"], color=color, alpha=0.2, lw=0)
        ax.set_title(f"{percent(frac)} Byzantine" + ("" if attack == "none" else f" ({attack})"), fontsize=10)
        ax.set_xlabel("round (step)")
        ax.set_ylabel("error (1 - test accuracy)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Test error over rounds, mean over seeds, band = min..max (cf. Krum paper, Fig. 4)",
                 fontsize=10)
    return fig


def accuracy_vs_fraction(acc_table, keys, modal=None):
    """Final test accuracy against Byzantine fraction, one panel per attack, one line per rule
    (the runs without attack are the 0% point of every panel). Error bars: 95% CI over seeds.
    Only the study's main setting is drawn."""
    modal = modal or modal_values(acc_table, keys)
    acc_table = main_setting(acc_table, keys, modal)
    attacks = sorted(a for a in acc_table["attack_label"].unique() if a != "none") or ["none"]
    fig = new_figure()
    axes = _grid(fig, len(attacks))
    line_keys = [k for k in keys if k not in ("attack_label", "byz_fraction", "aggregator.f")]
    colors = _colors(acc_table["rule"].astype(str))
    for ax, attack in zip(axes, attacks):
        sub = acc_table[acc_table["attack_label"].isin([attack, "none"])]
        for values, g in sub.groupby(line_keys, dropna=False, sort=True):
            values = values if isinstance(values, tuple) else (values,)
            row = dict(zip(line_keys, values))
            g = g.sort_values("byz_fraction")
            extra = context_label(row, line_keys, modal)
            label = str(row["rule"]) + (f" ({extra})" if extra else "")
            ax.errorbar(100 * g["byz_fraction"], g["final_mean"], yerr=clipped_err(g["final_mean"], g["final_ci"]), marker="o",
                        capsize=3, label=label, color=colors[str(row["rule"])])
        ax.set_title("no attack" if attack == "none" else f"attack: {attack}", fontsize=10)
        ax.set_xlabel("Byzantine workers (% of n)")
        ax.set_ylabel("final test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Final test accuracy against Byzantine fraction (mean, 95% CI over seeds)", fontsize=10)
    return fig


def row_label(row, keys, modal=None):
    parts = [str(row["rule"])]
    if "byz_fraction" in keys:
        parts.append("no attack" if row["attack_label"] == "none"
                     else f"{percent(row['byz_fraction'])} {row['attack_label']}")
    extra = context_label(row, keys, modal)
    return " | ".join(parts + ([extra] if extra else []))


def phase_stack(phase_table, keys, max_rows=40, modal=None):
    """Stacked horizontal bars: mean seconds per step in each phase, one bar per experiment."""
    table = phase_table.head(max_rows)
    modal = modal or modal_values(phase_table, keys)
    labels = [row_label(r, keys, modal) for _, r in table.iterrows()]
    fig = new_figure(6.0 + 0.06 * max(map(len, labels), default=10), 1.4 + 0.28 * max(1, len(table)))
    ax = fig.subplots()
    left = np.zeros(len(table))
    y = np.arange(len(table))
    for phase in (*PHASES, "other_s"):
        ms = 1e3 * table[phase].to_numpy(dtype=float)
        measured = np.isfinite(ms)   # a phase a run did not record gets no bar, not a zero one
        if not measured.any():
            continue                 # nor a legend entry (craft_s in files written before it)
        ax.barh(y[measured], ms[measured], left=left[measured], label=PHASE_LABELS[phase])
        left += np.nan_to_num(ms)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds per step (mean over steps and seeds, first step left out)")
    legend_below(fig, ax)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Time per phase", fontsize=10)
    return fig


def scaling(scaling_table):
    """Strong and weak scaling: time per step and parallel efficiency against MPI ranks."""
    fig = new_figure(9.0, 3.6)
    ax_time, ax_eff = fig.subplots(1, 2)
    series_keys = [c for c in scaling_table.columns if c not in (
        "n_ranks", "workers.n", "n_seeds", "step_s", "step_s_ci", "speedup", "efficiency", "mode", "series")]
    modal = modal_values(scaling_table, series_keys)
    for values, g in scaling_table.groupby(series_keys + ["mode", "series"], dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        row = dict(zip(series_keys + ["mode", "series"], values))
        label = f"{row_label(row, series_keys, modal)} [{row['mode']}, {row['series']}]"
        ax_time.plot(g["n_ranks"], 1e3 * g["step_s"], marker="o", label=label)  # intervals: in the table
        if g["efficiency"].notna().any():
            ax_eff.plot(g["n_ranks"], g["efficiency"], marker="o", label=label)
    for ax in (ax_time, ax_eff):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("MPI ranks")
        ax.grid(alpha=0.3)
    ax_time.set_ylabel("ms per step (mean over seeds)")
    ax_time.set_ylim(bottom=0)
    ax_eff.axhline(1.0, color="k", lw=0.8, ls="--", label="ideal")
    ax_eff.set_ylabel("parallel efficiency")
    ax_eff.set_ylim(bottom=0)
    ax_time.legend(fontsize=6)
    ax_eff.legend(fontsize=6)
    fig.suptitle("Strong scaling (fixed workers) and weak scaling (fixed workers per rank)", fontsize=10)
    return fig


def kernel_vs_floor(bench):
    """Aggregation kernel time as a multiple of its floor (from ``krum-mpi bench aggregate``)."""
    bench = bench.sort_values(["rule", "n", "d", "device", "input"]).reset_index(drop=True)
    labels = []
    for _, r in bench.iterrows():
        extra = " ".join(f"{c}={r[c]:g}" if isinstance(r[c], (int, float)) else f"{r[c]}"
                         for c in ("n", "d", "device", "input"))
        labels.append(f"{r['rule']} {extra}".strip())
    fig = new_figure(7.5, 1.2 + 0.3 * max(1, len(bench)))
    ax = fig.subplots()
    y = np.arange(len(bench))
    ax.barh(y, bench["x_floor"].astype(float), color="#1f77b4")
    ax.axvline(1.0, color="k", lw=1, ls="--", label="floor (1x)")
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("kernel time / floor time (lower is better, 1 = at the floor)")
    ax.legend(fontsize=7)
    ax.set_title("Aggregation kernels against their floor", fontsize=10)
    return fig
