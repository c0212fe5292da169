"""All-reduce bus bandwidth at 1 GiB: the collectives workload (native, isolated, ...) vs nccl-tests' all_reduce_perf.

Run on a host with 2+ GPUs, nvcc and (for the isolated arms) root and runc; about 6-8 minutes:

    python benchmarks/collectives_vs_nccl_tests.py --nccl-tests-tar /path/to/nccl-tests-2.19.6.tar.gz --out "$OUT"

1. Builds ``all_reduce_perf`` from the tarball (its source is never part of this repository) in
   ``--work`` (default /tmp/benchlib-nccl-tests; a build of the same tarball is reused), with nvcc from
   CUDA_HOME or PATH, for this GPU's architecture only, against the NCCL torch loads (the
   nvidia-nccl wheel's headers and library; NCCL_HOME overrides).
2. Each round runs ``all_reduce_perf -b 8 -e 1G -f 2 -g N`` (N = every GPU, one process: a build
   without MPI cannot start one process per GPU; ``--mpirun`` builds with MPI=1 and runs
   ``mpirun -np N all_reduce_perf ... -g 1`` instead), then ``benchlib run`` of the collectives workload,
   all-reduce at the same sizes (8 B to 1 GiB by 2), one invocation in each arm of ``--arms``
   (default native,isolated; the arms are those of params/suites/collectives.yaml). NCCL_NVLS_ENABLE=0
   everywhere: no NVLink multicast object is created.
3. Prints bus bandwidth at ``--size`` side by side: nccl-tests out of place and in place (the
   reference: torch's all_reduce works in place), each arm's median over rounds, the difference, and
   whether it is within ``--target`` (5 %); then the transport each side used (NCCL_DEBUG=INFO).
   Everything is kept under ``--out``: build.log, nccl-tests-<k>.txt and their NCCL logs, the
   benchlib run folders, topology.txt, figures.json.

Without a GPU: ``--cpu --nccl-tests-output FILE`` runs the workload with gloo on 2 CPU processes
(small sizes; ``--size`` must be one of them) and compares it with a saved all_reduce_perf output,
which checks the script's parsing and table, not a figure.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchlib import load_run  # noqa: E402
from benchlib.nccl import DebugLog, PerfTable, parse_debug_log, parse_perf_table, size_label  # noqa: E402

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
SUITE = REPO / "params" / "suites" / "collectives.yaml"
GIB = 1 << 30


class SetupError(RuntimeError):
    """Something this machine lacks; the message names it and the fix."""


def parse_bytes(text: str) -> int:
    """``8``, ``64K``, ``1M``, ``1G`` (powers of 1024, as nccl-tests reads -b/-e)."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    return int(text[:-1] if scale > 1 else text) * scale


# --------------------------------------------------------------------------- build nccl-tests

def find_cuda_home() -> Path:
    if os.environ.get("CUDA_HOME"):
        return Path(os.environ["CUDA_HOME"])
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise SetupError("nvcc not found: set CUDA_HOME or put the CUDA toolkit's bin on PATH")
    return Path(nvcc).resolve().parent.parent


def find_nccl_home(work: Path) -> tuple[Path, Path]:
    """(NCCL_HOME with include/nccl.h and lib/libnccl.so, the folder the library loads from)."""
    candidates = []
    if os.environ.get("NCCL_HOME"):
        candidates.append(Path(os.environ["NCCL_HOME"]))
    try:
        import nvidia  # the pip wheels' namespace package (torch's NCCL: nvidia-nccl-cu12/cu13)

        for root in map(Path, nvidia.__path__):
            candidates += sorted(header.parent.parent for header in root.glob("**/include/nccl.h"))
    except ImportError:
        pass
    candidates.append(Path("/usr"))
    for home in candidates:
        header = home / "include" / "nccl.h"
        libs = sorted((home / "lib").glob("libnccl.so*")) + sorted(home.glob("lib/*/libnccl.so*"))
        if header.is_file() and libs:
            linked = work / "nccl-home"  # include/ and lib/libnccl.so -> the real files (wheels ship only .so.2)
            shutil.rmtree(linked, ignore_errors=True)
            (linked / "lib").mkdir(parents=True)
            (linked / "include").symlink_to(header.parent)
            (linked / "lib" / "libnccl.so").symlink_to(libs[-1])
            return linked, libs[-1].parent
    raise SetupError("no NCCL headers and library found (nccl.h and libnccl.so): set NCCL_HOME, or install "
                     "torch's nvidia-nccl wheel or the libnccl-dev package")


