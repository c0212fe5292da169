"""One source of parameter defaults: the pydantic models. The notebooks' parameters cells restate
them exactly, and a case is named by one function in the plan, the notebook and the data."""
from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from benchlib.bench import RUN_KEYS, run_benchmark
from benchlib.params import case_name
from benchlib import analyse
from benchlib.suites import expand_entry
from benchlib.workloads import get_workload, registry
from conftest import REPO


def parameters_cell(notebook: Path) -> dict[str, Any]:
    """name -> value of every assignment in the notebook's cell tagged ``parameters``."""
    cells = json.loads(notebook.read_text())["cells"]
    (cell,) = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    values = {}
    for node in ast.parse(source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, f"{notebook}: only NAME = VALUE lines"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def _signature_defaults(function) -> dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("bench_name", sorted(registry()))
def test_the_parameters_cell_restates_the_models_defaults(bench_name: str):
    workload = get_workload(bench_name)
    fields = workload.params_model.model_fields
    runner_keys = _signature_defaults(run_benchmark)
    cell = parameters_cell(REPO / "notebooks" / f"{bench_name}.ipynb")
    for name, value in cell.items():
        if name in RUN_KEYS:
            assert value == runner_keys[name], f"{bench_name}: {name} = {value!r}, run_benchmark's is {runner_keys[name]!r}"
            continue
        assert name in fields, f"notebooks/{bench_name}.ipynb sets {name!r}, which {workload.params_model.__name__} lacks"
        default = fields[name].get_default(call_default_factory=True)
        assert (value, type(value)) == (default, type(default)), \
            f"notebooks/{bench_name}.ipynb: {name} = {value!r}, but {workload.params_model.__name__} says {default!r}"
    assert set(workload.case_keys) <= set(cell), f"{bench_name}: every case key is shown in the parameters cell"
    assert set(RUN_KEYS) <= set(cell)


def test_the_analysis_notebook_restates_analyses_defaults():
    cell = parameters_cell(REPO / "notebooks" / "analysis.ipynb")
    assert cell == _signature_defaults(analyse)


def test_plan_and_notebook_name_a_case_left_to_its_default_alike(tmp_path: Path):
    """A params file that sets only host_cap_mib: the plan, a direct call and the real notebook name
    the case by the model's chunk_mib, so telemetry and fingerprints join the results by case."""
    params = tmp_path / "only-cap.yaml"
    params.write_text("host_cap_mib: 16\ntelemetry_hz: 0.0\ndevice: cpu\n")
    (planned,) = expand_entry("memcap", str(params), "test")
    default = get_workload("memcap").params_model.model_fields["chunk_mib"].default
    assert planned.case == f"chunk_mib={default}" == case_name(get_workload("memcap"), planned.values)
    direct = run_benchmark("memcap", **planned.values).results
    assert set(direct["case"]) == {planned.case}
    out_dir = tmp_path / "inv-1"
    done = subprocess.run([sys.executable, "-m", "papermill", "notebooks/memcap.ipynb", str(tmp_path / "out.ipynb"),
                           "-f", str(params), "-p", "output_dir", str(out_dir), "-k", "python3", "--no-progress-bar"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(pd.read_parquet(out_dir / "results.parquet")["case"]) == {planned.case}
