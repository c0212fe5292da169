"""Where the project's folders are: the repository root holds notebooks/, params/ and outputs/."""
from __future__ import annotations

import os
from pathlib import Path


__all__ = ["default_outputs", "notebook_for", "notebooks_dir", "params_dir", "repo_root", "suites_dir"]

def repo_root() -> Path:
    """The checkout this package runs from (``BENCHLIB_REPO`` overrides, e.g. for an installed copy)."""
    override = os.environ.get("BENCHLIB_REPO")
    return Path(override).resolve() if override else Path(__file__).resolve().parent.parent


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def params_dir() -> Path:
    return repo_root() / "params"


def suites_dir() -> Path:
    return params_dir() / "suites"


def default_outputs() -> Path:
    return repo_root() / "outputs"


def notebook_for(benchmark: str) -> Path:
    return notebooks_dir() / f"{benchmark}.ipynb"
