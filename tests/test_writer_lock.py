"""The run directory's writer lock: a live writer refuses a second one; a dead or zombie writer never
blocks a resume (issue 15: `kill -9` of a runner, then `--resume` while the killed runner was a zombie)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from benchlib import _process
from benchlib.errors import BenchlibError

# A writer that takes the lock as the runner does, then forks a child that inherits the descriptor (so
# the lock outlives the writer), prints both process ids and waits.
_WRITER = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    print(os.getpid(), child, flush=True)
    time.sleep(60)
""")


@pytest.fixture
def killed_writer(tmp_path: Path):
    """A writer killed with SIGKILL and left unreaped (a zombie) whose lock its forked child still holds."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    writer_pid, child_pid = map(int, writer.stdout.readline().split())
    os.kill(writer_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while psutil.Process(writer_pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield run_dir, writer_pid
    finally:
        os.kill(child_pid, signal.SIGKILL)
        writer.wait()
        writer.stdout.close()


def test_a_zombie_writer_whose_lock_lives_on_does_not_block(killed_writer):
    run_dir, writer_pid = killed_writer
    assert psutil.Process(writer_pid).status() == psutil.STATUS_ZOMBIE
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _process.lock_holders(fd) == [writer_pid]  # the lock is still held, in the zombie's name
    finally:
        os.close(fd)
    with _process.hold_exclusively(run_dir, "run directory", stale_wait_s=0.3):
        # and the writer that took over excludes the next one, although the directory lock is not its own
        with pytest.raises(BenchlibError, match="another benchlib process is writing run directory"):
            with _process.hold_exclusively(run_dir, "run directory", stale_wait_s=0.3):
                pass


def test_a_live_writer_still_refuses_a_second_one(tmp_path: Path):
    with _process.hold_exclusively(tmp_path, "run directory"):
        started = time.monotonic()
        with pytest.raises(BenchlibError, match=f"another benchlib process is writing run directory {tmp_path};"):
            with _process.hold_exclusively(tmp_path, "run directory"):
                pass
        assert time.monotonic() - started < 2  # a live holder is refused at once, not waited for
    with _process.hold_exclusively(tmp_path, "run directory"):  # released when the block ends
        pass
