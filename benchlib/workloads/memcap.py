"""Memory capacity: what the process can allocate, and what the system says it could.

On a unified-memory machine (DGX Spark) a container runs at the same speed but sees tens of GiB
less memory, which shrinks an LLM's KV cache. This workload records, as one-sample metrics in
bytes: ``allocated`` (grown in ``chunk_mib`` chunks until out of memory or the stated limit, then
freed), ``limit`` (that limit) and what the system reports before allocating: ``available`` (what the
host really has: MemAvailable, page cache counted as reclaimable, under the tightest cgroup limit;
:func:`benchlib.hostmem.available`), ``cuda_free``/``cuda_total`` (``cudaMemGetInfo``),
``nvml_free``/``nvml_total``/``nvml_used`` (NVML, or a note saying why not: on GB10 NVML answers "not
supported"), ``mem_available``/``mem_total`` (/proc/meminfo), ``cgroup_memory_max`` and
``cgroup_memory_current`` (absent when unlimited or unreadable).

The limit is stated (``max_gib``) or a share of what the device really has, never of what
``cudaMemGetInfo`` says (that would be circular, and on unified memory its free figure leaves the
reclaimable page cache out): on a discrete GPU ``share`` (default 0.9) of the free device memory as
NVML sees it; on a GPU that shares the host's memory ``share`` (default 0.25) of :func:`available`,
so a shared DGX Spark is never mostly pinned by default. Without a GPU only host memory is
allocated, up to ``host_cap_mib`` and never more than half of what is available.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import Field

from .. import hostmem
from ..device import Device
from ..diagnosis.classes import CAPACITY, always
from ..params import CommonParams
from ..metricspec import CONTEXT, MetricSpec
from . import Metric, Workload
from ._support import point_metric

MIB = 1024 * 1024
GIB = 1024 * MIB
DISCRETE_SHARE = 0.9  # of free device memory: the GPU is the run's own
UNIFIED_SHARE = 0.25  # of available host memory: the machine is shared with the OS and its users


class MemcapParams(CommonParams):
    chunk_mib: int = Field(64, gt=0, le=1 << 20)  # allocation granularity
    # the stated limit in GiB; None: `share` of what the device really has (see the module docstring)
    max_gib: float | None = Field(None, gt=0)
    # share of the free device memory (discrete GPU, default 0.9) or of the available host memory
    # (unified memory, default 0.25) that growth may reach when max_gib is unset
    share: float | None = Field(None, gt=0, le=1)
    host_cap_mib: int = Field(128, gt=0, le=1 << 20)  # cap on the CPU path (no GPU)


def grow(allocate: Callable[[int], Any], chunk_bytes: int, cap_bytes: int) -> tuple[int, str]:
    """Call ``allocate(nbytes)`` in chunks until ``cap_bytes`` or out of memory; free everything.

    Returns the bytes held at the peak and why growth stopped.
    """
    import torch

    held: list[Any] = []
    total = 0
    reason = f"reached the limit of {cap_bytes / GIB:.2f} GiB"
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


@dataclass(frozen=True)
class Limit:
    """How far growth may go, and the sentence that says where the figure comes from."""

    bytes: int
    how: str


def device_limit(max_gib: float | None, share: float | None, unified: bool, available: hostmem.Available,
                 nvml_free: int | None, cuda_free: int) -> Limit:
    """The limit of device growth: stated, or a share of what the device really has (never of cudaMemGetInfo).

    Unified memory: ``share`` (default 0.25) of the host's available memory. Discrete: ``share``
    (default 0.9) of the free device memory NVML reports, or of ``cuda_free`` only when NVML cannot
    say (then the note says the figure is the runtime's own).
    """
    if max_gib is not None:
        return Limit(int(max_gib * GIB), f"the stated limit max_gib={max_gib:g}")
    if unified:
        fraction = share if share is not None else UNIFIED_SHARE
        if available.bytes is None:
            return Limit(0, "no limit could be worked out: the host's available memory is unknown; set max_gib")
        return Limit(int(fraction * available.bytes),
                     f"{fraction:g} x the {available.bytes / GIB:.2f} GiB the host has available ({available.how}); "
                     "the GPU shares the host's memory, so the default leaves most of it to the machine's other users")
    fraction = share if share is not None else DISCRETE_SHARE
    if nvml_free is not None:
        return Limit(int(fraction * nvml_free), f"{fraction:g} x the {nvml_free / GIB:.2f} GiB of free device memory NVML reports")
    return Limit(int(fraction * cuda_free), f"{fraction:g} x the {cuda_free / GIB:.2f} GiB cudaMemGetInfo reports free "
                                           "(NVML could not say; this figure is the CUDA runtime's own)")


def host_limit(host_cap_mib: int, available: hostmem.Available) -> Limit:
    cap = host_cap_mib * MIB
    half = (available.bytes or 0) // 2
    if half < cap:
        return Limit(half, f"half of the {(available.bytes or 0) / GIB:.2f} GiB available ({available.how})")
    return Limit(cap, f"host_cap_mib={host_cap_mib}")


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


@dataclass(frozen=True)
class NvmlMemory:
    """NVML's memory figures of one device, or why there are none (``note``)."""

    free: int | None = None
    total: int | None = None
    used: int | None = None
    note: str = ""


def nvml_memory(nvml: Any, uuid: str) -> NvmlMemory:
    """Memory info of the GPU or MIG instance with this UUID (torch gives it without its prefix).

    Tells apart a device NVML cannot find from one whose memory NVML does not report (GB10's unified
    memory: NotSupported) and from any other NVML error.
    """
    names = [uuid] if uuid.startswith(("GPU-", "MIG-")) else [f"GPU-{uuid}", f"MIG-{uuid}"]
    handle = None
    for name in names:
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(name)
            break
        except nvml.NVMLError:
            continue
    if handle is None:
        return NvmlMemory(note=f"NVML: no device with UUID {uuid}")
    try:
        info = nvml.nvmlDeviceGetMemoryInfo(handle)
    except nvml.NVMLError as exc:
        if getattr(exc, "value", None) == nvml.NVML_ERROR_NOT_SUPPORTED:
            return NvmlMemory(note=f"NVML: memory info is not supported on this GPU ({_name(nvml, handle)}): "
                                   "a GPU that shares the host's memory has no device memory of its own to report")
        return NvmlMemory(note=f"NVML: memory info failed: {type(exc).__name__}: {exc}")
    return NvmlMemory(int(info.free), int(info.total), int(info.used))


def _name(nvml: Any, handle: Any) -> str:
    try:
        value = nvml.nvmlDeviceGetName(handle)
    except Exception:
        return "unnamed"
    return value.decode() if isinstance(value, bytes) else value


def _query_nvml(device: Device) -> NvmlMemory:
    import torch

    from ..telemetry import NvmlUnavailable, nvml_session

    uuid = str(torch.cuda.get_device_properties(device.torch_device).uuid)
    try:
        with nvml_session() as nvml:
            return nvml_memory(nvml, uuid)
    except NvmlUnavailable as exc:
        return NvmlMemory(note=f"NVML: {exc}")


def is_unified(device: Device, nvml: NvmlMemory) -> bool:
    """Whether the GPU shares the host's memory: CUDA says it is integrated (GB10, Jetson), or NVML has
    no device memory to report for it."""
    import torch

    integrated = bool(getattr(torch.cuda.get_device_properties(device.torch_device), "is_integrated", False))
    return integrated or "not supported" in nvml.note


def _host_metrics(paths: hostmem.HostPaths, available: hostmem.Available) -> list[Metric]:
    info = hostmem.meminfo(paths)
    metrics = [point_metric(name, "B", info[key], note=f"/proc/meminfo {key}")
               for name, key in (("mem_available", "MemAvailable"), ("mem_total", "MemTotal")) if key in info]
    if available.bytes is not None:
        metrics.append(point_metric("available", "B", available.bytes, note=available.how))
    level = hostmem.cgroup_memory(paths)
    if level is not None and level.max_bytes is not None:
        metrics.append(point_metric("cgroup_memory_max", "B", level.max_bytes, note="cgroup memory.max"))
    if level is not None and level.current_bytes is not None:
        metrics.append(point_metric("cgroup_memory_current", "B", level.current_bytes, note="cgroup memory.current"))
    return metrics


def _nvml_metrics(nvml: NvmlMemory) -> list[Metric]:
    return [point_metric(f"nvml_{name}", "B", getattr(nvml, name), note=f"nvmlDeviceGetMemoryInfo {name}")
            for name in ("free", "total", "used") if getattr(nvml, name) is not None]


def run(params: MemcapParams, device: Device, paths: hostmem.HostPaths = hostmem.DEFAULT_PATHS) -> list[Metric]:
    available = hostmem.available(paths)  # read before allocating: what a user would see first
    metrics = _host_metrics(paths, available)
    level = hostmem.cgroup_memory(paths)
    cgroup = (f"cgroup memory.max {level.max_bytes / GIB:.2f} GiB" if level is not None and level.max_bytes is not None
              else "cgroup memory.max: no limit")
    if device.is_cuda:
        import torch

        nvml = _query_nvml(device)
        cuda_free, cuda_total = torch.cuda.mem_get_info(device.torch_device)
        metrics += [point_metric("cuda_free", "B", cuda_free, note="torch.cuda.mem_get_info free (cudaMemGetInfo)"),
                    point_metric("cuda_total", "B", cuda_total, note="torch.cuda.mem_get_info total"),
                    *_nvml_metrics(nvml)]
        unified = is_unified(device, nvml)
        limit = device_limit(params.max_gib, params.share, unified, available, nvml.free, cuda_free)
        allocated, reason = grow(_device_allocator(device), params.chunk_mib * MIB, limit.bytes)
        torch.cuda.empty_cache()
        memory = "unified memory (the GPU shares the host's)" if unified else "device memory"
        how = f"{memory} in {params.chunk_mib} MiB chunks; limit: {limit.how}; {reason}"
        extra = nvml.note
    else:
        limit = host_limit(params.host_cap_mib, available)
        allocated, reason = grow(_host_allocate, params.chunk_mib * MIB, limit.bytes)
        how = f"host memory only (no GPU), {params.chunk_mib} MiB chunks; limit: {limit.how}; {reason}"
        extra = ""
    note = "; ".join(part for part in (how, cgroup, extra) if part)
    return [point_metric("allocated", "B", allocated, note=note),
            point_metric("limit", "B", limit.bytes, note=limit.how), *metrics]


WORKLOAD = Workload(
    name="memcap",
    description="memory capacity: what the process can allocate vs what CUDA, NVML, meminfo and the cgroup report",
    params_model=MemcapParams,
    case_keys=("chunk_mib",),
    run=run,
    metrics=(  # capacity, not speed: every metric is context; a difference is a finding, never an overhead
        MetricSpec("allocated", CONTEXT, "B", "memory the process could allocate", tolerance=0.02),
        MetricSpec("mem_available", CONTEXT, "B", "MemAvailable", tolerance=0.02),
        MetricSpec("available", CONTEXT, "B", "memory a new allocation can get (page cache counted)", tolerance=0.02),
        MetricSpec("limit", CONTEXT, "B", "the limit memcap grows against", tolerance=0.02),
        MetricSpec("cgroup_memory_current", CONTEXT, "B", "cgroup memory.current", tolerance=0.05, absent="no cgroup"),
        MetricSpec("mem_total", CONTEXT, "B", "MemTotal"),
        MetricSpec("cgroup_memory_max", CONTEXT, "B", "cgroup memory limit", absent="no limit"),
        MetricSpec("cuda_free", CONTEXT, "B", "free device memory (CUDA)", tolerance=0.02),
        MetricSpec("cuda_total", CONTEXT, "B", "total device memory (CUDA)"),
        MetricSpec("nvml_free", CONTEXT, "B", "free device memory (NVML)", tolerance=0.02),
        MetricSpec("nvml_total", CONTEXT, "B", "total device memory (NVML)"),
        MetricSpec("nvml_used", CONTEXT, "B", "used device memory (NVML)", tolerance=0.05),
    ),
    sensitivity=always(CAPACITY),
)
