"""Errors a user can hit. Each carries one sentence naming the file, key or command to fix."""
from __future__ import annotations


__all__ = ["BenchlibError", "ParamsError", "PreflightError", "SkipCase"]

class BenchlibError(Exception):
    """A problem the user can fix; the CLI prints its message alone and exits non-zero."""


class ParamsError(BenchlibError):
    """A params or suite file is missing, malformed, or holds a bad value."""


class PreflightError(BenchlibError):
    """An arm cannot run here (engine missing, image absent, no GPU inside the container, ...)."""


class SkipCase(Exception):
    """Raised by a workload when a case cannot run on this machine (e.g. it needs a GPU)."""
