"""Background NVML telemetry (docs/architecture.md, "Telemetry"): one row per poll of one GPU.

``with NvmlSampler(hz=100, gpu_indices=[0]) as s: run_benchmark()`` polls the GPUs the invocation
uses (CUDA ordinals, after ``CUDA_VISIBLE_DEVICES``; default: every GPU CUDA would see) on a daemon
thread at absolute deadlines (``start + k / hz``; a poll that overruns skips the deadlines it missed
and counts them as dropped), plus one last poll on exit so the rows bracket the block. ``s.frame()``
conforms to :data:`benchlib.schema.TELEMETRY_COLUMNS`; ``gpu_index`` is the CUDA ordinal (the N of
``cuda:N``), so telemetry joins to results on ``timestamp_ns`` between a sample's ``start_ns`` and
``end_ns``.

A query the GPU refuses (NotSupported, NoPermission, FunctionNotFound, GPU lost) drops to its
fallback, or to NaN, once and for good; any other failure is NaN for that poll. A GPU that cannot be
opened at all keeps its rows with NaN values and the reason in ``summary()["gpus"]``: one failing GPU
never takes the others' telemetry with it. Without pynvml, a driver or a GPU the sampler records why
in ``status`` and the block runs as usual with an empty frame.

A MIG slice has no telemetry of its own: its rows are the parent GPU's counters (every tenant of the
GPU included), labelled with the parent's ``gpu_uuid`` and the slice's ``mig_uuid``.

Memory, the same way in every arm: host-wide ``MemAvailable``, the process's cgroup
``memory.current``/``memory.peak``, the RSS of this process and its descendants, the driver's view
of that process tree's GPU memory (NVML, where it answers and the PIDs are the host's) and
``cudaMemGetInfo`` free/total (through the CUDA driver API, only for a device this process already
uses, from a thread whose stream-capture mode is relaxed so a CUDA graph being captured meanwhile is
not disturbed). They are read ``memory_hz`` times a second and on the first and last poll.

Cost, measured on an H100 (driver 580): each query takes 2-9 us, except the total-energy counter
(about 3 ms, by either nvmlDeviceGetTotalEnergyConsumption or its field value), so energy is read
at most ``energy_hz`` times a second per GPU (NaN in the rows between), fewer when many GPUs would not
fit in a poll period (:func:`energy_rate`), the GPUs taking turns poll by poll (:func:`energy_turns`) so
one poll reads one GPU's counter, and always in the first and last poll, which keeps the block's energy
exact. ctypes releases the GIL inside NVML
calls.
"""
from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import time
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import pandas as pd

from . import hostmem
from .device import resolve_visible, text as _text, uuid_lookup
from .schema import TELEMETRY_COLUMNS, conform, empty_telemetry

NAN = math.nan

#: Clock-event reason name -> pynvml constant names (current API first, deprecated second).
_REASONS: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (name, (f"nvmlClocksEventReason{suffix}", f"nvmlClocksThrottleReason{suffix}"))
    for name, suffix in (
        ("gpu_idle", "GpuIdle"),
        ("applications_clocks_setting", "ApplicationsClocksSetting"),
        ("sw_power_cap", "SwPowerCap"),
        ("hw_slowdown", "HwSlowdown"),
        ("sync_boost", "SyncBoost"),
        ("sw_thermal_slowdown", "SwThermalSlowdown"),
        ("hw_thermal_slowdown", "HwThermalSlowdown"),
        ("hw_power_brake_slowdown", "HwPowerBrakeSlowdown"),
        ("display_clock_setting", "DisplayClockSetting"),
    )
)

#: NVML return codes meaning "this query will never work on this GPU": stop asking.
_PERMANENT = ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_NO_PERMISSION", "NVML_ERROR_FUNCTION_NOT_FOUND",
              "NVML_ERROR_GPU_IS_LOST")
#: What one read of the total-energy counter costs (H100, driver 580), for :func:`energy_rate`.
ENERGY_READ_COST_S = 0.003
#: The share of a poll period that energy reads may take.
ENERGY_SHARE_OF_PERIOD = 0.5
#: /proc/self/ns/pid of the initial PID namespace (PROC_PID_INIT_INO): NVML's PIDs are ours only there.
INITIAL_PID_NAMESPACE = "pid:[4026531836]"

#: c_nvmlFieldValue_t.valueType -> member of its value union.
_VALUE_MEMBERS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")


