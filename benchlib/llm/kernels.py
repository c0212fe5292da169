"""Fused Triton kernels for the reference decoder's decode step at small batch (``kernels: triton``).

At batch 1 a decode step reads every weight once and does almost no arithmetic, so its time is the
bytes it streams plus a fixed cost per kernel. The plain-PyTorch step runs about 15 kernels per
layer (norms, RoPE's three element-wise passes, the cache write, SiLU and the multiply, each its
own launch); these kernels fold them into the matrix-vector products around them:

* :func:`gemv` - ``out = [res +] act(norm(x) @ W.T)``: RMSNorm as a prologue (each program
  recomputes the row's RMS from ``x``, a few KiB read from L2), SwiGLU (``silu(gate) * up``, the
  gate and up rows of the fused ``gate_up`` weight) or a residual add as the epilogue. The weight
  is streamed once in ``[BLOCK_N, BLOCK_K]`` tiles along its contiguous dimension; the batch rows
  (at most :data:`MAX_BATCH`) share every tile.
* :func:`decode_attention_` - RoPE on the new token's query and key heads, its key and value
  written into the static KV cache at each row's position, and grouped-query attention of the
  queries over the filled part of the cache (online softmax): one launch per layer, where the
  PyTorch step runs five element-wise kernels, a mask and SDPA over the whole cache.

Accumulation is in fp32; inputs and outputs keep the model dtype. The rounding points differ from
the op-by-op PyTorch step (RMSNorm's output is rounded once, not per op), so the two paths agree
to bf16 precision, not bit for bit; :func:`benchlib.llm.reference.check_fused_matches_torch`
measures how closely. Written for NVIDIA GPUs; the CPU tests run the same kernels in Triton's
interpreter (``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

#: Largest batch the fused path serves: the batch rows live in registers next to each weight tile.
MAX_BATCH = 8
#: Largest batch ``kernels: auto`` fuses. Measured on an H100 (benchmarks/tune_gemv.py): at batch 8
#: the broadcast-and-sum product reads weights at 130-590 GB/s where cuBLAS reaches 820-2600 GB/s,
#: so batches above 1 keep cuBLAS; a tensor-core (``tl.dot``) variant would be the way to fuse them.
AUTO_MAX_BATCH = 1
EPILOGUE_NONE, EPILOGUE_RESIDUAL, EPILOGUE_SWIGLU = 0, 1, 2


def available() -> str | None:
    """None when Triton can be imported, else why not (one sentence)."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"Triton is not importable ({exc}); use kernels: torch or install triton"
    return None


