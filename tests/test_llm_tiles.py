"""The fused decode kernels above batch 1 (tensor cores), their tiles per GPU, and the fallback to
PyTorch ops: in Triton's interpreter and Triton's compiler on the CPU, no GPU needed."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from benchlib.llm import SHAPES, BackendConfig
from benchlib.llm import tiles as tile_table
from benchlib.llm.kernels import GemvConfig, default_config
from benchlib.llm.reference import auto_choice

LLAMA_1B = SHAPES["llama-1b"]
H200 = tile_table.GpuIdentity("NVIDIA H200", "580.159.04", "3.6.0")
# a product the shipped table does not hold (it holds the H100 and the H200, measured here): the cache
# tests need the cache to be the first source that answers
UNSHIPPED = tile_table.GpuIdentity("NVIDIA L40S", "580.159.04", "3.6.0")
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed (make test installs it)")


def _interpreted(script: str, repo: Path, *args: str, env: dict | None = None) -> dict:
    """Run ``script`` in a fresh Python with Triton's interpreter; its last line of output as JSON."""
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=repo, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TRITON_INTERPRET": "1", **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the tensor-core product and the step end (interpreter) ----------------------------------------

PRODUCTS_CHECK = """
import json, sys, torch
import torch.nn.functional as F
from benchlib.llm.kernels import Argmax, GemvConfig, finish_step_, gemv

torch.manual_seed(0)
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[sys.argv[1]]
tiles = GemvConfig(16, 32, 4, 2, tensor_cores=True)  # 5 programs over N = 80, three K steps of 96
errors, argmax_exact = {}, True
for batch in (2, 3, 17):
    n, k = 80, 96
    x = torch.randn(batch, k).to(dtype)
    w = (torch.randn(2 * n, k) * 0.1).to(dtype)
    norm = (torch.rand(k) + 0.5).to(dtype)
    normed = F.rms_norm(x.float(), (k,), norm.float(), 1e-5)

    def error(out, expected):
        return float((out.float() - expected).abs().max() / expected.abs().max())

    out = torch.zeros(batch, n, dtype=dtype)
    gemv(x, w, out, norm_weight=norm, swiglu=True, config=tiles)
    gate_up = normed @ w.float().t()
    errors[f"b{batch} norm+swiglu"] = error(out, F.silu(gate_up[:, :n]) * gate_up[:, n:])
    out = torch.randn(batch, n).to(dtype)
    expected = out.float() + x.float() @ w[:n].float().t()
    gemv(x, w[:n].contiguous(), out, residual=True, config=tiles)
    errors[f"b{batch} residual"] = error(out, expected)
    out = torch.zeros(batch, 2 * n, dtype=dtype)
    argmax = Argmax(batch, 2 * n, "cpu", tiles)
    gemv(x, w, out, norm_weight=norm, argmax=argmax, config=tiles)
    errors[f"b{batch} norm+argmax"] = error(out, normed @ w.float().t())
    tokens, pos, step = torch.zeros(batch, dtype=torch.long), torch.arange(batch), torch.tensor([1])
    generated = torch.zeros(batch, 3, dtype=torch.long)
    finish_step_(argmax, tokens, pos, step, generated)
    argmax_exact &= (torch.equal(tokens, out.float().argmax(-1)) and torch.equal(generated[:, 1], tokens)
                     and pos.tolist() == list(range(1, batch + 1)) and step.item() == 2)
print(json.dumps({"errors": errors, "argmax_exact": bool(argmax_exact)}))
"""


@pytest.mark.slow
@needs_triton
@pytest.mark.parametrize("dtype, tolerance", [("fp32", 1e-5), ("bf16", 0.02)])
def test_tensor_core_products_match_pytorch(dtype: str, tolerance: float, repo: Path):
    """The tensor-core product (tl.dot, batch padded to 16 or 32 rows) with each epilogue, over
    several programs, K steps and masked edges, at batch 2, 3 and 17, against PyTorch; the LM head's
    candidates through the step end give each row's argmax of the stored logits."""
    result = _interpreted(PRODUCTS_CHECK, repo, dtype)
    assert len(result["errors"]) == 9 and max(result["errors"].values()) < tolerance, result["errors"]
    assert result["argmax_exact"]


