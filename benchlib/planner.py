"""Which cases get the next interleaved round, and why each case stopped: a pure function of the
evidence so far (``benchlib run --until conclusive``; the runner calls :func:`plan` after every round).

A *round* of a case runs one invocation of every arm, interleaved. Per case the planner knows, per
performance metric and arm, the paired per-round log ratios against the baseline and each arm's log
invocation medians (:mod:`benchlib.sequential`), and the seconds each invocation took. Rules, in
order, for each case:

1. **failed**: ``design.min_rounds`` failed invocations of one arm stop the case (``failed``); fewer
   are retried. **minimum**: fewer than ``design.min_rounds`` complete rounds -> it runs; a case with
   no performance metric stops after the minimum (``context_only``).
2. **decided**: every (performance metric, arm) has a sequential decision -> ``decided``.
3. **cap**: ``design.max_rounds`` rounds run, or even the optimistic end of the projection
   (:func:`benchlib.convergence.rounds_needed`) lies past the cap -> ``cap``.
4. **cannot converge**: a blocking detector (invocations in two groups, a ratio that drifts with run
   order; :mod:`benchlib.convergence`) on an open metric -> ``cannot_converge``, with the evidence.
5. **budget**: one round costs more than is left, or the optimistic projection costs more than is
   left -> ``budget``.

Open cases are ranked by **expected narrowing per second**: for each open (metric, arm), the
repeated interval's half-width now is ``h_n = q_n·s/√n`` and after one more round is expected to be
``h_{n+1} = q_{n+1}·s/√(n+1)``; the share of the way to a decision that round buys is
``(log h_n − log h_{n+1}) / (log h_n − log h*)`` with h* the half-width that decides
(``max(δ − |d̄|, |d̄|)``); a case counts its slowest metric (the case is decided when all are), divided
by the seconds one round of it costs (the arms' median invocation times). In rank order, a case joins
the next round when its own projected need (point estimate of the rounds to a decision, at most up
to the cap, times its round's seconds) fits in the budget left after the projected needs of the cases
ranked above it; the top-ranked open case always runs. The budget goes first where an answer can be
reached; a case that waits runs once the cases above it have decided. Cases still below the minimum
rank first. Nothing here measures anything: the runner does.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .convergence import MIN_FOR_DETECTORS, Evidence, Projection, cannot_converge, rounds_needed
from .sequential import OPEN, TOO_FEW, Design, interval, invocation_medians

RUN = "run"  # in the next round
WAIT = "wait"  # open, but the budget goes to higher-ranked cases first this round
DECIDED, BUDGET, CAP, CANNOT_CONVERGE, FAILED, CONTEXT_ONLY = (
    "decided", "budget", "cap", "cannot_converge", "failed", "context_only")
STOP_REASONS = (DECIDED, BUDGET, CAP, CANNOT_CONVERGE, FAILED, CONTEXT_ONLY)

CaseKey = tuple[str, str]  # (benchmark, case)


@dataclass(frozen=True)
class MetricEvidence:
    """One performance metric of one case, for one non-baseline arm: the data in round order."""

    metric: str
    arm: str
    log_ratios: np.ndarray  # paired d_r, rounds where both arms completed
    rounds: np.ndarray  # the round (invocation number) of each d_r
    arm_log_medians: dict[str, np.ndarray]  # arm name -> log invocation medians (this arm and the baseline)
    arm_rounds: dict[str, np.ndarray]
    unit: str = ""


@dataclass(frozen=True)
class CaseEvidence:
    """What the planner knows about one case."""

    key: CaseKey
    attempts: dict[str, int]  # arm -> invocations run (complete or failed)
    completed: dict[str, int]  # arm -> complete invocations
    seconds: dict[str, list[float]]  # arm -> seconds of each invocation run
    metrics: list[MetricEvidence] = field(default_factory=list)
    has_performance: bool = True  # False: the workload records context and checks only

    @property
    def rounds(self) -> int:
        """Complete rounds: the fewest complete invocations of any arm."""
        return min(self.completed.values()) if self.completed else 0

    def round_seconds(self, fallback: float) -> float:
        """Expected seconds of one round: the sum over arms of their median invocation time."""
        medians = [statistics.median(times) for times in self.seconds.values() if times]
        if not medians:
            return fallback
        return float(sum(medians)) * len(self.attempts) / len(medians)


@dataclass(frozen=True)
class MetricState:
    metric: str
    arm: str
    decision: str
    n: int
    ratio: float
    ratio_low: float
    ratio_high: float
    projection: Projection | None


@dataclass(frozen=True)
class CaseStatus:
    """The planner's verdict on one case: ``run``/``wait`` while open, else its stop reason."""

    key: CaseKey
    state: str  # RUN | WAIT | one of STOP_REASONS
    rounds: int
    priority: float  # expected narrowing per second (inf below the minimum; 0 once stopped)
    round_seconds: float
    detail: str = ""
    evidence: tuple[Evidence, ...] = ()
    metrics: tuple[MetricState, ...] = ()

    @property
    def stopped(self) -> bool:
        return self.state in STOP_REASONS


