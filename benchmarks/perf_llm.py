"""How close does the reference decoder get to the memory-bandwidth roofline, next to what users run?

Run on a GPU, in one process (about 3-5 minutes on an H100):

    python benchmarks/perf_llm.py [--compile] [--json figures.json]

1. Memory bandwidth measured in the same run: a 1 GiB device-to-device ``copy_`` timed with CUDA
   events, counting read + write bytes (median of 20).
2. Llama 3.2 1B shape, bf16, batch 1, 128 prompt / 256 output tokens: the reference decoder with its
   decode step replayed from a CUDA graph (and, with ``--compile``, the step under ``torch.compile``
   inside the graph), the same step run eagerly, and transformers ``generate``; decode tokens/s,
   TTFT, and the fraction of the roofline (weights + KV at the mean context per step / TPOT /
   bandwidth), against the measured and the datasheet bandwidth. Target: graph >= 70 % of the
   measured-bandwidth roofline at batch 1.
3. The fused kernels without programmatic dependent launch, to show what the overlap buys.
4. The graph decode at batch 8 and 32 (throughput).
5. Graph vs eager: the same weights and prompts must give the same greedy tokens; the fused kernels
   against the PyTorch ops, teacher-forced, at batch 1 and 4 and with a 2048-token prompt; the
   fused graph with and without programmatic dependent launch (same tiles) bitwise.

Prints a table and, with ``--json``, writes the figures. ``--cpu-smoke`` runs the tiny shape on the
CPU (eager and transformers only; the bandwidth is a host copy) to check that the script works.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import ceilings  # noqa: E402
from benchlib.device import Device, resolve_device  # noqa: E402
from benchlib.llm import SHAPES, BackendConfig, InputSpec, make_backend, run_scenario  # noqa: E402
from benchlib.llm.metrics import decode_bytes_per_step  # noqa: E402
from benchlib.llm.model import ReferenceModel  # noqa: E402
from benchlib.llm.reference import (  # noqa: E402
    ReferenceBackend,
    check_fused_matches_torch,
    check_graph_matches_eager,
    check_overlap_matches_sequential,
)
from benchlib.timer import TimerConfig  # noqa: E402

COPY_BYTES = 1 << 30
TARGET_FRACTION = 0.70
LONG_PROMPT = 2048  # T3's prompt: the fused attention splits its 2.1k positions over 17 programs per head


@dataclass(frozen=True)
class Setup:
    """The model and request sizes every case shares."""

    shape: str = "llama-1b"
    dtype: str = "bf16"
    input_len: int = 128
    output_len: int = 256

    def spec(self, batch: int) -> InputSpec:
        return InputSpec(batch, self.input_len, self.output_len, SHAPES[self.shape].vocab, seed=42)

    def config(self, backend: str, mode: str, batch: int, compile_step: bool = False,
               kernels: str = "auto") -> BackendConfig:
        return BackendConfig(backend, SHAPES[self.shape], self.dtype, mode, batch, self.input_len, self.output_len, 42,
                             compile_step, kernels=kernels)


def copy_bandwidth_gbs(device: Device, nbytes: int, repeats: int = 20) -> float:
    """Median device copy bandwidth, read + write bytes; CUDA events on a GPU, perf_counter on the CPU."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device.torch_device).random_(0, 255)
    dst = torch.empty_like(src)
    seconds = []
    for _ in range(repeats + 3):
        if device.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            dst.copy_(src)
            seconds.append(time.perf_counter() - begin)
    return 2 * nbytes / statistics.median(seconds[3:]) / 1e9


def measure_case(label: str, backend, setup: Setup, batch: int, gens: int, bandwidths: dict[str, float]) -> dict:
    """Run ``gens`` generations after one warm-up; decode figures from the requests' TPOT."""
    spec = setup.spec(batch)
    results, _ = run_scenario(backend, spec, TimerConfig(warmup=1, fixed_samples=gens))
    backend.close()
    tpot = statistics.median(result.requests[0].tpot for result in results)
    bytes_per_step = statistics.mean(decode_bytes_per_step(SHAPES[setup.shape], setup.dtype, r) for r in results)
    row = {
        "case": label, "batch": spec.batch, "generations": gens, "clock": backend.clock,
        "tpot_ms": tpot * 1e3, "decode_tokens_per_s": spec.batch / tpot,
        "ttft_ms": statistics.median(result.requests[0].ttft for result in results) * 1e3,
        "output_tokens_per_s": statistics.median(result.output_tokens / result.span_s for result in results),
        "bytes_per_step_gb": bytes_per_step / 1e9,
        "tokens": [result.requests[0].output_ids.tolist() for result in results],
    }
    for source, gbs in bandwidths.items():
        row[f"roofline_fraction_{source}"] = bytes_per_step / tpot / (gbs * 1e9) if gbs else None
    return row


