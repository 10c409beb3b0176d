"""Run configuration: load (TOML or YAML, parsed safely), override, validate, freeze.

``load`` returns a ``Config`` (krum_mpi.inputs.typed): frozen dataclasses, one per schema section,
holding every key of ``DEFAULTS`` (``cfg.run.steps``); modules receive the sections they need.
``cfg.to_dict()`` is the resolved config as a nested plain dict (JSON-serialisable): what the results
file stores, what the run id hashes, what studies and ``--set`` edit (``validate`` and
``load_config`` return that dict directly).

Every key is checked; a bad one raises ``ConfigError`` with a one-line message naming the key, the
value given and what to do. The sections ``aggregator`` and ``attack`` are open: keys other than
their fixed ones are options of the rule or attack (``cfg.aggregator.options``), checked by
``aggregators.make`` / ``attacks.make``. Derived values (``aggregator.f = -1`` becomes
``workers.byzantine``; ``parallel.model > 1`` makes placement ``gather`` ``sharded``) are set by
building a new Config, never by changing one.

    cfg = load("configs/paper-fig4-krum-f6.toml", ["run.steps=100", "aggregator.name=average"])
"""
from __future__ import annotations

import copy
import json
import math
import numbers
import tomllib

from .run import runid
from .errors import ConfigError
from .parallel import byzantine_ranks
from .inputs import config_file, typed
from .inputs.schema import (BOUNDS, CHOICES, DEFAULTS, INT64_MAX, MAX_LIST, OPEN_SECTIONS,  # noqa: F401 (re-exported)
                            STRICTLY_POSITIVE)
from .inputs.show import one_line, show
from .inputs.typed import Config  # noqa: F401  (re-exported: what load returns)
from .run.runid import LATER_KEYS  # noqa: F401  (re-exported: the keys a run id leaves out at their default)


# ---------------------------------------------------------------------------------------------
def load_file(path) -> dict:
    """Parse a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file into a dict, safely (inputs.config_file:
    the path examined before it is opened, YAML aliases and duplicate keys refused)."""
    return config_file.read(path)


def parse_value(text: str):
    """A ``--set`` value: a TOML literal (1, 0.5, true, [20, 20], "x"), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict, overrides) -> dict:
    """Return a copy of ``raw`` with each ``section.key=value`` override applied."""
    out = copy.deepcopy(raw)
    for item in overrides or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or "." not in key:
            raise ConfigError(f"override {show(item)} is not of the form section.key=value (e.g. run.steps=100)")
        section, _, name = key.partition(".")
        if not name or "." in name:
            raise ConfigError(f"override key {show(key)} must be section.key, e.g. run.steps")
        target = out.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"override {show(key)}: [{one_line(section, 40)}] in the config is {show(target)}, "
                              "not a table of keys")
        target[name] = parse_value(value.strip())
    return out


def _check_type(key, value, default):
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {show(value)} must be true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{key} = {show(value)} must be an integer")
        value = int(value)
        if not -INT64_MAX <= value <= INT64_MAX:
            raise ConfigError(f"{key} = {show(value)} does not fit in a 64-bit integer: give a smaller value")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{key} = {show(value)} must be a number")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key} = {show(value)} must be a finite number")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {show(value)} must be a string")
    elif key == "byzantine_ranks.ranks":
        value = byzantine_ranks.check_ranks_list(key, value)
    elif isinstance(default, list):
        if not isinstance(value, list) or not all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool) and 1 <= v <= INT64_MAX for v in value):
            raise ConfigError(f"{key} = {show(value)} must be a list of positive integers, e.g. [20, 20]")
        if len(value) > MAX_LIST:
            raise ConfigError(f"{key} has {len(value)} entries: at most {MAX_LIST}")
        value = [int(v) for v in value]
    elif isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {show(value)} must be a table, e.g. {{d_model = 128}}")
        for name, option in value.items():
            _check_option(f"{key}.{name}", option)
        value = dict(value)
    return value


def _check_value(key, value):
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key} = {show(value)} is not one of {', '.join(CHOICES[key])}")
    if key in BOUNDS:
        lo, hi = BOUNDS[key]
        if lo is not None and (value < lo or (key in STRICTLY_POSITIVE and value <= lo)):
            op = ">" if key in STRICTLY_POSITIVE else ">="
            raise ConfigError(f"{key} = {show(value)} must be {op} {lo}")
        if hi is not None and value > hi:
            raise ConfigError(f"{key} = {show(value)} must be <= {hi}")


def _check_run_name(value: str) -> None:
    """run.name names the results file under results/: a name, never a path (that is --out's job)."""
    if any(c in value for c in "/\\\0") or value.startswith(".") or len(value) > 200:
        raise ConfigError(f"run.name = {show(value)} must be a plain name (no '/', '\\' or leading '.', at most "
                          "200 characters): it names the file under results/; to write elsewhere, pass --out")


def _check_option(key, value):
    """Open-section options must be plain TOML scalars or lists of them (JSON-able)."""
    ok = isinstance(value, (bool, int, float, str)) or (
        isinstance(value, list) and all(isinstance(v, (bool, int, float, str)) for v in value))
    if not ok:
        raise ConfigError(f"{key} = {show(value)} must be a number, string, boolean or list of those")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} = {show(value)} must be a finite number")