@dataclass(frozen=True)
class Plan:
    next_round: list[CaseKey]  # cases of the next round, in rank order (the runner interleaves their arms)
    cases: dict[CaseKey, CaseStatus]

    @property
    def finished(self) -> bool:
        return not self.next_round


# --------------------------------------------------------------------------- evidence from results


def evidence_from_results(results: pd.DataFrame, invocations: pd.DataFrame, baseline: str,
                          performance: set[tuple[str, str]]) -> list[CaseEvidence]:
    """Evidence per case from the tidy results and the invocation table.

    ``invocations``: one row per invocation run, columns benchmark, case, arm, invocation, seconds,
    complete (bool). ``performance``: the (benchmark, metric) pairs that measure speed
    (``findings.metric_names(results, [PERFORMANCE])``). Cases appear in the invocation table's order.
    """
    medians = invocation_medians(results)
    medians = medians[[(b, m) in performance for b, m in zip(medians["benchmark"], medians["metric"])]]
    units = results.drop_duplicates(["benchmark", "metric"]).set_index(["benchmark", "metric"])["unit"]
    by_case = {key: group for key, group in medians.groupby(["benchmark", "case"], sort=False)}
    benchmarks_with_performance = {b for b, _ in performance}
    out = []
    for (benchmark, case), runs in invocations.groupby(["benchmark", "case"], sort=False):
        arms = list(pd.unique(runs["arm"]))
        attempts = runs.groupby("arm", sort=False).size().to_dict()
        completed = runs[runs["complete"]].groupby("arm", sort=False).size().reindex(arms, fill_value=0).to_dict()
        seconds = {arm: list(group["seconds"].astype(float)) for arm, group in runs.groupby("arm", sort=False)}
        metrics = _metric_evidence(by_case.get((benchmark, case)), baseline, units, benchmark)
        out.append(CaseEvidence((benchmark, case), attempts, completed, seconds, metrics,
                                benchmark in benchmarks_with_performance))
    return out


def _metric_evidence(medians: pd.DataFrame | None, baseline: str, units: pd.Series, benchmark: str) -> list[MetricEvidence]:
    if medians is None:
        return []
    out = []
    for metric, rows in medians.groupby("metric", sort=False):
        logs = {arm: group.sort_values("invocation") for arm, group in rows.groupby("arm", sort=False)}
        if baseline not in logs:
            continue
        base = logs[baseline].set_index("invocation")["median"]
        for arm, group in logs.items():
            if arm == baseline:
                continue
            joined = group.set_index("invocation")["median"].to_frame("arm").join(base.rename("base"), how="inner")
            with np.errstate(divide="ignore", invalid="ignore"):
                d = np.log(joined["arm"].to_numpy(float)) - np.log(joined["base"].to_numpy(float))
            keep = np.isfinite(d)
            pair = {a: logs[a] for a in (arm, baseline)}
            with np.errstate(divide="ignore"):
                arm_logs = {a: np.log(g["median"].to_numpy(float)) for a, g in pair.items()}
            out.append(MetricEvidence(metric, arm, d[keep], joined.index.to_numpy()[keep], arm_logs,
                                      {a: g["invocation"].to_numpy() for a, g in pair.items()},
                                      str(units.get((benchmark, metric), ""))))
    return out


# --------------------------------------------------------------------------- the plan


def _half_width(design: Design, n: int, sd: float) -> float:
    return design.critical_t(n) * sd / math.sqrt(n)


def _progress(found, design: Design) -> float:
    """Share of the way to a decision that one more round is expected to buy (module docstring); 1 for
    a metric with fewer pairs than the first look (failed invocations left it behind its case)."""
    n = found.n
    if n + 1 > design.max_rounds:
        return 0.0
    if n < design.min_rounds or not found.sd > 0:
        return 1.0
    now, after = _half_width(design, n, found.sd), _half_width(design, n + 1, found.sd)
    target = max(design.delta - abs(found.estimate), abs(found.estimate))
    distance = math.log(now) - math.log(target)
    return 1.0 if distance <= 0 else min(1.0, (math.log(now) - math.log(after)) / distance)


def _assess(case: CaseEvidence, design: Design) -> tuple[list[MetricState], list[tuple[MetricEvidence, object]]]:
    """Per (metric, arm): the decision and projection; and the open ones with their intervals."""
    states, open_metrics = [], []
    for metric in case.metrics:
        d = metric.log_ratios[: design.max_rounds]
        found = interval(d, design)
        projection = rounds_needed(d, design) if found.decision in (OPEN, TOO_FEW) else None
        states.append(MetricState(metric.metric, metric.arm, found.decision, found.n, found.ratio,
                                  found.ratio_low, found.ratio_high, projection))
        if found.decision in (OPEN, TOO_FEW):
            open_metrics.append((metric, found))
    return states, open_metrics