STEP_END_CHECK = """
import json, torch
from benchlib.llm.kernels import Argmax, GemvConfig, finish_step_

# 40 rows x 600 candidates: 64-row blocks, chunks of 256 candidates (three chunks, the last partly used)
rows, programs = 40, 600
argmax = Argmax(rows, 600 * 16, "cpu", GemvConfig(16, 64, tensor_cores=True))
best = torch.randn(rows, programs, generator=torch.Generator().manual_seed(1))
best[0, 10] = best[0, 550] = 9.0  # a tie across chunks: the earlier wins
best[1, 300] = best[1, 301] = 9.0  # a tie within a chunk: the first wins
best[2, 599] = 9.0  # the very last candidate
argmax.best[:] = best
argmax.index[:] = torch.arange(programs) * 7 + torch.arange(rows)[:, None] * 10000
tokens, positions, step = torch.zeros(rows, dtype=torch.long), torch.arange(rows), torch.tensor([0])
generated = torch.zeros(rows, 2, dtype=torch.long)
finish_step_(argmax, tokens, positions, step, generated)
expected = (best.argmax(-1) * 7 + torch.arange(rows) * 10000).tolist()
print(json.dumps({"tokens": tokens.tolist(), "expected": expected, "generated": generated[:, 0].tolist(),
                  "positions": positions.tolist(), "step": step.tolist(), "winners": best.argmax(-1)[:3].tolist()}))
"""


@needs_triton
def test_step_end_picks_every_rows_token_over_chunks(repo: Path):
    """The step end at batch 40 reads the candidates in chunks: ties keep the first (across and
    within chunks, as torch.argmax), the last candidate counts, every row advances."""
    result = _interpreted(STEP_END_CHECK, repo)
    assert result["winners"] == [10, 300, 599]
    assert result["tokens"] == result["expected"] == result["generated"]
    assert result["positions"] == list(range(1, 41)) and result["step"] == [1]


FUSED_STEP_CHECK = """
import json, sys
from dataclasses import replace
from benchlib.llm import SHAPES
from benchlib.llm import tiles as tile_table
from benchlib.llm.kernels import GemvConfig
from benchlib.llm.reference import check_fused_matches_torch

dtype, batch = sys.argv[1], int(sys.argv[2])
choice = tile_table.default_choice(SHAPES["tiny"], tile_table.TileKey("tiny", dtype, tile_table.batch_bucket(batch), False))
choice = replace(choice, tiles={name: GemvConfig(16, 32, 4, 2, tensor_cores=True) for name in choice.tiles})
print(json.dumps(check_fused_matches_torch("tiny", dtype, batch, 12, 3, device="cpu", tiles=choice)))
"""


@pytest.mark.slow
@needs_triton
@pytest.mark.parametrize("dtype, batch", [("fp32", 5), ("bf16", 20)])
def test_fused_step_on_tensor_cores_matches_the_pytorch_step(dtype: str, batch: int, repo: Path):
    """The whole fused decode step above batch 1 (tensor-core products in small tiles, so every
    product loops over K and runs several programs; attention; the step end), teacher-forced
    against the op-by-op PyTorch step."""
    agreement = _interpreted(FUSED_STEP_CHECK, repo, dtype, str(batch))
    assert agreement["fused_argmax_exact"] and agreement["token_agreement"] == 1.0
    assert "tc16x32w4s2" in agreement["tiles"]
    if dtype == "fp32":
        assert agreement["max_rel_logit_error"] < 1e-5
    else:
        assert agreement["max_rel_logit_error"] < 0.05 and agreement["min_cosine"] > 0.999


# --- programmatic dependent launch in the PTX ------------------------------------------------------

def _loaded_elements(lines: list[str], bits: int = 16) -> int:
    """Elements of ``bits`` each that one thread loads from global memory in ``lines`` of PTX."""
    total = 0
    for line in lines:
        match = re.search(r"ld\.global[\w:.]*?\.(?:v(\d)\.)?[bfsu](\d+)\b", line)
        if match:
            total += int(match.group(1) or 1) * int(match.group(2)) // bits
    return total


