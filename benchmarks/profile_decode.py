"""Where does one decode step's time go? Kernel times of the reference decoder's CUDA-graph step.

Run on a GPU (under a minute):

    python benchmarks/profile_decode.py [--kernels triton|torch] [--batch 1] [--steps 20] [--no-overlap]

Captures the decode step of the Llama 3.2 1B shape (bf16, 128-token prompt) in a CUDA graph like
the benchmark does (with this GPU's tiles: shipped, cached, else searched first; see
:mod:`benchlib.llm.tiles`), replays it ``--steps`` times under ``torch.profiler`` and prints the GPU
time per step by kernel name, with each kernel's count per step, and the step's wall time from CUDA
events (the sum of kernel times is below it by the gaps between kernels). With the fused kernels'
programmatic dependent launch, a kernel starts while its predecessor drains and its time includes
that wait, so the times overlap and their sum exceeds the wall time; ``--no-overlap`` launches
them one after another, for per-kernel times that add up.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib.device import resolve_device  # noqa: E402
from benchlib.llm import SHAPES, BackendConfig, InputSpec  # noqa: E402
from benchlib.llm.reference import ReferenceBackend, prompt_tensors  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", default="triton", choices=["triton", "torch"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-overlap", action="store_true", help="no programmatic dependent launch")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    device = resolve_device("cuda")
    shape = SHAPES["llama-1b"]
    config = BackendConfig("reference", shape, "bf16", "graph", args.batch, 128, args.steps + 8, 42,
                           kernels=args.kernels)
    backend = ReferenceBackend(config, device, overlap=False if args.no_overlap else None)
    with torch.inference_mode():
        backend.session.prefill(*prompt_tensors(InputSpec(args.batch, 128, args.steps + 8, shape.vocab, seed=42)
                                                .batch_at(0), device.torch_device))
        for _ in range(3):
            backend.step()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            start.record()
            for _ in range(args.steps):
                backend.step()
            end.record()
            torch.cuda.synchronize()
    step_us = start.elapsed_time(end) * 1e3 / args.steps
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type.name == "CUDA":
            totals[event.name][0] += event.device_time / args.steps
            totals[event.name][1] += 1 / args.steps
    kernel_us = sum(total for total, _ in totals.values())
    overlap = " with overlap" if backend.session.overlap else ""
    print(f"{args.kernels} kernels{overlap}, batch {args.batch}: step {step_us:.1f} us wall (CUDA events), "
          f"{kernel_us:.1f} us in kernels, {sum(n for _, n in totals.values()):.0f} kernels per step")
    print(backend.clock)  # with the fused kernels, their tiles and where they came from
    for name, (total, count) in sorted(totals.items(), key=lambda item: -item[1][0])[:15]:
        print(f"{total:8.1f} us  {count:5.0f}x  {name[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
