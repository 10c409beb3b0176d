"""The tuning stage of a study: hyperparameters chosen per rule on validation accuracy, without attack,
then used by the attacked parts.

    [parts.tune]                                  # a tuning part: its runs have no Byzantine worker ...
    base = { "data.validation_fraction" = 0.1 }   # ... and a validation split carved from the training rows
    sweep = { "aggregator.name" = ["average", "centered-clipping"], "run.seed" = [0, 1, 2, 3, 4] }
    [parts.tune.tune]                             # the grid, crossed with the part's sweep
    "optimizer.lr" = [0.01, 0.05, 0.1]            # every rule
    "aggregator.tau" = { "centered-clipping" = [1.0, 10.0, 100.0] }   # one rule's grid
    by = ["aggregator.name", "optimizer.momentum"]   # one choice per value of these (default: every
                                                     # key the part sweeps, but run.seed)
    [parts.point1-attack]
    tuned = "tune"                                # its runs take the chosen values

The choice, per group (the values of the ``by`` keys): the grid point with the highest mean final
validation accuracy over the seeds (``krum_mpi.analysis.protocol.tune``); a tie (equal means) goes to
the first in grid order (the keys in the order written, each key's values in the order written). It
is made once every run of the tuning part is complete, and recorded in ``STUDY/tuning.json`` with the
grid, every grid point's mean and per-seed scores (the sensitivity) and the rule of choice.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

from ..errors import ConfigError

TUNING_FILE = "tuning.json"
ALL_RULES = "*"
CRITERION = ("highest mean final validation accuracy over the seeds, runs without attack; a tie (equal "
             "means) goes to the first grid point in grid order")


@dataclass
class Tuning:
    grid: dict        # {dotted key: {rule or "*": [values]}}, in the order written
    by: list          # keys whose values make a group (one choice each)

    def points(self, rule: str) -> list:
        """The grid points of ``rule`` as [{key: value}, ...], in grid order (a cartesian product)."""
        axes = [(key, values.get(rule, values.get(ALL_RULES))) for key, values in self.grid.items()]
        axes = [(key, values) for key, values in axes if values]
        return [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*(v for _, v in axes))]

    def to_dict(self) -> dict:
        return {"grid": self.grid, "by": self.by}


def load_tune(table, path, part: str, check_key) -> Tuning:
    """``[parts.<part>.tune]`` -> Tuning; ConfigError (one line) naming what is wrong."""
    where = f"parts.{part}.tune"
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{path}: {where} must be a table of grids, like {{ \"optimizer.lr\" = [0.01, 0.1] }}")
    grid, by = {}, None
    for key, value in table.items():
        if key == "by":
            by = value
        elif "." in key:
            grid[key] = value
        elif isinstance(value, dict):          # unquoted dotted keys: TOML nests them one level
            grid.update({f"{key}.{name}": v for name, v in value.items()})
        else:
            raise ConfigError(f"{path}: {where}.{key}: give a run config key section.key with its grid, or by")
    if not grid:
        raise ConfigError(f"{path}: {where} has no grid: give at least one key, like \"optimizer.lr\" = [0.01, 0.1]")
    for key, values in grid.items():
        check_key(key, path, where=where)
        if key.startswith("launch.") or key == "run.seed":
            raise ConfigError(f"{path}: {where} tunes {key}: tune run config keys (not launch settings or the seed)")
        grid[key] = _per_rule(values, path, f"{where}.{key}")
    if by is not None:
        if not isinstance(by, list) or not by or not all(isinstance(k, str) for k in by):
            raise ConfigError(f"{path}: {where}.by must be a list of run config keys, like [\"aggregator.name\"]")
        for key in by:
            check_key(key, path, where=f"{where}.by")
            if key in grid or key == "run.seed" or key.startswith("launch."):
                raise ConfigError(f"{path}: {where}.by names {key}: a group is told apart by keys that are "
                                  "neither tuned nor the seed nor launch settings")
    return Tuning(grid, by)


def _per_rule(values, path, where) -> dict:
    if isinstance(values, list):
        values = {ALL_RULES: values}
    if not isinstance(values, dict) or not values:
        raise ConfigError(f"{path}: {where} must be a list of values or a table {{ rule = [values] }}")
    for rule, grid in values.items():
        if not isinstance(grid, list) or not grid or any(isinstance(v, (dict, list)) for v in grid):
            raise ConfigError(f"{path}: {where}{'' if rule == ALL_RULES else '.' + rule} = {grid!r} must be a "
                              "non-empty list of plain values")
        if len({json.dumps(v) for v in grid}) != len(grid):
            raise ConfigError(f"{path}: {where} lists a value twice: give each grid value once")
    return values


def check_parts(parts, path) -> None:
    """Across parts: ``tuned`` names a tuning part; tuned keys are neither swept by the tuning part nor
    set or swept by a part that takes them; ``by`` defaults to the tuning part's swept keys."""
    tuning = {p.name: p for p in parts if p.tune is not None}
    for part in parts:
        swept = {k for _, values in part.axes for a in values for k in a}
        if part.tune is not None:
            for key in part.tune.grid:
                if key in swept:
                    raise ConfigError(f"{path}: part {part.name} both sweeps and tunes {key}: keep it in its tune grid")
            if part.tune.by is None:
                part.tune.by = [k for k in dict.fromkeys(k for _, values in part.axes for a in values for k in a)
                                if k != "run.seed" and not k.startswith("launch.")]
            if part.tuned:
                raise ConfigError(f"{path}: part {part.name} is a tuning part and cannot take tuned values itself")
        if not part.tuned:
            continue
        if part.tuned not in tuning:
            raise ConfigError(f"{path}: parts.{part.name}.tuned = {part.tuned!r} names no tuning part: "
                              f"tuning parts are {', '.join(tuning) or 'none (give a part a [tune] table)'}")
        for key in tuning[part.tuned].tune.grid:
            if key in swept or key in part.base:
                raise ConfigError(f"{path}: part {part.name} sets {key}, which it takes from tuning part "
                                  f"{part.tuned}: remove it from the part")


