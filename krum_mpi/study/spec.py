"""Study specs: a base run config, sweep axes, launch settings and exclusions, in TOML or YAML.

    [study]
    name = "review-fractions"         # the study folder is studies/<name> unless `dir` is given
    base = "../../configs/x.toml"     # a run config file (relative to this spec), or a [base] table
    profile = "example-cluster"       # site profile used by `study submit` (hpc/profiles/<name>.toml)

    [base]                            # inline base run config (instead of study.base)
    run.steps = 100
    workers.n = 200

    [launch]                          # how each run is launched (any key may also be swept)
    ranks = 4                         # MPI ranks per run
    nodes = 0                         # SLURM nodes per run (0: let SLURM place the ranks)
    gpus = 0                          # GPUs per node (SLURM)
    time = "00:10:00"                 # time limit of one run (SLURM, and --local)
    group = 1                         # runs per SLURM array task (batch small runs together)

    [sweep]                           # axes: every combination is a run (a cartesian product)
    "aggregator.name" = ["average", "krum"]
    "workers.byzantine" = [0, 2, 5]
    scale = [{ "launch.ranks" = 1, "workers.n" = 8 }, { "launch.ranks" = 2, "workers.n" = 16 }]

    [[exclude]]                       # drop runs matching every key given (a list means any of)
    "aggregator.name" = "average"
    "workers.byzantine" = [2, 5]

An axis named by a dotted key sweeps that key; an axis whose values are tables (like ``scale``
above) sets several keys together, so ranks and workers can grow in step (weak scaling). Keys are
``launch.*`` or run config keys (``section.key``, checked against ``krum_mpi.config.DEFAULTS``).
Unquoted dotted keys (``aggregator.name = [...]``) work too: TOML nests them and we flatten.

A study of several grids (a review: fractions x rules x attacks; sample and model sizes; placements x
ranks) puts each grid in a part instead of the top-level ``[sweep]``/``[[exclude]]``:

    [parts.point1-fractions]          # a part: its own grid; the study is the union of its parts
    base = { "workers.n" = 40 }       # overrides of the study's base config, for this part's runs
    launch = { ranks = 1 }            # overrides of the study's [launch]
    sweep = { "aggregator.name" = ["average", "krum"] }
    exclude = [{ "aggregator.name" = "average", "workers.byzantine" = 2 }]

Each run of a part gets ``run.name = "<part>"`` (unless the part's base sets it), so its results file
records the part and a report can pick a part's runs; the plan labels each run with ``part``.
A part with a ``tune`` table is a tuning stage, and a part with ``tuned = "<that part>"`` takes its
chosen values (``study.tuning``). ``study.blas_coretype`` pins the BLAS kernel of every run
(``study.kernel``; default: the one the study's first runs recorded).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from ..errors import ConfigError
from . import tuning

SPEC_SECTIONS = ("study", "base", "launch", "sweep", "exclude", "bench", "parts")
STUDY_KEYS = ("name", "description", "base", "profile", "dir", "jobs", "blas_coretype")
PART_KEYS = ("base", "launch", "sweep", "exclude", "tune", "tuned")

# launch keys, their defaults, and what a value must be
LAUNCH_DEFAULTS = {"ranks": 1, "nodes": 0, "gpus": 0, "time": "00:30:00", "group": 1}
LAUNCH_MINIMUM = {"ranks": 1, "nodes": 0, "gpus": 0, "group": 1}


@dataclass
class Part:
    """One grid of a study: its runs are the study's base plus ``base``, and its sweep's combinations."""

    name: str                         # "" for the one grid of a spec without [parts]
    base: dict                        # {dotted key: value}: overrides of the study's base config
    launch: dict                      # launch settings of this part's runs
    axes: list                        # [(axis name, [ {dotted key: value}, ... ]), ...]
    exclude: list                     # [{dotted key: [allowed values]}, ...]
    tune: object = None               # a tuning part's grid (study.tuning.Tuning), else None
    tuned: str = ""                   # the tuning part whose chosen values this part's runs take

    def combinations(self):
        """Every {dotted key: value} assignment of the sweep (the cartesian product, in spec order)."""
        for combo in itertools.product(*(values for _, values in self.axes)):
            merged = {}
            for part in combo:
                merged.update(part)
            yield merged


@dataclass
class Spec:
    path: Path
    name: str
    base: dict                        # the raw base run config (not yet validated)
    base_source: str                  # where the base came from (a file, or "inline")
    launch: dict                      # launch defaults of this study
    axes: list                        # [(axis name, [ {dotted key: value}, ... ]), ...]
    exclude: list = field(default_factory=list)   # [{dotted key: [allowed values]}, ...]
    profile: str = ""
    dir: str = ""
    description: str = ""
    bench: dict | None = None         # a benchmark job instead of training runs (see _load_bench)
    parts: list = field(default_factory=list)     # [Part, ...]: the grids; one unnamed part without [parts]
    jobs: int = 1                     # runs at a time of `study run` here (study.jobs; --jobs overrides)
    blas_coretype: str = ""           # OPENBLAS_CORETYPE of every run (study.blas_coretype; "" : the first run's)

    def combinations(self):
        """Every {dotted key: value} assignment of the top-level sweep (a spec without [parts])."""
        return Part("", {}, self.launch, self.axes, self.exclude).combinations()


def load_spec(path) -> Spec:
    """Read and check a study spec; raise ConfigError naming the first problem."""
    path = Path(path)
    raw = config.load_file(path)   # the same safe TOML/YAML reader as run configs
    for section in raw:
        if section not in SPEC_SECTIONS:
            raise ConfigError(f"{path}: unknown study spec section [{section}]: use {', '.join(SPEC_SECTIONS)}")
    study = _table(raw, "study", path)
    for key in study:
        if key not in STUDY_KEYS:
            raise ConfigError(f"{path}: unknown key study.{key}: known keys are {', '.join(STUDY_KEYS)}")

    if "bench" in raw:
        return _load_bench(path, raw, study)
    if "base" in study and "base" in raw:
        raise ConfigError(f"{path}: give the base run config either as study.base (a file) or as [base], not both")
    if "base" in study:
        if not isinstance(study["base"], str):
            raise ConfigError(f"{path}: study.base must be the path of a run config file")
        base_file = (path.parent / study["base"]).resolve()
        base = config.load_file(base_file)
        base_source = str(study["base"])
    else:
        base = _table(raw, "base", path)
        base_source = "inline"
    for key in _flatten(base):   # a typo in the base would otherwise fail every run alike
        check_key(key, path, where="the base config")

    launch = dict(LAUNCH_DEFAULTS)
    for key, value in _flatten(_table(raw, "launch", path)).items():
        launch[key] = check_launch_value(key, value, path)
    jobs = study.get("jobs", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"{path}: study.jobs = {jobs!r} must be an integer >= 1 (runs at a time here)")
    coretype = study.get("blas_coretype", "")
    if not isinstance(coretype, str) or not all(c.isalnum() or c in "_-" for c in coretype):
        raise ConfigError(f"{path}: study.blas_coretype = {coretype!r} must be an OpenBLAS core type name, "
                          "like \"Haswell\" (see provenance blas_kernel of a run)")

    if "parts" in raw:
        for section in ("sweep", "exclude"):
            if section in raw:
                raise ConfigError(f"{path}: a spec with [parts] sweeps in each part: move [{section}] into "
                                  "the parts (parts.<name>." + section + ")")
        parts = _load_parts(raw["parts"], launch, path)
    else:
        axes = _load_axes(_table(raw, "sweep", path), path, "")
        parts = [Part("", {}, launch, axes, _load_exclude(raw.get("exclude", []), path, ""))]
    first = parts[0]
    return Spec(path=path, name=_study_name(study, path), base=base, base_source=base_source,
                launch=launch, axes=first.axes if len(parts) == 1 and not first.name else [],
                exclude=first.exclude if len(parts) == 1 and not first.name else [],
                profile=str(study.get("profile", "")), dir=str(study.get("dir", "")),
                description=str(study.get("description", "")), parts=parts, jobs=jobs,
                blas_coretype=coretype)


def _load_parts(raw_parts, launch: dict, path) -> list:
    """[parts.<name>] tables -> [Part, ...], each checked like a whole spec's grid."""
    if not isinstance(raw_parts, dict) or not raw_parts:
        raise ConfigError(f"{path}: [parts] must hold at least one [parts.<name>] table")
    parts = []
    for name, body in raw_parts.items():
        where = f"part {name}"
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ConfigError(f"{path}: part name {name!r} must be a word of letters, digits, - _ .")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: parts.{name} must be a table with base, launch, sweep, exclude")
        for key in body:
            if key not in PART_KEYS:
                raise ConfigError(f"{path}: unknown key parts.{name}.{key}: known keys are {', '.join(PART_KEYS)}")
        base = _flatten(_table(body, "base", path))
        for key in base:
            if key.startswith("launch."):
                raise ConfigError(f"{path}: parts.{name}.base sets {key}: put launch settings in parts.{name}.launch")
            check_key(key, path, where=f"parts.{name}.base")
        part_launch = dict(launch)
        for key, value in _flatten(_table(body, "launch", path)).items():
            part_launch[key] = check_launch_value(key, value, path)
        axes = _load_axes(_table(body, "sweep", path), path, where)
        exclude = _load_exclude(body.get("exclude", []), path, where)
        tune = tuning.load_tune(body["tune"], path, name, check_key) if "tune" in body else None
        tuned = body.get("tuned", "")
        if not isinstance(tuned, str):
            raise ConfigError(f"{path}: parts.{name}.tuned must be the name of a tuning part")
        parts.append(Part(name, base, part_launch, axes, exclude, tune, tuned))
    tuning.check_parts(parts, path)
    return parts


