"""What `.ci/fresh-machine.sh` found on a pristine Debian 12, kept from coming back.

* Root's checkout lives in /root (0700 in every Debian/Ubuntu image). The container arm mounts the
  checkout and the run directory at their own paths and, for a root invoker, runs as UID 1000, which
  could not pass through the image's /root: the arm was skipped ("UID 1000 inside the container
  cannot write under /root/repo/outputs"). The Dockerfile now makes the image's /root passable (0711).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from benchlib import engines
from benchlib.arms import BUILTIN_ARMS
from conftest import REPO
from docker_fixtures import docker_engine, docker_image  # noqa: F401  (fixtures)


@pytest.mark.docker
def test_container_arm_reaches_a_checkout_under_root(docker_image: str) -> None:  # noqa: F811
    if os.geteuid() != 0:
        pytest.skip("only root has a checkout under /root")
    home = Path(tempfile.mkdtemp(prefix=".benchlib-test-", dir="/root"))
    try:
        shutil.copytree(REPO / "benchlib", home / "repo" / "benchlib")
        arm = dataclasses.replace(BUILTIN_ARMS["container"], image=docker_image)
        facts = engines.preflight(arm, home / "repo", home / "repo" / "outputs", host_has_gpu=False)
        probe = facts["probe"]
        assert probe["uid"] == 1000 and probe["run_dir_writable"] and probe["repo_readable"], probe
        assert probe["benchlib_from"] == str(home / "repo" / "benchlib")
    finally:
        shutil.rmtree(home, ignore_errors=True)
