"""Device memory bandwidth: STREAM-style ``copy`` (dst <- src) and ``triad`` (a = b + s * c).

Each op is one kernel (``dst.copy_(src)``; ``torch.add(b, c, alpha=s, out=a)``) over buffers of
``size_mib`` MiB each, which should be several times the L2 cache so the figure is DRAM/HBM
bandwidth, not cache bandwidth (the metric note says how many L2s one buffer is). Bytes moved per
call are counted as read + write: copy 2 x size, triad 3 x size, so the rate is GB/s r+w, the
figure a datasheet's bandwidth is compared with. On a GPU the samples are enqueued back to back
(the timer's ``back_to_back`` mode), so they hold device time at the sustained rate. The summary
reports the fraction of the ceilings table's bandwidth (or of a stated ``peak_gbs``). On the CPU
the same ops measure host memory.
"""
from __future__ import annotations

from typing import Callable, Literal

from pydantic import Field

from ..device import Device
from ..diagnosis.classes import GPU_KERNELS, HOST, Sensitivity
from ..params import CommonParams, common_default
from ..timer import measure
from ..metricspec import time_metric
from . import Metric, Workload

MIB = 1024 * 1024
#: Bytes moved per byte of one buffer: reads + writes.
TRAFFIC = {"copy": 2, "triad": 3}
TRIAD_SCALAR = 3.0


class MembwParams(CommonParams):
    op: Literal["copy", "triad"] = "copy"
    size_mib: int = Field(64, gt=0, le=1 << 20)  # one buffer; every op uses 2 (copy) or 3 (triad)
    dtype: Literal["fp32", "fp16", "bf16", "fp64"] = "fp32"
    peak_gbs: float | None = Field(None, gt=0)  # a stated bandwidth; the ceilings table otherwise
    # this workload's timing defaults (its notebook's parameters cell is checked against the model)
    max_samples: int = common_default("max_samples", 100)
    max_time_s: float = common_default("max_time_s", 2.0)
    target_rel_ci: float = common_default("target_rel_ci", 0.01)


def bytes_moved(op: str, size_bytes: int) -> int:
    """Bytes read plus written by one call of ``op`` on buffers of ``size_bytes`` each."""
    return TRAFFIC[op] * size_bytes


def _torch_dtype(dtype: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}[dtype]


def _l2_note(device: Device, size_bytes: int) -> str:
    if not device.is_cuda:
        return "host memory (no GPU)"
    import torch

    l2 = getattr(torch.cuda.get_device_properties(device.torch_device), "L2_cache_size", 0)
    if not l2:
        return ""
    warning = "" if size_bytes >= 4 * l2 else " (under 4x L2: partly cache bandwidth)"
    return f"buffer = {size_bytes / l2:.1f}x L2 ({l2 / MIB:.0f} MiB){warning}"


def allocate(params: MembwParams, device: Device) -> list:
    """The op's buffers, ``size_mib`` MiB each: two for copy (dst, src), three for triad (a, b, c)."""
    import torch

    dtype = _torch_dtype(params.dtype)
    numel = params.size_mib * MIB // torch.empty((), dtype=dtype).element_size()
    return [torch.ones(numel, dtype=dtype, device=device.torch_device) for _ in range(TRAFFIC[params.op])]


def op_for(op: str, buffers: list) -> Callable[[], object]:
    """One kernel: ``dst.copy_(src)`` or ``torch.add(b, c, alpha=s, out=a)``."""
    import torch

    if op == "copy":
        dst, src = buffers
        return lambda: dst.copy_(src)
    a, b, c = buffers
    return lambda: torch.add(b, c, alpha=TRIAD_SCALAR, out=a)


def timed(params: MembwParams, device: Device, buffers: list) -> list[Metric]:
    """Time the op on ``buffers`` (from :func:`allocate`) with the shared timer."""
    size_bytes = buffers[0].numel() * buffers[0].element_size()
    config = params.timer_config(back_to_back=True)  # device-bound: sustained, as do_bench measures
    measurement = measure(op_for(params.op, buffers), device.torch_device, config)
    traffic = bytes_moved(params.op, size_bytes)
    note = f"{params.op}: {TRAFFIC[params.op]} x {params.size_mib} MiB read + written per call"
    l2 = _l2_note(device, size_bytes)
    return [Metric.from_measurement("time", measurement, work=float(traffic), work_unit="B",
                                    note=f"{note}; {l2}" if l2 else note)]


def run(params: MembwParams, device: Device) -> list[Metric]:
    return timed(params, device, allocate(params, device))


WORKLOAD = Workload(
    name="membw",
    description="device memory bandwidth, copy and triad over buffers much larger than L2; GB/s r+w, % of spec",
    params_model=MembwParams,
    case_keys=("op", "size_mib", "dtype"),
    run=run,
    metrics=(time_metric("time", "time per call"),),
    sensitivity=lambda params, on_gpu: Sensitivity(frozenset({GPU_KERNELS if on_gpu else HOST})),
)
