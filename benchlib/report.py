"""The report of a run, as one import: :func:`analyse` (benchlib.analysis) and :func:`build_report`
(benchlib.render). The work is split by concern: loading in benchlib.results, derived numbers in
benchlib.stats and benchlib.numbers, sentences in benchlib.wording, figures in benchlib.figures,
rendering and export in benchlib.render."""
from __future__ import annotations

from .analysis import FIGURES, Analysis, analyse, decomposition_roles
from .render import Report, build_report, publish_index

__all__ = ["FIGURES", "Analysis", "Report", "analyse", "build_report", "decomposition_roles", "publish_index"]