def _load_axes(sweep: dict, path, where: str) -> list:
    axes, seen = [], {}
    for name, values in _flatten(sweep).items():
        axes.append((name, _axis_values(name, values, path)))
        for assignment in axes[-1][1]:
            for key in assignment:
                if seen.setdefault(key, name) != name:
                    raise ConfigError(f"{path}: sweep axes {seen[key]!r} and {name!r}{' of ' + where if where else ''}"
                                      f" both set {key}: merge them into one axis")
    return axes


def _load_exclude(exclude, path, where: str) -> list:
    of = f" of {where}" if where else ""
    if isinstance(exclude, dict):
        exclude = [exclude]
    if not isinstance(exclude, list) or not all(isinstance(e, dict) for e in exclude):
        raise ConfigError(f"{path}: [[exclude]]{of} must be a list of tables, "
                          'like {"aggregator.name" = "average"}')
    rules = []
    for rule in exclude:
        flat = _flatten(rule)
        if not flat:
            raise ConfigError(f"{path}: an empty [[exclude]] table{of} would drop every run: give keys to match")
        for key in flat:
            check_key(key, path, where=f"[[exclude]]{of}")
        rules.append({k: v if isinstance(v, list) else [v] for k, v in flat.items()})
    return rules


def _load_bench(path, raw: dict, study: dict) -> Spec:
    """A benchmark job: ``[bench] args = ["aggregate", "--device", "gpu"]``, ``gpus``, ``time``.

    It runs ``krum-mpi bench ARGS`` once, in the study folder, on one node: no sweep, no MPI.
    """
    for section in ("base", "launch", "sweep", "exclude", "parts"):
        if section in raw:
            raise ConfigError(f"{path}: a [bench] spec runs one benchmark job: remove [{section}]")
    bench = {"args": None, "gpus": 0, "time": "00:30:00"}
    for key, value in _table(raw, "bench", path).items():
        if key not in bench:
            raise ConfigError(f"{path}: unknown key bench.{key}: known keys are args, gpus, time")
        bench[key] = value
    args = bench["args"]
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"{path}: bench.args must be the arguments of krum-mpi bench, e.g. "
                          '["aggregate", "--device", "gpu"]')
    bench["gpus"] = check_launch_value("gpus", bench["gpus"], path)
    bench["time"] = check_launch_value("time", bench["time"], path)
    return Spec(path=path, name=_study_name(study, path), base={}, base_source="",
                launch=dict(LAUNCH_DEFAULTS), axes=[],
                profile=str(study.get("profile", "")), dir=str(study.get("dir", "")),
                description=str(study.get("description", "")), bench=bench)


