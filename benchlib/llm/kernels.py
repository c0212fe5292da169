"""Fused Triton kernels for the reference decoder's decode step at batch 1 to 64 (``kernels: triton``).

At batch 1 a decode step reads every weight once and does almost no arithmetic, so its time is the
bytes it streams plus a fixed cost per kernel. The plain-PyTorch step runs about 15 kernels per
layer (norms, RoPE's three element-wise passes, the cache write, SiLU and the multiply, each its
own launch); these kernels fold them into the matrix-vector products around them:

* :func:`gemv` - ``out = [res +] act(norm(x) @ W.T)``: RMSNorm as a prologue (each program
  recomputes the row's RMS from ``x``, a few KiB read from L2), SwiGLU (``silu(gate) * up``, the
  gate and up rows of the fused ``gate_up`` weight) or a residual add as the epilogue. The weight
  is streamed once in ``[BLOCK_N, BLOCK_K]`` tiles along its contiguous dimension; the batch rows
  share every tile. At batch 1 the product is broadcast-and-sum on the CUDA cores; above it (to
  :data:`MAX_BATCH`) it runs on tensor cores (``tl.dot``): the weight tile is the dot's M side
  and the batch, padded to 16, 32 or 64 rows, its N side, pipelined over K (``num_stages``), the
  RMS gathered from the same input tiles and applied to the accumulator. Tiles per GPU:
  :mod:`benchlib.llm.tiles`.
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
interpreter (``TRITON_INTERPRET=1``) and compile them for sm_90 (:func:`compile_kernel`) to check
the overlap's order in the PTX. :func:`compile_problem` tells, before a case chooses them, whether
they compile for a GPU at all (Triton's bundled ptxas has rejected new GPUs).
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Any

#: Largest batch the fused path serves: the tensor-core product pads the batch to 16, 32 or 64 rows.
MAX_BATCH = 64
#: Largest batch the broadcast-and-sum product (:func:`gemv` without tensor cores) serves: its batch
#: rows live in registers next to each weight tile. Measured on an H100 (benchmarks/tune_gemv.py), at
#: batch 8 it read weights at 130-590 GB/s where cuBLAS reached 820-2600 GB/s: batches above 1 use
#: the tensor-core product, and ``kernels: auto`` takes it where the tile search measured it faster
#: than cuBLAS (:mod:`benchlib.llm.tiles`).
MAX_BROADCAST_BATCH = 8
#: The tensor-core product's smallest batch tile: ``tl.dot`` needs every side >= 16.
MIN_DOT_ROWS = 16
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
#: Candidates the step end holds at once (rows x chunk): one chunk of 16k at batch 1.
FINISH_STEP_ELEMENTS = 16384


def available() -> str | None:
    """None when Triton can be imported, else why not (one sentence)."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"Triton is not importable ({exc}); use kernels: torch or install triton"
    return None


