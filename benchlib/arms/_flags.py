"""Docker's ``run`` flag syntax, as the isolated (runc) and rootfs (chroot) launchers read an arm's flags,
and as every launcher that takes them rewrites one flag to vary a mechanism (:func:`with_flag`)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

from ..errors import PreflightError
from ._model import Arm

__all__ = ["DEFAULT_SHM_BYTES", "RunFlags", "expand_cpu_list", "parse_run_flags", "parse_size", "with_flag"]

DEFAULT_SHM_BYTES = 64 * 1024 * 1024


@dataclass
class RunFlags:
    """What an isolated or rootfs arm's ``flags`` ask for (docker ``run`` syntax)."""

    cpus: float | None = None
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    memory: int | None = None
    memory_swap: int | None = None  # -1: unlimited
    pids_limit: int | None = None
    shm_size: int = DEFAULT_SHM_BYTES
    seccomp: str | None = None  # None: no filter; "unconfined"; or a profile path
    ipc_host: bool = False
    net_host: bool = False
    pid_host: bool = False
    ulimits: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (soft, hard); -1 unlimited
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)

    @property
    def has_cgroup_limits(self) -> bool:
        return any(value is not None for value in (self.cpus, self.cpuset_cpus, self.cpuset_mems, self.memory,
                                                   self.memory_swap, self.pids_limit))


_VALUE_FLAGS = {"--cpus", "--cpuset-cpus", "--cpuset-mems", "--memory", "-m", "--memory-swap", "--pids-limit",
                "--shm-size", "--security-opt", "--ipc", "--network", "--net", "--pid", "--ulimit", "--cap-add",
                "--cap-drop"}
_RLIMITS = {"core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc", "rss",
            "rtprio", "rttime", "sigpending", "stack", "as"}


def parse_size(text: str) -> int:
    """Docker's sizes: ``64m``, ``8g``, ``1.5G``, ``1024k``, ``512mb``, ``100`` (bytes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size (like 64m or 8g)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** " kmgtp".index(unit or " "))


def _tokens(flags: Iterable[str]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    items = list(flags)
    i = 0
    while i < len(items):
        token = str(items[i])
        if token.startswith("--") and "=" in token:
            name, _, value = token.partition("=")
            out.append((name, value))
        elif token in _VALUE_FLAGS:
            if i + 1 >= len(items):
                raise ValueError(f"{token} needs a value")
            out.append((token, str(items[i + 1])))
            i += 1
        else:
            out.append((token, None))
        i += 1
    return out


def parse_run_flags(arm: Arm, refuse: Callable[[str, str | None], str | None] | None = None,
                    strict: bool = True) -> RunFlags:
    """The arm's run flags (preset first) as :class:`RunFlags`; PreflightError names a bad one.

    ``refuse(name, value)`` returns why a launcher cannot apply a flag (None: it can); with
    ``strict`` False, flags this parser does not know are skipped (an engine that checks its own).
    """
    where = f"arm {arm.name!r}"
    flags = RunFlags()
    try:
        tokens = _tokens(arm.run_flags)
    except ValueError as exc:
        raise PreflightError(f"{where}: {exc} in its flags; write flags like --cpus=4.") from None
    for name, value in tokens:
        why = refuse(name, value) if refuse else None
        if why:
            raise PreflightError(f"{where}: {why}")
        try:
            _apply_flag(flags, name, value)
        except ValueError as exc:
            if not strict:
                continue
            raise PreflightError(f"{where}: flag {name}{'=' + value if value is not None else ''} is not "
                                 f"understood ({exc}); see the isolated arm's flags in benchlib/arms/runc.py.") from None
    return flags


def with_flag(arm: Arm, option: str, value: str | None, key: str | None = None) -> Arm:
    """``arm`` with every ``option`` (``--shm-size``; with ``key``, only ``--ulimit memlock=...``-like
    ones whose value starts with ``key=``) removed from its run flags and, unless ``value`` is None,
    ``option=value`` appended. The preset is folded into the flags, so the result has preset defaults."""
    kept: list[str] = []
    for name, given in _tokens(arm.run_flags):
        if name == option and (key is None or (given or "").partition("=")[0] == key):
            continue
        kept.append(name if given is None else f"{name}={given}")
    if value is not None:
        kept.append(f"{option}={value}")
    return replace(arm, preset="defaults", flags=tuple(kept))


def _apply_flag(flags: RunFlags, name: str, value: str | None) -> None:
    if value is None:
        raise ValueError("unknown flag or missing value")
    if name == "--cpus":
        flags.cpus = float(value)
        if flags.cpus <= 0:
            raise ValueError("must be positive")
    elif name == "--cpuset-cpus":
        flags.cpuset_cpus = _cpu_list(value)
    elif name == "--cpuset-mems":
        flags.cpuset_mems = _cpu_list(value)
    elif name in ("--memory", "-m"):
        flags.memory = parse_size(value)
    elif name == "--memory-swap":
        flags.memory_swap = -1 if value.strip() == "-1" else parse_size(value)
    elif name == "--pids-limit":
        flags.pids_limit = int(value)
    elif name == "--shm-size":
        flags.shm_size = parse_size(value)
    elif name == "--security-opt":
        key, sep, rest = value.partition("=")
        if key == "seccomp" and sep:
            flags.seccomp = rest
        elif key in ("no-new-privileges", "no-new-privileges:true") or value == "no-new-privileges=true":
            pass  # always on
        else:
            raise ValueError("only seccomp=PATH|unconfined is supported")
    elif name in ("--ipc", "--network", "--net", "--pid"):
        if value not in ("host", "private", "none", "bridge", "shareable"):
            raise ValueError("only host (share the host's) or the default")
        host = value == "host"
        if name == "--ipc":
            flags.ipc_host = host
        elif name == "--pid":
            flags.pid_host = host
        else:
            flags.net_host = host
    elif name == "--ulimit":
        key, sep, limits = value.partition("=")
        if not sep or key not in _RLIMITS:
            raise ValueError(f"write NAME=SOFT[:HARD] with NAME one of {', '.join(sorted(_RLIMITS))}")
        soft, _, hard = limits.partition(":")
        flags.ulimits[key] = (int(soft), int(hard or soft))
    elif name in ("--cap-add", "--cap-drop"):
        cap = value.upper()
        cap = cap if cap.startswith("CAP_") or cap == "ALL" else f"CAP_{cap}"
        (flags.cap_add if name == "--cap-add" else flags.cap_drop).append(cap)
    else:
        raise ValueError("unknown flag")


def _cpu_list(value: str) -> str:
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", value.strip()):
        raise ValueError("write CPUs like 0-3 or 0,2,4")
    return value.strip()


def expand_cpu_list(value: str) -> list[int]:
    cpus: list[int] = []
    for part in value.split(","):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus
