"""Point 2's cells as the data sees them: how many training rows each cell's set holds, how many
samples its workers drew, the epochs that makes, and whether its runs converged.

    runs = with_data_columns(runs)     # + train_rows, samples_drawn, drawn_per_worker, epochs, worker_epochs
    table = cell_table(runs)           # one row per part, data, model, batch, steps, rule and threat

Every worker draws ``workers.batch_size`` samples at every step, Byzantine workers included (their
gradients are replaced after it), so a run draws steps x n x b samples and each worker steps x b
from its shard. With the ``iid`` split the shards differ by at most one row, so the worker with the
largest shard (ceil(train_rows / n) rows) draws the fewest epochs of its own rows: ``worker_epochs``
is that smallest figure (NaN for the other splits, whose shard sizes the table does not know).
Draws are uniform with replacement (docs/data.md), so one epoch reaches about 1 - 1/e = 63% of the
distinct rows, two epochs 86%. Convergence is the protocol's criterion
(``convergence.run_converged``: over the last 20% of the steps the validation accuracy, else the
test accuracy, moves by less than half a point).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import KrumMPIError
from ..run.results import read_run
from .convergence import run_converged

CELL_COLUMNS = ["part", "data", "train_rows", "n_params", "batch", "steps", "rule", "threat", "seeds",
                "samples_drawn", "drawn_per_worker", "epochs", "worker_epochs", "converged", "runs",
                "accuracy_change_max", "judged_on"]


def _number(runs, column, default=np.nan):
    if column not in runs:
        return pd.Series(default, index=runs.index, dtype=float)
    return pd.to_numeric(runs[column], errors="coerce").astype(float)


def with_data_columns(runs):
    """``runs`` with ``train_rows`` (the rows workers are sharded from: the dataset's provenance, else
    ``data.n_train`` for synthetic data without a validation split), ``samples_drawn`` (steps x n x b),
    ``drawn_per_worker`` (steps x b), ``epochs`` (samples_drawn / train_rows) and ``worker_epochs``
    (drawn_per_worker / ceil(train_rows / n) under the iid split, else NaN)."""
    runs = runs.copy()
    rows = _number(runs, "prov.dataset.train_rows")
    held_out = _number(runs, "data.validation_fraction", 0.0).fillna(0.0)
    synthetic = runs["data.name"].astype(str).eq("synthetic") & held_out.eq(0)
    rows = rows.where(rows.notna() | ~synthetic, _number(runs, "data.n_train"))
    steps, n, b = _number(runs, "steps"), _number(runs, "n_workers"), _number(runs, "workers.batch_size")
    runs["train_rows"] = rows
    runs["samples_drawn"] = steps * n * b
    runs["drawn_per_worker"] = steps * b
    runs["epochs"] = runs["samples_drawn"] / rows
    split = runs["data.split"].astype(str) if "data.split" in runs else pd.Series("iid", index=runs.index)
    largest_shard = np.ceil(rows / n)
    runs["worker_epochs"] = (runs["drawn_per_worker"] / largest_shard).where(split.eq("iid"))
    return runs


def run_convergence(runs):
    """``runs`` with ``converged`` (bool), ``accuracy_change`` (max - min over the window) and
    ``judged_on`` (validation / test) from each run's file, by the protocol's criterion
    (``convergence.run_converged``); a file that cannot be read is not converged and says why."""
    runs = runs.copy()
    verdicts, changes, judged = [], [], []
    for path in runs["file"]:
        try:
            run = read_run(path)
            check = run_converged(run)
        except (KrumMPIError, KeyError) as exc:
            verdicts.append(False), changes.append(math.nan), judged.append(f"unreadable: {exc}")
            continue
        verdicts.append(check.converged), changes.append(check.change)
        judged.append("validation" if "validation_accuracy" in run["metrics"] else "test")
    runs["converged"], runs["accuracy_change"], runs["judged_on"] = verdicts, changes, judged
    return runs


def _data_label(runs):
    name = runs["data.name"].astype(str)
    path = runs["data.path"].astype(str) if "data.path" in runs else pd.Series("", index=runs.index)
    gen = runs["data.generator"].astype(str) if "data.generator" in runs else pd.Series("", index=runs.index)
    return [f"{n} ({g})" if n == "synthetic" else (f"{n} ({p})" if p not in ("", "nan") else n)
            for n, p, g in zip(name, path, gen)]


def cell_table(runs):
    """One row per cell of point 2 (part, data, training rows, model size, batch, steps, rule,
    threat): seeds, samples drawn per run and per worker, epochs, and how many runs converged.
    ``runs`` needs ``rule`` and ``threat`` (``review_tables.threat_frame``) and the run files."""
    if not len(runs):
        return pd.DataFrame(columns=CELL_COLUMNS)
    runs = run_convergence(with_data_columns(runs))
    runs["data"] = _data_label(runs)
    runs["n_params"] = _number(runs, "prov.n_params")
    runs["batch"] = _number(runs, "workers.batch_size")
    keys = ["run.name", "data", "train_rows", "n_params", "batch", "steps", "rule", "threat"]
    rows = []
    for values, g in runs.groupby(keys, sort=True, dropna=False):
        cell = dict(zip(["part"] + keys[1:], values))
        rows.append({**cell, "seeds": int(g["seed"].nunique()), "samples_drawn": float(g["samples_drawn"].max()),
                     "drawn_per_worker": float(g["drawn_per_worker"].max()), "epochs": float(g["epochs"].min()),
                     "worker_epochs": float(g["worker_epochs"].min()),
                     "converged": int(g["converged"].sum()), "runs": len(g),
                     "accuracy_change_max": float(g["accuracy_change"].max()),
                     "judged_on": ", ".join(sorted(set(g["judged_on"])))})
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def _count(v):
    return "?" if not np.isfinite(v) else f"{v:,.0f}"


def _epochs(v):
    return "?" if not np.isfinite(v) else (f"{v:.3g}" if v < 100 else f"{v:,.0f}")


def shown(table):
    """The cell table as the report prints it (numbers with thousands separators, converged k/m)."""
    return pd.DataFrame({
        "part": table["part"], "data": table["data"], "training rows": table["train_rows"].map(_count),
        "d": table["n_params"].map(lambda v: "?" if not np.isfinite(v) else f"{v:.3g}"),
        "batch": table["batch"].map(_count), "steps": table["steps"].map(_count), "rule": table["rule"],
        "threat": table["threat"], "seeds": table["seeds"], "samples drawn": table["samples_drawn"].map(_count),
        "epochs": table["epochs"].map(_epochs), "epochs per worker (min)": table["worker_epochs"].map(_epochs),
        "converged": [f"{c}/{r}" for c, r in zip(table["converged"], table["runs"])],
        "max change (pp)": table["accuracy_change_max"].map(lambda v: "-" if not np.isfinite(v) else f"{100 * v:.3g}"),
    })


def flags(table, large=1e6):
    """What the cells leave out, one line each: no cell of >= ``large`` training rows drawn for at
    least one epoch (by every worker of its shard where the split says so, else of the whole set);
    cells whose runs did not all converge."""
    out = []
    reach = table["worker_epochs"].fillna(table["epochs"])
    big = table[table["train_rows"] >= large]
    if not (reach[big.index] >= 1).any():
        out.append(f"no point-2 cell draws one epoch of a set of >= {large:.0e} training rows: the effect of "
                   "data size beyond the samples drawn is not measured.")
    short = table[(table["train_rows"] >= large) & (reach < 1)]
    for r, epochs in zip(short.itertuples(), reach[short.index]):
        out.append(f"{r.part} on {r.train_rows:,.0f} rows ({r.rule}, {r.threat}) draws {epochs:.2g} epochs "
                   "(the fewest of any worker's shard): most rows are never drawn.")
    for r in table[table["converged"] < table["runs"]].itertuples():
        out.append(f"{r.part}, {r.data}, d = {r.n_params:.3g}, {r.rule}, {r.threat}: {r.converged} of {r.runs} runs "
                   f"converged by the protocol's criterion (largest change {100 * r.accuracy_change_max:.2f} points "
                   f"over the last 20% of the steps, on {r.judged_on} accuracy).")
    return out


def section(page, runs, table_dir=None):
    """Point 2's cell table in a review report: a heading, the table (saved as ``point2_cells.csv``
    in ``table_dir``) and its flags. ``runs``: the run table of the point-2 parts, ``threat`` added
    (``review_tables.threat_frame``). Returns the table."""
    table = cell_table(runs)
    page.rep.h(3, "Samples drawn, epochs and convergence per cell")
    page.rep.p("Every worker draws its minibatch from its own shard at every step (with replacement), so a "
               "run draws steps x n x b samples; epochs = samples drawn / training rows (validation rows "
               "excluded), and per worker = steps x b / its shard's rows (the largest shard: the fewest epochs). "
               "Converged: runs meeting the protocol's criterion (accuracy moves by < 0.5 points over the "
               "last 20% of the steps).")
    page.rep.table(shown(table))
    if table_dir is not None and len(table):
        table.to_csv(table_dir / "point2_cells.csv", index=False)
    for line in flags(table):
        page.flag(line)
    return table
