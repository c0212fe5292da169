"""Podman arms (engine ``podman``, kind ``container``): Docker's command line with ``podman``, GPUs
always through CDI (``--device nvidia.com/gpu=all``), and ``--userns=keep-id`` when rootless so
that the UID inside is the invoker's own."""
from __future__ import annotations

import os

from ._base import HostFacts, wants_gpus
from ._model import Arm
from .docker import DockerLauncher

__all__ = ["PodmanLauncher"]


class PodmanLauncher(DockerLauncher):
    engine = "podman"

    def gpu_flags(self, arm: Arm, host: HostFacts) -> list[str]:
        return ["--device", "nvidia.com/gpu=all"] if wants_gpus(arm, host) else []

    def user_flags(self) -> list[str]:
        flags = super().user_flags()
        if os.geteuid() != 0:
            flags.append("--userns=keep-id")  # rootless podman: keep the invoker's UID inside
        return flags

    def install_hint(self) -> str:
        return "install podman"

    def start_hint(self) -> str:
        return "check `podman info`"
