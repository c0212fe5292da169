"""The Launcher interface every engine implements, and what launchers share.

A launcher turns (arm, papermill argv) into the command that runs it, checks that the arm can run
here (preflight), stops what a killed invocation left, names the image it runs, and says which
mechanisms (docs/architecture.md, "What is known to make a container slower") it can vary, so that
an ablation arm aligning one mechanism with the baseline can be derived from an arm (:meth:`vary`).
Launchers are registered by engine name in :mod:`benchlib.arms.registry`.
"""
from __future__ import annotations

import enum
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

from ..errors import PreflightError
from ._flags import RunFlags, parse_run_flags, with_flag
from ._model import Arm, flag_privileges

__all__ = ["CannotVary", "HostFacts", "LaunchSpec", "Launcher", "Mechanism", "container_name", "wants_gpus"]

#: Environment variables forwarded from where benchlib runs into every arm that does not inherit its environment.
FORWARDED_ENV = ("CUDA_VISIBLE_DEVICES",)
QUERY_TIMEOUT_S = 30  # engine version / image inspect / kill
PROBE_TIMEOUT_S = 180  # one short trial run (the first start of a large image can be slow)


@dataclass(frozen=True)
class LaunchSpec:
    """What to run for one invocation, independent of the arm that launches it."""

    argv: list[str]  # the papermill command line to run inside the arm
    repo_dir: Path  # absolute; mounted READ-ONLY at the same path inside a container
    run_dir: Path  # absolute outputs/<run_id>; mounted READ-WRITE at the same path
    workdir: Path  # cwd for the command (inside run_dir)
    env: dict[str, str] = field(default_factory=dict)  # environment for the command
    name: str | None = None  # container name; None: derived from workdir (see container_name)


@dataclass(frozen=True)
class HostFacts:
    """What a launcher needs to know of the machine it launches on."""

    has_gpu: bool
    cdi: bool | None = None  # force (True) or forbid (False) CDI device naming; None: look for CDI specs


class Mechanism(str, enum.Enum):
    """A difference between arms that an ablation arm can align with the baseline, one at a time.

    The value :meth:`Launcher.vary` takes for each: ``SHM_SIZE`` bytes of /dev/shm; ``IPC_HOST`` a
    bool (the host's IPC namespace and /dev/shm); ``CPU_QUOTA`` CPUs as a float, None for no quota;
    ``CPUSET`` a CPU list such as ``"0-3"``, None for all; ``SECCOMP`` ``"unconfined"``, a profile
    path, or None for the engine's default; ``MEMLOCK`` bytes (-1 unlimited), None for the default;
    ``ENV`` a mapping of variables to set (a value of None drops the arm's own setting of it).
    """

    SHM_SIZE = "shm_size"
    IPC_HOST = "ipc_host"
    CPU_QUOTA = "cpu_quota"
    CPUSET = "cpuset"
    SECCOMP = "seccomp"
    MEMLOCK = "memlock"
    ENV = "env"


class CannotVary(PreflightError):
    """A launcher cannot express a mechanism (one sentence naming the arm, the mechanism and why)."""


def wants_gpus(arm: Arm, host: HostFacts) -> bool:
    return arm.gpus == "all" or (arm.gpus == "auto" and host.has_gpu)


def container_name(spec: LaunchSpec) -> str:
    """A stable container name for an invocation: ``benchlib-`` and a hash of its workdir."""
    if spec.name:
        return spec.name
    return "benchlib-" + hashlib.sha1(str(spec.workdir).encode()).hexdigest()[:16]


def forwarded_env(spec: LaunchSpec) -> dict[str, str]:
    """The invocation's environment plus the forwarded variables (CUDA_VISIBLE_DEVICES) set here."""
    env = dict(spec.env)
    for key in FORWARDED_ENV:
        if key in os.environ and key not in env:
            env[key] = os.environ[key]
    return env