@needs_triton
@pytest.mark.parametrize("block_n, block_k, epilogue, warps, stages", [(64, 128, 2, 4, 4), (16, 256, 0, 4, 3)])
def test_tensor_core_product_reads_only_its_first_weight_tile_before_waiting(block_n, block_k, epilogue, warps,
                                                                               stages):
    """Compiled for an H100 (sm_90) as a launch specialises it (aligned pointers and sizes, so vector
    loads and asynchronous copies), with programmatic dependent launch: before
    ``griddepcontrol.wait`` the threads load exactly the first weight tile (gate and up for SwiGLU)
    and nothing else, store nothing and start no asynchronous copy; after it the product runs on
    tensor cores and lets the next kernel launch."""
    from test_llm import _ptx_around_the_wait

    early, late = _ptx_around_the_wait("gemm_kernel", {
        "B": 16, "BLOCK_B": 16, "BLOCK_N": block_n, "BLOCK_K": block_k, "NORM": True, "EPILOGUE": epilogue,
        "ARGMAX": False, "OVERLAP": True, "IEEE": False}, warps, stages, aligned=True)
    tiles = 2 if epilogue == 2 else 1
    assert _loaded_elements(early) * warps * 32 == tiles * block_n * block_k
    writes_or_computes = re.compile(r"(?<![\w.])(st\.global|cp\.async|atom\.|red\.|wgmma|mma)")
    assert not any(writes_or_computes.search(line) for line in early)  # st.shared (CTA-local) is no write
    assert any(re.search(r"(?<![\w.])(wgmma|mma)", line) for line in late)  # wgmma (64 rows) or mma.sync: tensor cores
    assert any("cp.async" in line for line in late)  # the later tiles stream through the pipeline


# --- tables, the cache, the order of sources --------------------------------------------------------

def _choice(gpu=H200, bucket=16, overlap=True, fused=3000.0, cublas=2000.0, source="search") -> tile_table.TileChoice:
    key = tile_table.TileKey("llama-1b", "bf16", bucket, overlap)
    tiles = {p.name: GemvConfig(32, 128, 4, 4, tensor_cores=True) for p in tile_table.products(LLAMA_1B)}
    names = [p.name for p in tile_table.products(LLAMA_1B)]
    return tile_table.TileChoice(key, tiles, source, gpu, "2026-12-04", dict.fromkeys(names, fused),
                                 dict.fromkeys(names, cublas), "planted")


def test_shipped_table_reads_and_holds_the_h100_defaults():
    """The shipped table parses; its H100 batch-1 tiles are the defaults kernels.default_config
    documents as measured there, with and without overlap."""
    entries = tile_table.read_table(tile_table.SHIPPED)
    h100 = [e for e in entries if e["gpu"] == "NVIDIA H100 80GB HBM3" and e["bucket"] == 1]
    assert {e["overlap"] for e in h100} == {True, False}
    for entry in h100:
        choice = tile_table._choice_from_entry(entry, LLAMA_1B, "shipped")
        assert choice.tiles == tile_table.default_choice(LLAMA_1B, choice.key).tiles
    overlapped = next(e for e in h100 if e["overlap"])
    assert tile_table._choice_from_entry(overlapped, LLAMA_1B, "shipped").fused_beats_cublas(LLAMA_1B)


