"""One run per GPU: a lock per device, so that two runs never measure on the same GPU at once.

Every ``benchlib run`` (``--resume`` too) holds an exclusive lock on each device of its host from
after the arms' preflight, before its run directory is written, until it ends. A second run meanwhile
either waits (``--gpu-lock wait``, the default: it says on stderr every :data:`REPORT_EVERY_S` s
``waiting for run X (pid P, started T) on GPU <uuid> of host H``, for at most ``--lock-timeout``
seconds when given) or refuses at once (``--gpu-lock refuse``: a :class:`DeviceBusyError` naming the
holder, exit 2, nothing written). ``--gpu-lock off`` takes no lock.

Which devices: the GPUs the run's invocations use, by UUID: those ``CUDA_VISIBLE_DEVICES`` names (every
arm gets it: the runner forwards it into containers), narrowed to the CUDA ordinals the workloads ask
for when the caller passes them (``DeviceLock(ordinals=...)``, from the cases' ``device`` parameters:
:func:`benchlib.device.ordinals_for`). So two runs on an 8-GPU server, one with
``CUDA_VISIBLE_DEVICES=0`` and one with ``CUDA_VISIBLE_DEVICES=1``, do not wait for each other. A MIG
slice is locked by its own ``MIG-`` UUID. A GPU NVML cannot read is left out (its UUID is unknown).
Without a GPU the device is the host's CPU, identifier ``cpu``, so CPU runs on one host are
serialised too (the CPU machine is the device then). ``BENCHLIB_GPU_IDS`` (comma-separated) replaces
the detected identifiers: tests use it to play "several runs on one device" without a GPU.

How: one file per (host, device) in the lock directory (``$BENCHLIB_LOCK_DIR``, default
``/tmp/benchlib-locks``, created world-writable with the sticky bit so that runs of different users
see each other), locked with ``fcntl.flock``. The kernel drops a flock when its holder exits, however
it dies (SIGKILL included), so a lock file left behind never blocks anyone; its content (JSON: run,
pid, host, device, start time) only names the holder in the messages, and is emptied on release.
Files are never deleted: removing a locked file would let the next run lock a new file of the same
name while the old one is still held. Runs that share a GPU must share the lock directory: runs on
one host do through /tmp; a run started inside a container needs ``BENCHLIB_LOCK_DIR`` on a bind
mount that the host's runs use too.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from .device import visible_gpu_uuids
from .errors import BenchlibError

MODES = ("wait", "refuse", "off")
LOCK_DIR_ENV, IDS_ENV = "BENCHLIB_LOCK_DIR", "BENCHLIB_GPU_IDS"
CPU_ID = "cpu"
REPORT_EVERY_S = 30.0  # how often a waiting run says what it waits for
POLL_S = 0.25


class DeviceBusyError(BenchlibError):
    """Another run holds a device this run needs (``--gpu-lock refuse``, or ``--lock-timeout`` ran out)."""


@dataclass(frozen=True)
class Holder:
    """Who holds a device's lock, as its lock file says."""

    run: str  # the run id, or "suite NAME (starting)" before the run directory exists
    pid: int
    host: str
    device: str
    started_at: str

    def describe(self) -> str:
        return f"run {self.run} (pid {self.pid}, started {self.started_at})"


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "benchlib-locks")


def host_name() -> str:
    return socket.gethostname() or "localhost"


def device_ids(ordinals: Iterable[int] | None = None) -> tuple[str, ...]:
    """The identifiers a run locks: ``$BENCHLIB_GPU_IDS``, else the UUIDs of the GPUs it uses (those
    ``CUDA_VISIBLE_DEVICES`` lets CUDA see, only ``ordinals`` of them when given), else ``cpu``."""
    override = [part.strip() for part in os.environ.get(IDS_ENV, "").split(",") if part.strip()]
    ids = override or list(visible_gpu_uuids(ordinals)) or [CPU_ID]
    return tuple(sorted(set(ids)))  # one global order: runs that wait on several devices never deadlock


def lock_file(device: str, host: str | None = None, directory: Path | None = None) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{host or host_name()}--{device}")
    return (directory or lock_dir()) / f"{name}.lock"


def device_label(device: str) -> str:
    return "the CPU (no GPU on this host)" if device == CPU_ID else f"GPU {device}"