class TelemetryRow(NamedTuple):
    """One poll of one GPU; fields are exactly the telemetry schema's columns, in order."""

    timestamp_ns: int
    gpu_index: int
    sm_clock_mhz: float
    mem_clock_mhz: float
    power_w: float
    energy_mj: float
    temperature_c: float
    gpu_util_pct: float
    mem_util_pct: float
    mem_used_bytes: float
    clock_event_reasons: str | None
    gpu_uuid: str | None
    mig_uuid: str | None
    mem_available_bytes: float
    cgroup_mem_current_bytes: float
    cgroup_mem_peak_bytes: float
    proc_rss_bytes: float
    proc_gpu_bytes: float
    cuda_free_bytes: float
    cuda_total_bytes: float


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here; the message says why."""


@contextmanager
def nvml_session() -> Iterator[ModuleType]:
    """Initialise NVML for the block and yield the pynvml module; raise NvmlUnavailable if it can't."""
    try:
        import pynvml
    except ImportError as exc:
        raise NvmlUnavailable(f"pynvml (nvidia-ml-py) is not installed: {exc}") from exc
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError) as exc:
        raise NvmlUnavailable(f"NVML init failed: {exc}") from exc
    try:
        yield pynvml
    finally:
        with suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def nvml_available() -> tuple[bool, str]:
    """(True, "N GPU(s)") when NVML initialises and sees a GPU, else (False, why)."""
    try:
        with nvml_session() as nvml:
            count = nvml.nvmlDeviceGetCount()
    except NvmlUnavailable as exc:
        return False, str(exc)
    except Exception as exc:  # a broken driver install can fail anywhere
        return False, f"NVML query failed: {exc!r}"
    return (count > 0, f"{count} GPU(s)") if count else (False, "NVML sees no GPU")


def decode_clock_event_reasons(mask: int, nvml: ModuleType | None = None) -> str:
    """Names of the clock-event (throttle) bits set in ``mask``, joined with "|"; "" when none.

    Bits with no known name are kept as hex (e.g. ``0x200``) so nothing is silently lost.
    """
    if nvml is None:
        import pynvml as nvml
    names, known = [], 0
    for name, constants in _REASONS:
        bit = next((getattr(nvml, c) for c in constants if hasattr(nvml, c)), 0)
        known |= bit
        if bit and mask & bit:
            names.append(name)
    if mask & ~known:
        names.append(hex(mask & ~known))
    return "|".join(names)


class Metric:
    """One telemetry query with fallbacks: the first that the GPU supports is kept for good.

    ``read()`` returns the query's value, or ``default`` when every query is unsupported, this
    poll's query failed, or (with ``min_interval_s``) the last read was too recent and ``force`` is
    off. It never raises.
    """

    def __init__(self, *queries: Callable[[], Any], default: Any = NAN, min_interval_s: float = 0.0) -> None:
        self._queries = list(queries)
        self.default = default
        self._min_interval_ns = round(min_interval_s * 1e9)
        self._last_ns: int | None = None
        self.why_unsupported: str | None = None

    @property
    def supported(self) -> bool:
        return bool(self._queries)

    def read(self, force: bool = False) -> Any:
        if self._min_interval_ns:
            now = time.perf_counter_ns()
            if self._last_ns is not None and now - self._last_ns < self._min_interval_ns and not force:
                return self.default
            self._last_ns = now
        while self._queries:
            try:
                return self._queries[0]()
            except Exception as exc:
                if not _is_permanent(exc):
                    return self.default
                self.why_unsupported = f"{type(exc).__name__}: {exc}"
                self._queries.pop(0)
        return self.default


def _is_permanent(exc: Exception) -> bool:
    if isinstance(exc, (AttributeError, TypeError, NotImplementedError)):  # binding lacks the call
        return True
    code = getattr(exc, "value", None)
    try:
        import pynvml
    except ImportError:
        return False
    return isinstance(exc, pynvml.NVMLError) and code in {getattr(pynvml, n, None) for n in _PERMANENT}


def field_value(nvml: ModuleType, handle: Any, field_id: int) -> float:
    """One NVML field value as a float; raises the NVMLError of the field's own return code."""
    value = nvml.nvmlDeviceGetFieldValues(handle, [field_id])[0]
    if value.nvmlReturn != nvml.NVML_SUCCESS:
        raise nvml.NVMLError(value.nvmlReturn)
    return float(getattr(value.value, _VALUE_MEMBERS[value.valueType]))


