"""The planner (benchlib.planner): which cases get the next round and why each stops, on synthetic
evidence; and an end-to-end simulation where the planner chooses the cases adaptively and the
sequential rule's error rates still hold (issue 15, items 2 and 4)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchlib import planner as pl
from benchlib import sequential as sq
from benchlib._simulate import Scenario, planned_run
from benchlib.schema import RESULT_COLUMNS, conform

DESIGN = sq.Design()


def _case(name: str, d, seconds: float = 10.0, failed: dict[str, int] | None = None,
          has_performance: bool = True) -> pl.CaseEvidence:
    """One case, arms native (baseline) and container, per-round log ratios ``d``."""
    d = np.asarray(d, dtype=float)
    k = d.size
    rounds = np.arange(1, k + 1)
    base = np.zeros(k)
    metric = pl.MetricEvidence("time", "container", d, rounds, {"container": d + base, "native": base},
                               {"container": rounds, "native": rounds}, "s")
    failed = failed or {}
    attempts = {arm: k + failed.get(arm, 0) for arm in ("native", "container")}
    return pl.CaseEvidence(("bench", name), attempts, {"native": k, "container": k},
                           {arm: [seconds / 2] * attempts[arm] for arm in attempts},
                           [metric] if has_performance and k else [], has_performance)


def _noise(n: int, sd: float, mean: float = 0.0, seed: int = 0) -> np.ndarray:
    return mean + np.random.default_rng(seed).normal(0.0, sd, n)


def test_cases_below_the_minimum_run_first():
    cases = [_case("open", _noise(4, 0.05)), _case("new", _noise(1, 0.05))]
    plan = pl.plan(cases, DESIGN)
    assert plan.next_round[0] == ("bench", "new")
    assert plan.cases[("bench", "new")].priority == math.inf
    assert set(plan.next_round) == {("bench", "new"), ("bench", "open")}


def test_a_decided_case_stops_and_says_so():
    plan = pl.plan([_case("tight", _noise(3, 0.001))], DESIGN)
    status = plan.cases[("bench", "tight")]
    assert status.state == pl.DECIDED and plan.finished
    assert status.metrics[0].decision == sq.NO_DIFFERENCE


def test_the_cap_stops_a_case_and_so_does_a_projection_beyond_it():
    at_cap = pl.plan([_case("long", _noise(20, 0.3, seed=1))], DESIGN).cases[("bench", "long")]
    assert at_cap.state == pl.CAP and "the cap, reached" in at_cap.detail
    hopeless = pl.plan([_case("noisy", _noise(18, 0.3, seed=2))], DESIGN).cases[("bench", "noisy")]
    assert hopeless.state == pl.CAP and "even the optimistic projection" in hopeless.detail


def test_the_budget_stops_what_cannot_fit():
    cases = [_case("open", _noise(4, 0.05, seed=3), seconds=30.0)]
    assert pl.plan(cases, DESIGN, budget_s=100, spent_s=80).cases[("bench", "open")].state == pl.BUDGET
    status = pl.plan(cases, DESIGN, budget_s=1000, spent_s=960).cases[("bench", "open")]
    assert status.state == pl.BUDGET and "needs at least" in status.detail  # a round fits, the decision does not
    assert pl.plan(cases, DESIGN, budget_s=1000, spent_s=0).cases[("bench", "open")].state == pl.RUN


def test_a_drifting_ratio_cannot_converge_and_the_evidence_says_why():
    d = 0.025 * (np.arange(12) - 5.5) + _noise(12, 0.03, seed=4)  # centred on 0: the mean alone decides nothing
    status = pl.plan([_case("drift", d)], DESIGN).cases[("bench", "drift")]
    assert status.state == pl.CANNOT_CONVERGE
    assert status.evidence[0].kind == "drift"
    assert "the ratio to the baseline rises with run order" in status.detail


def test_failed_invocations_are_retried_then_stop_the_case():
    retried = pl.plan([_case("flaky", _noise(2, 0.05), failed={"container": 2})], DESIGN)
    assert retried.cases[("bench", "flaky")].state == pl.RUN
    dead = pl.plan([_case("shm", [], failed={"container": 3})], DESIGN).cases[("bench", "shm")]
    assert dead.state == pl.FAILED and "container" in dead.detail


def test_a_case_whose_pairs_lag_its_rounds_keeps_running():
    """Failures in different rounds of the two arms: 3 complete invocations each, only 2 pairs."""
    case = _case("gappy", _noise(2, 0.05, seed=8))
    case = pl.CaseEvidence(case.key, {"native": 4, "container": 4}, {"native": 3, "container": 3}, case.seconds,
                           case.metrics)
    status = pl.plan([case], DESIGN).cases[case.key]
    assert status.state == pl.RUN and status.priority > 0


def test_a_case_with_context_only_stops_after_the_minimum():
    assert pl.plan([_case("memcap", [0.0, 0.0], has_performance=False)], DESIGN).cases[("bench", "memcap")].state == pl.RUN
    stopped = pl.plan([_case("memcap", [0.0] * 3, has_performance=False)], DESIGN).cases[("bench", "memcap")]
    assert stopped.state == pl.CONTEXT_ONLY


def test_the_rank_is_narrowing_per_second():
    d = _noise(5, 0.04, mean=0.02, seed=5)
    cheap, dear = _case("cheap", d, seconds=5.0), _case("dear", d, seconds=50.0)
    plan = pl.plan([dear, cheap], DESIGN)
    assert plan.next_round == [("bench", "cheap"), ("bench", "dear")]
    assert plan.cases[("bench", "cheap")].priority == pytest.approx(10 * plan.cases[("bench", "dear")].priority)
    close, far = _case("close", _noise(5, 0.02, seed=6)), _case("far", _noise(5, 0.2, seed=6))
    ranked = pl.plan([far, close], DESIGN)
    assert ranked.next_round[0] == ("bench", "close")


def test_a_tight_budget_goes_to_the_case_closer_to_a_decision_first():
    close, far = _case("close", _noise(5, 0.03, seed=7), seconds=20.0), _case("far", _noise(5, 0.12, seed=7), seconds=20.0)
    plan = pl.plan([far, close], DESIGN, budget_s=200, spent_s=0)
    assert plan.next_round == [("bench", "close")]
    waiting = plan.cases[("bench", "far")]
    assert waiting.state == pl.WAIT and not waiting.stopped
    alone = pl.plan([far], DESIGN, budget_s=200, spent_s=0)  # once the other is done, it gets the rest
    assert alone.next_round == [("bench", "far")]


def test_evidence_from_the_results_table_and_the_invocations():
    rows = []
    for arm, level in (("native", 1.0), ("container", 1.1)):
        for invocation in (1, 2, 3):
            for metric, unit, value in (("time", "s", level * (1 + 0.01 * invocation)), ("torch_threads", "count", 16)):
                rows.append({"run_id": "r", "arm": arm, "benchmark": "cpu_bound", "case": "task=matmul", "params": "{}",
                             "invocation": invocation, "sample": 0, "metric": metric, "unit": unit, "value": value,
                             "work": np.nan, "work_unit": pd.NA, "start_ns": 0, "end_ns": 1, "device": "cpu",
                             "status": "ok", "note": pd.NA})
    results = conform(pd.DataFrame(rows), RESULT_COLUMNS)
    invocations = pd.DataFrame([
        {"benchmark": "cpu_bound", "case": "task=matmul", "arm": arm, "invocation": k, "seconds": 12.0 + k,
         "complete": True} for k in (1, 2, 3) for arm in ("native", "container")
    ] + [{"benchmark": "memcap", "case": "chunk_mib=64", "arm": arm, "invocation": 1, "seconds": 9.0, "complete": True}
         for arm in ("native", "container")])
    cases = pl.evidence_from_results(results, invocations, "native", {("cpu_bound", "time")})
    cpu, memcap = cases
    assert cpu.key == ("cpu_bound", "task=matmul") and cpu.rounds == 3
    assert [m.metric for m in cpu.metrics] == ["time"]  # the thread count is context, not evidence
    np.testing.assert_allclose(cpu.metrics[0].log_ratios, np.log(1.1) * np.ones(3))
    assert cpu.round_seconds(0.0) == pytest.approx(2 * 14.0)
    assert not memcap.has_performance and memcap.rounds == 1


# --------------------------------------------------------------------------- end to end

#: A suite's worth of cases: 3 A/A and 3 planted 5 % slowdowns with invocation noise of 3 % (20 s a
#: round), a GPU-bound A/A case with 0.3 % noise (12 s) and a host-bound A/A case with 15 % noise
#: (28 s) that no budget of minutes can decide; 2000 s of budget.
SUITE = [Scenario()] * 3 + [Scenario(effect=1.05)] * 3 + [
    Scenario(invocation_sd=0.003, sample_sd=0.003), Scenario(invocation_sd=0.15)]
ROUND_SECONDS = [20.0] * 6 + [12.0, 28.0]
BUDGET_S = 2000.0
RUNS = 150


@pytest.fixture(scope="module")
def simulated_runs() -> list[pl.Plan]:
    rng = np.random.default_rng(2026)
    return [planned_run(SUITE, ROUND_SECONDS, DESIGN, BUDGET_S, rng) for _ in range(RUNS)]


def _outcomes(runs: list[pl.Plan], indices: list[int]) -> list[pl.CaseStatus]:
    return [run.cases[("simulated", str(i))] for run in runs for i in indices]


def test_with_the_planner_a_over_a_stays_under_5_percent_false_differences(simulated_runs):
    aa = _outcomes(simulated_runs, [0, 1, 2, 6, 7])
    false_difference = np.mean([s.metrics[0].decision == sq.DIFFERENCE for s in aa])
    assert false_difference <= 0.05
    covered = np.mean([s.metrics[0].ratio_low <= 1.0 <= s.metrics[0].ratio_high for s in aa if s.metrics[0].n >= 3])
    assert covered >= 0.95


def test_with_the_planner_a_planted_5_percent_slowdown_is_found_in_90_percent(simulated_runs):
    planted = _outcomes(simulated_runs, [3, 4, 5])
    found = np.mean([s.metrics[0].decision == sq.DIFFERENCE and s.metrics[0].ratio > 1 for s in planted])
    assert found >= 0.90
    covered = np.mean([s.metrics[0].ratio_low <= 1.05 <= s.metrics[0].ratio_high for s in planted])
    assert covered >= 0.95


def test_the_planner_spends_where_answers_come_and_names_why_the_rest_stopped(simulated_runs):
    gpu = _outcomes(simulated_runs, [6])
    assert all(s.state == pl.DECIDED for s in gpu) and np.mean([s.rounds for s in gpu]) <= 4
    hopeless = _outcomes(simulated_runs, [7])
    assert np.mean([s.state in (pl.BUDGET, pl.CAP, pl.CANNOT_CONVERGE) for s in hopeless]) >= 0.9
    assert all(s.detail for s in hopeless if s.state != pl.DECIDED)
    for run in simulated_runs:
        spent = sum(s.rounds * cost for s, cost in zip(run.cases.values(), ROUND_SECONDS))
        assert spent <= BUDGET_S
        assert all(s.stopped for s in run.cases.values())
    decided = np.mean([s.state == pl.DECIDED for s in _outcomes(simulated_runs, range(7))])
    assert decided >= 0.9  # the decidable cases end decided, not at the budget
