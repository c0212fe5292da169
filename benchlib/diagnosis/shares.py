"""With an experiment: the share of a gap each ablation closes, with a 95 % interval (docs/methodology.md,
"Diagnosis by ablation"). Pure functions of invocation samples; every random draw is seeded.

For one case and metric, T is a side's statistic as in :func:`benchlib.stats.compare` (the median
over invocations of the invocation medians); b is the baseline, a the arm with the gap, x an
ablation arm. On the log scale, an ablation that aligns the arm with the baseline in one mechanism
closes

    share = (log T_a - log T_x) / (log T_a - log T_b)

of the gap (1: all of it, 0: none, below 0: the arm got worse); one that changes the baseline towards
the arm reproduces ``(log T_x - log T_b) / (log T_a - log T_b)`` of it. The log scale makes shares of
independent mechanisms add up: two that cost 1.5x and 1.33x in a 2x gap close 58 % and 42 %.

The 95 % interval is the percentile interval over hierarchical-bootstrap replicates
(:func:`benchlib.stats.hierarchical_bootstrap`: invocations resampled, then samples within them) of
T_b, T_a and every T_x, drawn once per side, so every share, the residual and every interaction is
computed replicate by replicate from the same draws.

- **Verdicts**: a *cause* when the interval's lower end reaches ``meaningful`` (default 20 % of the
  gap); *ruled out* when its upper end stays below it; *unclear* otherwise. Causes rank by share.
- **Residual**: what no cause explains, ``1 - the sum of the causes' shares`` (additive on the log
  scale), each mechanism counted once, the largest first (an ablation that aligned several at once
  counts as one).
- **Interactions**: for an ablation that aligned several mechanisms at once, ``share(together) -
  sum of their single shares``; "only together" when the combination is a cause, none of its
  mechanisms is one alone and the interaction's interval excludes 0.
- **What to try next** (:func:`combination_to_try`): when the residual's interval stays above
  ``meaningful``, one ablation that aligns every mechanism tried on the arm's side at once.

A gap the arm shows by failing (the baseline runs) has no log ratio: :func:`failure_shares` gives the
fraction of each ablation's invocations that ran, with a Clopper-Pearson interval.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as scipy_stats

from ..stats import CONFIDENCE, MIN_INVOCATIONS, _percentile_ci, hierarchical_bootstrap
from .alignments import Side

__all__ = ["MEANINGFUL", "SHARE_COLUMNS", "Ablation", "GapShares", "combination_to_try", "failure_shares",
           "gap_shares"]

#: A share below this fraction of the gap is not a cause.
MEANINGFUL = 0.2

SHARE_COLUMNS = ["mechanisms", "side", "n_inv", "ratio", "share", "ci_low", "ci_high", "verdict", "rank"]
INTERACTION_COLUMNS = ["mechanisms", "share", "singles", "interaction", "ci_low", "ci_high", "only_together"]


@dataclass(frozen=True)
class Ablation:
    """One ablation arm's samples: the mechanisms it aligned (one, or several at once) and which side
    it changed (``arm``: towards the baseline; ``baseline``: towards the arm)."""

    mechanisms: tuple[str, ...]
    side: Side
    invocations: Sequence[ArrayLike]  # one array of samples per invocation

    @property
    def label(self) -> str:
        return " + ".join(self.mechanisms)


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def excludes(self, value: float) -> bool:
        return bool(self.low > value or self.high < value)


@dataclass(frozen=True)
class GapShares:
    """The answer for one case and metric."""

    gap: Interval  # the ratio T_a / T_b with its interval
    conclusive: bool  # the gap's interval excludes 1; without it no share is computed
    shares: pd.DataFrame  # SHARE_COLUMNS, one row per ablation, ranked
    residual: Interval | None  # the share no cause explains
    interactions: pd.DataFrame  # INTERACTION_COLUMNS, one row per combined ablation whose singles ran
    meaningful: float

    @property
    def causes(self) -> pd.DataFrame:
        return self.shares[self.shares["verdict"] == "cause"]

    @property
    def ruled_out(self) -> pd.DataFrame:
        return self.shares[self.shares["verdict"] == "ruled out"]


def _statistic(invocations: Sequence[ArrayLike]) -> float:
    return float(np.median([np.median(np.asarray(samples, dtype=float)) for samples in invocations]))


def _verdict(low: float, high: float, meaningful: float) -> str:
    if low >= meaningful:
        return "cause"
    if high < meaningful:
        return "ruled out"
    return "unclear"


def _interval(point: float, replicates: np.ndarray) -> Interval:
    low, high = _percentile_ci(replicates[np.isfinite(replicates)]) if np.isfinite(replicates).any() else (np.nan,) * 2
    return Interval(float(point), float(low), float(high))


def gap_shares(
    baseline: Sequence[ArrayLike],
    arm: Sequence[ArrayLike],
    ablations: Sequence[Ablation],
    n_boot: int = 2000,
    seed: int = 0,
    meaningful: float = MEANINGFUL,
) -> GapShares:
    """Shares of the arm's gap to the baseline closed (or reproduced) by each ablation; see the module
    docstring for the formulas. Sides with fewer than ``MIN_INVOCATIONS`` invocations get no interval
    (NaN) and the verdict ``too few``; a gap whose interval includes 1 gets no shares (``no gap``)."""
    sides = [baseline, arm, *(ablation.invocations for ablation in ablations)]
    seeds = np.random.SeedSequence(seed).spawn(len(sides))
    enough = [len(side) >= MIN_INVOCATIONS for side in sides]
    boots = [np.log(hierarchical_bootstrap(side, n_boot, int(s.generate_state(1)[0]))) if ok else None
             for side, s, ok in zip(sides, seeds, enough)]
    point = [np.log(_statistic(side)) if len(side) else np.nan for side in sides]
    log_b, log_a = point[0], point[1]
    gap_boot = boots[1] - boots[0] if boots[0] is not None and boots[1] is not None else np.full(1, np.nan)
    gap = _interval(np.exp(log_a - log_b), np.exp(gap_boot))
    conclusive = bool(np.isfinite(gap.low) and gap.excludes(1.0))

    rows, share_boot = [], {}
    for index, ablation in enumerate(ablations, start=2):
        x, x_boot = point[index], boots[index]
        with np.errstate(divide="ignore", invalid="ignore"):
            share = (log_a - x) / (log_a - log_b) if ablation.side == "arm" else (x - log_b) / (log_a - log_b)
            replicates = None
            if conclusive and x_boot is not None:
                replicates = ((boots[1] - x_boot) if ablation.side == "arm" else (x_boot - boots[0])) / gap_boot
        if replicates is not None:
            share_boot[ablation.mechanisms, ablation.side] = replicates
            interval = _interval(share, replicates)
            verdict = _verdict(interval.low, interval.high, meaningful)
        else:
            interval = Interval(float(share) if conclusive else np.nan, np.nan, np.nan)
            verdict = "no gap" if not conclusive else "too few"
        rows.append({"mechanisms": ablation.mechanisms, "side": ablation.side, "n_inv": len(ablation.invocations),
                     "ratio": float(np.exp(x - log_b)), "share": interval.value, "ci_low": interval.low,
                     "ci_high": interval.high, "verdict": verdict})
    ranked = _ranked(rows)
    residual = _residual(ranked, share_boot) if conclusive else None
    return GapShares(gap, conclusive, pd.DataFrame(ranked, columns=SHARE_COLUMNS), residual,
                     pd.DataFrame(_interactions(ranked, share_boot), columns=INTERACTION_COLUMNS), meaningful)


_VERDICT_ORDER = {"cause": 0, "unclear": 1, "ruled out": 2, "too few": 3, "no gap": 4}


def _ranked(rows: list[dict]) -> list[dict]:
    """Causes first, then unclear, ruled out, too few; by share within each; ``rank`` from 1."""
    def order(row: dict) -> tuple[int, float]:
        return _VERDICT_ORDER[row["verdict"]], -row["share"] if np.isfinite(row["share"]) else np.inf

    return [{**row, "rank": rank} for rank, row in enumerate(sorted(rows, key=order), start=1)]


def _residual(rows: list[dict], share_boot: dict) -> Interval:
    """``1 - the sum of the causes' shares``, each mechanism counted once: causes taken by share,
    largest first (a combination that closes the gap together counts as one), skipping any that
    shares a mechanism with one already counted; the arm's side before the baseline's."""
    causes = sorted((row for row in rows if row["verdict"] == "cause"),
                    key=lambda row: (row["side"] != "arm", -row["share"]))
    counted: set[str] = set()
    total, boot = 0.0, np.zeros(1)
    for row in causes:
        if counted & set(row["mechanisms"]):
            continue
        counted |= set(row["mechanisms"])
        total += row["share"]
        boot = boot + share_boot[row["mechanisms"], row["side"]]
    return _interval(1 - total, 1 - boot)


def _interactions(rows: list[dict], share_boot: dict) -> list[dict]:
    """One row per combined ablation whose mechanisms also ran alone on the same side."""
    by_key = {(row["mechanisms"], row["side"]): row for row in rows}
    found = []
    for row in rows:
        key = (row["mechanisms"], row["side"])
        singles = [((m,), row["side"]) for m in row["mechanisms"]]
        if len(row["mechanisms"]) < 2 or key not in share_boot or not all(s in share_boot for s in singles):
            continue
        single_sum = float(sum(by_key[s]["share"] for s in singles))
        interaction = _interval(row["share"] - single_sum, share_boot[key] - sum(share_boot[s] for s in singles))
        together = (row["verdict"] == "cause" and all(by_key[s]["verdict"] != "cause" for s in singles)
                    and interaction.excludes(0.0))
        found.append({"mechanisms": row["mechanisms"], "share": row["share"], "singles": single_sum,
                      "interaction": interaction.value, "ci_low": interaction.low, "ci_high": interaction.high,
                      "only_together": together})
    return found


def combination_to_try(result: GapShares) -> tuple[str, ...] | None:
    """The mechanisms to align together in one more ablation arm, or None: when the residual's interval
    stays above ``meaningful`` (no single ablation, nor the causes together, closes the gap), every
    mechanism tried alone on the arm's side, unless that combination already ran."""
    if result.residual is None or not result.residual.low > result.meaningful:
        return None
    singles = result.shares[(result.shares["mechanisms"].map(len) == 1) & (result.shares["side"] == "arm")]
    names = tuple(sorted(m for ms in singles["mechanisms"] for m in ms))
    tried = {tuple(sorted(ms)) for ms in result.shares["mechanisms"]}
    return names if len(names) > 1 and names not in tried else None


