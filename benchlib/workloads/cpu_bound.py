"""CPU-bound work under the process's CPU limits: a CPU matmul and a tokenisation-like regex loop.

A container with a CPU quota (``--cpus``, cgroup ``cpu.max``) but a thread pool sized to the host's
cores runs many threads that the quota throttles: 2x to 45x slower on CPU-bound code. ``task``
``matmul`` is an n x n float32 product on torch's intra-op pool; ``tokenize`` is a single-threaded
Python loop (regex split and a vocabulary lookup) over a synthetic text, the shape of a tokenizer or
a data pipeline. ``settings: user`` leaves the pool as the environment sizes it (torch's default,
``OMP_NUM_THREADS``), as a script that sets nothing gets it; ``settings: forced`` pins it to
``threads``, or with ``threads: 0`` to the CPUs the process may use (its affinity and the ceiling of
its CPU quota), what a quota-aware program sets.

Besides the time, each case records as one-sample metrics what limits it ran under:
``torch_threads``, ``affinity_cpus`` (os.sched_getaffinity), ``cpu_quota_cores`` (cgroup cpu.max;
absent without a quota, said in the note) and the cgroup's ``nr_throttled_delta`` and
``throttled_usec_delta`` over the case (cpu.stat after minus before). Always runs on the CPU.
"""
from __future__ import annotations

import random
import re
from contextlib import contextmanager
from typing import Callable, Iterator, Literal

from pydantic import Field, ValidationInfo, field_validator

from ..device import Device
from ..diagnosis.classes import HOST, THREAD_MECHANISMS, Sensitivity, excluding
from ..params import CommonParams, common_default
from ..timer import measure
from ..metricspec import CONTEXT, MetricSpec, time_metric
from . import Metric, Workload
from ._support import affinity_count, allowed_cpus, cpu_quota, cpu_throttling, point_metric

TOKEN = re.compile(r"\w+|[^\w\s]")
WORDS = ("the", "container", "kernel", "tensor", "latency", "throughput", "memory", "quota", "thread",
         "pool", "shared", "device", "bandwidth", "token", "batch", "model", "cache", "graph", "clock")
PUNCTUATION = (",", ".", ";", ":", "!", "?", "(", ")")


class CpuBoundParams(CommonParams):
    FORCED = "torch's intra-op thread pool: threads, or the CPUs allowed when threads is 0"

    device: Literal["cpu"] = "cpu"  # CPU-bound by definition
    task: Literal["matmul", "tokenize"] = "matmul"
    # torch intra-op threads in settings: forced (0: the CPUs allowed); settings: user leaves the pool alone
    threads: int = Field(0, ge=0, le=4096)
    n: int = Field(256, gt=0, le=16384)  # matmul size
    text_kib: int = Field(64, gt=0, le=1 << 20)  # tokenize: KiB of text per call
    # this workload's timing defaults (its notebook's parameters cell is checked against the model)
    max_samples: int = common_default("max_samples", 100)
    max_time_s: float = common_default("max_time_s", 2.0)
    target_rel_ci: float = common_default("target_rel_ci", 0.01)

    @field_validator("threads")
    @classmethod
    def _threads_are_forced(cls, threads: int, info: ValidationInfo) -> int:
        if threads and info.data.get("settings") == "user":
            raise ValueError("a thread count pins the pool, which is settings: forced; set settings: forced, "
                             "or threads: 0 to leave the pool to the environment")
        return threads

    def pool_size(self) -> int:
        """Threads to pin in forced mode (0 in user mode: leave the pool alone)."""
        if self.settings == "user":
            return 0
        return self.threads or allowed_cpus()


@contextmanager
def _torch_threads(threads: int) -> Iterator[int]:
    """Run with ``threads`` intra-op threads (0: leave the default); yield the count in effect."""
    import torch

    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(saved)