def test_cache_hit_miss_and_invalidation_by_driver_or_triton(tmp_path: Path, monkeypatch):
    """A stored search answers the same GPU, driver and Triton; a new driver or Triton misses it
    (and falls to the defaults when no search may run), another GPU product misses it."""
    monkeypatch.setenv("BENCHLIB_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(tile_table.TILES_ENV, raising=False)
    tile_table.store(tile_table.cache_path(), _choice(gpu=UNSHIPPED))
    assert tile_table.cache_path() == tmp_path / tile_table.CACHE_FILE

    def choose(identity, batch=16, overlap=True):
        return tile_table.choose(LLAMA_1B, "bf16", batch, overlap, "cuda:0", search_allowed=False, identity=identity)

    hit = choose(UNSHIPPED, batch=9)  # batch 9 is in the 16-row bucket
    assert hit.source == "cache" and hit.tiles["qkv"] == GemvConfig(32, 128, 4, 4, tensor_cores=True)
    assert hit.measured_on == UNSHIPPED and "the tile cache (NVIDIA L40S, driver 580.159.04" in hit.describe()
    for other in (replace(UNSHIPPED, driver="590.10"), replace(UNSHIPPED, triton="3.7.0"), replace(UNSHIPPED, gpu="NVIDIA B200")):
        miss = choose(other)
        assert miss.source == "default" and "no measured tiles for this GPU" in miss.note
    assert choose(UNSHIPPED, batch=17).source == "default"  # another bucket
    assert choose(UNSHIPPED, overlap=False).source == "default"  # another launch mode
    # storing again replaces the entry of the same key, keeps the others
    tile_table.store(tile_table.cache_path(), _choice(gpu=UNSHIPPED, fused=1000.0))
    tile_table.store(tile_table.cache_path(), _choice(gpu=UNSHIPPED, bucket=32))
    entries = tile_table.read_table(tile_table.cache_path())
    assert sorted(e["bucket"] for e in entries) == [16, 32]
    assert choose(UNSHIPPED).fused_beats_cublas(LLAMA_1B) is False


def test_sources_in_order_file_then_shipped_then_cache(tmp_path: Path, monkeypatch):
    """BENCHLIB_LLM_TILES pins a table for every arm; the shipped table comes before the user's
    cache (whatever the driver), so arms without the cache get the same tiles."""
    monkeypatch.setenv("BENCHLIB_CACHE_DIR", str(tmp_path / "cache"))
    h100 = tile_table.GpuIdentity("NVIDIA H100 80GB HBM3", "999.1", "9.9.9")
    tile_table.store(tile_table.cache_path(), _choice(gpu=h100, bucket=1))
    shipped = tile_table.choose(LLAMA_1B, "bf16", 1, True, "cuda:0", search_allowed=False, identity=h100)
    assert shipped.source == "shipped" and shipped.tiles["qkv"] == GemvConfig(8, 2048, 2)
    assert "driver 580.159.04, Triton 3.6.0" in shipped.describe()
    pinned = tmp_path / "pinned.json"
    pinned.write_text(json.dumps(tile_table.table_json([_choice(gpu=replace(h100, driver="1"), bucket=1).entry()])))
    monkeypatch.setenv(tile_table.TILES_ENV, str(pinned))
    chosen = tile_table.choose(LLAMA_1B, "bf16", 1, True, "cuda:0", search_allowed=False, identity=h100)
    assert chosen.source == "file" and chosen.tiles["qkv"].tensor_cores
    pinned.write_text("{")
    with pytest.raises(tile_table.TableError, match=r"pinned.json is not JSON"):
        tile_table.choose(LLAMA_1B, "bf16", 1, True, "cuda:0", search_allowed=False, identity=h100)


@pytest.mark.parametrize("text, says", [
    ("{not json", "is not JSON"),
    ('{"entries": []}', "is not a benchlib tile table"),
    ('{"schema": "benchlib-llm-tiles", "version": 99, "entries": []}', "is a version 99 tile table"),
])
def test_corrupt_cache_is_named_in_one_sentence_and_ignored(text: str, says: str, tmp_path: Path, monkeypatch):
    """An unreadable cache: one warning sentence naming the file, the defaults (no search here),
    and the next store rewrites it whole."""
    monkeypatch.setenv("BENCHLIB_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(tile_table.TILES_ENV, raising=False)
    tile_table.cache_path().write_text(text)
    with pytest.warns(UserWarning) as caught:
        choice = tile_table.choose(LLAMA_1B, "bf16", 16, True, "cuda:0", search_allowed=False, identity=UNSHIPPED)
    message = str(caught[0].message)
    assert str(tile_table.cache_path()) in message and says in message and "\n" not in message
    assert choice.source == "default" and says in choice.note
    tile_table.store(tile_table.cache_path(), _choice())
    assert len(tile_table.read_table(tile_table.cache_path())) == 1


def test_auto_fuses_above_batch_one_only_where_the_search_measured_it_faster():
    """Planted measurements: fused products faster than cuBLAS per step -> fused kernels; slower ->
    PyTorch ops with both figures; nothing measured (defaults) -> PyTorch ops, saying so. Batch 1
    fuses whatever the figures."""
    def choice_at(batch: int, tiles) -> str:
        config = BackendConfig("reference", LLAMA_1B, "bf16", "graph", batch, 128, 16, 42)
        return auto_choice(config, tiles)

    faster = choice_at(16, _choice(fused=3000.0, cublas=2000.0))
    assert faster.kernels == "triton" and "against cuBLAS's" in faster.why
    slower = choice_at(32, _choice(bucket=32, fused=1500.0, cublas=2000.0))
    assert slower.kernels == "torch" and "cuBLAS's products took" in slower.why
    # per-step times weight each product by its calls: 16 layers of four, one LM head
    step = _choice().step_seconds(LLAMA_1B, "fused")
    assert step == pytest.approx(LLAMA_1B.decode_weight_bytes("bf16") / 3000e9, rel=1e-3)
    unmeasured = tile_table.default_choice(LLAMA_1B, tile_table.TileKey("llama-1b", "bf16", 16, True))
    assert choice_at(4, unmeasured).kernels == "torch" and "no measured comparison" in choice_at(4, unmeasured).why
    assert choice_at(1, replace(_choice(bucket=1), fused_gbs={})).kernels == "triton"


def test_tile_descriptions_round_trip_and_candidates_start_with_the_default():
    for config in (GemvConfig(8, 2048, 2), GemvConfig(64, 128, 4, 4, tensor_cores=True), GemvConfig(2, 1024, 4, 3)):
        assert GemvConfig.parse(config.describe()) == config
    with pytest.raises(ValueError, match="is not a tile description"):
        GemvConfig.parse("64 rows")
    for product in tile_table.products(LLAMA_1B):
        for batch, overlap in ((1, True), (1, False), (16, True)):
            candidates = tile_table.candidate_tiles(product, batch, overlap)
            assert candidates[0] == product.default(batch, overlap) and len(set(candidates)) == len(candidates)
            assert all(c.tensor_cores == (batch > 1) for c in candidates)
            assert all(c.block_n * c.block_k <= 16384 or c.num_warps == 8 for c in candidates if batch == 1)
    assert [tile_table.batch_bucket(b) for b in (1, 2, 16, 17, 33, 64)] == [1, 16, 16, 32, 64, 64]
    with pytest.raises(ValueError, match="batch 1 to 64"):
        tile_table.batch_bucket(65)
    assert default_config(True, False, False, 4).tensor_cores


def test_tile_command_rejects_a_bad_batch_in_one_sentence(repo: Path):
    done = subprocess.run([sys.executable, "-m", "benchlib.llm.tiles", "--batch", "1", "65"], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--batch:" in done.stderr and "65" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# --- falling back when the kernels do not compile ----------------------------------------------------

FAKE_PTXAS = """#!/bin/sh
# A ptxas that knows its version but not the GPU: Triton issue 8539's failure on DGX Spark (sm_121a).
for arg in "$@"; do
  if [ "$arg" = "--version" ]; then exec "{real}" --version; fi
done
echo "ptxas fatal   : Value 'sm_121a' is not defined for option 'gpu-name'" >&2
exit 255
"""

FALLBACK_CHECK = """
import json, torch
from benchlib.device import Device
from benchlib.llm import SHAPES, BackendConfig
from benchlib.llm.reference import resolve_kernels

# the GPU this machine lacks, at the library boundary: torch's CUDA queries answer like a GB10
torch.cuda.get_device_capability = lambda device=None: (12, 1)
torch.cuda.get_device_name = lambda device=None: "NVIDIA GB10"
gb10 = Device("cuda:0", "NVIDIA GB10")
config = BackendConfig("reference", SHAPES["llama-1b"], "bf16", "graph", 1, 128, 16, 42)
auto = resolve_kernels(config, gb10)
try:
    resolve_kernels(BackendConfig("reference", SHAPES["llama-1b"], "bf16", "graph", 1, 128, 16, 42, kernels="triton"),
                    gb10)
    forced = "no error"
except RuntimeError as exc:
    forced = str(exc)
print(json.dumps({"kernels": auto.kernels, "why": auto.why, "forced": forced}))
"""


@pytest.mark.slow
@needs_triton
def test_auto_falls_back_to_pytorch_ops_when_ptxas_rejects_the_gpu(tmp_path: Path, repo: Path):
    """Triton's real compiler with a ptxas that rejects sm_121a (as Triton's bundled one did on DGX
    Spark): ``auto`` keeps PyTorch ops and says why in one sentence, naming ptxas and
    TRITON_PTXAS_PATH; ``triton`` refuses with the same reason."""
    import triton

    real = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    fake = tmp_path / "ptxas"
    fake.write_text(FAKE_PTXAS.format(real=real))
    fake.chmod(0o755)
    done = subprocess.run([sys.executable, "-c", FALLBACK_CHECK], cwd=repo, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TRITON_PTXAS_PATH": str(fake),
                                            "TRITON_PTXAS_BLACKWELL_PATH": str(fake),
                                            "TRITON_CACHE_DIR": str(tmp_path / "triton-cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["kernels"] == "torch"
    why = result["why"]
    assert why.startswith("PyTorch ops because Triton") and "sm_121" in why and "ptxas fatal" in why
    assert "TRITON_PTXAS_PATH" in why and "\n" not in why
    assert result["forced"].startswith("kernels: triton was asked for but Triton") and "sm_121" in result["forced"]


# --- the fingerprint -------------------------------------------------------------------------------

def test_triton_environment_is_fingerprinted(monkeypatch):
    from benchlib.fingerprint import capture

    monkeypatch.setenv("TRITON_PTXAS_PATH", "/usr/local/cuda/bin/ptxas")
    monkeypatch.setenv(tile_table.TILES_ENV, "/tmp/tiles.json")
    env = capture()["env"]
    assert env["TRITON_PTXAS_PATH"] == "/usr/local/cuda/bin/ptxas" and env[tile_table.TILES_ENV] == "/tmp/tiles.json"
