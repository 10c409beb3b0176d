"""Figures of the protocol section: the tuning sensitivity (validation accuracy against the learning
rate, per rule) and the accuracy over steps of the cells that did not converge."""
import numpy as np

from .figures import _colors, _grid, new_figure

LR = "optimizer.lr"


def sensitivity(part: str, record: dict):
    """One panel per group of the tuning part without its rule (e.g. per momentum setting), one line per
    rule (and per value of its other tuned keys): mean final validation accuracy against the lr, the
    chosen point starred. ``record``: the part's entry of tuning.json."""
    panels = {}
    for choice in record["choices"]:
        rest = {k: v for k, v in choice["group"].items() if k != "aggregator.name"}
        label = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in rest.items()) or "all runs"
        panels.setdefault(label, []).append(choice)
    fig = new_figure()
    axes = _grid(fig, len(panels))
    rules = [c["group"].get("aggregator.name", "") for c in record["choices"]]
    colors = _colors(rules)
    for ax, (label, choices) in zip(axes, panels.items()):
        for choice in choices:
            rule = choice["group"].get("aggregator.name", "")
            lines = {}
            for entry in choice["sensitivity"]:
                other = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in entry["point"].items() if k != LR)
                lines.setdefault(other, []).append((entry["point"].get(LR, np.nan), entry["mean"]))
            for j, (other, points) in enumerate(sorted(lines.items())):
                points.sort()
                ax.plot([x for x, _ in points], [100 * y for _, y in points], marker="o", ms=4,
                        ls=("-", "--", ":", "-.")[j % 4], color=colors[rule],
                        label=rule + (f" ({other})" if other else ""))
            lr = choice["chosen"].get(LR)
            if lr is not None:
                ax.plot([lr], [100 * choice["score"]], marker="*", ms=14, color=colors[rule], mec="black", ls="none")
        if any(LR in e["point"] for c in choices for e in c["sensitivity"]):
            ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final validation accuracy, mean over seeds (%)")
        ax.set_title(f"{part}: {label}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Tuning without attack: validation accuracy against the learning rate (star: chosen)", fontsize=10)
    return fig


def cell_curves(cells, max_panels=9):
    """One panel per cell ([(title, [(seed, steps, accuracy), ...]), ...]), one line per seed, with
    the convergence window (the last 20% of the steps) shaded."""
    cells = cells[:max_panels]
    fig = new_figure()
    axes = _grid(fig, max(1, len(cells)))
    for ax, (title, window, runs) in zip(axes, cells):
        for seed, steps, acc in runs:
            keep = np.isfinite(acc)
            ax.plot(steps[keep], 100 * acc[keep], lw=1, label=f"seed {seed}")
        ax.axvspan(window[0], window[1], color="0.85", lw=0)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes[len(cells):]:
        ax.set_visible(False)
    fig.suptitle("Cells that did not converge: accuracy over steps (shaded: the window of the criterion)",
                 fontsize=10)
    return fig