def energy_rate(hz: float, energy_hz: float, gpus: int, read_cost_s: float = ENERGY_READ_COST_S,
                share: float = ENERGY_SHARE_OF_PERIOD) -> float:
    """Energy reads per second per GPU that fit the poll period: at most ``energy_hz``, and no more
    than ``share`` of a period spent on energy reads when the GPUs take turns (at least one per poll)."""
    if energy_hz <= 0 or gpus <= 0:
        return energy_hz
    per_poll = max(1, math.floor(share / hz / read_cost_s))
    return min(energy_hz, hz * per_poll / gpus)


def energy_turns(hz: float, rate: float, gpus: int) -> list[tuple[int, int]]:
    """``(every, offset)`` per GPU: GPU k reads its energy counter in polls ``i`` with ``i % every ==
    offset`` (and in the first and last poll), so the GPUs take turns poll by poll, whatever the jitter."""
    if rate <= 0:
        return [(0, 0)] * gpus
    every = max(1, round(hz / rate))
    return [(every, k * every // gpus % every) for k in range(gpus)]


#: A poll's values before any query answers: NaN, or None (<NA>) for the string columns.
_NO_VALUES: dict[str, Any] = {
    column: None if dtype == "string" else NAN
    for column, dtype in TELEMETRY_COLUMNS.items() if column not in ("timestamp_ns", "gpu_index")
}
#: Columns the host source fills, the same for every GPU of one poll.
HOST_COLUMNS = ("mem_available_bytes", "cgroup_mem_current_bytes", "cgroup_mem_peak_bytes", "proc_rss_bytes")


@dataclass
class GpuSource:
    """The cached queries of one GPU; ``poll()`` reads them all into one row.

    ``metrics`` maps a column to the Metric that reads it; a Metric may instead return a dict of
    several columns read in one call. ``poll(complete=True)`` also reads rate-limited metrics.
    ``error`` says why the GPU could not be opened (its rows are then NaN). ``mig_uuid``/``mig_name``:
    the MIG slice the invocation uses, whose parent these counters are.
    """

    ordinal: int
    metrics: dict[str, Metric]
    nvml_index: int | None = None
    uuid: str | None = None
    name: str | None = None
    mig_uuid: str | None = None
    mig_name: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    #: column -> (every, offset): read only in polls ``i % every == offset``, the first and complete ones
    turns: dict[str, tuple[int, int]] = field(default_factory=dict)

    def poll(self, complete: bool = False, host: dict[str, Any] | None = None, index: int | None = None) -> TelemetryRow:
        ts = time.time_ns()
        values = dict(_NO_VALUES, gpu_uuid=self.uuid, mig_uuid=self.mig_uuid, **(host or {}))
        for column, metric in self.metrics.items():
            every, offset = self.turns.get(column, (1, 0))
            if not complete and index and (not every or index % every != offset):
                continue  # not this GPU's turn
            value = metric.read(force=complete)
            if isinstance(value, dict):
                values.update(value)
            else:
                values[column] = value
        return TelemetryRow(ts, self.ordinal, **values)

    def unsupported(self) -> list[str]:
        return [column for column, metric in self.metrics.items() if not metric.supported]

    def describe(self) -> dict[str, Any]:
        why = {column: metric.why_unsupported for column, metric in self.metrics.items()
               if not metric.supported and metric.why_unsupported}
        return {"gpu_index": self.ordinal, "nvml_index": self.nvml_index, "uuid": self.uuid, "name": self.name,
                "mig_uuid": self.mig_uuid, "mig_name": self.mig_name,
                "scope": f"parent GPU of MIG slice {self.mig_uuid}: every tenant of the GPU shows here"
                if self.mig_uuid else "whole GPU",
                "error": self.error, "unsupported": self.unsupported(), "unsupported_why": why,
                "notes": list(self.notes)}


class HostSource:
    """Host-wide and process-tree memory (:mod:`benchlib.hostmem`), read once per poll at ``memory_hz``.

    ``pids`` is the process tree of the last read, which the GPU sources use for per-process GPU memory.
    """

    def __init__(self, memory_hz: float, paths: hostmem.HostPaths = hostmem.DEFAULT_PATHS) -> None:
        self.paths = paths
        self.pids: list[int] = [os.getpid()]
        self.metric = Metric(self._read, default={}, min_interval_s=1 / memory_hz if memory_hz > 0 else 0.0)

    def _read(self) -> dict[str, float]:
        info = hostmem.meminfo(self.paths)
        level = hostmem.cgroup_memory(self.paths)
        self.pids = hostmem.process_tree(paths=self.paths)
        rss = [r for r in (hostmem.rss_bytes(pid, self.paths) for pid in self.pids) if r is not None]

        def number(value: int | None) -> float:
            return float(value) if value is not None else NAN

        return {"mem_available_bytes": number(info.get("MemAvailable")),
                "cgroup_mem_current_bytes": number(level.current_bytes if level else None),
                "cgroup_mem_peak_bytes": number(level.peak_bytes if level else None),
                "proc_rss_bytes": float(sum(rss)) if rss else NAN}

    def poll(self, complete: bool = False) -> dict[str, float]:
        return self.metric.read(force=complete)


def process_gpu_bytes(nvml: ModuleType, handle: Any, pids: Sequence[int]) -> float:
    """GPU memory NVML attributes to ``pids`` on this GPU (compute processes); NaN when NVML cannot say."""
    wanted = set(pids)
    used = [p.usedGpuMemory for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid in wanted]
    if any(value is None for value in used):
        return NAN  # NVML_VALUE_NOT_AVAILABLE: the driver does not account this process's memory
    return float(sum(used))


def pid_namespace_note(ns_link: str | None = None) -> str | None:
    """Why per-process GPU memory cannot be matched here (NVML reports host PIDs), or None when it can."""
    if ns_link is None:
        try:
            ns_link = os.readlink("/proc/self/ns/pid")
        except OSError:
            return "proc_gpu_bytes: /proc/self/ns/pid unreadable, so NVML's host PIDs cannot be matched"
    if ns_link != INITIAL_PID_NAMESPACE:
        return ("proc_gpu_bytes: this process runs in its own PID namespace and NVML reports host PIDs, "
                "so its GPU memory cannot be told apart (compare mem_used_bytes and cuda_free_bytes instead)")
    return None


class CudaMemInfo:
    """``cudaMemGetInfo`` of a device from the telemetry thread, through the CUDA driver API (ctypes).

    Reads only a device whose primary context this process already holds (torch created it): it never
    creates a context, which would cost hundreds of MiB on a GPU the workload does not use. The
    calling thread's stream-capture mode is set to relaxed first, so a CUDA graph that the workload
    captures meanwhile (in the default, global mode) is not invalidated by this thread's calls.
    """

    CU_STREAM_CAPTURE_MODE_RELAXED = 2

    def __init__(self) -> None:
        self._lib: Any = None
        self._contexts: dict[int, tuple[ctypes.c_int, ctypes.c_void_p]] = {}
        self._relaxed = threading.local()

    def _driver(self) -> Any:
        if self._lib is None:
            try:
                self._lib = ctypes.CDLL("libcuda.so.1")
            except OSError as exc:
                raise NotImplementedError(f"no CUDA driver library: {exc}") from None
        return self._lib

    @staticmethod
    def _check(result: int, call: str) -> None:
        if result != 0:
            raise RuntimeError(f"{call} returned CUDA error {result}")

    def read(self, ordinal: int) -> dict[str, float]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():
            raise RuntimeError("CUDA is not initialised in this process yet")  # NaN this poll, try again later
        lib = self._driver()
        if not getattr(self._relaxed, "done", False):
            mode = ctypes.c_int(self.CU_STREAM_CAPTURE_MODE_RELAXED)
            self._check(lib.cuThreadExchangeStreamCaptureMode(ctypes.byref(mode)), "cuThreadExchangeStreamCaptureMode")
            self._relaxed.done = True
        if ordinal not in self._contexts:
            device = ctypes.c_int()
            self._check(lib.cuDeviceGet(ctypes.byref(device), ordinal), "cuDeviceGet")
            flags, active = ctypes.c_uint(), ctypes.c_int()
            self._check(lib.cuDevicePrimaryCtxGetState(device, ctypes.byref(flags), ctypes.byref(active)),
                        "cuDevicePrimaryCtxGetState")
            if not active.value:
                raise RuntimeError(f"cuda:{ordinal} has no context in this process")  # not ours (yet)
            context = ctypes.c_void_p()
            self._check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
            self._contexts[ordinal] = (device, context)
        self._check(lib.cuCtxSetCurrent(self._contexts[ordinal][1]), "cuCtxSetCurrent")
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self._check(lib.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo_v2")
        return {"cuda_free_bytes": float(free.value), "cuda_total_bytes": float(total.value)}

    def close(self) -> None:
        """Release the primary contexts retained (the workload's own references keep them alive)."""
        while self._contexts:
            _, (device, _) = self._contexts.popitem()
            with suppress(Exception):
                self._lib.cuDevicePrimaryCtxRelease_v2(device)


def open_gpu(nvml: ModuleType, ordinal: int, nvml_index: int, energy_hz: float = 10.0, memory_hz: float = 10.0,
             energy_turn: tuple[int, int] | None = None, host: HostSource | None = None,
             cuda: CudaMemInfo | None = None, pid_note: str | None = None) -> GpuSource:
    """The GpuSource for NVML device ``nvml_index``, recorded as CUDA ordinal ``ordinal``.

    ``energy_turn``: the polls that read the energy counter (:func:`energy_turns`); without it the
    counter is read at most ``energy_hz`` times a second."""
    h = nvml.nvmlDeviceGetHandleByIndex(nvml_index)
    memory_interval = 1 / memory_hz if memory_hz > 0 else 0.0

    def utilisation() -> dict[str, float]:
        rates = nvml.nvmlDeviceGetUtilizationRates(h)
        return {"gpu_util_pct": float(rates.gpu), "mem_util_pct": float(rates.memory)}

    metrics = {
        "sm_clock_mhz": Metric(lambda: float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM))),
        "mem_clock_mhz": Metric(lambda: float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM))),
        # instantaneous; nvmlDeviceGetPowerUsage is a 1 s average on Hopper, kept as the fallback
        "power_w": Metric(lambda: field_value(nvml, h, nvml.NVML_FI_DEV_POWER_INSTANT) / 1e3,
                          lambda: nvml.nvmlDeviceGetPowerUsage(h) / 1e3),
        "energy_mj": Metric(lambda: float(nvml.nvmlDeviceGetTotalEnergyConsumption(h)),
                            min_interval_s=1 / energy_hz if energy_hz > 0 and energy_turn is None else 0.0),
        "temperature_c": Metric(lambda: float(nvml.nvmlDeviceGetTemperatureV(h, nvml.NVML_TEMPERATURE_GPU)),
                                lambda: float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))),
        "utilisation": Metric(utilisation, default={"gpu_util_pct": NAN, "mem_util_pct": NAN}),
        "mem_used_bytes": Metric(lambda: float(nvml.nvmlDeviceGetMemoryInfo(h).used)),
        "clock_event_reasons": Metric(
            lambda: decode_clock_event_reasons(nvml.nvmlDeviceGetCurrentClocksEventReasons(h), nvml),
            lambda: decode_clock_event_reasons(nvml.nvmlDeviceGetCurrentClocksThrottleReasons(h), nvml),
            default=None,
        ),
    }
    notes = []
    if host is not None and pid_note is None:
        metrics["proc_gpu_bytes"] = Metric(lambda: process_gpu_bytes(nvml, h, host.pids), min_interval_s=memory_interval)
    elif pid_note:
        notes.append(pid_note)
    if cuda is not None:
        metrics["cuda_mem"] = Metric(lambda: cuda.read(ordinal), min_interval_s=memory_interval,
                                     default={"cuda_free_bytes": NAN, "cuda_total_bytes": NAN})
    return GpuSource(ordinal, metrics, nvml_index, _text(nvml.nvmlDeviceGetUUID(h)), _text(nvml.nvmlDeviceGetName(h)),
                     notes=notes, turns={"energy_mj": energy_turn} if energy_turn else {})