def gpu_gencode() -> str:
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"


def build(tarball: Path, work: Path, out: Path, mpi: bool) -> tuple[Path, Path]:
    """all_reduce_perf built from ``tarball`` (reused when this tarball was built before); (binary, NCCL lib dir)."""
    cuda_home, (nccl_home, nccl_lib) = find_cuda_home(), find_nccl_home(work)
    try:
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()[:16]
    except OSError as exc:
        raise SetupError(f"cannot read {tarball}: {exc.strerror}") from None
    source = work / f"src-{digest}"
    binary, marker = source / "build" / "all_reduce_perf", source / ".built"
    if binary.is_file() and marker.is_file() and marker.read_text() == f"mpi={mpi}":
        return binary, nccl_lib
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    try:
        with tarfile.open(tarball) as archive:
            archive.extractall(source, filter="data")
    except tarfile.TarError:
        raise SetupError(f"{tarball} is not a readable tar archive of the nccl-tests source") from None
    tops = [path for path in source.iterdir() if (path / "src" / "Makefile").is_file()]
    top = tops[0] if tops else source
    if not (top / "src" / "Makefile").is_file():
        raise SetupError(f"{tarball} holds no nccl-tests source tree (src/Makefile)")
    make = ["make", "-C", str(top / "src"), f"-j{os.cpu_count() or 4}", f"BUILDDIR={source / 'build'}",
            str(source / "build" / "all_reduce_perf"), f"CUDA_HOME={cuda_home}", f"NCCL_HOME={nccl_home}",
            f"NVCC_GENCODE={gpu_gencode()}"]
    if mpi:
        mpicc = shutil.which("mpicc")
        if mpicc is None:
            raise SetupError("--mpirun needs an MPI (mpicc, mpirun): apt-get install openmpi-bin libopenmpi-dev")
        make += ["MPI=1", f"MPI_HOME={Path(mpicc).resolve().parent.parent}"]
    with open(out / "build.log", "w") as log:
        log.write(" ".join(make) + "\n")
        log.flush()
        done = subprocess.run(make, stdout=log, stderr=subprocess.STDOUT, timeout=1200)
    if done.returncode != 0 or not binary.is_file():
        raise SetupError(f"building all_reduce_perf failed (exit {done.returncode}); see {out / 'build.log'}")
    marker.write_text(f"mpi={mpi}")
    return binary, nccl_lib


def run_nccl_tests(binary: Path, nccl_lib: Path, gpus: int, args: argparse.Namespace, out: Path, round_: int) -> Path:
    env = {**os.environ, "NCCL_DEBUG": "INFO", "NCCL_DEBUG_FILE": str(out / f"nccl-tests-{round_}.nccl.%h.%p.log"),
           "LD_LIBRARY_PATH": os.pathsep.join(p for p in (str(nccl_lib), os.environ.get("LD_LIBRARY_PATH", "")) if p)}
    for key, value in NO_MULTICAST.items():
        env.setdefault(key, value)
    sizes = ["-b", str(args.min_bytes), "-e", str(args.max_bytes), "-f", "2"]
    if args.mpirun:
        exported = [flag for key in ("LD_LIBRARY_PATH", "NCCL_DEBUG", "NCCL_DEBUG_FILE", *NO_MULTICAST)
                    for flag in ("-x", key)]
        command = ["mpirun", "--allow-run-as-root", "-np", str(gpus), *exported, str(binary), *sizes, "-g", "1"]
    else:
        command = [str(binary), *sizes, "-g", str(gpus)]
    path = out / f"nccl-tests-{round_}.txt"
    with open(path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=900)
    if done.returncode != 0:
        raise SetupError(f"all_reduce_perf exited {done.returncode}; see {path}")
    return path


# --------------------------------------------------------------------------- the workload

def suite_arms(names: list[str]) -> list[Any]:
    """The arms named, as params/suites/collectives.yaml defines them (a built-in name otherwise)."""
    defined = {}
    for spec in yaml.safe_load(SUITE.read_text())["arms"]:
        defined[spec if isinstance(spec, str) else spec["name"]] = spec
    return [defined.get(name, name) for name in names]


