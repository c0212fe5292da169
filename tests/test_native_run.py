"""End to end, natively: the smoke suite through the real CLI, papermill and parquet files."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchlib import load_envs, load_run, load_telemetry, schema
from benchlib.manifest import Manifest

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    from conftest import run_cli

    out = tmp_path_factory.mktemp("outputs")
    done = run_cli("run", "--suite", "smoke", "--arms", "native", "--invocations", "3", "--out", str(out),
                   "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = [path.parent for path in out.glob("*/manifest.json")]
    return run_dir


def test_every_invocation_wrote_its_four_files_and_the_manifest_checksums_them(smoke_run: Path):
    manifest = Manifest.load(smoke_run)
    assert manifest.status == "complete"
    assert manifest.invocations and all(inv.status == "complete" for inv in manifest.invocations)
    for inv in manifest.invocations:
        folder = smoke_run / inv.rel_dir
        assert folder.relative_to(smoke_run).parts[:2] == ("native", inv.benchmark)
        for name in ("executed.ipynb", "results.parquet", "telemetry.parquet", "env.json"):
            assert (folder / name).is_file(), folder / name
            assert name in inv.files and len(inv.files[name]) == 64
        assert inv.ran_as is not None and inv.duration_s > 0


def test_results_load_as_one_tidy_frame_in_the_schema(smoke_run: Path):
    results = load_run(smoke_run)
    assert list(results.columns) == list(schema.RESULT_COLUMNS)
    manifest = Manifest.load(smoke_run)
    assert set(results["invocation"]) == {1, 2, 3}
    assert results["run_id"].unique().tolist() == [manifest.run_id]
    times = results[(results["metric"] == "time") & (results["status"] == "ok")]
    assert (times["value"] > 0).all() and (times["end_ns"] >= times["start_ns"]).all()
    assert times.groupby(["case", "invocation"]).size().min() >= 10  # min_samples of smoke.yaml
    assert set(times["work_unit"].dropna()) <= {"FLOP", "B", "token"}
    assert (schema.with_rates(times)["rate"] > 0).all()
    # no GPU here: every row says where it ran
    assert set(results["device"]) == {"cpu"}


def test_telemetry_and_fingerprints_are_there(smoke_run: Path):
    telemetry = load_telemetry(smoke_run)
    assert set(schema.TELEMETRY_COLUMNS) <= set(telemetry.columns)
    envs = load_envs(smoke_run)
    assert envs
    for env in envs.values():
        assert "native" in json.dumps(env["arm"])  # the runner told the notebook which arm it is
        assert "telemetry" in env and env["telemetry"]["status"]
        json.dumps(env)


def test_executed_notebook_shows_the_summary_table(smoke_run: Path):
    manifest = Manifest.load(smoke_run)
    notebook = json.loads((smoke_run / manifest.invocations[0].rel_dir / "executed.ipynb").read_text())
    outputs = [out for cell in notebook["cells"] if cell["cell_type"] == "code" for out in cell.get("outputs", [])]
    html = "".join("".join(out.get("data", {}).get("text/html", "")) for out in outputs)
    assert "TFLOP/s" in html and "median" in html


def test_resume_reruns_only_what_is_not_complete(smoke_run: Path, tmp_path: Path):
    import shutil

    from conftest import run_cli

    copy = tmp_path / smoke_run.name
    shutil.copytree(smoke_run, copy)
    manifest = Manifest.load(copy)
    victim = manifest.invocations[1]
    victim.status = "running"  # as if the run died here
    untouched = manifest.invocations[0].files["results.parquet"]
    manifest.save(copy)
    done = run_cli("run", "--resume", str(copy), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "1 of" in done.stderr
    after = Manifest.load(copy)
    assert after.status == "complete"
    assert after.invocations[0].files["results.parquet"] == untouched
    assert after.invocations[1].ran_as == max(inv.ran_as for inv in after.invocations)


@pytest.mark.parametrize("args, fragment", [
    (["--suite", "nosuch"], "unknown suite 'nosuch'"),
    (["--suite", "smoke", "--arms", "warp"], "unknown arm 'warp'"),
    (["--suite", "smoke", "--invocations", "0"], "--invocations must be at least 1"),
])
def test_bad_input_exits_non_zero_and_writes_nothing(tmp_path: Path, args, fragment):
    from conftest import run_cli

    out = tmp_path / "outputs"
    done = run_cli("run", *args, "--out", str(out), "--no-progress")
    assert done.returncode != 0
    assert fragment in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not out.exists() or not any(out.iterdir())


def test_bad_params_file_names_file_and_key(tmp_path: Path, repo: Path):
    from conftest import run_cli

    bad_params = tmp_path / "bad.yaml"
    bad_params.write_text("n: -3\ndtype: fp32\n")
    suite = tmp_path / "s.yaml"
    suite.write_text(f"benchmarks:\n  - {{benchmark: matmul, params: {bad_params}}}\n")
    out = tmp_path / "outputs"
    done = run_cli("run", "--suite", str(suite), "--out", str(out), "--no-progress")
    assert done.returncode == 2
    assert str(bad_params) in done.stderr and "'n'" in done.stderr
    assert not out.exists()
