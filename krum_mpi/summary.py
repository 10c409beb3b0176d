"""A plain-text table of runs, for the terminal (the analysis package makes the real reports)."""
from __future__ import annotations

import numpy as np

from .run.results import read_run

COLUMNS = [("aggregator", "rule", "{}"), ("attack", "attack", "{}"), ("byzantine", "byz", "{}"),
           ("steps", "steps", "{}"), ("final_test_accuracy", "test err", "{:.3f}"),
           ("byzantine_selected_steps", "byz picked", "{}"), ("mean_step_s", "ms/step", "{:.2f}"),
           ("path", "file", "{}")]


def summarize_arrays(test_accuracy, selected, byzantine, step_s) -> dict:
    """The figures of one run that the table shows, from its recorded arrays."""
    evaluated = test_accuracy[~np.isnan(test_accuracy)]
    byz_ids = np.flatnonzero(byzantine)
    picked = np.isin(selected, byz_ids).any(axis=1).sum() if byz_ids.size else 0
    return {"final_test_accuracy": float(evaluated[-1]) if evaluated.size else float("nan"),
            "byzantine_selected_steps": int(picked),
            "mean_step_s": float(step_s.mean()) if step_s.size else float("nan")}


def summarize_file(path) -> dict:
    run = read_run(path)
    attrs, sel = run["attrs"], run["selection"]
    return {"path": str(path), "aggregator": attrs["aggregator"], "attack": attrs["attack"],
            "byzantine": attrs["n_byzantine"], "steps": int(attrs["steps_done"]),
            **summarize_arrays(run["metrics"]["test_accuracy"], sel["selected"], sel["byzantine"],
                               run["timing"]["step_s"])}


def format_table(rows) -> str:
    cells = [[title for _, title, _ in COLUMNS]]
    for row in rows:
        line = []
        for key, _, fmt in COLUMNS:
            value = row[key]
            if key == "final_test_accuracy":
                value = 1.0 - value   # the Krum paper plots test error
            if key == "mean_step_s":
                value = 1000 * value
            line.append(fmt.format(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)
