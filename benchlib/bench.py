"""The one call a benchmark notebook makes: validate params, run every case, write the invocation.

``run_benchmark("matmul", n=..., dtype=..., output_dir=...)`` captures the environment fingerprint
once, runs each case under the NVML sampler, and writes ``results.parquet``, ``telemetry.parquet``
and ``env.json`` atomically into ``output_dir`` (the runner's ``.../<case>/inv-<k>/``). Without an
``output_dir`` nothing is written: the notebook only shows the table.
"""
from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import _atomic, ceilings, fingerprint, formats, redact, schema
from .layout import ENV_FILE, RESULTS_FILE, TELEMETRY_FILE
from .device import Device, ordinals_for, resolve_device
from .errors import SkipCase
from .params import CommonParams, case_name, expand_cases, validate
from .schema import RunContext
from .telemetry import NvmlSampler
from .workloads import Metric, Workload, get_workload

__all__ = [
    "BenchResult", "RUN_KEYS", "notebook_parameters", "run_benchmark", "summarise_invocation",
    "write_invocation"
]

@dataclass
class BenchResult:
    """What a notebook gets back: the tidy results, telemetry and fingerprint of this invocation."""

    results: pd.DataFrame
    telemetry: pd.DataFrame
    env: dict[str, Any]
    output_dir: Path | None

    def summary(self) -> pd.DataFrame:
        """One row per case and metric: median, spread, rate and the fraction of the stated peak."""
        return summarise_invocation(self.results)

    def _repr_html_(self) -> str:
        return self.summary()._repr_html_()


def run_benchmark(
    benchmark: str,
    *,
    output_dir: str | Path | None = None,
    run_id: str = "adhoc",
    arm: str = "native",
    invocation: int = 0,
    **params: Any,
) -> BenchResult:
    workload = get_workload(benchmark)
    source = f"{benchmark} parameters"
    cases = [validate(workload.params_model, case, source) for case in expand_cases(params, workload.case_keys)]
    context = RunContext(run_id=run_id, arm=arm, invocation=int(invocation))
    env = fingerprint.capture()
    # which mode each case runs in (user: the environment's math modes and pools; forced: pinned)
    env["workload"] = {"benchmark": workload.name, "cases": [
        {"case": schema.case_id(case.model_dump(), workload.case_keys), **case.settings_record()} for case in cases]}
    frames = []
    hz = cases[0].telemetry_hz
    gpus = ordinals_for(case.device for case in cases)  # the GPUs these cases run on, not every GPU of the host
    with (NvmlSampler(hz=hz, gpu_indices=gpus or [0]) if hz > 0 else _NoSampler()) as sampler:
        for case in cases:
            frames.append(_run_case(workload, case, context))
    env["telemetry"] = sampler.summary()
    results = schema.conform(pd.concat(frames, ignore_index=True))
    telemetry = sampler.frame()
    if output_dir is not None:
        write_invocation(Path(output_dir), results, telemetry, env)
    return BenchResult(results, telemetry, env, Path(output_dir) if output_dir is not None else None)


RUN_KEYS = ("output_dir", "run_id", "arm", "invocation")


