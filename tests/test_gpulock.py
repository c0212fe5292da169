"""Fault injection, concurrent runs: one run per GPU (benchlib.gpulock), with real `benchlib run` processes.

No GPU is needed: ``BENCHLIB_GPU_IDS`` names the device the runs share and ``BENCHLIB_LOCK_DIR`` keeps
the locks of each test to itself. The runs are one cheap CPU case (launch, a few samples).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from benchlib import gpulock
from conftest import REPO, run_cli

CHEAP = "launches: 50\nround_trips: 5\nwarmup: 1\nmin_samples: 3\nmax_samples: 5\nmax_time_s: 0.3\ntelemetry_hz: 0\n"


def _suite(folder: Path, invocations: int = 1, cooldown_s: float = 0) -> Path:
    """A tiny suite; ``cooldown_s`` between two invocations keeps a run holding its lock, idle."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cheap.yaml").write_text(CHEAP)
    suite = folder / "tiny.yaml"
    suite.write_text(f"invocations: {invocations}\ncooldown_s: {cooldown_s}\narms: [native]\n"
                     "benchmarks:\n  - {benchmark: launch, params: cheap.yaml}\n")
    return suite


def _env(lock_dir: Path, device: str) -> dict[str, str]:
    return {"BENCHLIB_LOCK_DIR": str(lock_dir), "BENCHLIB_GPU_IDS": device, "PYTHONPATH": str(REPO)}


