"""Fault injection, FOR TESTS: a workload that fails on purpose, for real, so the runner's handling of
failures can be proven without a GPU and without mocks. It is in no default suite (smoke, quick,
full) and ``benchlib list`` shows it apart from the benchmarks.

``mode`` (a case key, so one params file can sweep all four):

- ``ok``: a cheap timed loop; the invocation completes.
- ``oom``: a real out-of-memory failure. On a GPU, ``torch.empty`` of the device's whole memory
  plus ``oom_mib`` raises the CUDA allocator's ``torch.cuda.OutOfMemoryError``. On the CPU the
  kernel's address-space limit (``RLIMIT_AS``) is lowered to what it maps now plus ``oom_mib``,
  and a NumPy array of twice that is allocated: the kernel's ``mmap`` is refused, NumPy raises its
  ``MemoryError``, and the limit is put back. Either way the case is recorded as failed (out of
  memory) by :func:`benchlib.bench.run_benchmark` and the notebook itself finishes.
- ``crash``: the kernel process reads address 0 (``ctypes.string_at(0)``) and dies of SIGSEGV, as
  when a native library crashes; papermill reports ``DeadKernelError``. Core dumps are switched off
  first, so no core file is left in the invocation folder.
- ``hang``: the kernel sleeps ``hang_s`` seconds (an hour by default), so the suite's per-invocation
  ``timeout_s`` fires.
"""
from __future__ import annotations

import ctypes
import resource
import time
from contextlib import contextmanager
from typing import Iterator, Literal

from pydantic import Field

from ..device import Device
from ..params import CommonParams, common_default
from ..timer import measure
from ..metricspec import time_metric
from . import Metric, Workload


class FaultParams(CommonParams):
    device: str = Field("cpu", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    mode: Literal["ok", "oom", "crash", "hang"] = "ok"
    oom_mib: int = Field(256, gt=0, le=1 << 20)  # oom: headroom granted, then twice it is asked for
    hang_s: float = Field(3600.0, gt=0)  # hang: how long the kernel sleeps
    # this workload's timing defaults (its notebook's parameters cell is checked against the model)
    warmup: int = common_default("warmup", 1)
    min_samples: int = common_default("min_samples", 5)
    max_samples: int = common_default("max_samples", 10)
    max_time_s: float = common_default("max_time_s", 0.5)
    target_rel_ci: float = common_default("target_rel_ci", 0.2)
    telemetry_hz: float = common_default("telemetry_hz", 0.0)


def run(params: FaultParams, device: Device) -> list[Metric]:
    if params.mode == "oom":
        _exhaust_memory(params.oom_mib << 20, device)
    elif params.mode == "crash":
        _crash()
    elif params.mode == "hang":
        time.sleep(params.hang_s)
    measurement = measure(lambda: sum(range(1000)), "cpu", params.timer_config())
    return [Metric.from_measurement("time", measurement, note=f"fault injection: mode {params.mode}")]


def _exhaust_memory(headroom_bytes: int, device: Device) -> None:
    if device.is_cuda:
        import torch

        total = torch.cuda.get_device_properties(device.torch_device).total_memory
        torch.empty(total + headroom_bytes, dtype=torch.uint8, device=device.torch_device)
        return
    import numpy as np

    with _address_space_limit(headroom_bytes):
        np.ones(2 * headroom_bytes, dtype=np.uint8)


@contextmanager
def _address_space_limit(headroom_bytes: int) -> Iterator[None]:
    """Lower this process's RLIMIT_AS to its current size plus ``headroom_bytes``; restore it after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _mapped_bytes() + headroom_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _mapped_bytes() -> int:
    """VmSize of this process: the address space RLIMIT_AS counts."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("VmSize missing from /proc/self/status")


def _crash() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    ctypes.string_at(0)  # SIGSEGV: the process dies here


WORKLOAD = Workload(
    name="fault",
    description="FOR TESTS: fails on purpose (mode ok, oom, crash, hang) to exercise the runner's fault handling",
    params_model=FaultParams,
    case_keys=("mode",),
    run=run,
    for_tests=True,
    metrics=(time_metric("time", "time of a cheap loop"),),
)
