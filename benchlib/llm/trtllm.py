"""The TensorRT-LLM backend, written against the ``tensorrt_llm.LLM`` API and ``trtllm-bench``.

Two ways to run, both from a Hugging Face checkpoint directory (``model_path``, or the named shape
with random weights saved by :func:`benchlib.llm.hf.save_random_checkpoint` into a temporary
directory):

- ``mode: graph`` / ``eager``: in process, ``LLM(model=..., cuda_graph_config=...)`` (CUDA graphs for
  the scenario's batch size, or none), every request of a batch submitted at once through
  ``generate_async(token_ids, SamplingParams(max_tokens=n, ignore_eos=True, top_k=1,
  detokenize=False), streaming=True)``; each streamed chunk is stamped with ``perf_counter_ns`` when
  the event loop receives it, so requests keep their own timelines (in-flight batching).
- ``mode: bench``: ``trtllm-bench --model DIR --model_path DIR throughput --dataset FILE ...
  --streaming`` on a synthetic dataset (JSON lines ``{"task_id", "input_ids", "output_tokens"}``);
  its printed report is parsed (:func:`parse_bench_report`). Those figures are aggregates that
  trtllm-bench computed, recorded as such, not samples.

The KV cache: TensorRT-LLM always sizes its cache by free memory, ``free_gpu_memory_fraction`` (0.9
by default) of what is free after the weights and its activation profiling. ``kv_cache: free_memory``
states that fraction (``kv_cache_free_fraction``) and a cap (``kv_cache_max_tokens`` ->
``KvCacheConfig.max_tokens``); ``static`` leaves TensorRT-LLM's own default. Either way the backend
reports the cache it really got: ``LLM.get_kv_cache_capacity()`` (``maxNumBlocks``, ``tokensPerBlock``,
``maxNumTokens``) where the installed version has it, else the ``kvCacheStats`` of the first iteration
statistics (``LLM.get_stats``, with ``enable_iter_perf_stats`` turned on for that). Its bytes are those
tokens times the model dtype's K/V bytes per token (``kv_cache_dtype`` is left at ``auto``).
``trtllm-bench`` gets ``--kv_cache_free_gpu_mem_fraction``; its cache size is not reported.

``tensorrt_llm`` is imported only when the backend is built; without it the case is skipped with one
sentence. Everything that does not need the library (dataset, arguments, command line, parsers) is a
plain function, unit-tested without it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..device import Device
from ..errors import SkipCase
from ..metricspec import time_metric
from ..timer import Sample
from ..workloads import Metric
from .base import Backend, BackendConfig, GenerationResult, RequestResult
from .inputs import Batch, InputSpec

NOT_INSTALLED = (
    "TensorRT-LLM is not installed in this environment; use an NGC TensorRT-LLM container "
    "(nvcr.io/nvidia/tensorrt-llm/release) or backend: reference"
)
TRT_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
BENCH_TIMEOUT_S = 3600
#: trtllm-bench breakdown groups -> our metric prefixes; statistics kept from each group.
BENCH_GROUPS = {"Latency": "bench_e2e", "TTFT": "bench_ttft", "TPOT": "bench_tpot"}
BENCH_STATS = ("AVERAGE", "P50", "P90", "P95", "P99")
#: What each metric of :func:`bench_metrics` is: trtllm-bench's aggregates are times, lower is better.
BENCH_METRIC_SPECS = (
    time_metric("bench_total", "trtllm-bench total latency"),
    *(time_metric(f"{prefix}_{stat.lower()}", f"trtllm-bench {group} {stat}")
      for group, prefix in BENCH_GROUPS.items() for stat in BENCH_STATS),
)


def import_tensorrt_llm() -> Any:
    """``tensorrt_llm``, or a skipped case saying how to get it."""
    try:
        import tensorrt_llm
    except ImportError:
        raise SkipCase(f"skipped: {NOT_INSTALLED}") from None
    return tensorrt_llm


def llm_kwargs(config: BackendConfig, checkpoint: str | Path, iteration_stats: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``tensorrt_llm.LLM`` for one scenario (PyTorch backend, LLM API 1.x).

    ``iteration_stats``: turn on the per-iteration statistics, for versions whose ``LLM`` lacks
    ``get_kv_cache_capacity`` (the cache size is then read from them).
    """
    kwargs = {
        "model": str(checkpoint),
        "dtype": TRT_DTYPES[config.dtype],
        "max_batch_size": config.batch,
        "max_seq_len": config.max_tokens,
        "max_num_tokens": config.batch * config.max_input_len,  # the whole batch's prefill in one step
        "skip_tokenizer_init": True,
        "cuda_graph_config": {"batch_sizes": [config.batch]} if config.mode == "graph" else None,
    }
    kv_cache = kv_cache_kwargs(config)
    if kv_cache:
        kwargs["kv_cache_config"] = kv_cache
    if iteration_stats:
        kwargs["enable_iter_perf_stats"] = True
    return kwargs


