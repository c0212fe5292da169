"""Helpers for tests that start, signal and inspect real ``benchlib run`` processes."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from benchlib._process import MARK

REPO = Path(__file__).resolve().parent.parent


def start_cli(*args: str, log: Path) -> subprocess.Popen:
    """``python -m benchlib ARGS`` in a session of its own (as a shell job is), output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "benchlib", *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def marked_processes(run_dir: Path) -> list[psutil.Process]:
    """Live processes of any invocation of ``run_dir`` (they carry its folder in their environment)."""
    prefix = str(run_dir) + os.sep
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARK, "").startswith(prefix) and alive(process):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def alive(process: psutil.Process) -> bool:
    """Running and not a zombie (the same process: psutil checks its start time)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail saying ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def kernel_of(runner: subprocess.Popen) -> psutil.Process | None:
    """The ipykernel process under ``runner``, once it has started."""
    try:
        children = psutil.Process(runner.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            if "ipykernel_launcher" in " ".join(child.cmdline()):
                return child
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return None


def the_run_dir(out: Path) -> Path:
    (run_dir,) = [path.parent for path in out.glob("*/manifest.json")]
    return run_dir
