"""LLM inference: the reference model's math, the backends on the CPU, the TensorRT-LLM helpers, params."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from benchlib import run_benchmark
from benchlib.device import Device
from benchlib.errors import ParamsError, SkipCase
from benchlib.llm import SHAPES, BackendConfig, GenerationResult, InputSpec, RequestResult, make_backend, tpot
from benchlib.llm.metrics import Ceilings, ScenarioInfo, decode_bytes_per_step, scenario_metrics
from benchlib.llm.model import ReferenceModel, Session, rotate_
from benchlib.llm.reference import ReferenceBackend, check_graph_matches_eager
from benchlib.llm.trtllm import (NOT_INSTALLED, bench_command, bench_metrics, dataset_lines, llm_kwargs,
                                 parse_bench_report, sampling_kwargs)
from benchlib.params import read_yaml, validate
from benchlib.workloads import get_workload
from benchlib.workloads.llm_inference import LlmParams

CPU = Device("cpu", "cpu")
TINY = SHAPES["tiny"]


def config(**overrides) -> BackendConfig:
    values = dict(backend="reference", shape=TINY, dtype="fp32", mode="eager", batch=2, max_input_len=12,
                  output_len=6, seed=7)
    return BackendConfig(**{**values, **overrides})


# --- shapes ----------------------------------------------------------------------------------------

def test_named_shapes_have_the_published_parameter_counts():
    assert SHAPES["llama-1b"].params == 1_235_814_400  # Llama 3.2 1B
    assert SHAPES["llama-8b"].params == 8_030_261_248  # Llama 3.1 8B
    assert SHAPES["llama-1b"].head_dim == 64 and SHAPES["llama-3b"].head_dim == 128
    assert set(LlmParams.model_fields["shape"].annotation.__args__) == set(SHAPES)


def test_decode_bytes_count_weights_once_and_kv_at_the_mean_context():
    shape = SHAPES["llama-1b"]
    assert shape.kv_bytes_per_token("bf16") == 2 * 16 * 8 * 64 * 2
    # the tied LM head is read by the head matmul; the embedding lookup reads one row per token
    assert shape.decode_weight_bytes("bf16") == 2 * (shape.params - 2 * 16 * 2048 - 2048 + 2 * 16 * 2048 + 2048)
    result = _synthetic_result(prompts=[100, 300], output_len=11)
    context = (100 + 5.5) + (300 + 5.5)
    assert decode_bytes_per_step(shape, "bf16", result) == shape.decode_weight_bytes("bf16") + context * 32768


# --- the reference model ---------------------------------------------------------------------------

def test_prefill_gives_finite_logits_of_the_right_shape():
    model = ReferenceModel(TINY, "fp32", "cpu", seed=1)
    session = Session(model, batch=2, max_tokens=20, max_new_tokens=4)
    tokens = torch.randint(1, TINY.vocab, (2, 9))
    session.prefill(tokens, torch.tensor([9, 5]))
    assert session.logits.shape == (2, TINY.vocab) and torch.isfinite(session.logits).all()
    assert session.kv.shape == (TINY.layers, 2, 2 * TINY.kv_heads, 64, TINY.head_dim)
    assert session.k_cache.shape == session.v_cache.shape == (TINY.layers, 2, TINY.kv_heads, 64, TINY.head_dim)
    assert session.pos.tolist() == [9, 5]


def test_rope_rotates_each_pair_by_its_position_angle():
    model = ReferenceModel(TINY, "fp32", "cpu", seed=1)
    cos, sin = model.rope_tables(10)
    x = torch.randn(10, 3, TINY.head_dim)
    rotated = x.clone()
    rotate_(rotated, cos[:, None, :], sin[:, None, :])
    d = TINY.head_dim
    angles = torch.arange(10.0)[:, None] / TINY.rope_theta ** (torch.arange(0, d, 2.0) / d)
    expected = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * torch.polar(
        torch.ones_like(angles), angles)[:, None, :]).flatten(-2)
    torch.testing.assert_close(rotated, expected, rtol=1e-5, atol=1e-5)


def test_kv_cache_decode_matches_the_full_forward():
    """Prefill then teacher-forced decode steps give the logits of one full causal forward, per row,
    with prompts of different lengths padded into one batch."""
    model = ReferenceModel(TINY, "fp32", "cpu", seed=3)
    prompts, total = [5, 9], 16
    sequences = torch.randint(1, TINY.vocab, (2, total), generator=torch.Generator().manual_seed(0))
    session = Session(model, batch=2, max_tokens=total, max_new_tokens=total)
    padded = torch.zeros((2, max(prompts)), dtype=torch.long)
    for row, length in enumerate(prompts):
        padded[row, :length] = sequences[row, :length]
    session.prefill(padded, torch.tensor(prompts))
    stepped = {row: [session.logits[row].clone()] for row in range(2)}
    for step in range(total - max(prompts)):
        session.tokens.copy_(torch.stack([sequences[row, prompts[row] + step] for row in range(2)]))
        session.decode_step()
        for row in range(2):
            stepped[row].append(session.logits[row].clone())
    for row, length in enumerate(prompts):
        full = model.head(model.hidden_states(sequences[row:row + 1], session.rope))[0]
        decoded = torch.stack(stepped[row])
        expected = full[length - 1: length - 1 + len(decoded)]
        torch.testing.assert_close(decoded, expected, rtol=1e-4, atol=1e-4)


def test_eager_generation_is_deterministic_and_exact_in_length():
    backend = ReferenceBackend(config(), CPU)
    batch = InputSpec(2, 12, 6, TINY.vocab, "uniform", 0.5, seed=5).batch_at(0)
    first, second = backend.generate(batch), backend.generate(batch)
    for a, b in zip(first.requests, second.requests):
        assert np.array_equal(a.output_ids, b.output_ids)
        assert len(a.output_ids) == 6 and len(a.token_s) == 6
        assert np.all(np.diff(a.token_s) >= 0) and a.ttft > 0
    assert [r.prompt_len for r in first.requests] == batch.lengths.tolist()
    assert first.shared_timeline and first.output_tokens == 12
    assert backend.kv_cache_bytes == 2 * TINY.layers * 2 * TINY.kv_heads * 64 * TINY.head_dim * 4


def test_graph_mode_without_a_gpu_is_skipped():
    with pytest.raises(SkipCase, match="needs a GPU"):
        ReferenceBackend(config(mode="graph"), CPU)
    if not torch.cuda.is_available():
        with pytest.raises(SkipCase, match="needs a GPU"):
            check_graph_matches_eager(device="auto")


# --- fused Triton kernels (run in Triton's interpreter on the CPU) -----------------------------------

FUSED_CHECK = """
import json, sys
from benchlib.llm.reference import check_fused_matches_torch
print(json.dumps(check_fused_matches_torch("tiny", sys.argv[1], int(sys.argv[2]), 12, 3, device="cpu")))
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed (make test installs it)")
@pytest.mark.parametrize("dtype, batch", [("fp32", 1), ("fp32", 3), ("bf16", 2)])
def test_fused_decode_kernels_match_the_pytorch_step(dtype: str, batch: int, repo: Path):
    """The same kernels the GPU runs (norm+GEMV with SwiGLU/residual/argmax epilogues, decode attention),
    executed by Triton's interpreter: teacher-forced logits against the op-by-op PyTorch step."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FUSED_CHECK, dtype, str(batch)], cwd=repo, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    agreement = json.loads(done.stdout.strip().splitlines()[-1])
    assert agreement["fused_argmax_exact"] and agreement["token_agreement"] == 1.0
    if dtype == "fp32":  # same math, different summation order
        assert agreement["max_rel_logit_error"] < 1e-5
    else:  # rounded to bf16 at different points
        assert agreement["max_rel_logit_error"] < 0.05 and agreement["min_cosine"] > 0.999


KERNEL_CHECK = """
import json, torch
import torch.nn.functional as F
from benchlib.llm import SHAPES
from benchlib.llm.kernels import Argmax, GemvConfig, decode_attention_, finish_step_
from benchlib.llm.model import ReferenceModel, rotate_

