"""Generations -> tidy metrics, and the roofline of each generation.

Per request (one sample each): ``ttft`` (work = prompt tokens), ``tpot`` (work = 1 token), ``e2e``
(work = output tokens). Per token gap: ``itl`` (work = 1 token; a lock-step batch shares its gaps,
so they are stored once per generation). Per decode step of a lock-step batch: ``decode_step``
(work = batch tokens). Per generation: ``generation`` (from the first request's start to the last
token; work = output tokens of the batch, so its rate is the scenario's output tokens/s), and where
a ceiling is known ``prefill_roofline_fraction`` and ``decode_roofline_fraction`` (unit "1").
Per scenario: ``kv_cache_bytes``, ``kv_cache_tokens`` where the backend knows the tokens its cache
holds (a pool sized by free memory holds more than one batch needs), and, on a GPU with an in-process
torch backend, ``peak_memory``.

Every sample carries wall-clock start/end stamps, so telemetry (power, energy) joins to it; energy
per output token is the analysis' job. Percentiles are derived from the samples, never stored.

Roofline: a decode step must read every weight once plus the K/V of every cached position of every
row; ``decode_roofline_fraction`` = (those bytes at the generation's mean context / TPOT) / memory
bandwidth. ``prefill_roofline_fraction`` = (2 * matmul weights * prompt tokens + causal attention +
LM head FLOP) / TTFT / peak FLOP/s. Ceilings: the ``mem_bw_gbs`` / ``peak_tflops`` parameters when
given (e.g. measured), the datasheet table (:mod:`benchlib.ceilings`) otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..metricspec import CONTEXT, HIGHER, PERFORMANCE, MetricSpec, time_metric
from ..timer import Sample
from ..workloads import Metric
from .base import GenerationResult, decode_bytes_per_step  # noqa: F401  (re-exported)
from .model import ModelShape

S = "s"
TOKEN = "token"

#: What each metric of :func:`scenario_metrics` is (the workload declares these).
METRIC_SPECS: tuple[MetricSpec, ...] = (
    time_metric("ttft", "time to first token"),
    time_metric("tpot", "time per output token"),
    time_metric("e2e", "request latency"),
    time_metric("itl", "inter-token latency"),
    time_metric("decode_step", "decode step"),
    time_metric("generation", "generation time"),
    MetricSpec("prefill_roofline_fraction", PERFORMANCE, "1", "prefill fraction of the compute roofline", better=HIGHER),
    MetricSpec("decode_roofline_fraction", PERFORMANCE, "1", "decode fraction of the bandwidth roofline", better=HIGHER),
    MetricSpec("kv_cache_bytes", CONTEXT, "B", "KV-cache size"),
    MetricSpec("peak_memory", CONTEXT, "B", "peak device memory allocated", tolerance=0.01),
    MetricSpec("kv_cache_tokens", CONTEXT, "token", "tokens the KV cache holds", tolerance=0.01),
    MetricSpec("process_peak_rss", CONTEXT, "B", "peak RSS of the process (VmHWM)", tolerance=0.05),
    MetricSpec("cuda_free_at_end", CONTEXT, "B", "free device memory with the model loaded", tolerance=0.02),
)


@dataclass(frozen=True)
class Ceilings:
    """Memory bandwidth (GB/s) and peak compute (TFLOP/s) to compare with, and where they came from."""

    mem_bw_gbs: float | None = None
    mem_bw_source: str = ""
    peak_tflops: float | None = None
    peak_source: str = ""


@dataclass(frozen=True)
class ScenarioInfo:
    """What the metrics need besides the generations."""

    shape: ModelShape
    dtype: str
    batch: int
    max_input_len: int
    output_len: int
    clock: str
    stop_reason: str
    ceilings: Ceilings = Ceilings()
    kv_cache_allocated_bytes: int | None = None  # a static cache's (or a pool's) real allocation
    kv_cache_tokens: int | None = None  # tokens that cache holds, all requests together
    kv_cache_note: str = ""  # how it was sized
    peak_memory_bytes: int | None = None


def scenario_metrics(results: list[GenerationResult], info: ScenarioInfo) -> list[Metric]:
    """All metrics of one scenario's measured generations."""
    start_ns, end_ns = results[0].start_ns, results[-1].end_ns
    metrics = _request_metrics(results, info) + _token_metrics(results, info) + _generation_metrics(results, info)
    metrics.append(_kv_metric(info, start_ns, end_ns))
    if info.kv_cache_tokens is not None:
        metrics.append(Metric("kv_cache_tokens", TOKEN, [Sample(float(info.kv_cache_tokens), start_ns, end_ns)],
                              note=f"tokens the KV cache holds; {info.kv_cache_note}".rstrip("; ")))
    if info.peak_memory_bytes is not None:
        metrics.append(Metric("peak_memory", "B", [Sample(float(info.peak_memory_bytes), start_ns, end_ns)],
                              note="torch.cuda.max_memory_allocated over the scenario (weights, cache, activations)"))
    return metrics