def notebook_parameters(benchmark: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's parameters from a notebook's namespace (its parameters cell plus what papermill
    injected): every field of the workload's params model and the runner's keys that are defined.

    A notebook passes ``**notebook_parameters("matmul", globals())`` to :func:`run_benchmark`, so a
    key set in a params file is never dropped because the call did not list it.
    """
    fields = set(get_workload(benchmark).params_model.model_fields) | set(RUN_KEYS)
    return {key: value for key, value in namespace.items() if key in fields}


def write_invocation(directory: Path, results: pd.DataFrame, telemetry: pd.DataFrame, env: dict) -> None:
    """Write the three files atomically, secrets redacted, each with its format version
    (:mod:`benchlib.formats`); results last, so its presence means the set is whole."""
    _atomic.write_json(directory / ENV_FILE, formats.stamped("env", fingerprint.redact(env)))
    _atomic.write_parquet(directory / TELEMETRY_FILE,
                          redact.redact_frame(schema.conform(telemetry, schema.TELEMETRY_COLUMNS)),
                          formats.parquet_metadata("telemetry"))
    _atomic.write_parquet(directory / RESULTS_FILE, redact.redact_frame(schema.conform(results)),
                          formats.parquet_metadata("results"))


def _run_case(workload: Workload, case: CommonParams, context: RunContext) -> pd.DataFrame:
    base = {
        "run_id": context.run_id,
        "arm": context.arm,
        "benchmark": workload.name,
        "case": case_name(workload, case),
        "params": schema.params_json(case.model_dump()),
        "invocation": context.invocation,
    }
    device: Device | None = None
    try:
        device = resolve_device(case.device)
        metrics = workload.run(case, device)
        return _metric_rows(base, metrics, device)
    except SkipCase as skip:
        return _status_row(base, schema.STATUS_SKIPPED, str(skip), device)
    except Exception as exc:  # a failed case is recorded and the suite goes on (docs/architecture.md, "Contracts")
        return _status_row(base, schema.STATUS_FAILED, _failure_note(exc), device)
    finally:
        _release_memory(device)


def _metric_rows(base: dict, metrics: list[Metric], device: Device) -> pd.DataFrame:
    rows = []
    for metric in metrics:
        note = "; ".join(part for part in (metric.note, device.note) if part)
        for index, sample in enumerate(metric.samples):
            rows.append({
                **base, "sample": index, "metric": metric.name, "unit": metric.unit,
                "value": sample.seconds, "work": metric.work if metric.work is not None else np.nan,
                "work_unit": metric.work_unit, "start_ns": sample.start_ns, "end_ns": sample.end_ns,
                "device": device.label, "status": schema.STATUS_OK, "note": note,
            })
    return pd.DataFrame(rows)


def _status_row(base: dict, status: str, note: str, device: Device | None) -> pd.DataFrame:
    now = time.time_ns()
    return pd.DataFrame([{
        **base, "sample": 0, "metric": "status", "unit": "", "value": np.nan, "work": np.nan,
        "work_unit": None, "start_ns": now, "end_ns": now, "device": device.label if device else "unknown",
        "status": status, "note": note,
    }])


def _failure_note(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, MemoryError) or "out of memory" in text.lower() or type(exc).__name__ == "OutOfMemoryError":
        first_line = text.splitlines()[0]
        return f"failed: out of memory ({first_line[:300]}); reduce the size in the params file"
    return f"failed: {text.splitlines()[0][:500]}"


def _release_memory(device: Device | None) -> None:
    gc.collect()
    if device is not None and device.is_cuda:
        import torch

        torch.cuda.empty_cache()


class _NoSampler:
    """Stands in for the sampler when ``telemetry_hz`` is 0, so the code path stays one."""

    def __enter__(self) -> "_NoSampler":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def summary(self) -> dict[str, Any]:
        return {"status": "off: telemetry_hz=0"}

    def frame(self) -> pd.DataFrame:
        return schema.empty_telemetry()


def summarise_invocation(results: pd.DataFrame) -> pd.DataFrame:
    """Median per case and metric, with the rate and % of the datasheet peak where known."""
    rated = schema.with_rates(results)
    rows = []
    for (case, metric), group in rated.groupby(["case", "metric"], sort=False, dropna=False):
        first = group.iloc[0]
        row = {"case": case, "metric": metric, "status": first["status"], "device": first["device"]}
        if first["status"] != schema.STATUS_OK:
            rows.append({**row, "note": first["note"]})
            continue
        row.update({"n": len(group), "median": group["value"].median(), "unit": first["unit"],
                    "p5": group["value"].quantile(0.05), "p95": group["value"].quantile(0.95)})
        if group["rate"].notna().any():
            rate = first["work"] / row["median"]
            row.update(_rate_columns(rate, first["rate_unit"], first))
        rows.append(row)
    return pd.DataFrame(rows)


def _rate_columns(rate: float, rate_unit: str, row: pd.Series) -> dict[str, Any]:
    scale = {"FLOP/s": (1e12, "TFLOP/s"), "B/s": (1e9, "GB/s")}.get(rate_unit, (1.0, rate_unit))
    out: dict[str, Any] = {"rate": rate / scale[0], "rate_unit": scale[1]}
    params = json.loads(row["params"])
    peak = params.get("peak_tflops") or ceilings.peak_tflops(str(row["device"]), params.get("dtype", ""))
    if rate_unit == "FLOP/s" and peak:
        out["pct_of_peak"] = 100.0 * rate / (peak * 1e12)
    if rate_unit == "B/s" and "peak_gbs" in params:  # device-memory bandwidth (membw), not host links
        bandwidth = params["peak_gbs"] or ceilings.peak_mem_bw_gbs(str(row["device"]))
        if bandwidth:
            out["pct_of_peak"] = 100.0 * rate / (bandwidth * 1e9)
    return out
