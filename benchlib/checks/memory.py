"""Memory differences between arms, measured the same way in every arm.

:func:`memory_by_arm` gathers, per benchmark, case and arm (median over invocations), every memory
quantity the run recorded:

- from telemetry (:mod:`benchlib.telemetry`, per invocation): the peak RSS of the process tree, the
  peak of its GPU memory as the driver sees it, the peak of the GPU's used memory (NVML), the cgroup's
  peak, and the lowest MemAvailable and ``cudaMemGetInfo`` free seen;
- from results: the KV cache an LLM case got (``kv_cache_tokens``, ``kv_cache_bytes``: an arm that
  leaves less free memory gets a smaller one with ``kv_cache: free_memory``), ``peak_memory`` (torch's
  allocator), ``process_peak_rss``, ``cuda_free_at_end``, and memcap's readings;
- from the fingerprints: what was available (page cache counted), ``cudaMemGetInfo`` free and the
  cgroup limit when the invocation started (the environment diff leaves these instants out).

:func:`memory_findings` names each quantity whose arm differs from the baseline by at least
``min_relative`` and, for bytes, ``min_bytes``, with the DGX Spark reference of what was seen there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd

from . import Finding, invocation_keys

GIB = 2**30
MIN_RELATIVE = 0.10
MIN_BYTES = GIB
#: What the seed's public twin saw on a DGX Spark, Docker against native (the reference for these findings).
SEED_TWIN_REFERENCE = ("reference: on a DGX Spark (GB10, unified memory) the seed's twin measured, in Docker against "
                       "native, 20-31 GiB more peak memory and a 40-63 % smaller KV cache at equal throughput")
QUANTITY_COLUMNS = ["benchmark", "case", "arm", "quantity", "value", "unit", "invocations", "label", "worse_when"]


@dataclass(frozen=True)
class Quantity:
    name: str
    label: str
    unit: str  # "B" or "token"
    worse_when: str  # "higher" (memory used) or "lower" (memory left, cache got)


#: Telemetry column -> (quantity, how one invocation is summarised).
TELEMETRY_QUANTITIES: dict[str, tuple[Quantity, str]] = {
    "proc_rss_bytes": (Quantity("peak_process_tree_rss", "peak RSS of the process tree", "B", "higher"), "max"),
    "proc_gpu_bytes": (Quantity("peak_process_gpu", "peak GPU memory of the process tree (driver's view)", "B",
                                "higher"), "max"),
    "mem_used_bytes": (Quantity("peak_gpu_used", "peak used memory of the GPU (NVML, every process)", "B", "higher"), "max"),
    "cgroup_mem_peak_bytes": (Quantity("peak_cgroup_memory", "peak memory of the cgroup", "B", "higher"), "max"),
    "mem_available_bytes": (Quantity("min_mem_available", "lowest MemAvailable during the run", "B", "lower"), "min"),
    "cuda_free_bytes": (Quantity("min_cuda_free", "lowest cudaMemGetInfo free during the run", "B", "lower"), "min"),
}
#: Result metric -> quantity.
RESULT_QUANTITIES: dict[str, Quantity] = {
    "kv_cache_tokens": Quantity("kv_cache_tokens", "KV cache", "token", "lower"),
    "kv_cache_bytes": Quantity("kv_cache_bytes", "KV cache size", "B", "lower"),
    "peak_memory": Quantity("peak_memory", "peak of torch's allocator", "B", "higher"),
    "process_peak_rss": Quantity("process_peak_rss", "peak RSS of the process (VmHWM)", "B", "higher"),
    "cuda_free_at_end": Quantity("cuda_free_at_end", "cudaMemGetInfo free with the model loaded", "B", "lower"),
    "allocated": Quantity("allocated", "memory memcap could allocate", "B", "lower"),
    "available": Quantity("available", "memory available (page cache counted)", "B", "lower"),
    "cuda_free": Quantity("cuda_free", "cudaMemGetInfo free", "B", "lower"),
}
#: Fingerprint key path -> quantity.
ENV_QUANTITIES: dict[tuple[str, ...], Quantity] = {
    ("memory", "available_bytes"): Quantity("env_available", "memory available at the start (page cache counted)",
                                            "B", "lower"),
    ("memory", "cuda_mem_get_info", "free_bytes"): Quantity("env_cuda_free", "cudaMemGetInfo free at the start",
                                                            "B", "lower"),
    ("cgroup", "memory_max"): Quantity("env_cgroup_memory_max", "cgroup memory limit", "B", "lower"),
}


def _rows(benchmark: Any, case: Any, arm: Any, quantity: Quantity, per_invocation: pd.Series) -> dict[str, Any]:
    values = pd.to_numeric(per_invocation, errors="coerce").dropna()
    return {"benchmark": benchmark, "case": case, "arm": arm, "quantity": quantity.name,
            "value": float(values.median()) if len(values) else math.nan, "unit": quantity.unit,
            "invocations": int(len(values)), "label": quantity.label, "worse_when": quantity.worse_when}


def _from_telemetry(telemetry: pd.DataFrame) -> list[dict[str, Any]]:
    keys = invocation_keys(telemetry)
    if telemetry.empty or len(keys) < 4:
        return []
    rows = []
    for column, (quantity, how) in TELEMETRY_QUANTITIES.items():
        if column not in telemetry or telemetry[column].isna().all():
            continue
        per_invocation = telemetry.groupby(keys, sort=False)[column].agg(how)
        for (arm, benchmark, case), part in per_invocation.groupby(level=["arm", "benchmark", "case"], sort=False):
            rows.append(_rows(benchmark, case, arm, quantity, part))
    return rows


def _from_results(results: pd.DataFrame) -> list[dict[str, Any]]:
    if results.empty:
        return []
    ok = results[(results["status"] == "ok") & results["metric"].isin(RESULT_QUANTITIES)]
    rows = []
    for (benchmark, case, arm, metric), part in ok.groupby(["benchmark", "case", "arm", "metric"], sort=False):
        rows.append(_rows(benchmark, case, arm, RESULT_QUANTITIES[metric], part.groupby("invocation")["value"].median()))
    return rows


def _dig(env: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = env
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _from_envs(envs: Mapping[tuple, Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    by_case: dict[tuple, list[Mapping[str, Any]]] = {}
    for (arm, benchmark, case, _), env in envs.items():
        by_case.setdefault((benchmark, case, arm), []).append(env)
    for (benchmark, case, arm), found in by_case.items():
        for path, quantity in ENV_QUANTITIES.items():
            values = pd.Series([_dig(env, path) for env in found], dtype="float64")
            if values.notna().any():
                rows.append(_rows(benchmark, case, arm, quantity, values))
    return rows


def memory_by_arm(results: pd.DataFrame | None = None, telemetry: pd.DataFrame | None = None,
                  envs: Mapping[tuple, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Every memory quantity of the run per benchmark, case and arm (columns :data:`QUANTITY_COLUMNS`)."""
    rows = (_from_results(results if results is not None else pd.DataFrame())
            + _from_telemetry(telemetry if telemetry is not None else pd.DataFrame())
            + _from_envs(envs or {}))
    return pd.DataFrame(rows, columns=QUANTITY_COLUMNS)


