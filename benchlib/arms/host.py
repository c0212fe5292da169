"""The ``native`` arm (engine ``host``): papermill on the host's own python, nothing in between.

The argv is returned unchanged; the launching process gets this process's environment plus the
invocation's (``LaunchSpec.env``). Of the mechanisms it can vary only the environment.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ._base import HostFacts, LaunchSpec, Launcher
from ._model import Arm

__all__ = ["HostLauncher"]


class HostLauncher(Launcher):
    engine = "host"
    kind = "native"
    userland = "host"
    takes_flags = False
    isolation = "none"

    def argv(self, arm: Arm, spec: LaunchSpec, host: HostFacts) -> list[str]:
        return list(spec.argv)

    def child_env(self, arm: Arm, spec: LaunchSpec) -> dict[str, str]:
        return {**os.environ, **spec.env}

    def preflight(self, arm: Arm, repo_dir: Path, run_dir: Path, host: HostFacts) -> dict[str, Any]:
        return {"engine": "host", "python": sys.executable, "python_version": sys.version.split()[0]}
