"""benchlib.telemetry: the NVML sampler's no-GPU path, its pure parts, and its poll loop.

The loop is driven by real row sources (plain callables) so rate, deadline and failure handling are
tested on a machine without NVML; the NVML source itself is exercised by the GPU-only test.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pynvml
import pytest

from benchlib.schema import TELEMETRY_COLUMNS
from benchlib.telemetry import (
    GpuSource,
    Metric,
    NvmlSampler,
    Poller,
    TelemetryRow,
    decode_clock_event_reasons,
    nvml_available,
    resolve_visible,
    rows_to_frame,
)

HAVE_NVML, NVML_WHY = nvml_available()


def _assert_schema(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == list(TELEMETRY_COLUMNS)
    assert {c: str(t) for c, t in frame.dtypes.items()} == TELEMETRY_COLUMNS


def _not_supported() -> float:
    raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


def test_row_fields_are_the_schema_columns() -> None:
    assert TelemetryRow._fields == tuple(TELEMETRY_COLUMNS)


@pytest.mark.skipif(HAVE_NVML, reason="NVML works here")
def test_sampler_without_nvml_reports_why_and_runs_the_block() -> None:
    ran = False
    with NvmlSampler(hz=100) as sampler:
        ran = True
    assert ran
    assert sampler.status.startswith("unavailable: ") and len(sampler.status) > len("unavailable: ")
    assert not nvml_available()[0] and nvml_available()[1]
    frame = sampler.frame()
    assert frame.empty
    _assert_schema(frame)
    summary = sampler.summary()
    assert summary["status"] == sampler.status and summary["polls"] == 0 and summary["hz_requested"] == 100


def test_sampler_with_no_visible_gpu_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with NvmlSampler() as sampler:
        pass
    assert sampler.status.startswith("unavailable: ")
    _assert_schema(sampler.frame())


def test_sampler_does_not_swallow_the_blocks_exception() -> None:
    with pytest.raises(KeyError), NvmlSampler():
        raise KeyError("from the benchmark")


def test_decode_clock_event_reasons() -> None:
    mask = pynvml.nvmlClocksEventReasonGpuIdle | pynvml.nvmlClocksEventReasonSwPowerCap
    assert decode_clock_event_reasons(mask) == "gpu_idle|sw_power_cap"
    assert decode_clock_event_reasons(0) == ""
    assert decode_clock_event_reasons(pynvml.nvmlClocksEventReasonAll).split("|") == [
        "gpu_idle", "applications_clocks_setting", "sw_power_cap", "hw_slowdown", "sync_boost",
        "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown", "display_clock_setting",
    ]
    assert decode_clock_event_reasons(pynvml.nvmlClocksEventReasonHwThermalSlowdown | 0x10000) == (
        "hw_thermal_slowdown|0x10000"
    )


def test_resolve_visible_follows_cuda_rules() -> None:
    uuids = ["GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-bbbb3333-0000"]

    def lookup(token: str) -> int | None:
        hits = [i for i, u in enumerate(uuids) if u.startswith(token) or u.startswith(f"GPU-{token}")]
        return hits[0] if len(hits) == 1 else None

    assert resolve_visible(None, 3, lookup) == [0, 1, 2]
    assert resolve_visible("2,0", 3, lookup) == [2, 0]
    assert resolve_visible("0,7,1", 3, lookup) == [0]  # CUDA stops at the first invalid entry
    assert resolve_visible("", 3, lookup) == []
    assert resolve_visible("-1", 3, lookup) == []
    assert resolve_visible("GPU-bbbb3, aaaa", 3, lookup) == [2, 0]
    assert resolve_visible("GPU-bbbb", 3, lookup) == []  # ambiguous prefix


def test_metric_remembers_unsupported_and_falls_back() -> None:
    calls = {"primary": 0, "fallback": 0}

    def primary() -> float:
        calls["primary"] += 1
        return _not_supported()

    def fallback() -> float:
        calls["fallback"] += 1
        return 42.0

    metric = Metric(primary, fallback)
    assert [metric.read() for _ in range(3)] == [42.0, 42.0, 42.0]
    assert calls == {"primary": 1, "fallback": 3}

    lone = Metric(_not_supported)
    assert math.isnan(lone.read()) and not lone.supported


def test_metric_transient_error_is_nan_for_that_poll_only() -> None:
    answers = iter([pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN), 7.0])

    def flaky() -> float:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    metric = Metric(flaky)
    assert math.isnan(metric.read())
    assert metric.read() == 7.0 and metric.supported


def test_rate_limited_metric_reads_sparsely_unless_forced() -> None:
    reads = 0

    def energy() -> float:
        nonlocal reads
        reads += 1
        return float(reads)

    metric = Metric(energy, min_interval_s=0.05)
    assert metric.read() == 1.0  # the first read always happens
    assert math.isnan(metric.read())
    assert metric.read(force=True) == 2.0
    time.sleep(0.06)
    assert metric.read() == 3.0


def test_poller_keeps_the_rate_and_stops() -> None:
    poller = Poller(lambda: [time.perf_counter_ns()], hz=200)
    poller.start()
    time.sleep(0.3)
    assert poller.stop()
    stats = poller.stats
    assert 50 <= stats.polls <= 66, stats  # 60 deadlines in 0.3 s, plus the final poll
    assert stats.dropped <= 3
    gaps_ms = np.diff(poller.rows[:-1]) / 1e6
    assert 4.0 <= float(np.median(gaps_ms)) <= 6.0
    count = len(poller.rows)
    time.sleep(0.05)
    assert len(poller.rows) == count  # nothing polls after stop


def test_poller_skips_missed_deadlines_instead_of_drifting() -> None:
    poller = Poller(lambda: [time.sleep(0.025)], hz=100)  # each poll takes 2.5 periods
    poller.start()
    time.sleep(0.3)
    assert poller.stop()
    assert 8 <= poller.stats.polls <= 15
    assert poller.stats.dropped >= poller.stats.polls  # about 1-2 deadlines skipped per poll


def test_poller_survives_a_failing_source() -> None:
    count = 0

    def source() -> list[int]:
        nonlocal count
        count += 1
        if count % 2:
            raise RuntimeError("driver hiccup")
        return [count]

    poller = Poller(source, hz=500)
    poller.start()
    time.sleep(0.1)
    assert poller.stop()
    assert poller.stats.polls > 5 and poller.stats.dropped > 5
    assert "driver hiccup" in (poller.stats.last_error or "")
    assert all(n % 2 == 0 for n in poller.rows)


def test_a_failing_query_yields_nan_in_the_frame() -> None:
    gpu = GpuSource(
        ordinal=0,
        metrics={
            "sm_clock_mhz": Metric(lambda: 1980.0),
            "energy_mj": Metric(lambda: 5.0e6, min_interval_s=10.0),
            "temperature_c": Metric(_not_supported),
            "utilisation": Metric(lambda: {"gpu_util_pct": 99.0, "mem_util_pct": 40.0}),
            "clock_event_reasons": Metric(lambda: decode_clock_event_reasons(0), default=None),
        },
    )
    poller = Poller(lambda: [gpu.poll()], hz=100, final=lambda: [gpu.poll(complete=True)])
    poller.start()
    time.sleep(0.05)
    assert poller.stop()
    frame = rows_to_frame(poller.rows)
    energy = frame["energy_mj"]
    assert energy.iloc[0] == energy.iloc[-1] == 5.0e6 and energy.iloc[1:-1].isna().all()  # bracketing reads
    _assert_schema(frame)
    assert len(frame) >= 3
    assert (frame["sm_clock_mhz"] == 1980.0).all() and (frame["gpu_util_pct"] == 99.0).all()
    assert frame["temperature_c"].isna().all() and frame["power_w"].isna().all()
    assert (frame["clock_event_reasons"] == "").all()
    assert gpu.unsupported() == ["temperature_c"]


@pytest.mark.skipif(not HAVE_NVML, reason=f"needs NVML and a GPU: {NVML_WHY}")
def test_sampler_on_a_gpu() -> None:
    with NvmlSampler(hz=100) as sampler:
        time.sleep(0.5)
    assert sampler.status == "ok", sampler.status
    frame = sampler.frame()
    _assert_schema(frame)
    summary = sampler.summary()
    assert summary["polls"] >= 40 and summary["mean_poll_cost_us"] < 1000, summary
    one = frame[frame["gpu_index"] == 0]
    assert one["timestamp_ns"].is_monotonic_increasing
    assert (one["sm_clock_mhz"] > 0).all() and one["clock_event_reasons"].notna().all()
    energy = one["energy_mj"].dropna()
    assert len(energy) >= 4 and energy.iloc[-1] > energy.iloc[0]
    assert one["energy_mj"].iloc[[0, -1]].notna().all() and one["power_w"].notna().all()
