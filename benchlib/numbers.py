"""Derived numbers of a run: pure functions of its DataFrames (results, telemetry), no wording.

Energy per unit of work from the NVML energy counter (or power) over each invocation's window, the
median rate as a fraction of the datasheet ceiling (with the best rate measured in the run beside it), and which rows are performance metrics.
"""
from __future__ import annotations

import json
import numpy as np
import pandas as pd

from . import ceilings, schema, stats

__all__ = ["ENERGY_UNITS", "ceiling_fractions", "energy_per_work", "is_performance", "ok_rows", "slower_rows"]

#: work unit -> (scale, unit of energy per work) for energy per unit of work.
ENERGY_UNITS = {"FLOP": (1e12, "J/TFLOP"), "B": (1e9, "J/GB"), "token": (1.0, "J/token")}


def is_performance(unit: object) -> bool:
    """A time in seconds (what samples are timed in) or a rate: what overhead is about. Correctness
    metrics (rel_error) and diagnostics (counts, bytes, throttled microseconds) are not."""
    return isinstance(unit, str) and (unit == "s" or unit.endswith("/s"))


def slower_rows(comparison: pd.DataFrame) -> pd.DataFrame:
    """The comparison rows whose arm is slower beyond the margin (an overhead above 0), worst first."""
    slower = comparison["verdict_code"].eq("overhead") & (comparison["overhead"] > 0)
    return comparison[slower].sort_values("overhead", ascending=False)


def ok_rows(results: pd.DataFrame) -> pd.DataFrame:
    ok = results["status"].eq(schema.STATUS_OK).to_numpy(dtype=bool, na_value=False)
    return results.loc[ok & np.isfinite(results["value"].to_numpy(dtype=float, na_value=np.nan))]


def energy_per_work(results: pd.DataFrame, telemetry: pd.DataFrame) -> pd.DataFrame:
    """GPU energy per unit of work, per invocation of each timed case with work.

    Energy per unit of work is the mean power while the metric was measured divided by its rate
    (``work / value``, the rate the report shows): per invocation, ``power_w * sum(value) /
    sum(work)``. The window of an invocation's metric is [first sample start, last sample end];
    its energy is the energy counter's increase over it (interpolated between reads), or where the
    counter's reads do not bracket the window, the mean power of the polls inside it (the nearest
    one when none is) times its length; summed over GPUs; ``power_w`` is that energy over the
    window's length. Dividing the window's energy by the summed work instead would be wrong for a
    metric whose sample spans more than its work: one ``tpot`` sample (work = 1 token) spans a
    whole decode of output_len - 1 tokens. For back-to-back samples (``itl``, ``decode_step``,
    matmul repeats) both give the same figure.

    Columns: benchmark, case, metric, arm, invocation, value (energy per unit of work), unit,
    energy_j (over the window), power_w, work (summed over the samples). Empty without telemetry;
    NaN for an invocation whose telemetry has neither energy nor power readings.
    """
    columns = ["benchmark", "case", "metric", "arm", "invocation", "value", "unit", "energy_j", "power_w", "work"]
    ok = ok_rows(results)
    timed = ok[(ok["unit"] == "s") & ok["work"].notna() & (ok["work"] > 0)]
    if telemetry.empty or timed.empty:
        return pd.DataFrame(columns=columns)
    keys = ["arm", "benchmark", "case", "invocation"]
    windows = timed.groupby([*keys, "metric"], sort=False).agg(
        start=("start_ns", "min"), end=("end_ns", "max"), work=("work", "sum"), seconds=("value", "sum"),
        work_unit=("work_unit", "first"),
    ).reset_index()
    polls = {key: part.sort_values("timestamp_ns") for key, part in telemetry.groupby(keys, sort=False)}
    rows = []
    for window in windows.itertuples(index=False):
        part = polls.get((window.arm, window.benchmark, window.case, window.invocation))
        joules = np.nan if part is None else _window_energy(part, window.start, window.end)
        length_s = (window.end - window.start) / 1e9
        watts = joules / length_s if length_s > 0 else np.nan
        scale, unit = ENERGY_UNITS.get(str(window.work_unit), (1.0, f"J/{window.work_unit}"))
        rows.append({"benchmark": window.benchmark, "case": window.case, "metric": window.metric, "arm": window.arm,
                     "invocation": window.invocation, "value": watts * window.seconds / window.work * scale,
                     "unit": unit, "energy_j": joules, "power_w": watts, "work": window.work})
    return pd.DataFrame(rows, columns=columns)


def _window_energy(polls: pd.DataFrame, start: int, end: int) -> float:
    """Joules spent by all GPUs in [start, end] (ns), from the polls of one invocation (sorted by time)."""
    joules = [_gpu_energy(gpu, start, end) for _, gpu in polls.groupby("gpu_index")]
    finite = [j for j in joules if np.isfinite(j)]
    return float(sum(finite)) if finite else np.nan


