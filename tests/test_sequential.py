"""The sequential rule (benchlib.sequential): boundaries against published values, the t calibration,
and its error rates by simulation when the data are looked at after every round (issue 15, item 3).

Design under test: the defaults (looks after 3..20 rounds, α = 0.05 two-sided, margin 5 %,
Hwang-Shih-DeCani γ = −2 spending). Tuned against (benchmarks/sequential_simulation.py): A/A and a
planted 5 % slowdown with normal invocation effects of 3 % and within-invocation noise of 5 %
(50 samples). Held out, run last in this file: heavy-tailed invocation effects, a 10 % slowdown in
twice the noise, a 2 % speed-up in low noise.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd
import pytest

from benchlib import sequential as sq
from benchlib._simulate import Scenario, log_ratios, stop_when_decided
from benchlib.schema import RESULT_COLUMNS, conform

RUNS = 1000
DESIGN = sq.Design()


def test_the_defaults_are_the_documented_design():
    assert (DESIGN.min_rounds, DESIGN.max_rounds, DESIGN.alpha, DESIGN.margin, DESIGN.spending) == (
        3, 20, 0.05, 0.05, "hsd-2")


# --------------------------------------------------------------------------- boundaries


def test_pocock_type_boundaries_match_published_values():
    """Lan-DeMets Pocock-type spending, 5 equally spaced looks, two-sided α = 0.05 (R ldbounds, gsDesign)."""
    bounds = sq.boundaries((1, 2, 3, 4, 5), 5, 0.05, "pocock")
    np.testing.assert_allclose(bounds, [2.4380, 2.4268, 2.4101, 2.3966, 2.3859], atol=2e-4)


def test_obrien_fleming_boundaries_match_published_values(monkeypatch):
    """gsDesign's sfLDOF (one-sided 0.025 per side, so α(t) = 2·(2 − 2Φ(z_{1−α/4}/√t)) two-sided):
    4.8769, 3.3569, 2.6803, 2.2898, 2.0310 for 5 equally spaced looks."""
    from scipy import stats

    def per_side(alpha: float, t: float) -> float:
        return 2 * (2 * stats.norm.sf(stats.norm.isf(alpha / 4) / math.sqrt(t)))

    monkeypatch.setitem(sq.SPENDING, "obf-per-side", per_side)
    bounds = sq.boundaries((1, 2, 3, 4, 5), 5, 0.05, "obf-per-side")
    np.testing.assert_allclose(bounds, [4.8769, 3.3569, 2.6803, 2.2898, 2.0310], atol=2e-4)


def test_normal_boundaries_spend_alpha_as_designed():
    """Brownian paths with known variance cross the designed boundaries with probability α."""
    looks = tuple(range(3, 21))
    bounds = sq.boundaries(looks, 20, 0.05, "hsd-2")
    rng = np.random.default_rng(11)
    sums = np.cumsum(rng.standard_normal((200_000, 20)), axis=1)[:, 2:]
    crossed = (np.abs(sums) / np.sqrt(np.arange(3, 21)) >= bounds).any(axis=1).mean()
    assert crossed == pytest.approx(0.05, abs=0.0025)


def test_t_boundaries_keep_the_simultaneous_error_on_fresh_null_paths():
    """The calibration paths have their own seed; fresh ones (another seed) must agree."""
    rng = np.random.default_rng(2024)
    x = rng.standard_normal((100_000, DESIGN.max_rounds))
    n = np.arange(1, DESIGN.max_rounds + 1)
    mean = np.cumsum(x, axis=1) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.sqrt((np.cumsum(x * x, axis=1) - n * mean**2) / (n - 1))
    t = (np.abs(mean) / (sd / np.sqrt(n)))[:, DESIGN.min_rounds - 1:]
    error = (t >= DESIGN.critical_ts).any(axis=1).mean()
    assert error == pytest.approx(0.05, abs=0.003)
    assert DESIGN.nominal_alpha < DESIGN.alpha  # the plain significance-level mapping would overshoot


def test_boundaries_are_finite_decreasing_at_the_end_and_cached():
    q = DESIGN.critical_ts
    assert q.shape == (18,) and np.isfinite(q).all()
    assert q[0] > q[-1] > 1.96  # early looks are strict; the last is wider than a fixed-n interval
    assert DESIGN.critical_t(3) == q[0] and DESIGN.critical_t(20) == q[-1]
    with pytest.raises(ValueError, match="no look planned"):
        DESIGN.critical_t(21)


# --------------------------------------------------------------------------- intervals and decisions


def test_decisions_follow_the_band_and_zero():
    delta = math.log1p(0.05)
    low = np.array([-0.01, 0.01, 0.06, -0.10, -0.10])
    high = np.array([0.02, 0.03, 0.09, -0.01, 0.10])
    assert list(sq.decide(low, high, delta)) == [
        sq.NO_DIFFERENCE,  # inside ±δ
        sq.NO_DIFFERENCE,  # inside ±δ though it excludes 0: a difference within the margin
        sq.DIFFERENCE,  # beyond the margin
        sq.DIFFERENCE,  # excludes 0, reaches past −δ
        sq.OPEN,
    ]


def test_an_interval_needs_the_minimum_and_refuses_looks_past_the_cap():
    assert sq.interval([0.01, 0.02], DESIGN).decision == sq.TOO_FEW
    with pytest.raises(ValueError, match="past the design's cap"):
        sq.interval(np.zeros(21), DESIGN)
    exact = sq.interval([0.2, 0.2, 0.2], DESIGN)  # no spread: the interval is the point
    assert (exact.decision, exact.beyond_margin) == (sq.DIFFERENCE, True)
    assert exact.ratio == pytest.approx(math.exp(0.2))


def test_running_intervals_agree_with_one_interval_at_each_look():
    d = np.random.default_rng(3).normal(0.02, 0.04, 12)
    mean, low, high = sq.running_intervals(d, DESIGN)
    assert np.isnan(low[0, :2]).all()
    for n in range(3, 13):
        one = sq.interval(d[:n], DESIGN)
        assert (mean[0, n - 1], low[0, n - 1], high[0, n - 1]) == pytest.approx((one.estimate, one.low, one.high))


def _tidy(values: dict[tuple[str, str], list[float]], samples: int = 5) -> pd.DataFrame:
    """(arm, metric) -> invocation levels; each invocation holds ``samples`` values around its level."""
    rows = []
    for (arm, metric), levels in values.items():
        for invocation, level in enumerate(levels, start=1):
            for sample, jitter in enumerate(np.linspace(0.99, 1.01, samples)):
                rows.append({"run_id": "r", "arm": arm, "benchmark": "launch", "case": "launches=1000", "params": "{}",
                             "invocation": invocation, "sample": sample, "metric": metric, "unit": "s",
                             "value": level * jitter, "work": np.nan, "work_unit": pd.NA, "start_ns": 0, "end_ns": 1,
                             "device": "cpu", "status": "ok", "note": pd.NA})
    return conform(pd.DataFrame(rows), RESULT_COLUMNS)


def test_pairs_are_formed_by_round_and_a_missing_invocation_drops_its_round():
    frame = _tidy({("native", "sync"): [1.0, 1.0, 1.0, 1.0], ("container", "sync"): [1.1, 1.2, 1.1]})
    pairs = sq.paired_log_ratios(sq.invocation_medians(frame), "native")
    assert list(pairs["invocation"]) == [1, 2, 3]
    np.testing.assert_allclose(pairs["log_ratio"], np.log([1.1, 1.2, 1.1]))


def test_sequential_compare_decides_per_metric():
    frame = _tidy({
        ("native", "same"): [1.0, 1.001, 0.999, 1.0], ("container", "same"): [1.0, 1.0, 1.001, 0.999],
        ("native", "slower"): [1.0, 1.01, 0.99, 1.0], ("container", "slower"): [1.3, 1.31, 1.29, 1.3],
    })
    out = sq.sequential_compare(frame, "native").set_index("metric")
    assert out.loc["same", "decision"] == sq.NO_DIFFERENCE
    assert out.loc["slower", "decision"] == sq.DIFFERENCE and out.loc["slower", "beyond_margin"]
    assert out.loc["slower", "ratio_low"] < 1.3 < out.loc["slower", "ratio_high"]


# --------------------------------------------------------------------------- simulation: tuned scenarios


def _run(scenario: Scenario, seed: int) -> "object":
    d = log_ratios(scenario, RUNS, DESIGN.max_rounds, np.random.default_rng(seed))
    return stop_when_decided(d, DESIGN)


def test_a_over_a_with_a_look_after_every_round_gives_at_most_5_percent_false_differences():
    outcome = _run(Scenario(), seed=101)
    assert outcome.share(sq.DIFFERENCE) <= 0.05
    assert outcome.coverage(0.0) >= 0.95
    assert outcome.share(sq.NO_DIFFERENCE) >= 0.90  # and it is decisive: most runs end "no difference"


def test_a_planted_5_percent_slowdown_is_found_in_at_least_90_percent_and_covered():
    effect = math.log(1.05)
    outcome = _run(Scenario(effect=1.05), seed=102)
    assert outcome.found(effect) >= 0.90
    assert outcome.coverage(effect) >= 0.95


def test_looking_after_every_round_with_a_fixed_interval_would_not_be_valid():
    """The reason for the design: the same data, the same looks, but the last look's q at every look."""
    d = log_ratios(Scenario(), RUNS, DESIGN.max_rounds, np.random.default_rng(103))
    n = np.arange(1, DESIGN.max_rounds + 1)
    mean = np.cumsum(d, axis=1) / n
    sd = np.sqrt((np.cumsum(d * d, axis=1) - n * mean**2) / np.maximum(n - 1, 1))
    from scipy import stats

    half = stats.t.isf(0.025, np.maximum(n - 1, 1)) * sd / np.sqrt(n)
    naive = ((np.abs(mean) > half)[:, 2:]).any(axis=1).mean()
    assert naive > 0.10  # an ordinary 95 % interval, looked at 18 times, finds "differences" far too often


# --------------------------------------------------------------------------- held out: run last


@pytest.mark.parametrize("label, scenario", [
    ("heavy-tailed invocations (t, 3 df), A/A", Scenario(invocation="t3")),
    ("10 % slowdown, invocation noise 6 %", Scenario(effect=1.10, invocation_sd=0.06)),
    ("2 % speed-up, invocation noise 1 %", Scenario(effect=0.98, invocation_sd=0.01, sample_sd=0.02)),
    ("heavy-tailed invocations, 5 % slowdown", Scenario(effect=1.05, invocation="t3")),
])
def test_held_out_scenarios_keep_the_error_rate_and_coverage(label, scenario):
    effect = scenario.log_effect
    outcome = _run(scenario, seed=zlib.crc32(label.encode()))
    wrong_way = np.mean((outcome.decision == sq.DIFFERENCE) & (np.sign(outcome.estimate) != np.sign(effect)))
    false_difference = outcome.share(sq.DIFFERENCE) if effect == 0 else wrong_way
    assert false_difference <= 0.05, label
    assert outcome.coverage(effect) >= 0.95, label
