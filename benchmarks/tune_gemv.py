"""How fast is each fused decode product of the reference model, per tile configuration, vs cuBLAS?

Run on a GPU (a few minutes, mostly Triton compiles):

    python benchmarks/tune_gemv.py [--shape llama-1b] [--batch 1 16] [--overlap] [--json figures.json]

A wider grid than the tile search that ``kernels: auto`` runs on a new GPU (:mod:`benchlib.llm.tiles`,
``python -m benchlib.llm.tiles``), timed the same way: for every matrix product of one decode layer
(QKV with its RMSNorm, O with the residual add, gate/up with RMSNorm and SwiGLU, down with the
residual add) and the LM head with its greedy argmax and the step end, it times
``benchlib.llm.kernels.gemv`` under each tile configuration and the same product as ``torch.matmul``
(cuBLAS), and prints the weight-read bandwidth of each. Timing is what a decode step sees: many calls
captured in one CUDA graph (so Python's launch cost is not in it), cycling through copies of the
weight so that four times the L2 streams through per replay and the L2 cannot serve them; the
median replay, per call. With ``--overlap`` the calls are launched with programmatic dependent
launch, as the decode step launches them, so each overlaps its predecessor's drain. At batch 1 the
broadcast-and-sum product's grid (2-16 rows x 256-2048 columns x 2-8 warps); above it the
tensor-core product's (16-128 rows x 64-256 columns x 4-8 warps x 3-5 stages). The default
configuration (``kernels.default_config``) is marked.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib.llm import SHAPES  # noqa: E402
from benchlib.llm.kernels import GemvConfig  # noqa: E402
from benchlib.llm.tiles import graph_seconds, make_operands, precompile, product_call, products, replays_for  # noqa: E402

BROADCAST_GRID = tuple(itertools.product((2, 4, 8, 16), (256, 512, 1024, 2048), (2, 4, 8)))
TENSOR_CORE_GRID = tuple(itertools.product((16, 32, 64, 128), (64, 128, 256), (4, 8), (3, 4, 5)))


def grid(batch: int, k: int) -> list[GemvConfig]:
    if batch == 1:
        return [GemvConfig(n, width, warps) for n, width, warps in BROADCAST_GRID
                if n * width <= 16384 * max(1, warps // 4) and width <= k]
    return [GemvConfig(n, width, warps, stages, tensor_cores=True) for n, width, warps, stages in TENSOR_CORE_GRID]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-1b", choices=sorted(set(SHAPES) - {"tiny"}))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--overlap", action="store_true", help="launch with programmatic dependent launch")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    shape, rows = SHAPES[args.shape], []
    l2_bytes = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 64 << 20
    print(f"{torch.cuda.get_device_name()}  {args.shape} bf16; GB/s = weight bytes read / median time"
          f"{'; programmatic dependent launch' if args.overlap else ''}")
    for batch, product in itertools.product(args.batch, products(shape)):
        size = product.weight_bytes("bf16")
        default = product.default(batch, args.overlap)
        ops = make_operands(torch, product, batch, "bf16", "cuda", l2_bytes)
        replays = replays_for(product, ops, "bf16")
        configs = [default] + [c for c in grid(batch, product.k) if c != default]
        precompile(torch, ops, product, configs, args.overlap)
        cublas = graph_seconds(torch, product_call(torch, ops, product, None), ops, replays)
        timings = []
        for config in configs:
            try:
                timings.append((graph_seconds(torch, product_call(torch, ops, product, config, args.overlap), ops,
                                              replays), config))
            except Exception as exc:  # a tile the compiler refuses is skipped, not fatal
                print(f"  {config.describe()}: {type(exc).__name__}")
        best_s, best = min(timings, key=lambda item: item[0])
        default_s = next((t for t, c in timings if c == default), None)
        row = {"batch": batch, "product": product.name, "n": product.n, "k": product.k, "cublas_gbs": size / cublas / 1e9,
               "best_gbs": size / best_s / 1e9, "best": best.describe(),
               "default_gbs": size / default_s / 1e9 if default_s else None, "default": default.describe(),
               "all_gbs": {config.describe(): size / seconds / 1e9 for seconds, config in timings}}
        rows.append(row)
        print(f"b{batch} {product.name:<8} N={product.n:<6} K={product.k:<5} cuBLAS {row['cublas_gbs']:6.0f}  default "
              f"{row['default_gbs'] or 0:6.0f} {default.describe():<14} best {row['best_gbs']:6.0f} {best.describe()}")
        del ops
        torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
