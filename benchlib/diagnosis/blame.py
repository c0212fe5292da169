"""Without an experiment, no blame out of class (docs/architecture.md, "Diagnosis").

For a case with a gap and no ablation, the likely causes are the differing mechanisms that can act
on that case: their classes meet the case's (:class:`~benchlib.diagnosis.classes.Sensitivity`), the
case does not exclude them, and their effect on speed is known. Every other difference is listed
under "also differs" with the reason it is not named: another class ("/dev/shm acts on shared
memory, not on GPU kernels"), excluded by the case ("settings: forced pins the math mode"), no known
effect, or an effect nobody knows (only an ablation can tell).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .classes import NO_KNOWN_EFFECT, UNKNOWN, Sensitivity
from .mechanisms import Difference

__all__ = ["Blame", "blame", "case_sensitivity", "sensitivity_in"]


@dataclass(frozen=True)
class Blame:
    """The likely causes of one case's gap, in the order of the known-mechanism table, and the rest."""

    likely: tuple[Difference, ...]
    also_differs: tuple[tuple[Difference, str], ...]  # (difference, why it is not named as a cause)
    classes: frozenset[str]  # the case's

    def sentences(self, baseline: str, arm: str) -> tuple[str, str]:
        """(likely causes, also differs) in words, each "" when empty."""
        kinds = " and ".join(sorted(self.classes)) or "nothing"
        likely = ""
        if self.likely:
            leads = "; ".join(f"{d.title} ({d.evidence(baseline, arm, limit=1)})" for d in self.likely)
            likely = f"likely, among what acts on {kinds}: {leads}"
        also = ""
        if self.also_differs:
            also = "also differs: " + "; ".join(f"{d.title} ({why})" for d, why in self.also_differs)
        return likely, also


def _reason(difference: Difference, sensitivity: Sensitivity) -> str | None:
    """Why ``difference`` is not a likely cause of a case with ``sensitivity``; None when it is one."""
    excluded = sensitivity.exclusion(difference.mechanism)
    if excluded:
        return excluded
    if UNKNOWN in difference.classes:
        return "unknown effect: only an ablation can tell"
    if NO_KNOWN_EFFECT in difference.classes:
        return "no known effect on speed"
    if sensitivity.acts_on(difference.classes):
        return None
    theirs = " and ".join(sorted(difference.classes))
    ours = " and ".join(sorted(sensitivity.classes)) or "nothing"
    return f"acts on {theirs}, not on this case's {ours}"


def blame(differences: Sequence[Difference], sensitivity: Sensitivity) -> Blame:
    """Split ``differences`` (from :func:`benchlib.diagnosis.mechanisms.differences`) into the likely
    causes of a gap in a case with ``sensitivity`` and the differences that cannot be named."""
    likely, also = [], []
    for difference in differences:
        reason = _reason(difference, sensitivity)
        if reason is None:
            likely.append(difference)
        else:
            also.append((difference, reason))
    return Blame(tuple(likely), tuple(also), sensitivity.classes)


def sensitivity_in(results: Any, benchmark: str, case: str) -> Sensitivity | None:
    """The sensitivity of one case of a run, from its first row in the run's results (a DataFrame with
    ``benchmark``, ``case``, ``params`` and ``device``), or None when the case has no row."""
    rows = results[(results["benchmark"] == benchmark) & (results["case"] == case)]
    if rows.empty:
        return None
    return case_sensitivity(benchmark, rows.iloc[0]["params"], str(rows.iloc[0]["device"]))


def case_sensitivity(benchmark: str, params: Mapping[str, Any] | str, device: str) -> Sensitivity:
    """The sensitivity a workload declares for one case of a run: ``params`` as the results' ``params``
    column holds them (JSON), ``device`` its ``device`` column (``cuda:0 ...`` or ``cpu``). Keys the
    model does not know (an older run) are left out and missing ones take the model's defaults."""
    from ..workloads import get_workload  # the workloads import this package's classes

    workload = get_workload(benchmark)
    values = json.loads(params) if isinstance(params, str) else dict(params)
    known = {key: value for key, value in values.items() if key in workload.params_model.model_fields}
    return workload.sensitivity(workload.params_model.model_construct(**known), str(device).startswith("cuda"))
