"""``outputs/<run_id>/manifest.json``: the plan, the status of every invocation, checksums.

The manifest is rewritten atomically after every state change, so an interrupted run can be
resumed (``benchlib run --resume``) and a reader never sees a half-written one. An invocation is
``complete`` only once its files are written and checksummed here; a resume re-checks those
checksums (:meth:`Invocation.file_problem`) and runs again any invocation whose files are gone or
changed, saying so in its ``notes``.

Run statuses: ``running``, ``complete`` (every invocation complete), ``partial`` (the run ended with
failed invocations), ``interrupted`` (stopped by a signal or an error; ``--resume`` completes it).

A sequential run (``--until conclusive``) also records its design (``sequential``: method, alpha,
margin, spending, minimum and cap of invocations per arm and case, budget) and, per case
(``cases``), the invocations run, the planner's state (a stop reason once stopped: decided, budget,
cap, cannot_converge, failed, context_only) with its detail, and each performance metric's decision
and interval at the last look.

Secrets are redacted on the way out (:mod:`benchlib.redact`): a resumed run takes a redacted arm
``env`` value from the environment again.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import _atomic, formats, redact
from .errors import BenchlibError
from .layout import MANIFEST_FILE, SHARDS_DIR, invocation_dir
__all__ = ["COMPLETE", "FAILED", "INTERRUPTED", "PARTIAL", "PENDING", "RUNNING", "SCHEMA_VERSION", "Invocation", "Manifest"]

SCHEMA_VERSION = formats.VERSIONS["manifest"]

PENDING, RUNNING, COMPLETE, FAILED = "pending", "running", "complete", "failed"  # invocations (and runs)
PARTIAL, INTERRUPTED = "partial", "interrupted"  # runs only


@dataclass
class Invocation:
    order: int  # position in the planned, interleaved order
    arm: str
    benchmark: str
    case: str
    params_file: str
    invocation: int  # k, 1-based, within (arm, benchmark, case)
    params: dict[str, Any]
    status: str = PENDING
    ran_as: int | None = None  # position in the order actually run (resumes change it)
    started_at: str | None = None
    ended_at: str | None = None
    duration_s: float | None = None
    error: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    notes: list[str] = field(default_factory=list)  # what else happened: interrupted, re-run on resume
    shard: str | None = None  # a run on a cluster: the (node, GPU) shard that ran it (benchlib.cluster)

    @property
    def rel_dir(self) -> str:
        inside = invocation_dir(self.arm, self.benchmark, self.case, self.invocation)
        return f"{SHARDS_DIR}/{self.shard}/{inside}" if self.shard else inside

    @property
    def label(self) -> str:
        return f"{self.arm}#{self.invocation} {self.benchmark} {self.case}"

    def file_problem(self, run_dir: Path, required: tuple[str, ...] = ()) -> str | None:
        """Why this invocation's files are not the ones the manifest checksummed, or None when they are."""
        folder = Path(run_dir) / self.rel_dir
        for name in required:
            if name not in self.files:
                return f"the manifest has no checksum of its {name}"
        for name, digest in self.files.items():
            path = folder / name
            if not path.is_file():
                return f"its {name} is missing"
            if _atomic.sha256_of(path) != digest:
                return f"its {name} does not match the checksum in the manifest"
        return None


@dataclass
class Manifest:
    run_id: str
    suite: str
    created_at: str
    arms: list[dict[str, Any]]
    invocations: list[Invocation]
    host: dict[str, Any] = field(default_factory=dict)
    benchlib: dict[str, Any] = field(default_factory=dict)  # version, commit, command (the command line; absent
    # in runs made before it was recorded, None when not started from the command line)
    skipped_arms: list[dict[str, str]] = field(default_factory=list)  # arm name + why
    status: str = RUNNING
    schema_version: int = SCHEMA_VERSION
    suite_file: str | None = None  # absolute path of the suite file, so --resume finds a suite given by path
    # a sequential run (--until conclusive): its design (benchlib.sequential_run.design_record); None: fixed design
    sequential: dict[str, Any] | None = None
    cases: list[dict[str, Any]] = field(default_factory=list)  # sequential: per case, invocations run, why it stopped

    def save(self, run_dir: Path) -> Path:
        """Write manifest.json, secrets redacted (an arm's ``env`` entries named like secrets included)."""
        return _atomic.write_json(run_dir / MANIFEST_FILE, redact.redact_obj(asdict(self)))

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for invocation in self.invocations:
            counts[invocation.status] = counts.get(invocation.status, 0) + 1
        return counts

    @classmethod
    def load(cls, run_dir: Path) -> "Manifest":
        path = Path(run_dir) / MANIFEST_FILE
        if not path.is_file():
            raise BenchlibError(f"{run_dir} has no {MANIFEST_FILE}: it is not a benchlib run directory.")
        return cls.read(path)

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        """A manifest from a file of any name (a cluster run's plan.json is one)."""
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise BenchlibError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None
        formats.check("manifest", data.get(formats.VERSION_KEY), path)
        data["invocations"] = [Invocation(**item) for item in data.get("invocations", [])]
        return cls(**data)
