"""The KV cache sized as serving engines size it (a share of the free memory after the weights), on the
CPU with the reference backend, and the TensorRT-LLM backend's report of its real cache (the
``tensorrt_llm`` module replaced at its boundary: it cannot be installed here)."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from benchlib import run_benchmark
from benchlib.device import Device
from benchlib.errors import ParamsError
from benchlib.hostmem import HostPaths
from benchlib.llm import SHAPES, BackendConfig, InputSpec
from benchlib.llm.model import ReferenceModel, Session, kv_pool_tokens
from benchlib.llm.reference import ReferenceBackend, kv_pool_size
from benchlib.llm.trtllm import (TrtLlmBackend, bench_command, kv_capacity_from_dict, kv_capacity_from_stats,
                                 llm_kwargs)
from benchlib.params import validate
from benchlib.workloads.llm_inference import LlmParams

CPU = Device("cpu", "cpu")
TINY = SHAPES["tiny"]
GIB = 2**30


def config(**overrides) -> BackendConfig:
    values = dict(backend="reference", shape=TINY, dtype="fp32", mode="eager", batch=2, max_input_len=12,
                  output_len=6, seed=7)
    return BackendConfig(**{**values, **overrides})


def _host(tmp_path: Path, available_gib: float) -> HostPaths:
    proc = tmp_path / f"proc-{available_gib}"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: {128 * 2**20} kB\nMemAvailable: {int(available_gib * 2**20)} kB\n")
    (proc / "self" / "cgroup").write_text("0::/\n")
    return HostPaths(proc=proc, cgroup=tmp_path / "no-cgroup")


def test_the_pool_holds_a_share_of_the_free_memory_in_tokens() -> None:
    per_token = SHAPES["llama-1b"].kv_bytes_per_token("bf16")  # 32 KiB
    assert kv_pool_tokens(80 * GIB, 0.9, SHAPES["llama-1b"], "bf16") == int(0.9 * 80 * GIB) // per_token
    assert kv_pool_tokens(80 * GIB, 0.9, SHAPES["llama-1b"], "bf16", max_tokens=4096) == 4096
    assert kv_pool_tokens(0, 0.9, SHAPES["llama-1b"], "bf16") == 0


def test_an_arm_with_less_free_memory_gets_a_smaller_cache(tmp_path: Path) -> None:
    sizing = config(kv_cache="free_memory", kv_cache_free_fraction=0.001)
    native, _ = kv_pool_size(sizing, CPU, _host(tmp_path, 100))
    container, note = kv_pool_size(sizing, CPU, _host(tmp_path, 60))
    per_token = TINY.kv_bytes_per_token("fp32")
    assert native == int(0.001 * 100 * GIB) // per_token and container == int(0.001 * 60 * GIB) // per_token
    assert container / native == pytest.approx(0.6, rel=1e-4)
    assert note.startswith("free_memory: 0.001 x 60.00 GiB host memory available after the weights (MemAvailable")
    assert kv_pool_size(config(), CPU) == (None, "static: exactly what the batch needs (batch x longest request)")


def test_a_pooled_cache_decodes_exactly_like_the_static_one() -> None:
    model = ReferenceModel(TINY, "fp32", "cpu", seed=3)
    prompts = InputSpec(2, 12, 6, TINY.vocab, seed=3).batch_at(0)
    static = ReferenceBackend(config(), CPU, model)
    pooled = ReferenceBackend(config(kv_cache="free_memory", kv_cache_free_fraction=0.01, kv_cache_max_tokens=5000),
                              CPU, model)
    assert static.kv_cache_tokens == 2 * 64 and pooled.kv_cache_tokens == 5000
    assert pooled.kv_cache_bytes == 5000 * TINY.kv_bytes_per_token("fp32")
    assert "capped at kv_cache_max_tokens=5000" in pooled.kv_cache_note
    ids = [np.stack([r.output_ids for r in backend.generate(prompts).requests]) for backend in (static, pooled)]
    assert np.array_equal(*ids)


def test_a_pool_smaller_than_the_batch_needs_is_a_clear_error() -> None:
    model = ReferenceModel(TINY, "fp32", "cpu", seed=3)
    with pytest.raises(RuntimeError, match=r"holds 100 tokens, fewer than this batch needs \(2 x 64 = 128\)"):
        Session(model, batch=2, max_tokens=20, max_new_tokens=4, kv_pool_tokens=100)


def test_the_workload_records_the_cache_tokens_it_got() -> None:
    result = run_benchmark("llm_inference", shape="tiny", dtype="fp32", batch=2, input_len=8, output_len=4,
                           warmup=1, fixed_samples=2, telemetry_hz=0, kv_cache="free_memory",
                           kv_cache_free_fraction=0.5, kv_cache_max_tokens=3000)
    frame = result.results.set_index("metric")
    assert frame.loc["kv_cache_tokens", "value"] == 3000 and frame.loc["kv_cache_tokens", "unit"] == "token"
    assert frame.loc["kv_cache_bytes", "value"] == 3000 * TINY.kv_bytes_per_token("fp32")
    assert "free_memory: 0.5 x" in frame.loc["kv_cache_tokens", "note"]
    assert frame.loc["process_peak_rss", "value"] > 0


def test_free_memory_sizing_is_refused_for_transformers() -> None:
    with pytest.raises(ParamsError, match="'kv_cache'"):
        validate(LlmParams, {"backend": "transformers", "kv_cache": "free_memory"}, "params/llm_inference/x.yaml")


# --------------------------------------------------------------------------------- TensorRT-LLM

def test_trtllm_arguments_state_the_fraction_and_cap() -> None:
    sized = llm_kwargs(config(backend="tensorrt-llm", mode="graph", kv_cache="free_memory",
                              kv_cache_free_fraction=0.5, kv_cache_max_tokens=4096), "/ckpt")
    assert sized["kv_cache_config"] == {"free_gpu_memory_fraction": 0.5, "max_tokens": 4096}
    default = llm_kwargs(config(backend="tensorrt-llm", mode="graph"), "/ckpt", iteration_stats=True)
    assert "kv_cache_config" not in default and default["enable_iter_perf_stats"] is True
    command = bench_command("/ckpt", "/d.jsonl", config(backend="tensorrt-llm", mode="bench", kv_cache="free_memory",
                                                        kv_cache_free_fraction=0.6), 4, 1)
    assert command[-2:] == ["--kv_cache_free_gpu_mem_fraction", "0.6"]


def test_trtllm_capacity_from_its_api_and_from_iteration_statistics() -> None:
    # the shapes TensorRT-LLM's own tests give for LLM.get_kv_cache_capacity() and iteration stats
    capacity = kv_capacity_from_dict({"maxNumBlocks": 123, "tokensPerBlock": 64, "maxNumTokens": 7872}, "api")
    assert (capacity.blocks, capacity.tokens_per_block, capacity.tokens) == (123, 64, 7872)
    assert kv_capacity_from_dict({}, "api") is None and kv_capacity_from_dict(None, "api") is None
    stats = [json.dumps({"iter": 0, "cpuMemUsage": 0, "gpuMemUsage": 1}),
             json.dumps({"iter": 1, "kvCacheStats": {"maxNumBlocks": 500, "freeNumBlocks": 490, "usedNumBlocks": 10,
                                                     "tokensPerBlock": 32}})]
    found = kv_capacity_from_stats(stats)
    assert (found.tokens, found.source) == (16000, "LLM.get_stats() kvCacheStats")
    assert kv_capacity_from_stats([{"kvCacheStats": {"maxNumBlocks": 2, "tokensPerBlock": 16}}]).tokens == 32
    assert kv_capacity_from_stats([]) is None


class _Output:
    def __init__(self, ids: list[int]) -> None:
        self.outputs = [types.SimpleNamespace(token_ids=ids)]


def _fake_tensorrt_llm(with_capacity_api: bool) -> types.ModuleType:
    """A stand-in for the ``tensorrt_llm`` module: LLM(**kwargs), streaming generate_async, the capacity API."""
    module = types.ModuleType("tensorrt_llm")
    module.built = []

    class SamplingParams:
        def __init__(self, **kwargs) -> None:
            self.max_tokens = kwargs["max_tokens"]

    class LLM:
        def __init__(self, **kwargs) -> None:
            module.built.append(kwargs)
            self.stats_calls = 0

        async def _stream(self, prompt: list[int], sampling: SamplingParams):
            for n in range(1, sampling.max_tokens + 1):
                yield _Output(list(range(n)))

        def generate_async(self, prompt: list[int], sampling: SamplingParams, streaming: bool = False):
            return self._stream(prompt, sampling)

        def get_stats(self, timeout: float = 2) -> list[str]:
            self.stats_calls += 1
            return [json.dumps({"iter": 0, "kvCacheStats": {"maxNumBlocks": 300, "tokensPerBlock": 32}})]

        def shutdown(self) -> None:
            return None

    if with_capacity_api:
        LLM.get_kv_cache_capacity = lambda self: {"maxNumBlocks": 1000, "tokensPerBlock": 64, "maxNumTokens": 64000}
    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module


@pytest.mark.parametrize("with_capacity_api", [True, False])
def test_the_trtllm_backend_reports_the_cache_it_got(monkeypatch, tmp_path: Path, with_capacity_api: bool) -> None:
    fake = _fake_tensorrt_llm(with_capacity_api)
    monkeypatch.setitem(sys.modules, "tensorrt_llm", fake)
    gpu = Device("cuda:0", "NVIDIA H100 80GB HBM3")  # never touched: the stand-in LLM runs nothing
    backend = TrtLlmBackend(config(backend="tensorrt-llm", mode="graph", kv_cache="free_memory",
                                   kv_cache_free_fraction=0.8, model_path=str(tmp_path)), gpu)
    assert fake.built[0]["kv_cache_config"] == {"free_gpu_memory_fraction": 0.8}
    assert ("enable_iter_perf_stats" in fake.built[0]) is not with_capacity_api
    prompts = InputSpec(2, 12, 6, TINY.vocab, seed=1).batch_at(0)
    for _ in range(2):
        result = backend.generate(prompts)
    assert [len(r.output_ids) for r in result.requests] == [6, 6]
    tokens = 64000 if with_capacity_api else 300 * 32
    assert backend.kv_cache_tokens == tokens and backend.kv_cache_bytes == tokens * TINY.kv_bytes_per_token("fp32")
    assert backend.kv_cache_note.startswith("free_gpu_memory_fraction 0.8; ")
    if not with_capacity_api:
        assert backend.llm.stats_calls == 1  # read once, after the first generation
    backend.close()