def kv_cache_kwargs(config: BackendConfig) -> dict[str, Any]:
    """``KvCacheConfig`` fields: the stated fraction and cap with ``kv_cache: free_memory``, none
    (TensorRT-LLM's own 0.9 of free memory) with ``static``."""
    if config.kv_cache != "free_memory":
        return {}
    fields: dict[str, Any] = {"free_gpu_memory_fraction": config.kv_cache_free_fraction}
    if config.kv_cache_max_tokens is not None:
        fields["max_tokens"] = config.kv_cache_max_tokens
    return fields


@dataclass(frozen=True)
class KvCapacity:
    """The KV cache TensorRT-LLM allocated: blocks, tokens per block, tokens, and where that was read."""

    blocks: int
    tokens_per_block: int
    tokens: int
    source: str


def kv_capacity_from_dict(capacity: dict[str, Any] | None, source: str) -> KvCapacity | None:
    """``LLM.get_kv_cache_capacity()``'s answer (``maxNumBlocks``, ``tokensPerBlock``, ``maxNumTokens``),
    or an iteration's ``kvCacheStats``; None when it holds no capacity."""
    blocks, per_block = int((capacity or {}).get("maxNumBlocks") or 0), int((capacity or {}).get("tokensPerBlock") or 0)
    if blocks <= 0 or per_block <= 0:
        return None
    return KvCapacity(blocks, per_block, int((capacity or {}).get("maxNumTokens") or blocks * per_block), source)


def kv_capacity_from_stats(stats: Iterable[Any]) -> KvCapacity | None:
    """The KV cache capacity in ``LLM.get_stats()``'s iteration statistics (JSON strings or dicts, each
    with ``kvCacheStats``); the first iteration that has one."""
    for entry in stats:
        record = json.loads(entry) if isinstance(entry, str) else entry
        if isinstance(record, (tuple, list)) and record:  # (iteration stats, request stats) in some versions
            record = json.loads(record[0]) if isinstance(record[0], str) else record[0]
        found = kv_capacity_from_dict(record.get("kvCacheStats") if isinstance(record, dict) else None,
                                      "LLM.get_stats() kvCacheStats")
        if found:
            return found
    return None


def sampling_kwargs(output_len: int) -> dict[str, Any]:
    """``SamplingParams`` for greedy decoding of exactly ``output_len`` tokens, ids only."""
    return {"max_tokens": output_len, "ignore_eos": True, "top_k": 1, "detokenize": False}


def dataset_lines(spec: InputSpec, generations: int) -> Iterable[str]:
    """The trtllm-bench dataset (one JSON object per line) of ``generations`` batches of ``spec``."""
    task = 0
    for index in range(generations):
        batch = spec.batch_at(index)
        for prompt in batch.prompts:
            yield json.dumps({"task_id": task, "input_ids": prompt.tolist(), "output_tokens": batch.output_len})
            task += 1


def bench_command(checkpoint: str | Path, dataset: str | Path, config: BackendConfig, num_requests: int,
                  warmup_requests: int) -> list[str]:
    """The ``trtllm-bench throughput`` command for one scenario: ``batch`` requests in flight."""
    fraction = (["--kv_cache_free_gpu_mem_fraction", f"{config.kv_cache_free_fraction:g}"]
                if config.kv_cache == "free_memory" else [])
    return [
        "trtllm-bench", "--model", str(checkpoint), "--model_path", str(checkpoint), "throughput",
        "--dataset", str(dataset), "--backend", "pytorch",
        "--max_batch_size", str(config.batch), "--max_seq_len", str(config.max_tokens),
        "--concurrency", str(config.batch), "--num_requests", str(num_requests),
        "--warmup", str(warmup_requests), "--eos_id", "-1", "--streaming", *fraction,
    ]


