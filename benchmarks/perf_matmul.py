"""Does the matmul workload measure what triton's do_bench measures, and does telemetry cost anything?

Run on a GPU, in one process:

    python benchmarks/perf_matmul.py [--json figures.json]

Both comparisons alternate their two sides in ABBA order, so drift (the GPU heating up and
reaching its power cap within seconds) does not favour the side that runs first.

1. For bf16 8192 and fp32 10000: the median TFLOP/s of the benchlib matmul workload (shared timer,
   adaptive stopping at 0.5 %) against ``triton.testing.do_bench(..., return_mode="median")`` on
   the same tensors, interleaved over rounds. Target: within 1 %.
2. NVML sampling at 100 Hz on vs off around the same workload, interleaved over rounds. Target:
   the median moves by less than 0.5 %.

Prints a table and, with ``--json``, writes the figures. ``--cpu-smoke`` runs tiny sizes on the CPU
(no triton, no NVML) to check that the script itself works.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib.device import resolve_device  # noqa: E402
from benchlib.telemetry import NvmlSampler  # noqa: E402
from benchlib.workloads.matmul import MatmulParams, _math_mode, _torch_dtype, run  # noqa: E402


def workload_median_s(n: int, dtype: str, device, telemetry_hz: float = 0.0) -> float:
    # Sustained regime, like do_bench(warmup=200 ms, rep=2000 ms): at least 2 s of samples.
    params = MatmulParams(n=n, dtype=dtype, warmup=10, min_samples=30, max_samples=5000, max_time_s=20,
                          min_time_s=2.0, target_rel_ci=0.005)
    if telemetry_hz:
        with NvmlSampler(hz=telemetry_hz) as sampler:
            metrics = run(params, device)
        polls = sampler.summary()
    else:
        metrics, polls = run(params, device), None
    times = [sample.seconds for sample in metrics[0].samples]
    return statistics.median(times), polls


def do_bench_median_s(n: int, dtype: str, device) -> float:
    import torch
    from triton.testing import do_bench

    generator = torch.Generator(device=device.torch_device).manual_seed(42)
    a = torch.randn((n, n), generator=generator, device=device.torch_device, dtype=_torch_dtype(dtype))
    b = torch.randn((n, n), generator=generator, device=device.torch_device, dtype=_torch_dtype(dtype))
    c = torch.empty_like(a)
    with _math_mode(dtype):
        ms = do_bench(lambda: torch.matmul(a, b, out=c), warmup=200, rep=2000, return_mode="median")
    return ms / 1e3


def abba(rounds: int):
    """Round r runs A then B when r is even, B then A when odd: drift (heat, power cap) cancels."""
    for index in range(rounds):
        yield ("a", "b") if index % 2 == 0 else ("b", "a")


def compare_with_do_bench(cases, device, rounds: int) -> list[dict]:
    rows = []
    for n, dtype in cases:
        ours, theirs = [], []
        for order in abba(rounds):
            for who in order:
                if who == "a":
                    ours.append(workload_median_s(n, dtype, device)[0])
                else:
                    theirs.append(do_bench_median_s(n, dtype, device))
        flops = 2.0 * n**3
        ours_tf = flops / statistics.median(ours) / 1e12
        theirs_tf = flops / statistics.median(theirs) / 1e12
        rows.append({"case": f"{dtype} {n}", "benchlib_tflops": ours_tf, "do_bench_tflops": theirs_tf,
                     "ratio": ours_tf / theirs_tf, "rounds": rounds,
                     "benchlib_round_medians_ms": [t * 1e3 for t in ours],
                     "do_bench_round_medians_ms": [t * 1e3 for t in theirs]})
    return rows


def telemetry_on_off(n: int, dtype: str, device, rounds: int, hz: float) -> dict:
    on, off, polls = [], [], []
    for order in abba(rounds):
        for who in order:
            if who == "a":
                off.append(workload_median_s(n, dtype, device)[0])
            else:
                median_on, summary = workload_median_s(n, dtype, device, telemetry_hz=hz)
                on.append(median_on)
                polls.append(summary)
    ratio = statistics.median(on) / statistics.median(off)
    return {"case": f"{dtype} {n}", "hz": hz, "median_off_ms": statistics.median(off) * 1e3,
            "median_on_ms": statistics.median(on) * 1e3, "on_over_off": ratio, "rounds": rounds,
            "sampler": polls[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cpu-smoke", action="store_true")
    args = parser.parse_args()

    import torch

    device = resolve_device("cpu" if args.cpu_smoke else "cuda")
    figures: dict = {"device": device.label, "torch": torch.__version__}
    if device.is_cuda:
        import pynvml

        pynvml.nvmlInit()
        figures["driver"] = pynvml.nvmlSystemGetDriverVersion()
        figures["cuda_runtime"] = torch.version.cuda
        figures["do_bench"] = compare_with_do_bench([(8192, "bf16"), (10000, "fp32")], device, args.rounds)
        figures["telemetry"] = [telemetry_on_off(8192, "bf16", device, args.rounds * 2, 100.0),
                                telemetry_on_off(4096, "tf32", device, args.rounds * 2, 100.0),
                                telemetry_on_off(10000, "fp32", device, args.rounds, 100.0)]
    else:
        figures["telemetry"] = [telemetry_on_off(128, "fp32", device, 2, 100.0)]
        figures["workload_tflops"] = 2 * 128**3 / workload_median_s(128, "fp32", device)[0] / 1e12

    print(f"device: {figures['device']}  driver: {figures.get('driver', '-')}  torch: {figures['torch']}")
    for row in figures.get("do_bench", []):
        verdict = "OK" if abs(row["ratio"] - 1) <= 0.01 else "MISS (target within 1 %)"
        print(f"matmul {row['case']:>10}: benchlib {row['benchlib_tflops']:8.1f} TFLOP/s, "
              f"do_bench {row['do_bench_tflops']:8.1f} TFLOP/s, ratio {row['ratio']:.4f}  {verdict}")
    for row in figures["telemetry"]:
        verdict = "OK" if abs(row["on_over_off"] - 1) < 0.005 else "MISS (target < 0.5 %)"
        print(f"telemetry {row['hz']:.0f} Hz {row['case']:>10}: off {row['median_off_ms']:.4f} ms, "
              f"on {row['median_on_ms']:.4f} ms, on/off {row['on_over_off']:.4f}  {verdict}; "
              f"sampler {row['sampler'].get('status')}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
