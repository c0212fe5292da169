"""Alignments: the one change an ablation arm makes, in abstract terms (docs/architecture.md, "Diagnosis").

An alignment makes one side of a comparison like the other in one mechanism and nothing else. Most
change the slower arm towards the baseline (``side == "arm"``): the share of the gap that closes is
what that mechanism costs. Some change the baseline towards the arm (``side == "baseline"``): the
share of the gap that appears is what the mechanism reproduces (the arm's environment variables
applied to the baseline; the image's userland without isolation). Launchers map each kind onto their
own flags and say which kinds they can express; this module knows no engine.

Each alignment also says what a user would change to get the same effect (``fix``): the Docker flag,
the environment variable, the image to rebuild. ``what`` is the short name used in sentences
("aligning /dev/shm closes 97 % of the gap").
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

Side = Literal["arm", "baseline"]

__all__ = [
    "AlignCpuQuota", "AlignCpuset", "AlignIpcHost", "AlignMemoryLimit", "AlignNetworkHost", "AlignShm",
    "AlignUlimit", "Alignment", "ApplyEnv", "Combined", "SeccompUnconfined", "SetEnv", "SetThreads",
    "StackSplit", "Side", "format_bytes",
]


def format_bytes(size: int) -> str:
    """Bytes as Docker's size syntax, exact: ``67108864`` -> ``64m``, ``137438953472`` -> ``128g``."""
    for suffix, unit in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return f"{size}b"


@dataclass(frozen=True)
class Alignment(ABC):
    """One change to one side of a comparison; subclasses say which and what a user would do."""

    side: ClassVar[Side] = "arm"

    @property
    @abstractmethod
    def what(self) -> str:
        """What the ablation arm runs with, in a few words."""

    @property
    @abstractmethod
    def fix(self) -> str:
        """What a user changes to get the same: the flag, the variable, the image."""


@dataclass(frozen=True)
class AlignShm(Alignment):
    """The arm's /dev/shm as large as the baseline's."""

    size_bytes: int

    @property
    def what(self) -> str:
        return f"/dev/shm at the baseline's {format_bytes(self.size_bytes)}"

    @property
    def fix(self) -> str:
        return f"run the container with --shm-size={format_bytes(self.size_bytes)} (or --ipc=host)"


@dataclass(frozen=True)
class AlignIpcHost(Alignment):
    """The arm in the host's IPC namespace, so its /dev/shm is the host's."""

    @property
    def what(self) -> str:
        return "the host's IPC namespace and /dev/shm"

    @property
    def fix(self) -> str:
        return "run the container with --ipc=host (or a large --shm-size)"


@dataclass(frozen=True)
class AlignCpuQuota(Alignment):
    """The arm's CPU quota as the baseline's (``cores`` None: no quota)."""

    cores: float | None

    @property
    def what(self) -> str:
        return "no CPU quota" if self.cores is None else f"a CPU quota of {self.cores:g} cores"

    @property
    def fix(self) -> str:
        if self.cores is None:
            return ("run the container without --cpus (or with more CPUs), or size the thread pools to the quota "
                    "(OMP_NUM_THREADS, torch.set_num_threads)")
        return f"run the container with --cpus={self.cores:g}"


@dataclass(frozen=True)
class AlignCpuset(Alignment):
    """The arm's CPU set as the baseline's (``cpus`` None: every CPU of the host)."""

    cpus: str | None

    @property
    def what(self) -> str:
        return "every CPU of the host" if self.cpus is None else f"CPUs {self.cpus}"

    @property
    def fix(self) -> str:
        return ("run the container without --cpuset-cpus" if self.cpus is None
                else f"run the container with --cpuset-cpus={self.cpus}")


@dataclass(frozen=True)
class SetThreads(Alignment):
    """The arm's thread pools sized to ``count`` (OMP_NUM_THREADS): the CPUs it may use."""

    count: int

    @property
    def what(self) -> str:
        return f"thread pools of {self.count} (OMP_NUM_THREADS={self.count})"

    @property
    def fix(self) -> str:
        return (f"size the thread pools to the CPUs the container may use: OMP_NUM_THREADS={self.count} "
                f"(-e OMP_NUM_THREADS={self.count}) or torch.set_num_threads({self.count})")


@dataclass(frozen=True)
class SeccompUnconfined(Alignment):
    """The arm without a seccomp filter, as the baseline runs."""

    @property
    def what(self) -> str:
        return "no seccomp filter"

    @property
    def fix(self) -> str:
        return ("run with --security-opt seccomp=unconfined (this drops a protection: prefer a profile that allows "
                "the hot system calls)")


