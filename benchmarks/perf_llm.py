"""How close does the reference decoder get to the memory-bandwidth roofline, next to what users run?

Run on a GPU, in one process (about 5 minutes on an H200; at most ``--budget-s`` seconds of work
before the optional parts are skipped):

    python benchmarks/perf_llm.py --out DIR [--budget-s 420] [--no-search]

Everything is written under ``DIR`` (``$OUT`` on the device machine): ``perf_llm.json`` (every figure,
rewritten after each part, so a run cut short keeps what it measured), ``perf_llm.log`` (everything
printed, with the tracebacks of failed parts), ``tiles.json`` (the searched tiles in the shipped
table's format, to paste into ``benchlib/llm/tiles.json``) and ``tile-cache/`` (the user cache the
run wrote). In order of priority:

1. Memory bandwidth measured in the same run: a 1 GiB device-to-device ``copy_`` timed with CUDA
   events, counting read + write bytes (median of 20).
2. Whether the fused kernels compile and decode a test model like PyTorch ops on this GPU (at batch
   1 and on tensor cores), then the tile search (:mod:`benchlib.llm.tiles`) for batch 1 and the
   tensor-core buckets of 16 and 32 rows (``--no-search``: the tiles ``kernels: auto`` would use).
3. Llama 3.2 1B shape, bf16, 128 prompt / 256 output tokens, the decode step replayed from a CUDA
   graph, at batch 1, 4, 16 and 32: the fused kernels (with the searched tiles) and PyTorch ops
   (``kernels: torch``), and which of the two ``kernels: auto`` picks and why; decode tokens/s,
   TTFT, and the fraction of the roofline (weights + KV at the mean context per step / TPOT /
   bandwidth) against the measured and the datasheet bandwidth. Targets: batch 1 >= 80 % of the
   measured-bandwidth roofline, batch 4, 16 and 32 >= 65 %.
4. Correctness: graph vs eager greedy tokens (both kernel sets); fused vs PyTorch ops teacher-forced
   at batch 1, 4, 16, 32 and with a 2048-token prompt; the fused graph with and without programmatic
   dependent launch on the same tiles, bitwise, at batch 1 (128- and 2048-token prompts) and 16.
5. transformers ``generate`` at batch 1.
6. The seed's scenarios T1-T6 (reference graph, ``kernels: auto``; 2 warm-ups and 10 generations,
   5 for T3, instead of the seed's 10 and 100).
7. transformers ``generate`` at batch 32, the fused kernels at batch 1 without programmatic
   dependent launch (same tiles), the eager step at batch 1 and, with ``--compile``, PyTorch ops
   under ``torch.compile`` at batch 1.

Prints a table at the end. Needs torch with CUDA, Triton and transformers; nothing that benchlib's
notebooks need (papermill, pydantic, plotly). ``--cpu-smoke`` runs the tiny shape on the CPU (eager
and transformers only; the bandwidth is a host copy) to check that the script works.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import ceilings  # noqa: E402
from benchlib.device import Device, resolve_device  # noqa: E402
from benchlib.llm import SHAPES, BackendConfig, InputSpec, make_backend, run_scenario  # noqa: E402
from benchlib.llm.base import decode_bytes_per_step  # noqa: E402
from benchlib.timer import TimerConfig  # noqa: E402

COPY_BYTES = 1 << 30
TARGETS = {1: 0.80, 4: 0.65, 16: 0.65, 32: 0.65}  # of the measured-bandwidth roofline
BATCHES = (1, 4, 16, 32)
LONG_PROMPT = 2048  # T3's prompt: the fused attention splits its 2.1k positions over 17 programs per head
SEED_SCENARIOS = {"T1": (1, 128, 32), "T2": (1, 512, 128), "T3": (1, 2048, 512), "T4": (4, 512, 128),
                  "T5": (16, 512, 128), "T6": (32, 512, 128)}


@dataclass(frozen=True)
class Setup:
    """The model and request sizes every case shares."""

    shape: str = "llama-1b"
    dtype: str = "bf16"
    input_len: int = 128
    output_len: int = 256

    def spec(self, batch: int, input_len: int | None = None, output_len: int | None = None) -> InputSpec:
        return InputSpec(batch, input_len or self.input_len, output_len or self.output_len, SHAPES[self.shape].vocab,
                         seed=42)

    def config(self, backend: str, mode: str, batch: int, kernels: str = "auto", input_len: int | None = None,
               output_len: int | None = None, compile_step: bool = False) -> BackendConfig:
        return BackendConfig(backend, SHAPES[self.shape], self.dtype, mode, batch, input_len or self.input_len,
                             output_len or self.output_len, 42, compile_step, kernels=kernels)


class Run:
    """The log, the figures, the time budget; every part runs guarded, so one failure skips only itself."""

    def __init__(self, out: Path | None, budget_s: float):
        self.out, self.budget_s, self.began = out, budget_s, time.monotonic()
        self.figures: dict[str, Any] = {"cases": [], "skipped": [], "failed": {}}
        self.log_file = open(out / "perf_llm.log", "a") if out else None

    def say(self, line: str) -> None:
        print(line, flush=True)
        if self.log_file:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def part(self, name: str, work: Callable[[], Any], optional: bool = False) -> Any:
        """Run ``work`` unless an optional part would start past the budget; a failure is logged and kept."""
        if optional and self.elapsed() > self.budget_s:
            self.say(f"[{self.elapsed():5.0f} s] skipped {name}: past the {self.budget_s:.0f} s budget")
            self.figures["skipped"].append(name)
            return None
        self.say(f"[{self.elapsed():5.0f} s] {name}")
        try:
            return work()
        except Exception as exc:  # noqa: BLE001 - one failing part must not hide the others
            self.figures["failed"][name] = f"{type(exc).__name__}: {exc}"[:500]
            self.say(f"  FAILED {name}: {type(exc).__name__}: {str(exc)[:300]}")
            if self.log_file:
                traceback.print_exc(file=self.log_file)
            return None
        finally:
            self.save()

    def save(self) -> None:
        if self.out:
            self.figures["elapsed_s"] = self.elapsed()
            (self.out / "perf_llm.json").write_text(json.dumps(self.figures, indent=2, default=str))


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


def measure_case(label: str, backend, setup: Setup, spec: InputSpec, warmup: int, gens: int,
                 bandwidths: dict[str, float | None]) -> dict:
    """Run ``gens`` generations after ``warmup``; decode figures from the requests' TPOT."""
    try:
        results, _ = run_scenario(backend, spec, TimerConfig(warmup=warmup, fixed_samples=gens))
    finally:
        backend.close()
    tpots = [result.requests[0].tpot for result in results]
    tpot = statistics.median(tpots)
    bytes_per_step = statistics.mean(decode_bytes_per_step(SHAPES[setup.shape], setup.dtype, r) for r in results)
    row = {
        "case": label, "batch": spec.batch, "input_len": spec.input_len, "output_len": spec.output_len,
        "generations": gens, "clock": backend.clock, "kernels": getattr(backend, "kernels", None),
        "tpot_ms": tpot * 1e3, "tpot_ms_per_generation": [t * 1e3 for t in tpots],
        "decode_tokens_per_s": spec.batch / tpot,
        "ttft_ms": statistics.median(result.requests[0].ttft for result in results) * 1e3,
        "output_tokens_per_s": statistics.median(result.output_tokens / result.span_s for result in results),
        "bytes_per_step_gb": bytes_per_step / 1e9,
    }
    for source, gbs in bandwidths.items():
        row[f"roofline_fraction_{source}"] = bytes_per_step / tpot / (gbs * 1e9) if gbs else None
    return row


