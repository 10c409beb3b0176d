"""A plain-text table of runs, for the terminal (the analysis package makes the real reports)."""
from __future__ import annotations

import numpy as np

from .results import read_run

COLUMNS = [("aggregator", "rule", "{}"), ("attack", "attack", "{}"), ("byzantine", "byz", "{}"),
           ("steps", "steps", "{}"), ("final_test_accuracy", "test err", "{:.3f}"),
           ("byzantine_selected_steps", "byz picked", "{}"), ("mean_step_s", "ms/step", "{:.2f}"),
           ("path", "file", "{}")]


def summarize_file(path) -> dict:
    run = read_run(path)
    attrs, sel = run["attrs"], run["selection"]
    acc = run["metrics"]["test_accuracy"]
    evaluated = acc[~np.isnan(acc)]
    byz_ids = np.flatnonzero(sel["byzantine"])
    picked = np.isin(sel["selected"], byz_ids).any(axis=1).sum() if byz_ids.size else 0
    step_s = run["timing"]["step_s"]
    return {"path": str(path), "aggregator": attrs["aggregator"], "attack": attrs["attack"],
            "byzantine": attrs["n_byzantine"], "steps": int(attrs["steps_done"]),
            "final_test_accuracy": float(evaluated[-1]) if evaluated.size else float("nan"),
            "byzantine_selected_steps": int(picked),
            "mean_step_s": float(step_s.mean()) if step_s.size else float("nan")}


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
