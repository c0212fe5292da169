"""Hardware ceilings: datasheet peaks per GPU, so a result can say "x % of ceiling".

Spec values are dense (no structured sparsity) vendor datasheet figures: leads, not truths; the
workloads also measure ceilings in the same run (best matmul, best copy), which the analysis
prefers when present. A GPU not in the table gets None: the fraction is then not reported.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class GpuSpec:
    match: str  # substring of torch.cuda.get_device_name / NVML name
    tflops: dict[str, float]  # dtype -> dense TFLOP/s
    mem_bw_gbs: float  # device memory bandwidth, GB/s (10^9 bytes)
    source: str


SPECS: tuple[GpuSpec, ...] = (
    # Order matters: the first match wins, so specific names come before generic ones.
    GpuSpec("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}, 2000.0, "NVIDIA H100 datasheet"),
    GpuSpec("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}, 3900.0, "NVIDIA H100 datasheet"),
    GpuSpec("H100", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}, 3350.0, "NVIDIA H100 SXM datasheet"),
    GpuSpec("H200", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}, 4800.0, "NVIDIA H200 SXM datasheet"),
    GpuSpec("A100-SXM4-80GB", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 2039.0, "NVIDIA A100 datasheet"),
    GpuSpec("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 1555.0, "NVIDIA A100 40GB datasheet"),
    GpuSpec("L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0, "fp16": 362.0}, 864.0, "NVIDIA L40S datasheet"),
    GpuSpec("B200", {"tf32": 1100.0, "bf16": 2250.0, "fp16": 2250.0}, 8000.0, "NVIDIA DGX B200 datasheet, per GPU"),
    GpuSpec("GB10", {}, 273.0, "NVIDIA DGX Spark datasheet (LPDDR5x, unified memory)"),
)


def spec_for(device_name: str) -> GpuSpec | None:
    for spec in SPECS:
        if spec.match.lower() in device_name.lower():
            return spec
    return None


def peak_tflops(device_name: str, dtype: str) -> float | None:
    spec = spec_for(device_name)
    return spec.tflops.get(dtype) if spec else None


def peak_mem_bw_gbs(device_name: str) -> float | None:
    spec = spec_for(device_name)
    return spec.mem_bw_gbs if spec else None


def measured_ceilings(results: "pd.DataFrame") -> dict[str, dict]:
    """Ceilings measured in the same run, which the analysis prefers to the datasheet.

    Returns ``{"copy_gbs": {device: GB/s}, "matmul_tflops": {device: {dtype: TFLOP/s}}}``: the
    best device-memory copy bandwidth (the ``membw`` workload's ``copy``, bytes read + written) and
    the best matrix-product rate per dtype. "Best" is the highest per-invocation median rate over
    every case and arm on that device, i.e. the ceiling some arm reached. Empty dicts when the run
    has no such rows.
    """
    copies = _invocation_rates(results, "membw", lambda params: params.get("op") == "copy")
    products = _invocation_rates(results, "matmul", lambda params: True)
    copy_gbs = {str(device): float(rate) / 1e9 for device, rate in copies.groupby("device")["rate"].max().items()}
    matmul: dict[str, dict[str, float]] = {}
    for (device, dtype), rate in products.groupby(["device", "dtype"])["rate"].max().items():
        matmul.setdefault(str(device), {})[str(dtype)] = float(rate) / 1e12
    return {"copy_gbs": copy_gbs, "matmul_tflops": matmul}


def _invocation_rates(results: "pd.DataFrame", benchmark: str, keep: Callable[[dict], bool]) -> "pd.DataFrame":
    """Median rate (work / median time) of each invocation of ``benchmark``'s ``time`` metric."""
    import pandas as pd

    columns = ["device", "dtype", "rate"]
    rows = results[(results["benchmark"] == benchmark) & (results["metric"] == "time")
                   & (results["status"] == "ok") & results["work"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    params = rows["params"].map(json.loads)
    rows = rows[params.map(keep).astype(bool)].assign(dtype=params.map(lambda p: p.get("dtype", "")))
    grouped = rows.groupby(["arm", "case", "invocation", "device", "dtype"], dropna=False)
    medians = grouped.agg(value=("value", "median"), work=("work", "first")).reset_index()
    medians["rate"] = medians["work"] / medians["value"]
    return medians[columns]