def write_suite(args: argparse.Namespace, out: Path) -> Path:
    params = {
        "device": "cpu" if args.cpu else "cuda", "op": "all_reduce", "dtype": "fp32", "min_bytes": args.min_bytes,
        "max_bytes": args.max_bytes, "step_factor": 2, "busbw_min_bytes": min(1 << 20, args.size),
        "warmup": 5, "min_samples": 20, "max_samples": 200, "max_time_s": 0.2 if args.cpu else 0.5,
        "target_rel_ci": 0.01, "timeout_s": 900.0, **({"ranks": 2} if args.cpu else {}),
    }
    params_path = out / "collectives-params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    suite = {"description": "benchmarks/collectives_vs_nccl_tests.py", "invocations": 1, "timeout_s": 1800,
             "arms": suite_arms(args.arms), "benchmarks": [{"benchmark": "collectives", "params": str(params_path)}]}
    path = out / "collectives-suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def run_workload(suite: Path, out: Path, round_: int) -> Path:
    folder = out / f"benchlib-{round_}"
    done = subprocess.run([sys.executable, "-m", "benchlib", "run", "--suite", str(suite), "--out", str(folder),
                           "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=3600)
    (out / f"benchlib-{round_}.log").write_text(done.stdout + done.stderr)
    runs = sorted(folder.glob("*/manifest.json"))
    if not runs:
        raise SetupError(f"benchlib run wrote no run (exit {done.returncode}); see {out / f'benchlib-{round_}.log'}")
    return runs[-1].parent


@dataclass
class ArmFigures:
    busbw: list[float] = field(default_factory=list)  # one median per invocation
    failures: list[str] = field(default_factory=list)
    transport: str = ""
    ranks: int | None = None


def workload_figures(run_dirs: list[Path], size: int) -> dict[str, ArmFigures]:
    """Per arm: the median busbw@<size> of each invocation, failures, the transport NCCL reported."""
    metric = f"busbw@{size_label(size)}"
    figures: dict[str, ArmFigures] = {}
    for run_dir in run_dirs:
        results = load_run(run_dir)
        for arm, rows in results.groupby("arm", sort=False):
            entry = figures.setdefault(str(arm), ArmFigures())
            failed = rows[rows["status"] != "ok"]
            entry.failures += [str(note) for note in failed["note"].dropna().unique()]
            for _, invocation in rows[rows["metric"] == metric].groupby("invocation"):
                entry.busbw.append(float(invocation["value"].median()))
            ranks = rows.loc[rows["metric"] == "ranks", "value"]
            entry.ranks = int(ranks.iloc[0]) if not ranks.empty else entry.ranks
            transport = rows.loc[rows["metric"] == "transport_p2p", "note"]
            if not transport.empty:
                entry.transport = str(transport.iloc[0]).removeprefix("transport: ")
    return figures


# --------------------------------------------------------------------------- the table

def comparison(tables: list[PerfTable], figures: dict[str, ArmFigures], size: int, target: float) -> dict[str, Any]:
    rows = [row for row in (table.at(size) for table in tables) if row is not None]
    if not rows:
        raise SetupError(f"the nccl-tests output has no line for {size} B; give --size one of its sizes")
    reference = statistics.median(row.inplace_busbw_gbs for row in rows)
    arms = {}
    for arm, entry in figures.items():
        busbw = statistics.median(entry.busbw) if entry.busbw else None
        difference = busbw / reference - 1 if busbw is not None and reference > 0 else None
        arms[arm] = {"busbw_gbs": busbw, "invocations": entry.busbw, "difference": difference, "ranks": entry.ranks,
                     "within_target": difference is not None and abs(difference) <= target,
                     "failures": entry.failures, "transport": entry.transport}
    return {"size_bytes": size, "target": target,
            "nccl_tests": {"out_of_place_busbw_gbs": statistics.median(row.busbw_gbs for row in rows),
                           "in_place_busbw_gbs": reference, "rounds": len(rows), "ranks": tables[0].ranks},
            "arms": arms}


def render(figures: dict[str, Any]) -> str:
    tests = figures["nccl_tests"]
    lines = [f"all-reduce bus bandwidth at {size_label(figures['size_bytes'])}, GB/s, median over rounds",
             f"{'source':<44}{'ranks':>6}{'busbw':>10}{'vs nccl-tests':>15}  within {figures['target']:.0%}"]

    def line(source: str, ranks: Any, busbw: str, versus: str = "", verdict: str = "") -> None:
        lines.append(f"{source:<44}{ranks or '?':>6}{busbw:>10}{versus:>15}  {verdict}".rstrip())

    line("nccl-tests all_reduce_perf, out of place", tests["ranks"], f"{tests['out_of_place_busbw_gbs']:.2f}")
    line("nccl-tests all_reduce_perf, in place", tests["ranks"], f"{tests['in_place_busbw_gbs']:.2f}", "(reference)")
    for arm, entry in figures["arms"].items():
        if entry["busbw_gbs"] is None:
            line(f"benchlib collectives, {arm}", entry["ranks"], "failed", "", "no")
        else:
            line(f"benchlib collectives, {arm}", entry["ranks"], f"{entry['busbw_gbs']:.2f}",
                 f"{entry['difference']:+.1%}", "yes" if entry["within_target"] else "NO")
    lines.append("transports (NCCL_DEBUG=INFO):")
    lines.append(f"  nccl-tests: {tests.get('transport') or 'not logged'}")
    for arm, entry in figures["arms"].items():
        lines.append(f"  {arm}: {entry['transport'] or 'not logged'}")
        for failure in entry["failures"][:2]:
            lines.append(f"  {arm} failed: {failure[:400]}")
    return "\n".join(lines)


def nccl_tests_transport(out: Path) -> str:
    log = DebugLog()
    for path in sorted(out.glob("nccl-tests-*.nccl.*.log")):
        with open(path, errors="replace") as handle:
            parse_debug_log(handle, into=log)
    return log.summary() if log.lines else ""


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--nccl-tests-tar", type=Path, help="nccl-tests source tarball (2.19.6)")
    source.add_argument("--nccl-tests-output", type=Path, action="append",
                        help="a saved all_reduce_perf output instead of building and running it (repeatable)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/collectives-vs-nccl-tests")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/benchlib-nccl-tests"), help="where nccl-tests is built")
    parser.add_argument("--arms", default="native,isolated", help="arms of params/suites/collectives.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-bytes", type=parse_bytes, default=8)
    parser.add_argument("--max-bytes", type=parse_bytes, default=GIB)
    parser.add_argument("--size", type=parse_bytes, default=GIB, help="the size compared (default 1G)")
    parser.add_argument("--target", type=float, default=0.05)
    parser.add_argument("--mpirun", action="store_true", help="one process per GPU through MPI (builds with MPI=1)")
    parser.add_argument("--cpu", action="store_true", help="the workload on 2 gloo CPU processes (script check)")
    args = parser.parse_args()
    args.arms = [arm.strip() for arm in args.arms.split(",") if arm.strip()]
    if args.size > args.max_bytes or args.min_bytes > args.max_bytes:
        parser.error("--size and --min-bytes must not exceed --max-bytes")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        gpus = 0 if args.cpu else gpu_count()
        if not args.cpu and gpus < 2:
            print(f"note: {gpus} GPU(s) visible; an all-reduce over fewer than 2 GPUs moves no data (busbw 0), and "
                  "the workload records such a case as skipped: run this on a host with 2+ GPUs", file=sys.stderr)
        if not args.cpu and shutil.which("nvidia-smi"):
            topology = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=30)
            (out / "topology.txt").write_text(topology.stdout + topology.stderr)
        binary = nccl_lib = None
        if args.nccl_tests_tar:
            args.work.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            binary, nccl_lib = build(args.nccl_tests_tar.resolve(), args.work.resolve(), out, args.mpirun)
            print(f"all_reduce_perf ready in {time.perf_counter() - started:.0f} s: {binary}", file=sys.stderr)
        suite = write_suite(args, out)
        outputs, run_dirs = list(args.nccl_tests_output or []), []
        for round_ in range(1, args.rounds + 1):
            if binary is not None:
                outputs.append(run_nccl_tests(binary, nccl_lib, gpus, args, out, round_))
            run_dirs.append(run_workload(suite, out, round_))
            print(f"round {round_}/{args.rounds} done", file=sys.stderr)
        tables = [parse_perf_table(Path(path).read_text()) for path in outputs]
        figures = comparison(tables, workload_figures(run_dirs, args.size), args.size, args.target)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    figures["nccl_tests"]["transport"] = nccl_tests_transport(out)
    (out / "figures.json").write_text(json.dumps(figures, indent=2))
    print(render(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
