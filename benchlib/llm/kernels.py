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
* :func:`rope_cache_` - RoPE on the query and key heads of the fused QKV output, in place, and the
  new key and value written into the static KV cache at each row's position: one launch.

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
    def gemv_kernel(x_ptr, w_ptr, out_ptr, norm_ptr, res_ptr, N, K, eps,
                    B: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    NORM: tl.constexpr, EPILOGUE: tl.constexpr):
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
        tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=out_mask)

    @triton.jit
    def rope_cache_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, cache_ptr, HEADS, KV_HEADS,
                          cache_batch_stride, cache_head_stride, D: tl.constexpr, HALF: tl.constexpr):
        row = tl.program_id(0)
        head = tl.program_id(1)  # 0..HEADS-1 queries, then KV_HEADS keys, then KV_HEADS values
        pos = tl.load(pos_ptr + row)
        base = qkv_ptr + (row * (HEADS + 2 * KV_HEADS) + head) * D
        pairs = tl.arange(0, HALF)
        even = tl.load(base + 2 * pairs).to(tl.float32)
        odd = tl.load(base + 2 * pairs + 1).to(tl.float32)
        if head < HEADS + KV_HEADS:  # the tables hold cos twice and (-sin, +sin) per pair
            cos = tl.load(cos_ptr + pos * D + 2 * pairs).to(tl.float32)
            sin = tl.load(sin_ptr + pos * D + 2 * pairs + 1).to(tl.float32)
            even, odd = even * cos - odd * sin, odd * cos + even * sin
        if head < HEADS:
            tl.store(base + 2 * pairs, even.to(qkv_ptr.dtype.element_ty))
            tl.store(base + 2 * pairs + 1, odd.to(qkv_ptr.dtype.element_ty))
        else:
            slot = cache_ptr + row * cache_batch_stride + (head - HEADS) * cache_head_stride + pos * D
            tl.store(slot + 2 * pairs, even.to(cache_ptr.dtype.element_ty))
            tl.store(slot + 2 * pairs + 1, odd.to(cache_ptr.dtype.element_ty))

    return gemv_kernel, rope_cache_kernel


@dataclass(frozen=True)
class GemvConfig:
    """Tile sizes of one :func:`gemv` launch."""

    block_n: int  # weight rows per program
    block_k: int  # weight columns per loop step (the contiguous dimension)
    num_warps: int = 4


def default_config(n: int, k: int, batch: int, swiglu: bool) -> GemvConfig:
    """The fastest tiles measured per product on an H100 (benchmarks/tune_gemv.py): narrow
    projections (``n`` <= 4096) want many small programs to cover every SM, the LM head wide ones."""
    if batch > 1:
        return GemvConfig(block_n=4, block_k=512)
    if swiglu:
        return GemvConfig(block_n=8, block_k=512)
    return GemvConfig(block_n=4 if n <= 4096 else 16, block_k=512)


def _next_power_of_2(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


def gemv(x, weight, out, *, norm_weight=None, eps: float = 1e-5, residual: bool = False, swiglu: bool = False,
         config: GemvConfig | None = None):
    """``out[b] = [out[b] +] act(norm(x[b]) @ weight.T)`` for ``x [batch, K]`` with batch <= MAX_BATCH.

    ``swiglu``: ``weight`` is ``[2 N, K]`` (gate rows, then up rows) and ``out [batch, N]`` receives
    ``silu(gate) * up``. ``residual``: ``out`` is also the residual that the product is added to.
    """
    import triton

    batch, k = x.shape
    if batch > MAX_BATCH:
        raise ValueError(f"the fused decode kernels serve batch <= {MAX_BATCH}, not {batch}")
    if not (x.is_contiguous() and weight.is_contiguous() and out.is_contiguous()):
        raise ValueError("gemv needs contiguous x, weight and out")
    n = out.shape[1]
    gemv_kernel, _ = _kernels()
    tiles = config or default_config(n, k, batch, swiglu)
    epilogue = EPILOGUE_SWIGLU if swiglu else EPILOGUE_RESIDUAL if residual else EPILOGUE_NONE
    gemv_kernel[(triton.cdiv(n, tiles.block_n),)](
        x, weight, out, norm_weight if norm_weight is not None else x, out, n, k, eps,
        B=batch, BLOCK_B=_next_power_of_2(batch), BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
        NORM=norm_weight is not None, EPILOGUE=epilogue, num_warps=tiles.num_warps,
    )
    return out


def rope_cache_(qkv, cos, sin, pos, cache, heads: int, kv_heads: int) -> None:
    """RoPE on the query and key heads of ``qkv [batch, heads + 2 kv_heads, D]`` (queries in place),
    and the rotated keys and the values stored into ``cache [batch, 2 kv_heads, max_seq, D]`` at ``pos``."""
    batch, _, head_dim = qkv.shape
    _, rope_cache_kernel = _kernels()
    rope_cache_kernel[(batch, heads + 2 * kv_heads)](
        qkv, cos, sin, pos, cache, heads, kv_heads, cache.stride(0), cache.stride(1),
        D=head_dim, HALF=head_dim // 2, num_warps=1,
    )
