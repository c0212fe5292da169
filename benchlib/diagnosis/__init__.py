"""Why an arm is slower, by experiment (docs/architecture.md, "Diagnosis").

- :mod:`.classes` — what each workload is sensitive to (imported by every workload; nothing heavy).
- :mod:`.alignments` — the one change an ablation arm makes, and the fix a user would apply.
- :mod:`.mechanisms` — the mechanisms that differ between two arms' fingerprints, each with its alignments.
- :mod:`.blame` — without an experiment, the likely causes a case's classes allow, and what also differs.
- :mod:`.shares` — with an experiment, the share of the gap each ablation closes, with its 95 % interval.
- :mod:`.plan` — a run's gaps and the ablation arms that test them, made by the arms' launchers.
- :mod:`.experiment` — ``benchlib diagnose``: run the ablation arms, measure the shares, write ``diagnosis.json``.

Names load lazily, so importing :mod:`.classes` from a workload does not import pandas.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Difference": ("mechanisms", "Difference"),
    "differences": ("mechanisms", "differences"),
    "fingerprint_pairs": ("mechanisms", "fingerprint_pairs"),
    "Sensitivity": ("classes", "Sensitivity"),
    "Blame": ("blame", "Blame"),
    "blame": ("blame", "blame"),
    "GapShares": ("shares", "GapShares"),
    "gap_shares": ("shares", "gap_shares"),
    "AblationPlan": ("plan", "AblationPlan"),
    "plan_ablations": ("plan", "plan_ablations"),
    "DiagnoseOptions": ("experiment", "DiagnoseOptions"),
    "diagnose": ("experiment", "diagnose"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _EXPORTS[name]
    return getattr(importlib.import_module(f".{module_name}", __name__), attribute)