def rows_to_frame(rows: Sequence[TelemetryRow]) -> pd.DataFrame:
    """Telemetry rows as a frame with exactly the schema's columns and dtypes."""
    if not rows:
        return empty_telemetry()
    return conform(pd.DataFrame.from_records(list(rows), columns=list(TELEMETRY_COLUMNS)), TELEMETRY_COLUMNS)


@dataclass(frozen=True)
class Visible:
    """One device CUDA will see: the NVML index whose counters we read, and the MIG slice if it is one."""

    nvml_index: int
    mig_uuid: str | None = None
    mig_name: str | None = None


def visible_devices(nvml: ModuleType, spec: str | None) -> list[Visible]:
    """The devices CUDA will see for ``CUDA_VISIBLE_DEVICES`` = ``spec``, in CUDA order. A GPU NVML
    cannot read keeps its place (its UUID is unknown, so only its index can name it)."""
    count = nvml.nvmlDeviceGetCount()
    uuids: list[str | None] = []
    for index in range(count):
        try:
            uuids.append(_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(index))))
        except Exception:
            uuids.append(None)
    find = uuid_lookup(uuids)

    def lookup(token: str) -> Visible | None:
        index = find(token)
        if index is not None:
            return Visible(index)
        try:  # a MIG device: sample its parent GPU
            mig = nvml.nvmlDeviceGetHandleByUUID(token)
            parent = nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig))
            return Visible(parent, _text(nvml.nvmlDeviceGetUUID(mig)), _text(nvml.nvmlDeviceGetName(mig)))
        except Exception:
            return None

    return resolve_visible(spec, count, lookup, by_index=Visible)