def run_cases(device: Device, setup: Setup, args: argparse.Namespace, bandwidths: dict[str, float]) -> list[dict]:
    model = ReferenceModel(SHAPES[setup.shape], setup.dtype, device.torch_device, seed=42)
    rows = []

    def case(label: str, build, batch: int, gens: int) -> None:
        try:
            rows.append(measure_case(label, build(), setup, batch, gens, bandwidths))
        except Exception as exc:  # one failing variant (e.g. compile) must not hide the others
            rows.append({"case": label, "batch": batch, "error": f"{type(exc).__name__}: {exc}"[:300]})

    def reference(mode: str, batch: int, compile_step: bool = False, kernels: str = "auto",
                  overlap: bool | None = None) -> None:
        config = setup.config("reference", mode, batch, compile_step, kernels)
        label = (f"reference {mode}{' + compile' if compile_step else ''}{'' if kernels == 'auto' else ' ' + kernels}"
                 f"{' no-PDL' if overlap is False else ''} b{batch}")
        gens = args.gens if mode == "graph" else args.slow_gens
        case(label, lambda: ReferenceBackend(config, device, model, overlap), batch, gens)

    if device.is_cuda:
        reference("graph", 1)  # auto: the fused Triton kernels where Triton is importable
        reference("graph", 1, kernels="triton", overlap=False)  # the same without programmatic dependent launch
        reference("graph", 1, kernels="torch")
        if args.compile:
            reference("graph", 1, compile_step=True, kernels="torch")
        if args.graph_b1_only:
            return rows
    reference("eager", 1)
    case("transformers generate b1", lambda: make_backend(setup.config("transformers", "eager", 1), device), 1,
         args.slow_gens)
    if device.is_cuda:
        for batch in (8, 32):
            reference("graph", batch)
        reference("graph", 8, kernels="triton")
    return rows


def print_table(figures: dict) -> None:
    print(f"device: {figures['device']}  torch: {figures['torch']}  shape: {figures['shape']} {figures['dtype']}, "
          f"{figures['input_len']} in / {figures['output_len']} out")
    bandwidths = figures["bandwidth_gbs"]
    print(f"bandwidth: measured copy {bandwidths['measured']:.0f} GB/s (r+w); datasheet {bandwidths['datasheet'] or '-'}")
    print(f"{'case':<32} {'decode tok/s':>12} {'TPOT ms':>9} {'TTFT ms':>9} {'out tok/s':>10} "
          f"{'% roof (meas)':>13} {'% roof (spec)':>13}")
    for row in figures["cases"]:
        if "error" in row:
            print(f"{row['case']:<32} failed: {row['error']}")
            continue
        spec = row["roofline_fraction_datasheet"]
        print(f"{row['case']:<32} {row['decode_tokens_per_s']:>12.1f} {row['tpot_ms']:>9.3f} {row['ttft_ms']:>9.2f} "
              f"{row['output_tokens_per_s']:>10.1f} {100 * row['roofline_fraction_measured']:>12.1f}% "
              f"{'-' if spec is None else f'{100 * spec:.1f}%':>13}")
    graph = next((r for r in figures["cases"] if r["case"] == "reference graph b1" and "error" not in r), None)
    if graph:
        fraction = graph["roofline_fraction_measured"]
        verdict = "OK" if fraction >= TARGET_FRACTION else f"MISS (target >= {TARGET_FRACTION:.0%})"
        print(f"graph decode at batch 1: {fraction:.1%} of the measured-bandwidth roofline  {verdict}")
    for kernels, equality in figures.get("graph_matches_eager", {}).items():
        print(f"graph vs eager tokens, {kernels} kernels: {'identical' if equality['equal'] else 'DIFFER'} ({equality})")
    for batch, agreement in figures.get("fused_matches_torch", {}).items():
        print(f"fused vs PyTorch ops, {batch}, teacher-forced: {agreement}")
    for case, equality in figures.get("overlap_matches_sequential", {}).items():
        print(f"fused graph with vs without PDL, same tiles, {case}: "
              f"{'bitwise equal' if equality['equal'] else 'DIFFER'} ({equality})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--compile", action="store_true", help="also time the graph with torch.compile inside")
    parser.add_argument("--gens", type=int, default=10, help="measured generations per graph case")
    parser.add_argument("--slow-gens", type=int, default=2, help="measured generations for eager and transformers")
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--graph-b1-only", action="store_true",
                        help="only the batch-1 graph cases and the checks (a minute; for kernel work)")
    args = parser.parse_args()

    import torch

    device = resolve_device("cpu" if args.cpu_smoke else "cuda")
    setup = Setup("tiny", "fp32", 16, 16) if args.cpu_smoke else Setup()
    bandwidths = {
        "measured": copy_bandwidth_gbs(device, COPY_BYTES if device.is_cuda else 1 << 26),
        "datasheet": ceilings.peak_mem_bw_gbs(device.name) if device.is_cuda else None,
    }
    figures: dict = {"device": device.label, "torch": torch.__version__, "cuda": torch.version.cuda,
                     **asdict(setup), "bandwidth_gbs": bandwidths}
    figures["cases"] = run_cases(device, setup, args, bandwidths)
    if device.is_cuda:
        figures["graph_matches_eager"] = {
            kernels: check_graph_matches_eager(setup.shape, setup.dtype, 1, setup.input_len, 64, kernels=kernels)
            for kernels in ("torch", "triton")
        }
        figures["fused_matches_torch"] = {
            f"b{batch}": check_fused_matches_torch(setup.shape, setup.dtype, batch, setup.input_len, 64)
            for batch in (1, 4)
        }
        # a context long enough for the attention to be split over programs and merged
        figures["fused_matches_torch"][f"b1, {LONG_PROMPT}-token prompt"] = check_fused_matches_torch(
            setup.shape, setup.dtype, 1, LONG_PROMPT, 32)
        figures["overlap_matches_sequential"] = {
            f"b{batch}, {prompt}-token prompt": check_overlap_matches_sequential(setup.shape, setup.dtype, batch, prompt)
            for batch, prompt in ((1, setup.input_len), (1, LONG_PROMPT), (4, setup.input_len))
        }
    print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
