"""An invocation's processes, and the signals that stop a run.

An invocation is a process tree: papermill (or the engine client that runs it), the kernel it
starts and whatever the kernel starts. The runner keeps that tree from outliving it:

* papermill starts in a session of its own, so a Ctrl-C at the terminal reaches the runner alone,
  which then stops the invocation itself (:func:`stop_tree`) and records it;
* the kernel runs in yet another session (jupyter_client starts it so), so killing a process group
  is not enough: :func:`stop_tree` kills every descendant psutil finds, the kernel included;
* papermill gets ``PR_SET_PDEATHSIG`` = SIGKILL (Linux): when the runner dies, even of SIGKILL,
  papermill dies with it, and ipykernel exits within a second of losing its parent (its parent
  poller), so no orphan goes on using the GPU or writing into the run directory;
* every process of an invocation carries :data:`MARK` = its invocation folder in its environment, so
  a resumed run finds and kills what a killed runner left (:func:`kill_marked`). A container lives
  outside this tree: the runner removes it with :func:`benchlib.arms.stop`.

:func:`interrupt_on_signals` turns SIGINT and SIGTERM into :class:`Interrupted` (a
``KeyboardInterrupt``) once; a second signal while the run cleans up is ignored, so the cleanup ends.
:func:`hold_exclusively` keeps two runners from writing one run directory.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

import psutil

from .errors import BenchlibError

MARK = "BENCHLIB_INVOCATION_DIR"
_PR_SET_PDEATHSIG = 1
_KILL_WAIT_S = 10.0


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the runner."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Within the block, the first SIGINT or SIGTERM raises :class:`Interrupted`; later ones are ignored.

    Outside the main thread (where Python cannot install handlers) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        if not received:
            received.append(signum)
            raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def start(command: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen:
    """Start an invocation's command in its own session, dying with this process (see the module)."""
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True, preexec_fn=_die_with_parent())


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec function that asks Linux to SIGKILL the child when this process ends (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def stop_tree(process: subprocess.Popen) -> None:
    """Kill ``process`` and every descendant (the kernel runs in a session of its own), and reap them."""
    try:
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        process.wait(timeout=_KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        pass
    psutil.wait_procs(tree, timeout=_KILL_WAIT_S)


def kill_marked(folder: Path) -> int:
    """Kill every process whose :data:`MARK` lies inside ``folder`` (left by a killed run); how many."""
    prefix = str(Path(folder)) + os.sep
    killed = []
    for candidate in psutil.process_iter():
        try:
            if candidate.pid != os.getpid() and candidate.environ().get(MARK, "").startswith(prefix):
                candidate.kill()
                killed.append(candidate)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    psutil.wait_procs(killed, timeout=_KILL_WAIT_S)
    return len(killed)


WRITER_LOCK = ".writer.lock"  # the run directory's second lock, taken over from a dead or zombie writer
_STALE_LOCK_WAIT_S = 5.0


@contextmanager
def hold_exclusively(folder: Path, what: str, stale_wait_s: float = _STALE_LOCK_WAIT_S) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` for the block (flock: the kernel drops it when the holder dies,
    SIGKILL included, so a killed run never leaves a stale lock); one clear sentence when another holds it.

    A dead or zombie writer never blocks: the lock can outlive its writer's death (a killed process not
    yet reaped whose threads are still exiting, or a process that inherited the descriptor). When every
    holder /proc/locks names is gone or a zombie, the lock is waited for ``stale_wait_s`` seconds, then
    taken over. Every writer also holds a flock on ``folder/.writer.lock``, so two writers that take over
    a stale lock at once still exclude each other."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        raise BenchlibError(f"{what} {folder} does not exist or is not a folder.") from None
    busy = BenchlibError(f"another benchlib process is writing {what} {folder}; wait for it to end "
                         "(or stop it), then run `benchlib run --resume` again.")
    writer = None
    try:
        if not _flock_now(fd) and not (_held_by_dead_writers(fd) and _flock_within(fd, stale_wait_s, busy)):
            raise busy from None
        writer = os.open(Path(folder) / WRITER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        if not _flock_now(writer):
            raise busy from None
        yield
    finally:
        if writer is not None:
            os.close(writer)
        os.close(fd)


def _flock_now(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _flock_within(fd: int, seconds: float, busy: BenchlibError) -> bool:
    """Wait up to ``seconds`` for a stale lock (its holders dead or zombies) to go; True either way, unless a
    live holder appears meanwhile (then :class:`BenchlibError` ``busy``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _flock_now(fd):
            return True
        if not _held_by_dead_writers(fd):
            raise busy from None
        time.sleep(0.1)
    return True  # taken over: the .writer.lock flock excludes other writers from here on


def _held_by_dead_writers(fd: int) -> bool:
    """Whether /proc/locks names holders of ``fd``'s file and every one is gone or a zombie (False when
    it names none, or cannot be read: then the lock is treated as live)."""
    holders = lock_holders(fd)
    return bool(holders) and not any(_alive(pid) for pid in holders)


def lock_holders(fd: int) -> list[int]:
    """The process ids /proc/locks gives for the flock locks on ``fd``'s file (empty where unknown)."""
    info = os.fstat(fd)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    holders = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device and fields[4].isdigit():
            holders.append(int(fields[4]))
    return holders


def _alive(pid: int) -> bool:
    """A process that runs (a pid of 0 or outside this namespace counts as alive: it cannot be checked)."""
    if pid <= 0:
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
