"""Fixtures for tests that need a real Docker engine and the project image.

Import them into a test module (``from docker_fixtures import docker_engine, docker_image``; the
tests folder is on sys.path under pytest's default rootdir-relative imports) and mark the tests
``@pytest.mark.docker``.

Policy: outside CI a test SKIPS, saying why and how to fix it, only when no engine can be had;
with ``CI=true`` the same situation FAILS, because CI is where the container arm must be proven.
An engine that is installed but not running is started with ``.ci/docker-setup.sh`` when we are
root; a missing image is built with ``.ci/build-images.sh`` (a few minutes the first time).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("BENCHLIB_TEST_IMAGE", "benchlib:latest")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str):
    """Skip outside CI, fail in CI: the single place that decides."""
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def _engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (subprocess.TimeoutExpired, OSError):
        return False


def _image_present(image: str) -> bool:
    try:
        return subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=30).returncode == 0
    except (subprocess.TimeoutExpired, OSError):
        return False


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """A Docker engine that answers; started with .ci/docker-setup.sh when possible."""
    if _engine_answers():
        return "docker"
    setup = REPO / ".ci" / "docker-setup.sh"
    note = ""
    if os.geteuid() == 0 and setup.is_file():
        try:
            done = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=600)
            note = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            note = f" (.ci/docker-setup.sh said: {note[0]})" if note[0] else ""
        except subprocess.TimeoutExpired:
            note = " (.ci/docker-setup.sh timed out)"
        if _engine_answers():
            return "docker"
    _unavailable(f"no Docker engine answers `docker info`{note}; run `.ci/docker-setup.sh` as root "
                 "or start Docker to run the container-arm tests.")


@pytest.fixture(scope="session")
def docker_image(docker_engine: str) -> str:
    """The project image (``$BENCHLIB_TEST_IMAGE``, default benchlib:latest), built when missing."""
    if _image_present(IMAGE):
        return IMAGE
    note = ""
    if IMAGE == "benchlib:latest":
        try:
            done = subprocess.run(["bash", str(REPO / ".ci" / "build-images.sh")], capture_output=True, text=True,
                                  timeout=3600, cwd=REPO)
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
                note = f" (.ci/build-images.sh failed: {tail[0]})"
        except subprocess.TimeoutExpired:
            note = " (.ci/build-images.sh timed out)"
        if _image_present(IMAGE):
            return IMAGE
    _unavailable(f"image {IMAGE} is not present{note}; build it with `make images` (CI base) or "
                 "`benchlib image build` (NGC base).")