def _study_name(study: dict, path: Path) -> str:
    """study.name, else the spec's file name (or its folder's, for jobs/<name>/study.toml)."""
    name = study.get("name", path.parent.resolve().name if path.stem in ("study", "spec") else path.stem)
    plain = isinstance(name, str) and name and not name.startswith(".")   # not "..": a folder of its own
    if not plain or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"{path}: study.name = {name!r} must be a plain folder name: letters, digits, - _ . "
                          "(not starting with .)")
    return name


def check_key(key: str, path, where: str) -> None:
    """A sweep or exclusion key must be launch.<key> or a run config key; raise ConfigError if not."""
    section, _, name = key.partition(".")
    if section == "launch":
        if name not in LAUNCH_DEFAULTS:
            raise ConfigError(f"{path}: unknown key {key} in {where}: launch keys are "
                              f"{', '.join(LAUNCH_DEFAULTS)}")
        return
    if section not in config.DEFAULTS or not name or "." in name:
        raise ConfigError(f"{path}: unknown key {key} in {where}: use launch.<key> or a run config "
                          f"key section.key with section one of {', '.join(config.DEFAULTS)}")
    if name not in config.DEFAULTS[section] and section not in config.OPEN_SECTIONS:
        raise ConfigError(f"{path}: unknown key {key} in {where}: known keys of [{section}] are "
                          f"{', '.join(config.DEFAULTS[section])}")


