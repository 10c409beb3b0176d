"""The protocol's statistics and convergence criterion against known values: SciPy for the paired t,
hand-checked Holm and bootstrap examples, accuracy intervals inside [0, 1], split cells, and the
convergence check on arrays and on a real results file."""
import math

import numpy as np
import pytest

from krum_mpi.analysis import paired
from krum_mpi.analysis.convergence import cell_converged, converged, run_converged



# ---- paired differences ------------------------------------------------------------------------

def test_paired_differences_keep_only_the_seeds_both_sides_have():
    a = {0: 0.9, 1: 0.8, 2: float("nan"), 3: 0.7}
    b = {0: 0.85, 1: 0.9, 2: 0.5, 4: 0.1}
    d, seeds = paired.paired_differences(a, b)
    assert seeds == [0, 1]
    np.testing.assert_allclose(d, [0.05, -0.1])


# scipy.stats.ttest_rel(a, b) (SciPy 1.17.1): p-value and confidence_interval(0.95), copied here so
# that the test needs no SciPy.
SCIPY_TTEST_REL = [
    ([0.912, 0.897, 0.905, 0.889, 0.921, 0.903, 0.894], [0.884, 0.891, 0.899, 0.861, 0.902, 0.893, 0.880],
     0.004398117176063407, 0.007108855357447335, 0.02460543035683841),
    ([0.61, 0.83, 0.79], [0.60, 0.70, 0.75], 0.23799923799885686, -0.09513435037626783, 0.21513435037626788),
    ([0.52, 0.55, 0.49, 0.58, 0.51], [0.50, 0.56, 0.50, 0.55, 0.52],
     0.6701799733187822, -0.020204487271690663, 0.02820448727169063),
]


@pytest.mark.parametrize("a, b, p, low, high", SCIPY_TTEST_REL)
def test_paired_t_matches_scipy(a, b, p, low, high):
    d, _ = paired.paired_differences(dict(enumerate(a)), dict(enumerate(b)))
    got = paired.paired_t(d, level=0.95)
    assert got.p_value == pytest.approx(p, rel=1e-7)
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-7)
    assert got.n == len(a) and got.method == "paired t"
    assert got.excludes_zero() == (p < 0.05)


def test_paired_interval_is_narrower_than_welch_when_seeds_share_their_noise():
    from krum_mpi.analysis.stats import welch_diff_ci
    g = np.random.default_rng(1)
    seed_effect = 0.1 * g.standard_normal(6)            # what one seed does to every rule
    a, b = 0.85 + seed_effect, 0.83 + seed_effect + 0.005 * g.standard_normal(6)
    p = paired.paired_t(a - b)
    _, welch_half = welch_diff_ci(a, b)
    assert (p.high - p.low) / 2 < welch_half / 5 and p.excludes_zero()


def test_paired_t_degenerate_inputs():
    assert math.isnan(paired.paired_t([]).estimate)
    one = paired.paired_t([0.1])
    assert one.estimate == 0.1 and math.isnan(one.low)
    same = paired.paired_t([0.02, 0.02, 0.02])
    assert (same.low, same.high, same.p_value) == (0.02, 0.02, 0.0)


def test_bootstrap_of_two_seeds_by_hand():
    # Resampling 2 values: means a, (a + b)/2, b with chances 1/4, 1/2, 1/4; the 2.5% and 97.5%
    # quantiles of 10,000 such means are a and b.
    got = paired.bootstrap([0.1, 0.3], seed=0)
    assert (got.low, got.high) == pytest.approx((0.1, 0.3))
    assert got.estimate == pytest.approx(0.2) and got.p_value == pytest.approx(1e-4)   # never <= 0


def test_bootstrap_is_seeded_and_near_the_t_interval_for_gaussian_differences():
    d = np.random.default_rng(3).normal(0.03, 0.02, size=30)
    a, b = paired.bootstrap(d, seed=7), paired.bootstrap(d, seed=7)
    assert a == b
    t = paired.paired_t(d)
    assert a.low == pytest.approx(t.low, abs=0.003) and a.high == pytest.approx(t.high, abs=0.003)
    assert min(d) <= a.low <= a.high <= max(d)


# ---- Holm ----------------------------------------------------------------------------------------

def test_holm_by_hand():
    # m = 4, alpha 0.05. Sorted: 0.005 <= 0.05/4 = 0.0125 yes; 0.01 <= 0.05/3 = 0.0167 yes;
    # 0.03 <= 0.05/2 = 0.025 no: stop (0.04 is not rejected although 0.04 <= 0.05/1).
    # Adjusted: 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06.
    h = paired.holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert h.rejected == [True, False, False, True]
    assert h.adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert h.family_size == 4


