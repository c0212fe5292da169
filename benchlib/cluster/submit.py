"""A run for a Slurm cluster: the run directory, its plan and batch script, checked by Slurm, submitted.

:func:`create_run` validates everything first: the paths the script names, then the job's options
with ``sbatch --test-only`` (a partition, account, node list or GPU count Slurm would refuse is one
sentence naming the option, exit 2), and only then writes the run directory: the shared-filesystem
token, the plan of one slot, the batch script and ``submission.json``. :func:`submit` hands the
script to ``sbatch``; a refusal then removes the directory again, so nothing is left half-written.
"""
from __future__ import annotations

import os
import platform
import secrets
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .. import __version__, _atomic, paths
from ..arms import Arm
from ..manifest import Manifest
from ..suites import Suite, plan
from . import layout, shards, slurmctl
from .sbatch import JobScript, SlurmOptions, check_paths, render_script

SUBMISSION_SCHEMA_VERSION = 1


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def plan_manifest(run_id: str, suite: Suite, arms: list[Arm], invocations: int) -> Manifest:
    """The plan every slot runs: the suite's interleaved invocations for these arms (not preflighted
    here: each node preflights its arms before it measures)."""
    return Manifest(
        run_id=run_id, suite=suite.name, created_at=_now(), arms=[arm.to_dict() for arm in arms],
        invocations=plan(suite, arms, invocations),
        host={"submitted_from": platform.node(), "python": sys.version.split()[0]},
        benchlib={"version": __version__}, status=shards.PLANNED, suite_file=str(suite.path.resolve()),
    )


def create_run(run_dir: Path, suite: Suite, arms: list[Arm], invocations: int, options: SlurmOptions,
               python: str | None = None, repo_dir: Path | None = None,
               check: Callable[[str], None] = slurmctl.check_accepted) -> JobScript:
    """Write a run directory ready to submit (see the module docstring); ``check`` is Slurm's verdict
    on the script (``sbatch --test-only``), run before anything is written."""
    run_dir = Path(run_dir).absolute()
    repo = Path(repo_dir or paths.repo_root()).resolve()
    python = python or sys.executable
    check_paths(run_dir, repo, python)
    job = JobScript(run_dir=run_dir, repo_dir=repo, python=python, options=options, token=secrets.token_hex(16),
                    run_id=run_dir.name, suite=suite.name, arms=[arm.name for arm in arms],
                    invocations_per_slot=invocations * len(suite.cases) * len(arms),
                    written_by=f"{platform.node()} at {_now()}")
    text = render_script(job)
    check(text)
    run_dir.mkdir(parents=True, exist_ok=False)
    try:
        _atomic.write_text(layout.token_path(run_dir), job.token + "\n")
        shards.write_plan(run_dir, plan_manifest(run_dir.name, suite, arms, invocations))
        _atomic.write_text(layout.script_path(run_dir), text)
        os.chmod(layout.script_path(run_dir), 0o755)
        layout.logs_dir(run_dir).mkdir(parents=True, exist_ok=True)
        write_submission(run_dir, job, job_id=None)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return job


def write_submission(run_dir: Path, job: JobScript, job_id: str | None) -> Path:
    options = job.options
    record = {
        "schema_version": SUBMISSION_SCHEMA_VERSION, "run_id": job.run_id, "suite": job.suite, "arms": list(job.arms),
        "options": options.model_dump(), "node_names": options.node_names, "node_count": options.node_count,
        "gpus_per_node": options.gpus_per_node, "invocations_per_slot": job.invocations_per_slot,
        "repo_dir": str(job.repo_dir), "python": job.python, "script": str(layout.script_path(run_dir)),
        "submitted_from": platform.node(), "job_id": job_id, "jobs": [job_id] if job_id else [],
        "submitted_at": _now() if job_id else None,
    }
    return _atomic.write_json(layout.submission_path(run_dir), record)


def submit(run_dir: Path, job: JobScript, remove_on_refusal: bool = True) -> str:
    """``sbatch`` the run's script; the job id (recorded in submission.json). A refusal removes the
    run directory when ``remove_on_refusal`` (a first submission) and raises its one sentence."""
    try:
        job_id = slurmctl.submit(layout.script_path(run_dir))
    except BaseException:
        if remove_on_refusal:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    write_submission(run_dir, job, job_id)
    return job_id


__all__ = ["create_run", "plan_manifest", "submit", "write_submission"]