class Plan:
    """The parts of the run, on one model."""

    def __init__(self, run: Run, device: Device, setup: Setup, args: argparse.Namespace):
        self.run, self.device, self.setup, self.args = run, device, setup, args
        self.bandwidths: dict[str, float | None] = {}
        self.tiles: dict[int, Any] = {}  # bucket -> TileChoice
        self.model = None

    def case(self, label: str, build: Callable[[], Any], batch: int, warmup: int = 1, gens: int | None = None,
             input_len: int | None = None, output_len: int | None = None, optional: bool = False) -> None:
        def work() -> None:
            spec = self.setup.spec(batch, input_len, output_len)
            row = measure_case(label, build(), self.setup, spec, warmup, gens or self.args.gens, self.bandwidths)
            self.run.figures["cases"].append(row)
            fraction = row["roofline_fraction_measured"]
            self.run.say(f"  {label}: TPOT {row['tpot_ms']:.3f} ms, {row['decode_tokens_per_s']:.0f} tok/s, "
                         f"{'-' if fraction is None else f'{fraction:.1%}'} of the roofline; {row['clock']}")
        self.run.part(label, work, optional)

    def reference(self, batch: int, kernels: str, overlap: bool | None = None, mode: str = "graph",
                  input_len: int | None = None, output_len: int | None = None, compile_step: bool = False):
        from benchlib.llm.reference import ReferenceBackend

        config = self.setup.config("reference", mode, batch, kernels, input_len, output_len, compile_step)
        tiles = self.tiles.get(self._bucket(batch)) if kernels != "torch" else None
        return lambda: ReferenceBackend(config, self.device, self.model, overlap, tiles)

    @staticmethod
    def _bucket(batch: int) -> int:
        from benchlib.llm.tiles import batch_bucket

        return batch_bucket(batch)

    # ---- the parts

    def environment(self) -> None:
        import torch

        figures = self.run.figures
        figures.update({"device": self.device.label, "torch": torch.__version__, "cuda": torch.version.cuda,
                        **asdict(self.setup)})
        try:
            import triton

            figures["triton"] = triton.__version__
        except ImportError:
            figures["triton"] = None
        if self.device.is_cuda:
            from benchlib.llm.tiles import driver_version

            figures["driver"] = driver_version()
        measured = copy_bandwidth_gbs(self.device, COPY_BYTES if self.device.is_cuda else 1 << 26)
        self.bandwidths.update({"measured": measured,
                                "datasheet": ceilings.peak_mem_bw_gbs(self.device.name) if self.device.is_cuda else None})
        figures["bandwidth_gbs"] = self.bandwidths
        self.run.say(f"  {figures['device']}, driver {figures.get('driver')}, torch {figures['torch']}, Triton "
                     f"{figures['triton']}; copy {measured:.0f} GB/s (r+w), datasheet {self.bandwidths['datasheet']}")

    def build_model(self) -> None:
        from benchlib.llm.model import ReferenceModel

        self.model = ReferenceModel(SHAPES[self.setup.shape], self.setup.dtype, self.device.torch_device, seed=42)

    def kernel_check(self) -> None:
        from benchlib.llm.reference import fused_kernels_problem

        problems = {f"batch {batch}": fused_kernels_problem(self.device.torch_device, self.setup.dtype, batch)
                    for batch in (1, 16)}
        self.run.figures["fused_kernels_problem"] = problems
        self.run.say(f"  fused kernels on this GPU: {problems}")

    def tile_search(self, bucket: int) -> None:
        from benchlib.llm import tiles as tile_table
        from benchlib.llm.kernels import overlap_unavailable

        overlap = overlap_unavailable(self.device.torch_device) is None
        shape = SHAPES[self.setup.shape]
        began = time.monotonic()
        if self.args.no_search:
            choice = tile_table.choose(shape, self.setup.dtype, bucket, overlap, self.device.torch_device,
                                       search_allowed=True, log=lambda line: self.run.say(f"    {line}"))
        else:
            choice = tile_table.search(shape, self.setup.dtype, bucket, overlap, self.device.torch_device,
                                       log=lambda line: self.run.say(f"    {line}"))
            tile_table.store(tile_table.cache_path(), choice)
        self.tiles[bucket] = choice
        step = {which: choice.step_seconds(shape, which) for which in ("fused", "cublas")}
        record = {**choice.entry(), "source": choice.source, "note": choice.note, "search_s": time.monotonic() - began,
                  "step_ms": {k: v * 1e3 if v else None for k, v in step.items()},
                  "fused_beats_cublas": choice.fused_beats_cublas(shape)}
        self.run.figures.setdefault("tiles", {})[str(bucket)] = record
        if self.run.out:
            entries = [self.tiles[b].entry() for b in sorted(self.tiles) if self.tiles[b].source == "search"]
            (self.run.out / "tiles.json").write_text(json.dumps(tile_table.table_json(entries), indent=2) + "\n")
        self.run.say(f"  bucket {bucket}: {choice.describe()}; products {record['step_ms']} ms a step "
                     f"(fused, cuBLAS); {record['search_s']:.0f} s")

    def auto_choices(self) -> None:
        from benchlib.llm.reference import auto_choice, fused_kernels_problem

        choices = {}
        for batch in BATCHES:
            problem = fused_kernels_problem(self.device.torch_device, self.setup.dtype, batch)
            tiles = self.tiles.get(self._bucket(batch))
            if problem or tiles is None:
                choices[batch] = {"kernels": "torch", "why": problem or "no tiles (the tile search failed)"}
            else:
                choice = auto_choice(self.setup.config("reference", "graph", batch), tiles)
                choices[batch] = {"kernels": choice.kernels, "why": choice.why}
        self.run.figures["auto"] = choices
        for batch, choice in choices.items():
            self.run.say(f"  kernels: auto at batch {batch}: {choice['kernels']} {choice['why']}")

    def checks(self) -> None:
        from benchlib.llm.reference import (check_fused_matches_torch, check_graph_matches_eager,
                                            check_overlap_matches_sequential)

        s, figures = self.setup, self.run.figures

        def check(group: str, label: str, work: Callable[[], dict]) -> None:
            def run_check() -> None:
                result = work()
                figures.setdefault(group, {})[label] = result
                self.run.say(f"    {group} {label}: {result}")
            self.run.part(f"{group} {label}", run_check, optional=True)

        for kernels in ("torch", "triton"):
            check("graph_matches_eager", kernels,
                  lambda k=kernels: check_graph_matches_eager(s.shape, s.dtype, 1, s.input_len, 64, kernels=k))
        for batch in BATCHES:
            check("fused_matches_torch", f"b{batch}", lambda b=batch: check_fused_matches_torch(
                s.shape, s.dtype, b, s.input_len, 64, tiles=self.tiles.get(self._bucket(b))))
        check("fused_matches_torch", f"b1, {LONG_PROMPT}-token prompt", lambda: check_fused_matches_torch(
            s.shape, s.dtype, 1, LONG_PROMPT, 32, tiles=self.tiles.get(1)))
        for batch, prompt in ((1, s.input_len), (1, LONG_PROMPT), (16, s.input_len)):
            check("overlap_matches_sequential", f"b{batch}, {prompt}-token prompt",
                  lambda b=batch, p=prompt: check_overlap_matches_sequential(s.shape, s.dtype, b, p))

    def seed_scenarios(self) -> None:
        for name, (batch, input_len, output_len) in SEED_SCENARIOS.items():
            self.case(f"{name} reference graph auto b{batch} {input_len}/{output_len}",
                      self.reference(batch, "auto", input_len=input_len, output_len=output_len), batch, warmup=2,
                      gens=5 if name == "T3" else 10, input_len=input_len, output_len=output_len, optional=True)

    def transformers(self, batch: int) -> None:
        self.case(f"transformers generate b{batch}",
                  lambda: make_backend(self.setup.config("transformers", "eager", batch), self.device), batch,
                  gens=self.args.slow_gens, optional=True)


