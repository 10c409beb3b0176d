"""Columns derived from the run table (rule and attack labels, Byzantine fraction, ranks) and the
keys that tell experiments apart."""
import math

import numpy as np
import pandas as pd

from .runtable import flatten

# Config keys that tell replicates apart rather than experiments.
REPLICATE_KEYS = ("run.seed", "run.name", "run.checkpoint_every")


def _label(runs, name_col, prefix, skip):
    """``name(opt=v, ...)`` with only the options that vary among runs of that name."""
    opts = [c for c in runs.columns if c.startswith(prefix) and c not in skip]
    labels = pd.Series(runs[name_col].astype(str).to_numpy(), index=runs.index, dtype=object)
    for name, sub in runs.groupby(name_col, dropna=False):
        # an option set in some runs and unset in others tells variants apart too (alie, alie(z=1.5))
        varying = [c for c in opts if sub[c].map(lambda v: "<unset>" if _isnan(v) else str(v)).nunique() > 1]
        for idx, row in sub.iterrows():
            parts = [f"{c[len(prefix):]}={row[c]}" for c in varying if not _isnan(row[c])]
            if parts:
                labels[idx] = f"{name}({', '.join(parts)})"
    return labels


def _isnan(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def fill_missing_defaults(runs):
    """Files written before a config key existed lack it: give it today's default in those rows.

    Otherwise a study that spans a new config key would split every experiment in two (key
    missing / key at its default). Only keys present in some files and with a known default are filled.
    """
    try:
        from ..config import DEFAULTS
    except ImportError:  # a reader without the training side
        return runs
    runs = runs.copy()
    for col, value in flatten(DEFAULTS).items():
        if value is None or col not in runs:
            continue
        missing = runs[col].isna()
        if missing.any() and not missing.all():
            present = runs[col].dropna().iloc[0]
            if isinstance(present, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # the column became float around the NaNs: keep one type
            runs[col] = runs[col].astype(object).where(~missing, value)
    return runs


def _varies(column):
    """More than one distinct value among the rows that have one."""
    return column.dropna().astype(str).nunique() > 1


def add_derived_columns(runs):
    """Add ``rule``, ``attack_label`` (``"none"`` without Byzantine workers), ``byz_fraction``, ``n_ranks``."""
    runs = fill_missing_defaults(runs)
    if "aggregator.name" not in runs:
        runs["aggregator.name"] = runs["aggregator"]
    if "attack.name" not in runs:
        runs["attack.name"] = runs["attack"]
    runs["rule"] = _label(runs, "aggregator.name", "aggregator.", {"aggregator.name", "aggregator.f"})
    attack = _label(runs, "attack.name", "attack.", {"attack.name"})
    n_byz = pd.to_numeric(runs["n_byzantine"], errors="coerce").fillna(0)
    runs["attack_label"] = attack.where(n_byz > 0, "none")
    runs["byz_fraction"] = n_byz / pd.to_numeric(runs["n_workers"], errors="coerce")
    runs["n_ranks"] = pd.to_numeric(runs["prov.n_ranks"], errors="coerce") if "prov.n_ranks" in runs else np.nan
    return runs


def experiment_keys(runs):
    """Columns that tell experiments apart: rule, attack, Byzantine fraction, then every other
    config key that varies in this study (except replicate keys such as the seed)."""
    keys = ["rule", "byz_fraction", "attack_label"]
    covered = {"aggregator.name", "attack.name", "workers.byzantine"}
    for col in runs.columns:
        is_cfg = "." in col and not col.startswith("prov.")
        if not is_cfg or col in REPLICATE_KEYS or col in covered:
            continue
        if col.startswith(("aggregator.", "attack.")) and col != "aggregator.f":
            continue  # already in the rule / attack labels
        if _varies(runs[col]):
            keys.append(col)
    if "n_ranks" in runs and runs["n_ranks"].nunique(dropna=False) > 1:
        keys.append("n_ranks")
    return keys