def test_holm_is_uniformly_more_powerful_than_bonferroni_and_no_more_than_uncorrected():
    p = np.random.default_rng(0).uniform(0, 0.02, size=25)
    h = paired.holm(p)
    bonferroni = list(p <= 0.05 / p.size)
    assert all(hr or not br for hr, br in zip(h.rejected, bonferroni))
    assert all(not hr or pv <= 0.05 for hr, pv in zip(h.rejected, p))
    assert sum(h.rejected) > sum(bonferroni)


def test_holm_counts_nan_in_the_family_and_never_rejects_it():
    h = paired.holm([0.001, float("nan")], alpha=0.05)
    assert h.family_size == 2 and h.rejected == [True, False] and h.adjusted[0] == pytest.approx(0.002)


# ---- accuracy intervals and split cells ------------------------------------------------------------

def test_accuracy_interval_stays_inside_0_1():
    # The review's bimodal Krum cell: 0.9, 0.9, 0.2 gives mean 0.667 with a t half-width beyond 1.
    ci = paired.accuracy_interval([0.9, 0.9, 0.2])
    raw = paired.paired_t([0.9, 0.9, 0.2])
    assert raw.low < 0 and raw.high > 1
    assert (ci.low, ci.high) == (0.0, 1.0) and ci.estimate == pytest.approx(0.6667, abs=1e-4)


def test_split_cells_show_median_min_max_and_the_seeds():
    values = {0: 0.604, 1: 0.91, 2: 0.663, 3: 0.905, 4: 0.90}
    s = paired.split_summary(values)
    assert s.split and s.median == 0.90 and (s.low, s.high) == (0.604, 0.91)
    assert s.seeds == [0, 2, 4, 3, 1]
    text = paired.describe_cell(values)
    assert text.startswith("median 0.900 (min 0.604, max 0.910; seeds 0=0.604 2=0.663")
    tight = {0: 0.90, 1: 0.91, 2: 0.905}
    assert not paired.split_summary(tight).split
    assert paired.describe_cell(tight).endswith("(3 seeds)")


# ---- convergence -----------------------------------------------------------------------------------

def test_converged_when_the_last_fifth_moves_less_than_half_a_point():
    steps = np.arange(100)
    acc = np.full(100, np.nan)
    acc[9::10] = [0.5, 0.7, 0.8, 0.85, 0.88, 0.89, 0.9, 0.9, 0.902, 0.903]   # steps 9, 19, ..., 99
    check = converged(steps, acc)
    assert check.window == (80, 99) and check.points == 2
    assert not check.converged and "too few evaluations" in check.reason
    acc[84], acc[94] = 0.901, 0.9025
    check = converged(steps, acc)
    assert check.converged and check.change == pytest.approx(0.002) and check.points == 4   # 0.903 - 0.901


def test_not_converged_when_still_climbing_or_unfinished():
    steps = np.arange(0, 200, 5)
    climbing = np.linspace(0.5, 0.9, steps.size)
    check = converged(steps, climbing)
    assert not check.converged and check.change > 0.005 and "points >=" in check.reason
    flat = np.full(steps.size, 0.9)
    assert converged(steps, flat).converged
    assert not converged(steps, flat, total_steps=1000).converged   # the run stopped at step 195 of 1000


def test_a_cell_converges_on_its_trend_not_on_its_evaluation_noise():
    """Five seeds, flat at 0.93 with +-1 point of evaluation noise: each run's range fails, the cell's
    trend (least squares through the seed mean) is below half a point; the same cell still climbing
    2 points over the window is not converged; a decline counts as moving too."""
    steps = np.arange(19, 1000, 20)
    g = np.random.default_rng(4)
    noisy = [(steps, 0.93 + 0.01 * g.choice([-1.0, 0.0, 1.0], steps.size)) for _ in range(5)]
    assert not any(converged(s, a).converged for s, a in noisy)
    check = cell_converged(noisy, 1000)
    assert check.converged and check.window == (800, 999) and check.points == 10
    # the rise by hand: least-squares slope of the seed mean over the window, times the window's 200 steps
    inside = steps >= 800
    mean = np.mean([a[inside] for _, a in noisy], axis=0)
    x = steps[inside] - steps[inside].mean()
    assert check.change == pytest.approx(200 * (x @ (mean - mean.mean())) / (x @ x), abs=1e-12)
    climbing = [(s, a + np.where(s >= 800, 0.02 * (s - 800) / 200, 0.0)) for s, a in noisy]
    up = cell_converged(climbing, 1000)
    assert not up.converged and up.change > 0.015 and "rises" in up.reason
    falling = [(s, a - np.where(s >= 800, 0.02 * (s - 800) / 200, 0.0)) for s, a in noisy]
    assert not cell_converged(falling, 1000).converged and "falls" in cell_converged(falling, 1000).reason
    # only the steps every seed evaluated count; too few of them is not converged
    few = cell_converged([(np.array([850, 900, 950]), np.full(3, 0.9)), (np.array([850, 999]), np.full(2, 0.9))], 1000)
    assert not few.converged and few.points == 1 and "too few evaluations" in few.reason


