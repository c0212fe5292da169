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
  queries over the filled part of the cache (online softmax, one program per query head and 128
  positions, then a launch that merges their states): where the PyTorch step runs five
  element-wise kernels, a mask and SDPA over the whole cache.
* :func:`finish_step_` - the step's bookkeeping in one launch: the second stage of the LM head's
  greedy argmax, the token stored into the output and fed back, each row's position and the step
  counter advanced (six small PyTorch kernels otherwise).

**Overlap** (``overlap=True``, :func:`overlap_unavailable`): on Hopper and newer GPUs the kernels are
launched with programmatic dependent launch. A kernel may then start while the one before it
drains; it first reads what no earlier kernel of the step writes (the first tile of its weights;
for attention the position, the RoPE row and the first block of the cache), then waits
(``griddepcontrol.wait``: the previous kernel has completed and its writes are visible) and only
then reads activations or writes anything. Each kernel lets its successor launch once all its
programs are past their own wait, so a kernel never starts before the one two back has finished.
A decode step's 5 kernels per layer are 4-30 us each, and a fixed ramp-up and drain per kernel is a
large part of that; overlap hides it behind the neighbour.

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
#: Cache positions per attention program: one 128-slot block, read before the program waits for
#: the QKV product; the programs' softmax states are then merged by a second launch. Measured on an
#: H100 (benchmarks/attention_split.py, 1B shape, batch 1, mean step in ms):
#:
#:   in / out     split 128   256     512     one program per head
#:   128 / 256    1.064       1.123   1.115   1.116
#:   512 / 128    1.077       1.142   1.288   1.302
#:   2048 / 512   1.141       1.165   1.320   2.340
ATTENTION_SPLIT_LEN = 128
#: At most this many splits per query head: the merge holds every split's state in registers.
MAX_ATTENTION_SPLITS = 64