def attention_errors(pos, max_seq, split_len, splits_list):
    # max errors of decode_attention_ (blocks of 4 slots) against softmax attention in PyTorch
    shape = SHAPES["tiny"]
    heads, kv_heads, d, batch = shape.heads, shape.kv_heads, shape.head_dim, len(pos)
    generator = torch.Generator().manual_seed(3)
    qkv = torch.randn(batch, heads + 2 * kv_heads, d, generator=generator)
    cache = torch.randn(batch, 2 * kv_heads, max_seq, d, generator=generator)
    cos, sin = ReferenceModel(shape, "fp32", "cpu", 0).rope_tables(max_seq)
    expected_cache, rotated = cache.clone(), qkv.clone()
    rotate_(rotated[:, : heads + kv_heads], cos[pos][:, None], sin[pos][:, None])
    expected = torch.empty(batch, heads, d)
    for row, p in enumerate(pos.tolist()):
        expected_cache[row, :, p] = rotated[row, heads:]
        for head in range(heads):
            keys = expected_cache[row, head % kv_heads, : p + 1]
            values = expected_cache[row, kv_heads + head % kv_heads, : p + 1]
            expected[row, head] = F.softmax(keys @ rotated[row, head] * d ** -0.5, dim=0) @ values
    errors = {}
    for splits in splits_list:
        partials = torch.empty(batch, heads, splits, d + 2) if splits > 1 else None
        written, out = cache.clone(), torch.zeros(batch, heads * d)
        decode_attention_(qkv, cos, sin, pos, written, out, heads, kv_heads, partials=partials, split_len=split_len,
                          block_s=4)
        errors[splits] = max(float((out.view(batch, heads, d) - expected).abs().max()),
                             float((written - expected_cache).abs().max()))
    return errors


