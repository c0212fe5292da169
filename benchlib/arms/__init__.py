"""Arms and their launchers (docs/architecture.md, "Arms").

An :class:`Arm` is data: a name, a kind (its role: native, container, isolated, rootfs), an engine,
an image, run flags, GPUs and environment. The arm's engine names its :class:`Launcher` in the
registry (:mod:`benchlib.arms.registry`), one module per engine: :mod:`~benchlib.arms.host`,
:mod:`~benchlib.arms.docker`, :mod:`~benchlib.arms.podman`, :mod:`~benchlib.arms.apptainer`,
:mod:`~benchlib.arms.runc` (isolated) and :mod:`~benchlib.arms.chroot` (rootfs), with the launcher
scripts ``_oci_launch.py`` and ``_chroot_launch.py`` beside them. The functions here are what the
runner calls; each asks the arm's launcher.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ._base import CannotVary, HostFacts, LaunchSpec, Launcher, Mechanism, container_name, wants_gpus
from ._flags import RunFlags, parse_size
from ._images import build_image
from ._model import (ARM_KINDS, BUILTIN_ARMS, DEFAULT_IMAGE, PRESETS, Arm, ArmKind, ArmSpec, arm_from_spec,
                     flag_privileges, select_arms)
from .apptainer import apptainer_image_ref
from .chroot import export_image
from .docker import cdi_specs_present
from .registry import engines_of_kind, launcher_for, launchers, register

__all__ = [
    "ARM_KINDS", "BUILTIN_ARMS", "DEFAULT_IMAGE", "PRESETS", "Arm", "ArmKind", "ArmSpec", "CannotVary", "HostFacts",
    "LaunchSpec", "Launcher", "Mechanism", "RunFlags", "apptainer_image_ref", "arm_from_spec", "build_image",
    "cdi_specs_present", "container_name", "engines_of_kind", "export_image", "flag_privileges", "image_digest",
    "launch_argv", "launcher_for", "launchers", "parse_run_flags", "parse_size", "preflight", "prepare_run_dir",
    "python_path", "raised_privileges", "register", "select_arms", "stop", "wants_gpus",
]


def launch_argv(arm: Arm, spec: LaunchSpec, host_has_gpu: bool, *, cdi: bool | None = None) -> list[str]:
    """The full command that runs ``spec.argv`` through ``arm``. ``cdi`` forces (True) or forbids (False)
    CDI device naming for Docker; None looks for CDI specs."""
    return launcher_for(arm).argv(arm, spec, HostFacts(host_has_gpu, cdi))


def preflight(arm: Arm, repo_dir: Path, run_dir: Path, host_has_gpu: bool) -> dict[str, Any]:
    """Check that ``arm`` can run here; facts for the manifest, or PreflightError (one sentence naming the
    arm and the fix). ``run_dir`` is the folder runs are written under (created when missing)."""
    return launcher_for(arm).preflight(arm, Path(repo_dir).resolve(), Path(run_dir).resolve(), HostFacts(host_has_gpu))


def stop(arm: Arm, spec: LaunchSpec) -> None:
    """Remove what an invocation left running (its container, after a timeout or a kill)."""
    launcher_for(arm).stop(arm, spec)


def prepare_run_dir(run_dir: Path, arm: Arm) -> None:
    """Make ``run_dir`` writable by whoever ``arm`` runs as (a container's UID 1000 when benchlib is root)."""
    launcher_for(arm).prepare_run_dir(arm, Path(run_dir))


def image_digest(engine: str, image: str) -> str | None:
    """The digest (or content ID) of ``image`` as ``engine`` names it; None when it is not there."""
    return launcher_for(engine).image_identity(image)


def python_path(arm: Arm, repo_dir: Path) -> str:
    return launcher_for(arm).python_path(arm, repo_dir)


def parse_run_flags(arm: Arm) -> RunFlags:
    """What the arm's flags ask for, as its launcher reads them (PreflightError names a flag it refuses)."""
    return launcher_for(arm).parsed_flags(arm)


def raised_privileges(run_flags: Sequence[str], kind: str = "container") -> list[str]:
    """The run flags that raise privileges, each as ``flag (what it grants)``; empty for a kind whose
    launchers take no flags (a native arm's flags launch nothing)."""
    takes = any(launcher_for(engine).takes_flags for engine in engines_of_kind(kind))
    return flag_privileges(run_flags) if takes else []