@dataclass(frozen=True)
class BenchReport:
    """The figures of a trtllm-bench report, keyed as printed, values in the printed units."""

    figures: dict[str, float] = field(default_factory=dict)  # e.g. "Total Latency (ms)" -> 13525.6862
    breakdowns: dict[str, dict[str, float]] = field(default_factory=dict)  # "TTFT" -> {"P50": ...}


_NUMBER = r"(?P<value>[-+]?\d[\d.]*(?:[eE][-+]?\d+)?)"
_FIGURE = re.compile(rf"^(?P<key>[A-Za-z][^:]*?\S)\s*:\s+{_NUMBER}\s*$")  # "Total Latency (ms):   13525.6862"
_BREAKDOWN = re.compile(rf"^\[(?P<group>[^\]]+)\]\s+(?P<stat>[A-Z0-9]+)\s*:\s*{_NUMBER}\s*$")  # "[TTFT] P50    : 159.78"


def parse_bench_report(text: str) -> BenchReport:
    """Parse the report trtllm-bench prints (from "PERFORMANCE OVERVIEW" on, log prefixes allowed)."""
    start = text.find("PERFORMANCE OVERVIEW")
    if start < 0:
        raise RuntimeError("trtllm-bench printed no PERFORMANCE OVERVIEW (it prints nothing when it ran out of "
                           "memory; lower the batch or kv_cache_free_gpu_mem_fraction)")
    report = BenchReport()
    for line in text[start:].splitlines():
        line = line.strip()
        if breakdown := _BREAKDOWN.match(line):
            report.breakdowns.setdefault(breakdown["group"], {})[breakdown["stat"]] = float(breakdown["value"])
        elif figure := _FIGURE.match(line):
            report.figures[figure["key"]] = float(figure["value"])
    if "Total Latency (ms)" not in report.figures:
        raise RuntimeError("trtllm-bench report has no 'Total Latency (ms)'; its format changed")
    return report


def bench_metrics(report: BenchReport, output_tokens: int, start_ns: int, end_ns: int) -> list[Metric]:
    """Metrics of a trtllm-bench run: the total time (work = output tokens) and its breakdowns."""
    note = "aggregate reported by trtllm-bench (not a sample of ours)"
    span = Sample(report.figures["Total Latency (ms)"] / 1e3, start_ns, end_ns)
    metrics = [Metric("bench_total", "s", [span], work=float(output_tokens), work_unit="token",
                      note=f"trtllm-bench Total Latency; work = output tokens of all requests; {note}")]
    for group, prefix in BENCH_GROUPS.items():
        for stat in BENCH_STATS:
            value = report.breakdowns.get(group, {}).get(stat)
            if value is not None:
                metrics.append(Metric(f"{prefix}_{stat.lower()}", "s", [Sample(value / 1e3, start_ns, end_ns)],
                                      note=f"trtllm-bench [{group}] {stat}; {note}"))
    return metrics


def _random_checkpoint(config: BackendConfig, device: Device, directory: Path) -> Path:
    from .hf import save_random_checkpoint

    return save_random_checkpoint(config.shape, config.dtype, device.torch_device, config.seed, directory)


class _Checkpoint:
    """The user's checkpoint, or the random shape saved into a temporary directory removed on close."""

    def __init__(self, config: BackendConfig, device: Device):
        self._tmp: str | None = None
        if config.model_path:
            self.path = Path(config.model_path)
            return
        self._tmp = tempfile.mkdtemp(prefix="benchlib-llm-")
        try:
            self.path = _random_checkpoint(config, device, Path(self._tmp))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _require_gpu(device: Device) -> None:
    if not device.is_cuda:
        raise SkipCase("skipped: TensorRT-LLM runs on NVIDIA GPUs only")


