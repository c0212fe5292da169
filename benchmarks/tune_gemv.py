"""How fast is each fused decode GEMV of the reference model, per tile configuration, vs cuBLAS?

Run on a GPU (about 1-2 minutes on an H100, mostly Triton compiles):

    python benchmarks/tune_gemv.py [--shape llama-1b] [--batch 1 8] [--json figures.json]

For every matrix-vector product of one decode layer (QKV with its RMSNorm, O with the residual add,
gate/up with RMSNorm and SwiGLU, down with the residual add) and the LM head, it times
``benchlib.llm.kernels.gemv`` under each tile configuration and the same product as
``torch.matmul`` (cuBLAS), and prints the weight-read bandwidth of each. Timing is what a decode
step sees: many calls captured in one CUDA graph (so Python's launch cost is not in it), each on
its own copy of the weight so that 256 MB or more stream through and the 50 MB L2 cannot serve
them; the median of 10 replays, per call. With ``--overlap`` the calls are launched with
programmatic dependent launch, as the decode step launches them, so each overlaps its
predecessor's drain (consecutive calls are the same product here, other products in the step). The default
configuration (``kernels.default_config``) is marked; the best one per product is what to set it to.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib.llm import SHAPES  # noqa: E402
from benchlib.llm.kernels import Argmax, GemvConfig, default_config, finish_step_, gemv  # noqa: E402

BLOCK_N, BLOCK_K, WARPS = (2, 4, 8, 16), (256, 512, 1024, 2048), (2, 4, 8)
STREAM_BYTES = 256 << 20  # weight bytes streamed per replay: over 5x an H100's L2


def products(shape) -> list[tuple[str, int, int, dict]]:
    """(name, output rows N, K, gemv keyword arguments) of one layer and the head."""
    qkv = (shape.heads + 2 * shape.kv_heads) * shape.head_dim
    return [
        ("qkv+norm", qkv, shape.hidden, {"norm": True}),
        ("o+residual", shape.hidden, shape.heads * shape.head_dim, {"residual": True}),
        ("gate_up+norm+swiglu", shape.intermediate, shape.hidden, {"norm": True, "swiglu": True}),
        ("down+residual", shape.hidden, shape.intermediate, {"residual": True}),
        ("lm_head+norm", shape.vocab, shape.hidden, {"norm": True}),
        ("lm_head+norm+argmax", shape.vocab, shape.hidden, {"norm": True, "argmax": True}),
    ]


def graph_seconds(torch, calls: list) -> float:
    """Median seconds per call of ``calls`` captured in one CUDA graph (10 replays)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls[:2]:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / len(calls))
    return statistics.median(times)


def make_operands(torch, batch: int, n: int, k: int, flags: dict) -> dict:
    rows = 2 * n if flags.get("swiglu") else n
    copies = max(2, -(-STREAM_BYTES // (rows * k * 2)))
    return {
        "weights": [torch.randn(rows, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)],
        "x": torch.randn(batch, k, device="cuda", dtype=torch.bfloat16),
        "out": torch.zeros(batch, n, device="cuda", dtype=torch.bfloat16),
        "wide": torch.empty(batch, rows, device="cuda", dtype=torch.bfloat16),
        "norm": torch.ones(k, device="cuda", dtype=torch.bfloat16) if flags.get("norm") else None,
        # the greedy token's bookkeeping (finish_step_): tokens, positions, step counter, outputs
        "step_buffers": (torch.zeros(batch, dtype=torch.long, device="cuda"),
                         torch.zeros(batch, dtype=torch.long, device="cuda"),
                         torch.zeros(1, dtype=torch.long, device="cuda"),
                         torch.zeros(batch, 1 << 16, dtype=torch.long, device="cuda")),
    }


def time_product(torch, ops: dict, flags: dict, config: GemvConfig | None, overlap: bool = False) -> float:
    """Seconds per product; with ``argmax`` it includes the greedy token (cuBLAS: ``torch.argmax``)."""
    x, out, greedy = ops["x"], ops["out"], flags.get("argmax", False)
    if config is None:
        def call(w):
            torch.matmul(x, w.t(), out=ops["wide"])
            if greedy:
                ops["wide"].argmax(dim=-1)
    else:
        argmax = Argmax(x.shape[0], out.shape[1], "cuda", config) if greedy else None

        def call(w):
            gemv(x, w, out, norm_weight=ops["norm"], residual=flags.get("residual", False),
                 swiglu=flags.get("swiglu", False), argmax=argmax, config=config, overlap=overlap)
            if greedy:
                finish_step_(argmax, *ops["step_buffers"], overlap=overlap)
    return graph_seconds(torch, [lambda w=w: call(w) for w in ops["weights"]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-1b", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--overlap", action="store_true", help="launch with programmatic dependent launch")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    shape, rows = SHAPES[args.shape], []
    print(f"{torch.cuda.get_device_name()}  {args.shape} bf16; GB/s = weight bytes read / median time"
          f"{'; programmatic dependent launch' if args.overlap else ''}")
    for batch, (name, n, k, flags) in itertools.product(args.batch, products(shape)):
        weight_bytes = (2 * n if flags.get("swiglu") else n) * k * 2
        default = default_config(bool(flags.get("norm")), bool(flags.get("residual")), bool(flags.get("swiglu")),
                                 batch, bool(flags.get("argmax")), args.overlap)
        ops = make_operands(torch, batch, n, k, flags)
        cublas = time_product(torch, ops, flags, None)
        timings = []
        for block_n, block_k, warps in itertools.product(BLOCK_N, BLOCK_K, WARPS):
            if batch * block_n * block_k > 16384:  # the product tile would spill registers
                continue
            config = GemvConfig(block_n, block_k, warps)
            try:
                timings.append((time_product(torch, ops, flags, config, args.overlap), config))
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
