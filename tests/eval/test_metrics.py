"""Aggregate metrics against rliable's published definitions (Agarwal et al., NeurIPS 2021)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from twinloop.eval.metrics import (
    aggregate,
    difference,
    iqm,
    optimality_gap,
    performance_profile,
    probability_of_improvement,
)


def test_iqm_is_the_mean_of_the_middle_half() -> None:
    x = np.arange(1.0, 9.0)  # 1..8: the middle half is 3, 4, 5, 6
    assert iqm(x) == pytest.approx(4.5)
    rng = np.random.default_rng(0)
    y = rng.normal(size=400)
    assert iqm(y) == pytest.approx(np.sort(y)[100:300].mean())


def test_optimality_gap_counts_only_the_shortfall() -> None:
    assert optimality_gap(np.array([0.2, 1.3, 0.9]), gamma=1.0) == pytest.approx((0.8 + 0.1) / 3)


def test_probability_of_improvement_is_the_normalised_mann_whitney_u() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(0.3, 1, 60), rng.normal(0.0, 1, 50)
    poi = probability_of_improvement(x, y, n_resamples=200)
    u = stats.mannwhitneyu(x, y).statistic / (60 * 50)
    assert poi.point == pytest.approx(u)
    assert poi.low < poi.point < poi.high
    ties = probability_of_improvement([1, 1, 2], [1, 2, 2], n_resamples=50)
    assert ties.point == pytest.approx((0 + 0.5 * 2 + 0 + 0 + 0.5 * 1 + 1 * 2 / 2) / 9 * 1, abs=0.2)


def test_probability_of_improvement_averages_over_tasks() -> None:
    x = [1, 2, 10, 11]
    y = [0, 0, 20, 20]
    poi = probability_of_improvement(
        x, y, x_strata=[0, 0, 1, 1], y_strata=[0, 0, 1, 1], n_resamples=50
    )
    assert poi.point == pytest.approx(0.5)  # task 0: X always better; task 1: never


def test_percentile_bootstrap_covers_the_true_mean() -> None:
    """Coverage on a known distribution: ~95 % of 95 % intervals contain the true mean."""
    rng = np.random.default_rng(2)
    hits = 0
    trials = 300
    for t in range(trials):
        sample = rng.exponential(2.0, size=40)
        ci = aggregate(sample, metrics=("mean",), n_resamples=1000, seed=t)["mean"]
        hits += ci.contains(2.0)
    assert 0.89 <= hits / trials <= 0.98


def test_stratified_bootstrap_keeps_task_sizes() -> None:
    """With one run per stratum repeated, a stratified interval of the mean has no width."""
    values = np.array([1.0, 1.0, 5.0, 5.0])
    ci = aggregate(values, strata=[0, 0, 1, 1], metrics=("mean",), n_resamples=200)["mean"]
    assert ci.low == ci.high == 3.0
    wide = aggregate(values, metrics=("mean",), n_resamples=2000)["mean"]
    assert wide.low < 3.0 < wide.high


def test_performance_profile() -> None:
    frac, lo, hi = performance_profile([0.1, 0.5, 0.9, 0.95], [0.0, 0.5, 1.0], n_resamples=200)
    np.testing.assert_allclose(frac, [1.0, 0.5, 0.0])
    assert (lo <= frac).all() and (frac <= hi).all()


def test_difference_interval_detects_a_real_gap_and_not_a_null_one() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 1, 200), rng.normal(0.0, 1, 200)
    assert difference(a, b).low > 0
    c, d = rng.normal(0.0, 1, 200), rng.normal(0.0, 1, 200)
    assert difference(c, d).contains(0.0)
    with pytest.raises(ValueError, match="unknown metric"):
        aggregate([1.0, 2.0], metrics=("mode",))