def interpreting() -> bool:
    """Whether Triton's interpreter runs the kernels (``TRITON_INTERPRET=1``, the CPU tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def overlap_unavailable(device) -> str | None:
    """None when the kernels can overlap on ``device`` through programmatic dependent launch, else why not."""
    missing = available()
    if missing:
        return missing
    if interpreting():
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
def _kernels() -> tuple[Any, Any, Any, Any, Any]:
    """Compile-on-first-use: importing this module must not need Triton."""
    from . import _triton_kernels as source

    return (source.gemv_kernel, source.decode_attention_kernel, source.combine_splits_kernel,
            source.finish_step_kernel, source.gemm_kernel)


@dataclass(frozen=True)
class GemvConfig:
    """Tile sizes of one :func:`gemv` launch."""

    block_n: int  # weight rows per program
    block_k: int  # weight columns per loop step (the contiguous dimension)
    num_warps: int = 4
    num_stages: int | None = None  # software-pipeline depth (None: Triton's default)
    tensor_cores: bool = False  # the batched product on tensor cores (tl.dot) instead of broadcast-and-sum

    def describe(self) -> str:
        """``8x2048w2``; ``tc64x128w4s4`` for the tensor-core product."""
        stages = f"s{self.num_stages}" if self.num_stages else ""
        return f"{'tc' if self.tensor_cores else ''}{self.block_n}x{self.block_k}w{self.num_warps}{stages}"

    @classmethod
    def parse(cls, text: str) -> "GemvConfig":
        """The inverse of :meth:`describe`."""
        match = re.fullmatch(r"(tc)?(\d+)x(\d+)w(\d+)(?:s(\d+))?", text)
        if not match:
            raise ValueError(f"{text!r} is not a tile description like 8x2048w2 or tc64x128w4s4")
        tensor_cores, block_n, block_k, warps, stages = match.groups()
        return cls(int(block_n), int(block_k), int(warps), int(stages) if stages else None, bool(tensor_cores))


def default_config(norm: bool, residual: bool, swiglu: bool, batch: int, argmax: bool = False,
                   overlap: bool = False) -> GemvConfig:
    """The tiles used where no measured choice exists (:mod:`benchlib.llm.tiles` measures one per
    GPU). At batch 1, the fastest tiles measured per product on an H100 (benchmarks/tune_gemv.py,
    each product timed inside a CUDA graph, weights beyond L2).

    With ``overlap`` (``tune_gemv.py --overlap``), 2048-wide steps along K: at the 1B shape's
    K = 2048 a program's whole weight slice is in flight before it waits for its input, which took
    the products from 1.45-2.98 TB/s to 1.85-3.07 TB/s; eight rows per program for QKV, four for
    the residual products, two for SwiGLU (whose rows come in gate/up pairs). Without overlap,
    1024-wide steps, two rows per program for the norm-fed QKV and LM head, four for the residual
    products and SwiGLU. With the argmax epilogue the LM head takes eight rows per program: the
    second-stage argmax over one candidate per program (a single-block reduction) took 21 us over
    64k candidates, 8 us over 16k. Above batch 1, the tensor-core product with 64 weight rows and
    128 columns per step, four stages deep (not measured: the search replaces it)."""
    if batch > 1:
        return GemvConfig(block_n=64, block_k=128, num_warps=4, num_stages=4, tensor_cores=True)
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


def dot_rows(batch: int) -> int:
    """The tensor-core product's batch tile: ``batch`` rounded up to a power of two, at least 16."""
    return max(MIN_DOT_ROWS, _next_power_of_2(batch))


def gemv(x, weight, out, *, norm_weight=None, eps: float = 1e-5, residual: bool = False, swiglu: bool = False,
         argmax: "Argmax | None" = None, config: GemvConfig | None = None, overlap: bool = False,
         warmup: bool = False):
    """``out[b] = [out[b] +] act(norm(x[b]) @ weight.T)`` for ``x [batch, K]``.

    ``swiglu``: ``weight`` is ``[2 N, K]`` (gate rows, then up rows) and ``out [batch, N]`` receives
    ``silu(gate) * up``. ``residual``: ``out`` is also the residual that the product is added to.
    ``argmax``: each program also records its largest output per row and its index, so the greedy
    token costs a reduction over ``N / block_n`` candidates instead of ``N`` (see :class:`Argmax`).
    ``overlap``: launch with programmatic dependent launch (see the module's docstring): the weight is
    read before the kernel waits for the previous one, so no kernel still running may write it.
    ``config.tensor_cores``: the tensor-core product (batch <= :data:`MAX_BATCH`), else
    broadcast-and-sum (batch <= :data:`MAX_BROADCAST_BATCH`). ``warmup``: compile, launch nothing.
    """
    import triton

    batch, k = x.shape
    if not (x.is_contiguous() and weight.is_contiguous() and out.is_contiguous()):
        raise ValueError("gemv needs contiguous x, weight and out")
    n = out.shape[1]
    tiles = config or (argmax.config if argmax is not None else
                       default_config(norm_weight is not None, residual, swiglu, batch, overlap=overlap))
    limit = MAX_BATCH if tiles.tensor_cores else MAX_BROADCAST_BATCH
    if batch > limit:
        raise ValueError(f"the fused decode kernels serve batch <= {limit} with tiles {tiles.describe()}, not {batch}")
    epilogue = EPILOGUE_SWIGLU if swiglu else EPILOGUE_RESIDUAL if residual else EPILOGUE_NONE
    programs = triton.cdiv(n, tiles.block_n)
    if argmax is not None and argmax.best.shape != (batch, programs):
        raise ValueError(f"argmax buffers must be [{batch}, {programs}] for these tiles")
    arguments = (x, weight, out, norm_weight if norm_weight is not None else x, out,
                 argmax.best if argmax else out, argmax.index if argmax else out, n, k, eps)
    options = {"num_warps": tiles.num_warps, **_launch_options(overlap)}
    if tiles.num_stages:
        options["num_stages"] = tiles.num_stages
    common = dict(B=batch, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, NORM=norm_weight is not None,
                  EPILOGUE=epilogue, ARGMAX=argmax is not None, OVERLAP=overlap)
    if tiles.tensor_cores:
        import torch

        exact = x.dtype == torch.float32 or interpreting()  # see _triton_kernels.mma
        _launch(_kernels()[4], (programs,), warmup, *arguments, BLOCK_B=dot_rows(batch), IEEE=exact, **common,
                **options)
    else:
        _launch(_kernels()[0], (programs,), warmup, *arguments, BLOCK_B=_next_power_of_2(batch), **common, **options)
    return out