def failure_shares(ablations: dict[str, tuple[int, int]]) -> pd.DataFrame:
    """For an arm that fails where the baseline runs: per ablation ``name -> (invocations that ran,
    invocations)``, the fraction that ran with its Clopper-Pearson 95 % interval, and a verdict:
    ``cause`` when every one of at least MIN_INVOCATIONS ran, ``ruled out`` when none did, ``partly``
    otherwise, ``too few`` under MIN_INVOCATIONS."""
    rows = []
    for name, (ran, total) in ablations.items():
        if total == 0:
            rows.append({"mechanisms": name, "ran": 0, "n_inv": 0, "share": np.nan, "ci_low": np.nan,
                         "ci_high": np.nan, "verdict": "too few"})
            continue
        ci = scipy_stats.binomtest(ran, total).proportion_ci(CONFIDENCE, method="exact")
        verdict = ("too few" if total < MIN_INVOCATIONS else "cause" if ran == total
                   else "ruled out" if ran == 0 else "partly")
        rows.append({"mechanisms": name, "ran": ran, "n_inv": total, "share": ran / total, "ci_low": ci.low,
                     "ci_high": ci.high, "verdict": verdict})
    return pd.DataFrame(rows, columns=["mechanisms", "ran", "n_inv", "share", "ci_low", "ci_high", "verdict"])