def available() -> str | None:
    """None when Triton can be imported, else why not (one sentence)."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"Triton is not importable ({exc}); use kernels: torch or install triton"
    return None


def overlap_unavailable(device) -> str | None:
    """None when the kernels can overlap on ``device`` through programmatic dependent launch, else why not."""
    import os

    missing = available()
    if missing:
        return missing
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "Triton's interpreter runs kernels one after another"
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: F401
    except ImportError:
        return "this Triton has no grid dependency control (needs Triton >= 3.3)"
    if "launch_pdl" not in CUDAOptions.__dataclass_fields__:
        return "this Triton cannot launch with programmatic dependent launch"
    import torch

    device = torch.device(device)
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        return "programmatic dependent launch needs a Hopper (sm_90) or newer NVIDIA GPU"
    return None


@functools.lru_cache(maxsize=1)
def _kernels() -> tuple[Any, Any, Any, Any]:
    """Compile-on-first-use: importing this module must not need Triton."""
    from . import _triton_kernels as source

    return source.gemv_kernel, source.decode_attention_kernel, source.combine_splits_kernel, source.finish_step_kernel


@dataclass(frozen=True)
class GemvConfig:
    """Tile sizes of one :func:`gemv` launch."""

    block_n: int  # weight rows per program
    block_k: int  # weight columns per loop step (the contiguous dimension)
    num_warps: int = 4


def default_config(norm: bool, residual: bool, swiglu: bool, batch: int, argmax: bool = False,
                   overlap: bool = False) -> GemvConfig:
    """The fastest tiles measured per product at batch 1 on an H100 (benchmarks/tune_gemv.py, each
    product timed inside a CUDA graph, weights beyond L2).

    With ``overlap`` (``tune_gemv.py --overlap``), 2048-wide steps along K: at the 1B shape's
    K = 2048 a program's whole weight slice is in flight before it waits for its input, which took
    the products from 1.45-2.98 TB/s to 1.85-3.07 TB/s; eight rows per program for QKV, four for
    the residual products, two for SwiGLU (whose rows come in gate/up pairs). Without overlap,
    1024-wide steps, two rows per program for the norm-fed QKV and LM head, four for the residual
    products and SwiGLU. With the argmax epilogue the LM head takes eight rows per program: the
    second-stage argmax over one candidate per program (a single-block reduction) took 21 us over
    64k candidates, 8 us over 16k."""
    if batch > 1:
        return GemvConfig(block_n=4, block_k=512)
    block_k = 2048 if overlap else 1024
    if argmax:
        return GemvConfig(block_n=8, block_k=block_k, num_warps=4)
    if swiglu:
        return GemvConfig(block_n=2, block_k=2048, num_warps=2) if overlap else GemvConfig(4, 1024, 4)
    if residual:
        return GemvConfig(block_n=4, block_k=block_k, num_warps=4 if overlap else 2)
    return GemvConfig(block_n=8 if overlap else 2, block_k=block_k, num_warps=2)


class Argmax:
    """Per-program candidates of a :func:`gemv`'s greedy argmax over its ``n`` outputs, for the
    LM head's tiles ``config`` (one candidate per ``config.block_n`` outputs and row)."""

    def __init__(self, batch: int, n: int, device, config: GemvConfig):
        import torch

        self.config = config
        programs = -(-n // config.block_n)
        self.best = torch.empty((batch, programs), device=device, dtype=torch.float32)
        self.index = torch.empty((batch, programs), device=device, dtype=torch.int64)


def _next_power_of_2(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


def _launch_options(overlap: bool) -> dict[str, bool]:
    """``launch_pdl`` only where asked: older Tritons and the interpreter do not know the option."""
    return {"launch_pdl": True} if overlap else {}


def gemv(x, weight, out, *, norm_weight=None, eps: float = 1e-5, residual: bool = False, swiglu: bool = False,
         argmax: "Argmax | None" = None, config: GemvConfig | None = None, overlap: bool = False):
    """``out[b] = [out[b] +] act(norm(x[b]) @ weight.T)`` for ``x [batch, K]`` with batch <= MAX_BATCH.

    ``swiglu``: ``weight`` is ``[2 N, K]`` (gate rows, then up rows) and ``out [batch, N]`` receives
    ``silu(gate) * up``. ``residual``: ``out`` is also the residual that the product is added to.
    ``argmax``: each program also records its largest output per row and its index, so the greedy
    token costs a reduction over ``N / block_n`` candidates instead of ``N`` (see :class:`Argmax`).
    ``overlap``: launch with programmatic dependent launch (see the module's docstring): the weight is
    read before the kernel waits for the previous one, so no kernel still running may write it.
    """
    import triton

    batch, k = x.shape
    if batch > MAX_BATCH:
        raise ValueError(f"the fused decode kernels serve batch <= {MAX_BATCH}, not {batch}")
    if not (x.is_contiguous() and weight.is_contiguous() and out.is_contiguous()):
        raise ValueError("gemv needs contiguous x, weight and out")
    n = out.shape[1]
    gemv_kernel = _kernels()[0]
    tiles = config or (argmax.config if argmax is not None else
                       default_config(norm_weight is not None, residual, swiglu, batch, overlap=overlap))
    epilogue = EPILOGUE_SWIGLU if swiglu else EPILOGUE_RESIDUAL if residual else EPILOGUE_NONE
    programs = triton.cdiv(n, tiles.block_n)
    if argmax is not None and argmax.best.shape != (batch, programs):
        raise ValueError(f"argmax buffers must be [{batch}, {programs}] for these tiles")
    gemv_kernel[(programs,)](
        x, weight, out, norm_weight if norm_weight is not None else x, out,
        argmax.best if argmax else out, argmax.index if argmax else out, n, k, eps,
        B=batch, BLOCK_B=_next_power_of_2(batch), BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
        NORM=norm_weight is not None, EPILOGUE=epilogue, ARGMAX=argmax is not None, OVERLAP=overlap,
        num_warps=tiles.num_warps, **_launch_options(overlap),
    )
    return out


def attention_split_len(max_seq: int) -> int:
    """:data:`ATTENTION_SPLIT_LEN`, or the multiple of it that keeps a ``max_seq``-slot cache within
    :data:`MAX_ATTENTION_SPLITS` splits."""
    return ATTENTION_SPLIT_LEN * -(-max_seq // (ATTENTION_SPLIT_LEN * MAX_ATTENTION_SPLITS))


def attention_splits(max_seq: int, split_len: int = ATTENTION_SPLIT_LEN) -> int:
    """How many position ranges :func:`decode_attention_` splits a ``max_seq``-slot cache into."""
    return -(-max_seq // split_len)


def decode_attention_(qkv, cos, sin, pos, cache, out, heads: int, kv_heads: int, *, partials=None,
                      split_len: int = ATTENTION_SPLIT_LEN, block_s: int = 128, overlap: bool = False) -> None:
    """One decode step of grouped-query attention, fused: RoPE on the new key and queries, the key
    and value stored into ``cache [batch, 2 kv_heads, max_seq, D]`` at ``pos``, and softmax attention
    of each query over its KV head's positions ``0..pos`` (online softmax over ``block_s`` slots at
    a time; the unfilled rest of the cache is never read). ``out [batch, heads * D]`` gets the
    result in the O projection's input layout. The programs of a query group each rotate the new key
    in registers rather than wait for the one that stores it.

    Long contexts (flash-decoding): with ``partials`` (fp32 ``[batch, heads, splits, D + 2]``,
    ``splits = attention_splits(max_seq, split_len)``, at most :data:`MAX_ATTENTION_SPLITS`) each
    (row, head) gets one program per ``split_len`` positions, which leave their softmax states
    there, and a second launch merges them; without, one program per (row, head) walks all
    positions. ``overlap``: launch with programmatic dependent launch. Each program reads ``pos``,
    the RoPE row and its first ``block_s`` cache slots before waiting for the previous kernel, so
    that kernel must not write them (in the decode step it is the QKV product)."""
    batch, _, head_dim = qkv.shape
    if split_len % block_s:
        raise ValueError(f"split_len ({split_len}) must be a multiple of block_s ({block_s})")
    splits = 1 if partials is None else partials.shape[2]
    if partials is not None:
        expected = (batch, heads, attention_splits(cache.shape[2], split_len), head_dim + 2)
        if tuple(partials.shape) != expected or not partials.is_contiguous() or splits > MAX_ATTENTION_SPLITS:
            raise ValueError(f"partials must be contiguous {list(expected)} with at most {MAX_ATTENTION_SPLITS} "
                             f"splits, not {list(partials.shape)}")
    _, attention_kernel, combine_kernel, _ = _kernels()
    attention_kernel[(batch, heads, splits)](
        qkv, cos, sin, pos, cache, out, out if partials is None else partials, heads, kv_heads, cache.stride(0),
        cache.stride(1), head_dim ** -0.5, split_len, D=head_dim, BLOCK_S=block_s, SPLITS=splits, OVERLAP=overlap,
        num_warps=4, **_launch_options(overlap),
    )
    if splits > 1:
        combine_kernel[(batch, heads)](
            partials, out, heads, D=head_dim, SPLITS=splits, BLOCK_SPLITS=_next_power_of_2(splits), OVERLAP=overlap,
            num_warps=2, **_launch_options(overlap),
        )


def finish_step_(argmax: Argmax, tokens, pos, step, out, overlap: bool = False) -> None:
    """The end of a greedy decode step, in one launch: each row's token is the candidate of
    ``argmax`` with the largest value (the first on a tie, as ``torch.argmax``); it is stored into
    ``out[row, step]`` (when ``step`` is within ``out``: graph capture's warm-up may step past a
    short output) and ``tokens[row]``, ``pos[row]`` advances by one and ``step`` by one."""
    batch, programs = argmax.best.shape
    finish_step_kernel = _kernels()[3]
    finish_step_kernel[(1,)](
        argmax.best, argmax.index, programs, tokens, pos, step, out, out.stride(0), out.shape[1],
        B=batch, BLOCK_P=_next_power_of_2(programs), OVERLAP=overlap, num_warps=8, **_launch_options(overlap),
    )