def _status(case: CaseEvidence, design: Design, remaining: float, fallback_seconds: float) -> CaseStatus:
    """The case's state before budget sharing: RUN (open, to be ranked) or a stop reason."""
    cost = case.round_seconds(fallback_seconds)
    rounds = case.rounds

    def stop(reason: str, detail: str, evidence: tuple[Evidence, ...] = (), states=()) -> CaseStatus:
        return CaseStatus(case.key, reason, rounds, 0.0, cost, detail, evidence, tuple(states))

    failing = [arm for arm, tried in case.attempts.items() if tried - case.completed.get(arm, 0) >= design.min_rounds]
    if failing:
        return stop(FAILED, f"{design.min_rounds} or more invocations of {', '.join(failing)} failed")
    if rounds < design.min_rounds:
        if cost > remaining:
            return stop(BUDGET, f"one round ({cost:.0f} s) no longer fits in the {remaining:.0f} s left, before the "
                                f"minimum of {design.min_rounds} rounds")
        return CaseStatus(case.key, RUN, rounds, math.inf, cost)
    if not case.has_performance:
        return stop(CONTEXT_ONLY, "no performance metric: context recorded in the minimum rounds")
    states, open_metrics = _assess(case, design)
    if not open_metrics:
        return stop(DECIDED, "every performance metric decided", states=states)
    if rounds >= design.max_rounds:
        return stop(CAP, f"{design.max_rounds} rounds, the cap, reached with {_names(open_metrics)} open", states=states)
    evidence = _blocking(open_metrics, design, rounds)
    if evidence:
        return stop(CANNOT_CONVERGE, "; ".join(e.text for e in evidence), tuple(evidence), states)
    optimistic = [found_state.projection.more_low for found_state in states if found_state.projection is not None]
    if any(more is None for more in optimistic):
        return stop(CAP, f"even the optimistic projection needs more than the cap of {design.max_rounds} rounds for "
                         f"{_names(open_metrics)}", states=states)
    need = max(optimistic) * cost if optimistic else cost
    if cost > remaining or need > remaining:
        return stop(BUDGET, f"needs at least {max(optimistic or [1])} more rounds ({need:.0f} s) with {remaining:.0f} s "
                            f"left", states=states)
    progress = min(_progress(found, design) for _, found in open_metrics)
    return CaseStatus(case.key, RUN, rounds, progress / max(cost, 1e-9), cost, metrics=tuple(states))


def _names(open_metrics: list) -> str:
    return ", ".join(sorted({f"{metric.metric} ({metric.arm})" for metric, _ in open_metrics}))


def _blocking(open_metrics: list, design: Design, rounds: int) -> list[Evidence]:
    if rounds < MIN_FOR_DETECTORS:
        return []
    found = []
    for metric, _ in open_metrics:
        found += [e for e in cannot_converge(metric.log_ratios, metric.rounds, metric.arm_log_medians,
                                             metric.arm_rounds, design.margin, metric.unit) if e.blocks]
    unique = {(e.kind, e.where, e.text.split(":")[0]): e for e in found}
    return list(unique.values())


def _reserve(status: CaseStatus, design: Design) -> float:
    """Seconds a case is projected to need until it decides (point estimate, at most up to the cap)."""
    remaining_rounds = design.max_rounds - status.rounds
    if status.rounds < design.min_rounds:
        return (design.min_rounds - status.rounds) * status.round_seconds
    projections = [m.projection.more for m in status.metrics if m.projection is not None]
    rounds = max((remaining_rounds if more is None else more for more in projections), default=1)
    return min(max(rounds, 1), remaining_rounds) * status.round_seconds


def plan(cases: list[CaseEvidence], design: Design, budget_s: float | None = None, spent_s: float = 0.0) -> Plan:
    """The next round and every case's state (module docstring). ``budget_s`` None: no budget."""
    remaining = math.inf if budget_s is None else budget_s - spent_s
    known = [t for case in cases for times in case.seconds.values() for t in times]
    fallback = float(np.median(known)) * 2 if known else 0.0
    statuses = {case.key: _status(case, design, remaining, fallback) for case in cases}
    order = sorted((key for key, s in statuses.items() if s.state == RUN),
                   key=lambda key: -statuses[key].priority)  # stable: plan order breaks ties
    chosen, reserved = [], 0.0
    for key in order:
        status = statuses[key]
        need = _reserve(status, design)
        if not chosen or reserved + need <= remaining:
            chosen.append(key)
        else:
            statuses[key] = CaseStatus(key, WAIT, status.rounds, status.priority, status.round_seconds,
                                       "the budget left goes first to cases closer to a decision", (), status.metrics)
        reserved += need
    return Plan(chosen, statuses)
