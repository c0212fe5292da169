"""How fast is each fused decode GEMV of the reference model, per tile configuration, vs cuBLAS?

Run on a GPU (about 1-2 minutes on an H100, mostly Triton compiles):

    python benchmarks/tune_gemv.py [--shape llama-1b] [--batch 1 8] [--json figures.json]

For every matrix-vector product of one decode layer (QKV with its RMSNorm, O with the residual add,
gate/up with RMSNorm and SwiGLU, down with the residual add) and the LM head, it times
``benchlib.llm.kernels.gemv`` under each tile configuration with ``triton.testing.do_bench``
(median, L2 not flushed: the weights are 8-525 MB, far beyond the 50 MB L2) and the same product
as ``torch.matmul`` (cuBLAS), and prints the weight-read bandwidth of each. The default
configuration (``kernels.default_config``) is marked; the best one per product is what to set it to.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib.llm import SHAPES  # noqa: E402
from benchlib.llm.kernels import GemvConfig, default_config, gemv  # noqa: E402

BLOCK_N, BLOCK_K, WARPS = (4, 8, 16), (64, 128, 256, 512), (4, 8)


def products(shape) -> list[tuple[str, int, int, dict]]:
    """(name, output rows N, K, gemv keyword arguments) of one layer and the head."""
    qkv = (shape.heads + 2 * shape.kv_heads) * shape.head_dim
    return [
        ("qkv+norm", qkv, shape.hidden, {"norm": True}),
        ("o+residual", shape.hidden, shape.heads * shape.head_dim, {"residual": True}),
        ("gate_up+norm+swiglu", shape.intermediate, shape.hidden, {"norm": True, "swiglu": True}),
        ("down+residual", shape.hidden, shape.intermediate, {"residual": True}),
        ("lm_head+norm", shape.vocab, shape.hidden, {"norm": True}),
    ]


def time_product(torch, do_bench, batch: int, n: int, k: int, flags: dict, config: GemvConfig | None) -> float:
    rows = 2 * n if flags.get("swiglu") else n
    weight = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16) * 0.02
    x = torch.randn(batch, k, device="cuda", dtype=torch.bfloat16)
    out = torch.zeros(batch, n, device="cuda", dtype=torch.bfloat16)
    norm = torch.ones(k, device="cuda", dtype=torch.bfloat16) if flags.get("norm") else None
    if config is None:
        wide = torch.empty(batch, rows, device="cuda", dtype=torch.bfloat16)
        return do_bench(lambda: torch.matmul(x, weight.t(), out=wide), return_mode="median") / 1e3
    call = lambda: gemv(x, weight, out, norm_weight=norm, residual=flags.get("residual", False),  # noqa: E731
                        swiglu=flags.get("swiglu", False), config=config)
    return do_bench(call, return_mode="median") / 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-1b", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch
    from triton.testing import do_bench

    shape, rows = SHAPES[args.shape], []
    print(f"{torch.cuda.get_device_name()}  {args.shape} bf16; GB/s = weight bytes read / median time")
    for batch, (name, n, k, flags) in itertools.product(args.batch, products(shape)):
        weight_bytes = (2 * n if flags.get("swiglu") else n) * k * 2
        default = default_config(n, k, batch, bool(flags.get("swiglu")))
        cublas = time_product(torch, do_bench, batch, n, k, flags, None)
        timings = []
        for block_n, block_k, warps in itertools.product(BLOCK_N, BLOCK_K, WARPS):
            if batch * block_n * block_k > 16384:  # the product tile would spill registers
                continue
            config = GemvConfig(block_n, block_k, warps)
            try:
                timings.append((time_product(torch, do_bench, batch, n, k, flags, config), config))
            except Exception as exc:  # a tile the compiler refuses is skipped, not fatal
                print(f"  {config}: {type(exc).__name__}")
        best_s, best = min(timings, key=lambda item: item[0])
        default_s = next((t for t, c in timings if c == default), None)
        row = {"batch": batch, "product": name, "n": n, "k": k, "cublas_gbs": weight_bytes / cublas / 1e9,
               "best_gbs": weight_bytes / best_s / 1e9, "best": best.__dict__,
               "default_gbs": weight_bytes / default_s / 1e9 if default_s else None, "default": default.__dict__}
        rows.append(row)
        print(f"b{batch} {name:<22} N={n:<6} K={k:<5} cuBLAS {row['cublas_gbs']:6.0f}  default "
              f"{row['default_gbs'] or 0:6.0f} {default}  best {row['best_gbs']:6.0f} {best}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
