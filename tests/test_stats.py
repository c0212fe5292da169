"""Known-answer tests for benchlib.stats on seeded synthetic tidy frames (no mocks)."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from benchlib import stats, wording
from benchlib.schema import RESULT_COLUMNS, TELEMETRY_COLUMNS, conform

T0 = 1_700_000_000_000_000_000


def make_results(
    arms: dict[str, float],
    n_inv: int | dict[str, int] = 10,
    n_samples: int = 200,
    inv_jitter: float = 0.005,
    noise: float = 0.01,
    seed: int = 0,
    benchmark: str = "matmul",
    case: str = "n=1024",
    metric: str = "time",
    unit: str = "s",
    base_value: float = 1e-3,
) -> pd.DataFrame:
    """A tidy frame: per arm, invocations × samples of ``base_value·scale·exp(jitter_i)·exp(noise_ij)``.

    Arms are interleaved by invocation (native#0, container#0, native#1, ...) and every schema column
    is filled; start/end are consecutive wall-clock spans as long as the value.
    """
    rng = np.random.default_rng(seed)
    counts = n_inv if isinstance(n_inv, dict) else dict.fromkeys(arms, n_inv)
    blocks, clock = [], T0
    for invocation in range(max(counts.values())):
        for arm, scale in arms.items():
            if invocation >= counts[arm]:
                continue
            level = base_value * scale * np.exp(rng.normal(0, inv_jitter))
            values = level * np.exp(rng.normal(0, noise, n_samples))
            durations = np.maximum((values * 1e9).astype(np.int64), 1)
            starts = clock + np.concatenate(([0], np.cumsum(durations[:-1] + 1000)))
            clock = int(starts[-1] + durations[-1] + 1_000_000)
            blocks.append(pd.DataFrame({
                "run_id": "run-1", "arm": arm, "benchmark": benchmark, "case": case,
                "params": '{"n": 1024}', "invocation": invocation, "sample": np.arange(n_samples),
                "metric": metric, "unit": unit, "value": values, "work": 2 * 1024.0**3,
                "work_unit": "FLOP", "start_ns": starts, "end_ns": starts + durations,
                "device": "cuda:0 NVIDIA H100 80GB HBM3", "status": "ok", "note": pd.NA,
            }))
    return conform(pd.concat(blocks, ignore_index=True), RESULT_COLUMNS)


def one_row(frame: pd.DataFrame, **kwargs) -> pd.Series:
    out = stats.compare(frame, **kwargs)
    assert len(out) == 1
    return out.iloc[0]


def test_identical_arms_are_equivalent_and_ci_covers_one():
    row = one_row(make_results({"native": 1.0, "container": 1.0}, seed=1))
    assert list(stats.compare(make_results({"native": 1.0, "container": 1.0})).columns) == stats.COMPARE_COLUMNS
    assert row.baseline == "native" and row.arm == "container"
    assert row.ci_low < 1 < row.ci_high
    assert row.verdict_code == "equivalent"
    assert row.verdict == "no overhead beyond 2 %"
    assert row.p_tost_holm < 0.05


def test_planted_ten_percent_slowdown():
    row = one_row(make_results({"native": 1.0, "container": 1.10}, inv_jitter=0.02, seed=2))
    assert row.ci_low < 1.10 < row.ci_high
    assert row.ci_low > 1.0
    assert row.verdict_code == "overhead"
    assert row.overhead == pytest.approx(row.ratio - 1)
    assert row.verdict.startswith(f"overhead {100 * row.overhead:.1f} % [")
    expected = wording.BANDS[0][1] if row.overhead < 0.10 else wording.BANDS[1][1]
    assert row.band == expected
    assert row.p_welch < 0.05 and row.p_mwu < 0.05


def test_two_invocations_are_too_few():
    row = one_row(make_results({"native": 1.0, "container": 1.5}, n_inv=2))
    assert row.verdict_code == "too_few"
    assert row.verdict == "too few invocations for a confidence interval (2 native, 2 container; need ≥ 3 each)"
    assert np.isnan(row.ci_low) and np.isnan(row.ci_high)
    assert row.ratio == pytest.approx(1.5, rel=0.05)


def test_arm_without_ok_rows_still_gets_a_too_few_row():
    frame = make_results({"native": 1.0, "container": 1.0}, n_inv=3)
    failed = frame["arm"] == "container"
    frame.loc[failed, "status"] = "failed"
    row = one_row(frame)
    assert row.verdict_code == "too_few" and row.n_inv_arm == 0 and row.n_inv_base == 3


def test_high_variance_small_n_is_inconclusive_with_positive_n():
    frame = make_results({"native": 1.0, "container": 1.03}, n_inv=4, inv_jitter=0.10, seed=3)
    row = one_row(frame)
    assert row.verdict_code == "inconclusive"
    more = int(row.verdict.split("about ")[1].split()[0])
    assert more > 0
    # the text's N is required_invocations on the per-arm SDs of log invocation medians
    medians = frame.groupby(["arm", "invocation"])["value"].median()
    sd = {arm: np.log(medians[arm]).std(ddof=1) for arm in ("native", "container")}
    expected = stats.required_invocations(sd["container"], sd["native"], np.log(row.ratio), 0.02, 4)
    assert more == max(expected, 1)


def test_required_invocations_formula():
    # s = 0.05, θ = 0.001 inside the band: h* = log(1.02) − 0.001 = 0.0188026,
    # n = (1.959964·0.05·√2 / 0.0188026)² = 54.33 -> 55, have 10
    assert stats.required_invocations(0.05, 0.05, 0.001, 0.02, 10) == 45
    # a 10 % effect needs fewer: h = log(1.1) -> n = 2.11 -> 3, already have 5
    assert stats.required_invocations(0.05, 0.05, np.log(1.1), 0.02, 5) == 0


def test_required_invocations_range_covers_the_ratios_the_interval_allows():
    """The eager-launch row of an H200 sequential run: ratio 1.293 [0.907, 1.473] after 6 invocations
    per arm. The point estimate (the measured ratio is the truth) is 1 more; the interval also allows a
    ratio at δ/2, where n = (z·s_high·√2 / (δ/2))² runs to thousands: the range says so."""
    sd = 0.2
    point = stats.required_invocations(sd, sd, np.log(1.293), 0.02, 6)
    low, high = stats.required_invocations_range(sd, sd, np.log(0.907), np.log(1.473), 0.02, 6, 6)
    assert point == 0 and low == 1 and high > 1000
    # by hand, the high end: df = 10, s_high = 0.2·√(10 / χ²₀.₀₅(10) = 3.9403) = 0.31861, h = log(1.02)/2
    s_high = 0.2 * np.sqrt(10 / 3.940299)
    assert high == int(np.ceil((1.959964 * s_high * np.sqrt(2) / (np.log(1.02) / 2)) ** 2)) - 6
    # an interval well clear of the band: the range is narrow and brackets the point estimate
    point = stats.required_invocations(0.05, 0.05, np.log(1.10), 0.02, 10)
    low, high = stats.required_invocations_range(0.05, 0.05, np.log(1.05), np.log(1.15), 0.02, 10, 10)
    assert low <= max(point, 1) <= high < 10
    # the verdict words carry both
    from types import SimpleNamespace

    from benchlib import wording
    text, _ = wording.verdict("inconclusive", SimpleNamespace(), 0.02, 3, (1, 1, 2500))
    assert text == ("inconclusive: about 1 more invocations needed in each arm if the ratio is what was "
                    "measured; between 1 and over 1,000 over the ratios the interval allows")


def test_holm_hand_worked():
    # sorted: .005·4 = .02, .01·3 = .03, .03·2 = .06, .04·1 = .04 -> running max .06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005, np.nan])
    np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[4])
    np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])  # monotone: 0.9 < 0.5·2


def test_holm_family_is_the_cases_of_one_benchmark_metric_arm():
    frames = [make_results({"native": 1.0, "container": 1.0}, n_inv=5, inv_jitter=0.05, case=f"n={k}", seed=k)
              for k in range(3)]
    out = stats.compare(pd.concat(frames, ignore_index=True))
    np.testing.assert_allclose(out["p_welch_holm"], stats.holm(out["p_welch"]))
    np.testing.assert_allclose(out["p_tost_holm"], stats.holm(out["p_tost"]))


def test_secondary_tests_match_scipy_on_invocation_medians():
    frame = make_results({"native": 1.0, "container": 1.02}, n_inv=6, inv_jitter=0.02, seed=4)
    row = one_row(frame)
    medians = frame.groupby(["arm", "invocation"])["value"].median()
    arm, base = medians["container"].to_numpy(), medians["native"].to_numpy()
    assert row.p_welch == pytest.approx(sps.ttest_ind(arm, base, equal_var=False).pvalue)
    assert row.p_mwu == pytest.approx(sps.mannwhitneyu(arm, base, alternative="two-sided").pvalue)
    delta = np.log(1.02)
    lower = sps.ttest_ind(np.log(arm) + delta, np.log(base), equal_var=False, alternative="greater").pvalue
    upper = sps.ttest_ind(np.log(arm) - delta, np.log(base), equal_var=False, alternative="less").pvalue
    assert row.p_tost == pytest.approx(max(lower, upper))
    assert row.median_arm == pytest.approx(np.median(arm)) and row.median_base == pytest.approx(np.median(base))


def test_tost_with_zero_variance_is_certain():
    assert stats.tost_welch(np.zeros(3), np.zeros(3), 0.02) == 0.0
    assert stats.tost_welch(np.full(3, 0.1), np.zeros(3), 0.02) == 1.0


def test_exact_median_draw_matches_brute_force_resampling():
    rng = np.random.default_rng(5)
    for n in (2, 3, 6, 7, 20):
        values = np.sort(rng.normal(size=n))
        values[1] = values[0]  # a tie
        draws = 100_000
        exact = stats.hierarchical_bootstrap([values], n_boot=draws, seed=6)
        brute = np.median(values[rng.integers(0, n, size=(draws, n))], axis=1)
        assert sps.ks_2samp(exact, brute).statistic < 0.01, n


def test_hierarchical_ci_is_wider_than_naive_sample_bootstrap():
    frame = make_results({"native": 1.0, "container": 1.0}, n_inv=5, inv_jitter=0.05, noise=0.01, seed=7)
    row = one_row(frame)
    rng = np.random.default_rng(8)
    pooled = {arm: frame.loc[frame["arm"] == arm, "value"].to_numpy() for arm in ("native", "container")}

    def naive(values: np.ndarray) -> np.ndarray:
        return np.median(values[rng.integers(0, values.size, size=(2000, values.size))], axis=1)

    naive_low, naive_high = np.percentile(naive(pooled["container"]) / naive(pooled["native"]), [2.5, 97.5])
    assert (row.ci_high - row.ci_low) > 3 * (naive_high - naive_low)


def test_bootstrap_is_seeded_and_per_row():
    frame = make_results({"native": 1.0, "container": 1.05, "rootfs": 0.98}, n_inv=5, inv_jitter=0.03)
    first, again = stats.compare(frame, seed=3), stats.compare(frame, seed=3)
    pd.testing.assert_frame_equal(first, again)
    alone = stats.compare(frame[frame["arm"] != "rootfs"], seed=3)
    assert alone.iloc[0].ci_low == first.iloc[0].ci_low
    assert stats.compare(frame, seed=4).iloc[0].ci_low != first.iloc[0].ci_low
    assert list(first["arm"]) == ["container", "rootfs"]


def test_explicit_baseline_and_unknown_baseline():
    frame = make_results({"native": 1.0, "container": 1.2}, n_inv=4)
    row = one_row(frame, baseline="container")
    assert row.arm == "native" and row.ratio == pytest.approx(1 / 1.2, rel=0.03)
    with pytest.raises(ValueError, match="baseline arm 'docker'"):
        stats.compare(frame, baseline="docker")


def test_higher_is_better_flips_direction():
    frame = make_results({"native": 1.0, "container": 0.9}, metric="throughput", unit="token", base_value=100.0,
                         inv_jitter=0.01, seed=9)
    lower = one_row(frame)
    assert lower.overhead == pytest.approx(lower.ratio - 1) and lower.overhead < 0
    assert lower.verdict.startswith("faster by") and lower.band == wording.FASTER_BAND
    higher = one_row(frame, higher_is_better={"throughput"})
    assert higher.ratio == pytest.approx(lower.ratio)
    assert higher.overhead == pytest.approx(1 / higher.ratio - 1) and higher.overhead > 0.10
    assert higher.verdict_code == "overhead" and higher.band == wording.BANDS[1][1]
    assert stats.overhead_from_ratio(0.8, higher_is_better=True) == pytest.approx(0.25)
    assert stats.overhead_from_ratio(1.25) == pytest.approx(0.25)
    by_unit = one_row(frame.assign(unit="token/s"))
    assert by_unit.overhead == pytest.approx(higher.overhead)


@pytest.mark.parametrize(("overhead", "prefix"), [
    (0.05, "under 10 %"), (0.15, "10-20 %"), (0.30, "20-40 %"), (0.45, "40-50 %"), (0.80, "over 50 %"),
])
def test_bands(overhead, prefix):
    row = one_row(make_results({"native": 1.0, "container": 1 + overhead}, n_inv=5, seed=10))
    assert row.verdict_code == "overhead" and row.band.startswith(prefix)


def test_summarise_matches_numpy():
    frame = make_results({"native": 1.0, "container": 1.1}, n_inv=4, n_samples=51, inv_jitter=0.05)
    frame.loc[3, "status"] = "failed"
    out = stats.summarise(frame)
    assert list(out.columns) == stats.SUMMARY_COLUMNS and list(out["arm"]) == ["native", "container"]
    for _, row in out.iterrows():
        values = frame.loc[(frame["arm"] == row.arm) & (frame["status"] == "ok"), "value"].to_numpy()
        assert row.n_invocations == 4 and row.n_samples == values.size
        np.testing.assert_allclose(
            [row.p5, row.p50, row.p95, row.p99, row["median"], row["min"], row["max"], row["mean"], row["std"]],
            [*np.percentile(values, [5, 50, 95, 99]), np.median(values), values.min(), values.max(),
             values.mean(), values.std(ddof=1)])
        assert row.cv == pytest.approx(values.std(ddof=1) / values.mean())
        assert row.unit == "s"


# --------------------------------------------------------------------------- throttling


def telemetry(stamps, reasons, clocks, **keys) -> pd.DataFrame:
    n = len(stamps)
    frame = pd.DataFrame({
        "timestamp_ns": stamps, "gpu_index": 0, "sm_clock_mhz": clocks, "mem_clock_mhz": 2619.0,
        "power_w": 300.0, "energy_mj": np.arange(n) * 1e3, "temperature_c": 60.0, "gpu_util_pct": 100.0,
        "mem_util_pct": 50.0, "mem_used_bytes": 1e9, "clock_event_reasons": reasons,
    }).reindex(columns=list(TELEMETRY_COLUMNS))  # the memory and MIG columns stay empty
    frame = conform(frame, TELEMETRY_COLUMNS)
    return frame.assign(**keys)


def hand_results(starts_ms: tuple[int, ...] = (0, 100, 200, 300, 400)) -> pd.DataFrame:
    """Five samples of 10 ms each, starting at ``starts_ms``, one invocation."""
    starts = T0 + np.asarray(starts_ms, dtype=np.int64) * 1_000_000
    return conform(pd.DataFrame({
        "run_id": "r", "arm": "native", "benchmark": "b", "case": "c", "params": "{}", "invocation": 0,
        "sample": np.arange(5), "metric": "time", "unit": "s", "value": 0.01, "work": np.nan,
        "work_unit": pd.NA, "start_ns": starts, "end_ns": starts + 10_000_000, "device": "cuda:0 GPU",
        "status": "ok", "note": pd.NA,
    }))


def test_mark_throttled_hand_built():
    results = hand_results((0, 100, 200, 300, 600))
    starts = results["start_ns"].to_numpy()
    # polls every 100 ms, 5 ms into samples 0-3 (interval 100 ms); sample 4 has none inside and the
    # nearest polls are 295 ms before and 190 ms after it: uncovered, and its sw_thermal poll ignored
    stamps = np.concatenate((starts[:4] + 5_000_000, [starts[4] + 200_000_000]))
    reasons = ["", "sw_power_cap", "gpu_idle", "gpu_idle|applications_clocks_setting", "sw_thermal_slowdown"]
    clocks = [1980.0, 1980.0, 1980.0, 990.0, 1980.0]
    marked = stats.mark_throttled(results, telemetry(stamps, reasons, clocks))
    assert list(marked["throttled"]) == [False, True, False, True, False]
    assert list(marked["telemetry_covered"]) == [True, True, True, True, False]
    assert "throttled" not in results.columns


def test_mark_throttled_nearest_poll_within_one_interval():
    results = hand_results()
    starts = results["start_ns"].to_numpy()
    # polls every 100 ms, each 40 ms after a sample ends (none inside); the nearest one decides
    stamps = starts + 50_000_000
    reasons = ["", "", "hw_slowdown", "", ""]
    marked = stats.mark_throttled(results, telemetry(stamps, reasons, [1980.0] * 5))
    assert list(marked["throttled"]) == [False, False, True, False, False]
    assert marked["telemetry_covered"].all()


def test_mark_throttled_joins_within_invocation():
    results = pd.concat([hand_results(), hand_results().assign(arm="container")], ignore_index=True)
    starts = hand_results()["start_ns"].to_numpy() + 5_000_000
    keys = dict(run_id="r", benchmark="b", case="c", invocation=0)
    polls = pd.concat([
        telemetry(starts, [""] * 5, [1980.0] * 5, arm="native", **keys),
        telemetry(starts, ["sw_power_cap"] + [""] * 4, [1980.0] * 5, arm="container", **keys),
    ], ignore_index=True)
    marked = stats.mark_throttled(results, polls)
    assert list(marked["throttled"]) == [False] * 5 + [True] + [False] * 4
    summary = stats.throttle_summary(marked)
    assert list(summary["share_throttled"]) == [0.0, 0.2]
    assert list(summary.columns) == ["benchmark", "case", "arm", "n_samples", "n_throttled", "share_throttled",
                                     "share_covered"]


def test_compare_with_without_throttled():
    frame = make_results({"native": 1.0, "container": 1.0}, n_inv=8, n_samples=50, inv_jitter=0.005, seed=11)
    slow = (frame["arm"] == "container") & (frame["invocation"] % 2 == 0)
    frame.loc[slow, "value"] *= 1.3
    mid = (frame["start_ns"] + frame["end_ns"]) // 2
    polls = telemetry(mid.to_numpy(), np.where(slow, "sw_power_cap", ""), np.full(len(frame), 1980.0),
                      **{k: frame[k].to_numpy() for k in ["run_id", "arm", "benchmark", "case", "invocation"]})
    out = stats.compare_with_without_throttled(stats.mark_throttled(frame, polls))
    row = out.iloc[0]
    assert row.ratio > 1.1
    assert row.ratio_unthrottled == pytest.approx(1.0, abs=0.01)
    assert row.n_inv_arm_unthrottled == 4 and row.n_inv_base_unthrottled == 8
    assert row.throttled_share_arm == pytest.approx(0.5) and row.throttled_share_base == 0.0
    with pytest.raises(ValueError, match="mark_throttled"):
        stats.compare_with_without_throttled(frame)


# --------------------------------------------------------------------------- performance


def test_performance_fifty_cases():
    frame = pd.concat(
        [make_results({"native": 1.0, "container": 1.0 + 0.01 * (k % 7), "rootfs": 1.0}, n_inv=10, n_samples=200,
                      inv_jitter=0.01, case=f"case={k}", seed=k) for k in range(50)],
        ignore_index=True,
    )
    assert len(frame) == 50 * 3 * 10 * 200
    began = time.perf_counter()
    out = stats.compare(frame, n_boot=2000, seed=0)
    summary = stats.summarise(frame)
    elapsed = time.perf_counter() - began
    print(f"\ncompare + summarise, 50 cases x 3 arms x 10 inv x 200 samples, 2000 resamples: {elapsed:.2f} s")
    assert len(out) == 100 and len(summary) == 150
    assert elapsed < 60


def test_a_zero_baseline_gives_an_undefined_verdict_not_a_crash():
    rows = []
    for arm in ("native", "container"):
        for invocation in range(1, 4):
            for sample in range(3):
                rows.append({"run_id": "r", "arm": arm, "benchmark": "cpu_bound", "case": "c", "params": "{}",
                             "invocation": invocation, "sample": sample, "metric": "nr_throttled_delta",
                             "unit": "count", "value": 0.0, "work": np.nan, "work_unit": None, "start_ns": 0,
                             "end_ns": 1, "device": "cpu", "status": "ok", "note": ""})
    out = stats.compare(pd.DataFrame(rows), baseline="native")
    assert out["verdict_code"].tolist() == ["undefined"]
    assert "no ratio" in out["verdict"].iloc[0]


# --------------------------------------------------------------------------- decompose

FOUR_ARMS = dict(native="native", isolated="isolated", rootfs="rootfs", container="container")


def effects_of(frame: pd.DataFrame) -> dict[str, pd.Series]:
    return {row.effect: row for _, row in frame.iterrows()}


def test_decompose_multiplicative_effects_have_no_interaction():
    frame = make_results({"native": 1.0, "isolated": 1.10, "rootfs": 1.20, "container": 1.32}, n_inv=8,
                         inv_jitter=0.01, seed=3)
    out = stats.decompose(frame, **FOUR_ARMS)
    assert list(out.columns) == stats.DECOMPOSE_COLUMNS and list(out["effect"]) == list(stats.EFFECTS)
    effects = effects_of(out)
    for effect, truth in {"isolation": 1.10, "stack": 1.20, "interaction": 1.0, "total": 1.32}.items():
        row = effects[effect]
        assert row.ci_low < truth < row.ci_high, effect
        assert row.overhead == pytest.approx(row.ratio - 1) and row.overhead_low < row.overhead < row.overhead_high
    ratios = {name: row.ratio for name, row in effects.items()}
    assert ratios["total"] == pytest.approx(ratios["isolation"] * ratios["stack"] * ratios["interaction"])
    assert effects["isolation"].ci_excludes_one and effects["stack"].ci_excludes_one
    assert not effects["interaction"].ci_excludes_one
    assert effects["interaction"].formula == "container·native / (isolated·rootfs)"
    assert effects["stack"].formula == "rootfs / native" and (out["n_inv_min"] == 8).all()
    assert out["reading"].iloc[0].startswith("the stack explains most of the container's overhead (+")
    assert "no clear interaction" in out["reading"].iloc[0]


def test_decompose_total_ci_is_compares():
    frame = make_results({"native": 1.0, "isolated": 1.10, "rootfs": 1.20, "container": 1.32}, n_inv=6, seed=5)
    total = effects_of(stats.decompose(frame, **FOUR_ARMS))["total"]
    container = stats.compare(frame).set_index("arm").loc["container"]
    assert (total.ratio, total.ci_low, total.ci_high) == (container.ratio, container.ci_low, container.ci_high)


def test_decompose_finds_an_interaction():
    # isolation 10 %, stack 5 %, but the container 50 %: most of it only appears when both are there
    frame = make_results({"native": 1.0, "isolated": 1.10, "rootfs": 1.05, "container": 1.50}, n_inv=8,
                         inv_jitter=0.01, seed=4)
    effects = effects_of(stats.decompose(frame, **FOUR_ARMS))
    interaction = effects["interaction"]
    assert interaction.ci_low < 1.50 / (1.10 * 1.05) < interaction.ci_high and interaction.ci_low > 1
    assert interaction.reading.startswith("neither effect alone explains the container's overhead (+")


def test_decompose_interaction_ci_covers_the_truth():
    truth = {"isolation": 1.10, "stack": 1.20, "interaction": 1.0, "total": 1.32}
    covered = dict.fromkeys(truth, 0)
    for seed in range(60):
        frame = make_results({"native": 1.0, "isolated": 1.10, "rootfs": 1.20, "container": 1.32}, n_inv=5,
                             n_samples=50, inv_jitter=0.03, seed=100 + seed)
        for row in stats.decompose(frame, **FOUR_ARMS, n_boot=1000).itertuples():
            covered[row.effect] += row.ci_low <= truth[row.effect] <= row.ci_high
    assert all(count >= 0.85 * 60 for count in covered.values()), covered


def test_decompose_higher_is_better_reads_as_overhead():
    # rates: each arm 1/scale as fast, so the time-like overheads are +10 %, +20 % and +32 %
    frame = make_results({"native": 1.0, "isolated": 1 / 1.10, "rootfs": 1 / 1.20, "container": 1 / 1.32},
                         n_inv=8, inv_jitter=0.01, seed=6, metric="throughput", unit="FLOP/s", base_value=1.0)
    effects = effects_of(stats.decompose(frame, **FOUR_ARMS))
    assert effects["isolation"].overhead == pytest.approx(0.10, abs=0.02)
    assert effects["total"].overhead == pytest.approx(0.32, abs=0.03)
    assert effects["total"].overhead == pytest.approx(1 / effects["total"].ratio - 1)
    assert effects["stack"].overhead_low < effects["stack"].overhead < effects["stack"].overhead_high
    assert "the stack explains most of the container's overhead" in effects["total"].reading


def test_decompose_with_some_arms_gives_what_it_can():
    frame = make_results({"native": 1.0, "isolated": 1.10, "rootfs": 1.20, "container": 1.32}, n_inv=6, seed=7)
    only_isolated = stats.decompose(frame, native="native", isolated="isolated")
    assert list(only_isolated["effect"]) == ["isolation"]
    assert only_isolated["reading"].iloc[0].startswith("the isolation costs +")
    no_isolated = stats.decompose(frame, native="native", rootfs="rootfs", container="container")
    assert list(no_isolated["effect"]) == ["stack", "total"]
    assert no_isolated["reading"].iloc[0].startswith("the stack explains most of the container's overhead")
    assert stats.decompose(frame, native="absent", isolated="isolated").empty


def test_decompose_with_too_few_invocations_has_no_ci_and_says_so():
    frame = make_results({"native": 1.0, "isolated": 1.10, "rootfs": 1.20, "container": 1.32},
                         n_inv={"native": 3, "isolated": 3, "rootfs": 2, "container": 3}, seed=8)
    effects = effects_of(stats.decompose(frame, **FOUR_ARMS))
    assert np.isfinite(effects["isolation"].ci_low) and np.isfinite(effects["total"].ci_low)
    assert np.isnan(effects["stack"].ci_low) and np.isnan(effects["interaction"].ci_low)
    assert effects["stack"].ratio == pytest.approx(1.20, rel=0.05)
    assert effects["total"].reading.startswith("too few invocations for confidence intervals")
