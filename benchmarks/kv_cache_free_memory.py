"""Does the KV cache sized by free memory shrink in an arm that leaves less memory, and is the
stuck-clock rule silent on a healthy GPU?

Run on a GPU (about 2 minutes on an H100/H200; it never changes clocks, power limits or MIG mode):

    python benchmarks/kv_cache_free_memory.py --hold-gib 20 --out "$OUT"

1. ``native``: the LLM workload (reference backend, Llama 3.2 1B shape, bf16, CUDA graph, batch 1,
   128 prompt / 256 output tokens) with ``kv_cache: free_memory`` (0.9 of the memory free after the
   weights, as TensorRT-LLM sizes its cache), under the NVML sampler (clocks, memory columns).
2. ``less-free``: the same, while another process holds ``--hold-gib`` GiB of the same GPU: the cache
   must hold about ``0.9 x hold / (K/V bytes per token)`` fewer tokens, and decode at the same speed
   (a step works on the positions it needs, whatever the pool's size).
3. The checks the report will show, on this run's real telemetry and results: the stuck-clock rule
   (``benchlib.checks.clocks``) must be silent on both arms, and the memory findings between the
   arms (``benchlib.checks.memory``) name the smaller cache.
4. The telemetry thread reads ``cudaMemGetInfo`` through the CUDA driver API while the workload
   captures CUDA graphs: ``--captures`` (default 20) graph captures under a 1 kHz memory sampler must
   all succeed and give the eager step's tokens, and the sampled ``cuda_free_bytes`` must be present.

Prints a table and PASS/FAIL lines; writes every figure to ``OUT/kv_cache_free_memory.json`` and each
arm's results, telemetry and fingerprint under ``OUT/<arm>/``. ``--cpu-smoke`` runs the tiny shape on
the CPU (host memory held by the other process, a 0.001 fraction) to check that the script works;
its figures are not checked, the host's memory moving with whatever else runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from benchlib import run_benchmark  # noqa: E402
from benchlib.bench import write_invocation  # noqa: E402
from benchlib.checks import findings_frame  # noqa: E402
from benchlib.checks.clocks import clock_fractions, stuck_clock_findings  # noqa: E402
from benchlib.checks.memory import memory_by_arm, memory_findings  # noqa: E402
from benchlib.llm import SHAPES  # noqa: E402

GIB = 2**30
TOLERANCE = 0.03  # the measured drop in tokens may differ from fraction x held by this share (allocator slack)
HOLDER = {
    "cuda": ("import sys, torch\n"
             "x = torch.empty(int(float(sys.argv[1]) * 2**30), dtype=torch.uint8, device='cuda:0'); x.fill_(1)\n"
             "torch.cuda.synchronize(); print('ready', flush=True); sys.stdin.read()\n"),
    "cpu": ("import sys, numpy\n"
            "x = numpy.ones(int(float(sys.argv[1]) * 2**30), dtype=numpy.uint8)\n"
            "print('ready', flush=True); sys.stdin.read()\n"),
}


def case_params(smoke: bool, fraction: float) -> dict[str, Any]:
    if smoke:
        return dict(backend="reference", shape="tiny", dtype="fp32", mode="eager", batch=2, input_len=16,
                    output_len=8, device="cpu", warmup=1, fixed_samples=3, kv_cache="free_memory",
                    kv_cache_free_fraction=fraction)
    return dict(backend="reference", shape="llama-1b", dtype="bf16", mode="graph", batch=1, input_len=128,
                output_len=256, device="cuda", warmup=3, fixed_samples=10, kv_cache="free_memory",
                kv_cache_free_fraction=fraction, telemetry_hz=100.0)


def free_now(kind: str) -> int:
    """What this process sees free: cudaMemGetInfo on the GPU, what the host has available on the CPU."""
    if kind == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(0)[0])
    from benchlib import hostmem

    return int(hostmem.available().bytes or 0)


class Holder:
    """Another process holding memory on the same device for as long as the block runs; ``held`` is
    how much less this process then sees free (the other process's CUDA context included)."""

    def __init__(self, kind: str, gib: float) -> None:
        self.kind, self.gib = kind, gib
        self.process: subprocess.Popen | None = None
        self.held = 0

    def __enter__(self) -> "Holder":
        before = free_now(self.kind)
        self.process = subprocess.Popen([sys.executable, "-c", HOLDER[self.kind], str(self.gib)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.__exit__()
            raise RuntimeError(f"the memory holder did not start (it said {line!r})")
        self.held = before - free_now(self.kind)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_arm(arm: str, params: dict[str, Any], out: Path | None) -> dict[str, Any]:
    result = run_benchmark("llm_inference", arm=arm, run_id="kv-cache-free-memory", **params)
    case = result.results["case"].iloc[0]
    telemetry = result.telemetry.assign(run_id="kv-cache-free-memory", arm=arm, benchmark="llm_inference", case=case,
                                        invocation=0)
    if out is not None:
        write_invocation(out / arm, result.results, result.telemetry, result.env)
    ok = result.results[result.results["status"] == "ok"]
    if ok.empty:
        raise RuntimeError(f"{arm}: the case did not run: {result.results['note'].iloc[0]}")
    metric = ok.set_index("metric")
    generation = ok[ok["metric"] == "generation"]
    return {
        "arm": arm, "results": result.results, "telemetry": telemetry, "env": result.env, "case": case,
        "kv_cache_tokens": float(metric.loc["kv_cache_tokens", "value"]),
        "kv_cache_gib": float(metric.loc["kv_cache_bytes", "value"]) / GIB,
        "kv_note": str(metric.loc["kv_cache_tokens", "note"]),
        "tokens_per_s": float((generation["work"] / generation["value"]).median()),
        "cuda_free_polls": int(telemetry["cuda_free_bytes"].notna().sum()) if not telemetry.empty else 0,
        "telemetry_status": result.env.get("telemetry", {}).get("status"),
    }


def capture_under_sampler(captures: int) -> dict[str, Any]:
    """``captures`` CUDA graph captures of the decode step while the telemetry thread reads cudaMemGetInfo at
    1 kHz; each graph's tokens must equal the eager step's."""
    import numpy as np

    from benchlib.device import resolve_device
    from benchlib.llm import BackendConfig, InputSpec
    from benchlib.llm.model import ReferenceModel
    from benchlib.llm.reference import ReferenceBackend
    from benchlib.telemetry import NvmlSampler

    target = resolve_device("cuda")
    shape = SHAPES["llama-1b"]
    model = ReferenceModel(shape, "bf16", target.torch_device, 42)
    prompts = InputSpec(1, 128, 32, shape.vocab, seed=42).batch_at(0)

    def config(mode: str) -> BackendConfig:  # the same kernels in both modes: tokens must be identical
        return BackendConfig("reference", shape, "bf16", mode, 1, 128, 32, 42, kernels="torch")

    eager = np.stack([r.output_ids for r in ReferenceBackend(config("eager"), target, model).generate(prompts).requests])
    failures, equal = [], 0
    with NvmlSampler(hz=1000, memory_hz=1000, gpu_indices=[0]) as sampler:
        for attempt in range(captures):
            try:
                backend = ReferenceBackend(config("graph"), target, model)
                tokens = np.stack([r.output_ids for r in backend.generate(prompts).requests])
                equal += int(np.array_equal(tokens, eager))
            except Exception as exc:  # a capture the sampler broke
                failures.append(f"capture {attempt}: {type(exc).__name__}: {exc}"[:300])
    frame = sampler.frame()
    return {"captures": captures, "failures": failures, "equal_to_eager": equal,
            "cuda_free_polls": int(frame["cuda_free_bytes"].notna().sum()), "polls": len(frame),
            "sampler": sampler.status}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hold-gib", type=float, default=20.0, help="memory the other process holds (GiB)")
    parser.add_argument("--fraction", type=float, default=None, help="kv_cache_free_fraction (default 0.9; smoke 0.001)")
    parser.add_argument("--captures", type=int, default=20, help="graph captures under a 1 kHz memory sampler")
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shape on the CPU: checks the script only")
    args = parser.parse_args()
    fraction = args.fraction if args.fraction is not None else (0.001 if args.cpu_smoke else 0.9)
    params = case_params(args.cpu_smoke, fraction)
    kind = "cpu" if args.cpu_smoke else "cuda"

    arms = [run_arm("native", params, args.out)]
    with Holder(kind, args.hold_gib) as holder:
        arms.append(run_arm("less-free", params, args.out))
    native, less = arms
    shape = SHAPES[params["shape"]]
    per_token = shape.kv_bytes_per_token(params["dtype"])
    expected_drop = fraction * holder.held / per_token
    measured_drop = native["kv_cache_tokens"] - less["kv_cache_tokens"]

    print(f"{'arm':<10} {'KV-cache tokens':>16} {'KV cache GiB':>13} {'decode tokens/s':>16} {'cuda_free polls':>16}")
    for arm in arms:
        print(f"{arm['arm']:<10} {arm['kv_cache_tokens']:>16,.0f} {arm['kv_cache_gib']:>13.2f} "
              f"{arm['tokens_per_s']:>16.1f} {arm['cuda_free_polls']:>16d}")
        print(f"           {arm['kv_note']}")
    print(f"another process holds {args.hold_gib:g} GiB ({holder.held / GIB:.2f} GiB less free, its own context "
          f"included); expected drop {fraction:g} x that / {per_token} B per token = {expected_drop:,.0f} tokens; "
          f"measured drop {measured_drop:,.0f} tokens")

    telemetry = pd.concat([arm["telemetry"] for arm in arms], ignore_index=True)
    envs = {(arm["arm"], "llm_inference", arm["case"], 0): arm["env"] for arm in arms}
    results = pd.concat([arm["results"] for arm in arms], ignore_index=True)
    fractions = clock_fractions(telemetry, envs)
    stuck = stuck_clock_findings(fractions)
    memory = memory_findings(memory_by_arm(results, telemetry, envs), baseline="native")
    if not fractions.empty:
        print(fractions[["arm", "gpu_name", "polls_loaded", "sm_clock_mhz", "max_sm_clock_mhz", "sm_fraction",
                         "mem_fraction", "reasons"]].to_string(index=False))
    print("stuck-clock findings:", "none" if not stuck else "")
    for finding in stuck:
        print("  " + finding.message)
    print("memory findings between the arms:")
    for finding in memory:
        print("  " + finding.message)

    checks: dict[str, bool] = {}
    capture: dict[str, Any] | None = None
    if not args.cpu_smoke:
        checks["smaller cache within 3 % of expected"] = abs(measured_drop - expected_drop) <= TOLERANCE * expected_drop
        checks["decode speed equal within 3 %"] = abs(less["tokens_per_s"] / native["tokens_per_s"] - 1) <= 0.03
        checks["stuck-clock rule silent on a healthy run"] = not stuck and not fractions.empty
        checks["memory findings name the smaller KV cache"] = any(f.values["quantity"] == "kv_cache_tokens" for f in memory)
        checks["cudaMemGetInfo sampled by the telemetry thread"] = all(arm["cuda_free_polls"] > 0 for arm in arms)
        capture = capture_under_sampler(args.captures)
        print(f"graph captures under a 1 kHz memory sampler: {capture['captures'] - len(capture['failures'])} of "
              f"{capture['captures']} captured, {capture['equal_to_eager']} equal to eager, "
              f"{capture['cuda_free_polls']} of {capture['polls']} polls with cuda_free_bytes")
        for failure in capture["failures"]:
            print("  " + failure)
        checks["captures unharmed by the sampler"] = (not capture["failures"] and capture["equal_to_eager"] == args.captures
                                                      and capture["cuda_free_polls"] > 0)
    else:
        print("cpu smoke: figures not checked (host memory moves with everything else on the machine)")
    for name, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")

    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        figures = {
            "params": params, "hold_gib": args.hold_gib, "held_bytes": holder.held, "kv_bytes_per_token": per_token,
            "expected_drop_tokens": expected_drop, "measured_drop_tokens": measured_drop,
            "arms": [{k: v for k, v in arm.items() if k not in ("results", "telemetry", "env")} for arm in arms],
            "clock_fractions": fractions.to_dict(orient="records"),
            "stuck_clock_findings": findings_frame(stuck).to_dict(orient="records"),
            "memory_findings": findings_frame(memory).to_dict(orient="records"),
            "capture_under_sampler": capture, "checks": checks, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        (args.out / "kv_cache_free_memory.json").write_text(json.dumps(figures, indent=2, default=str))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
