"""LLM inference: TTFT, TPOT, inter-token latency and throughput of a Llama-shaped decoder.

Backends (``backend``): ``reference`` (plain PyTorch, static KV cache; ``mode: graph`` replays the
decode step from a CUDA graph, ``mode: eager`` runs it op by op), ``transformers`` (``generate``,
eager) and ``tensorrt-llm`` (``LLM`` API with or without CUDA graphs, or ``mode: bench`` for
``trtllm-bench``). Shapes (``shape``): ``tiny`` (CPU tests) and Llama 3.2 1B / 3B, 3.1 8B dimensions
with seeded random weights. A scenario is ``batch`` requests of ``input_len`` prompt tokens (fixed,
or drawn uniform / normal with ``input_spread``) generating exactly ``output_len`` tokens each (EOS
ignored). The seed's scenarios T1-T6 are ``params/llm_inference/seed_t1.yaml`` .. ``seed_t6.yaml``.

The KV cache (``kv_cache``): ``static`` holds exactly what the scenario needs, the same in every arm;
``free_memory`` sizes it as the serving engines do, a share (``kv_cache_free_fraction``, TensorRT-LLM's
``free_gpu_memory_fraction``) of the memory free after the weights, so an arm that leaves less memory
gets a smaller cache, recorded as ``kv_cache_tokens``. Memory is also recorded per scenario:
``process_peak_rss`` (the kernel's high-water mark of this process) and on a GPU ``cuda_free_at_end``.

Params files list every case key: the runner names a case from the file's values before the
notebook validates them, and telemetry is joined to results by that name. See docs/llm.md.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from .. import ceilings
from ..device import Device
from ..diagnosis.classes import GPU_KERNELS, HOST, Sensitivity
from ..llm import SHAPES, BackendConfig, InputSpec, make_backend, run_scenario
from ..llm.base import Kernels, KvCacheMode
from ..llm.metrics import METRIC_SPECS, Ceilings, ScenarioInfo, scenario_metrics
from ..llm.trtllm import BENCH_METRIC_SPECS
from ..llm.model import ModelShape, shape_from_hf_config
from ..params import CommonParams, common_default
from . import Metric, Workload

MODES_BY_BACKEND = {"reference": ("graph", "eager"), "transformers": ("eager",),
                    "tensorrt-llm": ("graph", "eager", "bench")}
MAX_TOKENS = 131072  # Llama 3's context length


class LlmParams(CommonParams):
    backend: Literal["reference", "transformers", "tensorrt-llm"] = "reference"
    shape: Literal["tiny", "llama-1b", "llama-3b", "llama-8b"] = "tiny"
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    mode: Literal["graph", "eager", "bench"] = "eager"
    batch: int = Field(1, gt=0, le=4096)
    input_len: int = Field(32, gt=0, le=MAX_TOKENS)
    output_len: int = Field(16, gt=0, le=MAX_TOKENS)
    input_dist: Literal["fixed", "uniform", "normal"] = "fixed"
    input_spread: float = Field(0.25, ge=0, lt=1)
    compile: bool = False  # torch.compile the reference decode step
    # the reference decode step's kernels: auto = fused Triton kernels for a CUDA graph where they compile
    # and work on this GPU, at batch 1 and, up to 64, where the tile search measured them faster than
    # cuBLAS; else PyTorch ops; triton / torch force one (docs/llm.md, benchlib/llm/tiles.py)
    kernels: Kernels = "auto"
    model_path: str | None = None  # tensorrt-llm: a Hugging Face checkpoint directory instead of random weights
    # static: the cache the scenario needs; free_memory: kv_cache_free_fraction of the memory free after
    # the weights, as TensorRT-LLM sizes it (kv_cache_tokens records what it got); see docs/llm.md
    kv_cache: KvCacheMode = "static"
    kv_cache_free_fraction: float = Field(0.9, gt=0, le=1)
    kv_cache_max_tokens: int | None = Field(None, gt=0)  # free_memory: at most this many tokens
    mem_bw_gbs: float | None = Field(None, gt=0)  # a measured bandwidth for the decode roofline
    peak_tflops: float | None = Field(None, gt=0)  # a stated peak for the prefill roofline
    # this workload's timing defaults (its notebook's parameters cell is checked against the model)
    warmup: int = common_default("warmup", 2)
    min_samples: int = common_default("min_samples", 5)
    max_samples: int = common_default("max_samples", 50)
    max_time_s: float = common_default("max_time_s", 10.0)
    target_rel_ci: float = common_default("target_rel_ci", 0.02)

    @field_validator("mode")
    @classmethod
    def _mode_fits_backend(cls, mode: str, info: ValidationInfo) -> str:
        backend = info.data.get("backend")
        if backend and mode not in MODES_BY_BACKEND[backend]:
            raise ValueError(f"backend {backend} runs mode {' or '.join(MODES_BY_BACKEND[backend])}")
        return mode

    @field_validator("compile")
    @classmethod
    def _compile_is_reference_only(cls, compile_: bool, info: ValidationInfo) -> bool:
        if compile_ and info.data.get("backend") != "reference":
            raise ValueError("compile applies to the reference backend's decode step only")
        return compile_

    @field_validator("kernels")
    @classmethod
    def _kernels_are_reference_only(cls, kernels: str, info: ValidationInfo) -> str:
        if kernels != "auto" and info.data.get("backend") != "reference":
            raise ValueError("kernels applies to the reference backend's decode step only; leave it at auto")
        if kernels == "triton" and info.data.get("compile"):
            raise ValueError("kernels: triton and compile: true exclude each other; choose one")
        return kernels

    @field_validator("kv_cache")
    @classmethod
    def _kv_cache_sizing_needs_a_backend_that_does_it(cls, kv_cache: str, info: ValidationInfo) -> str:
        if kv_cache == "free_memory" and info.data.get("backend") == "transformers":
            raise ValueError("kv_cache: free_memory sizes the reference and tensorrt-llm caches; transformers "
                             "grows its cache per request: use kv_cache: static")
        return kv_cache

    @field_validator("model_path")
    @classmethod
    def _model_path_is_tensorrt_only(cls, path: str | None, info: ValidationInfo) -> str | None:
        if path is not None and info.data.get("backend") != "tensorrt-llm":
            raise ValueError("model_path is read by the tensorrt-llm backend only; the others use random weights")
        return path

    def input_spec(self, vocab: int) -> InputSpec:
        return InputSpec(self.batch, self.input_len, self.output_len, vocab, self.input_dist, self.input_spread,
                         self.seed)


def _shape(params: LlmParams) -> ModelShape:
    if params.model_path is None:
        return SHAPES[params.shape]
    from ..llm.hf import checkpoint_config

    return shape_from_hf_config(checkpoint_config(params.model_path), name=params.model_path)


def _ceilings(params: LlmParams, device: Device) -> Ceilings:
    found = ceilings.lookup(device.name if device.is_cuda else "cpu")
    bandwidth = params.mem_bw_gbs or (found.spec.mem_bw_gbs if found.spec else None)
    peak = params.peak_tflops or (found.spec.tflops.get(params.dtype) if found.spec else None)
    return Ceilings(
        mem_bw_gbs=bandwidth, mem_bw_source="mem_bw_gbs parameter" if params.mem_bw_gbs else found.reason,
        peak_tflops=peak, peak_source="peak_tflops parameter" if params.peak_tflops else f"{found.reason}, dense",
    )


def _memory_metrics(device: Device) -> list[Metric]:
    """The process's RSS high-water mark and, on a GPU, cudaMemGetInfo free with the backend still loaded."""
    from .. import hostmem
    from ._support import point_metric

    metrics = []
    peak = hostmem.peak_rss_bytes()
    if peak is not None:
        metrics.append(point_metric("process_peak_rss", "B", peak, note="VmHWM: the kernel's high-water mark of "
                                    "this process's resident memory (its children are in telemetry proc_rss_bytes)"))
    if device.is_cuda:
        import torch

        free, _ = torch.cuda.mem_get_info(device.torch_device)
        metrics.append(point_metric("cuda_free_at_end", "B", free, note="cudaMemGetInfo free after the last "
                                    "generation, model and KV cache still held"))
    return metrics


