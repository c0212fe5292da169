"""Failure-tolerant sweeps and clean stops, for real: the `fault` workload fails on purpose (a real
MemoryError, a real SIGSEGV of the kernel, a real hang) through the real CLI, papermill and kernel;
SIGINT and SIGTERM go to a real `benchlib run`."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from docker_fixtures import docker_engine, docker_image  # noqa: F401  (fixtures)
from runs import alive, kernel_of, marked_processes, start_cli, the_run_dir, wait_for

from benchlib import load_run, schema
from benchlib.manifest import Manifest
from benchlib.report import analyse
from benchlib.suites import load_suite, suite_names
from benchlib.workloads import registry

pytestmark = pytest.mark.notebook
HANG_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def fault_sweep(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    from conftest import run_cli

    root = tmp_path_factory.mktemp("faults")
    suite = root / "faults.yaml"
    suite.write_text(f"invocations: 1\ntimeout_s: {HANG_TIMEOUT_S}\nbenchmarks:\n  - {{benchmark: fault, params: all}}\n")
    began = time.monotonic()
    done = run_cli("run", "--suite", str(suite), "--out", str(root / "outputs"), "--no-progress", timeout=300)
    assert time.monotonic() - began < 120, "the sweep should take about 4 invocations plus one timeout"
    return done, the_run_dir(root / "outputs")


def test_the_sweep_goes_on_past_every_fault_and_exits_1(fault_sweep):
    done, run_dir = fault_sweep
    assert done.returncode == 1, done.stdout + done.stderr
    manifest = Manifest.load(run_dir)
    assert manifest.status == "partial"
    by_mode = {inv.case: inv for inv in manifest.invocations}
    assert list(by_mode) == ["mode=ok", "mode=oom", "mode=crash", "mode=hang"]  # all ran, in order
    assert by_mode["mode=ok"].status == "complete" and by_mode["mode=ok"].error is None
    assert {inv.status for case, inv in by_mode.items() if case != "mode=ok"} == {"failed"}
    assert "out of memory" in by_mode["mode=oom"].error and "MemoryError" in by_mode["mode=oom"].error
    assert "DeadKernelError" in by_mode["mode=crash"].error
    assert f"timed out after {HANG_TIMEOUT_S} s (suite key timeout_s)" in by_mode["mode=hang"].error
    assert not marked_processes(run_dir), "the hung kernel was left running"


def test_the_summary_names_each_failed_invocation_and_why_on_one_line(fault_sweep):
    done, run_dir = fault_sweep
    manifest = Manifest.load(run_dir)
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"run {manifest.run_id}: 1 complete, 3 failed")
    assert "3 of 4 invocations failed:" in lines
    for inv in manifest.invocations[1:]:
        assert f"  failed: {inv.label}: {inv.error}" in lines
    assert lines[-1] == f"run them again with: benchlib run --resume {run_dir}"


def test_failed_invocations_keep_their_files_checksummed_and_the_report_lists_them(fault_sweep):
    _, run_dir = fault_sweep
    manifest = Manifest.load(run_dir)
    oom = next(inv for inv in manifest.invocations if inv.case == "mode=oom")
    rows = pd.read_parquet(run_dir / oom.rel_dir / "results.parquet")
    assert rows["status"].tolist() == ["failed"] and "out of memory" in rows["note"].iloc[0]
    assert all(inv.file_problem(run_dir) is None for inv in manifest.invocations)
    results = load_run(run_dir)  # complete invocations only: the ok case
    assert list(results.columns) == list(schema.RESULT_COLUMNS)
    assert set(results["case"]) == {"mode=ok"} and (results["status"] == "ok").all()
    problems = "\n".join(analyse(run_dir).problems)  # what the report lists at its top
    for inv in manifest.invocations[1:]:
        assert f"invocation {inv.label} failed: {inv.error}" in problems


def test_the_fault_workload_stays_out_of_the_suites_and_apart_in_the_listing():
    from conftest import run_cli

    assert registry()["fault"].for_tests
    for name in suite_names():
        assert "fault" not in {case.benchmark for case in load_suite(name).cases}, name
    listing = run_cli("list").stdout
    benchmarks, tests_only = listing.split("for tests only")
    assert "\n  fault " not in benchmarks and "\n  fault " in tests_only


def _interrupt_mid_invocation(tmp_path: Path, signum: int, suite_text: str, started) -> tuple[subprocess.Popen, Path]:
    """Start a run, wait until ``started(runner, run_dir)`` says its invocation runs, then send ``signum``
    to the runner's process group, as a terminal's Ctrl-C does."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(suite_text)
    runner = start_cli("run", "--suite", str(suite), "--out", str(tmp_path / "outputs"), "--no-progress",
                       log=tmp_path / "run.log")
    run_dir = wait_for(lambda: list((tmp_path / "outputs").glob("*/manifest.json")), 60, "the manifest")[0].parent
    wait_for(lambda: started(runner, run_dir), 90, "the invocation to start")
    os.killpg(runner.pid, signum)
    return runner, run_dir


