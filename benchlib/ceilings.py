"""Hardware ceilings: datasheet peaks per GPU product, so a result can say "x % of ceiling".

The table is keyed on the exact product name NVML and CUDA report (``NVIDIA H100 80GB HBM3``), the
``NVIDIA `` prefix and a ``cuda:N `` device label prefix aside, case and spacing ignored. Nothing
matches by substring: an ``NVIDIA GH200 480GB`` is not an H200 and an ``NVIDIA GB200`` is not a
B200. A product not in the table is *unknown* (:func:`lookup` says so and why) and gets no fraction.

A MIG slice (``NVIDIA H100 80GB HBM3 MIG 1g.10gb``) gets its parent's peaks scaled to its share:
compute by its share of the SMs (the slice's SM count when the fingerprint has it, else its compute
slices out of 7), memory bandwidth by its share of the memory (the profile's GB out of the product's).

Spec values are dense (no structured sparsity) vendor datasheet figures: leads, not truths; the
workloads also measure the best rates of the same run (best matmul, best copy), which the report
shows beside the datasheet ceiling, labelled as measured, never as the denominator of a fraction.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import pandas as pd

#: A MIG device name: the parent's name, "MIG", then the profile (``3g.40gb``, ``1g.10gb+me``).
_MIG = re.compile(r"^(?P<parent>.+?)\s+MIG\s+(?P<slices>\d+)g\.(?P<gb>\d+)gb(?:\+me)?$", re.I)
_LABEL = re.compile(r"^cuda:\d+\s+", re.I)  # benchlib.device.Device.label's prefix
MIG_COMPUTE_SLICES = 7  # compute slices of a MIG-capable GPU (A100, H100, H200, B200)


@dataclass(frozen=True)
class GpuSpec:
    product: str  # the exact product name, as NVML reports it
    tflops: dict[str, float]  # dtype -> dense TFLOP/s
    mem_bw_gbs: float  # device memory bandwidth, GB/s (10^9 bytes)
    source: str
    sms: int | None = None  # streaming multiprocessors of the whole GPU
    memory_gb: float | None = None  # nominal memory of the product (GB, as the name and MIG profiles say)
    notes: tuple[str, ...] = field(default=())

    @property
    def match(self) -> str:  # the key it is found by (kept for callers of the former substring table)
        return normalise(self.product)


_H100_SXM = {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}
_A100 = {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}

SPECS: tuple[GpuSpec, ...] = (
    GpuSpec("NVIDIA H100 80GB HBM3", _H100_SXM, 3350.0, "NVIDIA H100 SXM datasheet", 132, 80),
    GpuSpec("NVIDIA H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}, 2000.0,
            "NVIDIA H100 PCIe datasheet", 114, 80),
    GpuSpec("NVIDIA H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}, 3900.0,
            "NVIDIA H100 NVL datasheet", 132, 94),
    GpuSpec("NVIDIA H200", _H100_SXM, 4800.0, "NVIDIA H200 SXM datasheet", 132, 141),
    GpuSpec("NVIDIA H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}, 4800.0,
            "NVIDIA H200 NVL datasheet", 132, 141),
    GpuSpec("NVIDIA GH200 480GB", _H100_SXM, 4000.0, "NVIDIA GH200 datasheet (96 GB HBM3)", 132, 96),
    GpuSpec("NVIDIA GH200 144G HBM3e", _H100_SXM, 4900.0, "NVIDIA GH200 datasheet (144 GB HBM3e)", 132, 144),
    GpuSpec("NVIDIA A100-SXM4-80GB", _A100, 2039.0, "NVIDIA A100 datasheet", 108, 80),
    GpuSpec("NVIDIA A100-SXM4-40GB", _A100, 1555.0, "NVIDIA A100 datasheet", 108, 40),
    GpuSpec("NVIDIA A100 80GB PCIe", _A100, 1935.0, "NVIDIA A100 datasheet", 108, 80),
    GpuSpec("NVIDIA A100-PCIE-40GB", _A100, 1555.0, "NVIDIA A100 datasheet", 108, 40),
    GpuSpec("NVIDIA L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0, "fp16": 362.0}, 864.0,
            "NVIDIA L40S datasheet", 142, 48),
    GpuSpec("NVIDIA B200", {"tf32": 1100.0, "bf16": 2250.0, "fp16": 2250.0}, 8000.0,
            "NVIDIA DGX B200 datasheet, per GPU", 148, 180),
    GpuSpec("NVIDIA GB200", {"fp32": 80.0, "tf32": 1250.0, "bf16": 2500.0, "fp16": 2500.0}, 8000.0,
            "NVIDIA GB200 NVL72 datasheet, per GPU (72 GPUs)", None, 186),
    # DGX Spark. NVIDIA publishes 1 PFLOP of FP4 with sparsity (DGX Spark datasheet: 500 dense) and
    # 31 TFLOPS FP32 (GB10 presentation, Hot Chips 2025); no dense BF16/FP16/TF32 tensor figure, so
    # those are unknown here rather than guessed. 273 GB/s LPDDR5x, shared by CPU and GPU.
    GpuSpec("NVIDIA GB10", {"fp32": 31.0, "fp4": 500.0}, 273.0,
            "NVIDIA DGX Spark datasheet (273 GB/s unified LPDDR5x; 1 PFLOP FP4 sparse = 500 dense) and "
            "NVIDIA's GB10 Hot Chips 2025 presentation (31 TFLOPS FP32); no published dense BF16/FP16/TF32 peak",
            48, 128, notes=("unified memory: the GPU shares the host's 128 GB",)),
)


def normalise(name: str) -> str:
    """The key a product is found by: no ``cuda:N `` label or ``NVIDIA `` prefix, lower case, one space."""
    name = _LABEL.sub("", " ".join(name.split()))
    return re.sub(r"^nvidia\s+", "", name, flags=re.I).lower()


_BY_NAME = {spec.match: spec for spec in SPECS}


@dataclass(frozen=True)
class Lookup:
    """The ceilings of one device name: ``spec`` (None when unknown) and a sentence on how it was found."""

    name: str
    spec: GpuSpec | None
    reason: str

    @property
    def known(self) -> bool:
        return self.spec is not None


def lookup(device_name: str, mig_sm_count: int | None = None) -> Lookup:
    """The datasheet ceilings of the exact product ``device_name`` names (a MIG slice scaled to its share).

    ``mig_sm_count``: the slice's SM count (fingerprint ``gpus.*.mig_devices.*.sm_count``), which
    makes the compute share exact; without it the share is the profile's compute slices out of 7.
    """
    key = normalise(device_name)
    if not key or key == "cpu":
        return Lookup(device_name, None, "no GPU: no datasheet ceiling")
    spec = _BY_NAME.get(key)
    if spec is not None:
        return Lookup(device_name, spec, f"datasheet of the {spec.product} ({spec.source})")
    mig = _MIG.match(key)
    if mig is None:
        return Lookup(device_name, None, f"unknown product {device_name!r}: not in benchlib.ceilings.SPECS, "
                                         "so no datasheet ceiling (pass a measured or stated one)")
    parent = _BY_NAME.get(mig["parent"])
    if parent is None:
        return Lookup(device_name, None, f"MIG slice of an unknown product {mig['parent']!r}: no datasheet ceiling")
    scaled = _scale_for_mig(parent, int(mig["slices"]), int(mig["gb"]), mig_sm_count)
    return Lookup(device_name, scaled, f"MIG slice {mig['slices']}g.{mig['gb']}gb of the {parent.product}: {scaled.source}")


def _scale_for_mig(parent: GpuSpec, slices: int, gb: int, sm_count: int | None) -> GpuSpec:
    if sm_count and parent.sms:
        compute, how = sm_count / parent.sms, f"{sm_count} of {parent.sms} SMs"
    else:
        compute, how = slices / MIG_COMPUTE_SLICES, f"{slices} of {MIG_COMPUTE_SLICES} compute slices"
    memory = min(1.0, gb / parent.memory_gb) if parent.memory_gb else slices / MIG_COMPUTE_SLICES
    source = (f"{parent.source}, scaled to the MIG slice: compute x {compute:.3f} ({how}), "
              f"memory bandwidth x {memory:.3f} ({gb} of {parent.memory_gb:g} GB)")
    return replace(parent, product=f"{parent.product} MIG {slices}g.{gb}gb",
                   tflops={dtype: peak * compute for dtype, peak in parent.tflops.items()},
                   mem_bw_gbs=parent.mem_bw_gbs * memory, source=source,
                   sms=sm_count or (round(parent.sms * compute) if parent.sms else None), memory_gb=float(gb))


def spec_for(device_name: str, mig_sm_count: int | None = None) -> GpuSpec | None:
    """The ceilings of ``device_name`` (a torch/NVML name or a ``cuda:N name`` label), None when unknown."""
    return lookup(device_name, mig_sm_count).spec


def peak_tflops(device_name: str, dtype: str) -> float | None:
    spec = spec_for(device_name)
    return spec.tflops.get(dtype) if spec else None


def peak_mem_bw_gbs(device_name: str) -> float | None:
    spec = spec_for(device_name)
    return spec.mem_bw_gbs if spec else None


def measured_ceilings(results: "pd.DataFrame") -> dict[str, dict]:
    """The best rates measured in the same run, shown beside the datasheet ceiling (not a ceiling).

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