def run(params: LlmParams, device: Device) -> list[Metric]:
    import torch

    shape = _shape(params)
    spec = params.input_spec(shape.vocab)
    config = BackendConfig(params.backend, shape, params.dtype, params.mode, params.batch, spec.max_input_len,
                           params.output_len, params.seed, params.compile, params.model_path, params.kernels,
                           params.kv_cache, params.kv_cache_free_fraction, params.kv_cache_max_tokens)
    if params.mode == "bench":
        from ..llm.trtllm import run_bench

        timer = params.timer_config()
        return run_bench(config, spec, timer.fixed_samples or timer.min_samples, timer.warmup, device)
    if device.is_cuda:
        torch.cuda.set_device(device.torch_device)  # streams, events and graphs use the current device
        torch.cuda.reset_peak_memory_stats(device.torch_device)
    backend = make_backend(config, device)
    try:
        results, stop_reason = run_scenario(backend, spec, params.timer_config())
        memory = _memory_metrics(device)
    finally:
        backend.close()
    info = ScenarioInfo(
        shape, params.dtype, params.batch, spec.max_input_len, params.output_len, backend.clock, stop_reason,
        _ceilings(params, device), kv_cache_allocated_bytes=backend.kv_cache_bytes,
        kv_cache_tokens=backend.kv_cache_tokens, kv_cache_note=backend.kv_cache_note,
        peak_memory_bytes=torch.cuda.max_memory_allocated(device.torch_device)
        if device.is_cuda and params.backend != "tensorrt-llm" else None,
    )
    return scenario_metrics(results, info) + memory


WORKLOAD = Workload(
    name="llm_inference",
    description="Llama-shaped decoder inference: TTFT, TPOT, ITL, tokens/s and % of the roofline",
    params_model=LlmParams,
    case_keys=("backend", "shape", "dtype", "mode", "batch", "input_len", "output_len"),
    run=run,
    metrics=METRIC_SPECS + BENCH_METRIC_SPECS,
    sensitivity=lambda params, on_gpu: Sensitivity(frozenset({GPU_KERNELS, HOST} if on_gpu else {HOST}))  # kernels and the decode loop,
)