def _open_gpus(nvml: ModuleType, gpu_indices: Sequence[int] | None, hz: float, energy_hz: float,
               memory_hz: float = 0.0, host: HostSource | None = None,
               cuda: CudaMemInfo | None = None) -> tuple[list[GpuSource], float]:
    """The sources of the GPUs to sample, and the energy reads per second each gets (:func:`energy_rate`)."""
    visible = visible_devices(nvml, os.environ.get("CUDA_VISIBLE_DEVICES"))
    wanted = list(range(len(visible))) if gpu_indices is None else [i for i in gpu_indices if 0 <= i < len(visible)]
    rate = energy_rate(hz, energy_hz, len(wanted))
    turns = energy_turns(hz, rate, len(wanted))
    pid_note = pid_namespace_note() if host is not None else None
    gpus = []
    for turn, ordinal in zip(turns, wanted):
        device = visible[ordinal]
        try:
            gpu = open_gpu(nvml, ordinal, device.nvml_index, energy_hz, memory_hz, turn, host, cuda, pid_note)
        except Exception as exc:  # this GPU only: lost, fallen off the bus, in reset
            gpu = GpuSource(ordinal, {}, device.nvml_index, error=f"cannot open: {type(exc).__name__}: {exc}")
        gpu.mig_uuid, gpu.mig_name = device.mig_uuid, device.mig_name
        gpus.append(gpu)
    return gpus, rate