# one program walking 4 blocks; two splits of 8 slots (row 0's second one empty), merged
errors = {f"positions 3, 13; {k} splits": v for k, v in attention_errors(torch.tensor([3, 13]), 16, 8, (1, 2)).items()}
# three splits of 4 (padded to 4 in the merge): positions 0 and on split boundaries, four rows
errors.update({f"positions 0, 4, 8, 11; {k} splits": v
               for k, v in attention_errors(torch.tensor([0, 4, 8, 11]), 12, 4, (3,)).items()})

# the step's end: the largest candidate wins, the first on a tie; 3 candidates (padded to 4)
argmax = Argmax(2, 12, "cpu", GemvConfig(block_n=4, block_k=16))
argmax.best[:] = torch.tensor([[1.0, 3.0, 3.0], [-1.0, 0.5, 0.5]])
argmax.index[:] = torch.tensor([[10, 20, 30], [6, 7, 8]])
tokens, positions, step = torch.zeros(2, dtype=torch.long), torch.tensor([3, 13]), torch.tensor([2])
generated = torch.zeros(2, 4, dtype=torch.long)
finish_step_(argmax, tokens, positions, step, generated)
beyond = torch.tensor([4])  # a step past the output (graph capture's warm-up) stores nothing
finish_step_(argmax, torch.zeros(2, dtype=torch.long), torch.tensor([3, 13]), beyond, generated)
print(json.dumps({"errors": errors, "tokens": tokens.tolist(), "positions": positions.tolist(),
                  "step": step.tolist(), "beyond": beyond.tolist(), "generated": generated.tolist()}))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed (make test installs it)")