def _launch(kernel, grid: tuple[int, ...], warmup: bool, *args, **kwargs) -> None:
    """``kernel[grid](...)``, or with ``warmup`` only its compilation (Triton's ``JITFunction.warmup``)."""
    if warmup:
        kernel.warmup(*args, grid=grid, **kwargs)
    else:
        kernel[grid](*args, **kwargs)


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
    _, attention_kernel, combine_kernel, *_ = _kernels()
    attention_kernel[(heads, batch, splits)](
        qkv, cos, sin, pos, cache, out, out if partials is None else partials, heads, kv_heads, cache.stride(0),
        cache.stride(1), head_dim ** -0.5, split_len, D=head_dim, BLOCK_S=block_s, SPLITS=splits, OVERLAP=overlap,
        num_warps=4, **_launch_options(overlap),
    )
    if splits > 1:
        combine_kernel[(heads, batch)](
            partials, out, heads, D=head_dim, SPLITS=splits, BLOCK_SPLITS=_next_power_of_2(splits), OVERLAP=overlap,
            num_warps=2, **_launch_options(overlap),
        )


def finish_step_(argmax: Argmax, tokens, pos, step, out, overlap: bool = False, warmup: bool = False) -> None:
    """The end of a greedy decode step, in one launch: each row's token is the candidate of
    ``argmax`` with the largest value (the first on a tie, as ``torch.argmax``); it is stored into
    ``out[row, step]`` (when ``step`` is within ``out``: graph capture's warm-up may step past a
    short output) and ``tokens[row]``, ``pos[row]`` advances by one and ``step`` by one."""
    batch, programs = argmax.best.shape
    rows = _next_power_of_2(batch)
    chunk = min(_next_power_of_2(programs), max(256, FINISH_STEP_ELEMENTS // rows))
    _launch(_kernels()[3], (1,), warmup, argmax.best, argmax.index, programs, tokens, pos, step, out, out.stride(0),
            out.shape[1], B=batch, BLOCK_B=rows, BLOCK_P=chunk, OVERLAP=overlap, num_warps=8,
            **_launch_options(overlap))


# --------------------------------------------------------------------------- compiling without a launch

#: Argument types of each kernel for ``triton.compile`` (``{dtype}``: the model's element type).
_PRODUCT_SIGNATURE = {"x_ptr": "*{dtype}", "w_ptr": "*{dtype}", "out_ptr": "*{dtype}", "norm_ptr": "*{dtype}",
                      "res_ptr": "*{dtype}", "best_ptr": "*fp32", "best_index_ptr": "*i64", "N": "i32", "K": "i32",
                      "eps": "fp32"}
SIGNATURES = {
    "gemv_kernel": _PRODUCT_SIGNATURE,
    "gemm_kernel": _PRODUCT_SIGNATURE,
    "decode_attention_kernel": {
        "qkv_ptr": "*{dtype}", "cos_ptr": "*{dtype}", "sin_ptr": "*{dtype}", "pos_ptr": "*i64", "cache_ptr": "*{dtype}",
        "out_ptr": "*{dtype}", "partial_ptr": "*fp32", "HEADS": "i32", "KV_HEADS": "i32", "cache_batch_stride": "i32",
        "cache_head_stride": "i32", "scale": "fp32", "SPLIT_LEN": "i32"},
    "combine_splits_kernel": {"partial_ptr": "*fp32", "out_ptr": "*{dtype}", "HEADS": "i32"},
    "finish_step_kernel": {"best_ptr": "*fp32", "best_index_ptr": "*i64", "programs": "i32", "tokens_ptr": "*i64",
                           "pos_ptr": "*i64", "step_ptr": "*i64", "out_ptr": "*i64", "out_stride": "i32",
                           "out_len": "i32"},
}
_TRITON_TYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}
_ALIGNED_SIZES = ("N", "K")


def compile_kernel(name: str, dtype: str, constexprs: dict[str, Any], target, num_warps: int, overlap: bool,
                   num_stages: int | None = None, aligned: bool = False):
    """``triton.compile`` of the kernel ``name`` of :mod:`._triton_kernels` for ``target`` (a Triton
    ``GPUTarget``), as a launch with these constexprs would compile it; no GPU needed. ``aligned``:
    specialised as a launch with 16-byte-aligned pointers and N, K divisible by 16 is (vector loads,
    asynchronous copies)."""
    import triton
    from triton.compiler import ASTSource

    from . import _triton_kernels as source

    kernel = getattr(source, name)
    signature = {arg: kind.format(dtype=_TRITON_TYPES[dtype]) for arg, kind in SIGNATURES[name].items()}
    attrs = {(kernel.arg_names.index(arg),): [["tt.divisibility", 16]] for arg, kind in signature.items()
             if aligned and (kind.startswith("*") or arg in _ALIGNED_SIZES)}
    signature.update({arg: "constexpr" for arg in constexprs})
    options: dict[str, Any] = {"num_warps": num_warps, **_launch_options(overlap)}
    if num_stages:
        options["num_stages"] = num_stages
    return triton.compile(ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs), target=target,
                          options=options)