def run_quiet(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def first_error_line(text: str) -> str:
    """The telling line of an engine's error output, without the runtime's layers of prefixes."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    chosen = lines[-1] if lines else "no output"
    for line in lines:
        lowered = line.lower()
        if "error" in lowered or "unknown" in lowered or "invalid" in lowered or "denied" in lowered:
            chosen = line
            break
    for prefix in ("error during container init: ", "OCI runtime create failed: "):
        if prefix in chosen:
            chosen = chosen.split(prefix, 1)[1]
            break
    return chosen[:300]


class Launcher:
    """One engine: how its arms are launched, checked, stopped and varied. Subclass it, set the class
    attributes, implement :meth:`argv` and :meth:`preflight`, and register an instance
    (README, "Adding an engine")."""

    #: The arm's ``engine`` this launcher serves (the registry key).
    engine: ClassVar[str]
    #: The arm kind it gives: its role in the decomposition (native, container, isolated, rootfs).
    kind: ClassVar[str]
    #: Whose userland runs the notebook: the host's (same python, same libraries) or the image's.
    userland: ClassVar[Literal["host", "image"]] = "image"
    #: Whether an arm of this engine must name an image.
    needs_image: ClassVar[bool] = False
    #: Whether the arm's ``flags`` reach the engine (a native arm's launch nothing).
    takes_flags: ClassVar[bool] = True
    #: Whether the process runs as a non-root user even when benchlib runs as root (UID 0 inside is then a problem).
    drops_root: ClassVar[bool] = False
    #: What the arm is isolated by, in a few words (shown where arms are described).
    isolation: ClassVar[str] = ""
    #: Mechanism -> how this launcher expresses it (the flag or setting :meth:`vary` changes).
    mechanisms: ClassVar[Mapping[Mechanism, str]] = {Mechanism.ENV: "the arm's env"}
    #: Where to look when a trial run hangs (preflight's message).
    stuck_hint: ClassVar[str] = "the processes left running"

    # ---------------------------------------------------------------------------------------------
    # launching

    def argv(self, arm: Arm, spec: LaunchSpec, host: HostFacts) -> list[str]:
        """The full command that runs ``spec.argv`` through ``arm``."""
        raise NotImplementedError

    def child_env(self, arm: Arm, spec: LaunchSpec) -> dict[str, str]:
        """The environment of the launching process: this process's (the engine gets ``spec.env``
        through its own options), or with ``spec.env`` added where the notebook inherits it."""
        return dict(os.environ)

    def python(self, arm: Arm) -> str:
        """The interpreter that runs papermill inside the arm: this one on the host's userland."""
        return sys.executable if self.userland == "host" else "python3"

    def python_path(self, arm: Arm, repo_dir: Path) -> str:
        """PYTHONPATH for an invocation: the repository first, so every arm runs the same benchlib;
        on the host's userland the host's PYTHONPATH after it (both arms see the same environment),
        on an image's the repository alone."""
        entries = [str(repo_dir)]
        inherited = os.environ.get("PYTHONPATH")
        if inherited and self.userland == "host":
            entries.append(inherited)
        return os.pathsep.join(entries)

    def prepare_run_dir(self, arm: Arm, run_dir: Path) -> None:
        """Make ``run_dir`` writable for whoever the arm runs as (nothing to do when that is the invoker)."""

    def stop(self, arm: Arm, spec: LaunchSpec) -> None:
        """Remove what an invocation left running (after a timeout or a kill): nothing by default."""

    # ---------------------------------------------------------------------------------------------
    # checks and identity

    def check(self, arm: Arm) -> None:
        """Refuse (PreflightError, one sentence) an arm this launcher cannot run, without touching the
        system: called when a suite is loaded."""

    def preflight(self, arm: Arm, repo_dir: Path, run_dir: Path, host: HostFacts) -> dict[str, Any]:
        """Check that ``arm`` can run here; facts for the manifest, or PreflightError naming the fix."""
        raise NotImplementedError

    def image_identity(self, image: str) -> str | None:
        """The image's digest (or content ID) as the fingerprint records it; None without an image."""
        return None

    def parsed_flags(self, arm: Arm) -> RunFlags:
        """What the arm's flags ask for, read in Docker's syntax (flags of other syntaxes are skipped):
        its current /dev/shm size, CPU quota, cpuset, seccomp profile, ulimits..."""
        return parse_run_flags(arm, strict=False) if self.takes_flags else RunFlags()

    def raised_privileges(self, run_flags: Sequence[str]) -> list[str]:
        """The run flags that raise privileges, each as ``flag (what it grants)``."""
        return flag_privileges(run_flags) if self.takes_flags else []

    # ---------------------------------------------------------------------------------------------
    # mechanisms

    def vary(self, arm: Arm, mechanism: Mechanism, value: Any, name: str | None = None) -> Arm:
        """An arm like ``arm`` with one mechanism set to ``value`` and nothing else changed, named
        ``name`` (default ``<arm>+<mechanism>``); CannotVary when this launcher cannot express it."""
        if mechanism not in self.mechanisms:
            what = ", ".join(m.value for m in self.mechanisms) or "nothing"
            raise CannotVary(f"arm {arm.name!r}: a {self.engine} arm cannot vary {mechanism.value} (it can vary "
                             f"{what}); compare with an arm of another engine to measure it.")
        derived = self._vary(arm, mechanism, value)
        return replace(derived, name=name or f"{arm.name}+{mechanism.value}"[:64])

    def _vary(self, arm: Arm, mechanism: Mechanism, value: Any) -> Arm:
        if mechanism is Mechanism.ENV:
            env = {**arm.env, **{k: v for k, v in dict(value).items() if v is not None}}
            return replace(arm, env={k: v for k, v in env.items() if dict(value).get(k, v) is not None})
        return _FLAG_OF[mechanism](arm, value)


#: Mechanism -> the arm with its Docker-syntax flag for that mechanism set (None: removed).
_FLAG_OF = {
    Mechanism.SHM_SIZE: lambda arm, v: with_flag(arm, "--shm-size", None if v is None else str(int(v))),
    Mechanism.IPC_HOST: lambda arm, v: with_flag(arm, "--ipc", "host" if v else None),
    Mechanism.CPU_QUOTA: lambda arm, v: with_flag(arm, "--cpus", None if v is None else f"{float(v):g}"),
    Mechanism.CPUSET: lambda arm, v: with_flag(arm, "--cpuset-cpus", v),
    Mechanism.SECCOMP: lambda arm, v: with_flag(arm, "--security-opt", None if v is None else f"seccomp={v}",
                                               key="seccomp"),
    Mechanism.MEMLOCK: lambda arm, v: with_flag(arm, "--ulimit", None if v is None else f"memlock={int(v)}",
                                               key="memlock"),
}
#: How an engine that takes Docker's run flags expresses each mechanism.
DOCKER_SYNTAX: dict[Mechanism, str] = {
    Mechanism.SHM_SIZE: "--shm-size=BYTES", Mechanism.IPC_HOST: "--ipc=host", Mechanism.CPU_QUOTA: "--cpus=N",
    Mechanism.CPUSET: "--cpuset-cpus=LIST", Mechanism.SECCOMP: "--security-opt seccomp=unconfined|PATH",
    Mechanism.MEMLOCK: "--ulimit memlock=BYTES", Mechanism.ENV: "the arm's env",
}
