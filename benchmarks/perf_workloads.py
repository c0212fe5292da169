"""Do the membw and transfer workloads reach what plain torch copies reach? And the quick params, once.

Run on a GPU, in one process (about 3 minutes on an H100):

    python benchmarks/perf_workloads.py [--json figures.json] [--rounds 3]

1. membw ``copy`` over 1 GiB fp32 buffers: the workload's median GB/s (read + write, shared timer)
   against ``triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")`` on the same
   buffers, interleaved over rounds. Targets: >= 97 % of the do_bench figure, and >= 2.9 TB/s on
   an H100.
2. transfer h2d pinned 1 GiB: the workload's GB/s against the best pinned host-to-device copy that
   do_bench sees over a few sizes (64 MiB, 256 MiB, 1 GiB), interleaved. Target: >= 90 %.
3. The quick params of every workload this script covers (membw, transfer and its many_small file,
   launch, shm_dataloader, cpu_bound, memcap), one invocation each, with their summaries.

Prints a table and, with ``--json``, writes the figures. ``--cpu-smoke`` runs tiny sizes on the CPU
without triton (and the smoke params in part 3) to check that the script itself works.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import run_benchmark  # noqa: E402
from benchlib.device import Device, resolve_device  # noqa: E402
from benchlib.params import read_yaml  # noqa: E402
from benchlib.paths import params_dir  # noqa: E402
from benchlib.workloads import membw, transfer  # noqa: E402

MIB = 1024 * 1024
TARGETS = {"membw_vs_copy": 0.97, "membw_h100_tbs": 2.9, "h2d_vs_best_pinned": 0.90}
QUICK = [("membw", "quick"), ("transfer", "quick"), ("transfer", "many_small"), ("launch", "quick"),
         ("shm_dataloader", "quick"), ("cpu_bound", "quick"), ("memcap", "quick")]
TIMER = dict(warmup=5, min_samples=20, max_samples=300, max_time_s=5.0, target_rel_ci=0.005)


def median_rate(metrics: list, work: float) -> float:
    """Bytes per second of the first metric's median sample."""
    return work / statistics.median(sample.seconds for sample in metrics[0].samples)


def do_bench_s(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=100, rep=1000, return_mode="median") / 1e3


def membw_vs_copy(device: Device, size_mib: int, rounds: int, reference: bool) -> dict[str, Any]:
    """The membw workload's copy vs do_bench of ``dst.copy_(src)`` on the same buffers, interleaved."""
    params = membw.MembwParams(op="copy", size_mib=size_mib, dtype="fp32", device=device.torch_device,
                               **(TIMER if reference else {"max_time_s": 1.0}))
    buffers = membw.allocate(params, device)
    dst, src = buffers
    traffic = membw.bytes_moved("copy", dst.numel() * dst.element_size())
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(median_rate(membw.timed(params, device, buffers), traffic))
        if reference:
            theirs.append(traffic / do_bench_s(lambda: dst.copy_(src)))
    row = {"size_mib": size_mib, "rounds": rounds, "membw_gbs": statistics.median(ours) / 1e9,
           "round_gbs": [rate / 1e9 for rate in ours]}
    if theirs:
        row.update(copy_gbs=statistics.median(theirs) / 1e9, round_copy_gbs=[rate / 1e9 for rate in theirs])
        row["ratio"] = row["membw_gbs"] / row["copy_gbs"]
    return row


