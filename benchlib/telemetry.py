"""Background NVML telemetry (docs/architecture.md, "Telemetry"): one row per poll of one GPU.

``with NvmlSampler(hz=100) as s: run_benchmark()`` polls every visible GPU on a daemon thread at
absolute deadlines (``start + k / hz``; a poll that overruns skips the deadlines it missed and counts
them as dropped), plus one last poll on exit so the rows bracket the block. ``s.frame()`` conforms to
:data:`benchlib.schema.TELEMETRY_COLUMNS`; ``gpu_index`` is the CUDA ordinal (the N of ``cuda:N``),
so telemetry joins to results on ``timestamp_ns`` between a sample's ``start_ns`` and ``end_ns``.

A query the GPU refuses (NotSupported, NoPermission, FunctionNotFound) drops to its fallback, or to
NaN, once and for good; any other failure is NaN for that poll. Without pynvml, a driver or a GPU the
sampler records why in ``status`` and the block runs as usual with an empty frame.

Cost, measured on an H100 (driver 580): each query takes 2-9 us, except the total-energy counter
(about 3 ms, by either nvmlDeviceGetTotalEnergyConsumption or its field value), so energy is read
at most ``energy_hz`` times a second (NaN in the rows between) and always in the first and last
poll, which keeps the block's energy exact. ctypes releases the GIL inside NVML calls.
"""
from __future__ import annotations

import math
import os
import threading
import time
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import pandas as pd

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
_PERMANENT = ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_NO_PERMISSION", "NVML_ERROR_FUNCTION_NOT_FOUND")

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


def resolve_visible(spec: str | None, count: int, lookup: Callable[[str], int | None]) -> list[int]:
    """NVML indices of the GPUs CUDA will see, in CUDA order, for a CUDA_VISIBLE_DEVICES value.

    ``None`` means all ``count`` GPUs in NVML (PCI) order. Like CUDA, parsing stops at the first
    entry that names no GPU; ``lookup`` maps a UUID (or a unique prefix of one) to an NVML index.
    CUDA's default order is fastest-first, which equals PCI order on a box of identical GPUs.
    """
    if spec is None:
        return list(range(count))
    indices: list[int] = []
    for token in (t.strip() for t in spec.split(",")):
        if token.lstrip("-").isdigit():
            index = int(token) if 0 <= int(token) < count else None
        else:
            index = lookup(token) if token else None
        if index is None:
            break
        if index not in indices:
            indices.append(index)
    return indices


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

    @property
    def supported(self) -> bool:
        return bool(self._queries)

    def read(self, force: bool = False) -> Any:
        if self._min_interval_ns and not force:
            now = time.perf_counter_ns()
            if self._last_ns is not None and now - self._last_ns < self._min_interval_ns:
                return self.default
            self._last_ns = now
        while self._queries:
            try:
                return self._queries[0]()
            except Exception as exc:
                if not _is_permanent(exc):
                    return self.default
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


#: A poll's values before any query answers: NaN, or None (<NA>) for the string column.
_NO_VALUES: dict[str, Any] = {
    column: None if dtype == "string" else NAN
    for column, dtype in TELEMETRY_COLUMNS.items() if column not in ("timestamp_ns", "gpu_index")
}


@dataclass
class GpuSource:
    """The cached queries of one GPU; ``poll()`` reads them all into one row.

    ``metrics`` maps a column to the Metric that reads it; a Metric may instead return a dict of
    several columns read in one call. ``poll(complete=True)`` also reads rate-limited metrics.
    """

    ordinal: int
    metrics: dict[str, Metric]
    nvml_index: int | None = None
    uuid: str | None = None
    name: str | None = None

    def poll(self, complete: bool = False) -> TelemetryRow:
        ts = time.time_ns()
        values = dict(_NO_VALUES)
        for column, metric in self.metrics.items():
            value = metric.read(force=complete)
            if isinstance(value, dict):
                values.update(value)
            else:
                values[column] = value
        return TelemetryRow(ts, self.ordinal, **values)

    def unsupported(self) -> list[str]:
        return [column for column, metric in self.metrics.items() if not metric.supported]


