"""A stand-in for the ``pynvml`` module, for tests on machines without a GPU.

It replaces the library at its boundary (``sys.modules["pynvml"]``), never benchlib's code: every
constant, struct and error class is the real nvidia-ml-py's (so ``NVMLError(NVML_ERROR_NOT_SUPPORTED)``
is the real ``NVMLError_NotSupported``), and the ``nvml*`` functions answer from a list of
:class:`FakeGpu`. A function the stand-in does not model answers ``NVMLError_NotSupported``, as a
GPU lacking the feature does. Three machines are modelled by the tests: a DGX Spark (GB10: NVML has
no memory figures for its unified memory), an 8-GPU server with one GPU lost, and an H100 in MIG mode.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

import pynvml as real

NOT_SUPPORTED = "not supported"


@dataclass
class FakeMig:
    uuid: str
    name: str  # e.g. "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    sm_count: int
    memory_mb: int
    gpu_instance_id: int
    compute_instance_id: int = 0


@dataclass
class FakeGpu:
    name: str
    uuid: str
    memory: tuple[int, int] | str = (80 * 2**30, 2 * 2**30)  # (total, used) or NOT_SUPPORTED
    sm_clock: int = 1980
    mem_clock: int = 2619
    max_sm_clock: int = 1980
    max_mem_clock: int = 2619
    power_mw: int = 350_000
    util: int = 100
    reasons: int = 0
    processes: list[tuple[int, int | None]] | str = field(default_factory=list)  # (pid, bytes) or NOT_SUPPORTED
    lost: str | None = None  # "handle": even the handle fails; "queries": every query fails
    mig: list[FakeMig] = field(default_factory=list)
    energy_reads: int = 0
    energy_mj: int = 1_000_000


class _Handle:
    def __init__(self, gpu: FakeGpu, mig: FakeMig | None = None) -> None:
        self.gpu, self.mig = gpu, mig


def _error(code: int) -> Exception:
    return real.NVMLError(code)


def make_nvml(gpus: list[FakeGpu]) -> types.ModuleType:
    """A module object that answers like NVML on a machine with ``gpus``."""
    module = types.ModuleType("pynvml")
    for name, value in vars(real).items():
        if not (callable(value) and name.startswith("nvml")) and not name.startswith("__"):
            setattr(module, name, value)
    module.calls = []  # names of the nvml functions called, in order
    module.gpus = gpus

    def api(function):
        def recorded(*args: Any) -> Any:
            module.calls.append(function.__name__)
            return function(*args)
        recorded.__name__ = function.__name__
        setattr(module, function.__name__, recorded)
        return recorded

    def live(handle: _Handle) -> FakeGpu:
        if handle.gpu.lost:
            raise _error(real.NVML_ERROR_GPU_IS_LOST)
        return handle.gpu

    @api
    def nvmlInit() -> None:
        return None

    @api
    def nvmlShutdown() -> None:
        return None

    @api
    def nvmlDeviceGetCount() -> int:
        return len(gpus)

    @api
    def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
        if not 0 <= index < len(gpus):
            raise _error(real.NVML_ERROR_INVALID_ARGUMENT)
        if gpus[index].lost == "handle":
            raise _error(real.NVML_ERROR_GPU_IS_LOST)
        return _Handle(gpus[index])

    @api
    def nvmlDeviceGetHandleByUUID(uuid: str | bytes) -> _Handle:
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gpu in gpus:
            if gpu.uuid == uuid and not gpu.lost:
                return _Handle(gpu)
            for mig in gpu.mig:
                if mig.uuid == uuid:
                    return _Handle(gpu, mig)
        raise _error(real.NVML_ERROR_NOT_FOUND)

    @api
    def nvmlDeviceGetIndex(handle: _Handle) -> int:
        return gpus.index(live(handle))

    @api
    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle: _Handle) -> _Handle:
        if handle.mig is None:
            raise _error(real.NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(handle.gpu)

    @api
    def nvmlDeviceGetUUID(handle: _Handle) -> str:
        return handle.mig.uuid if handle.mig else live(handle).uuid

    @api
    def nvmlDeviceGetName(handle: _Handle) -> str:
        return handle.mig.name if handle.mig else live(handle).name

    @api
    def nvmlDeviceGetClockInfo(handle: _Handle, kind: int) -> int:
        gpu = live(handle)
        return gpu.sm_clock if kind == real.NVML_CLOCK_SM else gpu.mem_clock

    @api
    def nvmlDeviceGetMaxClockInfo(handle: _Handle, kind: int) -> int:
        gpu = live(handle)
        return gpu.max_sm_clock if kind == real.NVML_CLOCK_SM else gpu.max_mem_clock

    @api
    def nvmlDeviceGetPowerUsage(handle: _Handle) -> int:
        return live(handle).power_mw

    @api
    def nvmlDeviceGetTotalEnergyConsumption(handle: _Handle) -> int:
        gpu = live(handle)
        gpu.energy_reads += 1
        gpu.energy_mj += 350
        return gpu.energy_mj

    @api
    def nvmlDeviceGetTemperature(handle: _Handle, sensor: int) -> int:
        live(handle)
        return 55

    @api
    def nvmlDeviceGetUtilizationRates(handle: _Handle) -> Any:
        return types.SimpleNamespace(gpu=live(handle).util, memory=40)

    @api
    def nvmlDeviceGetMemoryInfo(handle: _Handle) -> Any:
        gpu = live(handle)
        if gpu.memory == NOT_SUPPORTED:
            raise _error(real.NVML_ERROR_NOT_SUPPORTED)
        if handle.mig:
            total = handle.mig.memory_mb * 2**20
            return types.SimpleNamespace(total=total, used=0, free=total)
        total, used = gpu.memory
        return types.SimpleNamespace(total=total, used=used, free=total - used)

    @api
    def nvmlDeviceGetCurrentClocksEventReasons(handle: _Handle) -> int:
        return live(handle).reasons

    @api
    def nvmlDeviceGetComputeRunningProcesses(handle: _Handle) -> list[Any]:
        gpu = live(handle)
        if gpu.processes == NOT_SUPPORTED:
            raise _error(real.NVML_ERROR_NOT_SUPPORTED)
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.processes]

    @api
    def nvmlDeviceGetMigMode(handle: _Handle) -> list[int]:
        mode = int(bool(live(handle).mig))
        return [mode, mode]

    @api
    def nvmlDeviceGetMaxMigDeviceCount(handle: _Handle) -> int:
        return 7 if live(handle).mig else 0

    @api
    def nvmlDeviceGetMigDeviceHandleByIndex(handle: _Handle, slot: int) -> _Handle:
        migs = live(handle).mig
        if slot >= len(migs):
            raise _error(real.NVML_ERROR_NOT_FOUND)
        return _Handle(handle.gpu, migs[slot])

    @api
    def nvmlDeviceGetGpuInstanceId(handle: _Handle) -> int:
        return handle.mig.gpu_instance_id

    @api
    def nvmlDeviceGetComputeInstanceId(handle: _Handle) -> int:
        return handle.mig.compute_instance_id

    @api
    def nvmlDeviceGetAttributes(handle: _Handle) -> Any:
        if handle.mig is None:
            raise _error(real.NVML_ERROR_NOT_SUPPORTED)
        return types.SimpleNamespace(multiprocessorCount=handle.mig.sm_count, memorySizeMB=handle.mig.memory_mb)

    @api
    def nvmlSystemGetDriverVersion() -> str:
        return "580.95.05"

    def unmodelled(name: str):
        def not_supported(*args: Any) -> Any:
            module.calls.append(name)
            raise _error(real.NVML_ERROR_NOT_SUPPORTED)
        return not_supported

    def __getattr__(name: str) -> Any:
        if name.startswith("nvml"):
            return unmodelled(name)
        raise AttributeError(name)

    module.__getattr__ = __getattr__
    return module


# --------------------------------------------------------------------------- the machines of the tests

def dgx_spark() -> list[FakeGpu]:
    """A DGX Spark: one GB10 whose unified memory NVML does not report (NotSupported, as on the real one)."""
    return [FakeGpu("NVIDIA GB10", "GPU-5b1e0000-0000-0000-0000-00000000gb10", memory=NOT_SUPPORTED,
                    sm_clock=2405, mem_clock=4266, max_sm_clock=3003, max_mem_clock=4266, power_mw=90_000,
                    processes=NOT_SUPPORTED)]


def eight_gpu_server(lost: int = 3, how: str = "queries") -> list[FakeGpu]:
    """An 8-GPU H100 server whose GPU ``lost`` has fallen off the bus."""
    gpus = [FakeGpu("NVIDIA H100 80GB HBM3", f"GPU-8e000000-0000-0000-0000-00000000000{i}") for i in range(8)]
    gpus[lost].lost = how
    return gpus


def mig_h100() -> list[FakeGpu]:
    """An H100 in MIG mode with a 1g.10gb and a 3g.40gb slice."""
    gpu = FakeGpu("NVIDIA H100 80GB HBM3", "GPU-a1000000-0000-0000-0000-0000000000aa", memory=(80 * 2**30, 9 * 2**30))
    gpu.mig = [FakeMig("MIG-11111111-2222-3333-4444-555555555555", "NVIDIA H100 80GB HBM3 MIG 1g.10gb", 16, 9856, 9),
               FakeMig("MIG-66666666-7777-8888-9999-000000000000", "NVIDIA H100 80GB HBM3 MIG 3g.40gb", 60, 40192, 2)]
    return [gpu]