def _request_metrics(results: list[GenerationResult], info: ScenarioInfo) -> list[Metric]:
    requests = [request for result in results for request in result.requests]
    ttft = [Sample(r.ttft, r.start_ns, r.wall_ns(r.ttft)) for r in requests]
    e2e = [Sample(r.e2e, r.start_ns, r.wall_ns(r.e2e)) for r in requests]
    tpot = [Sample(r.tpot, r.wall_ns(r.ttft), r.wall_ns(r.e2e)) for r in requests if r.tpot is not None]
    prompt_lengths = {r.prompt_len for r in requests}
    same_prompt = len(prompt_lengths) == 1
    common = f"{info.clock}; stop={info.stop_reason}"
    metrics = [
        Metric("ttft", S, ttft, work=float(min(prompt_lengths)) if same_prompt else None, work_unit=TOKEN,
               note=(f"time to first token, per request (prefill + first sampling); "
                     f"{'work = prompt tokens' if same_prompt else 'prompt lengths vary: no rate'}; {common}")),
        Metric("e2e", S, e2e, work=float(info.output_len), work_unit=TOKEN,
               note=f"request start to last token, per request; work = output tokens; {common}"),
    ]
    if tpot:
        metrics.append(Metric("tpot", S, tpot, work=1.0, work_unit=TOKEN,
                              note=f"(E2E - TTFT) / (output tokens - 1), per request; {common}"))
    return metrics


def _token_metrics(results: list[GenerationResult], info: ScenarioInfo) -> list[Metric]:
    shared = results[0].shared_timeline
    itl = [
        Sample(float(gap), request.wall_ns(begin), request.wall_ns(end))
        for result in results
        for request in (result.requests[:1] if shared else result.requests)
        for gap, begin, end in zip(request.itl, request.token_s[:-1], request.token_s[1:])
    ]
    if not itl:
        return []
    who = "shared by the batch's requests (lock step)" if shared else "per request"
    metrics = [Metric("itl", S, itl, work=1.0, work_unit=TOKEN,
                      note=f"inter-token latency, one sample per token gap, {who}; {info.clock}")]
    if shared:  # a lock-step gap is one decode step of the whole batch
        mean_bytes = float(np.mean([decode_bytes_per_step(info.shape, info.dtype, result) for result in results]))
        weights = info.shape.decode_weight_bytes(info.dtype)
        metrics.append(Metric(
            "decode_step", S, itl, work=float(info.batch), work_unit=TOKEN,
            note=(f"one decode step of the whole batch; work = batch tokens; reads ~{mean_bytes / 1e9:.4g} GB per step "
                  f"({weights / 1e9:.4g} GB weights + KV at the mean context)"),
        ))
    return metrics


def _generation_metrics(results: list[GenerationResult], info: ScenarioInfo) -> list[Metric]:
    spans = [Sample(result.span_s, result.start_ns, result.end_ns) for result in results]
    metrics = [Metric("generation", S, spans, work=float(info.batch * info.output_len), work_unit=TOKEN,
                      note="one batch from first request start to last token; rate = output tokens/s of the scenario")]
    ceilings = info.ceilings
    if ceilings.peak_tflops:
        metrics.append(Metric("prefill_roofline_fraction", "1", [_prefill_fraction(result, info) for result in results],
                              note=f"prefill FLOP / TTFT / {ceilings.peak_tflops:g} TFLOP/s ({ceilings.peak_source})"))
    if ceilings.mem_bw_gbs and info.output_len > 1 and results[0].shared_timeline:
        metrics.append(Metric("decode_roofline_fraction", "1", [_decode_fraction(result, info) for result in results],
                              note=f"bytes per decode step / TPOT / {ceilings.mem_bw_gbs:g} GB/s "
                                   f"({ceilings.mem_bw_source})"))
    return metrics


def _prefill_fraction(result: GenerationResult, info: ScenarioInfo) -> Sample:
    flop = sum(info.shape.prefill_flop(request.prompt_len) for request in result.requests)
    first = result.requests[0]
    achieved = flop / max(request.ttft for request in result.requests)
    return Sample(achieved / (info.ceilings.peak_tflops * 1e12), first.start_ns, first.wall_ns(first.ttft))


def _decode_fraction(result: GenerationResult, info: ScenarioInfo) -> Sample:
    request = result.requests[0]
    achieved = decode_bytes_per_step(info.shape, info.dtype, result) / request.tpot
    fraction = achieved / (info.ceilings.mem_bw_gbs * 1e9)
    return Sample(fraction, request.wall_ns(request.ttft), request.wall_ns(request.e2e))


def _kv_metric(info: ScenarioInfo, start_ns: int, end_ns: int) -> Metric:
    needed = info.batch * (info.max_input_len + info.output_len) * info.shape.kv_bytes_per_token(info.dtype)
    if info.kv_cache_allocated_bytes is not None:
        value, note = info.kv_cache_allocated_bytes, f"cache allocated (needed at full context: {needed} B)"
        note += f"; {info.kv_cache_note}" if info.kv_cache_note else ""
    else:
        value, note = needed, "K/V bytes the batch holds at full context (longest prompt + all output tokens)"
    return Metric("kv_cache_bytes", "B", [Sample(float(value), start_ns, end_ns)], note=note)
