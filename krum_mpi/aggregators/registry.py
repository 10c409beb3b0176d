"""The rule registry: names, option schemas, bounds on n and f, and the Aggregator object
(``compose.lookup`` resolves a name, chained pre-steps included).

Every rule is ONE function over a rows source (rows.py): ``Rule.rows(rows, f, **options, **state)``
returns an Aggregation whose vector is a point (one array per block). ``Rule.fn`` is the same rule on
an (n, d) array, the rows gathered in one block (``on_gathered``); the sharded placement calls
``Rule.rows`` on its blocks."""
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from krum_mpi.aggregators.base import Aggregation, check_f, check_input
from krum_mpi.aggregators.certify import counting
from krum_mpi.aggregators.parallel import cpu_budget
from krum_mpi.aggregators.rows import Rows


@dataclass(frozen=True)
class Option:
    """One option of a rule: its default (None: computed from n and f) and accepted values."""

    default: object
    kind: type  # int, float, bool or str
    choices: tuple = ()
    minimum: float | None = None
    help: str = ""


@dataclass(frozen=True)
class Rule:
    """A registered rule.

    rows(rows, f, **options, **state) -> Aggregation  the rule itself over a rows source (rows.py),
                                                   its vector a point (one array per block)
    fn(X, f, **options, **state) -> Aggregation   the same on an (n, d) array (on_gathered(rows))
    check(n, f, options)                           raises ValueError when n, f or options are out of bounds
    max_selected(n, f, options) -> int             width of the per-step selection record (0: none)
    state_keys                                     keyword arguments that carry state between steps
    carry(result, state) -> dict                   the state for the next step (stateful rules only)
    fixed_weights(n) -> (n,) weights               for rules whose output is a weighted mean with weights
                                                   that do not depend on X (average): a chain of
                                                   pre-steps then needs no (n', d) array before it
    """

    name: str
    rows: Callable
    summary: str
    options: dict = field(default_factory=dict)
    check: Callable = lambda n, f, options: None
    max_selected: Callable = lambda n, f, options: 0
    state_keys: tuple = ()
    carry: Callable | None = None
    fixed_weights: Callable | None = None

    @property
    def fn(self):
        return on_gathered(self.rows)


def on_gathered(rows_fn):
    """A rule over a rows source as a rule on an (n, d) array: the rows in one block, no exchange."""

    def fn(X, f, **options):
        result = rows_fn(Rows([X]), f, **options)
        return replace(result, vector=result.vector[0])

    fn.__doc__ = rows_fn.__doc__
    return fn


def blockwise(rule_fn):
    """A coordinate-wise rule on an (n, d) array as a rule over a rows source: block by block (its
    order statistics of one coordinate never look at another)."""

    def rows_fn(rows, f, **options):
        return Aggregation(rows.per_block(lambda block: rule_fn(block, f, **options).vector))

    rows_fn.__doc__ = rule_fn.__doc__
    return rows_fn


RULES: dict[str, Rule] = {}


def register(rule):
    RULES[rule.name] = rule
    return rule


def validate_options(rule, options):
    """Type- and range-check options; returns the complete options dict (defaults filled in)."""
    unknown = sorted(set(options) - set(rule.options))
    if unknown:
        known = ", ".join(sorted(rule.options)) or "none"
        raise ValueError(f"unknown option {unknown[0]!r} for rule {rule.name!r}; its options: {known}")
    resolved = {}
    for key, spec in rule.options.items():
        value = options.get(key, spec.default)
        if value is not None:
            value = coerce(rule.name, key, spec, value)
        resolved[key] = value
    return resolved


def coerce(rule_name, key, spec, value):
    where = f"option {key!r} of rule {rule_name!r}"
    if spec.kind is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        value = bool(value)
    elif spec.kind is int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        value = int(value)
    elif spec.kind is float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        value = float(value)
        if not np.isfinite(value):
            raise ValueError(f"{where} must be finite, got {value!r}")
    elif spec.kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
    if spec.choices and value not in spec.choices:
        raise ValueError(f"{where} must be one of {', '.join(map(str, spec.choices))}, got {value!r}")
    if spec.minimum is not None and value < spec.minimum:
        raise ValueError(f"{where} must be >= {spec.minimum}, got {value!r}")
    return value


class Aggregator:
    """A rule bound to (n, f, options), validated once; call it on each step's (n, d) array."""

    def __init__(self, rule, n, f, options):
        check_f(f)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n (number of workers) must be a positive int, got {n!r}")
        self.rule = rule
        self.name = rule.name
        self.n = int(n)
        self.f = int(f)
        self.options = validate_options(rule, options)
        rule.check(self.n, self.f, self.options)
        self.max_selected = int(rule.max_selected(self.n, self.f, self.options))
        self.state = {}

    @cpu_budget
    def __call__(self, X) -> Aggregation:
        n, _ = check_input(X, self.f)
        if n != self.n:
            raise ValueError(f"{self.name} was made for n={self.n} rows, got {n}")
        with counting() as recomputed:
            result = self.rule.fn(X, self.f, **self.options, **self.state)
        result = replace(result, recomputed=recomputed[0])
        if self.rule.carry is not None:
            self.state = self.rule.carry(result, self.state)
        return result

    def __repr__(self):
        return f"Aggregator({self.name!r}, n={self.n}, f={self.f}, options={self.options})"