def check_launch_value(key: str, value, path):
    if key not in LAUNCH_DEFAULTS:
        raise ConfigError(f"{path}: unknown key launch.{key}: launch keys are {', '.join(LAUNCH_DEFAULTS)}")
    if key == "time":
        return format_time(parse_time(value, path))
    if isinstance(value, bool) or not isinstance(value, int) or value < LAUNCH_MINIMUM[key]:
        raise ConfigError(f"{path}: launch.{key} = {value!r} must be an integer >= {LAUNCH_MINIMUM[key]}")
    return value


def parse_time(value, path="spec") -> int:
    """SLURM-style time limit -> seconds: minutes (int), "MM", "MM:SS", "HH:MM:SS" or "D-HH:MM:SS"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return 60 * value
    try:
        days, _, clock = str(value).rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if len(parts) == 1:
            seconds = 60 * parts[0]
        elif len(parts) == 2:
            seconds = 60 * parts[0] + parts[1]
        elif len(parts) == 3:
            seconds = 3600 * parts[0] + 60 * parts[1] + parts[2]
        else:
            raise ValueError
        seconds += 86400 * int(days or 0)
        if seconds <= 0 or min(parts) < 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{path}: launch.time = {value!r} must be minutes or \"HH:MM:SS\" (SLURM style)")
    return seconds


def format_time(seconds: int) -> str:
    """Seconds -> SLURM "D-HH:MM:SS" (days only when needed)."""
    days, rest = divmod(int(seconds), 86400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{clock}" if days else clock


_MISSING = object()


def excluded(rules, cfg: dict, launch: dict) -> bool:
    """True if every key of some exclusion rule matches the run (resolved config and launch)."""
    flat = {f"{section}.{name}": value for section, body in cfg.items() for name, value in body.items()}
    flat.update({f"launch.{k}": v for k, v in launch.items()})
    return any(all(flat.get(key, _MISSING) in allowed for key, allowed in rule.items()) for rule in rules)


def _table(raw: dict, name: str, path) -> dict:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    return value


def _flatten(table: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: TOML turns unquoted dotted keys into nested tables."""
    flat = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{full}."))
        else:
            flat[full] = value
    return flat


def _axis_values(name: str, values, path) -> list:
    """The values of one axis as a list of {dotted key: value} assignments."""
    if not isinstance(values, list):
        raise ConfigError(f"{path}: sweep axis {name} = {values!r} must be a list of values")
    if not values:
        raise ConfigError(f"{path}: sweep axis {name} is empty: give it at least one value or remove it")
    assignments = []
    if all(isinstance(v, dict) for v in values):       # a grouped axis: each value sets several keys
        for value in values:
            flat = _flatten(value)
            if not flat:
                raise ConfigError(f"{path}: sweep axis {name} has an empty table: give keys to set")
            assignments.append(flat)
    elif any(isinstance(v, dict) for v in values):
        raise ConfigError(f"{path}: sweep axis {name} mixes tables and plain values: use one kind")
    else:
        assignments = [{name: v} for v in values]
    for assignment in assignments:
        for key, value in assignment.items():
            check_key(key, path, where=f"sweep axis {name}")
            if key.startswith("launch."):
                assignment[key] = check_launch_value(key[len("launch."):], value, path)
    return assignments
