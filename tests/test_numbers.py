"""benchlib.numbers against hand-computed cases (pure functions of DataFrames: no run needed)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchlib.numbers import energy_per_work

T0 = 1_700_000_000_000_000_000  # epoch ns, as real runs have them
WATTS = 400.0
GAP_S, GAPS, TTFT_S = 0.004, 250, 0.1  # output_len 251: 250 gaps of 4 ms after a 100 ms prefill


def _row(metric: str, value: float, start_s: float, end_s: float, work: float) -> dict:
    return {"arm": "native", "benchmark": "llm_inference", "case": "batch=1", "invocation": 1, "metric": metric,
            "status": "ok", "value": value, "unit": "s", "work": work, "work_unit": "token",
            "start_ns": T0 + round(start_s * 1e9), "end_ns": T0 + round(end_s * 1e9)}


def _decode() -> pd.DataFrame:
    """One request of a batch-1 generation, as benchlib.llm.metrics stores it."""
    end_s = TTFT_S + GAPS * GAP_S
    rows = [_row("e2e", end_s, 0.0, end_s, GAPS + 1.0),
            _row("tpot", GAP_S, TTFT_S, end_s, 1.0)]  # one sample spanning the whole decode, work 1 token
    for i in range(GAPS):
        begin = TTFT_S + i * GAP_S
        rows.append(_row("itl", GAP_S, begin, begin + GAP_S, 1.0))
        rows.append(_row("decode_step", GAP_S, begin, begin + GAP_S, 1.0))
    return pd.DataFrame(rows)


def _telemetry(counter: bool) -> pd.DataFrame:
    """Constant 400 W, polled every 10 ms from 50 ms before to 50 ms after the request."""
    stamps = np.arange(-0.05, TTFT_S + GAPS * GAP_S + 0.05 + 1e-9, 0.01)
    return pd.DataFrame({"arm": "native", "benchmark": "llm_inference", "case": "batch=1", "invocation": 1,
                         "gpu_index": 0, "timestamp_ns": T0 + np.round(stamps * 1e9).astype(np.int64),
                         "power_w": WATTS, "energy_mj": (stamps + 1.0) * WATTS * 1e3 if counter else np.nan})


@pytest.mark.parametrize("counter", [True, False], ids=["energy counter", "power polls"])
def test_joules_per_token_agree_across_the_llm_metrics(counter: bool):
    energy = energy_per_work(_decode(), _telemetry(counter)).set_index("metric")
    per_token = WATTS * GAP_S  # 400 W × 4 ms per token = 1.6 J/token, by hand
    for metric in ("tpot", "itl", "decode_step"):
        assert energy.loc[metric, "unit"] == "J/token"
        assert energy.loc[metric, "value"] == pytest.approx(per_token, rel=1e-6), metric
    # e2e counts the prefill too: 400 W × 1.1 s over 251 tokens
    assert energy.loc["e2e", "value"] == pytest.approx(WATTS * 1.1 / 251, rel=1e-6)
    # the window's energy itself is still reported: the tpot sample's window is the 1 s decode
    assert energy.loc["tpot", "energy_j"] == pytest.approx(WATTS * GAPS * GAP_S, rel=1e-6)
    assert energy.loc["tpot", "power_w"] == pytest.approx(WATTS, rel=1e-6)


def test_joules_per_tflop_of_back_to_back_products():
    """Ten 2 ms products of 1e12 FLOP back to back at 400 W: 0.8 J per product, 0.8 J/TFLOP."""
    rows = [{**_row("time", 0.002, 0.1 + 0.002 * i, 0.1 + 0.002 * (i + 1), 1e12), "benchmark": "matmul",
             "case": "batch=1", "work_unit": "FLOP"} for i in range(10)]
    telemetry = _telemetry(True).assign(benchmark="matmul")
    (row,) = energy_per_work(pd.DataFrame(rows), telemetry).itertuples()
    assert row.unit == "J/TFLOP" and row.value == pytest.approx(0.8, rel=1e-6)


def test_no_telemetry_gives_an_empty_frame():
    assert energy_per_work(_decode(), pd.DataFrame()).empty


def _products(device: str, rates_tflops: dict[str, float], benchmark: str = "matmul", unit: str = "FLOP") -> pd.DataFrame:
    """Five samples per arm of one product of 1e12 work units at the given rates (TFLOP/s or TB/s)."""
    rows = [{"arm": arm, "benchmark": benchmark, "case": "dtype=bf16", "invocation": 1, "metric": "time",
             "run_id": "r", "status": "ok", "value": 1.0 / rate, "unit": "s", "work": 1e12, "work_unit": unit, "device": device,
             "params": '{"dtype": "bf16"}', "start_ns": T0, "end_ns": T0 + 1}
            for arm, rate in rates_tflops.items() for _ in range(5)]
    return pd.DataFrame(rows)


def test_the_fraction_divides_by_the_datasheet_and_the_best_measured_is_beside_it():
    from benchlib.numbers import MEASURED_LABEL, ceiling_fractions

    # H100 SXM bf16 dense: 989.4 TFLOP/s. The run's best (the container, 700) is shown, not divided by.
    fractions = ceiling_fractions(_products("cuda:0 NVIDIA H100 80GB HBM3", {"native": 600.0, "docker": 700.0}))
    by_arm = fractions.set_index("arm")
    assert by_arm.loc["native", "fraction"] == pytest.approx(600.0 / 989.4)
    assert by_arm.loc["docker", "fraction"] == pytest.approx(700.0 / 989.4)
    assert (by_arm["source"] == "NVIDIA H100 SXM datasheet").all()
    assert by_arm["measured"].tolist() == pytest.approx([700e12, 700e12])
    assert set(by_arm["measured_label"]) == {MEASURED_LABEL}


def test_an_unknown_gpu_and_host_link_bytes_get_no_fraction():
    from benchlib.numbers import ceiling_fractions

    unknown = ceiling_fractions(_products("cuda:0 NVIDIA GH200 999GB", {"native": 600.0}))
    assert unknown["fraction"].isna().all() and unknown["source"].isna().all()
    link = ceiling_fractions(_products("cuda:0 NVIDIA H100 80GB HBM3", {"native": 0.05}, "transfer", "B"))
    assert link["fraction"].isna().all() and link["measured"].isna().all()