@dataclass
class PollStats:
    attempts: int = 0
    polls: int = 0  # polls that returned rows
    dropped: int = 0  # deadlines skipped because a poll overran, plus polls that raised
    cost_ns: int = 0
    started_ns: int = 0
    stopped_ns: int = 0
    last_error: str | None = None


class Poller:
    """Calls ``source`` at absolute deadlines on a daemon thread, collecting the rows it returns.

    ``source`` is any callable returning rows (NVML in production); an exception it raises counts
    as a dropped poll and never stops the thread. When the poller stops it polls once more, through
    ``final`` if given (a source that also reads what ``source`` rate-limits), else ``source``.
    """

    def __init__(self, source: Callable[[], Sequence[Any]], hz: float,
                 final: Callable[[], Sequence[Any]] | None = None) -> None:
        if not hz > 0:
            raise ValueError(f"hz must be > 0, got {hz}")
        self.period_ns = max(1, round(1e9 / hz))
        self.rows: list[Any] = []
        self.stats = PollStats()
        self._source = source
        self._final = final or source
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="benchlib-nvml-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop and join; False if the thread is stuck (in a hung driver call, say)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _poll(self, source: Callable[[], Sequence[Any]]) -> None:
        t0 = time.perf_counter_ns()
        self.stats.attempts += 1
        try:
            self.rows.extend(source())
            self.stats.polls += 1
        except Exception as exc:
            self.stats.dropped += 1
            self.stats.last_error = repr(exc)
        self.stats.cost_ns += time.perf_counter_ns() - t0

    def _run(self) -> None:
        start = self.stats.started_ns = time.perf_counter_ns()
        k = 0
        while not self._stop.is_set():
            self._poll(self._source)
            k += 1
            now = time.perf_counter_ns()
            missed = (now - start) // self.period_ns - k  # deadlines already past beyond the next one
            if missed > 0:  # run the next poll at once and skip the rest
                self.stats.dropped += missed
                k += missed
            self._stop.wait((start + k * self.period_ns - now) / 1e9)
        self._poll(self._final)
        self.stats.stopped_ns = time.perf_counter_ns()