def _amount(value: float, unit: str) -> str:
    return f"{value / GIB:.1f} GiB" if unit == "B" else f"{value:,.0f} tokens"


def memory_findings(quantities: pd.DataFrame, baseline: str | None = None, min_relative: float = MIN_RELATIVE,
                    min_bytes: float = MIN_BYTES) -> list[Finding]:
    """Each quantity on which an arm differs from ``baseline`` (default: ``native`` when present, else
    the first arm) by at least ``min_relative`` of the baseline's value and, for bytes, ``min_bytes``."""
    findings: list[Finding] = []
    if quantities.empty:
        return findings
    arms = list(dict.fromkeys(quantities["arm"]))
    baseline = baseline or ("native" if "native" in arms else arms[0])
    for (benchmark, case, name), rows in quantities.groupby(["benchmark", "case", "quantity"], sort=False):
        base = rows[rows["arm"] == baseline]["value"]
        if base.empty or not base.notna().all() or base.iloc[0] == 0:
            continue
        reference = float(base.iloc[0])
        for _, row in rows[(rows["arm"] != baseline) & rows["value"].notna()].iterrows():
            difference = float(row["value"]) - reference
            relative = difference / reference
            if abs(relative) < min_relative or (row["unit"] == "B" and abs(difference) < min_bytes):
                continue
            worse = (difference > 0) == (row["worse_when"] == "higher")
            if row["quantity"] == "kv_cache_tokens":
                message = (f"{benchmark} {case}: in {row['arm']} the KV cache holds {abs(relative):.0%} "
                           f"{'fewer' if difference < 0 else 'more'} tokens than in {baseline} "
                           f"({_amount(row['value'], 'token')} vs {_amount(reference, 'token')}): "
                           f"{'the arm leaves less memory free after the weights' if difference < 0 else 'the arm leaves more memory free'}.")
            else:
                direction = "more" if difference > 0 else "less"
                message = (f"{benchmark} {case}: {row['label']}: {_amount(abs(difference), row['unit'])} {direction} in "
                           f"{row['arm']} than in {baseline} ({_amount(row['value'], row['unit'])} vs "
                           f"{_amount(reference, row['unit'])}, {relative:+.0%}).")
            findings.append(Finding(
                "memory", "difference", str(benchmark), str(case), (str(row["arm"]), baseline), message,
                (SEED_TWIN_REFERENCE,) if worse else (),
                {"quantity": name, "arm_value": float(row["value"]), "baseline_value": reference,
                 "difference": difference, "relative": relative, "unit": row["unit"], "worse": worse},
            ))
    return findings