def _start(suite: Path, out: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    """A real `benchlib run` in its own process group (so that its papermill child can be killed with it)."""
    return subprocess.Popen([sys.executable, "-m", "benchlib", "run", "--suite", str(suite), "--out", str(out),
                             "--no-progress", *extra], cwd=REPO, env={**os.environ, **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _holder_once_running(process: subprocess.Popen, device: str, lock_dir: Path, timeout_s: float = 90) -> gpulock.Holder:
    """Wait until ``process`` holds ``device`` under its run id (the run directory exists then)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        holder = gpulock.current_holder(device, lock_dir)
        if holder is not None and holder.pid == process.pid and not holder.run.startswith("suite "):
            return holder
        time.sleep(0.1)
    raise AssertionError(f"run {process.pid} never took the lock of {device}")


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def _run_dirs(out: Path) -> list[Path]:
    return sorted(path for path in out.glob("*") if path.is_dir()) if out.exists() else []


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv(gpulock.LOCK_DIR_ENV, str(tmp_path / "locks"))
    return tmp_path / "locks"


def test_a_second_run_on_a_held_device_refuses_naming_the_holder_and_writes_nothing(tmp_path: Path, lock_dir: Path):
    env = _env(lock_dir, "test-gpu-0")
    holder_run = _start(_suite(tmp_path / "a", invocations=2, cooldown_s=120), tmp_path / "out-a", env)
    try:
        holder = _holder_once_running(holder_run, "test-gpu-0", lock_dir)
        assert holder.run == _run_dirs(tmp_path / "out-a")[0].name

        refused = run_cli("run", "--suite", str(_suite(tmp_path / "b")), "--out", str(tmp_path / "out-b"),
                          "--no-progress", "--gpu-lock", "refuse", env=env, timeout=120)
        assert refused.returncode == 2, refused.stderr
        last = refused.stderr.strip().splitlines()[-1]
        assert last.startswith("error: GPU test-gpu-0 of host ") and "is in use by run " in last, last
        assert f"run {holder.run} (pid {holder_run.pid}," in last and "--gpu-lock wait" in last, last
        assert _run_dirs(tmp_path / "out-b") == []

        timed_out = run_cli("run", "--suite", str(_suite(tmp_path / "b")), "--out", str(tmp_path / "out-b"),
                            "--no-progress", "--lock-timeout", "1", env=env, timeout=120)
        assert timed_out.returncode == 2, timed_out.stderr
        assert f"waiting for run {holder.run} (pid {holder_run.pid}" in timed_out.stderr
        assert "after waiting 1 s (--lock-timeout 1)" in timed_out.stderr.strip().splitlines()[-1]
        assert _run_dirs(tmp_path / "out-b") == []
        assert holder_run.poll() is None  # the holder was never disturbed
    finally:
        _kill(holder_run)


def test_runs_on_different_devices_run_at_the_same_time(tmp_path: Path, lock_dir: Path):
    holder_run = _start(_suite(tmp_path / "a", invocations=2, cooldown_s=120), tmp_path / "out-a",
                        _env(lock_dir, "test-gpu-0"))
    try:
        _holder_once_running(holder_run, "test-gpu-0", lock_dir)
        other = run_cli("run", "--suite", str(_suite(tmp_path / "b")), "--out", str(tmp_path / "out-b"),
                        "--no-progress", "--gpu-lock", "refuse", env=_env(lock_dir, "test-gpu-1"), timeout=180)
        assert other.returncode == 0, other.stderr
        assert "waiting" not in other.stderr
        assert holder_run.poll() is None  # still holding test-gpu-0 while the other run did all its work
        (run_dir,) = _run_dirs(tmp_path / "out-b")
        assert json.loads((run_dir / "manifest.json").read_text())["status"] == "complete"
    finally:
        _kill(holder_run)


def test_waiting_runs_take_turns_and_their_invocations_never_overlap(tmp_path: Path, lock_dir: Path):
    env = _env(lock_dir, "test-gpu-0")
    first = _start(_suite(tmp_path / "a", invocations=2, cooldown_s=3), tmp_path / "out-a", env)  # holds >= 3 s
    try:
        holder = _holder_once_running(first, "test-gpu-0", lock_dir)
        second = _start(_suite(tmp_path / "b"), tmp_path / "out-b", env)  # --gpu-lock wait is the default
        try:
            _, second_err = second.communicate(timeout=240)
        finally:
            _kill(second)
        first_out, first_err = first.communicate(timeout=240)
    finally:
        _kill(first)
    assert first.returncode == 0 and second.returncode == 0, first_err + second_err
    assert f"waiting for run {holder.run} (pid {first.pid}" in second_err and "on GPU test-gpu-0" in second_err

    windows = []
    for out in (tmp_path / "out-a", tmp_path / "out-b"):
        (run_dir,) = _run_dirs(out)
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["status"] == "complete"
        results = pd.concat(pd.read_parquet(path) for path in run_dir.rglob("results.parquet"))
        windows.append((manifest, int(results["start_ns"].min()), int(results["end_ns"].max())))
    (manifest_a, start_a, end_a), (manifest_b, start_b, end_b) = windows
    assert end_a < start_b, "the waiting run measured while the first still held the device"
    assert max(inv["ended_at"] for inv in manifest_a["invocations"]) <= min(
        inv["started_at"] for inv in manifest_b["invocations"])


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path: Path, lock_dir: Path):
    env = _env(lock_dir, "test-gpu-0")
    killed = _start(_suite(tmp_path / "a", invocations=2, cooldown_s=120), tmp_path / "out-a", env)
    try:
        holder = _holder_once_running(killed, "test-gpu-0", lock_dir)
    finally:
        _kill(killed)  # SIGKILL: no clean-up runs, the lock file stays behind with the dead run in it
    lock_file = gpulock.lock_file("test-gpu-0", directory=lock_dir)
    assert json.loads(lock_file.read_text())["pid"] == holder.pid
    assert gpulock.current_holder("test-gpu-0", lock_dir) is None

    after = run_cli("run", "--suite", str(_suite(tmp_path / "b")), "--out", str(tmp_path / "out-b"),
                    "--no-progress", "--gpu-lock", "refuse", env=env, timeout=180)
    assert after.returncode == 0, after.stderr
    assert len(_run_dirs(tmp_path / "out-b")) == 1
    assert lock_file.read_text() == ""  # released: emptied, never deleted


def test_without_a_gpu_the_device_is_the_hosts_cpu(monkeypatch):
    monkeypatch.delenv(gpulock.IDS_ENV, raising=False)
    from benchlib.device import visible_gpu_uuids

    expected = tuple(sorted(visible_gpu_uuids())) or (gpulock.CPU_ID,)
    assert gpulock.device_ids() == expected
    monkeypatch.setenv(gpulock.IDS_ENV, "b, a,,a")
    assert gpulock.device_ids() == ("a", "b")
    assert gpulock.lock_file("GPU-1/2", host="h x", directory=Path("/l")) == Path("/l/h_x--GPU-1_2.lock")