def synthetic_text(kib: int, seed: int) -> str:
    """``kib`` KiB of word-and-punctuation text, the same for a given seed."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < kib * 1024:
        word = rng.choice(WORDS) if rng.random() > 0.15 else rng.choice(PUNCTUATION)
        parts.append(word)
        size += len(word) + 1
    return " ".join(parts)[: kib * 1024]


def _tokenize_fn(params: CpuBoundParams) -> tuple[Callable[[], list[int]], int]:
    """The tokenising call and the number of tokens it produces."""
    text = synthetic_text(params.text_kib, params.seed)
    vocabulary: dict[str, int] = {}

    def tokenize() -> list[int]:
        return [vocabulary.setdefault(piece, len(vocabulary)) for piece in TOKEN.findall(text)]

    return tokenize, len(tokenize())


def _matmul_fn(params: CpuBoundParams) -> Callable[[], object]:
    import torch

    generator = torch.Generator().manual_seed(params.seed)
    a = torch.randn((params.n, params.n), generator=generator)
    b = torch.randn((params.n, params.n), generator=generator)
    c = torch.empty_like(a)
    return lambda: torch.matmul(a, b, out=c)


def _timed(params: CpuBoundParams, threads: int) -> Metric:
    if params.task == "matmul":
        measurement = measure(_matmul_fn(params), "cpu", params.timer_config())
        pool = "pinned by the workload" if params.settings == "forced" else "pool sized by the environment"
        return Metric.from_measurement("time", measurement, work=2.0 * params.n**3, work_unit="FLOP",
                                       note=f"float32 {params.n}x{params.n} on {threads} torch threads ({pool})")
    tokenize, tokens = _tokenize_fn(params)
    measurement = measure(tokenize, "cpu", params.timer_config())
    return Metric.from_measurement("time", measurement, work=float(tokens), work_unit="token",
                                   note=f"regex split + vocabulary lookup of {params.text_kib} KiB, one thread")


def run(params: CpuBoundParams, device: Device) -> list[Metric]:
    quota = cpu_quota()
    with _torch_threads(params.pool_size()) as threads:
        before = cpu_throttling()
        timed = _timed(params, threads)
        after = cpu_throttling()
    return [timed, *_limit_metrics(threads, quota.text, quota.cores), *_throttle_metrics(before, after)]


def _limit_metrics(threads: int, cpu_max: str | None, cores: float | None) -> list[Metric]:
    affinity = affinity_count()
    quota_note = f"cgroup cpu.max {cpu_max!r}" if cpu_max else "cgroup cpu.max unreadable"
    metrics = [
        point_metric("torch_threads", "count", threads, note="torch.get_num_threads() while timed"),
        point_metric("affinity_cpus", "count", affinity, note=f"len(os.sched_getaffinity(0)); {quota_note}"),
    ]
    if cores is not None:
        oversubscribed = "; more threads than the quota allows" if threads > cores else ""
        metrics.append(point_metric("cpu_quota_cores", "cores", cores, note=f"{quota_note}{oversubscribed}"))
    return metrics


def _throttle_metrics(before: dict[str, int | None], after: dict[str, int | None]) -> list[Metric]:
    metrics = []
    for key, name, unit in (("nr_throttled", "nr_throttled_delta", "count"),
                            ("throttled_usec", "throttled_usec_delta", "us")):
        if before[key] is not None and after[key] is not None:
            metrics.append(point_metric(name, unit, after[key] - before[key],
                                        note=f"cgroup cpu.stat {key} after minus before the case"))
    return metrics


def sensitivity(params: CpuBoundParams, on_gpu: bool) -> Sensitivity:
    """Host-bound code; the thread pool cannot act when the case pins it or runs one Python thread."""
    if params.task == "tokenize":
        return Sensitivity(frozenset({HOST}), excluding(THREAD_MECHANISMS, "one Python thread: no pool"))
    if params.settings == "forced":
        return Sensitivity(frozenset({HOST}), excluding(THREAD_MECHANISMS, "settings: forced pins the thread pool"))
    return Sensitivity(frozenset({HOST}))


WORKLOAD = Workload(
    name="cpu_bound",
    description="CPU matmul and a tokeniser-like regex loop under the cgroup CPU quota; threads, throttling",
    params_model=CpuBoundParams,
    case_keys=("task", "settings", "threads"),
    run=run,
    metrics=(
        time_metric("time", "time per call"),
        MetricSpec("torch_threads", CONTEXT, "count", "torch threads"),
        MetricSpec("affinity_cpus", CONTEXT, "count", "CPUs in the affinity mask"),
        MetricSpec("cpu_quota_cores", CONTEXT, "cores", "cgroup CPU quota", absent="no quota"),
        MetricSpec("nr_throttled_delta", CONTEXT, "count", "cgroup CPU throttling periods during the case"),
        MetricSpec("throttled_usec_delta", CONTEXT, "us", "time throttled by the cgroup CPU quota during the case"),
    ),
    sensitivity=sensitivity,
)
