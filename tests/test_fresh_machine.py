"""What `.ci/fresh-machine.sh` found on a pristine Debian 12, kept from coming back.

* Root's checkout lives in /root (0700 in every Debian/Ubuntu image). The container arm mounts the
  checkout and the run directory at their own paths and, for a root invoker, runs as UID 1000, which
  could not pass through the image's /root: the arm was skipped ("UID 1000 inside the container
  cannot write under /root/repo/outputs"). The Dockerfile now makes the image's /root passable (0711).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from benchlib import arms
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
        facts = arms.preflight(arm, home / "repo", home / "repo" / "outputs", host_has_gpu=False)
        probe = facts["probe"]
        assert probe["uid"] == 1000 and probe["run_dir_writable"] and probe["repo_readable"], probe
        assert probe["benchlib_from"] == str(home / "repo" / "benchlib")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_the_answer_line(tmp_path: Path) -> None:
    """`benchlib run --report` ends with one line: each compared arm's headline, then each skipped arm
    and why (the end-to-end case, with a real run and skipped arms, is in test_setup_bad_input.py)."""
    from benchlib.cli import _answer

    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"arms": ["native", "container"], "baseline": "native", "headline": [
        "container vs native: no overhead beyond 2 % in 3 of 3 cases."]}))
    skipped = [{"arm": "isolated", "why": "arm 'isolated': the isolated arm needs root; run benchlib as root."}]
    assert _answer(summary, skipped) == (
        "answer: container vs native: no overhead beyond 2 % in 3 of 3 cases. isolated vs native: not measured; "
        "arm 'isolated': the isolated arm needs root; run benchlib as root.")
    # a summary with the answer line (benchlib.analysis.Analysis.answer_line) gives that instead of the headline
    summary.write_text(json.dumps({"arms": ["native", "container"], "baseline": "native", "headline": ["long"],
                                   "answer": "container vs native: slower: matmul (up to +2.1 %); same: membw."}))
    assert _answer(summary, []) == "answer: container vs native: slower: matmul (up to +2.1 %); same: membw."
    summary.write_text(json.dumps({"arms": ["native"], "baseline": None, "headline": ["Nothing to compare."]}))
    assert _answer(summary, []) == "answer: one arm ran, so nothing was compared."
