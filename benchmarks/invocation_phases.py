"""Where does the fixed cost of one invocation go? Each phase timed as its own fresh process.

Run on the machine under test (about 1-2 minutes on an H100 host):

    python benchmarks/invocation_phases.py [--repeats 3] [--json phases.json]

An invocation is a fresh ``python -m papermill`` that starts a Jupyter kernel, which imports torch
and benchlib, initialises CUDA, captures the fingerprint, runs the work and writes its files. Each
line below is a separate process doing one more step than the line before, so the differences
between medians are what each step adds (process start, torch import, CUDA context, the first
cuBLAS call, the fingerprint, papermill with a kernel running one empty cell).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CUDA = "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()"
CUBLAS = CUDA + "; a = torch.ones(1024, 1024, device='cuda', dtype=torch.bfloat16); (a @ a).sum().item()"
FINGERPRINT = "from benchlib import fingerprint; fingerprint.capture()"
SAMPLER = "from benchlib.telemetry import NvmlSampler\nwith NvmlSampler(hz=100) as s: pass"
PHASES = [
    ("python -c pass", "pass"),
    ("+ import torch", "import torch"),
    ("+ CUDA context", CUDA),
    ("+ first cuBLAS matmul", CUBLAS),
    ("import torch + fingerprint.capture()", FINGERPRINT),
    ("import torch + NVML sampler start/stop", SAMPLER),
    ("import papermill", "import papermill"),
]


def timed(argv: list[str], cwd: Path) -> float:
    began = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - began


def empty_notebook(directory: Path) -> Path:
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]})]
    path = directory / "empty.ipynb"
    nbformat.write(notebook, path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        notebook = empty_notebook(Path(tmp))
        commands = [(label, [sys.executable, "-c", code]) for label, code in PHASES]
        commands.append(("papermill, kernel, one empty cell", [sys.executable, "-m", "papermill", str(notebook),
                                                               str(Path(tmp) / "out.ipynb"), "-k", "python3"]))
        for label, argv in commands:
            try:
                seconds = [timed(argv, REPO) for _ in range(args.repeats)]
            except subprocess.CalledProcessError as exc:  # e.g. the CUDA phases on a machine without a GPU
                print(f"{label:<42} failed: {exc.stderr.decode(errors='replace').strip().splitlines()[-1][:120]}")
                continue
            rows.append({"phase": label, "median_s": statistics.median(seconds), "all_s": seconds})
            print(f"{label:<42} {statistics.median(seconds):6.2f} s   ({', '.join(f'{s:.2f}' for s in seconds)})",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