def group_key(cfg: dict, by) -> str:
    """The group of a resolved config: its values of the ``by`` keys, as canonical JSON."""
    return json.dumps([cfg.get(k.split(".", 1)[0], {}).get(k.split(".", 1)[1]) for k in by])


def group_words(cfg: dict, by) -> str:
    return " ".join(f"{k}={cfg.get(k.split('.', 1)[0], {}).get(k.split('.', 1)[1])}" for k in by)


def final_validation_accuracy(path) -> float:
    """The last finite validation accuracy of a results file (NaN when it recorded none)."""
    import h5py
    import numpy as np

    with h5py.File(path, "r") as f:
        if "metrics/validation_accuracy" not in f:
            return float("nan")
        acc = f["metrics/validation_accuracy"][()]
    finite = acc[np.isfinite(acc)]
    return float(finite[-1]) if finite.size else float("nan")


def choose(spec, plan, folder, record_choice: bool = True) -> tuple[dict, dict]:
    """(choices, waiting): choices = {tuning part: {group key: {key: chosen value}}} for every tuning
    part whose runs are all complete (written to ``STUDY/tuning.json`` when ``record_choice``);
    waiting = {tuning part: why not}."""
    from ..analysis.protocol import tune
    from .folder import is_complete

    choices, waiting, record = {}, {}, {}
    for part in (p for p in spec.parts if p.tune is not None):
        runs = [r for r in plan.runs if r.labels.get("part") == part.name]
        missing = [r for r in runs if not is_complete(folder.result(r.id))]
        if missing or not runs:
            failed = sum(folder.exit_status(r.id) not in (None, 0) for r in missing)
            waiting[part.name] = (f"{len(runs) - len(missing)} of {len(runs)} of its runs are complete"
                                  + (f", {failed} failed" if failed else ""))
            continue
        groups = {}
        for run in runs:
            group = groups.setdefault(group_key(run.config, part.tune.by), {
                "group": {k: run.config[k.split(".")[0]].get(k.split(".", 1)[1]) for k in part.tune.by},
                "rule": run.config["aggregator"]["name"], "scores": {}})
            point = {k: run.config[k.split(".")[0]].get(k.split(".", 1)[1]) for k in part.tune.points(group["rule"])[0]}
            scores = group["scores"].setdefault(json.dumps(point), {})
            scores[run.config["run"]["seed"]] = final_validation_accuracy(folder.result(run.id))
        choices[part.name], entries = {}, []
        for key, group in groups.items():
            order = [json.dumps(p) for p in part.tune.points(group["rule"])]
            by_point = {p: group["scores"][p] for p in order if p in group["scores"]}
            try:
                choice = tune(by_point)
            except ValueError:
                raise ConfigError(f"tuning part {part.name}: no run of group {json.dumps(group['group'])} recorded "
                                  "a validation accuracy: set data.validation_fraction > 0 in the part") from None
            chosen = json.loads(choice.value)
            choices[part.name][key] = chosen
            entries.append({"group": group["group"], "chosen": chosen, "score": choice.score,
                            "sensitivity": [{"point": json.loads(p), "mean": choice.table[p],
                                             "by_seed": {str(s): v for s, v in sorted(by_point[p].items())}}
                                            for p in by_point]})
        record[part.name] = {**part.tune.to_dict(), "criterion": CRITERION, "runs": len(runs), "choices": entries}
    if record and record_choice:
        write_record(folder, record)
    return choices, waiting


def at_grid_edge(entry: dict) -> list:
    """The choices of one tuning part that sit on the edge of a numeric grid of three or more values,
    one line each: the best value may lie beyond the grid, so the rule is not tuned there (widen it)."""
    lines = []
    for choice in entry["choices"]:
        rule = choice["group"].get("aggregator.name", ALL_RULES)
        for key, value in choice["chosen"].items():
            by_rule = entry["grid"].get(key, {})
            values = by_rule.get(rule, by_rule.get(ALL_RULES, []))
            numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if len(numbers) >= 3 and len(numbers) == len(values) and value in (min(numbers), max(numbers)):
                side = "largest" if value == max(numbers) else "smallest"
                group = ", ".join(f"{k} = {v}" for k, v in choice["group"].items())
                lines.append(f"{group}: {key} = {value:g} is the {side} value of its grid "
                             f"({', '.join(f'{v:g}' for v in numbers)})")
    return lines


def write_record(folder, record: dict) -> None:
    """``STUDY/tuning.json``: every tuning part's grid, groups, choices and sensitivity (rewritten
    whenever the choice is made again, so it always says what the planned runs use)."""
    import os

    path = folder.path / TUNING_FILE
    text = json.dumps({"parts": record}, indent=1, allow_nan=True) + "\n"
    if path.is_file() and path.read_text() == text:
        return
    folder.path.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_record(study_dir) -> dict:
    """The ``tuning.json`` of a study folder ({} when there is none)."""
    from pathlib import Path

    path = Path(study_dir) / TUNING_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("parts", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}
