"""Figures a reader can read: no bar for a cell that did not run, intervals of accuracies inside
[0, 1], legends outside the bars, category labels that do not run into each other, distinct bar
labels. Each test checks the drawn artists, not the picture."""
import itertools

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

from matplotlib.patches import Rectangle  # noqa: E402

from krum_mpi.analysis import figures, review_figures  # noqa: E402
from krum_mpi.analysis.runtable import PHASES  # noqa: E402
from krum_mpi.analysis.sharded_section import bar_labels  # noqa: E402


def _bars(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def _overlapping(boxes):
    return [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]


def _errorbar_tops(ax):
    """Highest and lowest y of every error-bar segment drawn in ax."""
    ys = [seg[:, 1] for coll in ax.collections for seg in coll.get_segments() if len(seg)]
    return (max(y.max() for y in ys), min(y.min() for y in ys)) if ys else (None, None)


def point3_tables():
    """Eight cells; the model part ran gather, sharded and the model split but no per-shard, and the
    placement part no model split: the shape of the review's point 3."""
    rows, timing = [], []
    for part, places in (("point3-model", ["gather", "sharded", "sharded, parallel.model=2"]),
                         ("point3-placement", ["gather", "sharded", "per-shard"])):
        for threat in ("alie 4/20", "none", "shard-target 4/20", "ipm 4/20"):
            for place in places:
                rows.append({"part": part, "rule": "krum", "threat": threat, "ranks": 4, "placement": place,
                             "n_seeds": 2, "accuracy": 0.9, "accuracy_ci": 0.3, "byz_selected": 0.0})
                timing.append({"part": part, "rule": "krum", "threat": threat, "ranks": 4, "placement": place,
                               "n_runs": 2, "step_ms": 5.0, "step_ms_ci": 1.0, "aggregate_ms": 1.0})
    return pd.DataFrame(rows), pd.DataFrame(timing)


def test_point3_draws_no_bar_for_a_placement_that_did_not_run():
    acc, timing = point3_tables()
    fig = review_figures.placements(acc, timing)
    left, right = fig.axes[:2]
    assert len(_bars(left)) == len(acc) and len(_bars(right)) == len(timing)   # not cells x placements
    assert all(bar.get_height() > 0 for bar in _bars(left) + _bars(right))


def test_point3_accuracy_intervals_stay_within_0_and_100_percent():
    acc, timing = point3_tables()      # 90% +- 30 points would reach 120%
    left = review_figures.placements(acc, timing).axes[0]
    top, bottom = _errorbar_tops(left)
    assert top <= 100.0 + 1e-9 and bottom >= 0.0 and top == pytest.approx(100.0)


def test_point3_tick_labels_do_not_overlap_and_the_legend_is_outside_the_axes(tmp_path):
    acc, timing = point3_tables()
    fig = review_figures.placements(acc, timing)
    figures.save(fig, tmp_path, "point3", formats=("png",))
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes[:2]:
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        assert len({t.get_text() for t in labels}) == len(labels) == 8
        assert not _overlapping([t.get_window_extent(renderer) for t in labels])
        assert ax.get_legend() is None
        assert not fig.legends[0].get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_time_per_phase_legend_outside_and_no_bar_for_a_phase_not_recorded(tmp_path):
    table = pd.DataFrame([{"rule": r, **{p: 0.001 for p in PHASES}, "other_s": 0.0005} for r in ("krum", "average")])
    table.loc[1, "gather_s"] = np.nan     # not recorded by that run
    fig = figures.phase_stack(table, ["rule"])
    figures.save(fig, tmp_path, "phases", formats=("png",))
    ax = fig.axes[0]
    assert len(_bars(ax)) == 2 * (len(PHASES) + 1) - 1
    renderer = fig.canvas.get_renderer()
    assert ax.get_legend() is None and fig.legends
    assert not fig.legends[0].get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_accuracy_intervals_are_clipped_to_0_1():
    acc = pd.DataFrame({"rule": ["krum", "krum"], "attack_label": ["none", "gaussian"], "byz_fraction": [0.0, 0.2],
                        "aggregator.f": [0, 4], "final_mean": [0.97, 0.05], "final_ci": [0.5, 0.4]})
    ax = figures.accuracy_vs_fraction(acc, ["rule", "attack_label", "byz_fraction"]).axes[0]
    top, bottom = _errorbar_tops(ax)
    assert top == pytest.approx(1.0) and bottom == pytest.approx(0.0)
    err = figures.clipped_err([0.97, 0.05, 0.5], [0.5, 0.4, np.nan])
    np.testing.assert_allclose(err, [[0.5, 0.05, 0.0], [0.03, 0.4, 0.0]])


def test_cost_of_resilience_point_names_do_not_overlap(tmp_path):
    rules = ["average", "krum", "multi-krum", "nnm+krum", "trimmed-mean", "median", "bulyan"]
    res = pd.DataFrame([{"rule": r, "momentum": "off", "k": 4, "fraction": 0.1, "clean": 0.90 + 0.002 * i,
                         "clean_ci": 0.3, "worst": 0.80 + 0.003 * i, "worst_ci": 0.4, "attacks": 6}
                        for i, r in enumerate(rules)])
    fig = review_figures.cost_of_resilience(res)
    figures.save(fig, tmp_path, "cost", formats=("png",))
    renderer = fig.canvas.get_renderer()
    names = [t for t in fig.axes[0].texts if t.get_visible()]
    assert names and not _overlapping([t.get_window_extent(renderer) for t in names])
    top, bottom = _errorbar_tops(fig.axes[0])
    assert top <= 100.0 + 1e-9 and bottom >= 0.0


def test_sharded_traffic_bars_have_distinct_labels():
    top = pd.DataFrame({"aggregator.name": ["krum"] * 5, "placement": ["gather", "per-shard", "sharded", "sharded",
                                                                        "sharded"],
                        "model_parallel": [1, 1, 1, 2, 4], "n_workers": [20] * 5})
    labels = bar_labels(top)
    assert len(set(labels)) == 5 and "krum\nsharded, p=2" in labels
    same = pd.DataFrame({"aggregator.name": ["krum"] * 3, "placement": ["sharded"] * 3, "model_parallel": [1] * 3,
                         "n_workers": [20] * 3})
    assert len(set(bar_labels(same))) == 3
