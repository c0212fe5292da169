"""LLM inference: TTFT, TPOT, inter-token latency and throughput of a Llama-shaped decoder.

Backends (``backend``): ``reference`` (plain PyTorch, static KV cache; ``mode: graph`` replays the
decode step from a CUDA graph, ``mode: eager`` runs it op by op), ``transformers`` (``generate``,
eager) and ``tensorrt-llm`` (``LLM`` API with or without CUDA graphs, or ``mode: bench`` for
``trtllm-bench``). Shapes (``shape``): ``tiny`` (CPU tests) and Llama 3.2 1B / 3B, 3.1 8B dimensions
with seeded random weights. A scenario is ``batch`` requests of ``input_len`` prompt tokens (fixed,
or drawn uniform / normal with ``input_spread``) generating exactly ``output_len`` tokens each (EOS
ignored). The seed's scenarios T1-T6 are ``params/llm_inference/seed_t1.yaml`` .. ``seed_t6.yaml``.

Params files list every case key: the runner names a case from the file's values before the
notebook validates them, and telemetry is joined to results by that name. See docs/llm.md.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from .. import ceilings
from ..device import Device
from ..llm import SHAPES, BackendConfig, InputSpec, make_backend, run_scenario
from ..llm.base import Kernels
from ..llm.metrics import Ceilings, ScenarioInfo, scenario_metrics
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
    # the reference decode step's kernels: auto = fused Triton kernels for a CUDA graph at batch <= 8
    # when Triton is importable, else PyTorch ops; triton / torch force one (see benchlib/llm/kernels.py)
    kernels: Kernels = "auto"
    model_path: str | None = None  # tensorrt-llm: a Hugging Face checkpoint directory instead of random weights
    mem_bw_gbs: float | None = Field(None, gt=0)  # a measured bandwidth for the decode roofline
    peak_tflops: float | None = Field(None, gt=0)  # a stated peak for the prefill roofline
    # this workload"s timing defaults (its notebook"s parameters cell is checked against the model)
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
    gpu = device.name if device.is_cuda else ""
    bandwidth = params.mem_bw_gbs or ceilings.peak_mem_bw_gbs(gpu)
    peak = params.peak_tflops or ceilings.peak_tflops(gpu, params.dtype)
    return Ceilings(
        mem_bw_gbs=bandwidth, mem_bw_source="mem_bw_gbs parameter" if params.mem_bw_gbs else f"{gpu} datasheet",
        peak_tflops=peak, peak_source="peak_tflops parameter" if params.peak_tflops else f"{gpu} datasheet, dense",
    )


def run(params: LlmParams, device: Device) -> list[Metric]:
    import torch

    shape = _shape(params)
    spec = params.input_spec(shape.vocab)
    config = BackendConfig(params.backend, shape, params.dtype, params.mode, params.batch, spec.max_input_len,
                           params.output_len, params.seed, params.compile, params.model_path, params.kernels)
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
    finally:
        backend.close()
    info = ScenarioInfo(
        shape, params.dtype, params.batch, spec.max_input_len, params.output_len, backend.clock, stop_reason,
        _ceilings(params, device), kv_cache_allocated_bytes=backend.kv_cache_bytes,
        peak_memory_bytes=torch.cuda.max_memory_allocated(device.torch_device)
        if device.is_cuda and params.backend != "tensorrt-llm" else None,
    )
    return scenario_metrics(results, info)


WORKLOAD = Workload(
    name="llm_inference",
    description="Llama-shaped decoder inference: TTFT, TPOT, ITL, tokens/s and % of the roofline",
    params_model=LlmParams,
    case_keys=("backend", "shape", "dtype", "mode", "batch", "input_len", "output_len"),
    run=run,
)