OK_SUITE = "invocations: 1\nbenchmarks:\n  - {benchmark: fault, params: smoke}\n"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_cleanly_and_resume_completes_it(tmp_path: Path, signum: int):
    from conftest import run_cli

    children: list[psutil.Process] = []

    def kernel_started(runner: subprocess.Popen, run_dir: Path) -> bool:
        if kernel_of(runner) is None:
            return False
        children.extend(psutil.Process(runner.pid).children(recursive=True))  # papermill and the kernel
        return True

    runner, run_dir = _interrupt_mid_invocation(tmp_path, signum, OK_SUITE, kernel_started)
    assert runner.wait(timeout=15) == 128 + signum  # promptly
    log = (tmp_path / "run.log").read_text()
    name = signal.Signals(signum).name
    assert f"interrupted by {name}; resume with: benchlib run --resume {run_dir}" in log
    assert "Traceback" not in log
    assert len(children) >= 2 and not [child for child in children if alive(child)]
    manifest = Manifest.load(run_dir)
    assert manifest.status == "interrupted"
    assert [inv.status for inv in manifest.invocations] == ["pending"]
    assert f"interrupted by {name}; discarded" in manifest.invocations[0].notes[0]
    assert not (run_dir / manifest.invocations[0].rel_dir).exists()
    assert not list(run_dir.rglob("*.tmp"))
    if signum == signal.SIGTERM:
        return  # one resume is enough
    done = run_cli("run", "--resume", str(run_dir), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "1 of 1 invocations left" in done.stderr
    after = Manifest.load(run_dir)
    assert after.status == "complete" and all(inv.status == "complete" for inv in after.invocations)
    assert set(load_run(run_dir)["invocation"]) == {1}


@pytest.mark.docker
def test_ctrl_c_removes_the_running_container(tmp_path: Path, docker_image: str):  # noqa: F811
    suite_text = ("invocations: 1\narms: [container]\ntimeout_s: 120\n"
                  "benchmarks:\n  - {benchmark: fault, params: smoke}\n")
    def containers(run_dir: Path) -> list[str]:
        manifest = Manifest.load(run_dir)
        name = "benchlib-" + hashlib.sha1(str(run_dir / manifest.invocations[0].rel_dir).encode()).hexdigest()[:16]
        listed = subprocess.run(["docker", "ps", "-a", "--filter", f"name=^{name}$", "--format", "{{.Names}}"],
                                capture_output=True, text=True, timeout=30, check=True)
        return listed.stdout.split()

    runner, run_dir = _interrupt_mid_invocation(tmp_path, signal.SIGINT, suite_text,
                                                lambda runner, run_dir: containers(run_dir))
    assert runner.wait(timeout=30) == 130, (tmp_path / "run.log").read_text()
    assert containers(run_dir) == []
    manifest = Manifest.load(run_dir)
    assert manifest.status == "interrupted" and manifest.invocations[0].status == "pending"
