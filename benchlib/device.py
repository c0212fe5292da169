"""Which device a workload runs on, what it is called, and which GPUs of the host an invocation uses.

The host's GPUs come from NVML (no torch, no CUDA context). One GPU that NVML cannot read (lost,
fallen off the bus, in reset) is left out with the reason (:func:`host_gpu_problems`) and never takes
the others with it. Which GPUs an invocation uses follows CUDA's own rules for
``CUDA_VISIBLE_DEVICES`` (:func:`resolve_visible`) and the workloads' ``device`` parameters
(:func:`ordinals_for`); a MIG slice named there is identified by its own ``MIG-`` UUID.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence, TypeVar

from .errors import SkipCase

K = TypeVar("K")


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
    index = cuda_ordinal(requested) or 0
    if index >= torch.cuda.device_count():
        raise SkipCase(f"skipped: device {requested} does not exist ({torch.cuda.device_count()} GPU(s) visible)")
    return Device(f"cuda:{index}", torch.cuda.get_device_name(index))


def cuda_ordinal(requested: str) -> int | None:
    """The CUDA ordinal a ``device`` parameter asks for: ``auto``/``cuda`` -> 0, ``cuda:N`` -> N, ``cpu`` -> None."""
    if requested in ("auto", "cuda"):
        return 0
    if requested.startswith("cuda:") and requested[5:].isdigit():
        return int(requested[5:])
    return None


def ordinals_for(requested: Iterable[str]) -> list[int]:
    """The CUDA ordinals a set of ``device`` parameters can use, sorted, each once (none for ``cpu``)."""
    return sorted({ordinal for ordinal in map(cuda_ordinal, requested) if ordinal is not None})


def resolve_visible(spec: str | None, count: int, lookup: Callable[[str], K | None],
                    by_index: Callable[[int], K] = lambda index: index) -> list[K]:
    """The devices CUDA will see, in CUDA order, for a CUDA_VISIBLE_DEVICES value, as keys.

    ``None`` means all ``count`` GPUs in NVML (PCI) order. An integer entry is a GPU's index
    (``by_index`` turns it into a key; default: the NVML index itself), any other entry goes to
    ``lookup``, which maps a UUID (or a unique prefix of one, or a ``MIG-`` UUID) to a key. Like
    CUDA, parsing stops at the first entry that names no device. CUDA's default order is
    fastest-first, which equals PCI order on a box of identical GPUs.
    """
    if spec is None:
        return [by_index(index) for index in range(count)]
    keys: list[K] = []
    for token in (t.strip() for t in spec.split(",")):
        if token.lstrip("-").isdigit():
            key = by_index(int(token)) if 0 <= int(token) < count else None
        else:
            key = lookup(token) if token else None
        if key is None:
            break
        if key not in keys:
            keys.append(key)
    return keys


def uuid_lookup(uuids: Sequence[str | None]) -> Callable[[str], int | None]:
    """A ``resolve_visible`` lookup: the index of the one UUID a CUDA_VISIBLE_DEVICES entry names."""
    def lookup(token: str) -> int | None:
        matches = [i for i, u in enumerate(uuids) if u and (u.startswith(token) or u.startswith(f"GPU-{token}"))]
        return matches[0] if len(matches) == 1 else None
    return lookup


@dataclass(frozen=True)
class HostGpu:
    """One GPU NVML lists on this host; ``error`` says why it could not be read (then name/uuid may be None)."""

    index: int  # NVML index
    name: str | None
    uuid: str | None
    error: str | None = None


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _read_gpu(nvml: Any, index: int) -> HostGpu:
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        return HostGpu(index, text(nvml.nvmlDeviceGetName(handle)), text(nvml.nvmlDeviceGetUUID(handle)))
    except Exception as exc:  # NVMLError_GpuIsLost and the like: this GPU only
        return HostGpu(index, None, None, f"{type(exc).__name__}: {exc}")


@functools.lru_cache(maxsize=1)
def _host_gpus() -> tuple[HostGpu, ...]:
    """Every GPU NVML lists on this host (empty without a driver); cheap, no torch. Never raises."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVML library or no driver: no GPU for our purposes
        return ()
    try:
        try:
            count = pynvml.nvmlDeviceGetCount()
        except Exception:
            return ()
        return tuple(_read_gpu(pynvml, i) for i in range(count))
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def host_gpu_names() -> tuple[str, ...]:
    """The GPUs NVML can read on this host (empty without a driver)."""
    return tuple(gpu.name for gpu in _host_gpus() if gpu.error is None and gpu.name is not None)


def host_gpu_uuids() -> tuple[str, ...]:
    """The UUIDs (``GPU-8f3c...``) of the GPUs NVML can read on this host, in NVML order (empty without one)."""
    return tuple(gpu.uuid for gpu in _host_gpus() if gpu.error is None and gpu.uuid is not None)


def host_gpu_count() -> int:
    return len(host_gpu_names())


def host_gpu_problems() -> tuple[str, ...]:
    """One sentence per GPU NVML lists but cannot read (``GPU 3 (NVML index): NVMLError_GpuIsLost: GPU is lost``)."""
    return tuple(f"GPU {gpu.index} (NVML index): {gpu.error}" for gpu in _host_gpus() if gpu.error is not None)


def visible_gpu_uuids(ordinals: Iterable[int] | None = None, spec: str | None = None) -> tuple[str, ...]:
    """UUIDs of the devices CUDA will see (``CUDA_VISIBLE_DEVICES``, or ``spec``), in CUDA order.

    A whole GPU gives its ``GPU-`` UUID, a MIG slice named in ``CUDA_VISIBLE_DEVICES`` its ``MIG-``
    UUID. ``ordinals`` keeps only those CUDA ordinals (the ``cuda:N`` the workloads use). GPUs NVML
    cannot read are left out. Empty without NVML.
    """
    gpus = _host_gpus()
    if not gpus:
        return ()
    uuids = [gpu.uuid for gpu in gpus]
    find = uuid_lookup(uuids)

    def lookup(token: str) -> str | None:
        if token.startswith("MIG-"):
            return token
        index = find(token)
        return uuids[index] if index is not None else None

    spec = os.environ.get("CUDA_VISIBLE_DEVICES") if spec is None else spec
    chosen = resolve_visible(spec, len(gpus), lookup, by_index=lambda index: uuids[index] or f"unreadable-{index}")
    keep = None if ordinals is None else set(ordinals)
    return tuple(uuid for ordinal, uuid in enumerate(chosen)
                 if not uuid.startswith("unreadable-") and (keep is None or ordinal in keep))