def validate(raw: dict) -> dict:
    """Fill defaults, check every key and value, check the pieces fit; return the resolved config
    as a nested plain dict (``resolve(raw).to_dict()``)."""
    return resolve(raw).to_dict()


def resolve(raw: dict) -> Config:
    """Fill defaults, check every key and value, derive what is derived, check the pieces fit:
    the frozen Config of ``raw`` (a dict of sections, as read from a file plus overrides)."""
    cfg = typed.Config.from_dict(_checked_values(raw))
    _check_workers(cfg)
    if cfg.aggregator.f == -1:   # the declared f defaults to the actual number of Byzantine workers
        cfg = typed.replace(cfg, "aggregator", f=cfg.workers.byzantine)
    _check_consistency(cfg)
    _check_rule_and_attack(cfg)
    from .parallel import model_parallel
    cfg = model_parallel.resolve(cfg)   # parallel.model > 1: before the placement checks (placement sharded)
    byzantine_ranks.check_config(cfg)
    _check_placement(cfg)
    return cfg


def _checked_values(raw: dict) -> dict:
    """Every section and key of ``raw`` checked (type, choices, bounds), over the defaults."""
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a table of sections like [run], [workers]")
    cfg = copy.deepcopy(DEFAULTS)
    for section, body in raw.items():
        if section not in DEFAULTS:
            raise ConfigError(f"unknown config section [{one_line(section, 40)}]: use one of {', '.join(DEFAULTS)}")
        if not isinstance(body, dict):
            raise ConfigError(f"[{section}] must be a table of keys, got {show(body)}")
        for name, value in body.items():
            key = f"{section}.{name}"
            if name in DEFAULTS[section]:
                value = _check_type(key, value, DEFAULTS[section][name])
                _check_value(key, value)
                if key == "run.name":
                    _check_run_name(value)
            elif section in OPEN_SECTIONS:
                _check_option(key, value)
            else:
                raise ConfigError(
                    f"unknown config key {one_line(key, 60)}: known keys of [{section}] are {', '.join(DEFAULTS[section])}")
            cfg[section][name] = value
    return cfg


def _check_workers(cfg: Config) -> None:
    n, byz = cfg.workers.n, cfg.workers.byzantine
    if byz > n:
        raise ConfigError(f"workers.byzantine = {byz} exceeds workers.n = {n}: lower it or add workers")


