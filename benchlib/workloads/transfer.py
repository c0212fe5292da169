"""Host <-> device copies: bandwidth over a size sweep, latency of small copies, many small copies.

``direction`` h2d or d2h, host ``memory`` pinned (page-locked; copied with ``non_blocking=True``,
straight by DMA) or pageable (ordinary memory; the driver stages it through a pinned bounce buffer,
synchronously). ``mode`` ``single`` times one copy of ``size_kib`` per sample: its time is the
latency for small sizes and gives GB/s for large ones. ``many_small`` times ``count`` back-to-back
copies of ``size_kib`` per sample (reported per copy): the pattern of a data pipeline that moves
many small tensors, where pageable memory has been seen ~50x slower than pinned (DGX Spark).

Copies are timed with CUDA events on the current stream. The workload needs a GPU: on a machine
without one every case is recorded as skipped ("skipped: no GPU").
"""
from __future__ import annotations

from typing import Callable, Literal

from pydantic import Field

from ..device import Device
from ..diagnosis.classes import COPIES, HOST, always
from ..errors import SkipCase
from ..params import CommonParams, common_default
from ..timer import measure
from ..metricspec import time_metric
from . import Metric, Workload

KIB = 1024


class TransferParams(CommonParams):
    mode: Literal["single", "many_small"] = "single"
    direction: Literal["h2d", "d2h"] = "h2d"
    memory: Literal["pinned", "pageable"] = "pinned"
    size_kib: int = Field(1024, gt=0, le=64 * 1024 * 1024)  # bytes of one copy, in KiB
    count: int = Field(1000, ge=1, le=1_000_000)  # copies per sample in many_small mode
    # this workload's timing defaults (its notebook's parameters cell is checked against the model)
    max_samples: int = common_default("max_samples", 100)
    max_time_s: float = common_default("max_time_s", 2.0)
    target_rel_ci: float = common_default("target_rel_ci", 0.01)


def _copy_fn(params: TransferParams, device: Device) -> Callable[[], None]:
    """Allocate the host and device buffers (inside run, so a size that does not fit fails the case)."""
    import torch

    nbytes = params.size_kib * KIB
    pinned = params.memory == "pinned"
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
    host.fill_(1)  # fault every page in now, not inside the first timed copy
    gpu = torch.ones(nbytes, dtype=torch.uint8, device=device.torch_device)
    dst, src = (gpu, host) if params.direction == "h2d" else (host, gpu)

    def copy() -> None:
        dst.copy_(src, non_blocking=pinned)  # non_blocking only with pinned memory

    return copy


def run(params: TransferParams, device: Device) -> list[Metric]:
    if not device.is_cuda:
        raise SkipCase("skipped: no GPU (host<->device copies need a CUDA device)")
    copy = _copy_fn(params, device)
    repeats = params.count if params.mode == "many_small" else 1
    measurement = measure(copy, device.torch_device, params.timer_config(inner_repeats=repeats))
    what = (f"seconds per copy, {repeats} back-to-back copies per sample" if repeats > 1
            else "seconds per copy, one copy per sample (latency for small sizes)")
    note = f"{params.direction} {params.memory} {params.size_kib} KiB; {what}"
    return [Metric.from_measurement("time", measurement, work=float(params.size_kib * KIB), work_unit="B",
                                    note=note)]


WORKLOAD = Workload(
    name="transfer",
    description="host<->device copies, pinned vs pageable, size sweep and many small copies; GB/s and latency",
    params_model=TransferParams,
    case_keys=("mode", "direction", "memory", "size_kib"),
    run=run,
    metrics=(time_metric("time", "time per copy"),),
    sensitivity=always(COPIES, HOST)  # DMA over PCIe; pageable and small copies are host-bound,
)
