"""Kendall's τ and the granulated τ: against scipy, against examples worked by hand, and the intervals'
coverage by simulation (a bivariate normal pair has population τ = (2/π)·arcsin(ρ))."""

import math

import numpy as np
import pytest
from scipy import stats

from stabkern.study import drop_undefined, granulated_tau, kendall_tau, tau_interval
from stabkern.study.ranking import MIN_GROUPS_FOR_INTERVAL


def _population_tau(rho):
    return 2 / math.pi * math.asin(rho)


def _binomial_floor(level, draws):
    """The least observed coverage that does not contradict a true coverage of `level` at three standard
    errors of a binomial proportion over `draws` independent simulations."""
    return level - 3 * math.sqrt(level * (1 - level) / draws)


@pytest.mark.parametrize("n", [2, 3, 17, 40])
@pytest.mark.parametrize("ties", [False, True])
def test_kendall_tau_equals_scipy(n, ties):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=n), rng.normal(size=n) * 0.5
    y += x
    if ties:
        x, y = np.round(x), np.round(y * 2)
    expected = stats.kendalltau(x, y).statistic
    assert kendall_tau(x, y) == pytest.approx(expected, abs=1e-12, nan_ok=True)


def test_kendall_tau_worked_by_hand():
    # 6 pairs; only (2, 3) is ordered differently by the two sequences: (5 - 1) / 6.
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
    # the gap tied for one pair: tau-b = (C - D) / sqrt(6 * 5) with C = 5, D = 0.
    assert kendall_tau([1, 2, 3, 4], [1, 2, 2, 4]) == pytest.approx(5 / math.sqrt(30))
    assert kendall_tau([4, 3, 2, 1], [1, 2, 3, 4]) == -1.0


def test_kendall_tau_batched_rows_equal_one_at_a_time():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 5, 9)), rng.normal(size=(3, 5, 9))
    batched = kendall_tau(x, y)
    assert batched.shape == (3, 5)
    for i in range(3):
        for j in range(5):
            assert batched[i, j] == kendall_tau(x[i, j], y[i, j])


def test_kendall_tau_undefined_and_bad_input():
    assert math.isnan(kendall_tau([1.0], [2.0]))
    assert math.isnan(kendall_tau([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))  # a constant measure ranks nothing
    with pytest.raises(ValueError, match="same shape"):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="drop_undefined"):
        kendall_tau([1, float("nan"), 3], [1, 2, 3])
    x, y, dropped = drop_undefined([1, float("nan"), 3, 4], [1, 2, float("inf"), 4])
    assert dropped == 2 and x.tolist() == [1, 4] and y.tolist() == [1, 4]


def test_tau_interval_covers_the_population_tau():
    rho, n, draws = 0.5, 12, 200
    rng = np.random.default_rng(7)
    covered = 0
    for draw in range(draws):
        z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n)
        interval = tau_interval(z[:, 0], z[:, 1], resamples=999, seed=draw)
        assert interval.low <= interval.value <= interval.high and interval.units == n
        covered += interval.low <= _population_tau(rho) <= interval.high
    assert covered / draws >= _binomial_floor(0.95, draws)


def test_tau_interval_too_few_nets_has_no_bounds():
    interval = tau_interval([1.0, 2.0, float("nan"), 3.0], [1.0, 3.0, 2.0, 2.0])
    assert interval.units == 3 and math.isnan(interval.low) and math.isnan(interval.high)
    assert interval.value == pytest.approx(kendall_tau([1, 2, 3], [1, 3, 2]))


def test_granulated_tau_worked_by_hand():
    # two widths, each with three depths: the measure orders the depths as the gap does at width 1 (τ = 1)
    # and reverses one pair at width 2 (τ = 1/3); the granulated τ along depth is their mean.
    hp = [{"width": w, "depth": d} for w in (1, 2) for d in (1, 2, 3)]
    measure = [1, 2, 3, 1, 3, 2]
    gap = [0.1, 0.2, 0.3, 0.1, 0.2, 0.3]
    result = granulated_tau(measure, gap, hp, "depth")
    assert result.value == pytest.approx((1 + 1 / 3) / 2) and result.units == 2
    assert math.isnan(result.low)  # two groups are too few for an interval
    # along width, each depth's two nets have the same gap: τ is undefined in every group
    along_width = granulated_tau(measure, gap, hp, "width")
    assert along_width.units == 0 and math.isnan(along_width.value)


def test_granulated_tau_skips_groups_without_two_values_and_nan_nets():
    hp = [{"a": 1, "b": 1}, {"a": 2, "b": 1}, {"a": 1, "b": 2}, {"a": 1, "b": 3}, {"a": 2, "b": 3}]
    measure = [1.0, 2.0, 5.0, 1.0, float("nan")]
    gap = [1.0, 2.0, 0.0, 1.0, 3.0]
    result = granulated_tau(measure, gap, hp, "a")
    # b=1: τ = 1; b=2: one net; b=3: the second net is NaN -> one net left
    assert result.value == 1.0 and result.units == 1


def test_granulated_tau_bad_input():
    with pytest.raises(ValueError, match="same nets"):
        granulated_tau([1, 2], [1, 2], [{"a": 1}], "a")
    with pytest.raises(ValueError, match="axis 'b'"):
        granulated_tau([1, 2], [1, 2], [{"a": 1}, {"a": 2}], "b")


def test_granulated_tau_interval_covers_the_population_tau():
    rho, groups, per_group, draws = 0.3, 12, 3, 1000
    assert groups >= MIN_GROUPS_FOR_INTERVAL
    hp = [{"width": g, "depth": d} for g in range(groups) for d in range(per_group)]
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(draws):
        z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=groups * per_group)
        interval = granulated_tau(z[:, 0], z[:, 1], hp, "depth")
        covered += interval.low <= _population_tau(rho) <= interval.high
    assert covered / draws >= _binomial_floor(0.95, draws)
