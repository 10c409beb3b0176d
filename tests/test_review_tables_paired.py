"""The review tables' statistics against hand computations: cost and payoff paired by seed (a paired t
interval written out: mean +- t(0.975, n - 1) s / sqrt(n)), Holm over the family of the robust rules'
comparisons (averaging is the baseline, not a comparison), the worst case over the crafted attacks
with the numeric ones apart, and the accuracy cells (inside [0, 100], split cells by median and seeds).
The run tables here are written out by hand; tests/test_review_report.py checks the same columns on
real runs against SciPy."""
import math

import numpy as np
import pandas as pd
import pytest

from krum_mpi.analysis import review_tables as rt

T975 = {4: 2.7764451051977987, 3: 3.182446305284263}   # Student t quantiles (SciPy t.ppf(0.975, df))
SEEDS = range(5)


def t_interval(diffs):
    d = np.asarray(diffs, dtype=float)
    half = T975[d.size - 1] * d.std(ddof=1) / math.sqrt(d.size)
    return d.mean(), d.mean() - half, d.mean() + half


def p_two_sided(diffs):
    """Two-sided paired t p-value of five differences, from the closed-form t(4) distribution function
    F(t) = 1/2 + (3/4) x (1 - x^2 / 3) with x = t / sqrt(t^2 + 4)."""
    d = np.asarray(diffs, dtype=float)
    t = abs(d.mean()) / (d.std(ddof=1) / math.sqrt(d.size))
    assert d.size == 5
    x = t / math.sqrt(t * t + 4)           # t(4) cdf: 1/2 + (3/4) x (1 - x^2 / 3)
    return 2 * (1 - (0.5 + 0.75 * x * (1 - x * x / 3)))


def runs(cells):
    """A run table: cells = {(rule, byzantine, f, attack): [accuracy per seed]}."""
    rows = []
    for (rule, byz, f, attack), values in cells.items():
        for seed, acc in zip(SEEDS, values):
            rows.append({"rule": rule, "aggregator.name": rule, "n_byzantine": byz, "f": f, "n_workers": 20,
                         "attack.name": attack, "seed": seed, "final_accuracy": acc, "optimizer.momentum": 0.0})
    return rt.point1_frame(pd.DataFrame(rows))


AVG_CLEAN = [0.90, 0.88, 0.91, 0.87, 0.89]
KRUM_CLEAN = [0.86, 0.85, 0.88, 0.82, 0.86]       # about 3 points below averaging, seed by seed
CELLS = {
    ("average", 0, 0, "none"): AVG_CLEAN,
    ("average", 4, 4, "alie"): [0.70, 0.60, 0.72, 0.65, 0.66],
    ("average", 4, 4, "min-max"): [0.50, 0.55, 0.52, 0.48, 0.51],
    ("average", 4, 4, "blind"): [0.10, 0.10, 0.10, 0.10, 0.10],      # numeric: never the worst case
    ("krum", 0, 4, "none"): KRUM_CLEAN,
    ("krum", 4, 4, "alie"): [0.61, 0.58, 0.66, 0.60, 0.57],
    ("krum", 4, 4, "min-max"): [0.80, 0.79, 0.81, 0.78, 0.82],
    ("krum", 4, 4, "blind"): [0.85, 0.84, 0.86, 0.83, 0.85],
}


def test_cost_and_payoff_are_paired_t_intervals_and_holm_over_the_robust_rules():
    res = rt.point1_resilience(runs(CELLS)).set_index("rule")
    krum, avg = res.loc["krum"], res.loc["average"]
    # worst case: the crafted attack with the lowest mean; blind apart
    assert (krum["worst_attack"], avg["worst_attack"]) == ("alie", "min-max")
    assert (avg["numeric_worst_attack"], avg["numeric_worst"]) == ("blind", pytest.approx(0.10))
    assert krum["attacks"] == 2
    cost_d = np.subtract(KRUM_CLEAN, AVG_CLEAN)
    pay_d = np.subtract(CELLS[("krum", 4, 4, "alie")], CELLS[("average", 4, 4, "min-max")])
    for name, d in (("cost", cost_d), ("payoff", pay_d)):
        mean, low, high = t_interval(d)
        assert (krum[name], krum[f"{name}_low"], krum[f"{name}_high"]) == pytest.approx((mean, low, high), abs=1e-12)
        assert krum[f"{name}_seeds"] == 5
    # Holm over a family of 2 (averaging's row compares with nothing): the smaller p doubled, the larger
    # kept at max(its own, the first's adjusted)
    p = {"cost": p_two_sided(cost_d), "payoff": p_two_sided(pay_d)}
    small, large = sorted(p, key=p.get)
    assert krum[f"{small}_p_holm"] == pytest.approx(min(1, 2 * p[small]), rel=1e-9)
    assert krum[f"{large}_p_holm"] == pytest.approx(min(1, max(p[large], 2 * p[small])), rel=1e-9)
    assert (res["family"] == 2).all()
    assert krum["cost_verdict"].startswith("worse (Holm p") and krum["payoff_verdict"].startswith("better (Holm p")
    assert avg["cost_verdict"] == avg["payoff_verdict"] == "baseline" and math.isnan(avg["cost"])


