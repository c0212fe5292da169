"""The launcher registry: an arm's ``engine`` names the :class:`~benchlib.arms.Launcher` that runs it.

One entry per engine, as papermill registers its engines. Adding an engine is one module beside
these and one line in :data:`BUILTIN` (README, "Adding an engine"); :func:`register` adds one at run
time (a plugin, a test). Everything that depends on how an arm is launched asks its launcher here:
no other module branches on an arm's kind or engine.
"""
from __future__ import annotations

from typing import Iterable

from ._base import Launcher
from ._model import Arm
from .apptainer import ApptainerLauncher
from .chroot import ChrootLauncher
from .docker import DockerLauncher
from .host import HostLauncher
from .podman import PodmanLauncher
from .runc import RuncLauncher

__all__ = ["BUILTIN", "engines_of_kind", "launcher_for", "launchers", "register"]

#: The built-in launchers, one per engine.
BUILTIN: tuple[Launcher, ...] = (HostLauncher(), DockerLauncher(), PodmanLauncher(), ApptainerLauncher(),
                                 RuncLauncher(), ChrootLauncher())
_LAUNCHERS: dict[str, Launcher] = {}


def register(launcher: Launcher) -> Launcher:
    """Make ``launcher`` the one for its engine (replacing an earlier one of that name)."""
    _LAUNCHERS[launcher.engine] = launcher
    return launcher


def launchers() -> dict[str, Launcher]:
    """engine -> launcher, in registration order."""
    return dict(_LAUNCHERS)


def launcher_for(arm_or_engine: Arm | str) -> Launcher:
    """The launcher of an arm (by its engine) or of an engine name; KeyError names the known ones."""
    engine = arm_or_engine.engine if isinstance(arm_or_engine, Arm) else str(arm_or_engine)
    try:
        return _LAUNCHERS[engine]
    except KeyError:
        raise KeyError(f"no launcher for engine {engine!r}; engines are {', '.join(_LAUNCHERS)}") from None


def engines_of_kind(kind: str) -> tuple[str, ...]:
    """The engines whose arms are of ``kind`` (native: host; container: docker, podman, apptainer; ...)."""
    return tuple(name for name, launcher in _LAUNCHERS.items() if launcher.kind == kind)


def _register_all(items: Iterable[Launcher]) -> None:
    for launcher in items:
        register(launcher)


_register_all(BUILTIN)
