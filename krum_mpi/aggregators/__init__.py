"""Byzantine-robust aggregation rules, one registry.

    get(name) -> rule(X, f, **options) -> (d,) array       pure function, NumPy or CuPy input
    make(name, n, f, **options) -> Aggregator              validated once; Aggregator(X) -> Aggregation
    names() -> list[str]                                    registered rules (pre-steps: pre_steps())
    krum_select(X, f, m=1) -> int64 indices, best first     the paper's Krum selection
    sq_distances(X) -> Distances(sq, finite, err)           the distance kernel of the Krum family

Aggregation(vector, selected, weights): ``vector`` (d,) in X's namespace, ``selected`` NumPy int64
row indices best first (or None), ``weights`` NumPy float64 (n,) (or None).
Pre-aggregation steps chain before any rule with '+': "nnm+krum", "bucketing+median".
Definitions, sources, bounds and non-finite handling: docs/aggregators.md.
"""
import numpy as np

from krum_mpi.aggregators.base import Aggregation, check_input
from krum_mpi.aggregators.bulyan import bulyan, check_bulyan_bounds
from krum_mpi.aggregators.clipping import centered_clipping
from krum_mpi.aggregators.coordinatewise import check_coordinatewise_bounds, meamed, median, trimmed_mean
from krum_mpi.aggregators.distances import sq_distances
from krum_mpi.aggregators.geomed import geometric_median
from krum_mpi.aggregators.krum import NEIGHBOURS, SCORES, check_krum_bounds, check_m, krum, krum_select, multi_krum
from krum_mpi.aggregators.mda import MAX_SUBSETS, check_mda_bounds, mda
from krum_mpi.aggregators.parallel import cpu_budget
from krum_mpi.aggregators.preagg import PRE_STEPS
from krum_mpi.aggregators.compose import lookup
from krum_mpi.aggregators.registry import RULES, Aggregator, Option, Rule, blockwise, register, validate_options

__all__ = ["Aggregation", "Aggregator", "get", "make", "names", "pre_steps", "krum_select", "sq_distances"]


def average(rows, f=0):
    """Plain mean of the rows (not robust; the baseline). Where a row holds NaN or Inf the output
    is NaN (one weighted sum of all rows, the same kernel as Multi-Krum's mean: near read speed)."""
    n = rows.n
    weights = np.full(n, 1.0 / n)
    return Aggregation(rows.combine(weights), np.arange(n, dtype=np.int64), weights)


KRUM_OPTIONS = {
    "neighbours": Option("n-f-2", str, NEIGHBOURS, help="closest others in the score (paper: n-f-2)"),
    "squared": Option(True, bool, help="squared distances (paper: true)"),
    "score": Option("sum", str, SCORES, help="sum or mean of the neighbour distances (paper: sum)"),
}


def _multi_krum_check(n, f, options):
    check_krum_bounds(n, f, "multi-krum")
    check_m(n, f, n - f if options["m"] is None else options["m"])


def _trimmed_mean_check(n, f, options):
    b = f if options["b"] is None else options["b"]
    check_coordinatewise_bounds("trimmed-mean", n, f, b)


def _positive(rule, key):
    def check(n, f, options):
        if not options[key] > 0:
            raise ValueError(f"option {key!r} of rule {rule!r} must be > 0, got {options[key]}")
    return check


def _both(*checks):
    def check(n, f, options):
        for c in checks:
            c(n, f, options)
    return check


register(Rule("average", average, "mean of all rows", max_selected=lambda n, f, o: n,
              fixed_weights=lambda n: np.full(n, 1.0 / n)))
register(Rule(
    "krum", krum, "row with the lowest Krum score (Blanchard et al. 2017)", dict(KRUM_OPTIONS),
    check=lambda n, f, o: check_krum_bounds(n, f, "krum"), max_selected=lambda n, f, o: 1))
register(Rule(
    "multi-krum", multi_krum, "mean of the m lowest-scoring rows (default m = n - f)",
    {"m": Option(None, int, minimum=1, help="rows averaged (default n - f)"), **KRUM_OPTIONS},
    check=_multi_krum_check, max_selected=lambda n, f, o: n - f if o["m"] is None else o["m"]))
register(Rule(
    "median", blockwise(median), "coordinate-wise median (Yin et al. 2018)",
    check=lambda n, f, o: check_coordinatewise_bounds("median", n, f, f)))
register(Rule(
    "trimmed-mean", blockwise(trimmed_mean), "coordinate-wise mean without the b largest and b smallest values",
    {"b": Option(None, int, minimum=0, help="values dropped per side (default f)")},
    check=_trimmed_mean_check))
register(Rule(
    "meamed", blockwise(meamed), "coordinate-wise mean of the n - f values closest to the median (Xie et al. 2018)",
    check=lambda n, f, o: check_coordinatewise_bounds("meamed", n, f, f)))
register(Rule(
    "geometric-median", geometric_median, "smoothed Weiszfeld geometric median (Pillutla et al., RFA)",
    {"iterations": Option(3, int, minimum=0, help="Weiszfeld steps (RFA: 3)"),
     "nu": Option(0.1, float, help="smoothing, > 0 (RFA: 0.1)"),
     "tol": Option(0.0, float, minimum=0.0, help="stop when a step moves less than this")},
    check=_both(lambda n, f, o: check_coordinatewise_bounds("geometric-median", n, f, f),
                _positive("geometric-median", "nu"))))
register(Rule(
    "bulyan", bulyan, "recursive Krum selection, then coordinate-wise mean around the median",
    check=lambda n, f, o: check_bulyan_bounds(n, f), max_selected=lambda n, f, o: n - 2 * f))
register(Rule(
    "centered-clipping", centered_clipping, "clip differences to the previous aggregate (Karimireddy et al. 2021)",
    {"tau": Option(100.0, float, help="clipping radius, > 0 (their CIFAR-10 setting: 100)"),
     "iterations": Option(1, int, minimum=1, help="clipping iterations (their setting: 1)")},
    check=_positive("centered-clipping", "tau"),
    state_keys=("center",), carry=lambda result, state: {"center": result.vector}))
register(Rule(
    "mda", mda, "mean of the n - f rows with the smallest diameter (exact search)",
    {"max_subsets": Option(MAX_SUBSETS, int, minimum=1, help="refuse when C(n, f) is larger")},
    check=lambda n, f, o: check_mda_bounds(n, f, o["max_subsets"]),
    max_selected=lambda n, f, o: n - f))


def names():
    """Registered rule names, sorted (pre-aggregation steps chain before them: see pre_steps())."""
    return sorted(RULES)


def pre_steps():
    """Pre-aggregation step names, usable as prefixes: "nnm+krum"."""
    return sorted(PRE_STEPS)


def make(name, n, f, **options):
    """An Aggregator for n workers and declared f; validates n, f and options now (ValueError)."""
    return Aggregator(lookup(name), n, f, options)


def get(name):
    """The rule as a pure function ``rule(X, f, **options) -> (d,) array``.

    Stateful rules take their state as keywords too (centered-clipping: center=previous aggregate).
    """
    rule = lookup(name)

    @cpu_budget
    def aggregate(X, f, **options):
        n, _ = check_input(X, f)
        state = {k: options.pop(k) for k in rule.state_keys if k in options}
        resolved = validate_options(rule, options)
        rule.check(n, f, resolved)
        return rule.fn(X, f, **resolved, **state).vector

    aggregate.__name__ = name.replace("-", "_").replace("+", "_")
    aggregate.__doc__ = rule.fn.__doc__
    return aggregate
