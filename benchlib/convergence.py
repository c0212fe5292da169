"""How many more rounds a case needs, with the uncertainty of that estimate, and why a case may never
converge (invocations in two groups, drift with run order), stated with the evidence.

**Rounds needed** (:func:`rounds_needed`). At a look with n pairs, estimate d̄ and sd s of the paired
log ratios (:mod:`benchlib.sequential`), the repeated confidence interval after N pairs has expected
half-width ``h_N(σ) = q_N·σ/√N``; it decides once ``h_N < h*(θ) = max(δ − |θ|, |θ|)`` (inside the band
when |θ| < δ/2, excluding 0 otherwise; h* ≥ δ/2 always). The point estimate uses σ = s and θ = d̄.
The range reflects what is not known yet: σ from the chi-square interval of the variance
(``(n−1)s²/χ²_{(1+c)/2, n−1} ≤ σ² ≤ (n−1)s²/χ²_{(1−c)/2, n−1}``, c = ``RANGE_CONFIDENCE``) and θ
from its ordinary t interval at the same confidence, taking the best case of both for the low end
and the worst case for the high end. A count past the design's cap is reported as such, with the
count a larger cap would need (at the cap's boundary q).

**Cannot converge.**

- :func:`bimodality`: the invocation medians of one arm fall into two groups. Statistic: the best
  two-group split of the sorted log medians, ``E = min_split (W_left + W_right) / T`` (within-group
  over total sum of squares; Engelman & Hartigan 1969), groups of at least 2; its null distribution
  for normal data of the same count is simulated once per count (fixed seed, ``_NULL_DRAWS``). Called
  bimodal when p < ``alpha`` and the two groups' means are more than the margin apart (a split
  smaller than the margin does not stop a decision).
- :func:`drift`: the paired log ratios trend with run order (the arm/baseline ratio itself moves, so
  there is no one ratio to converge to): Kendall's τ of d against the round, p < ``alpha``, and a
  Theil-Sen slope that moves the ratio by more than the margin over the rounds run. The same test on
  one arm's log medians is reported as evidence (drift shared by both arms cancels in the pairs).

The detectors are run after every round, so their per-look ``alpha`` is small (0.001; simulated in
tests/test_convergence.py).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import special, stats

from .findings import format_value
from .sequential import OPEN, TOO_FEW, Design, interval
from .stats import deciding_half_width, deciding_half_width_range

RANGE_CONFIDENCE = 0.90
DETECTOR_ALPHA = 0.001
MIN_FOR_DETECTORS = 6  # invocations (or pairs) before a detector may speak
_NULL_DRAWS = 20_000
_NULL_SEED = 1969


@dataclass(frozen=True)
class Projection:
    """More rounds (invocations per arm) until the decision: a point estimate and a range.

    ``None`` for a count means "not within the cap"; ``beyond_cap`` then gives the count (from now)
    a larger cap would need at the cap's boundary. All zero once decided."""

    n: int
    more: int | None
    more_low: int | None
    more_high: int | None
    cap: int
    beyond_cap: int | None = None

    @property
    def within_cap(self) -> bool:
        return self.more is not None


def _first_deciding(n: int, sigma: float, target: float, design: Design) -> int | None:
    """Smallest N in (n, cap] with q_N·σ/√N < target, or None."""
    if not np.isfinite(sigma) or target <= 0:
        return None
    looks = np.asarray(design.looks)
    later = looks > n
    deciding = later & (design.critical_ts * sigma / np.sqrt(looks) < target)
    return int(looks[deciding.argmax()]) if deciding.any() else None


_target = deciding_half_width
_target_range = deciding_half_width_range


def rounds_needed(log_ratios: ArrayLike, design: Design, confidence: float = RANGE_CONFIDENCE) -> Projection:
    """More pairs until the sequential decision, with a range (module docstring)."""
    d = np.asarray(log_ratios, dtype=float)
    d = d[np.isfinite(d)]
    n = d.size
    if n >= design.min_rounds and interval(d, design).decision not in (OPEN, TOO_FEW):
        return Projection(n, 0, 0, 0, design.max_rounds)
    if n < 2:
        more = max(design.min_rounds - n, 1)
        return Projection(n, more, more, None, design.max_rounds)
    mean, s = float(d.mean()), float(d.std(ddof=1))
    tail = (1 - confidence) / 2
    sigma_low = s * math.sqrt((n - 1) / special.chdtri(n - 1, tail))  # chdtri: the chi-square upper-tail quantile
    sigma_high = s * math.sqrt((n - 1) / special.chdtri(n - 1, 1 - tail))
    spread = special.stdtrit(n - 1, 1 - tail) * s / math.sqrt(n)  # stdtrit: the t quantile
    worst_target, best_target = _target_range(mean - spread, mean + spread, design.delta)

    def more(sigma: float, target: float) -> int | None:
        total = _first_deciding(n, sigma, target, design)
        return None if total is None else total - n

    point = more(s, _target(mean, design.delta))
    beyond = None
    if point is None:
        q_cap = design.critical_ts[-1]
        beyond = max(1, math.ceil((q_cap * s / _target(mean, design.delta)) ** 2) - n)
    return Projection(n, point, more(sigma_low, best_target), more(sigma_high, worst_target), design.max_rounds,
                      beyond)


# --------------------------------------------------------------------------- cannot converge