def run_plan(run: Run, device: Device, setup: Setup, args: argparse.Namespace) -> None:
    plan = Plan(run, device, setup, args)
    run.part("environment and copy bandwidth", plan.environment)
    if not device.is_cuda:  # --cpu-smoke: the parts that run on the CPU
        run.part("model", plan.build_model)
        plan.case("reference eager b1", plan.reference(1, "torch", mode="eager"), 1, gens=args.slow_gens)
        plan.transformers(1)
        return
    run.part("fused kernels compile and run here", plan.kernel_check)
    for bucket in (1, 16, 32):
        run.part(f"tile search, batch bucket {bucket}", lambda b=bucket: plan.tile_search(b))
    run.part("model", plan.build_model)
    run.part("what kernels: auto picks", plan.auto_choices)
    for batch in BATCHES:
        plan.case(f"reference graph fused b{batch}", plan.reference(batch, "triton"), batch)
        plan.case(f"reference graph torch b{batch}", plan.reference(batch, "torch"), batch)
    plan.checks()
    plan.transformers(1)
    plan.seed_scenarios()
    plan.transformers(32)
    plan.case("reference graph fused no-PDL b1 (same tiles)", plan.reference(1, "triton", overlap=False), 1,
              optional=True)
    plan.case("reference eager b1", plan.reference(1, "torch", mode="eager"), 1, gens=args.slow_gens, optional=True)
    if args.compile:
        plan.case("reference graph + compile torch b1", plan.reference(1, "torch", compile_step=True), 1,
                  optional=True)


