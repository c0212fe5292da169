"""Container images: inspect one, hash a file image, build the project image (``benchlib image build``)."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from ..errors import BenchlibError
from ._base import QUERY_TIMEOUT_S
from ._model import DEFAULT_IMAGE

__all__ = ["build_image", "file_sha256", "inspect_image"]

BUILD_TIMEOUT_S = 3 * 3600


@functools.lru_cache(maxsize=16)
def file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def inspect_image(engine: str, image: str) -> dict | None:
    if not shutil.which(engine):
        return None
    try:
        done = subprocess.run([engine, "image", "inspect", image], capture_output=True, text=True,
                              timeout=QUERY_TIMEOUT_S, check=False)
    except (subprocess.TimeoutExpired, OSError):
        return None
    if done.returncode != 0:
        return None
    try:
        records = json.loads(done.stdout)
    except json.JSONDecodeError:
        return None
    return records[0] if records else None


def build_image(tag: str = DEFAULT_IMAGE, base_image: str | None = None, build_args: dict[str, str] | None = None,
                engine: str = "docker", repo_dir: Path | None = None, ca_bundle: Path | None = None) -> None:
    """Build the project image from the repository's Dockerfile (``benchlib image build``).

    Passes the identity build args (PROJECT_VERSION, VCS_REF, BUILD_DATE; ``build_args`` override
    them) and BASE_IMAGE when given. When ``ca_bundle`` (default: ``$BENCHLIB_PIP_CA`` or
    ``$PIP_CERT``) names a file, it is copied to ``.ci/cache/pip-ca.crt`` for pip inside the build
    (networks that re-sign TLS). Uses Docker's legacy builder when buildx is missing. Output streams
    to the terminal; a failure raises BenchlibError.
    """
    from .. import __version__
    from ..paths import repo_root

    repo = Path(repo_dir or repo_root()).resolve()
    dockerfile = repo / "Dockerfile"
    if not dockerfile.is_file():
        raise BenchlibError(f"there is no Dockerfile in {repo}; run `benchlib image build` from a benchlib checkout.")
    if not shutil.which(engine):
        hint = " (CI: `.ci/docker-setup.sh` as root)" if engine == "docker" else ""
        raise BenchlibError(f"`{engine}` is not on PATH; install it{hint} to build {tag}.")
    ca = ca_bundle or os.environ.get("BENCHLIB_PIP_CA") or os.environ.get("PIP_CERT")
    cache = repo / ".ci" / "cache"
    if ca and Path(ca).is_file():
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca, cache / "pip-ca.crt")
    args = {
        "PROJECT_VERSION": __version__,
        "VCS_REF": _vcs_ref(repo),
        "BUILD_DATE": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if base_image:
        args["BASE_IMAGE"] = base_image
    args.update(build_args or {})
    argv = [engine, "build", "-t", tag, "-f", str(dockerfile)]
    for key, value in args.items():
        argv += ["--build-arg", f"{key}={value}"]
    argv.append(str(repo))
    env = dict(os.environ)
    if engine == "docker" and "DOCKER_BUILDKIT" not in env and not _has_buildx():
        env["DOCKER_BUILDKIT"] = "0"
    try:
        code = subprocess.run(argv, env=env, timeout=BUILD_TIMEOUT_S, check=False).returncode
    except subprocess.TimeoutExpired:
        raise BenchlibError(f"building {tag} took more than {BUILD_TIMEOUT_S // 3600} h; see the output above.") from None
    if code != 0:
        raise BenchlibError(f"building {tag} failed (exit {code}); the cause is in the build output above.")


def _has_buildx() -> bool:
    try:
        return subprocess.run(["docker", "buildx", "version"], capture_output=True, timeout=QUERY_TIMEOUT_S,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _vcs_ref(repo: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=QUERY_TIMEOUT_S, check=False)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "benchlib", "pyproject.toml",
                                "Dockerfile"], capture_output=True, text=True, timeout=QUERY_TIMEOUT_S, check=False)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