def device_target(torch_device):
    """The Triton compile target of a CUDA device (its compute capability)."""
    import torch
    from triton.backends.compiler import GPUTarget

    major, minor = torch.cuda.get_device_capability(torch.device(torch_device))
    return GPUTarget("cuda", 10 * major + minor, 32)


def compile_problem(target, dtype: str, tensor_cores: bool, overlap: bool) -> str | None:
    """None when every kernel of the fused decode step compiles for ``target``; else why not, in one
    sentence. (Triton's bundled ptxas, for one, rejects sm_121a, DGX Spark's GB10: Triton issue 8539.)"""
    rows = MIN_DOT_ROWS if tensor_cores else 1
    product = "gemm_kernel" if tensor_cores else "gemv_kernel"
    exact = {"IEEE": dtype == "fp32"} if tensor_cores else {}
    probes = []
    for swiglu, argmax in ((True, False), (False, True)):
        tiles = default_config(True, False, swiglu, rows, argmax, overlap)
        probes.append((product, dict(B=rows, BLOCK_B=rows, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, NORM=True,
                                     EPILOGUE=EPILOGUE_SWIGLU if swiglu else EPILOGUE_NONE, ARGMAX=argmax,
                                     OVERLAP=overlap, **exact), tiles.num_warps, tiles.num_stages))
    probes += [
        ("decode_attention_kernel", dict(D=64, BLOCK_S=128, SPLITS=2, OVERLAP=overlap), 4, None),
        ("combine_splits_kernel", dict(D=64, SPLITS=2, BLOCK_SPLITS=2, OVERLAP=overlap), 2, None),
        ("finish_step_kernel", dict(B=rows, BLOCK_B=rows, BLOCK_P=1024, OVERLAP=overlap), 8, None),
    ]
    for name, constexprs, warps, stages in probes:
        try:
            compile_kernel(name, dtype, constexprs, target, warps, overlap, stages, aligned=True)
        except Exception as exc:  # noqa: BLE001 - whatever the compiler raises, the answer is "not here"
            cause = error_cause(exc)
            advice = ("; a ptxas that knows this GPU (CUDA toolkit's, through TRITON_PTXAS_PATH) may fix it"
                      if "ptxas" in cause.lower() else "")
            return f"Triton {_triton_version()} could not compile the fused kernels for sm_{target.arch} ({cause}){advice}"
    return None


def error_cause(exc: BaseException) -> str:
    """The line of a compiler error that says what went wrong (ptxas's "fatal" line where there is one)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = next((line for line in lines if "fatal" in line.lower()), lines[0] if lines else "")
    text = f"{type(exc).__name__}: {telling}" if telling else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _triton_version() -> str:
    import triton

    return triton.__version__
