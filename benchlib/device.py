"""Which device a workload runs on, and what it is called."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from .errors import SkipCase


@dataclass(frozen=True)
class Device:
    torch_device: str  # "cpu" or "cuda:N"
    name: str  # "cpu" or the GPU's marketing name
    note: str = ""  # e.g. "no GPU visible: ran on the CPU"

    @property
    def is_cuda(self) -> bool:
        return self.torch_device.startswith("cuda")

    @property
    def label(self) -> str:
        return f"{self.torch_device} {self.name}" if self.is_cuda else "cpu"


def resolve_device(requested: str = "auto") -> Device:
    """``auto`` takes the first GPU when torch sees one and falls back to the CPU, saying so.

    Asking for ``cuda`` on a machine without a GPU skips the case (``SkipCase``) instead of
    silently measuring something else.
    """
    import torch

    has_cuda = torch.cuda.is_available()
    if requested == "cpu":
        return Device("cpu", "cpu")
    if requested == "auto" and not has_cuda:
        return Device("cpu", "cpu", note="no GPU visible to torch: ran on the CPU")
    if not has_cuda:
        raise SkipCase("skipped: no GPU (device=cuda requested, torch sees none)")
    index = 0 if requested in ("auto", "cuda") else int(requested.split(":")[1])
    if index >= torch.cuda.device_count():
        raise SkipCase(f"skipped: device {requested} does not exist ({torch.cuda.device_count()} GPU(s) visible)")
    return Device(f"cuda:{index}", torch.cuda.get_device_name(index))


@functools.lru_cache(maxsize=1)
def _host_gpus() -> tuple[tuple[str, str], ...]:
    """(name, UUID) of every GPU NVML sees on this host (empty without a driver); cheap, no torch."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVML library or no driver: no GPU for our purposes
        return ()
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        return tuple((_text(pynvml.nvmlDeviceGetName(h)), _text(pynvml.nvmlDeviceGetUUID(h))) for h in handles)
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def host_gpu_names() -> tuple[str, ...]:
    """The GPUs NVML sees on this host (empty without a driver)."""
    return tuple(name for name, _ in _host_gpus())


def host_gpu_uuids() -> tuple[str, ...]:
    """The UUIDs (``GPU-8f3c...``) of the GPUs NVML sees on this host, in NVML order (empty without one)."""
    return tuple(uuid for _, uuid in _host_gpus())


def host_gpu_count() -> int:
    return len(host_gpu_names())