class NvmlSampler:
    """Samples NVML telemetry in the background for the duration of a ``with`` block. Never raises.

    ``status`` is "ok" while sampling, else "unavailable: <why>"; ``gpu_indices`` are CUDA ordinals
    (default: every GPU CUDA would see); ``energy_hz`` caps the costly energy-counter reads per GPU
    (:func:`energy_rate` lowers it when many GPUs would overrun a poll); ``memory_hz`` is the rate of
    the memory columns (0: none); ``host_paths`` points the host-memory readers elsewhere (tests).
    """

    def __init__(self, hz: float = 100.0, gpu_indices: list[int] | None = None, energy_hz: float = 10.0,
                 memory_hz: float = 10.0, host_paths: hostmem.HostPaths = hostmem.DEFAULT_PATHS) -> None:
        self.hz = hz
        self.gpu_indices = gpu_indices
        self.energy_hz = energy_hz
        self.memory_hz = memory_hz
        self.host_paths = host_paths
        self.status = "not started"
        self._energy_hz_used = energy_hz
        self._polls = 0
        self._gpus: list[GpuSource] = []
        self._host: HostSource | None = None
        self._cuda: CudaMemInfo | None = None
        self._poller: Poller | None = None
        self._stack = ExitStack()

    def __enter__(self) -> "NvmlSampler":
        try:
            nvml = self._stack.enter_context(nvml_session())
            if self.memory_hz > 0:
                self._host, self._cuda = HostSource(self.memory_hz, self.host_paths), CudaMemInfo()
                self._stack.callback(self._cuda.close)
            self._gpus, self._energy_hz_used = _open_gpus(nvml, self.gpu_indices, self.hz, self.energy_hz,
                                                          self.memory_hz, self._host, self._cuda)
            if not self._gpus:
                raise NvmlUnavailable(f"no GPU to sample (CUDA_VISIBLE_DEVICES="
                                      f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}, gpu_indices={self.gpu_indices})")
            self._poller = Poller(self._poll, self.hz, final=lambda: self._poll(complete=True))
            self._poller.start()
            self.status = "ok"
        except Exception as exc:
            self.status = f"unavailable: {exc}"
            self._poller = None
            self._stack.close()
        return self

    def _poll(self, complete: bool = False) -> list[TelemetryRow]:
        index, self._polls = self._polls, self._polls + 1
        host = self._host.poll(complete) if self._host is not None else None
        return [gpu.poll(complete, host, index) for gpu in self._gpus]

    def __exit__(self, *exc_info: object) -> None:
        if self._poller is not None and self._poller.stop():
            self._stack.close()  # a thread stuck in NVML keeps the library open

    def frame(self) -> pd.DataFrame:
        return rows_to_frame(list(self._poller.rows) if self._poller else [])

    def summary(self) -> dict[str, Any]:
        stats = self._poller.stats if self._poller else PollStats()
        end_ns = stats.stopped_ns or time.perf_counter_ns()
        elapsed_s = (end_ns - stats.started_ns) / 1e9 if stats.started_ns else 0.0
        return {
            "status": self.status,
            "hz_requested": self.hz,
            "energy_hz": self.energy_hz,
            "energy_hz_per_gpu": self._energy_hz_used,
            "memory_hz": self.memory_hz,
            "hz_achieved": stats.polls / elapsed_s if elapsed_s > 0 else None,
            "polls": stats.polls,
            "dropped_polls": stats.dropped,
            "mean_poll_cost_us": stats.cost_ns / 1e3 / stats.attempts if stats.attempts else None,
            "last_error": stats.last_error,
            "gpus": [gpu.describe() for gpu in self._gpus],
            "memory_peaks": memory_peaks(self.host_paths) if self.memory_hz > 0 and self._poller else None,
        }


def memory_peaks(paths: hostmem.HostPaths = hostmem.DEFAULT_PATHS) -> dict[str, int | None]:
    """The kernel's own high-water marks at the end of the block: this process's VmHWM, the largest
    RSS of its waited-for children, and the cgroup's memory.peak (None where there is none)."""
    import resource

    level = hostmem.cgroup_memory(paths)
    return {"process_vmhwm_bytes": hostmem.peak_rss_bytes(paths=paths),
            "children_maxrss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
            "cgroup_memory_peak_bytes": level.peak_bytes if level else None}