@dataclass(frozen=True)
class AlignUlimit(Alignment):
    """One resource limit of the arm (``memlock``, ``stack``, ``nofile``) as the baseline's."""

    resource: str
    soft: str
    hard: str

    @property
    def value(self) -> str:
        """Docker's ``--ulimit`` value: ``-1`` for unlimited, ``soft:hard`` when they differ."""
        soft, hard = ("-1" if v == "unlimited" else v for v in (self.soft, self.hard))
        return soft if soft == hard else f"{soft}:{hard}"

    @property
    def what(self) -> str:
        return f"the {self.resource} limit at the baseline's {self.value}"

    @property
    def fix(self) -> str:
        return f"run the container with --ulimit {self.resource}={self.value}"


@dataclass(frozen=True)
class AlignMemoryLimit(Alignment):
    """The arm's cgroup memory limit as the baseline's (``limit_bytes`` None: none)."""

    limit_bytes: int | None

    @property
    def what(self) -> str:
        return "no memory limit" if self.limit_bytes is None else f"a memory limit of {format_bytes(self.limit_bytes)}"

    @property
    def fix(self) -> str:
        return ("run the container without --memory (or with more)" if self.limit_bytes is None
                else f"run the container with --memory={format_bytes(self.limit_bytes)}")


@dataclass(frozen=True)
class AlignNetworkHost(Alignment):
    """The arm in the host's network namespace."""

    @property
    def what(self) -> str:
        return "the host's network"

    @property
    def fix(self) -> str:
        return "run the container with --network=host"


@dataclass(frozen=True)
class SetEnv(Alignment):
    """Environment variables of the arm set to the baseline's values (None: unset)."""

    values: tuple[tuple[str, str | None], ...]

    @property
    def what(self) -> str:
        return _env_words(self.values, "the baseline's")

    @property
    def fix(self) -> str:
        unset = [name for name, value in self.values if value is None]
        given = [f"{name}={value}" for name, value in self.values if value is not None]
        parts = ([f"unset {', '.join(unset)} (in a container: drop it from the image's ENV and the run's -e)"]
                 if unset else [])
        parts += [f"set {', '.join(given)} (in a container: the run's -e)"] if given else []
        return "; ".join(parts)


@dataclass(frozen=True)
class ApplyEnv(Alignment):
    """The reverse: the arm's values of environment variables applied to the baseline (None: unset)."""

    side: ClassVar[Side] = "baseline"
    values: tuple[tuple[str, str | None], ...]

    @property
    def what(self) -> str:
        return _env_words(self.values, "the arm's")

    @property
    def fix(self) -> str:
        parts = [f"{name}={value}" if value is not None else f"{name} unset" for name, value in self.values]
        return (f"the arm's {', '.join(parts)} is what does it: change that in the arm (its image's ENV or the run's "
                "-e)")


def _env_words(values: tuple[tuple[str, str | None], ...], whose: str) -> str:
    """``OMP_NUM_THREADS unset`` / ``MKL_CBWR=AVX2`` / ``A unset, B=1``: the variables as the ablation sets them
    (``whose`` is kept for the words of a mixed or long list)."""
    words = [f"{name} unset" if value is None else f"{name}={value}" for name, value in values]
    if len(words) > 3:
        return f"{', '.join(name for name, _ in values)} at {whose} values"
    return ", ".join(words)


@dataclass(frozen=True)
class StackSplit(Alignment):
    """The software stack apart from the isolation: ``isolated`` runs the baseline's userland under the
    arm's isolation (the share that closes is the stack's); ``rootfs`` runs the arm's userland without
    isolation, and ``native_image_env`` the baseline's binaries with the image's environment (the
    shares that appear are the stack's, and the part of it its environment variables carry)."""

    variant: Literal["isolated", "rootfs", "native_image_env"]

    @property
    def side(self) -> Side:  # type: ignore[override]
        return "arm" if self.variant == "isolated" else "baseline"

    @property
    def what(self) -> str:
        return {"isolated": "the baseline's userland under the arm's isolation",
                "rootfs": "the image's userland without isolation",
                "native_image_env": "the baseline's binaries with the image's environment"}[self.variant]

    @property
    def fix(self) -> str:
        if self.variant == "native_image_env":
            return "the image's environment variables carry it: set or unset them in the image (ENV) or the run (-e)"
        return ("the image's software stack: rebuild the image on the framework build (torch, CUDA, cuBLAS) the host "
                "runs, or move to an image release whose build runs these kernels as fast")


@dataclass(frozen=True)
class Combined(Alignment):
    """Several alignments in one ablation arm, for mechanisms that may act only together."""

    parts: tuple[Alignment, ...]

    def __post_init__(self) -> None:
        if len(self.parts) < 2 or len({part.side for part in self.parts}) != 1:
            raise ValueError("a combined ablation holds two or more alignments of one side (all the arm's, or all "
                             "the baseline's)")

    @property
    def side(self) -> Side:  # type: ignore[override]
        return self.parts[0].side

    @property
    def what(self) -> str:
        return " and ".join(part.what for part in self.parts)

    @property
    def fix(self) -> str:
        return "; ".join(part.fix for part in self.parts)