@dataclass(frozen=True)
class Evidence:
    """Why a case may not converge: what was found, where, how strongly, in words."""

    kind: str  # "bimodal" | "drift"
    where: str  # an arm name, or "ratio" for the paired log ratios
    p_value: float
    text: str
    blocks: bool  # True when it stops the ratio converging (see the module docstring)


def _split_statistic(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of sorted values: min over splits (groups ≥ 2) of within SS / total SS, and the split index."""
    x = np.atleast_2d(sorted_values)
    n = x.shape[1]
    total = np.cumsum(x, axis=1)
    squares = np.cumsum(x * x, axis=1)
    sizes = np.arange(2, n - 1)  # left group size
    left_sum, left_sq = total[:, sizes - 1], squares[:, sizes - 1]
    right_sum, right_sq = total[:, -1:] - left_sum, squares[:, -1:] - left_sq
    within = (left_sq - left_sum**2 / sizes) + (right_sq - right_sum**2 / (n - sizes))
    overall = squares[:, -1] - total[:, -1] ** 2 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = within / overall[:, None]
    best = np.argmin(np.where(np.isfinite(ratio), ratio, np.inf), axis=1)
    return ratio[np.arange(x.shape[0]), best], sizes[best]


@functools.lru_cache(maxsize=256)
def _null_split_statistic(n: int) -> np.ndarray:
    """Sorted null values of the split statistic for ``n`` standard normal values (fixed seed)."""
    rng = np.random.default_rng([_NULL_SEED, n])
    values, _ = _split_statistic(np.sort(rng.standard_normal((_NULL_DRAWS, n)), axis=1))
    return np.sort(values)


def bimodality(log_medians: ArrayLike, where: str, margin: float, unit: str = "",
               alpha: float = DETECTOR_ALPHA) -> Evidence | None:
    """Evidence that the log invocation medians of one arm (in ``unit``) fall into two groups, or None."""
    x = np.sort(np.asarray(log_medians, dtype=float))
    x = x[np.isfinite(x)]
    n = x.size
    if n < MIN_FOR_DETECTORS or np.ptp(x) == 0:
        return None
    statistic, size = _split_statistic(x)
    null = _null_split_statistic(n)
    p = (np.searchsorted(null, statistic[0], side="right") + 1) / (null.size + 1)
    left, right = x[: size[0]], x[size[0]:]
    gap = right.mean() - left.mean()
    if p >= alpha or gap <= math.log1p(margin):
        return None
    low, high = (" to ".join(format_value(float(v), unit) for v in np.exp([g.min(), g.max()])) for g in (left, right))
    text = (f"{where}: invocation medians fall into two groups, {low} ({left.size} invocations) and {high} "
            f"({right.size}), {100 * math.expm1(gap):.0f} % apart (split test p = {p:.2g})")
    return Evidence("bimodal", where, float(p), text, True)


def _kendall_screen(x: np.ndarray, y: np.ndarray) -> float:
    """A fast, generous two-sided p-value of Kendall's S (normal approximation, no tie correction): the
    planner runs the detectors after every round, and only a series this screen does not clear goes
    to ``scipy.stats.kendalltau`` for the p-value that counts."""
    n = x.size
    s = float(np.sum(np.sign(x[None, :] - x[:, None]) * np.sign(y[None, :] - y[:, None]))) / 2
    sd = math.sqrt(n * (n - 1) * (2 * n + 5) / 18)
    return float(2 * special.ndtr(-(abs(s) - 1) / sd))


def drift(values: ArrayLike, rounds: ArrayLike, where: str, margin: float, blocks: bool,
          alpha: float = DETECTOR_ALPHA) -> Evidence | None:
    """Evidence that ``values`` (log ratios, or one arm's log medians) trend with ``rounds``, or None."""
    y, r = np.asarray(values, dtype=float), np.asarray(rounds, dtype=float)
    keep = np.isfinite(y) & np.isfinite(r)
    y, r = y[keep], r[keep]
    if y.size < MIN_FOR_DETECTORS or np.ptp(y) == 0 or _kendall_screen(r, y) > 20 * alpha:
        return None
    tau, p = stats.kendalltau(r, y)
    slope = stats.theilslopes(y, r).slope
    change = slope * (r.max() - r.min())
    if not p < alpha or abs(change) <= math.log1p(margin):
        return None
    what = "the ratio to the baseline" if where == "ratio" else f"{where}'s invocation medians"
    text = (f"{what} {'rises' if change > 0 else 'falls'} with run order: {100 * math.expm1(change):+.0f} % from "
            f"round {int(r.min())} to {int(r.max())} (Kendall τ = {tau:.2f}, p = {p:.2g})")
    return Evidence("drift", where, float(p), text, blocks)


def cannot_converge(log_ratios: ArrayLike, rounds: ArrayLike, arm_log_medians: dict[str, ArrayLike],
                    arm_rounds: dict[str, ArrayLike], margin: float, unit: str = "") -> list[Evidence]:
    """Every detector's evidence for one metric of one case and arm pair; ``blocks`` says which stop it."""
    found = [bimodality(values, arm, margin, unit) for arm, values in arm_log_medians.items()]
    found.append(drift(log_ratios, rounds, "ratio", margin, blocks=True))
    found += [drift(values, arm_rounds[arm], arm, margin, blocks=False) for arm, values in arm_log_medians.items()]
    return [evidence for evidence in found if evidence is not None]