def _check_consistency(cfg: Config) -> None:
    byz, f, attack = cfg.workers.byzantine, cfg.aggregator.f, cfg.attack.name
    if byz > f:
        raise ConfigError(f"workers.byzantine = {byz} exceeds the declared aggregator.f = {f}: "
                          "raise aggregator.f (the rule must be told how many workers may be Byzantine)")
    if byz > 0 and attack == "none":
        raise ConfigError(f"workers.byzantine = {byz} but attack.name = 'none': choose an attack "
                          "(e.g. attack.name=gaussian) or set workers.byzantine=0")
    if byz == 0 and attack != "none":
        raise ConfigError(f"attack.name = {show(attack)} but workers.byzantine = 0: "
                          "set workers.byzantine > 0 or attack.name=none")
    if cfg.optimizer.momentum_form == "ema" and cfg.optimizer.momentum >= 1:
        raise ConfigError("optimizer.momentum = 1 with momentum_form = 'ema' never moves: use momentum < 1")
    if cfg.model.name == "char-transformer" and cfg.data.name != "text":
        raise ConfigError(f"model.name = 'char-transformer' reads character ids: it needs data.name = 'text' "
                          f"(not {show(cfg.data.name)})")


def _check_placement(cfg: Config) -> None:
    """What a sharded or per-shard placement cannot do yet is refused before any MPI work."""
    placement = cfg.aggregator.placement
    if placement == "gather":
        return
    if placement == "sharded":
        from .parallel.sharded import split_rule
        try:
            split_rule(cfg.aggregator.name)
        except ValueError as exc:
            raise ConfigError(_one_line(exc))
    from . import attacks
    from .parallel.sharded import BLOCKWISE_ATTACKS
    name = cfg.attack.name
    kind = attacks.make(name, cfg.workers.n, cfg.workers.byzantine, cfg.aggregator.f,
                        **cfg.attack.option_kwargs()).kind
    if kind not in ("none", "data") and cfg.attack.adversary != "colluding" and name not in BLOCKWISE_ATTACKS:
        raise ConfigError(f"aggregator.placement = {placement!r}: no rank sees every gradient, so the omniscient "
                          f"adversary crafts block by block, which {name!r} cannot (it can: "
                          f"{', '.join(BLOCKWISE_ATTACKS)}); set attack.adversary = 'colluding' or placement = 'gather'")
    if cfg.run.gather_deadline_s > 0:
        raise ConfigError(f"aggregator.placement = {placement!r} cannot run with run.gather_deadline_s > 0: "
                          "set run.gather_deadline_s = 0 or placement = 'gather'")
    if cfg.optimizer.momentum > 0 and cfg.optimizer.momentum_at == "server":
        raise ConfigError(f"aggregator.placement = {placement!r} supports momentum at the workers only: "
                          "set optimizer.momentum_at = 'worker' (or momentum = 0, or placement = 'gather')")


def _check_rule_and_attack(cfg: Config) -> None:
    """Build the rule and the attack once, so bad names and options fail before any MPI work."""
    from . import aggregators, attacks

    n, byz, f = cfg.workers.n, cfg.workers.byzantine, cfg.aggregator.f
    try:
        aggregators.make(cfg.aggregator.name, n, f, **cfg.aggregator.option_kwargs())
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"aggregator: {_one_line(exc)}")
    try:
        attacks.make(cfg.attack.name, n, byz, f, **cfg.attack.option_kwargs())
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"attack: {_one_line(exc)}")


def _one_line(exc) -> str:
    return " ".join(str(exc).split())


def load(path, overrides=()) -> Config:
    """Load a config file (or none: defaults), apply ``--set`` overrides, validate: the frozen Config."""
    raw = load_file(path) if path is not None else {}
    return resolve(apply_overrides(raw, overrides))


def load_config(path, overrides=()) -> dict:
    """``load`` as the resolved nested plain dict (for tools that edit configs as data)."""
    return load(path, overrides).to_dict()


def flatten(cfg: dict) -> dict:
    """{"run": {"steps": 5}} -> {"run.steps": 5}; lists and tables become JSON strings for table columns."""
    flat = {}
    for section, body in cfg.items():
        for name, value in body.items():
            flat[f"{section}.{name}"] = json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
    return flat


def to_json(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True)


def identity(cfg: dict | Config) -> dict:
    """The part of a resolved config (a Config or its dict) that identifies its run (runid.LATER_KEYS)."""
    return runid.identity(cfg.to_dict() if isinstance(cfg, Config) else cfg, DEFAULTS)


def run_id(cfg: dict | Config) -> str:
    """A stable short id of a resolved config (the hash of the canonical JSON of its identity)."""
    return runid.digest(to_json(identity(cfg)))
