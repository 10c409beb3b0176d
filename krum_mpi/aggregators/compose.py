"""Chains of pre-aggregation steps before a rule, e.g. "bucketing+krum" or "clipping+nnm+median",
and ``lookup``, which resolves any rule name, chained or not.

The chain is itself a Rule: its options are the union of the steps' and the rule's, and its
selection and weights are reported per original worker (a selected bucket selects its workers;
weights are pulled back through the mixing matrices).
"""
import numpy as np

from krum_mpi.aggregators.base import Aggregation
from krum_mpi.aggregators.preagg import PRE_STEPS, check_pre_options
from krum_mpi.aggregators.registry import RULES, Rule


def split_name(name):
    *steps, last = name.split("+")
    for step in steps:
        if step not in PRE_STEPS:
            raise ValueError(f"unknown pre-aggregation step {step!r} in {name!r}; known: {', '.join(PRE_STEPS)}")
    if last not in RULES:
        raise ValueError(f"unknown aggregation rule {last!r} in {name!r}; known: {', '.join(sorted(RULES))}")
    if len(set(steps)) != len(steps):
        raise ValueError(f"a pre-aggregation step appears twice in {name!r}")
    return [PRE_STEPS[s] for s in steps], RULES[last]


def composed_rule(name):
    steps, rule = split_name(name)
    options = dict(rule.options)
    for step in steps:
        clash = set(step.options) & set(options)
        if clash:
            raise ValueError(f"option {sorted(clash)[0]!r} is claimed twice in {name!r}")
        options.update(step.options)

    def own(opts, keys):
        return {k: opts[k] for k in keys}

    def rows_after_steps(n, opts):
        for step in steps:
            n = step.rows_out(n, own(opts, step.options))
        return n

    def check(n, f, opts):
        for step in steps:
            check_pre_options(step.name, own(opts, step.options))
        rule.check(rows_after_steps(n, opts), f, own(opts, rule.options))

    def max_selected(n, f, opts):
        width = rule.max_selected(rows_after_steps(n, opts), f, own(opts, rule.options))
        for step in steps:
            width *= step.owners_per_row(own(opts, step.options))
        return min(n, width)

    def rows_fn(rows, f, step=0, **opts):
        inputs = rows
        n = rows.n
        mixing = np.eye(n)
        owners = [np.array([i], dtype=np.int64) for i in range(n)]
        for k, pre in enumerate(steps):
            m, new_owners = pre.apply(rows, f, own(opts, pre.options), step)
            mixing = m @ mixing
            owners = [np.unique(np.concatenate([owners[j] for j in group])) for group in new_owners]
            if k < len(steps) - 1 or rule.fixed_weights is None:
                rows = rows.mix(m)
        if rule.fixed_weights is not None:
            # a fixed weighted mean of mixed rows is one weighted sum of the inputs: no (n', d) array
            count = mixing.shape[0]
            weights = rule.fixed_weights(count)
            result = Aggregation(inputs.combine(weights @ mixing), np.arange(count, dtype=np.int64), weights)
        else:
            state = {k: opts[k] for k in rule.state_keys if k in opts}
            result = rule.rows(rows, f, **own(opts, rule.options), **state)
        selected = weights = None
        if result.selected is not None:
            seen = []
            for k in result.selected:
                seen.extend(int(i) for i in owners[int(k)] if int(i) not in seen)
            selected = np.asarray(seen, dtype=np.int64)
        if result.weights is not None:
            weights = np.asarray(result.weights) @ mixing
        return type(result)(result.vector, selected, weights, result.recomputed)

    def carry(result, state):
        new = rule.carry(result, state) if rule.carry is not None else {}
        return {**new, "step": state.get("step", 0) + 1}

    return Rule(name, rows_fn, " then ".join([s.summary for s in steps] + [rule.summary]), options,
                check=check, max_selected=max_selected, state_keys=("step",) + rule.state_keys, carry=carry)


def lookup(name):
    """The rule called ``name``; "nnm+krum"-style names chain pre-aggregation steps before a rule."""
    if not isinstance(name, str):
        raise ValueError(f"aggregation rule name must be a string, got {name!r}")
    if "+" in name:
        return composed_rule(name)
    if name not in RULES:
        raise ValueError(f"unknown aggregation rule {name!r}; known: {', '.join(sorted(RULES))} "
                         f"(prefix pre-aggregation steps with '+': nnm+, bucketing+, clipping+)")
    return RULES[name]