@functools.lru_cache(maxsize=1)
def _kernels() -> tuple[Any, Any]:
    """Compile-on-first-use: importing this module must not need Triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def gemv_kernel(x_ptr, w_ptr, out_ptr, norm_ptr, res_ptr, best_ptr, best_index_ptr, N, K, eps,
                    B: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    NORM: tl.constexpr, EPILOGUE: tl.constexpr, ARGMAX: tl.constexpr):
        pid = tl.program_id(0)
        offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_b = tl.arange(0, BLOCK_B)
        mask_n = offs_n < N
        mask_b = offs_b < B
        lanes = tl.arange(0, BLOCK_K)
        if NORM:
            squares = tl.zeros([BLOCK_B], dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                offs_k = k0 + lanes
                xs = tl.load(x_ptr + offs_b[:, None] * K + offs_k[None, :],
                             mask=mask_b[:, None] & (offs_k[None, :] < K), other=0.0).to(tl.float32)
                squares += tl.sum(xs * xs, axis=1)
            rstd = 1.0 / tl.sqrt(squares / K + eps)
        acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
        acc_up = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + lanes
            mask_k = offs_k < K
            xs = tl.load(x_ptr + offs_b[:, None] * K + offs_k[None, :],
                         mask=mask_b[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
            if NORM:
                weight = tl.load(norm_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
                # rounded to the model dtype once, as the op-by-op path hands its norm output to the matmul
                xs = (xs * rstd[:, None] * weight[None, :]).to(out_ptr.dtype.element_ty).to(tl.float32)
            tile_mask = mask_n[:, None] & mask_k[None, :]
            w = tl.load(w_ptr + offs_n[:, None] * K + offs_k[None, :], mask=tile_mask, other=0.0).to(tl.float32)
            acc += tl.sum(xs[:, None, :] * w[None, :, :], axis=2)
            if EPILOGUE == 2:  # gate rows are 0..N-1, up rows N..2N-1
                w_up = tl.load(w_ptr + (offs_n[:, None] + N) * K + offs_k[None, :], mask=tile_mask,
                               other=0.0).to(tl.float32)
                acc_up += tl.sum(xs[:, None, :] * w_up[None, :, :], axis=2)
        out_offsets = offs_b[:, None] * N + offs_n[None, :]
        out_mask = mask_b[:, None] & mask_n[None, :]
        if EPILOGUE == 2:
            acc = acc / (1.0 + tl.exp(-acc)) * acc_up
        if EPILOGUE == 1:
            acc += tl.load(res_ptr + out_offsets, mask=out_mask, other=0.0).to(tl.float32)
        rounded = acc.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + out_offsets, rounded, mask=out_mask)
        if ARGMAX:  # this program's largest output per row and where: the greedy token's candidates
            candidates = tl.where(out_mask, rounded.to(tl.float32), float("-inf"))
            programs = tl.num_programs(0)
            tl.store(best_ptr + offs_b * programs + pid, tl.max(candidates, axis=1), mask=mask_b)
            tl.store(best_index_ptr + offs_b * programs + pid, pid * BLOCK_N + tl.argmax(candidates, axis=1),
                     mask=mask_b)

    @triton.jit
    def decode_attention_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, cache_ptr, out_ptr, HEADS, KV_HEADS,
                                cache_batch_stride, cache_head_stride, scale, D: tl.constexpr, BLOCK_S: tl.constexpr):
        row = tl.program_id(0)
        head = tl.program_id(1)
        kv_head = head % KV_HEADS  # query head h reads KV head h % KV_HEADS (the model's layout)
        pos = tl.load(pos_ptr + row)
        dims = tl.arange(0, D)
        partner = dims ^ 1  # the other element of each interleaved RoPE pair
        token = qkv_ptr + row * (HEADS + 2 * KV_HEADS) * D
        cos = tl.load(cos_ptr + pos * D + dims).to(tl.float32)
        sin = tl.load(sin_ptr + pos * D + dims).to(tl.float32)  # (-sin, +sin) per pair
        # the new token's key, rotated, and value: every program of a group computes them in
        # registers; the first one (head < KV_HEADS) also stores them into the cache
        key = token + (HEADS + kv_head) * D
        new_key = tl.load(key + dims).to(tl.float32) * cos + tl.load(key + partner).to(tl.float32) * sin
        new_key = new_key.to(cache_ptr.dtype.element_ty)
        new_value = tl.load(token + (HEADS + KV_HEADS + kv_head) * D + dims)
        keys = cache_ptr + row * cache_batch_stride + kv_head * cache_head_stride
        values = keys + KV_HEADS * cache_head_stride
        if head < KV_HEADS:
            tl.store(keys + pos * D + dims, new_key)
            tl.store(values + pos * D + dims, new_value)
        query = token + head * D
        query = tl.load(query + dims).to(tl.float32) * cos + tl.load(query + partner).to(tl.float32) * sin
        query = query.to(qkv_ptr.dtype.element_ty).to(tl.float32) * scale  # rounded like a stored query
        # online softmax, seeded with the new token itself; the cache is read for positions < pos only
        best = tl.sum(query * new_key.to(tl.float32), axis=0)
        total = best * 0.0 + 1.0
        acc = new_value.to(tl.float32)
        for start in range(0, pos, BLOCK_S):
            slots = start + tl.arange(0, BLOCK_S)
            filled = slots < pos
            at = slots[:, None] * D + dims[None, :]
            cached_keys = tl.load(keys + at, mask=filled[:, None], other=0.0).to(tl.float32)
            cached_values = tl.load(values + at, mask=filled[:, None], other=0.0).to(tl.float32)
            scores = tl.where(filled, tl.sum(query[None, :] * cached_keys, axis=1), float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, axis=0))
            weights = tl.exp(scores - new_best)
            rescale = tl.exp(best - new_best)
            total = total * rescale + tl.sum(weights, axis=0)
            acc = acc * rescale + tl.sum(weights[:, None] * cached_values, axis=0)
            best = new_best
        tl.store(out_ptr + (row * HEADS + head) * D + dims, (acc / total).to(out_ptr.dtype.element_ty))

    return gemv_kernel, decode_attention_kernel


@dataclass(frozen=True)
class GemvConfig:
    """Tile sizes of one :func:`gemv` launch."""

    block_n: int  # weight rows per program
    block_k: int  # weight columns per loop step (the contiguous dimension)
    num_warps: int = 4


def default_config(norm: bool, residual: bool, swiglu: bool, batch: int, argmax: bool = False) -> GemvConfig:
    """The fastest tiles measured per product at batch 1 on an H100 (benchmarks/tune_gemv.py, each
    product timed inside a CUDA graph, weights beyond L2): 1024-wide steps along K, two rows per
    program for the norm-fed QKV and LM head, four for the residual products and SwiGLU. With the
    argmax epilogue the LM head takes eight rows per program: the second-stage argmax over one
    candidate per program (a single-block reduction) took 21 us over 64k candidates, 8 us over 16k."""
    if batch > 1:
        return GemvConfig(block_n=4, block_k=512)
    if argmax:
        return GemvConfig(block_n=8, block_k=1024, num_warps=4)
    if swiglu:
        return GemvConfig(block_n=4, block_k=1024, num_warps=4)
    if residual:
        return GemvConfig(block_n=4, block_k=1024, num_warps=2)
    return GemvConfig(block_n=2, block_k=1024, num_warps=2)


class Argmax:
    """Per-program candidates of a :func:`gemv`'s greedy argmax over its ``n`` outputs."""

    def __init__(self, batch: int, n: int, device):
        import torch

        programs = -(-n // default_config(True, False, False, batch, argmax=True).block_n)
        self.best = torch.empty((batch, programs), device=device, dtype=torch.float32)
        self.index = torch.empty((batch, programs), device=device, dtype=torch.int64)

    def tokens(self):
        """The index of each row's largest output (the first one on a tie, as ``torch.argmax``)."""
        return self.index.gather(1, self.best.argmax(dim=-1, keepdim=True)).squeeze(1)


def _next_power_of_2(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


def gemv(x, weight, out, *, norm_weight=None, eps: float = 1e-5, residual: bool = False, swiglu: bool = False,
         argmax: "Argmax | None" = None, config: GemvConfig | None = None):
    """``out[b] = [out[b] +] act(norm(x[b]) @ weight.T)`` for ``x [batch, K]`` with batch <= MAX_BATCH.

    ``swiglu``: ``weight`` is ``[2 N, K]`` (gate rows, then up rows) and ``out [batch, N]`` receives
    ``silu(gate) * up``. ``residual``: ``out`` is also the residual that the product is added to.
    ``argmax``: each program also records its largest output per row and its index, so the greedy
    token costs a reduction over ``N / block_n`` candidates instead of ``N`` (see :class:`Argmax`).
    """
    import triton

    batch, k = x.shape
    if batch > MAX_BATCH:
        raise ValueError(f"the fused decode kernels serve batch <= {MAX_BATCH}, not {batch}")
    if not (x.is_contiguous() and weight.is_contiguous() and out.is_contiguous()):
        raise ValueError("gemv needs contiguous x, weight and out")
    n = out.shape[1]
    gemv_kernel = _kernels()[0]
    tiles = config or default_config(norm_weight is not None, residual, swiglu, batch, argmax is not None)
    epilogue = EPILOGUE_SWIGLU if swiglu else EPILOGUE_RESIDUAL if residual else EPILOGUE_NONE
    programs = triton.cdiv(n, tiles.block_n)
    if argmax is not None and argmax.best.shape != (batch, programs):
        raise ValueError(f"argmax buffers must be [{batch}, {programs}] for these tiles")
    gemv_kernel[(programs,)](
        x, weight, out, norm_weight if norm_weight is not None else x, out,
        argmax.best if argmax else out, argmax.index if argmax else out, n, k, eps,
        B=batch, BLOCK_B=_next_power_of_2(batch), BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
        NORM=norm_weight is not None, EPILOGUE=epilogue, ARGMAX=argmax is not None, num_warps=tiles.num_warps,
    )
    return out


def decode_attention_(qkv, cos, sin, pos, cache, out, heads: int, kv_heads: int, block_s: int = 128) -> None:
    """One decode step of grouped-query attention, fused: RoPE on the new key and queries, the key
    and value stored into ``cache [batch, 2 kv_heads, max_seq, D]`` at ``pos``, and softmax attention
    of each query over its KV head's positions ``0..pos`` (online softmax over ``block_s`` slots at
    a time; the unfilled rest of the cache is never read). ``out [batch, heads * D]`` gets the
    result in the O projection's input layout. One program per (row, query head): the programs of
    a group each rotate the new key in registers rather than wait for the one that stores it."""
    batch, _, head_dim = qkv.shape
    attention_kernel = _kernels()[1]
    attention_kernel[(batch, heads)](
        qkv, cos, sin, pos, cache, out, heads, kv_heads, cache.stride(0), cache.stride(1), head_dim ** -0.5,
        D=head_dim, BLOCK_S=block_s, num_warps=4,
    )
