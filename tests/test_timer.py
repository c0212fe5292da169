"""The shared timer: order-statistic CI, adaptive stopping, fixed samples, timestamps."""
from __future__ import annotations

import time

import numpy as np
import pytest

from benchlib.errors import ParamsError
from benchlib.timer import TimerConfig, median_ci_rel_halfwidth, measure


def test_median_ci_matches_order_statistics_by_hand():
    values = np.arange(1, 101, dtype=float)  # median 50.5
    # binom(100, .5) 2.5 % quantile is 40 -> CI [x_(40), x_(61)] (1-based), coverage 96.5 %
    half = median_ci_rel_halfwidth(values)
    assert half == pytest.approx((61 - 40) / 2 / 50.5)


def test_median_ci_is_infinite_for_tiny_samples_and_zero_for_constant():
    assert median_ci_rel_halfwidth(np.array([1.0, 2.0, 3.0])) == float("inf")
    assert median_ci_rel_halfwidth(np.full(20, 3.0)) == 0.0


def test_stops_on_target_ci_for_a_steady_workload():
    config = TimerConfig(warmup=1, min_samples=10, max_samples=5000, max_time_s=20, target_rel_ci=0.2)
    measurement = measure(lambda: sum(range(2000)), "cpu", config)
    assert measurement.stop_reason == "target_ci"
    assert measurement.rel_ci_halfwidth <= 0.2
    assert len(measurement.samples) >= 10
    assert measurement.clock == "perf_counter"


def test_stops_at_sample_cap_when_target_is_unreachable():
    rng = np.random.default_rng(0)
    config = TimerConfig(warmup=0, min_samples=5, max_samples=30, target_rel_ci=1e-9)
    measurement = measure(lambda: time.perf_counter_ns() + int(rng.integers(0, 3000)), "cpu", config)
    assert measurement.stop_reason == "max_samples"
    assert len(measurement.samples) == 30


def test_stops_on_time_budget():
    config = TimerConfig(warmup=0, min_samples=2, max_samples=10_000, max_time_s=0.2, target_rel_ci=1e-12)
    begin = time.perf_counter()
    measurement = measure(lambda: sum(range(20_000)), "cpu", config)
    assert measurement.stop_reason in ("time_budget", "target_ci")
    assert time.perf_counter() - begin < 2.0


def test_fixed_samples_is_exact_and_counts_warmup_calls():
    calls = []
    config = TimerConfig(warmup=3, fixed_samples=10)
    measurement = measure(lambda: calls.append(1), "cpu", config)
    assert len(measurement.samples) == 10
    assert measurement.stop_reason == "fixed_samples"
    assert len(calls) == 13


def test_samples_carry_ordered_wall_clock_bounds_and_per_call_time():
    config = TimerConfig(warmup=0, fixed_samples=5, inner_repeats=4)
    measurement = measure(lambda: time.sleep(0.002), "cpu", config)
    for previous, sample in zip(measurement.samples, measurement.samples[1:]):
        assert previous.end_ns <= sample.start_ns
    for sample in measurement.samples:
        wall = (sample.end_ns - sample.start_ns) / 1e9
        assert sample.seconds == pytest.approx(wall / 4, rel=0.5)
        assert sample.seconds >= 0.002


def test_before_sample_runs_untimed_before_every_sample():
    order = []
    measure(lambda: order.append("fn"), "cpu", TimerConfig(warmup=1, fixed_samples=2),
            before_sample=lambda: order.append("reset"))
    assert order == ["reset", "fn", "reset", "fn", "reset", "fn"]


@pytest.mark.parametrize("field, value", [("min_samples", 0), ("target_rel_ci", 0), ("inner_repeats", 0)])
def test_bad_config_is_one_clear_error(field, value):
    with pytest.raises(ParamsError, match=field):
        TimerConfig(**{field: value})


def test_min_time_keeps_sampling_after_the_target_is_met():
    config = TimerConfig(warmup=0, min_samples=5, max_samples=100_000, target_rel_ci=0.5, min_time_s=0.3,
                         max_time_s=5)
    begin = time.perf_counter()
    measurement = measure(lambda: sum(range(1000)), "cpu", config)
    assert time.perf_counter() - begin >= 0.3
    assert measurement.stop_reason == "target_ci"
    with pytest.raises(ParamsError, match="min_time_s"):
        TimerConfig(min_time_s=10, max_time_s=1)


def test_binomial_quantile_matches_scipy():
    from scipy import stats

    from benchlib.timer import binomial_half_quantile

    for n in (6, 7, 10, 31, 100, 101, 999, 5000):
        for q in (0.005, 0.025, 0.05, 0.5):
            assert binomial_half_quantile(q, n) == int(stats.binom.ppf(q, n, 0.5)), (q, n)
