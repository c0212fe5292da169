"""A sequential run's bookkeeping between rounds (``benchlib run --until conclusive``): the design the
manifest records, the planner's evidence read from what the run wrote, the next round's invocations,
and per case the invocations run and why it stopped.

The runner (:mod:`benchlib.runner`) runs the minimum as an ordinary interleaved plan, then after every
round calls :func:`next_round`: it reads each complete invocation's results once (a cache kept for the
run), asks :func:`benchlib.planner.plan` which cases get another round, and returns their invocations
(every arm of each chosen case, interleaved), or none when every case has stopped. The budget counts
the seconds the run's invocations took (``duration_s`` in the manifest, failed ones included), so a
resumed run continues with what is left of it. Nothing here measures anything.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pandas as pd

from . import findings, formats, planner
from .layout import RESULTS_FILE
from .manifest import COMPLETE, FAILED, Invocation, Manifest
from .metricspec import PERFORMANCE
from .sequential import Design
from .sequential_options import SequentialOptions

__all__ = ["METHOD", "ResultsCache", "describe_cases", "design_of", "design_record", "next_round", "spent_seconds"]

METHOD = "group-sequential repeated confidence intervals, Lan-DeMets alpha spending"


def design_record(options: SequentialOptions) -> dict[str, Any]:
    """What the manifest keeps of the design, so that ``--resume`` continues with the same one."""
    design = Design(max_rounds=options.max_invocations, min_rounds=options.min_invocations)
    return {"method": METHOD, "until": options.until, "alpha": design.alpha, "margin": design.margin,
            "spending": design.spending, "min_invocations": design.min_rounds,
            "max_invocations": design.max_rounds, "budget_s": options.budget_s}


def design_of(record: dict[str, Any]) -> Design:
    return Design(max_rounds=int(record["max_invocations"]), min_rounds=int(record["min_invocations"]),
                  alpha=float(record["alpha"]), margin=float(record["margin"]), spending=str(record["spending"]))


def spent_seconds(manifest: Manifest) -> float:
    """Seconds the run's invocations took so far (complete and failed)."""
    return float(sum(inv.duration_s or 0.0 for inv in manifest.invocations if inv.status in (COMPLETE, FAILED)))


class ResultsCache:
    """Each complete invocation's results, read once per run."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._frames: dict[str, pd.DataFrame] = {}

    def results(self, manifest: Manifest) -> pd.DataFrame:
        frames = []
        for inv in manifest.invocations:
            if inv.status != COMPLETE:
                continue
            if inv.rel_dir not in self._frames:
                frame = formats.read_parquet(self.run_dir / inv.rel_dir / RESULTS_FILE, "results")
                self._frames[inv.rel_dir] = frame.assign(arm=inv.arm, benchmark=inv.benchmark, case=inv.case,
                                                         invocation=inv.invocation)
            frames.append(self._frames[inv.rel_dir])
        frames = [frame for frame in frames if not frame.empty]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _invocation_table(manifest: Manifest) -> pd.DataFrame:
    rows = [{"benchmark": inv.benchmark, "case": inv.case, "arm": inv.arm, "invocation": inv.invocation,
             "seconds": float(inv.duration_s or 0.0), "complete": inv.status == COMPLETE}
            for inv in manifest.invocations if inv.status in (COMPLETE, FAILED)]
    return pd.DataFrame(rows, columns=["benchmark", "case", "arm", "invocation", "seconds", "complete"])


def _evidence(manifest: Manifest, cache: ResultsCache) -> list[planner.CaseEvidence]:
    arms = [arm["name"] for arm in manifest.arms]
    table = _invocation_table(manifest)
    results = cache.results(manifest)
    performance = findings.metric_names(results, [PERFORMANCE]) if not results.empty else set()
    if results.empty:
        results = pd.DataFrame(columns=["benchmark", "case", "metric", "arm", "invocation", "value", "status", "unit"])
    found = {case.key: case for case in planner.evidence_from_results(results, table, arms[0], performance)}
    out = []
    for key in _case_keys(manifest):  # a case none of whose invocations has run yet has no evidence
        out.append(found.get(key) or planner.CaseEvidence(key, {arm: 0 for arm in arms}, {arm: 0 for arm in arms},
                                                          {arm: [] for arm in arms}))
    return out


def _case_keys(manifest: Manifest) -> list[tuple[str, str]]:
    return list(dict.fromkeys((inv.benchmark, inv.case) for inv in manifest.invocations))


def next_round(manifest: Manifest, cache: ResultsCache, seed: int, shuffle_arms: bool) -> list[Invocation]:
    """The invocations of the next round (appended to the manifest), or none when every case has
    stopped; each case's record (``manifest.cases``) is brought up to date either way."""
    record = manifest.sequential or {}
    decision = planner.plan(_evidence(manifest, cache), design_of(record), record.get("budget_s"),
                            spent_seconds(manifest))
    manifest.cases = [_case_record(manifest, status) for status in decision.cases.values()]
    rng = random.Random(f"{seed}:{len(manifest.invocations)}")
    added = []
    for key in decision.next_round:
        arms = [arm["name"] for arm in manifest.arms]
        if shuffle_arms:
            rng.shuffle(arms)
        for arm in arms:
            added.append(_another(manifest, key, arm, len(manifest.invocations) + len(added)))
    manifest.invocations.extend(added)
    return added


def _another(manifest: Manifest, key: tuple[str, str], arm: str, order: int) -> Invocation:
    """One more invocation of ``arm`` on case ``key``, numbered after the case's last round."""
    same_case = [inv for inv in manifest.invocations if (inv.benchmark, inv.case) == key]
    template = next(inv for inv in same_case if inv.arm == arm)
    number = max(inv.invocation for inv in same_case) + 1
    return Invocation(order=order, arm=arm, benchmark=template.benchmark, case=template.case,
                      params_file=template.params_file, invocation=number, params=dict(template.params))


def _case_record(manifest: Manifest, status: planner.CaseStatus) -> dict[str, Any]:
    benchmark, case = status.key
    runs = [inv for inv in manifest.invocations if (inv.benchmark, inv.case) == status.key]
    return {
        "benchmark": benchmark,
        "case": case,
        "invocations": {arm["name"]: sum(1 for inv in runs if inv.arm == arm["name"] and inv.status in (COMPLETE, FAILED))
                        for arm in manifest.arms},
        "rounds": status.rounds,
        "state": status.state,  # a stop reason (planner.STOP_REASONS), or run/wait while the run goes on
        "detail": status.detail,
        "metrics": [{"metric": m.metric, "arm": m.arm, "decision": m.decision, "n": m.n, "ratio": m.ratio,
                     "ratio_low": m.ratio_low, "ratio_high": m.ratio_high} for m in status.metrics],
    }


def describe_cases(manifest: Manifest) -> list[str]:
    """One line per case: its invocations and why it stopped."""
    lines = []
    for case in manifest.cases:
        counts = ", ".join(f"{arm} {n}" for arm, n in case["invocations"].items())
        why = case["state"].replace("_", " ")
        lines.append(f"  {case['benchmark']} {case['case']}: {why} ({counts} invocations)"
                     + (f": {case['detail']}" if case["detail"] else ""))
    return lines