def test_bad_criterion_settings():
    with pytest.raises(ValueError, match="window"):
        converged([1], [0.5], window=0)
    with pytest.raises(ValueError, match="tolerance"):
        converged([1], [0.5], tolerance=0)
    with pytest.raises(ValueError, match="window"):
        cell_converged([([1], [0.5])], 10, window=1.5)


def test_run_converged_reads_validation_accuracy_from_a_results_file(tmp_path):
    from test_analysis_fakes import make_config, write_run
    from krum_mpi.run.results import read_run
    cfg = make_config(steps=100, eval_every=5)
    path = tmp_path / "run.h5"
    write_run(path, cfg, final_acc=0.8)
    run = read_run(path)
    test_only = run_converged(run)
    run["metrics"]["validation_accuracy"] = np.where(np.isfinite(run["metrics"]["test_accuracy"]), 0.7, np.nan)
    assert run_converged(run).converged and run_converged(run).change == 0.0
    assert test_only.window == (80, 99)


# ---- tuning and the worst case -----------------------------------------------------------------------

def test_tune_picks_the_best_mean_validation_accuracy_and_keeps_the_sensitivity():
    from krum_mpi.analysis.protocol import tune
    choice = tune({0.5: {0: 0.6, 1: float("nan")}, 0.05: {0: 0.91, 1: 0.89}, 0.005: {0: 0.88, 1: 0.92},
                   5.0: {0: float("nan")}})
    assert choice.value == 0.05 and choice.score == pytest.approx(0.90)   # tie with 0.005: grid order
    assert choice.table[0.5] == 0.6 and math.isnan(choice.table[5.0])
    with pytest.raises(ValueError, match="no grid value"):
        tune({1.0: {0: float("nan")}})


def test_worst_case_sets_numeric_attacks_apart_and_counts_the_attacks():
    from krum_mpi.analysis.protocol import worst_case
    cell = {"none": {0: 0.9}, "alie": {0: 0.8, 1: 0.7}, "min-max": {0: 0.6, 1: 0.65}, "blind": {0: 0.1},
            "nan": {0: 0.9}, "ipm": {0: 0.7}}
    worst = worst_case(cell)
    assert (worst.attack, worst.mean) == ("min-max", pytest.approx(0.625))
    assert worst.numeric == {"blind": 0.1, "nan": 0.9} and set(worst.means) == {"alie", "min-max", "ipm"}
    assert not worst.enough and worst_case(cell, min_attacks=3).enough


def test_family_verdicts_apply_holm_over_the_whole_family():
    base = {s: 0.9 for s in range(5)}
    plus = lambda diffs: {s: 0.9 + d for s, d in enumerate(diffs)}  # noqa: E731
    close = plus([0.005, 0.001, 0.005, 0.001, 0.003])     # p = 0.029 alone: not below 0.05 / 3
    nulls = {f"null{i}": (plus(d), base) for i, d in enumerate([[0.01, -0.01, 0.005, -0.004, 0.0],
                                                                [-0.02, 0.01, 0.0, 0.01, -0.002]])}
    rows = paired.family_verdicts({"close": (close, base), **nulls})
    alone = paired.paired_t(paired.paired_differences(close, base)[0])
    assert 0.05 / 3 < alone.p_value < 0.05 and alone.excludes_zero()
    assert [r.verdict for r in rows] == ["cannot decide"] * 3 and rows[0].family_size == 3
    assert rows[0].p_holm == pytest.approx(3 * alone.p_value)
    clear = paired.family_verdicts({"up": (plus([0.05, 0.051, 0.049, 0.05, 0.052]), base),
                                    "down": (base, plus([0.05, 0.051, 0.049, 0.05, 0.052])),
                                    "close": (close, base)})
    assert [r.verdict for r in clear] == ["better", "worse", "better"]   # the last test is at alpha / 1
    boot = paired.family_verdicts({"up": (plus([0.05, 0.051, 0.049, 0.05, 0.052]), base)}, method="bootstrap")
    assert boot[0].verdict == "better" and boot[0].interval.method == "percentile bootstrap"
    with pytest.raises(ValueError, match="method"):
        paired.family_verdicts({}, method="welch")