class TrtLlmBackend(Backend):
    """In-process ``tensorrt_llm.LLM``; each request streams on its own timeline."""

    def __init__(self, config: BackendConfig, device: Device):
        trtllm = import_tensorrt_llm()
        _require_gpu(device)
        self.output_len = config.output_len
        self.config = config
        self.sampling = trtllm.SamplingParams(**sampling_kwargs(config.output_len))
        self.checkpoint = _Checkpoint(config, device)
        self._capacity_api = hasattr(trtllm.LLM, "get_kv_cache_capacity")  # newer LLM API versions
        try:
            self.llm = trtllm.LLM(**llm_kwargs(config, self.checkpoint.path, iteration_stats=not self._capacity_api))
        except BaseException:
            self.checkpoint.close()
            raise
        graphs = "CUDA graphs" if config.mode == "graph" else "no CUDA graphs"
        self.clock = f"perf_counter when each streamed chunk reaches the event loop (LLM API, {graphs})"
        self.kv_cache_note = "not read yet"
        self._capacity_pending = not self._capacity_api
        if self._capacity_api:
            self._record_capacity(kv_capacity_from_dict(self.llm.get_kv_cache_capacity(), "LLM.get_kv_cache_capacity()"))

    def _record_capacity(self, capacity: KvCapacity | None) -> None:
        """The cache TensorRT-LLM allocated, as tokens and bytes (tokens x the dtype's K/V bytes per token)."""
        sizing = (f"free_gpu_memory_fraction {self.config.kv_cache_free_fraction:g}" if self.config.kv_cache == "free_memory"
                  else "TensorRT-LLM's default free_gpu_memory_fraction")
        if capacity is None:
            self.kv_cache_note = f"{sizing}; TensorRT-LLM did not report its KV cache capacity"
            return
        self.kv_cache_tokens = capacity.tokens
        self.kv_cache_bytes = capacity.tokens * self.config.shape.kv_bytes_per_token(self.config.dtype)
        self.kv_cache_note = (f"{sizing}; {capacity.blocks} blocks x {capacity.tokens_per_block} tokens from "
                              f"{capacity.source}; bytes = tokens x K/V bytes per token of {self.config.dtype}")

    def generate(self, batch: Batch) -> GenerationResult:
        requests = _run_coroutine(self._stream_all(batch))
        if self._capacity_pending:  # once, after the first generation: its iteration statistics
            self._capacity_pending = False
            self._record_capacity(kv_capacity_from_stats(self.llm.get_stats(timeout=2)))
        return GenerationResult(tuple(requests), shared_timeline=False)

    async def _stream_all(self, batch: Batch) -> list[RequestResult]:
        return list(await asyncio.gather(*(self._stream(prompt) for prompt in batch.prompts)))

    async def _stream(self, prompt: np.ndarray) -> RequestResult:
        start_ns, begin = time.time_ns(), time.perf_counter_ns()
        stamps: list[int] = []
        token_ids: list[int] = []
        async for output in self.llm.generate_async(prompt.tolist(), self.sampling, streaming=True):
            now = time.perf_counter_ns()
            token_ids = list(output.outputs[0].token_ids)
            stamps.extend([now] * (len(token_ids) - len(stamps)))  # a chunk of k tokens shares one stamp
        offsets = (np.array(stamps, dtype=np.int64) - begin) / 1e9
        return RequestResult(len(prompt), np.array(token_ids, dtype=np.int64), offsets, start_ns)

    def close(self) -> None:
        try:
            self.llm.shutdown()
        finally:
            self.checkpoint.close()


def _run_coroutine(coroutine: Any) -> Any:
    """Run ``coroutine`` on a fresh event loop in a worker thread (a notebook's loop is already running)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def run_bench(config: BackendConfig, spec: InputSpec, generations: int, warmup_generations: int,
              device: Device) -> list[Metric]:
    """Run ``trtllm-bench throughput`` on ``generations`` batches of ``spec`` and return its figures."""
    import_tensorrt_llm()
    _require_gpu(device)
    if shutil.which("trtllm-bench") is None:
        raise SkipCase(f"skipped: trtllm-bench is not on PATH; {NOT_INSTALLED}")
    checkpoint = _Checkpoint(config, device)
    try:
        with tempfile.TemporaryDirectory(prefix="benchlib-trtllm-bench-") as workdir:
            dataset = Path(workdir) / "dataset.jsonl"
            dataset.write_text("\n".join(dataset_lines(spec, generations)) + "\n")
            command = bench_command(checkpoint.path, dataset, config, generations * config.batch,
                                    warmup_generations * config.batch)
            start_ns = time.time_ns()
            done = subprocess.run(command, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, cwd=workdir)
            end_ns = time.time_ns()
    finally:
        checkpoint.close()
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"trtllm-bench exited with {done.returncode}: {tail[0][:300]}")
    report = parse_bench_report(done.stdout + "\n" + done.stderr)
    return bench_metrics(report, generations * config.batch * config.output_len, start_ns, end_ns)
