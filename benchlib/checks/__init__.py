"""Checks that read a run's frames and return findings for the top of the report.

Pure functions: they take the DataFrames :func:`benchlib.load_run`, :func:`benchlib.load_telemetry`
and :func:`benchlib.load_envs` give and return :class:`Finding` records; they read no files and print
nothing. :mod:`.clocks`: a GPU clock far below its maximum under load, in any arm (a slow native and a
slow container give a ratio near 1, so the comparison alone cannot show it). :mod:`.memory`: memory
differences between arms (peak use of the process tree, what the host and CUDA say is free, the KV
cache an engine-style sizing got). :mod:`.baseline`: a "native" baseline that is itself a container or a VM.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

import pandas as pd

#: Columns of :func:`findings_frame`.
FINDING_COLUMNS = ["check", "severity", "benchmark", "case", "arms", "message", "hints", "values"]


@dataclass(frozen=True)
class Finding:
    """One thing the report names at its top: what was seen, in which arms, and what to look at."""

    check: str  # "stuck_clock" | "memory" | "baseline_not_bare_metal"
    severity: str  # "problem": the measurement itself is compromised; "difference": arms differ
    benchmark: str
    case: str
    arms: tuple[str, ...]
    message: str  # one or two sentences, numbers included
    hints: tuple[str, ...] = ()
    values: Mapping[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return asdict(self)


def findings_frame(findings: Iterable[Finding]) -> pd.DataFrame:
    """Findings as a table (one row each, in the order given)."""
    return pd.DataFrame([finding.record() for finding in findings], columns=FINDING_COLUMNS)


def invocation_keys(frame: pd.DataFrame) -> list[str]:
    """The invocation columns (``arm``, ``benchmark``, ``case``, ``invocation``) present in ``frame``."""
    return [key for key in ("arm", "benchmark", "case", "invocation") if key in frame.columns]