def print_table(run: Run) -> None:
    figures = run.figures
    bandwidths = figures.get("bandwidth_gbs") or {}
    run.say("")
    run.say(f"device: {figures.get('device')}  driver: {figures.get('driver')}  torch: {figures.get('torch')}  "
            f"Triton: {figures.get('triton')}  {figures.get('shape')} {figures.get('dtype')}")
    if bandwidths:
        run.say(f"bandwidth: measured copy {bandwidths['measured']:.0f} GB/s (r+w); datasheet "
                f"{bandwidths['datasheet'] or '-'}")
    for bucket, tiles in (figures.get("tiles") or {}).items():
        run.say(f"tiles, bucket {bucket} ({tiles['source']}): {tiles['tiles']}; products ms a step "
                f"{tiles['step_ms']}; fused beats cuBLAS: {tiles['fused_beats_cublas']}")
    for batch, choice in (figures.get("auto") or {}).items():
        run.say(f"kernels: auto at batch {batch}: {choice['kernels']} {choice['why'][:150]}")
    run.say(f"{'case':<44} {'tok/s':>9} {'TPOT ms':>8} {'TTFT ms':>8} {'% roof':>7} {'% spec':>7}  target")
    for row in figures["cases"]:
        fraction, spec = row["roofline_fraction_measured"], row["roofline_fraction_datasheet"]
        target = TARGETS.get(row["batch"]) if "fused" in row["case"] and "no-PDL" not in row["case"] else None
        verdict = "" if target is None or fraction is None else (
            f"{'OK' if fraction >= target else 'MISS'} (>= {target:.0%})")
        run.say(f"{row['case'][:44]:<44} {row['decode_tokens_per_s']:>9.1f} {row['tpot_ms']:>8.3f} "
                f"{row['ttft_ms']:>8.2f} {'-' if fraction is None else f'{100 * fraction:.1f}':>7} "
                f"{'-' if spec is None else f'{100 * spec:.1f}':>7}  {verdict}")
    for group in ("graph_matches_eager", "fused_matches_torch", "overlap_matches_sequential"):
        for label, result in (figures.get(group) or {}).items():
            brief = {k: v for k, v in result.items() if k != "tiles"}
            run.say(f"{group} {label}: {brief}")
    for name, error in figures["failed"].items():
        run.say(f"failed: {name}: {error[:200]}")
    if figures["skipped"]:
        run.say(f"skipped (time budget): {', '.join(figures['skipped'])}")
    run.say(f"total {run.elapsed():.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for perf_llm.json, perf_llm.log, tiles.json, tile-cache/")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="seconds of work after which the optional parts are skipped")
    parser.add_argument("--gens", type=int, default=10, help="measured generations per graph case")
    parser.add_argument("--slow-gens", type=int, default=2, help="measured generations for eager and transformers")
    parser.add_argument("--no-search", action="store_true",
                        help="use the tiles kernels: auto would (shipped, cached, else searched) instead of searching")
    parser.add_argument("--compile", action="store_true", help="also time PyTorch ops under torch.compile at batch 1")
    parser.add_argument("--cpu-smoke", action="store_true")
    args = parser.parse_args()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("BENCHLIB_CACHE_DIR", str(args.out / "tile-cache"))  # the cache comes back with OUT

    device = resolve_device("cpu" if args.cpu_smoke else "cuda")
    setup = Setup("tiny", "fp32", 16, 16) if args.cpu_smoke else Setup()
    run = Run(args.out, args.budget_s)
    run.figures["command"] = sys.argv
    run_plan(run, device, setup, args)
    print_table(run)
    run.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
