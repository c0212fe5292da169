"""Simulation study of the sequential rule, the convergence detectors and the planner (CPU only).

Prints the tables that docs/methodology.md ("Sequential runs") quotes: the design grid the defaults
were chosen from (tuning scenarios only), the chosen design on the tuning and the held-out
scenarios, rounds to a decision by noise level, the naive rule for comparison, the projection's
range, the detectors' flag rates, and the planner end to end. Synthetic data with planted answers
(benchlib/_simulate.py), never measurements.

    .venv/bin/python benchmarks/sequential_simulation.py [--runs 2000] [--quick]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import convergence as cv  # noqa: E402
from benchlib import planner as pl  # noqa: E402
from benchlib import sequential as sq  # noqa: E402
from benchlib._simulate import Scenario, log_medians, log_ratios, planned_run, stop_when_decided  # noqa: E402

TUNING = {"A/A, invocation noise 3 %": Scenario(), "5 % slowdown, invocation noise 3 %": Scenario(effect=1.05)}
HELD_OUT = {
    "A/A, heavy tails (t3), 3 %": Scenario(invocation="t3"),
    "5 % slowdown, heavy tails (t3), 3 %": Scenario(effect=1.05, invocation="t3"),
    "10 % slowdown, invocation noise 6 %": Scenario(effect=1.10, invocation_sd=0.06),
    "2 % speed-up, invocation noise 1 %": Scenario(effect=0.98, invocation_sd=0.01, sample_sd=0.02),
}


def _row(label: str, scenario: Scenario, design: sq.Design, runs: int, seed: int) -> str:
    outcome = stop_when_decided(log_ratios(scenario, runs, design.max_rounds, np.random.default_rng(seed)), design)
    effect = scenario.log_effect
    wrong = np.mean((outcome.decision == sq.DIFFERENCE) & (np.sign(outcome.estimate) != np.sign(effect)))
    false_difference = outcome.share(sq.DIFFERENCE) if effect == 0 else wrong
    found = "" if effect == 0 else f"{outcome.found(effect):.3f}"
    return (f"| {label} | {false_difference:.3f} | {found or '—'} | {outcome.share(sq.NO_DIFFERENCE):.3f} | "
            f"{outcome.share(sq.OPEN):.3f} | {outcome.coverage(effect):.3f} | {outcome.rounds.mean():.1f} |")


HEADER = ("| scenario | false difference | found | no difference | open at cap | coverage at stop | mean rounds |\n"
          "|---|---|---|---|---|---|---|")


def design_grid(runs: int) -> None:
    print("## Design grid (tuning scenarios only)\n")
    print("| cap | margin | spending | A/A false diff. | A/A decided | A/A rounds | 5 %: found | 5 % rounds |")
    print("|---|---|---|---|---|---|---|---|")
    for cap in (20, 30):
        for margin in (0.02, 0.05):
            for spending in ("obrien-fleming", "hsd-4", "hsd-2", "hsd0", "pocock"):
                design = sq.Design(max_rounds=cap, margin=margin, spending=spending)
                rng = np.random.default_rng(1)
                aa = stop_when_decided(log_ratios(TUNING["A/A, invocation noise 3 %"], runs, cap, rng), design)
                slow = stop_when_decided(log_ratios(TUNING["5 % slowdown, invocation noise 3 %"], runs, cap, rng), design)
                print(f"| {cap} | {margin:.0%} | {spending} | {aa.share(sq.DIFFERENCE):.3f} | "
                      f"{1 - aa.share(sq.OPEN):.3f} | {aa.rounds.mean():.1f} | {slow.found(math.log(1.05)):.3f} | "
                      f"{slow.rounds.mean():.1f} |")
    print()


def chosen_design(runs: int) -> None:
    design = sq.Design()
    print(f"## Chosen design: looks at {design.min_rounds}..{design.max_rounds} rounds, α = {design.alpha}, margin "
          f"{design.margin:.0%}, {design.spending}; normal-theory level α' = {design.nominal_alpha:.4f}\n")
    print("q_n (t scale):", " ".join(f"{n}:{q:.2f}" for n, q in zip(design.looks, design.critical_ts)), "\n")
    print(HEADER)
    for seed, (label, scenario) in enumerate(TUNING.items(), start=101):
        print(_row(label, scenario, design, runs, seed))
    print("| *held out* | | | | | | |")
    for seed, (label, scenario) in enumerate(HELD_OUT.items(), start=201):
        print(_row(label, scenario, design, runs, seed))
    print()
    print("| invocation noise (A/A) | no difference | mean rounds | median rounds |\n|---|---|---|---|")
    for sd in (0.002, 0.01, 0.03, 0.06, 0.15):
        scenario = Scenario(invocation_sd=sd, sample_sd=max(sd, 0.002))
        outcome = stop_when_decided(log_ratios(scenario, runs, design.max_rounds, np.random.default_rng(7)), design)
        print(f"| {sd:.1%} | {outcome.share(sq.NO_DIFFERENCE):.3f} | {outcome.rounds.mean():.1f} | "
              f"{np.median(outcome.rounds):.0f} |")
    print()
    d = log_ratios(Scenario(), runs, design.max_rounds, np.random.default_rng(8))
    n = np.arange(1, design.max_rounds + 1)
    mean = np.cumsum(d, axis=1) / n
    sd = np.sqrt((np.cumsum(d * d, axis=1) - n * mean**2) / np.maximum(n - 1, 1))
    half = stats.t.isf(0.025, np.maximum(n - 1, 1)) * sd / np.sqrt(n)
    naive = (np.abs(mean) > half)[:, 2:].any(axis=1).mean()
    print(f"Naive rule (an ordinary 95 % t interval, looked at after every round 3..20), A/A: false difference "
          f"{naive:.3f}\n")


def projections(runs: int) -> None:
    design = sq.Design()
    print("## Rounds needed: projection after 5 rounds against what the rule then needed\n")
    print("| scenario | open at 5 | actual within the range | median abs. error of the point |\n|---|---|---|---|")
    for label, scenario in {**TUNING, "A/A, invocation noise 6 %": Scenario(invocation_sd=0.06)}.items():
        d = log_ratios(scenario, runs, design.max_rounds, np.random.default_rng(17))
        _, low, high = sq.running_intervals(d, design)
        decisions = sq.decide(low, high, design.delta)
        inside, errors = [], []
        for run in np.nonzero(decisions[:, 4] == sq.OPEN)[0]:
            projection = cv.rounds_needed(d[run, :5], design)
            later = np.nonzero(decisions[run, 5:] != sq.OPEN)[0]
            actual = int(later[0]) + 1 if later.size else math.inf
            top = math.inf if projection.more_high is None else projection.more_high
            bottom = math.inf if projection.more_low is None else projection.more_low
            inside.append(bottom <= actual <= top)
            if projection.more is not None and math.isfinite(actual):
                errors.append(abs(projection.more - actual))
        print(f"| {label} | {len(inside)} | {np.mean(inside):.3f} | {np.median(errors):.0f} |")
    print()


def detectors(runs: int) -> None:
    design = sq.Design()
    print(f"## Detectors (per-look α = {cv.DETECTOR_ALPHA}), share of runs flagged\n")
    print("| scenario | rounds | two groups (baseline arm) | ratio drift |\n|---|---|---|---|")
    cases = [("normal 3 %", Scenario(), 20), ("normal 8 %", Scenario(invocation_sd=0.08), 20),
             ("t3 3 % (held out)", Scenario(invocation="t3"), 20),
             ("two modes 20 % apart", Scenario(invocation="bimodal", mode_gap=0.2), 20),
             ("two modes 30 % apart", Scenario(invocation="bimodal", mode_gap=0.3), 10),
             ("ratio drift 1 %/round", Scenario(trend=0.01), 20),
             ("shared drift 2 %/round step", Scenario(round_drift=0.02), 20)]
    for label, scenario, n in cases:
        medians = log_medians(scenario, runs, n, np.random.default_rng(3))
        rounds = np.arange(1, n + 1)
        two = np.mean([cv.bimodality(m[:, 0], "a", design.margin) is not None for m in medians])
        drift = np.mean([cv.drift(m[:, 1] - m[:, 0], rounds, "ratio", design.margin, True) is not None for m in medians])
        print(f"| {label} | {n} | {two:.3f} | {drift:.3f} |")
    print()


def planner(runs: int) -> None:
    design = sq.Design()
    suite = [Scenario()] * 3 + [Scenario(effect=1.05)] * 3 + [
        Scenario(invocation_sd=0.003, sample_sd=0.003), Scenario(invocation_sd=0.15)]
    seconds = [20.0] * 6 + [12.0, 28.0]
    budget = 2000.0
    rng = np.random.default_rng(2026)
    plans = [planned_run(suite, seconds, design, budget, rng) for _ in range(runs)]

    def statuses(indices):
        return [plan.cases[("simulated", str(i))] for plan in plans for i in indices]

    print(f"## Planner end to end: {runs} simulated runs of 8 cases, budget {budget:.0f} s\n")
    print("| cases | false difference | found | decided | stop reasons | mean rounds |\n|---|---|---|---|---|---|")
    for label, indices, planted in (("A/A, 3 % (3 per run)", [0, 1, 2], False),
                                    ("5 % slowdown, 3 % (3 per run)", [3, 4, 5], True),
                                    ("GPU-bound A/A, 0.3 %", [6], False), ("host-bound A/A, 15 %", [7], False)):
        found = statuses(indices)
        decision = [s.metrics[0].decision if s.metrics else sq.TOO_FEW for s in found]
        ratio = np.array([s.metrics[0].ratio if s.metrics else np.nan for s in found])
        difference = np.array([d == sq.DIFFERENCE for d in decision])
        reasons = {reason: np.mean([s.state == reason for s in found]) for reason in pl.STOP_REASONS}
        words = ", ".join(f"{reason} {share:.2f}" for reason, share in reasons.items() if share)
        print(f"| {label} | {'—' if planted else f'{difference.mean():.3f}'} | "
              f"{f'{np.mean(difference & (ratio > 1)):.3f}' if planted else '—'} | "
              f"{np.mean([s.state == pl.DECIDED for s in found]):.3f} | {words} | "
              f"{np.mean([s.rounds for s in found]):.1f} |")
    spent = [sum(s.rounds * c for s, c in zip(plan.cases.values(), seconds)) for plan in plans]
    print(f"\nspent: mean {np.mean(spent):.0f} s, max {np.max(spent):.0f} s of {budget:.0f} s\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="simulated runs per scenario")
    parser.add_argument("--quick", action="store_true", help="skip the design grid")
    args = parser.parse_args()
    start = time.perf_counter()
    if not args.quick:
        design_grid(args.runs)
    chosen_design(args.runs)
    projections(min(args.runs, 1000))
    detectors(min(args.runs, 1000))
    planner(min(args.runs // 10, 200))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
