"""The one timer every workload uses.

Device work is timed with CUDA events recorded on the current stream around the work; each sample
keeps wall-clock bounds so telemetry can be joined to it. CPU work is timed with
``perf_counter_ns``. A host clock is never read around asynchronous work.

Stopping is adaptive: after warm-up, ``min_samples`` and ``min_time_s``, sampling goes on until the
relative 95 % confidence half-width of the median (distribution-free, from order statistics) is at
most ``target_rel_ci``, or ``max_samples`` or ``max_time_s`` is reached. ``min_time_s`` measures a
GPU in its sustained state: an H100 running bf16 products back to back reaches its power cap
within about a second, and a few hundred milliseconds of samples would measure the cold burst. ``fixed_samples`` switches this
off (the seed protocol: exactly N iterations).

Two ways to sample device work:

* synchronised (default): the host synchronises before every sample, so the GPU starts each one
  idle. The interval then includes the host's launch of the work (and any host jitter, such as a
  GIL hand-off to the telemetry thread): right for latency, launch costs and CPU-bound work.
* ``back_to_back``: samples are enqueued in batches with a start and end event each and no host
  synchronisation in between; the host stays ahead of the GPU, so the interval holds device time
  only, and the GPU runs at its sustained duty cycle (power cap included) as in a real loop and as
  ``triton.testing.do_bench`` measures. An untimed lead-in call fills the queue before each batch.
  Each sample's wall-clock bounds are anchored on the batch's last event. Use it for device-bound
  work (matmul, memory bandwidth).

For tiny kernels ``inner_repeats`` runs the work several times per sample.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ParamsError

__all__ = [
    "BATCH_SECONDS", "L2_FLUSH_BYTES", "Measurement", "Sample", "TimerConfig", "binomial_half_quantile",
    "measure", "median_ci_rel_halfwidth", "stop_reason"
]

#: Bytes written to evict the L2 between samples: larger than any current GPU's L2 (H100 50 MB,
#: H200 60 MB, B200 126 MB).
L2_FLUSH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class TimerConfig:
    warmup: int = 3
    min_samples: int = 10
    max_samples: int = 200
    max_time_s: float = 30.0
    min_time_s: float = 0.0  # keep sampling at least this long (a GPU reaches its power cap in ~1 s)
    target_rel_ci: float = 0.005
    fixed_samples: int | None = None
    inner_repeats: int = 1
    flush_l2: bool = False
    back_to_back: bool = False  # GPU only: enqueue samples without host syncs (device-bound work)

    def __post_init__(self) -> None:
        checks = {
            "warmup": self.warmup >= 0,
            "min_samples": self.min_samples >= 1,
            "max_samples": self.max_samples >= self.min_samples,
            "max_time_s": self.max_time_s > 0,
            "min_time_s": 0 <= self.min_time_s <= self.max_time_s,
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
    lower = binomial_half_quantile(alpha / 2, n) - 1  # 0-based index of x_(r)
    upper = n - 1 - lower
    if lower < 0 or upper >= n or lower >= upper:
        return float("inf")
    median = float(np.median(ordered))
    if median <= 0:
        return float("inf")
    return float(ordered[upper] - ordered[lower]) / 2.0 / median


BATCH_SECONDS = 0.2  # target wall time of one batch of samples between stopping checks


def binomial_half_quantile(q: float, n: int) -> int:
    """The smallest k with P(B <= k) >= q for B ~ Binomial(n, 1/2), exactly (in log space).

    What ``scipy.stats.binom.ppf(q, n, 0.5)`` returns; computed here because importing scipy.stats
    costs about half a second in every benchmark kernel.
    """
    log_norm = math.lgamma(n + 1) - n * math.log(2.0)
    cumulative = 0.0
    for k in range(n + 1):
        cumulative += math.exp(log_norm - math.lgamma(k + 1) - math.lgamma(n - k + 1))
        if cumulative >= q * (1 - 1e-12):
            return k
    return n


class _CudaClock:
    name = "cuda_event"

    def __init__(self, torch_module: Any, device: Any, back_to_back: bool):
        self.torch = torch_module
        self.device = device
        self.back_to_back = back_to_back

    def synchronize(self) -> None:
        self.torch.cuda.synchronize(self.device)

    def sample(self, body: Callable[[], None], count: int, prepare: Callable[[], None]) -> list[Sample]:
        if not self.back_to_back:
            return [self._synchronised(body, prepare) for _ in range(count)]
        return self._back_to_back(body, count, prepare)

    def _synchronised(self, body: Callable[[], None], prepare: Callable[[], None]) -> Sample:
        cuda = self.torch.cuda
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        prepare()
        self.synchronize()
        start_ns = time.time_ns()
        start.record()
        body()
        end.record()
        end.synchronize()
        return Sample(start.elapsed_time(end) / 1e3, start_ns, time.time_ns())

    def _back_to_back(self, body: Callable[[], None], count: int, prepare: Callable[[], None]) -> list[Sample]:
        cuda = self.torch.cuda
        events = [(cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)) for _ in range(count)]
        self.synchronize()
        body()  # untimed lead-in: the GPU is busy while the first timed sample is enqueued
        for start, end in events:
            prepare()
            start.record()
            body()
            end.record()
        last = events[-1][1]
        last.synchronize()
        anchor_ns = time.time_ns()  # wall clock when the last event had completed

        def wall(event: Any) -> int:
            return anchor_ns - int(event.elapsed_time(last) * 1e6)

        return [Sample(start.elapsed_time(end) / 1e3, wall(start), wall(end)) for start, end in events]


class _CpuClock:
    name = "perf_counter"

    def synchronize(self) -> None:
        pass

    def sample(self, body: Callable[[], None], count: int, prepare: Callable[[], None]) -> list[Sample]:
        samples = []
        for _ in range(count):
            prepare()
            start_ns = time.time_ns()
            begin = time.perf_counter_ns()
            body()
            elapsed = (time.perf_counter_ns() - begin) / 1e9
            samples.append(Sample(elapsed, start_ns, time.time_ns()))
        return samples


def _l2_flusher(device: Any) -> Callable[[], None]:
    import torch

    buffer = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
    return lambda: buffer.zero_()


def _clock_for(device: Any, back_to_back: bool) -> _CudaClock | _CpuClock:
    if str(device).startswith("cuda"):
        import torch

        return _CudaClock(torch, device, back_to_back)
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
    ``flush_l2`` a 256 MiB buffer is written first so the L2 starts cold. Samples are taken in
    batches of about ``BATCH_SECONDS``; the stopping rule is checked between batches.
    """
    clock = _clock_for(device, config.back_to_back)
    flush = _l2_flusher(device) if config.flush_l2 and clock.name == "cuda_event" else None
    repeats = config.inner_repeats

    def body() -> None:
        for _ in range(repeats):
            fn()

    def prepare() -> None:
        if before_sample:
            before_sample()
        if flush:
            flush()

    for _ in range(config.warmup):
        if before_sample:
            before_sample()
        body()
    clock.synchronize()

    samples: list[Sample] = []
    began = time.perf_counter()
    while True:
        samples.extend(clock.sample(body, _batch_size(samples, config), prepare))
        reason = stop_reason([sample.seconds for sample in samples], config, time.perf_counter() - began)
        if reason:
            break
    for index, sample in enumerate(samples):
        samples[index] = Sample(sample.seconds / repeats, sample.start_ns, sample.end_ns)
    values = np.array([sample.seconds for sample in samples])
    return Measurement(
        samples=samples,
        clock=clock.name,
        warmup=config.warmup,
        stop_reason=reason,
        rel_ci_halfwidth=median_ci_rel_halfwidth(values),
        config=asdict(config),
    )


def _batch_size(samples: list[Sample], config: TimerConfig) -> int:
    """First the minimum (or the fixed count), then about BATCH_SECONDS of samples, within the cap."""
    if config.fixed_samples is not None:
        return config.fixed_samples - len(samples)
    if len(samples) < config.min_samples:
        return config.min_samples - len(samples)
    typical = float(np.median([sample.seconds for sample in samples])) or 1e-9
    return max(1, min(int(BATCH_SECONDS / typical), config.max_samples - len(samples)))


def stop_reason(seconds: Sequence[float], config: TimerConfig, elapsed_s: float) -> str:
    """Why sampling should stop now ("" to go on): the one stopping rule, also used by workloads
    that time their samples themselves (the LLM backends)."""
    n = len(seconds)
    if config.fixed_samples is not None:
        return "fixed_samples" if n >= config.fixed_samples else ""
    if n < config.min_samples:
        return ""
    if n >= config.max_samples:
        return "max_samples"
    if elapsed_s >= config.max_time_s:
        return "time_budget"
    if elapsed_s < config.min_time_s:
        return ""
    if median_ci_rel_halfwidth(np.asarray(seconds, dtype=float)) <= config.target_rel_ci:
        return "target_ci"
    return ""
