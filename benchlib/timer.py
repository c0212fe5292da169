"""The one timer every workload uses.

Device work is timed with CUDA events recorded on the current stream around the work; the host
synchronises before each sample (so the wall-clock stamps bracket the device work and telemetry can
be joined to it) and after it (to read the events). CPU work is timed with ``perf_counter_ns``.
A host clock is never read around asynchronous work.

Stopping is adaptive: after warm-up and ``min_samples``, sampling goes on until the relative 95 %
confidence half-width of the median (distribution-free, from order statistics) is at most
``target_rel_ci``, or ``max_samples`` or ``max_time_s`` is reached. ``fixed_samples`` switches this
off (the seed protocol: exactly N iterations).

Host jitter: because each sample starts from an idle GPU, anything that delays the host between
recording the start event and launching the work (a GIL hand-off to the telemetry thread, a page
fault, the scheduler) lands inside the event interval. ``blocking_kernel`` (nvbench's technique)
first enqueues a spin kernel that keeps the GPU busy while the host enqueues the start event, the
work and the end event, so the interval holds device time only; the spin grows when the host takes
longer to enqueue than it covered. Use it for device-bound work (matmul, bandwidth). Leave it off
where the host's launch cost is what is measured (eager decoding, launch latency); there, or for
tiny kernels, ``inner_repeats`` runs the work several times per sample.
"""
from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
from scipy import stats

from .errors import ParamsError