def _gpu_energy(gpu: pd.DataFrame, start: int, end: int) -> float:
    """One GPU's joules in [start, end]: the energy counter interpolated at both ends when its reads
    bracket the window, else mean power × length (the polls inside, or the one nearest its middle)."""
    stamps = gpu["timestamp_ns"].to_numpy(dtype=np.int64)
    # relative to the window's start: epoch nanoseconds as float64 would round to 256 ns
    t, length = (stamps - start).astype(float), float(end - start)
    counter = gpu["energy_mj"].to_numpy(dtype=float, na_value=np.nan)
    read = np.isfinite(counter)
    if read.sum() >= 2 and t[read][0] <= 0 and length <= t[read][-1]:
        return float(np.interp(length, t[read], counter[read]) - np.interp(0.0, t[read], counter[read])) / 1e3
    power = gpu["power_w"].to_numpy(dtype=float, na_value=np.nan)
    valid = np.isfinite(power)
    if not valid.any():
        return np.nan
    inside = valid & (t >= 0) & (t <= length)
    watts = power[inside].mean() if inside.any() else power[valid][np.argmin(np.abs(t[valid] - length / 2))]
    return float(watts) * length / 1e9


#: Benchmarks whose bytes cross the host link (PCIe, C2C), not device memory: the datasheet table
#: has no link bandwidth, so they get no B/s ceiling (device memory bandwidth would be the wrong one).
HOST_LINK_BENCHMARKS = frozenset({"transfer"})
MEASURED_LABEL = "best measured in this run (not a ceiling)"


def ceiling_fractions(results: pd.DataFrame) -> pd.DataFrame:
    """Median rate per case and arm as a fraction of the datasheet ceiling, where one is known.

    The ceiling is the datasheet peak only (``ceilings.spec_for``: by the case's dtype for FLOP/s,
    device memory bandwidth for B/s; none for :data:`HOST_LINK_BENCHMARKS`). Beside it, labelled
    as such, the best rate measured in this run on that device (``ceilings.measured_ceilings``:
    best matmul per dtype, best device copy): what the run reached, never the denominator (a
    fraction of the best figure of the same run is about 100 % by construction). Columns:
    benchmark, case, metric, arm, device, rate, rate_unit, ceiling, source, fraction (NaN where no
    datasheet ceiling is known), measured (NaN where the run measured none), measured_label.
    """
    columns = ["benchmark", "case", "metric", "arm", "device", "rate", "rate_unit", "ceiling", "source", "fraction",
               "measured", "measured_label"]
    ok = ok_rows(results)
    timed = ok[(ok["unit"] == "s") & ok["work"].notna() & (ok["work"] > 0)]
    if timed.empty:
        return pd.DataFrame(columns=columns)
    summary = stats.summarise(timed)
    first = timed.drop_duplicates(stats.ARM_KEYS)[[*stats.ARM_KEYS, "work", "work_unit", "device", "params"]]
    frame = summary[[*stats.ARM_KEYS, "median"]].merge(first, on=stats.ARM_KEYS)
    measured = ceilings.measured_ceilings(results)
    rows = []
    for row in frame.itertuples(index=False):
        rate_unit = f"{row.work_unit}/s"
        dtype = str(json.loads(row.params or "{}").get("dtype", ""))
        host_link = row.benchmark in HOST_LINK_BENCHMARKS
        ceiling, source = (None, None) if host_link else _datasheet_ceiling(str(row.device), rate_unit, dtype)
        best = None if host_link else _measured_ceiling(str(row.device), rate_unit, dtype, measured)
        rate = row.work / row.median
        rows.append({"benchmark": row.benchmark, "case": row.case, "metric": row.metric, "arm": row.arm,
                     "device": row.device, "rate": rate, "rate_unit": rate_unit, "ceiling": ceiling,
                     "source": source, "fraction": rate / ceiling if ceiling else np.nan,
                     "measured": best if best else np.nan, "measured_label": MEASURED_LABEL if best else None})
    return pd.DataFrame(rows, columns=columns)


def _datasheet_ceiling(device: str, rate_unit: str, dtype: str) -> tuple[float | None, str | None]:
    """(datasheet ceiling in rate_unit, its source) for one device, or (None, None)."""
    spec = ceilings.spec_for(device)
    if spec and rate_unit == "FLOP/s" and dtype in spec.tflops:
        return spec.tflops[dtype] * 1e12, spec.source
    if spec and rate_unit == "B/s":
        return spec.mem_bw_gbs * 1e9, spec.source
    return None, None


def _measured_ceiling(device: str, rate_unit: str, dtype: str, measured: dict[str, dict]) -> float | None:
    """The best rate of its kind measured in this run on the device (rate_unit), or None."""
    if rate_unit == "FLOP/s":
        best = measured.get("matmul_tflops", {}).get(device, {}).get(dtype)
        return best * 1e12 if best else None
    if rate_unit == "B/s":
        best = measured.get("copy_gbs", {}).get(device)
        return best * 1e9 if best else None
    return None