def open_gpu(nvml: ModuleType, ordinal: int, nvml_index: int, energy_hz: float = 10.0) -> GpuSource:
    """The GpuSource for NVML device ``nvml_index``, recorded as CUDA ordinal ``ordinal``."""
    h = nvml.nvmlDeviceGetHandleByIndex(nvml_index)

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
                            min_interval_s=1 / energy_hz if energy_hz > 0 else 0.0),
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
    return GpuSource(ordinal, metrics, nvml_index, _text(nvml.nvmlDeviceGetUUID(h)), _text(nvml.nvmlDeviceGetName(h)))


def rows_to_frame(rows: Sequence[TelemetryRow]) -> pd.DataFrame:
    """Telemetry rows as a frame with exactly the schema's columns and dtypes."""
    if not rows:
        return empty_telemetry()
    return conform(pd.DataFrame.from_records(list(rows), columns=list(TELEMETRY_COLUMNS)), TELEMETRY_COLUMNS)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _open_gpus(nvml: ModuleType, gpu_indices: Sequence[int] | None, energy_hz: float) -> list[GpuSource]:
    count = nvml.nvmlDeviceGetCount()
    uuids = [_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]

    def lookup(token: str) -> int | None:
        matches = [i for i, u in enumerate(uuids) if u.startswith(token) or u.startswith(f"GPU-{token}")]
        if len(matches) == 1:
            return matches[0]
        try:  # a MIG device: sample its parent GPU
            mig = nvml.nvmlDeviceGetHandleByUUID(token)
            return nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig))
        except Exception:
            return None

    visible = resolve_visible(os.environ.get("CUDA_VISIBLE_DEVICES"), count, lookup)
    wanted = range(len(visible)) if gpu_indices is None else [i for i in gpu_indices if 0 <= i < len(visible)]
    return [open_gpu(nvml, ordinal, visible[ordinal], energy_hz) for ordinal in wanted]


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
    (default: every GPU CUDA would see); ``energy_hz`` caps the costly energy-counter reads.
    """

    def __init__(self, hz: float = 100.0, gpu_indices: list[int] | None = None, energy_hz: float = 10.0) -> None:
        self.hz = hz
        self.gpu_indices = gpu_indices
        self.energy_hz = energy_hz
        self.status = "not started"
        self._gpus: list[GpuSource] = []
        self._poller: Poller | None = None
        self._stack = ExitStack()

    def __enter__(self) -> "NvmlSampler":
        try:
            nvml = self._stack.enter_context(nvml_session())
            self._gpus = _open_gpus(nvml, self.gpu_indices, self.energy_hz)
            if not self._gpus:
                raise NvmlUnavailable(f"no GPU to sample (CUDA_VISIBLE_DEVICES="
                                      f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}, gpu_indices={self.gpu_indices})")
            self._poller = Poller(lambda: [gpu.poll() for gpu in self._gpus], self.hz,
                                  final=lambda: [gpu.poll(complete=True) for gpu in self._gpus])
            self._poller.start()
            self.status = "ok"
        except Exception as exc:
            self.status = f"unavailable: {exc}"
            self._poller = None
            self._stack.close()
        return self

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
            "hz_achieved": stats.polls / elapsed_s if elapsed_s > 0 else None,
            "polls": stats.polls,
            "dropped_polls": stats.dropped,
            "mean_poll_cost_us": stats.cost_ns / 1e3 / stats.attempts if stats.attempts else None,
            "last_error": stats.last_error,
            "gpus": [{"gpu_index": g.ordinal, "nvml_index": g.nvml_index, "uuid": g.uuid, "name": g.name,
                      "unsupported": g.unsupported()} for g in self._gpus],
        }
