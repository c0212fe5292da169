"""benchlib.diagnosis.shares by simulation: planted causes, a red herring, interactions, failures.

Each scenario plants a cost model (which mechanisms slow the arm, and by how much), draws invocations
with between-invocation and within-invocation noise for the baseline, the arm and every ablation arm,
and checks that the diagnosis names the planted cause with the largest share first, that its 95 %
interval covers the planted share, and that the red herring is never blamed. The scenarios at the end
of this file ("held out") were written before the method was tuned and were run only once it was done.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from benchlib.diagnosis.shares import MEANINGFUL, Ablation, combination_to_try, failure_shares, gap_shares

Cost = Callable[[frozenset], float]  # misaligned mechanisms -> log(T / T_baseline)


def additive(**ratios: float) -> Cost:
    """Each misaligned mechanism multiplies the time by its ratio (ratio 1: a red herring)."""
    return lambda misaligned: float(sum(np.log(ratios[m]) for m in misaligned))


def either(ratio: float, group: set, **others: float) -> Cost:
    """The group costs ``ratio`` while ANY of its mechanisms is misaligned (they close it only together)."""
    rest = additive(**others)
    return lambda misaligned: (np.log(ratio) if misaligned & group else 0.0) + rest(misaligned - group)


def draw(rng: np.random.Generator, log_t: float, k: int, between: float, within: float, n: int = 20) -> list:
    return [np.exp(log_t + rng.normal(0, between) + rng.normal(0, within, n)) for _ in range(k)]


def simulate(cost: Cost, mechanisms: list[str], seed: int, k: int = 5, between: float = 0.03, within: float = 0.02,
             combined: tuple[str, ...] = (), reverse: tuple[str, ...] = ()):
    """gap_shares on one planted scenario: one arm-side ablation per mechanism (plus ``combined``
    together), and baseline-side ablations applying each of ``reverse`` to the baseline."""
    rng = np.random.default_rng(seed)
    everything = frozenset(mechanisms)
    ablations = [Ablation((m,), "arm", draw(rng, cost(everything - {m}), k, between, within)) for m in mechanisms]
    if combined:
        ablations.append(Ablation(combined, "arm", draw(rng, cost(everything - set(combined)), k, between, within)))
    ablations += [Ablation((m,), "baseline", draw(rng, cost(frozenset({m})), k, between, within)) for m in reverse]
    baseline = draw(rng, cost(frozenset()), k, between, within)
    arm = draw(rng, cost(everything), k, between, within)
    return gap_shares(baseline, arm, ablations, n_boot=1000, seed=seed)


def planted_share(cost: Cost, mechanisms: list[str], aligned: set) -> float:
    everything = frozenset(mechanisms)
    return (cost(everything) - cost(everything - aligned)) / cost(everything)


def row(result, *mechanisms: str, side: str = "arm"):
    shares = result.shares
    match = shares[(shares["mechanisms"] == tuple(mechanisms)) & (shares["side"] == side)]
    assert len(match) == 1, shares
    return match.iloc[0]


def check_planted(cost: Cost, mechanisms: list[str], herrings: set, seeds: range, min_coverage: float = 0.9,
                  **options) -> dict:
    """Over ``seeds``: the largest planted cause is named first, a cause, with an interval covering
    its share; no red herring is ever a cause. Returns the counts, for messages."""
    planted = {m: planted_share(cost, mechanisms, {m}) for m in mechanisms}
    largest = max(planted, key=planted.get)
    covered = {m: 0 for m in planted if m not in herrings}
    for seed in seeds:
        result = simulate(cost, mechanisms, seed, **options)
        assert result.conclusive, f"seed {seed}: planted gap not conclusive: {result.gap}"
        first = result.shares.iloc[0]
        assert first["mechanisms"] == (largest,) and first["verdict"] == "cause", (seed, result.shares)
        for herring in herrings:
            assert row(result, herring)["verdict"] != "cause", (seed, result.shares)
        for m in covered:
            found = row(result, m)
            covered[m] += found["ci_low"] <= planted[m] <= found["ci_high"]
    coverage = {m: count / len(seeds) for m, count in covered.items()}
    assert all(value >= min_coverage for value in coverage.values()), coverage
    return coverage


# ------------------------------------------------------------------------------------- tuned on these


def test_one_planted_cause_beside_a_red_herring():
    """A CPU quota that doubles the time, and a /dev/shm difference that does nothing."""
    cost = additive(cpu_quota=2.0, shm=1.0)
    check_planted(cost, ["cpu_quota", "shm"], {"shm"}, range(40))
    result = simulate(cost, ["cpu_quota", "shm"], seed=7)
    assert row(result, "shm")["verdict"] == "ruled out"
    assert result.residual.low <= 0 <= result.residual.high and not result.residual.excludes(0.0)
    assert combination_to_try(result) is None


def test_two_causes_share_the_gap_on_the_log_scale_and_the_larger_ranks_first():
    cost = additive(tf32=1.5, launch_blocking=1.35, herring=1.0)
    mechanisms = ["tf32", "launch_blocking", "herring"]
    assert planted_share(cost, mechanisms, {"tf32"}) == pytest.approx(np.log(1.5) / np.log(1.5 * 1.35))
    check_planted(cost, mechanisms, {"herring"}, range(30), k=6)
    result = simulate(cost, mechanisms, seed=3, k=6)
    assert list(result.causes["mechanisms"]) == [("tf32",), ("launch_blocking",)]
    assert result.residual.low <= 0 <= result.residual.high


def test_the_reverse_ablation_reproduces_the_gap_from_the_baseline():
    """An environment variable applied to the baseline (ApplyEnv) reproduces the share it closes in the arm."""
    cost = additive(env=1.6, herring=1.0)
    result = simulate(cost, ["env", "herring"], seed=11, reverse=("env", "herring"))
    closes, reproduces = row(result, "env"), row(result, "env", side="baseline")
    assert closes["verdict"] == reproduces["verdict"] == "cause"
    assert reproduces["ci_low"] <= 1 <= reproduces["ci_high"]
    assert row(result, "herring", side="baseline")["verdict"] != "cause"


def test_two_mechanisms_that_close_the_gap_only_together_are_found_with_a_combined_arm():
    """Either mechanism alone keeps the whole gap: no single ablation closes any of it, so the method
    asks for both at once, and that arm closes it all: an interaction, said as such."""
    cost = either(1.8, {"seccomp", "threads"}, herring=1.0)
    mechanisms = ["seccomp", "threads", "herring"]
    alone = simulate(cost, mechanisms, seed=5)
    assert set(alone.shares["verdict"]) == {"ruled out"} and alone.residual.low > MEANINGFUL
    assert combination_to_try(alone) == ("herring", "seccomp", "threads")
    together = simulate(cost, mechanisms, seed=5, combined=("seccomp", "threads"))
    pair = row(together, "seccomp", "threads")
    assert pair["verdict"] == "cause" and pair["rank"] == 1 and pair["ci_low"] <= 1 <= pair["ci_high"]
    (interaction,) = together.interactions.itertuples()
    assert interaction.only_together and interaction.ci_low > 0.5
    assert together.residual.low <= 0 <= together.residual.high  # 1 - the combination's share
    assert combination_to_try(together) is None


def test_no_conclusive_gap_gives_no_shares():
    result = simulate(additive(a=1.0, b=1.0), ["a", "b"], seed=2)
    assert not result.conclusive and result.residual is None
    assert set(result.shares["verdict"]) == {"no gap"} and result.shares["ci_low"].isna().all()


def test_too_few_invocations_give_no_interval():
    rng = np.random.default_rng(0)
    base, arm = draw(rng, 0.0, 5, 0.03, 0.02), draw(rng, np.log(2), 5, 0.03, 0.02)
    result = gap_shares(base, arm, [Ablation(("shm",), "arm", draw(rng, np.log(2), 2, 0.03, 0.02))], n_boot=200)
    assert result.conclusive and row(result, "shm")["verdict"] == "too few" and np.isnan(row(result, "shm")["ci_low"])


def test_a_red_herring_is_blamed_rarely_even_at_the_edge_of_detection():
    """The verdict "cause" needs the interval's lower end above 20 % of the gap: for a mechanism that
    does nothing, in a 5 % gap measured with 5 invocations, that happens in well under 2.5 % of runs."""
    cost = additive(cause=1.05, herring=1.0)
    blamed = sum(row(simulate(cost, ["cause", "herring"], seed, between=0.02), "herring")["verdict"] == "cause"
                 for seed in range(200, 400))
    assert blamed <= 5


def test_a_failing_arm_is_closed_by_the_ablation_that_makes_it_run():
    shares = failure_shares({"shm": (5, 5), "herring": (0, 5), "partial": (2, 5), "few": (2, 2)}).set_index("mechanisms")
    assert list(shares["verdict"]) == ["cause", "ruled out", "partly", "too few"]
    assert shares.loc["shm", "ci_low"] == pytest.approx(0.025 ** (1 / 5))  # Clopper-Pearson, all 5 ran
    assert shares.loc["herring", "ci_high"] == pytest.approx(1 - 0.025 ** (1 / 5))


# ------------------------------------------------------------------------------------- held out: run last


def test_held_out_a_modest_cause_among_three_with_more_noise():
    cost = additive(cpu_quota=1.3, cpuset=1.08, shm=1.0)
    check_planted(cost, ["cpu_quota", "cpuset", "shm"], {"shm"}, range(9000, 9030), k=8, between=0.05)


def test_held_out_an_environment_variable_that_triples_the_time():
    cost = additive(**{"env:CUDA_LAUNCH_BLOCKING": 3.0, "env:(unknown)": 1.0, "seccomp": 1.02})
    check_planted(cost, ["env:CUDA_LAUNCH_BLOCKING", "env:(unknown)", "seccomp"], {"env:(unknown)"},
                  range(9100, 9130), k=4, between=0.08, within=0.05)


def test_held_out_an_interaction_beside_a_cause():
    # First run (the method unchanged since): every assertion held for all 10 seeds except the interval's
    # coverage, which missed once (seed 9207: [0.618, ...] for a planted 0.601), as a 95 % interval may;
    # coverage is now asserted as a rate, as everywhere else in this file.
    cost = either(1.4, {"a", "b"}, c=1.25, herring=1.0)
    mechanisms = ["a", "b", "c", "herring"]
    planted = planted_share(cost, mechanisms, {"a", "b"})
    covered = 0
    for seed in range(9200, 9210):
        result = simulate(cost, mechanisms, seed, k=6, combined=("a", "b"))
        assert row(result, "herring")["verdict"] != "cause"
        assert row(result, "c")["verdict"] == "cause"
        pair = row(result, "a", "b")
        assert pair["rank"] == 1
        covered += pair["ci_low"] <= planted <= pair["ci_high"]
        assert result.interactions.set_index("mechanisms").loc[[("a", "b")], "only_together"].item()
    assert covered >= 8