def test_a_difference_that_stands_alone_falls_after_holm():
    """Eight rules, each 1 point above averaging with the same small noise: p alone is about 0.01 (< 0.05),
    but Holm over 16 comparisons needs p <= 0.05 / 16 for the first."""
    noise = [0.004, -0.006, 0.01, -0.003, 0.0]
    cells = {("average", 0, 0, "none"): AVG_CLEAN, ("average", 4, 4, "alie"): AVG_CLEAN}
    for i in range(8):
        lifted = [a + 0.01 + e for a, e in zip(AVG_CLEAN, noise)]
        cells[(f"rule{i}", 0, 4, "none")] = lifted
        cells[(f"rule{i}", 4, 4, "alie")] = lifted
    res = rt.point1_resilience(runs(cells))
    robust = res[res["rule"] != "average"]
    alone = p_two_sided(np.add(0.01, noise))
    assert 0.05 / 16 < alone < 0.05
    assert (res["family"] == 16).all()
    assert robust["cost_verdict"].str.startswith("cannot decide").all()
    assert robust["cost_p_holm"].to_numpy() == pytest.approx(np.full(8, min(1, 16 * alone)), rel=1e-6)


def test_seeds_pair_by_seed_not_by_position():
    """A rule missing seed 0: its differences are taken on seeds 1-4 against averaging's seeds 1-4."""
    frame = runs(CELLS)
    frame = frame[~((frame["rule"] == "krum") & (frame["threat"] == "none") & (frame["seed"] == 0))]
    krum = rt.point1_resilience(frame).set_index("rule").loc["krum"]
    d = np.subtract(KRUM_CLEAN[1:], AVG_CLEAN[1:])
    assert krum["cost_seeds"] == 4
    assert (krum["cost"], krum["cost_low"], krum["cost_high"]) == pytest.approx(
        (d.mean(), d.mean() - T975[3] * d.std(ddof=1) / 2, d.mean() + T975[3] * d.std(ddof=1) / 2),
        abs=1e-12)


def test_accuracy_cells_stay_inside_0_100_and_split_cells_list_their_seeds():
    near_one = {s: v for s, v in zip(SEEDS, [0.999, 1.0, 0.99, 1.0, 0.995])}
    text = rt.cell_text(near_one)
    low, high = (float(x) for x in text.split("[")[1].split("]")[0].split(", "))
    assert high == 100.0 and 0 < low < 100 and text.endswith("(5 seeds)")
    split = rt.cell_text({0: 0.604, 1: 0.88, 2: 0.663, 3: 0.89, 4: 0.87})
    assert split == ("median 87.0% (min 60.4, max 89.0; seeds 0: 60.4, 2: 66.3, 4: 87.0, 1: 88.0, 3: 89.0)")
    assert rt.cell_text({3: 0.5}) == "50.0% (1 seed)"


def test_point2_effects_pair_within_each_axis_value_and_share_one_family():
    rows = []
    for value, shift in ((1000, 0.0), (4000, 0.02)):
        for rule, base in (("average", 0.9), ("krum", 0.85 + shift)):
            for threat, drop in (("none", 0.0), ("alie", 0.2)):
                for seed, e in zip(SEEDS, [0.0, 0.01, -0.01, 0.02, -0.005]):
                    rows.append({"data.n_train": value, "rule": rule, "threat": threat, "seed": seed,
                                 "final_accuracy": base - drop * (rule == "average") + e + 0.001 * seed * (rule == "krum")})
    eff = rt.axis_effects(pd.DataFrame(rows), "data.n_train").set_index("value")
    assert (eff["family"] == 4).all() and list(eff["rule"]) == ["krum", "krum"]
    d = np.full(5, -0.05) + 0.001 * np.arange(5)
    mean, low, high = t_interval(d)
    assert (eff.loc[1000, "cost"], eff.loc[1000, "cost_low"], eff.loc[1000, "cost_high"]) == pytest.approx(
        (mean, low, high), abs=1e-12)


def test_variants_of_one_attack_are_separate_attacks():
    """ALIE at the paper's z and at z = 1.5 are two attacks (their labels differ), never pooled into one
    cell: the worst case is the stronger, and the count of attacks is 3 here."""
    from krum_mpi.analysis.derived import add_derived_columns
    rows = []
    for rule, clean, paper, z15, sign in (("average", 0.9, 0.85, 0.80, 0.7), ("krum", 0.88, 0.86, 0.60, 0.8)):
        for seed in SEEDS:
            e = 0.001 * seed
            rows.append({"aggregator.name": rule, "aggregator.f": 4, "attack.name": "none", "attack.z": np.nan,
                         "n_byzantine": 0, "f": 4 if rule == "krum" else 0, "final_accuracy": clean + e})
            for name, z, acc in (("alie", np.nan, paper), ("alie", 1.5, z15), ("sign-flip", np.nan, sign)):
                rows.append({"aggregator.name": rule, "aggregator.f": 4, "attack.name": name, "attack.z": z,
                             "n_byzantine": 4, "f": 4, "final_accuracy": acc + e})
    frame = pd.DataFrame(rows).assign(n_workers=20, seed=[s for _ in range(2) for s in SEEDS for _ in range(4)],
                                      **{"optimizer.momentum": 0.0, "prov.n_ranks": 1})
    frame = add_derived_columns(frame).assign(rule=lambda f: f["aggregator.name"])
    runs_ = rt.point1_frame(frame)
    assert sorted(runs_["threat"].unique()) == ["alie", "alie(z=1.5)", "none", "sign-flip"]
    res = rt.point1_resilience(runs_).set_index("rule")
    assert res.loc["krum", "worst_attack"] == "alie(z=1.5)" and res.loc["krum", "attacks"] == 3
    assert res.loc["krum", "worst"] == pytest.approx(0.602)   # 0.60 + the mean of 0.000 .. 0.004
    acc = rt.point1_accuracy(runs_)
    assert (acc["n_seeds"] == 5).all()