#: Bytes written to evict the L2 between samples: larger than any current GPU's L2 (H100 50 MB,
#: H200 60 MB, B200 126 MB).
L2_FLUSH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class TimerConfig:
    warmup: int = 3
    min_samples: int = 10
    max_samples: int = 200
    max_time_s: float = 30.0
    target_rel_ci: float = 0.005
    fixed_samples: int | None = None
    inner_repeats: int = 1
    flush_l2: bool = False
    blocking_kernel: bool = False  # GPU only: hide host enqueue jitter behind a spin kernel

    def __post_init__(self) -> None:
        checks = {
            "warmup": self.warmup >= 0,
            "min_samples": self.min_samples >= 1,
            "max_samples": self.max_samples >= self.min_samples,
            "max_time_s": self.max_time_s > 0,
            "target_rel_ci": self.target_rel_ci > 0,
            "inner_repeats": self.inner_repeats >= 1,
            "fixed_samples": self.fixed_samples is None or self.fixed_samples >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ParamsError(f"timer setting {bad[0]}={getattr(self, bad[0])!r} is out of range.")


@dataclass(frozen=True)
class Sample:
    """One timed sample: seconds per call of the timed function, and wall-clock bounds."""

    seconds: float
    start_ns: int
    end_ns: int


@dataclass
class Measurement:
    """What :func:`measure` returns: the samples and how sampling went."""

    samples: list[Sample]
    clock: str  # "cuda_event" | "perf_counter"
    warmup: int
    stop_reason: str  # "target_ci" | "max_samples" | "time_budget" | "fixed_samples"
    rel_ci_halfwidth: float
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> np.ndarray:
        return np.array([sample.seconds for sample in self.samples], dtype=float)

    @property
    def median(self) -> float:
        return float(np.median(self.seconds))

    def describe(self) -> dict[str, Any]:
        values = self.seconds
        return {
            "n": len(values),
            "median_s": float(np.median(values)),
            "min_s": float(values.min()),
            "rel_ci_halfwidth": self.rel_ci_halfwidth,
            "stop_reason": self.stop_reason,
            "clock": self.clock,
        }


def median_ci_rel_halfwidth(values: np.ndarray, confidence: float = 0.95) -> float:
    """Relative half-width of the distribution-free CI of the median.

    The CI is [x_(j), x_(k)] with j, k from the binomial(n, 1/2) quantiles (order statistics),
    so it needs no assumption about the timing distribution. Returns inf when n is too small
    for the order statistics to give a CI.
    """
    n = len(values)
    if n < 6:
        return float("inf")
    ordered = np.sort(values)
    alpha = 1.0 - confidence
    # [x_(r), x_(n+1-r)] (1-based) with r the alpha/2 binomial quantile covers >= 95 %.
    lower = int(stats.binom.ppf(alpha / 2, n, 0.5)) - 1  # 0-based index of x_(r)
    upper = n - 1 - lower
    if lower < 0 or upper >= n or lower >= upper:
        return float("inf")
    median = float(np.median(ordered))
    if median <= 0:
        return float("inf")
    return float(ordered[upper] - ordered[lower]) / 2.0 / median


class _CudaClock:
    name = "cuda_event"
    MAX_SPIN_S = 0.05

    def __init__(self, torch_module: Any, device: Any, blocking_kernel: bool = False):
        self.torch = torch_module
        self.device = device
        self.spin_s = 1e-4 if blocking_kernel else 0.0
        self.cycles_per_s = _spin_cycles_per_second(torch_module) if blocking_kernel else 0.0

    def time(self, fn: Callable[[], Any]) -> float:
        cuda = self.torch.cuda
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        if self.spin_s:
            cuda._sleep(int(self.spin_s * self.cycles_per_s))
        enqueue_begin = time.perf_counter()
        start.record()
        fn()
        end.record()
        enqueue_s = time.perf_counter() - enqueue_begin
        end.synchronize()
        if self.spin_s and enqueue_s > 0.5 * self.spin_s:  # the spin did not cover the enqueue
            self.spin_s = min(4 * enqueue_s, self.MAX_SPIN_S)
        return start.elapsed_time(end) / 1e3

    def synchronize(self) -> None:
        self.torch.cuda.synchronize(self.device)


@functools.lru_cache(maxsize=None)
def _spin_cycles_per_second(torch_module: Any) -> float:
    """How many ``torch.cuda._sleep`` cycles make a second on this GPU (measured once)."""
    cuda = torch_module.cuda
    cycles = 20_000_000
    start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
    cuda._sleep(cycles // 10)  # warm the kernel up
    start.record()
    cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return cycles / (start.elapsed_time(end) / 1e3)


class _CpuClock:
    name = "perf_counter"

    def time(self, fn: Callable[[], Any]) -> float:
        begin = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - begin) / 1e9

    def synchronize(self) -> None:
        pass


def _l2_flusher(device: Any) -> Callable[[], None]:
    import torch

    buffer = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
    return lambda: buffer.zero_()


def _clock_for(device: Any, blocking_kernel: bool) -> _CudaClock | _CpuClock:
    if str(device).startswith("cuda"):
        import torch

        return _CudaClock(torch, device, blocking_kernel)
    return _CpuClock()


def measure(
    fn: Callable[[], Any],
    device: Any = "cpu",
    config: TimerConfig = TimerConfig(),
    before_sample: Callable[[], Any] | None = None,
) -> Measurement:
    """Time ``fn`` on ``device`` ("cpu" or a CUDA device) and return its samples.

    ``fn`` runs ``config.inner_repeats`` times per sample; each Sample holds seconds per call.
    ``before_sample`` (untimed) runs before every sample, e.g. to reset state; with
    ``flush_l2`` a 256 MiB buffer is written first so the L2 starts cold.
    """
    clock = _clock_for(device, config.blocking_kernel)
    flush = _l2_flusher(device) if config.flush_l2 and clock.name == "cuda_event" else None
    repeats = config.inner_repeats

    def body() -> None:
        for _ in range(repeats):
            fn()

    for _ in range(config.warmup):
        if before_sample:
            before_sample()
        body()
    clock.synchronize()

    samples: list[Sample] = []
    budget_end = time.perf_counter() + config.max_time_s
    target_n = config.fixed_samples
    while True:
        if before_sample:
            before_sample()
        if flush:
            flush()
        clock.synchronize()
        start_ns = time.time_ns()
        seconds = clock.time(body) / repeats
        samples.append(Sample(seconds, start_ns, time.time_ns()))
        reason = _stop_reason(samples, config, target_n, budget_end)
        if reason:
            break
    values = np.array([sample.seconds for sample in samples])
    return Measurement(
        samples=samples,
        clock=clock.name,
        warmup=config.warmup,
        stop_reason=reason,
        rel_ci_halfwidth=median_ci_rel_halfwidth(values),
        config=asdict(config),
    )


def _stop_reason(samples: list[Sample], config: TimerConfig, target_n: int | None, budget_end: float) -> str:
    n = len(samples)
    if target_n is not None:
        return "fixed_samples" if n >= target_n else ""
    if n < config.min_samples:
        return ""
    if n >= config.max_samples:
        return "max_samples"
    if time.perf_counter() >= budget_end:
        return "time_budget"
    # Re-checking the order-statistic CI is O(n log n); doing it every sample is cheap next to
    # the sample itself, but batch it geometrically for long runs.
    if n < 64 or n % max(1, n // 16) == 0:
        values = np.fromiter((sample.seconds for sample in samples), dtype=float, count=n)
        if median_ci_rel_halfwidth(values) <= config.target_rel_ci:
            return "target_ci"
    return ""
