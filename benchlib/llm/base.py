"""The backend interface: one call per generation, one result shape for every backend.

A *generation* serves one :class:`~benchlib.llm.inputs.Batch` (``batch`` requests submitted
together) and returns a :class:`GenerationResult`: per request the prompt length, the output ids and
the time of each output token from the request's start. TTFT, TPOT, E2E and inter-token latencies
(ITL) all derive from those times; :func:`run_scenario` runs warm-ups and measured generations with
the shared timer's stopping rule.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..timer import TimerConfig, stop_reason
from .inputs import Batch, InputSpec
from .model import ModelShape

BackendName = Literal["reference", "transformers", "tensorrt-llm"]
Mode = Literal["graph", "eager", "bench"]
Kernels = Literal["auto", "triton", "torch"]
#: ``static``: the cache the scenario needs (batch x longest request); ``free_memory``: a pool of
#: ``kv_cache_free_fraction`` of the memory free after the weights, as TensorRT-LLM sizes its cache.
KvCacheMode = Literal["static", "free_memory"]


@dataclass(frozen=True)
class BackendConfig:
    """What a backend needs to build itself for one scenario."""

    backend: BackendName
    shape: ModelShape
    dtype: str  # bf16 | fp16 | fp32
    mode: Mode
    batch: int
    max_input_len: int
    output_len: int
    seed: int
    compile: bool = False
    model_path: str | None = None  # a Hugging Face checkpoint directory instead of random weights
    kernels: Kernels = "auto"  # reference decode step: fused Triton kernels or PyTorch ops
    kv_cache: KvCacheMode = "static"
    kv_cache_free_fraction: float = 0.9  # free_memory: share of the free memory after the weights
    kv_cache_max_tokens: int | None = None  # free_memory: at most this many tokens (TensorRT-LLM's max_tokens)

    @property
    def max_tokens(self) -> int:
        """Longest sequence a request can reach: its prompt plus every output token."""
        return self.max_input_len + self.output_len


def tpot(e2e_s: float, ttft_s: float, output_tokens: int) -> float | None:
    """Time per output token after the first: (E2E - TTFT) / (tokens - 1); None for one token."""
    if output_tokens < 2:
        return None
    return (e2e_s - ttft_s) / (output_tokens - 1)


@dataclass(frozen=True)
class RequestResult:
    """One request: prompt length, output ids, and when each output token was there."""

    prompt_len: int
    output_ids: np.ndarray
    token_s: np.ndarray  # seconds from the request's start to each output token, non-decreasing
    start_ns: int  # wall clock (time.time_ns) when the request started

    @property
    def ttft(self) -> float:
        return float(self.token_s[0])

    @property
    def e2e(self) -> float:
        return float(self.token_s[-1])

    @property
    def tpot(self) -> float | None:
        return tpot(self.e2e, self.ttft, len(self.token_s))

    @property
    def itl(self) -> np.ndarray:
        return np.diff(self.token_s)

    def wall_ns(self, offset_s: float) -> int:
        """Wall-clock time of a point ``offset_s`` after the request's start (joins telemetry)."""
        return self.start_ns + int(round(offset_s * 1e9))


@dataclass(frozen=True)
class GenerationResult:
    """Every request of one generation. ``shared_timeline``: the batch ran in lock step, so all
    requests share one token timeline (static batching) and one decode step serves them all."""

    requests: tuple[RequestResult, ...]
    shared_timeline: bool

    @property
    def start_ns(self) -> int:
        return min(request.start_ns for request in self.requests)

    @property
    def end_ns(self) -> int:
        return max(request.wall_ns(request.e2e) for request in self.requests)

    @property
    def span_s(self) -> float:
        """From the first request's start to the last token of the batch."""
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def output_tokens(self) -> int:
        return sum(len(request.output_ids) for request in self.requests)


def decode_bytes_per_step(shape: ModelShape, dtype: str, result: GenerationResult) -> float:
    """Mean bytes a decode step reads in ``result``: all weights + K/V at each row's mean context.

    Row b attends prompt_b + i positions at decode step i (1..n-1), i.e. prompt_b + n/2 on average.
    """
    output_len = len(result.requests[0].output_ids)
    context = sum(request.prompt_len + output_len / 2.0 for request in result.requests)
    return shape.decode_weight_bytes(dtype) + context * shape.kv_bytes_per_token(dtype)


class Backend(ABC):
    """One way of running a model: build in ``__init__``, serve generations, release in ``close``."""

    #: How token times are taken, for the record (e.g. "cuda_event per decode step").
    clock: str = ""
    #: Bytes of a KV cache the backend allocated up front (a static cache or a pool), else None.
    kv_cache_bytes: int | None = None
    #: Tokens that KV cache holds (every request's positions together), else None.
    kv_cache_tokens: int | None = None
    #: How the cache was sized, for the record (e.g. "0.9 x 71.2 GiB free after the weights").
    kv_cache_note: str = ""

    @abstractmethod
    def generate(self, batch: Batch) -> GenerationResult:
        """Serve every prompt of ``batch`` to exactly ``batch.output_len`` tokens, ignoring EOS."""

    def close(self) -> None:
        """Release what the backend holds beyond Python references (processes, temporary files)."""


def run_scenario(backend: Backend, spec: InputSpec, config: TimerConfig) -> tuple[list[GenerationResult], str]:
    """Warm up, then generate until the shared timer's rule stops on the generations' span.

    Returns the measured generations and the stop reason. A generation that does not produce
    exactly ``spec.output_len`` tokens per request raises: the figures would not be comparable.
    """
    for index in range(config.warmup):
        _checked(backend.generate(spec.batch_at(index)), spec)
    results: list[GenerationResult] = []
    began = time.perf_counter()
    while True:
        results.append(_checked(backend.generate(spec.batch_at(config.warmup + len(results))), spec))
        reason = stop_reason([result.span_s for result in results], config, time.perf_counter() - began)
        if reason:
            return results, reason


def _checked(result: GenerationResult, spec: InputSpec) -> GenerationResult:
    counts = sorted({len(request.output_ids) for request in result.requests})
    if len(result.requests) != spec.batch or counts != [spec.output_len]:
        raise RuntimeError(
            f"backend returned {len(result.requests)} requests with {counts} output tokens; expected "
            f"{spec.batch} with exactly {spec.output_len} (EOS must be ignored)"
        )
    return result
