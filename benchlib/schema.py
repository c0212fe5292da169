"""The one results schema (docs/architecture.md, "The results table") and the telemetry schema.

results.parquet is long/tidy: one row per timed sample and metric. Derived figures (TFLOP/s,
GB/s, tokens/s, fraction of a ceiling) are computed from ``value`` and ``work`` by
:func:`with_rates`, never stored instead of the raw times.

A case that could not run (no GPU, out of memory, a crash) keeps one row with ``status``
``skipped`` or ``failed``, ``value`` NaN and the reason in ``note``, so a report shows it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

__all__ = [
    "INVOCATION_KEYS", "RESULT_COLUMNS", "RunContext", "STATUS_FAILED", "STATUS_OK", "STATUS_SKIPPED",
    "TELEMETRY_COLUMNS", "case_id", "conform", "empty_results", "empty_telemetry", "params_json",
    "with_rates"
]

#: column -> pandas dtype. Order is the on-disk order.
RESULT_COLUMNS: dict[str, str] = {
    "run_id": "string",
    "arm": "string",
    "benchmark": "string",
    "case": "string",  # a short id of the case's parameters, e.g. "n=8192,dtype=bf16"
    "params": "string",  # the case's full parameters as JSON
    "invocation": "int64",
    "sample": "int64",
    "metric": "string",  # e.g. "time", "ttft", "h2d_time"
    "unit": "string",  # unit of value, e.g. "s"
    "value": "float64",
    "work": "float64",  # work done by one sample (FLOP, B, tokens) or NaN
    "work_unit": "string",  # "FLOP", "B", "token" or <NA>
    "start_ns": "int64",  # wall clock (time.time_ns) when the sample started
    "end_ns": "int64",  # wall clock when it ended; joins to telemetry.timestamp_ns
    "device": "string",  # "cuda:0 NVIDIA H100 80GB HBM3" or "cpu"
    "status": "string",  # ok | skipped | failed
    "note": "string",  # why skipped/failed, or what the sample means
}

STATUS_OK, STATUS_SKIPPED, STATUS_FAILED = "ok", "skipped", "failed"

#: NVML telemetry, one row per poll of one GPU.
TELEMETRY_COLUMNS: dict[str, str] = {
    "timestamp_ns": "int64",  # wall clock (time.time_ns) of the poll
    "gpu_index": "int64",  # the CUDA ordinal (the N of cuda:N), not the NVML index
    "sm_clock_mhz": "float64",
    "mem_clock_mhz": "float64",
    "power_w": "float64",  # instantaneous power (NVML field value)
    "energy_mj": "float64",  # total energy counter since driver load, mJ; read at ~10 Hz (a read costs
    # ~3 ms on an H100), always on the first and last poll, NaN in between: difference dropna() reads
    "temperature_c": "float64",
    "gpu_util_pct": "float64",
    "mem_util_pct": "float64",
    "mem_used_bytes": "float64",
    "clock_event_reasons": "string",  # decoded names joined with "|", "" when none
    # which GPU's counters the row holds: its UUID, and the MIG slice the invocation uses when the
    # row is that slice's parent GPU (every tenant of the GPU shows in its counters); <NA> otherwise
    "gpu_uuid": "string",
    "mig_uuid": "string",
    # memory, read at ~10 Hz (telemetry memory_hz) and on the first and last poll, NaN in between;
    # host-wide and per process tree, the same in every arm (benchlib.hostmem)
    "mem_available_bytes": "float64",  # /proc/meminfo MemAvailable: free + reclaimable page cache
    "cgroup_mem_current_bytes": "float64",  # this process's cgroup memory.current (v1 usage_in_bytes)
    "cgroup_mem_peak_bytes": "float64",  # memory.peak (v1 max_usage_in_bytes); NaN where absent
    "proc_rss_bytes": "float64",  # RSS summed over this process and its descendants
    "proc_gpu_bytes": "float64",  # the driver's view (NVML) of that process tree's memory on this GPU
    "cuda_free_bytes": "float64",  # cudaMemGetInfo of the device (only once this process uses it)
    "cuda_total_bytes": "float64",
}

#: Columns that identify one invocation of one case.
INVOCATION_KEYS = ["run_id", "arm", "benchmark", "case", "invocation"]


@dataclass(frozen=True)
class RunContext:
    """Who produced a row: filled by the runner, defaults for a notebook run by hand."""

    run_id: str = "adhoc"
    arm: str = "native"
    invocation: int = 0


def case_id(params: Mapping[str, Any], keys: Iterable[str]) -> str:
    """A short, filesystem-safe id from the case-defining parameters, e.g. ``n=8192,dtype=bf16``."""
    parts = [f"{key}={params[key]}" for key in keys if key in params]
    return ",".join(parts) if parts else "default"


def params_json(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), sort_keys=True, default=str)


def empty_results() -> pd.DataFrame:
    return _empty(RESULT_COLUMNS)


def empty_telemetry() -> pd.DataFrame:
    return _empty(TELEMETRY_COLUMNS)


def _empty(columns: Mapping[str, str]) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})


def conform(frame: pd.DataFrame, columns: Mapping[str, str] = RESULT_COLUMNS) -> pd.DataFrame:
    """Return ``frame`` with exactly the schema's columns, in order, with the schema's dtypes.

    Raises ValueError naming any missing column, so a workload that forgets one fails loudly.
    """
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"results frame lacks schema columns: {', '.join(missing)}")
    out = frame.loc[:, list(columns)].copy()
    for name, dtype in columns.items():
        out[name] = out[name].astype(dtype)
    return out.reset_index(drop=True)


def with_rates(results: pd.DataFrame) -> pd.DataFrame:
    """Add ``rate`` (work per second) and ``rate_unit`` (e.g. ``FLOP/s``) where a time has work."""
    out = results.copy()
    timed = (out["unit"] == "s") & out["work"].notna() & (out["value"] > 0)
    out["rate"] = np.where(timed, out["work"] / out["value"].where(timed, np.nan), np.nan)
    out["rate_unit"] = pd.Series(pd.NA, index=out.index, dtype="string")
    out.loc[timed, "rate_unit"] = out.loc[timed, "work_unit"] + "/s"
    return out
