"""Synthetic invocation medians with known answers, for the simulation studies of the sequential rule,
the convergence detectors and the planner (tests/test_sequential.py, tests/test_planner.py,
benchmarks/sequential_simulation.py). Nothing here is ever presented as a measurement.

Model of one case, arm a, round r (both arms of a round run back to back):
``log m_{a,r} = log(scale_a) + g_r + u_{a,r} + log median_j(exp(e_{a,r,j}))`` with

- g_r the drift shared by the round (clocks, heat): a random walk with step sd ``round_drift``;
- u_{a,r} the invocation effect (process placement, allocator, JIT state): ``invocation`` noise of sd
  ``invocation_sd``: ``normal``, ``t3`` (Student t with 3 df scaled to that sd: heavy tails) or
  ``bimodal`` (a ``mode_gap`` jump with probability 1/2, plus the normal noise);
- e the within-invocation sample noise: ``samples`` draws of N(0, ``sample_sd``), the invocation
  keeps their median;
- ``trend``: a drift of the arm (not the baseline) per round on the log scale, which pairing cannot
  cancel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scenario:
    """Noise and effect of one simulated case; ``effect`` is the arm/baseline ratio planted."""

    effect: float = 1.0
    invocation_sd: float = 0.03
    invocation: str = "normal"  # normal | t3 | bimodal
    mode_gap: float = 0.15  # bimodal: the distance between the two modes, log scale
    sample_sd: float = 0.05
    samples: int = 50
    round_drift: float = 0.005
    trend: float = 0.0  # per round, arm only, log scale

    @property
    def log_effect(self) -> float:
        return float(np.log(self.effect))


def _invocation_effects(scenario: Scenario, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    sd = scenario.invocation_sd
    if scenario.invocation == "normal":
        return rng.normal(0.0, sd, shape)
    if scenario.invocation == "t3":
        return sd * rng.standard_t(3, shape) / np.sqrt(3.0)  # t3 has variance 3
    if scenario.invocation == "bimodal":
        return scenario.mode_gap * rng.integers(0, 2, shape) + rng.normal(0.0, sd, shape)
    raise ValueError(f"unknown invocation noise {scenario.invocation!r}")


def log_medians(scenario: Scenario, runs: int, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """Log invocation medians, shape (runs, rounds, 2): arm index 0 the baseline, 1 the arm."""
    shared = np.cumsum(rng.normal(0.0, scenario.round_drift, (runs, rounds)), axis=1)
    effects = _invocation_effects(scenario, (runs, rounds, 2), rng)
    within = np.median(rng.normal(0.0, scenario.sample_sd, (runs, rounds, 2, scenario.samples)), axis=3)
    out = shared[:, :, None] + effects + within
    out[:, :, 1] += scenario.log_effect + scenario.trend * np.arange(rounds)[None, :]
    return out


def log_ratios(scenario: Scenario, runs: int, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """Paired per-round log ratios arm − baseline, shape (runs, rounds)."""
    medians = log_medians(scenario, runs, rounds, rng)
    return medians[:, :, 1] - medians[:, :, 0]


@dataclass(frozen=True)
class Outcome:
    """Where each simulated run stopped under the sequential rule and what it decided."""

    decision: np.ndarray  # per run: no_difference | difference | open
    estimate: np.ndarray  # d̄ at the stop
    low: np.ndarray
    high: np.ndarray
    rounds: np.ndarray  # pairs at the stop

    def share(self, decision: str) -> float:
        return float(np.mean(self.decision == decision))

    def found(self, log_effect: float) -> float:
        """Share of runs that decided "difference" in the planted direction."""
        return float(np.mean((self.decision == "difference") & (np.sign(self.estimate) == np.sign(log_effect))))

    def coverage(self, log_effect: float) -> float:
        """Share of runs whose interval at the stop holds the planted log effect."""
        return float(np.mean((self.low <= log_effect) & (log_effect <= self.high)))


def planned_run(scenarios: list[Scenario], round_seconds: list[float], design, budget_s: float | None,
                rng: np.random.Generator):
    """One simulated ``--until conclusive`` run: each scenario is a case (one metric, one arm against the
    baseline) whose round costs ``round_seconds``; the planner (:func:`benchlib.planner.plan`) picks the
    rounds, the cases' invocation medians come from their scenarios. Returns the final plan."""
    from .planner import CaseEvidence, MetricEvidence, plan

    data = [log_medians(scenario, 1, design.max_rounds, rng)[0] for scenario in scenarios]
    done = [0] * len(scenarios)
    spent = 0.0
    while True:
        cases = []
        for index, cost in enumerate(round_seconds):
            k = done[index]
            medians = data[index][:k]
            rounds = np.arange(1, k + 1)
            metric = MetricEvidence("time", "arm", medians[:, 1] - medians[:, 0], rounds,
                                    {"arm": medians[:, 1], "base": medians[:, 0]}, {"arm": rounds, "base": rounds}, "s")
            cases.append(CaseEvidence(("simulated", str(index)), {"base": k, "arm": k}, {"base": k, "arm": k},
                                      {"base": [cost / 2] * k, "arm": [cost / 2] * k}, [metric]))
        current = plan(cases, design, budget_s, spent)
        if current.finished:
            return current
        for _, case in current.next_round:
            done[int(case)] += 1
            spent += round_seconds[int(case)]


def stop_when_decided(d: np.ndarray, design) -> Outcome:
    """Apply the sequential rule, looking after every round up to the cap, to each row of ``d``."""
    from .sequential import OPEN, decide, running_intervals

    d = d[:, : design.max_rounds]
    mean, low, high = running_intervals(d, design)
    decisions = decide(low, high, design.delta)
    looked = np.arange(d.shape[1]) + 1 >= design.min_rounds
    decided = (decisions != OPEN) & looked[None, :]
    last = d.shape[1] - 1
    stop = np.where(decided.any(axis=1), decided.argmax(axis=1), last)
    rows = np.arange(d.shape[0])
    return Outcome(decisions[rows, stop], mean[rows, stop], low[rows, stop], high[rows, stop], stop + 1)
