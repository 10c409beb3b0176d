"""A plain-text table of runs, for the terminal (the analysis package makes the real reports).

``krum-mpi summary`` also checks each file for what a run cannot have written (more steps than
planned, fewer rows than steps, "complete" before the last step, no loss, accuracies outside
[0, 1]) and flags the line: a damaged or hand-edited file should not read like a good run.
"""
from __future__ import annotations

import numpy as np

from .errors import KrumMPIError
from .run.results import read_run

STATUSES = ("running", "complete", "interrupted", "failed")
# (key, title, format); "data" and "check" are shown only when some row has them (``krum-mpi run``'s
# own one-line summary has neither).
COLUMNS = [("aggregator", "rule", "{}"), ("attack", "attack", "{}"), ("byzantine", "byz", "{}"),
           ("data", "data", "{}"), ("steps", "steps", "{}"), ("final_test_accuracy", "test err", "{:.3f}"),
           ("byzantine_selected_steps", "byz picked", "{}"), ("mean_step_s", "ms/step", "{:.2f}"),
           ("path", "file", "{}"), ("check", "check", "{}")]
OPTIONAL = ("data", "check")


def summarize_arrays(test_accuracy, selected, byzantine, step_s) -> dict:
    """The figures of one run that the table shows, from its recorded arrays."""
    evaluated = test_accuracy[~np.isnan(test_accuracy)]
    byz_ids = np.flatnonzero(byzantine)
    picked = np.isin(selected, byz_ids).any(axis=1).sum() if byz_ids.size else 0
    return {"final_test_accuracy": float(evaluated[-1]) if evaluated.size else float("nan"),
            "byzantine_selected_steps": int(picked),
            "mean_step_s": float(step_s.mean()) if step_s.size else float("nan")}


def data_label(cfg: dict) -> str:
    """The data a run trained on, as the table names it: the dataset, or 'synthetic' (the
    generator's shape), or the HDF5 file's name."""
    data = cfg.get("data", {})
    name = str(data.get("name", "?"))
    if name == "synthetic":
        return f"synthetic ({data.get('n_features', '?')} features)"
    if name == "hdf5" and data.get("path"):
        return f"hdf5 {str(data['path']).rsplit('/', 1)[-1]}"
    return name


def impossible(attrs: dict, metrics: dict) -> list[str]:
    """What in a results file no run writes: one short phrase per finding (empty: nothing found)."""
    found = []
    done, planned, status = attrs.get("steps_done"), attrs.get("steps"), attrs.get("status")
    if not isinstance(done, (int, np.integer)) or isinstance(done, bool):
        return [f"steps_done is {done!r}, not a step count"]
    if status not in STATUSES:
        found.append(f"unknown status {status!r}")
    if done < 0:
        found.append(f"negative step count {done}")
    if isinstance(planned, (int, np.integer)) and done > planned:
        found.append(f"{done} steps done of {planned} planned")
    if status == "complete" and isinstance(planned, (int, np.integer)) and done != planned:
        found.append(f"complete after {done} of {planned} steps")
    rows = {name: len(values) for name, values in metrics.items()}
    short = sorted(name for name, count in rows.items() if count < done)
    if short:
        found.append(f"{done} steps but {min(rows[n] for n in short)} rows ({', '.join(short)})")
    loss = metrics.get("loss")
    if loss is None:
        found.append("no loss recorded")
    elif done > 0 and not np.isfinite(loss[:done]).any():
        found.append("loss is NaN at every step")
    accuracy = metrics.get("test_accuracy")
    if accuracy is not None:
        seen = accuracy[:max(done, 0)][~np.isnan(accuracy[:max(done, 0)])]
        if ((seen < 0) | (seen > 1)).any():
            found.append("test accuracy outside [0, 1]")
    return found


def summarize_file(path) -> dict:
    """The table row of one results file; a file that cannot be read gives a row that says why."""
    try:
        run = read_run(path)
    except KrumMPIError as exc:
        return {"path": str(path), "check": f"UNREADABLE: {str(exc).removeprefix(f'{path}: ')}"}
    attrs, sel = run["attrs"], run["selection"]
    done = attrs.get("steps_done")
    flags = impossible(attrs, run["metrics"])
    k = max(int(done), 0) if isinstance(done, (int, np.integer)) else 0
    planned = attrs.get("steps", "?")
    row = {"path": str(path), "aggregator": attrs.get("aggregator", "?"), "attack": attrs.get("attack", "?"),
           "byzantine": attrs.get("n_byzantine", "?"), "data": data_label(attrs["config"]),
           "steps": f"{done}/{planned}" + ("" if attrs.get("status") == "complete" else f" {attrs.get('status')}"),
           "check": ("IMPOSSIBLE: " + "; ".join(flags)) if flags else "ok"}
    if "selected" in sel and "byzantine" in sel and "step_s" in run["timing"] and "test_accuracy" in run["metrics"]:
        row.update(summarize_arrays(run["metrics"]["test_accuracy"][:k], sel["selected"][:k], sel["byzantine"],
                                    run["timing"]["step_s"][:k]))
    return row


def flagged(rows) -> bool:
    """True when some row's check found a problem."""
    return any(row.get("check", "ok") != "ok" for row in rows)


def format_table(rows) -> str:
    columns = [c for c in COLUMNS if c[0] not in OPTIONAL or any(c[0] in row for row in rows)]
    cells = [[title for _, title, _ in columns]]
    for row in rows:
        line = []
        for key, _, fmt in columns:
            value = row.get(key)
            if value is None:
                line.append("-")
                continue
            if key == "final_test_accuracy":
                value = 1.0 - value   # the Krum paper plots test error
            if key == "mean_step_s":
                value = 1000 * value
            line.append(fmt.format(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)
