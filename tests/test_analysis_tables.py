"""Tables on synthetic studies whose answers are known in advance, and the t quantiles behind them."""
import math

import numpy as np
import pytest
from test_analysis_fakes import make_config, make_fake_study, write_run

from krum_mpi.analysis import load_study, tables
from krum_mpi.analysis.stats import mean_ci, t_quantile, welch_diff_ci

# Two-sided 95% Student t critical values from printed tables.
T975 = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 29: 2.045}


@pytest.mark.parametrize("df,expected", sorted(T975.items()))
def test_t_quantile_matches_printed_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-3)


def test_t_quantile_tends_to_the_normal_and_rejects_bad_input():
    assert t_quantile(0.975, 1e6) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError, match="p =="):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="df =="):
        t_quantile(0.9, 0)


def test_mean_ci_by_hand():
    mean, half, n = mean_ci([0.8, 0.9, 1.0])
    assert (mean, n) == (pytest.approx(0.9), 3)
    assert half == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-3)
    assert math.isnan(mean_ci([0.5])[1]) and mean_ci([])[2] == 0
    assert mean_ci([1.0, np.nan, 3.0])[:2] == (2.0, pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2), rel=1e-3))


def test_welch_interval_by_hand():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]
    diff, half = welch_diff_ci(a, b)
    va, vb = 1.0 / 3, (20 / 3) / 4
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    assert diff == pytest.approx(-3.0)
    assert half == pytest.approx(t_quantile(0.975, df) * math.sqrt(va + vb))


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    make_fake_study(folder)
    return tables.run_summary(load_study(folder))


def test_accuracy_table_mean_and_interval_over_seeds(summary):
    acc = tables.accuracy_table(summary).set_index(["rule", "byz_fraction"])
    # final accuracy = base - 0.01 * seed, seeds 0, 1, 2: mean base - 0.01, sd 0.01
    half = 4.303 * 0.01 / math.sqrt(3)
    for (rule, frac), base in {("average", 0.0): 0.90, ("krum", 0.0): 0.85, ("average", 0.2): 0.50,
                               ("krum", 0.2): 0.84}.items():
        row = acc.loc[(rule, frac)]
        assert row["n_seeds"] == 3 and row["seeds"] == "0 1 2"
        assert row["final_mean"] == pytest.approx(base - 0.01)
        assert row["final_ci"] == pytest.approx(half, rel=1e-3)
        assert row["best_mean"] == pytest.approx(base - 0.01)


def test_resilience_cost_against_averaging_without_attack(summary):
    cost = tables.resilience_cost(summary).set_index(["rule", "byz_fraction"])
    assert cost.loc[("krum", 0.0), "acc_gap"] == pytest.approx(-0.05)
    assert cost.loc[("average", 0.2), "acc_gap"] == pytest.approx(-0.40)
    assert cost.loc[("krum", 0.2), "acc_gap"] == pytest.approx(-0.06)
    assert cost.loc[("average", 0.0), "acc_gap"] == pytest.approx(0.0)
    # time per step (fakes): krum 0.015 s; average 0.008 s (its aggregation is cheaper); the first,
    # ten times slower compute step is left out
    assert cost.loc[("krum", 0.0), "time_ratio"] == pytest.approx(0.015 / 0.008)
    assert (cost["baseline_runs"] == 3).all()
    # what krum buys at 20% Gaussian: 0.83 against averaging's 0.49 under the same attack
    assert cost.loc[("krum", 0.2), "vs_average"] == pytest.approx(0.34)
    # Welch with equal variances and 3 + 3 seeds: 4 degrees of freedom
    assert cost.loc[("krum", 0.2), "vs_average_ci"] == pytest.approx(2.776 * 0.01 * math.sqrt(2 / 3), rel=1e-3)


def test_phase_times_add_up_and_leave_out_the_first_step(summary):
    phases = tables.phase_times(summary).set_index(["rule", "byz_fraction"])
    krum = phases.loc[("krum", 0.0)]
    assert krum["compute_s"] == pytest.approx(0.015 * 0.5)  # not inflated by the 10x first step
    assert krum["aggregate_s"] == pytest.approx(0.015 * 0.25)
    assert krum["step_s"] == pytest.approx(krum[["compute_s", "gather_s", "aggregate_s", "update_s"]].sum())
    assert krum["other_s"] == pytest.approx(0.0, abs=1e-12)


def test_byzantine_selection_fraction(summary):
    sel = tables.byzantine_selection(summary).set_index("rule")
    assert sel.loc["krum", "byz_selected"] == pytest.approx(5 / 20)  # every 4th of 20 steps
    assert sel.loc["krum", "top_byzantine"] == pytest.approx(5 / 20)
    assert sel.loc["average", "byz_selected"] == 1.0 and math.isnan(sel.loc["average", "top_byzantine"])
    assert set(sel["byz_fraction"]) == {0.2}


def test_no_baseline_gives_nan_not_an_error(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / f"k{seed}.h5", make_config(rule="krum", seed=seed))
    cost = tables.resilience_cost(tables.run_summary(load_study(tmp_path)))
    assert cost["baseline_runs"].eq(0).all() and cost["acc_gap"].isna().all()


def test_strong_and_weak_scaling(tmp_path):
    # strong: n = 8 workers on 1, 2, 4 ranks; weak: 4 workers per rank
    for ranks, step_s in ((1, 0.04), (2, 0.025), (4, 0.02)):
        write_run(tmp_path / f"strong-{ranks}.h5", make_config(rule="krum", n=8, run__name=f"s{ranks}"),
                  n_ranks=ranks, step_s=step_s)
        write_run(tmp_path / f"weak-{ranks}.h5", make_config(rule="average", n=4 * ranks, run__name=f"w{ranks}"),
                  n_ranks=ranks, step_s=0.01 * (1 + 0.1 * ranks))
    scale = tables.scaling_table(tables.run_summary(load_study(tmp_path)))
    strong = scale[scale["rule"] == "krum"].set_index("n_ranks")
    assert set(strong["mode"]) == {"strong"}
    assert strong.loc[4, "speedup"] == pytest.approx(2.0)
    assert strong.loc[4, "efficiency"] == pytest.approx(0.5)
    assert strong.loc[2, "efficiency"] == pytest.approx(0.8)
    weak = scale[scale["rule"] == "average"].set_index("n_ranks")
    assert set(weak["mode"]) == {"weak"}
    assert weak.loc[4, "efficiency"] == pytest.approx(1.1 / 1.4)
    assert weak.loc[4, "speedup"] == pytest.approx(4 * 1.1 / 1.4)


def test_scaling_table_is_empty_without_rank_variation(summary):
    assert tables.scaling_table(summary).empty


def test_accuracy_curves_mean_over_seeds(tmp_path):
    folder = tmp_path / "s"
    make_fake_study(folder, seeds=(0, 1))
    study = load_study(folder)
    curves = tables.accuracy_curves(study, tables.run_summary(study))
    last = curves[(curves["rule"] == "krum") & (curves["byz_fraction"] == 0.0) & (curves["step"] == 19)]
    assert last["mean"].item() == pytest.approx(0.845) and last["count"].item() == 2