def test_decode_attention_over_several_blocks_and_the_step_end(repo: Path):
    """In Triton's interpreter: attention whose context spans several cache blocks (the block read
    before the wait, then the loop), walked by one program, split over two (one of them empty for
    the shorter row) and over three (positions 0 and on split boundaries) and merged, against
    softmax attention in PyTorch, with the new key and value stored at the row's position; and the
    step-end kernel's token choice (first on a tie, padded candidates), counters and bounds."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", KERNEL_CHECK], cwd=repo, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(result["errors"]) == 3 and max(result["errors"].values()) < 1e-5, result["errors"]
    assert result["tokens"] == [20, 7] and result["positions"] == [4, 14] and result["step"] == [3]
    assert result["generated"] == [[0, 0, 20, 0], [0, 0, 7, 0]] and result["beyond"] == [5]


def _ptx_around_the_wait(name: str, constexprs: dict, warps: int, stages: int | None = None,
                         aligned: bool = False) -> tuple[list[str], list[str]]:
    """The PTX lines before and after ``griddepcontrol.wait`` of the kernel ``name`` compiled for sm_90 with PDL."""
    from triton.backends.compiler import GPUTarget

    from benchlib.llm.kernels import compile_kernel

    compiled = compile_kernel(name, "bf16", constexprs, GPUTarget("cuda", 90, 32), warps, overlap=True,
                              num_stages=stages, aligned=aligned)
    lines = compiled.asm["ptx"].splitlines()
    wait = next(i for i, line in enumerate(lines) if "griddepcontrol.wait" in line)
    assert any("griddepcontrol.launch_dependents" in line for line in lines[wait:])
    return lines[:wait], lines[wait:]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed (make test installs it)")
def test_overlapped_kernels_read_only_inputs_before_waiting():
    """Compiled for an H100 (sm_90, no GPU needed) with programmatic dependent launch: the SwiGLU
    product loads its first weight tile before ``griddepcontrol.wait``; attention loads the position,
    the RoPE row and its first cache block; the merge and the step end load nothing; and no kernel
    stores anything before the wait. On the CPU nothing asks for the overlap."""
    from benchlib.llm import kernels

    early, _ = _ptx_around_the_wait("gemv_kernel", {
        "B": 1, "BLOCK_B": 1, "BLOCK_N": 4, "BLOCK_K": 1024, "NORM": True, "EPILOGUE": 2, "ARGMAX": False,
        "OVERLAP": True}, 4)
    # 4 gate + 4 up rows x 1024 bf16 over 128 threads, one element per load unhinted: 64 loads early
    assert sum("ld.global" in line for line in early) == 2 * 4 * 1024 // 128
    stores_early = [not any("st.global" in line for line in early)]
    early, _ = _ptx_around_the_wait("decode_attention_kernel", {"D": 64, "BLOCK_S": 128, "SPLITS": 4,
                                                                "OVERLAP": True}, 4)
    assert sum("ld.global" in line for line in early) > 3  # position, RoPE row, first keys and values
    stores_early.append(not any("st.global" in line for line in early))
    for name, constexprs in (("combine_splits_kernel", {"D": 64, "SPLITS": 3, "BLOCK_SPLITS": 4, "OVERLAP": True}),
                             ("finish_step_kernel", {"B": 3, "BLOCK_B": 4, "BLOCK_P": 1024, "OVERLAP": True})):
        early, _ = _ptx_around_the_wait(name, constexprs, 2)
        assert not any("ld.global" in line for line in early)
        stores_early.append(not any("st.global" in line for line in early))
    assert all(stores_early)
    assert kernels.overlap_unavailable("cpu") is not None
    # the attention splits every 128 positions, and into no more than 64 splits
    assert [kernels.attention_split_len(n) for n in (64, 384, 8192, 8193, 65536)] == [128, 128, 128, 256, 1024]
    assert kernels.attention_splits(8193, 256) == 33 and kernels.attention_splits(384) == 3
    model = ReferenceModel(TINY, "fp32", "cpu", 0)
    assert not Session(model, 1, 16, 4, fused=True).overlap
    with pytest.raises(ValueError, match="overlap was asked for but"):
        Session(model, 1, 16, 4, fused=True, overlap=True)
    partials = torch.empty(1, TINY.heads, 2, TINY.head_dim + 2)  # a 384-slot cache needs 3 splits of 128, not 2
    with pytest.raises(ValueError, match="partials must be contiguous"):
        kernels.decode_attention_(torch.zeros(1, 8, TINY.head_dim), None, None, None,
                                  torch.zeros(1, 4, 384, TINY.head_dim), None, TINY.heads, TINY.kv_heads,
                                  partials=partials)


def test_kernel_choice_follows_mode_device_and_batch():
    """Where ``auto`` keeps PyTorch ops without asking the GPU, and what ``triton`` refuses. (Whether
    the fused kernels work on a GPU, and above batch 1 whether they beat cuBLAS, is
    tests/test_llm_tiles.py's.)"""
    from benchlib.llm import kernels
    from benchlib.llm.reference import resolve_kernels

    gpu = Device("cuda:0", "NVIDIA H100 80GB HBM3")
    for chosen in (config(mode="eager"), config(kernels="torch", mode="graph", batch=1),
                   config(mode="graph", batch=kernels.MAX_BATCH + 1), config(mode="graph", batch=1, compile=True)):
        assert resolve_kernels(chosen, gpu).kernels == "torch"
    assert resolve_kernels(config(mode="graph", batch=1), CPU).kernels == "torch"
    if kernels.available() is None:
        with pytest.raises(RuntimeError, match="batch <= 64"):
            resolve_kernels(config(kernels="triton", batch=65), gpu)
        if not kernels.interpreting():
            with pytest.raises(SkipCase, match="needs a CUDA GPU"):
                resolve_kernels(config(kernels="triton"), CPU)


# --- timing arithmetic -----------------------------------------------------------------------------

def test_tpot_is_decode_time_over_tokens_after_the_first():
    assert tpot(1.0, 0.1, 10) == pytest.approx(0.1)
    assert tpot(0.5, 0.5, 1) is None
    request = RequestResult(8, np.arange(4), np.array([0.2, 0.3, 0.45, 0.5]), start_ns=1_000_000_000)
    assert request.ttft == 0.2 and request.e2e == 0.5
    assert request.tpot == pytest.approx(0.1) and request.itl == pytest.approx([0.1, 0.15, 0.05])
    assert request.wall_ns(0.5) == 1_500_000_000


def _synthetic_result(prompts: list[int], output_len: int, step_s: float = 0.01, ttft_s: float = 0.1) -> GenerationResult:
    times = ttft_s + step_s * np.arange(output_len)
    return GenerationResult(
        tuple(RequestResult(p, np.zeros(output_len, dtype=np.int64), times, 10**18) for p in prompts),
        shared_timeline=True,
    )


def test_metrics_of_known_generations():
    """Fixed timings in, the tidy metrics and roofline fractions out, by arithmetic alone."""
    shape = SHAPES["llama-1b"]
    results = [_synthetic_result([128], 5), _synthetic_result([128], 5)]
    info = ScenarioInfo(shape, "bf16", 1, 128, 5, "test clock", "fixed_samples",
                        Ceilings(mem_bw_gbs=3000.0, mem_bw_source="test", peak_tflops=1000.0, peak_source="test"))
    metrics = {metric.name: metric for metric in scenario_metrics(results, info)}
    assert [s.seconds for s in metrics["ttft"].samples] == [0.1, 0.1] and metrics["ttft"].work == 128
    assert [s.seconds for s in metrics["tpot"].samples] == pytest.approx([0.01, 0.01])
    assert len(metrics["itl"].samples) == 2 * 4 and metrics["decode_step"].work == 1
    assert metrics["generation"].work == 5 and metrics["e2e"].samples[0].seconds == pytest.approx(0.14)
    fraction = decode_bytes_per_step(shape, "bf16", results[0]) / 0.01 / 3000e9
    assert metrics["decode_roofline_fraction"].samples[0].seconds == pytest.approx(fraction)
    assert metrics["prefill_roofline_fraction"].samples[0].seconds == pytest.approx(shape.prefill_flop(128) / 0.1 / 1e15)
    assert metrics["kv_cache_bytes"].samples[0].seconds == 133 * shape.kv_bytes_per_token("bf16")
    sample = metrics["itl"].samples[0]
    assert sample.end_ns - sample.start_ns == pytest.approx(10_000_000, abs=1)


# --- synthetic inputs ------------------------------------------------------------------------------

@pytest.mark.parametrize("distribution", ["fixed", "uniform", "normal"])
def test_input_lengths_are_seeded_and_within_bounds(distribution: str):
    spec = InputSpec(64, 100, 8, 1000, distribution, spread=0.2, seed=42)
    low, high = spec.length_bounds()
    batches = [spec.batch_at(i) for i in range(5)]
    assert all(np.array_equal(a.lengths, b.lengths) for a, b in zip(batches, [spec.batch_at(i) for i in range(5)]))
    lengths = np.concatenate([batch.lengths for batch in batches])
    assert lengths.min() >= low and lengths.max() <= high == spec.max_input_len
    assert all(1 <= prompt.min() and prompt.max() < 1000 for batch in batches for prompt in batch.prompts)
    if distribution == "fixed":
        assert set(lengths) == {100}
    else:
        assert len(set(lengths)) > 5 and abs(lengths.mean() - 100) < 5
    assert not np.array_equal(batches[0].prompts[0][:8], batches[1].prompts[0][:8])


def test_normal_lengths_clip_at_three_sigma_and_padding_sides():
    assert InputSpec(1, 100, 1, 10, "normal", 0.1).length_bounds() == (70, 130)
    assert InputSpec(1, 4, 1, 10, "uniform", 0.9).length_bounds() == (1, 7)
    batch = InputSpec(2, 4, 1, 10, "uniform", 0.5, seed=1).batch_at(0)
    right, right_mask = batch.padded()
    left, left_mask = batch.padded(left=True)
    assert right_mask.sum(axis=1).tolist() == left_mask.sum(axis=1).tolist() == batch.lengths.tolist()
    assert right_mask[:, 0].all() and left_mask[:, -1].all()


# --- transformers ------------------------------------------------------------------------------------

def test_transformers_backend_generates_exact_lengths_greedily():
    pytest.importorskip("transformers")
    backend = make_backend(config(backend="transformers"), CPU)
    batch = InputSpec(2, 12, 6, TINY.vocab, "uniform", 0.5, seed=5).batch_at(0)
    first, second = backend.generate(batch), backend.generate(batch)
    assert [len(r.output_ids) for r in first.requests] == [6, 6] and len(first.requests[0].token_s) == 6
    assert all(np.array_equal(a.output_ids, b.output_ids) for a, b in zip(first.requests, second.requests))
    assert "streamer" in backend.clock


def test_random_checkpoint_round_trips_its_shape(tmp_path: Path):
    pytest.importorskip("transformers")
    from benchlib.llm.hf import checkpoint_config, save_random_checkpoint
    from benchlib.llm.model import shape_from_hf_config

    save_random_checkpoint(TINY, "fp32", "cpu", 1, tmp_path)
    shape = shape_from_hf_config(checkpoint_config(tmp_path), name="tiny")
    assert shape.params == TINY.params and shape.kv_heads == TINY.kv_heads
    assert (tmp_path / "tokenizer.json").is_file()


# --- TensorRT-LLM helpers (no library needed) ------------------------------------------------------

#: Literal sample, taken from the TensorRT-LLM documentation (docs/source/performance/perf-overview.md,
#: "Running the Benchmark", example output of `trtllm-bench ... throughput`); not a measurement of ours.
DOCS_REPORT_STREAMING = """\
===========================================================
= PERFORMANCE OVERVIEW
===========================================================
Request Throughput (req/sec):                     43.2089
Total Output Throughput (tokens/sec):             5530.7382
Per User Output Throughput (tokens/sec/user):     2.0563
Per GPU Output Throughput (tokens/sec/gpu):       5530.7382
Total Token Throughput (tokens/sec):              94022.5497
Total Latency (ms):                               115716.9214
Average request latency (ms):                     75903.4456
Per User Output Speed [1/TPOT] (tokens/sec/user): 5.4656
Average time-to-first-token [TTFT] (ms):          52667.0339
Average time-per-output-token [TPOT] (ms):        182.9639

-- Per-Request Time-per-Output-Token [TPOT] Breakdown (ms)

[TPOT] MINIMUM: 32.8005
[TPOT] MAXIMUM: 208.4667
[TPOT] AVERAGE: 182.9639
[TPOT] P50    : 204.0463
[TPOT] P90    : 206.3863
[TPOT] P95    : 206.5064
[TPOT] P99    : 206.5821

-- Per-Request Time-to-First-Token [TTFT] Breakdown (ms)

[TTFT] MINIMUM: 3914.7621
[TTFT] MAXIMUM: 107501.2487
[TTFT] AVERAGE: 52667.0339
[TTFT] P50    : 52269.7072
[TTFT] P90    : 96583.7187
[TTFT] P95    : 101978.4566
[TTFT] P99    : 106563.4497

-- Request Latency Breakdown (ms) -----------------------

[Latency] P50    : 78509.2102
[Latency] P90    : 110804.0017
[Latency] P95    : 111302.9101
[Latency] P99    : 111618.2158
[Latency] MINIMUM: 24189.0838
[Latency] MAXIMUM: 111668.0964
[Latency] AVERAGE: 75903.4456
"""

#: Literal sample, taken from the TensorRT-LLM documentation (docs/source/performance/perf-benchmarking.md,
#: "Quickstart", the older report format, with its log prefixes); not a measurement of ours.
DOCS_REPORT_QUICKSTART = """\
[01/18/2025-01:01:42] [TRT-LLM] [I]
===========================================================
= WORLD + RUNTIME INFORMATION
===========================================================
TP Size:                1
KV Memory Percentage:   90.00%
Issue Rate (req/sec):   5.0689E+14

===========================================================
= PERFORMANCE OVERVIEW
===========================================================
Number of requests:             3000
Average Input Length (tokens):  128.0000
Average Output Length (tokens): 128.0000
Token Throughput (tokens/sec):  28390.4265
Request Throughput (req/sec):   221.8002
Total Latency (ms):             13525.6862

===========================================================
"""


def test_bench_report_parser_reads_the_documented_formats():
    report = parse_bench_report(DOCS_REPORT_STREAMING)
    assert report.figures["Total Latency (ms)"] == 115716.9214
    assert report.figures["Average time-to-first-token [TTFT] (ms)"] == 52667.0339
    assert report.figures["Per User Output Speed [1/TPOT] (tokens/sec/user)"] == 5.4656
    assert report.breakdowns["TPOT"]["P99"] == 206.5821 and report.breakdowns["Latency"]["MINIMUM"] == 24189.0838
    old = parse_bench_report(DOCS_REPORT_QUICKSTART)
    assert old.figures["Token Throughput (tokens/sec)"] == 28390.4265 and old.figures["Number of requests"] == 3000
    assert "Issue Rate (req/sec)" not in old.figures and not old.breakdowns
    with pytest.raises(RuntimeError, match="no PERFORMANCE OVERVIEW"):
        parse_bench_report("[TRT-LLM] [E] CUDA out of memory")


def test_bench_metrics_convert_milliseconds_and_count_output_tokens():
    metrics = {m.name: m for m in bench_metrics(parse_bench_report(DOCS_REPORT_STREAMING), 640, 1, 2)}
    assert metrics["bench_total"].samples[0].seconds == pytest.approx(115.7169214) and metrics["bench_total"].work == 640
    assert metrics["bench_ttft_p50"].samples[0].seconds == pytest.approx(52.2697072)
    assert {"bench_e2e_average", "bench_tpot_p99"} <= set(metrics) and "bench_tpot_minimum" not in metrics
    assert all("not a sample" in m.note for m in metrics.values())


def test_trtllm_dataset_arguments_and_command_line(tmp_path: Path):
    spec = InputSpec(2, 8, 4, 100, "uniform", 0.5, seed=3)
    lines = [json.loads(line) for line in dataset_lines(spec, generations=3)]
    assert [line["task_id"] for line in lines] == list(range(6))
    assert all(set(line) == {"task_id", "input_ids", "output_tokens"} and line["output_tokens"] == 4 for line in lines)
    assert lines[0]["input_ids"] == spec.batch_at(0).prompts[0].tolist()
    graph = config(backend="tensorrt-llm", mode="graph", dtype="bf16", batch=8)
    kwargs = llm_kwargs(graph, tmp_path)
    assert kwargs["model"] == str(tmp_path) and kwargs["dtype"] == "bfloat16" and kwargs["max_seq_len"] == 18
    assert kwargs["cuda_graph_config"] == {"batch_sizes": [8]} and kwargs["skip_tokenizer_init"]
    assert llm_kwargs(config(backend="tensorrt-llm", mode="eager"), tmp_path)["cuda_graph_config"] is None
    assert sampling_kwargs(16) == {"max_tokens": 16, "ignore_eos": True, "top_k": 1, "detokenize": False}
    command = bench_command(tmp_path, tmp_path / "d.jsonl", graph, num_requests=80, warmup_requests=16)
    assert command[:6] == ["trtllm-bench", "--model", str(tmp_path), "--model_path", str(tmp_path), "throughput"]
    flags = dict(zip(command[6::2], command[7::2]))
    assert flags["--concurrency"] == "8" and flags["--num_requests"] == "80" and flags["--eos_id"] == "-1"
    assert command[-1] == "--streaming"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_llm") is not None, reason="TensorRT-LLM is installed here")
def test_tensorrt_llm_absent_is_one_clear_skipped_sentence():
    with pytest.raises(SkipCase) as info:
        make_backend(config(backend="tensorrt-llm"), CPU)
    assert NOT_INSTALLED in str(info.value) and "\n" not in str(info.value)
    result = run_benchmark("llm_inference", backend="tensorrt-llm", mode="bench", telemetry_hz=0)
    row = result.results.iloc[0]
    assert len(result.results) == 1 and row["status"] == "skipped" and NOT_INSTALLED in row["note"]


# --- the workload and its params ---------------------------------------------------------------------

def test_workload_runs_tiny_on_the_cpu_with_rooflines_from_stated_ceilings():
    result = run_benchmark("llm_inference", shape="tiny", dtype="fp32", batch=2, input_len=8, output_len=4,
                           warmup=1, fixed_samples=3, mem_bw_gbs=50.0, peak_tflops=1.0, telemetry_hz=0)
    frame = result.results
    assert set(frame["status"]) == {"ok"}
    counts = frame.groupby("metric").size().to_dict()
    assert counts["ttft"] == counts["e2e"] == counts["tpot"] == 6 and counts["itl"] == 9 and counts["generation"] == 3
    assert {"decode_roofline_fraction", "prefill_roofline_fraction", "kv_cache_bytes"} <= set(counts)
    assert (frame["end_ns"] >= frame["start_ns"]).all()
    summary = result.summary().set_index("metric")
    assert summary.loc["generation", "rate_unit"] == "token/s"


@pytest.mark.parametrize("values, key", [
    ({"shape": "llama-70b"}, "'shape'"), ({"backend": "vllm"}, "'backend'"), ({"batch": 0}, "'batch'"),
    ({"input_len": -1}, "'input_len'"), ({"output_len": 0}, "'output_len'"), ({"dtype": "fp8"}, "'dtype'"),
    ({"backend": "transformers", "mode": "graph"}, "'mode'"), ({"mode": "bench"}, "'mode'"),
    ({"backend": "transformers", "compile": True}, "'compile'"), ({"model_path": "/m"}, "'model_path'"),
    ({"input_dist": "zipf"}, "'input_dist'"), ({"kernels": "cuda"}, "'kernels'"),
    ({"backend": "transformers", "kernels": "triton"}, "'kernels'"),
    ({"compile": True, "kernels": "triton"}, "'kernels'"),
])
def test_bad_params_name_the_file_and_the_key(values: dict, key: str):
    with pytest.raises(ParamsError) as info:
        validate(LlmParams, values, "params/llm_inference/x.yaml")
    assert "params/llm_inference/x.yaml" in str(info.value) and key in str(info.value)


def test_params_files_list_every_case_key(repo: Path):
    """The runner names a case from the file's raw values and joins telemetry by that name, so the
    name must equal the one the notebook derives from the validated parameters."""
    keys = get_workload("llm_inference").case_keys
    files = sorted((repo / "params" / "llm_inference").glob("*.yaml"))
    assert {"smoke", "quick", "quick_eager", "full"} | {f"seed_t{i}" for i in range(1, 7)} <= {f.stem for f in files}
    for path in files:
        assert set(keys) <= set(read_yaml(path)), path.name
    seeds = [read_yaml(repo / "params" / "llm_inference" / f"seed_t{i}.yaml") for i in range(1, 7)]
    assert [(s["batch"], s["input_len"], s["output_len"]) for s in seeds] == [
        (1, 128, 32), (1, 512, 128), (1, 2048, 512), (4, 512, 128), (16, 512, 128), (32, 512, 128)]
    assert all(s["warmup"] == 10 and s["fixed_samples"] == 100 and s["seed"] == 42 for s in seeds)
