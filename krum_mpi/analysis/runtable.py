"""One results file -> one row of the run table: its attributes, flattened config and provenance.

``probe`` reads only attributes and dataset shapes (never the per-step data), so thousands of files
are probed quickly; a file that cannot be used raises ``Skip`` with the one-line reason. The
schema (version, per-step datasets) is the writer's: ``krum_mpi.run.results``.
"""
import json
from pathlib import Path

import h5py
import numpy as np

from ..run.results import METRICS as RESULT_METRICS
from ..run.results import LATER_TIMINGS, SCHEMA_VERSION, TIMINGS

METRICS = ("step",) + RESULT_METRICS
PHASES = TIMINGS[:-1] + LATER_TIMINGS   # every timing but step_s, the whole step (later ones: NaN in older files)
STEP_TIMINGS = TIMINGS + LATER_TIMINGS
QUICK_ATTRS = ("n_workers", "n_byzantine", "f", "aggregator", "attack", "seed", "steps")


def _attr(value):
    """An HDF5 attribute as a plain Python value (bytes -> str, NumPy scalar -> Python)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [_attr(v) for v in value.tolist()]
    return value


def _cell(value):
    """A config or provenance value as a hashable table cell (lists and dicts -> JSON text)."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return value


def flatten(tree, prefix=""):
    """Nested dict -> {"a.b": value}; lists stay whole (as one cell)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = _cell(value)
    return out


class Skip(Exception):
    """Internal: a file that cannot be used, with the one-line reason."""


def _open(path):
    try:
        if not h5py.is_hdf5(path):
            raise Skip("not an HDF5 file")
        return h5py.File(path, "r")
    except Skip:
        raise
    except OSError as exc:  # truncated, corrupt, locked by a writer, no permission
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Skip(f"cannot be read by HDF5 ({reason})") from None


# ---------------------------------------------------------------------------------------------
# One file -> one run-table row


def probe(path):
    """Read one run file's attributes into a run-table row (dict); ``Skip`` with the reason if unusable."""
    path = Path(path)
    with _open(path) as h5:
        attrs = {k: _attr(v) for k, v in h5.attrs.items()}
        if "schema_version" not in attrs:
            raise Skip("not a krum-mpi results file (no schema_version attribute)")
        if attrs["schema_version"] != SCHEMA_VERSION:
            raise Skip(f"schema_version {attrs['schema_version']}, this reader knows {SCHEMA_VERSION}: "
                        "use the krum-mpi version that wrote it")
        for name in ("config", "run_id", "status"):
            if name not in attrs:
                raise Skip(f"root attribute '{name}' missing")
        try:
            config = json.loads(attrs["config"])
            prov = json.loads(attrs.get("provenance") or "{}")
        except (TypeError, json.JSONDecodeError):
            raise Skip("config or provenance attribute is not valid JSON") from None
        if not isinstance(config, dict):
            raise Skip("config attribute is not a JSON object")
        lengths = {}
        for group, names in (("metrics", METRICS), ("timing", TIMINGS)):
            for name in names:
                key = f"{group}/{name}"
                if key not in h5 or not isinstance(h5[key], h5py.Dataset) or h5[key].ndim != 1:
                    raise Skip(f"dataset '{key}' missing or not 1-D")
                lengths[key] = h5[key].shape[0]
        if len(set(lengths.values())) > 1:
            raise Skip(f"per-step datasets differ in length ({min(lengths.values())} to "
                        f"{max(lengths.values())} rows)")
        steps_done = lengths["metrics/step"]
        has_selection = "selection/selected" in h5 and "selection/byzantine" in h5

    cfg = flatten(config)
    row = {
        "run_id": str(attrs["run_id"]),
        "file": str(path),
        "status": str(attrs["status"]),
        "created": str(attrs.get("created", "")),
        "steps_done": int(steps_done),
        "has_selection": bool(has_selection),
    }
    workers = config.get("workers", {}) if isinstance(config.get("workers"), dict) else {}
    fallback = {"n_workers": workers.get("n"), "n_byzantine": workers.get("byzantine"),
                "f": config.get("aggregator", {}).get("f"), "aggregator": cfg.get("aggregator.name"),
                "attack": cfg.get("attack.name"), "seed": cfg.get("run.seed"),
                "steps": cfg.get("run.steps")}
    for name in QUICK_ATTRS:
        row[name] = attrs.get(name, fallback[name])
    row.update(cfg)
    if isinstance(prov, dict):
        row.update({f"prov.{k}": v for k, v in flatten(prov).items()})
    return row


def probe_batch(paths):
    """Run-table rows of these files; a file that cannot be used gives {file, skip_reason}."""
    return [_probe_or_reason(p) for p in paths]


def _probe_or_reason(path):
    try:
        return probe(path)
    except Skip as exc:
        return {"file": str(path), "skip_reason": str(exc)}
    except Exception as exc:  # never fatal: a file we cannot parse is reported, not raised
        return {"file": str(path), "skip_reason": f"unreadable ({type(exc).__name__}: {exc})".splitlines()[0]}