def current_holder(device: str, directory: Path | None = None) -> Holder | None:
    """Who holds ``device`` on this host now; None when nobody does (a left-over file is not a holder)."""
    path = lock_file(device, directory=directory)
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(path) or Holder("(unknown)", 0, host_name(), device, "?")
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class DeviceLock:
    """Holds every device of :func:`device_ids` while in its ``with`` block (nothing with mode ``off``).

    ``ordinals``: the CUDA ordinals the run's cases use (default: every GPU CUDA can see)."""

    def __init__(self, mode: str = "wait", timeout_s: float | None = None, run: str = "(starting)",
                 log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
                 directory: Path | None = None, report_every_s: float = REPORT_EVERY_S,
                 ordinals: Iterable[int] | None = None):
        if mode not in MODES:
            raise BenchlibError(f"--gpu-lock must be one of {', '.join(MODES)}, not {mode!r}.")
        if timeout_s is not None and not timeout_s > 0:
            raise BenchlibError(f"--lock-timeout must be a positive number of seconds, not {timeout_s}.")
        self.mode, self.timeout_s, self.run, self.log = mode, timeout_s, run, log
        self.directory = Path(directory) if directory else lock_dir()
        self.report_every_s = report_every_s
        self.ordinals = None if ordinals is None else sorted(set(ordinals))
        self.host = host_name()
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._held: list[tuple[int, str]] = []  # (fd, device)

    def __enter__(self) -> "DeviceLock":
        if self.mode != "off":
            try:
                self._acquire_all()
            except BaseException:
                self.release()
                raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    @property
    def devices(self) -> list[str]:
        return [device for _, device in self._held]

    def name_run(self, run: str) -> None:
        """Once the run directory exists: name the run by its id in the lock files."""
        self.run = run
        for fd, device in self._held:
            self._write_holder(fd, device)

    def release(self) -> None:
        while self._held:
            fd, _ = self._held.pop()
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass  # opened read-only: nothing to empty
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ------------------------------------------------------------------------------------------------

    def _acquire_all(self) -> None:
        self._make_dir()
        began = time.monotonic()
        for device in device_ids(self.ordinals):
            fd = self._open(lock_file(device, self.host, self.directory))
            try:
                self._acquire(fd, device, began)
            except BaseException:
                os.close(fd)
                raise
            self._held.append((fd, device))
            self._write_holder(fd, device)

    def _acquire(self, fd: int, device: str, began: float) -> None:
        path = lock_file(device, self.host, self.directory)
        next_report = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            holder = _describe_holder(path)
            where = f"{device_label(device)} of host {self.host}"
            if self.mode == "refuse":
                raise DeviceBusyError(f"{where} is in use by {holder}; wait for it to end, or pass --gpu-lock wait "
                                      f"to queue behind it (lock file {path}).")
            waited = time.monotonic() - began
            if self.timeout_s is not None and waited >= self.timeout_s:
                raise DeviceBusyError(f"{where} is still in use by {holder} after waiting {waited:.0f} s "
                                      f"(--lock-timeout {self.timeout_s:g}); try again later or raise --lock-timeout.")
            if time.monotonic() >= next_report:
                self.log(f"waiting for {holder} on {where} ({waited:.0f} s so far; lock file {path})")
                next_report += self.report_every_s
            time.sleep(POLL_S)

    def _make_dir(self) -> None:
        if self.directory.is_dir():
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            os.chmod(self.directory, 0o1777)  # shared like /tmp: every user's runs lock here
        except OSError as exc:
            raise BenchlibError(f"cannot create the GPU lock directory {self.directory} ({exc.strerror}); set "
                                f"{LOCK_DIR_ENV} to a writable folder shared by all runs, or pass --gpu-lock off.") from None

    @staticmethod
    def _open(path: Path) -> int:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # another user's file that is not writable to us: flock works read-only too
            return os.open(path, os.O_RDONLY)
        try:
            os.fchmod(fd, 0o666)  # the umask narrowed it; let other users' runs open it read-write
        except OSError:
            pass  # not ours
        return fd

    def _write_holder(self, fd: int, device: str) -> None:
        record = Holder(self.run, os.getpid(), self.host, device, self.started_at)
        data = json.dumps(asdict(record)).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError:
            pass  # a read-only file: the lock holds, the messages just cannot name us


def _read_holder(path: Path) -> Holder | None:
    try:
        return Holder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _describe_holder(path: Path) -> str:
    """The holder as its file says; the file is briefly empty while a new holder writes it."""
    for _ in range(4):
        holder = _read_holder(path)
        if holder is not None:
            return holder.describe()
        time.sleep(0.05)
    return "another benchlib run (its lock file does not say which)"
