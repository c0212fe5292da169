"""Each benchmark notebook runs with plain papermill and its smoke params, and writes its outputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchlib import schema
from benchlib.workloads import registry

pytestmark = pytest.mark.notebook
BENCHMARKS = sorted(registry())


def _papermill(repo: Path, notebook: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "papermill", f"notebooks/{notebook}.ipynb", str(out), "-k", "python3",
         "--no-progress-bar", *extra],
        cwd=repo, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.parametrize("bench_name", BENCHMARKS)
def test_plain_papermill_with_smoke_params(repo: Path, tmp_path: Path, bench_name: str):
    done = _papermill(repo, bench_name, tmp_path / "out.ipynb", "-f", f"params/{bench_name}/smoke.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out.ipynb").is_file()


@pytest.mark.parametrize("bench_name", BENCHMARKS)
def test_notebook_writes_the_invocation_files(repo: Path, tmp_path: Path, bench_name: str):
    out_dir = tmp_path / "inv-1"
    done = _papermill(repo, bench_name, tmp_path / "out.ipynb", "-f", f"params/{bench_name}/smoke.yaml",
                      "-p", "output_dir", str(out_dir), "-p", "run_id", "t", "-p", "invocation", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    results = pd.read_parquet(out_dir / "results.parquet")
    assert list(results.columns) == list(schema.RESULT_COLUMNS)
    assert set(results["benchmark"]) == {bench_name} and set(results["run_id"]) == {"t"}
    assert (results["status"].isin(["ok", "skipped"])).all(), results[results["status"] == "failed"]["note"].tolist()
    telemetry = pd.read_parquet(out_dir / "telemetry.parquet")
    assert list(telemetry.columns) == list(schema.TELEMETRY_COLUMNS)
    assert "versions" in json.loads((out_dir / "env.json").read_text())


@pytest.mark.parametrize("bench_name", BENCHMARKS)
def test_notebooks_are_committed_thin_and_clean(repo: Path, bench_name: str):
    notebook = json.loads((repo / "notebooks" / f"{bench_name}.ipynb").read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert not any(cell.get("outputs") for cell in code)
    assert sum("parameters" in cell["metadata"].get("tags", []) for cell in code) == 1
    assert "benchlib." in "".join(code[-1]["source"])
    assert len(code) <= 3


def test_a_params_key_missing_from_the_parameters_cell_still_reaches_the_workload(repo: Path, tmp_path: Path):
    """papermill injects every key; notebook_parameters passes on whatever the params model knows."""
    out_dir = tmp_path / "inv"
    done = _papermill(repo, "membw", tmp_path / "out.ipynb", "-f", "params/membw/smoke.yaml",
                      "-p", "output_dir", str(out_dir), "-p", "min_time_s", "0.05")
    assert done.returncode == 0, done.stderr[-3000:]
    results = pd.read_parquet(out_dir / "results.parquet")
    assert {json.loads(p)["min_time_s"] for p in results["params"]} == {0.05}
