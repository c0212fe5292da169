"""Memory capacity: what the process can allocate, and what the system says it could.

On a unified-memory machine (DGX Spark) a container runs at the same speed but sees tens of GiB
less memory, which shrinks an LLM's KV cache. This workload records, as one-sample metrics in
bytes: ``allocated`` (grown in ``chunk_mib`` chunks until out of memory or the cap, then freed),
and what the system reports before allocating: ``cuda_free``/``cuda_total``
(torch.cuda.mem_get_info), ``nvml_free``/``nvml_total``/``nvml_used`` (NVML), ``mem_available``/
``mem_total`` (/proc/meminfo) and ``cgroup_memory_max`` (absent when unlimited, said in the note).

On a GPU, device memory is allocated (never managed memory) up to ``max_gib`` (default 0.9 x the
free memory). Without a GPU only host memory is allocated, up to ``host_cap_mib`` and never more
than half of MemAvailable: a shared machine is never exhausted.
"""
from __future__ import annotations

from typing import Any, Callable

from pydantic import Field

from ..device import Device
from ..params import CommonParams
from . import Metric, Workload
from ._support import memory_max, meminfo_bytes, point_metric

MIB = 1024 * 1024
GIB = 1024 * MIB
DEFAULT_FREE_FRACTION = 0.9


class MemcapParams(CommonParams):
    chunk_mib: int = Field(64, gt=0, le=1 << 20)  # allocation granularity
    max_gib: float | None = Field(None, gt=0)  # device cap; None: 0.9 x torch.cuda.mem_get_info free
    host_cap_mib: int = Field(128, gt=0, le=1 << 20)  # cap on the CPU path (no GPU)


def grow(allocate: Callable[[int], Any], chunk_bytes: int, cap_bytes: int) -> tuple[int, str]:
    """Call ``allocate(nbytes)`` in chunks until ``cap_bytes`` or out of memory; free everything.

    Returns the bytes held at the peak and why growth stopped.
    """
    import torch

    held: list[Any] = []
    total = 0
    reason = f"reached the cap of {cap_bytes / GIB:.2f} GiB"
    try:
        while total < cap_bytes:
            nbytes = min(chunk_bytes, cap_bytes - total)
            held.append(allocate(nbytes))
            total += nbytes
    except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        if not _is_oom(exc):
            raise
        reason = f"out of memory after {total / GIB:.2f} GiB ({type(exc).__name__})"
    finally:
        held.clear()
    return total, reason


def _is_oom(exc: BaseException) -> bool:
    import torch

    text = str(exc).lower()
    return (isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError))
            or any(words in text for words in ("out of memory", "can't allocate memory", "cannot allocate memory")))


def _device_allocator(device: Device) -> Callable[[int], Any]:
    import torch

    def allocate(nbytes: int):
        block = torch.empty(nbytes, dtype=torch.uint8, device=device.torch_device)
        block.fill_(0)  # commit it, on machines that map memory lazily
        return block

    return allocate


def _host_allocate(nbytes: int) -> Any:
    import torch

    return torch.ones(nbytes, dtype=torch.uint8)  # written, so the pages are really resident


def _system_metrics(device: Device) -> tuple[list[Metric], str]:
    """What the system reports, as metrics, and a note on what it could not report."""
    metrics = []
    for name, key in (("mem_available", "MemAvailable"), ("mem_total", "MemTotal")):
        value = meminfo_bytes(key)
        if value is not None:
            metrics.append(point_metric(name, "B", value, note=f"/proc/meminfo {key}"))
    limit = memory_max()
    if limit is not None:
        metrics.append(point_metric("cgroup_memory_max", "B", limit, note="cgroup memory.max"))
    if not device.is_cuda:
        return metrics, ""
    nvml, missing = _nvml_metrics(device)
    return metrics + _cuda_metrics(device) + nvml, missing


def _cuda_metrics(device: Device) -> list[Metric]:
    import torch

    free, total = torch.cuda.mem_get_info(device.torch_device)
    return [point_metric("cuda_free", "B", free, note="torch.cuda.mem_get_info free"),
            point_metric("cuda_total", "B", total, note="torch.cuda.mem_get_info total")]


def _nvml_metrics(device: Device) -> tuple[list[Metric], str]:
    """NVML's memory info of the device, found by its UUID (so CUDA_VISIBLE_DEVICES cannot mislead),
    and a note saying why it is missing when it is."""
    import torch

    from ..telemetry import NvmlUnavailable, nvml_session

    uuid = str(torch.cuda.get_device_properties(device.torch_device).uuid)
    try:
        with nvml_session() as nvml:
            info = _nvml_memory_info(nvml, uuid)
    except NvmlUnavailable as exc:
        return [], f"NVML: {exc}"
    if info is None:
        return [], f"NVML: no device with UUID {uuid}"
    return [point_metric(f"nvml_{name}", "B", getattr(info, name), note=f"nvmlDeviceGetMemoryInfo {name}")
            for name in ("free", "total", "used")], ""


def _nvml_memory_info(nvml: Any, uuid: str) -> Any:
    """Memory info of the GPU or MIG instance with this UUID (torch gives it without its prefix)."""
    names = [uuid] if uuid.startswith(("GPU-", "MIG-")) else [f"GPU-{uuid}", f"MIG-{uuid}"]
    for name in names:
        try:
            return nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByUUID(name))
        except nvml.NVMLError:
            continue
    return None


def _grow_device(params: MemcapParams, device: Device) -> tuple[int, str]:
    import torch

    free, _ = torch.cuda.mem_get_info(device.torch_device)
    cap = int(params.max_gib * GIB) if params.max_gib else int(DEFAULT_FREE_FRACTION * free)
    allocated, reason = grow(_device_allocator(device), params.chunk_mib * MIB, cap)
    torch.cuda.empty_cache()
    return allocated, f"device memory in {params.chunk_mib} MiB chunks; {reason}"


def _grow_host(params: MemcapParams, device: Device) -> tuple[int, str]:
    cap = min(params.host_cap_mib * MIB, (meminfo_bytes("MemAvailable") or 0) // 2)
    allocated, reason = grow(_host_allocate, params.chunk_mib * MIB, cap)
    return allocated, (f"host memory only (no GPU), {params.chunk_mib} MiB chunks, capped at host_cap_mib "
                       f"and half of MemAvailable; {reason}")


def run(params: MemcapParams, device: Device) -> list[Metric]:
    system, missing = _system_metrics(device)  # read before allocating: what a user would see first
    allocated, how = (_grow_device if device.is_cuda else _grow_host)(params, device)
    limit = memory_max()
    cgroup = f"cgroup memory.max {limit / GIB:.2f} GiB" if limit is not None else "cgroup memory.max: no limit"
    note = "; ".join(part for part in (how, cgroup, missing) if part)
    return [point_metric("allocated", "B", allocated, note=note), *system]


WORKLOAD = Workload(
    name="memcap",
    description="memory capacity: what the process can allocate vs what CUDA, NVML, meminfo and the cgroup report",
    params_model=MemcapParams,
    case_keys=("chunk_mib",),
    run=run,
)
