"""The evidence protocol's choices, in code (docs/protocol.md): its constants, the choice of
hyperparameters per rule on validation accuracy, and the worst case over attacks.

    choice = tune({0.005: {0: .88, 1: .89}, 0.05: {0: .91, 1: .90}})      # lr -> seed -> val. accuracy
    choice.value, choice.score, choice.table                                # 0.05, 0.905, every value's mean
    worst = worst_case({"alie": {0: .8, 1: .7}, "min-max": {0: .6, 1: .65}, "blind": {0: .1, 1: .1}})
    worst.attack, worst.mean, worst.numeric                                 # "min-max", 0.625, {"blind": 0.1}
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_SEEDS = 5               # seeds per headline cell, paired across rules
MIN_ATTACKS = 8             # crafted attacks the worst case is taken over
CONVERGENCE_WINDOW = 0.2    # share of the last steps the convergence criterion looks at ...
CONVERGENCE_TOLERANCE = 0.005   # ... and the largest change of accuracy allowed there (half a point)
FAMILY_ALPHA = 0.05         # Holm's family-wise error level
# Attacks on the arithmetic rather than on the learning: reported apart, never the worst case.
NUMERIC_ATTACKS = ("blind", "nan", "inf")


def _mean(by_seed: dict) -> float:
    values = np.array([v for v in by_seed.values() if np.isfinite(v)], dtype=float)
    return float(values.mean()) if values.size else float("nan")


@dataclass(frozen=True)
class Choice:
    value: object       # the grid value chosen (the first of the best, in grid order, on a tie)
    score: float        # its mean validation accuracy over the seeds
    table: dict         # grid value -> mean validation accuracy (the sensitivity, for the figure)


def tune(scores_by_value: dict) -> Choice:
    """The grid value with the highest mean validation accuracy over seeds (runs without attack).
    A value whose runs all failed (NaN) is never chosen; ValueError if none has a score."""
    table = {value: _mean(by_seed) for value, by_seed in scores_by_value.items()}
    finite = [(v, s) for v, s in table.items() if np.isfinite(s)]
    if not finite:
        raise ValueError("no grid value has a finite validation accuracy: nothing to choose from")
    best = max(s for _, s in finite)
    value = next(v for v, s in finite if s == best)
    return Choice(value, best, table)


@dataclass(frozen=True)
class WorstCase:
    attack: str         # the crafted attack with the lowest mean accuracy
    mean: float
    means: dict         # every crafted attack's mean accuracy
    numeric: dict       # the numeric attacks' means, reported apart
    enough: bool        # at least MIN_ATTACKS crafted attacks were compared


def worst_case(accuracy_by_attack: dict, min_attacks: int = MIN_ATTACKS) -> WorstCase:
    """The lowest mean accuracy over the crafted attacks of a cell (attack -> seed -> accuracy);
    ``blind``, ``nan`` and ``inf`` are set apart; ``none`` (no attack) is not an attack."""
    means = {a: _mean(s) for a, s in accuracy_by_attack.items() if a not in NUMERIC_ATTACKS and a != "none"}
    numeric = {a: _mean(s) for a, s in accuracy_by_attack.items() if a in NUMERIC_ATTACKS}
    scored = {a: m for a, m in means.items() if np.isfinite(m)}
    if not scored:
        raise ValueError("no crafted attack has a finite accuracy in this cell")
    attack = min(scored, key=lambda a: (scored[a], a))
    return WorstCase(attack, scored[attack], means, numeric, len(scored) >= min_attacks)
