"""One cell of a study: the run config of one run of a sweep, picked by its swept values.

    krum-mpi run --from-study jobs/attack-table.toml --cell attack.name=alie --cell aggregator.name=krum

A selector is ``KEY=VALUE`` with KEY a swept key (``aggregator.name``, ``launch.ranks``, ...) and
VALUE read as ``--set`` reads it; the selectors together must match exactly one run of the plan.
A run id (the name of its results file in the study folder) selects that run as well. The config
is the spec's base plus that run's overrides, exactly what ``krum-mpi study run`` runs; further
``--set`` overrides go on top. The run's own launch settings (ranks) are printed, not applied:
the launcher (``mpiexec -n``) sets those.
"""
from __future__ import annotations

from .. import config
from ..errors import ConfigError
from .plan import make_plan
from .spec import load_spec


def select(runs: list, selectors: list[str], where: str, invalid=()):
    """The one run of ``runs`` (plan Runs) whose labels match every selector; ConfigError otherwise
    (naming the reason when the cell is one of the plan's ``invalid`` runs)."""
    if not selectors:
        raise ConfigError(f"{where}: say which cell with --cell KEY=VALUE (repeatable) or --cell RUN_ID")
    wanted = {}
    for text in selectors:
        key, sep, value = text.partition("=")
        if not sep:
            matches = [r for r in runs if r.id == text]
            if not matches:
                raise ConfigError(f"{where}: no run has id {text!r}: give KEY=VALUE selectors or a run id "
                                  "from 'krum-mpi study plan'")
            return matches[0]
        wanted[key.strip()] = config.parse_value(value.strip())
    swept = sorted({k for r in runs for k in r.labels})
    for key in wanted:
        if key not in swept:
            raise ConfigError(f"{where}: {key} is not swept in this study: select by {', '.join(swept)}")
    matches = [r for r in runs if all(r.labels.get(k) == v for k, v in wanted.items())]
    if len(matches) != 1:
        free = [k for k in swept if k not in wanted and len({repr(r.labels.get(k)) for r in matches}) > 1]
        said = " ".join(f"{k}={v}" for k, v in wanted.items())
        bad = [line for line in invalid if all(f"{k}={v}" in line for k, v in wanted.items())]
        if not matches and bad:
            raise ConfigError(f"{where}: the cell {said} is not a valid run: {bad[0]}")
        if not matches:
            raise ConfigError(f"{where}: no run has {said}: 'krum-mpi study plan' lists the runs")
        raise ConfigError(f"{where}: {len(matches)} runs have {said}: add --cell for {', '.join(free)}")
    return matches[0]


def cell_config(spec_path, selectors: list[str], overrides=()) -> tuple[dict, object]:
    """(validated run config, plan Run) of the selected cell, with ``overrides`` applied on top."""
    spec = load_spec(spec_path)
    if spec.bench:
        raise ConfigError(f"{spec_path}: a [bench] spec has no runs: run 'krum-mpi bench' with its arguments")
    plan = make_plan(spec, check_models=False)
    chosen = select(plan.runs, list(selectors), str(spec_path), plan.invalid)
    raw = config.apply_overrides(config.apply_overrides(spec.base, chosen.overrides), overrides)
    return config.validate(raw), chosen
