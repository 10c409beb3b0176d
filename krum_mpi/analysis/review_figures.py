"""Figures of the review report, one per point, each readable without the text: titles say what is
compared, axes say what is measured, error bars are the 95% intervals over seeds."""
import numpy as np

from .figures import _colors, category_ticks, clipped_err, drop_overlapping_texts, legend_below, new_figure

MARKERS = "os^vDPX*<>ph"


def _pct(v):
    return 100 * np.asarray(v, dtype=float)


def _err(mean, half):
    """Error bars in percent, the interval clipped to [0, 100]."""
    return clipped_err(_pct(mean), _pct(half), 0.0, 100.0)


def cost_of_resilience(res):
    """Per rule: accuracy without attack (x) against worst-case accuracy over the attacks (y), one
    panel per Byzantine fraction; filled markers without momentum, hollow with worker momentum.
    A rule up and to the right costs little and resists; the diagonal is "attacks change nothing"."""
    fractions = sorted(res["fraction"].unique())
    cols = min(3, len(fractions))
    rows = int(np.ceil(len(fractions) / cols))
    fig = new_figure(4.2 * cols, 3.9 * rows + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    rules = sorted(res["rule"].unique())
    colors = _colors(rules)
    lo = np.nanmin(np.r_[_pct(res["worst"]), _pct(res["clean"]), 100.0]) - 3
    names, labelled = [], set()
    for ax, frac in zip(axes, fractions):
        sub = res[res["fraction"] == frac]
        for i, rule in enumerate(rules):
            for mom, g in sorted(sub[sub["rule"] == rule].groupby("momentum"), key=lambda item: item[0] != "off"):
                hollow = mom != "off"
                ax.errorbar(_pct(g["clean"]), _pct(g["worst"]), xerr=_err(g["clean"], g["clean_ci"]),
                            yerr=_err(g["worst"], g["worst_ci"]),
                            fmt=MARKERS[i % len(MARKERS)], color=colors[rule], mfc="none" if hollow else colors[rule],
                            ms=7, capsize=2, lw=0.8, label=None if rule in labelled else rule)
                labelled.add(rule)   # once per rule, filled or hollow (a study may run momentum only)
                if not hollow:   # name the point too: the legend's colours are close for ten rules
                    for x, y in zip(_pct(g["clean"]), _pct(g["worst"])):
                        if np.isfinite(x) and np.isfinite(y):
                            names.append(ax.annotate(rule, (x, y), xytext=(4, 3), textcoords="offset points",
                                                     fontsize=6, color=colors[rule]))
        ax.plot([0, 100], [0, 100], color="0.7", lw=0.8, ls="--")
        k, n = int(sub["k"].iloc[0]), int(round(sub["k"].iloc[0] / frac))
        ax.set_title(f"{100 * frac:.3g}% Byzantine ({k} of {n} workers)", fontsize=10)
        ax.set_xlim(max(lo, 0), 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("accuracy without attack, rule told f (%)")
        ax.set_ylabel(f"worst-case accuracy over {int(sub['attacks'].max())} attacks (%)")
        ax.grid(alpha=0.3)
    for ax in axes[len(fractions):]:
        ax.set_visible(False)
    handles, labels = [], []
    for ax in axes[:len(fractions)]:
        h, lab = ax.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=8,
               title="filled: no momentum; hollow: worker momentum 0.9", title_fontsize=8)
    fig.suptitle("Cost of resilience: what a rule costs without attack against what it keeps under the worst attack")
    drop_overlapping_texts(fig, names)   # clustered points: the legend names them
    return fig


def worst_vs_fraction(res):
    """Point 1's second view: worst-case accuracy against the Byzantine fraction, per rule (no momentum)."""
    fig = new_figure(6.8, 4.2)
    ax = fig.subplots()
    sub = res[res["momentum"] == "off"] if (res["momentum"] == "off").any() else res
    rules = sorted(sub["rule"].unique())
    colors = _colors(rules)
    for i, rule in enumerate(rules):
        g = sub[sub["rule"] == rule].sort_values("fraction")
        ax.errorbar(_pct(g["fraction"]), _pct(g["worst"]), yerr=_err(g["worst"], g["worst_ci"]), marker=MARKERS[i % len(MARKERS)],
                    color=colors[rule], label=rule, capsize=2, lw=1)
    ax.set_xlabel("Byzantine workers (% of n)")
    ax.set_ylabel("worst-case final accuracy over the attacks (%)")
    ax.set_title("Worst case over the attack catalogue, by Byzantine fraction (no momentum)", fontsize=10)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return fig


def scale_axes(panels):
    """Point 2: one panel per axis (samples, model size, minibatch): final accuracy per rule and
    threat against the axis value (log scale), 95% intervals. ``panels``: [(title, accuracy table)]."""
    fig = new_figure(4.4 * len(panels), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
    for ax, (title, acc) in zip(axes, panels):
        labels = sorted({f"{r}, {t}" for r, t in zip(acc["rule"], acc["threat"])})
        colors = _colors(labels)
        for label in labels:
            rule, threat = label.split(", ", 1)
            g = acc[(acc["rule"] == rule) & (acc["threat"] == threat)].sort_values("value")
            x = np.asarray(g["value"], dtype=float)
            ax.errorbar(x, _pct(g["accuracy"]), yerr=_err(g["accuracy"], g["accuracy_ci"]), marker="o",
                        ls="-" if threat == "none" else "--", color=colors[label], label=label, capsize=2)
        ax.set_xscale("log")
        ax.set_xlabel(title)
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title(f"by {title}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Does the cost (solid: no attack) and payoff (dashed: under attack) change with scale?")
    return fig


def _cell_label(part, threat, ranks):
    """One line per x position: the threat, the ranks and the part of the study it belongs to."""
    return f"{threat}\n{ranks} ranks\n{part.replace('point3-', '')}"


def placements(acc, timing):
    """Point 3: final accuracy (left) and milliseconds per step (right) per placement and ranks.
    A placement that did not run in a cell gets no bar there (not a zero one)."""
    cells = sorted({(p, t, r) for p, t, r in zip(acc["part"], acc["threat"], acc["ranks"])})
    fig = new_figure(max(10.0, 2.0 * len(cells)), 4.6)
    left, right = fig.subplots(1, 2)
    order = {"gather": 0, "sharded": 1, "per-shard": 2}
    places = sorted(acc["placement"].unique(), key=lambda pl: (order.get(pl, 3), pl))
    width = 0.8 / max(len(places), 1)
    colors = _colors(places)
    for j, place in enumerate(places):
        for ax, table, value, half, to_value, top in (
                (left, acc, "accuracy", "accuracy_ci", _pct, 100.0),
                (right, timing, "step_ms", "step_ms_ci", lambda v: np.asarray(v, dtype=float), np.inf)):
            x, heights, halves = [], [], []
            for i, (p, t, r) in enumerate(cells):
                g = table[(table["part"] == p) & (table["threat"] == t) & (table["ranks"] == r)
                          & (table["placement"] == place)]
                if len(g) and np.isfinite(to_value(g[value])).any():
                    x.append(i + j * width)
                    heights.append(np.nanmean(to_value(g[value])))
                    halves.append(np.nanmean(np.nan_to_num(to_value(g[half]))))
            if not x:
                continue
            ax.bar(x, heights, width, yerr=clipped_err(heights, halves, 0.0, top), color=colors[place], label=place,
                   capsize=2)
    for ax, ylabel in ((left, "final test accuracy (%)"), (right, "ms per step (this machine)")):
        category_ticks(ax, np.arange(len(cells)) + width * (len(places) - 1) / 2,
                      [_cell_label(p, t, r) for p, t, r in cells])
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    left.set_ylim(0, 100)
    legend_below(fig, [left, right], fontsize=8)
    left.set_title("Accuracy: exact sharded Krum, per-shard, gather", fontsize=10)
    right.set_title("Step time per placement", fontsize=10)
    return fig
