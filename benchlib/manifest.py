"""``outputs/<run_id>/manifest.json``: the plan, the status of every invocation, checksums.

The manifest is rewritten atomically after every state change, so an interrupted run can be
resumed (``benchlib run --resume``) and a reader never sees a half-written one. Secrets are redacted
on the way out (:mod:`benchlib.redact`): a resumed run takes a redacted arm ``env`` value from the
environment again.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import _atomic, redact
from .errors import BenchlibError

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1

PENDING, RUNNING, COMPLETE, FAILED = "pending", "running", "complete", "failed"


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

    @property
    def rel_dir(self) -> str:
        return f"{self.arm}/{self.benchmark}/{self.case}/inv-{self.invocation}"

    @property
    def label(self) -> str:
        return f"{self.arm}#{self.invocation} {self.benchmark} {self.case}"


@dataclass
class Manifest:
    run_id: str
    suite: str
    created_at: str
    arms: list[dict[str, Any]]
    invocations: list[Invocation]
    host: dict[str, Any] = field(default_factory=dict)
    benchlib: dict[str, Any] = field(default_factory=dict)
    skipped_arms: list[dict[str, str]] = field(default_factory=list)  # arm name + why
    status: str = RUNNING
    schema_version: int = SCHEMA_VERSION

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
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise BenchlibError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None
        data["invocations"] = [Invocation(**item) for item in data.get("invocations", [])]
        return cls(**data)