def pinned_h2d(device: Device, sizes_mib: list[int], rounds: int) -> dict[str, Any]:
    """The transfer workload's pinned h2d at the largest size vs the best do_bench pinned copy."""
    import torch

    size_kib = max(sizes_mib) * 1024
    params = transfer.TransferParams(mode="single", direction="h2d", memory="pinned", size_kib=size_kib,
                                     device=device.torch_device, **TIMER)
    pairs = {size: (torch.ones(size * MIB, dtype=torch.uint8).pin_memory(),
                    torch.empty(size * MIB, dtype=torch.uint8, device=device.torch_device)) for size in sizes_mib}
    ours: list[float] = []
    best: dict[int, float] = {}
    for _ in range(rounds):
        ours.append(median_rate(transfer.run(params, device), size_kib * 1024))
        for size, (host, gpu) in pairs.items():
            rate = size * MIB / do_bench_s(lambda: gpu.copy_(host, non_blocking=True))
            best[size] = max(best.get(size, 0.0), rate)
    workload_gbs = statistics.median(ours) / 1e9
    best_gbs = max(best.values()) / 1e9
    return {"size_mib": max(sizes_mib), "rounds": rounds, "h2d_pinned_gbs": workload_gbs,
            "best_pinned_gbs": best_gbs, "best_by_size_gbs": {k: v / 1e9 for k, v in best.items()},
            "ratio": workload_gbs / best_gbs}


def quick_summaries(level: str) -> dict[str, Any]:
    """One invocation of each covered workload's params files at ``level`` (quick, or smoke on the CPU)."""
    import pandas as pd

    files = QUICK if level == "quick" else [(name, "smoke") for name in dict.fromkeys(name for name, _ in QUICK)]
    out = {}
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        for name, stem in files:
            values = read_yaml(params_dir() / name / f"{stem}.yaml")
            started = time.perf_counter()
            summary = run_benchmark(name, **values).summary()
            seconds = time.perf_counter() - started
            print(f"\n== {name} ({stem}, {seconds:.1f} s)")
            print(summary.drop(columns=["note"], errors="ignore").to_string(index=False))
            out[f"{name}/{stem}"] = {"seconds": seconds, "summary": summary.to_dict(orient="records")}
    return out


def verdict(ok: bool, target: str) -> str:
    return "OK" if ok else f"MISS (target {target})"


def print_table(figures: dict[str, Any]) -> None:
    print(f"device: {figures['device']}  driver: {figures.get('driver', '-')}  torch: {figures['torch']}")
    row = figures["membw"]
    if "ratio" in row:
        print(f"membw copy {row['size_mib']} MiB: workload {row['membw_gbs']:8.1f} GB/s, do_bench copy_ "
              f"{row['copy_gbs']:8.1f} GB/s, ratio {row['ratio']:.4f}  "
              f"{verdict(row['ratio'] >= TARGETS['membw_vs_copy'], '>= 0.97')}")
        if "H100" in figures["device"]:
            ok = row["membw_gbs"] >= TARGETS["membw_h100_tbs"] * 1e3
            print(f"membw copy on an H100: {row['membw_gbs'] / 1e3:.2f} TB/s r+w  {verdict(ok, '>= 2.9 TB/s')}")
    else:
        print(f"membw copy {row['size_mib']} MiB: workload {row['membw_gbs']:8.1f} GB/s (no reference on the CPU)")
    h2d = figures.get("h2d")
    if h2d:
        print(f"h2d pinned {h2d['size_mib']} MiB: workload {h2d['h2d_pinned_gbs']:6.1f} GB/s, best pinned copy "
              f"{h2d['best_pinned_gbs']:6.1f} GB/s, ratio {h2d['ratio']:.4f}  "
              f"{verdict(h2d['ratio'] >= TARGETS['h2d_vs_best_pinned'], '>= 0.90')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu-smoke", action="store_true")
    args = parser.parse_args()

    import torch

    device = resolve_device("cpu" if args.cpu_smoke else "cuda")
    figures: dict[str, Any] = {"device": device.label, "torch": torch.__version__, "targets": TARGETS}
    if device.is_cuda:
        import pynvml

        pynvml.nvmlInit()
        figures["driver"] = pynvml.nvmlSystemGetDriverVersion()
        figures["cuda_runtime"] = torch.version.cuda
        figures["membw"] = membw_vs_copy(device, 1024, args.rounds, reference=True)
        torch.cuda.empty_cache()
        figures["h2d"] = pinned_h2d(device, [64, 256, 1024], args.rounds)
    else:
        figures["membw"] = membw_vs_copy(device, 16, 2, reference=False)
    figures["summaries"] = quick_summaries("quick" if device.is_cuda else "smoke")
    print()
    print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
