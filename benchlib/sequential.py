"""A sequential decision on the arm/baseline ratio, valid when the data are looked at after every round.

Looking after every interleaved round and stopping as soon as an ordinary 95 % interval looks
decided finds false differences far more often than 5 % of the time. This module uses **repeated
confidence intervals** (Jennison & Turnbull 1989; *Group Sequential Methods*, 2000, ch. 9) from a
**group-sequential design with Lan-DeMets alpha spending** (Lan & DeMets 1983): intervals that cover
the true ratio at every look *simultaneously* with probability ≥ 1 − α, so any stopping rule built
on them (stop when decided, when the budget runs out, at the cap) keeps that coverage at the moment
it stops (docs/methodology.md, "Sequential runs").

Unit and statistic. Rounds pair naturally: round r runs one invocation of each arm of a case, close
in time, so ``d_r = log(m_arm,r) − log(m_base,r)`` with m the invocation's median over its samples
(drift shared by the round cancels). The target is θ = E[d], the log of the ratio of geometric means
of invocation medians. At a look with n pairs, d̄ = mean(d), s = sd(d) (ddof 1).

Boundaries. Looks are planned at n = ``min_rounds`` .. ``max_rounds`` (the cap N); the information
fraction of look n is t = n / N. The spending function α(t) says how much of α may be used up by
information t; the two-sided boundaries c_n solve, under θ = 0 with the standardized sums
S_n = Σ d_i / σ (independent N(0, 1) increments),
``P(|S_m| < c_m √m for all earlier looks m, |S_n| ≥ c_n √n) = α(t_n) − α(t_{n−1})``,
computed by recursive numerical integration of the density of S over the continuation region
(Armitage, McPherson & Rowe 1969; Jennison & Turnbull ch. 19), Simpson's rule on a grid of step
√Δ/``_GRID_PER_SD``. σ is unknown, so each look uses the t quantile at the same nominal level
(the "significance level approach", Jennison & Turnbull §11.4): ``p_n = 2·(1 − Φ(c_n))``,
``q_n = t⁻¹_{n−1}(1 − p_n/2)``, and the repeated confidence interval is ``d̄ ± q_n·s/√n``. With
looks from 3 pairs on, few degrees of freedom make that mapping let the error grow past α (0.056
for looks at 3..20), so the c_n are designed at a level α' < α found by simulation such that the
t boundaries keep the simultaneous error at α (``t_boundaries``).
Skipping planned looks (a failed invocation, a round the planner gives to another case) only makes
the intervals conservative; looking beyond the cap is refused.

Decision (per performance metric and arm, margin m, δ = log(1 + m)):
``no_difference`` when the interval lies inside (−δ, δ) — "no difference beyond the margin";
else ``difference`` when it excludes 0 — "a difference", its size given by the interval (the
issue's "interval excluding the margin" is the sub-case where it also excludes ±δ, ``beyond_margin``);
else ``open``. Each true θ is decidable with enough data (no dead zone at ±δ), a false
"difference" needs the interval to miss θ = 0 and a false "no difference" for |θ| ≥ δ needs it to
miss θ, so both are bounded by α through the simultaneous coverage.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import optimize, special, stats

from .schema import STATUS_OK

#: α(t) of a spending function: the cumulative two-sided error allowed by information fraction t.
SpendingFunction = Callable[[float, float], float]

NO_DIFFERENCE, DIFFERENCE, OPEN, TOO_FEW = "no_difference", "difference", "open", "too_few"
DECISIONS = (NO_DIFFERENCE, DIFFERENCE, OPEN, TOO_FEW)

_GRID_PER_SD = 6  # grid points per standard deviation of one look's increment (1e-5 from published boundaries)
_NULL_SEED = 20261124  # the fixed seed of the null paths that calibrate the t boundaries
_NULL_VALUES = 4_000_000  # paths × looks simulated for that calibration (200 000 paths at a cap of 20)
_TAIL_SD = 9.0  # the continuation region is cut at ±9 sd of S_n: the density beyond is < 1e-18


def _obrien_fleming(alpha: float, t: float) -> float:
    """Lan-DeMets O'Brien-Fleming type: ``α(t) = 2 − 2Φ(z_{1−α/2} / √t)``; spends almost nothing early."""
    return float(2 * stats.norm.sf(stats.norm.isf(alpha / 2) / math.sqrt(t))) if t > 0 else 0.0


def _pocock(alpha: float, t: float) -> float:
    """Lan-DeMets Pocock type: ``α(t) = α·ln(1 + (e − 1)t)``; spends evenly in time."""
    return alpha * math.log1p((math.e - 1) * t)


def _hwang_shih_decani(gamma: float) -> SpendingFunction:
    """Hwang-Shih-DeCani: ``α(t) = α(1 − e^{−γt}) / (1 − e^{−γ})``; γ = −4 is close to O'Brien-Fleming,
    γ = 1 to Pocock."""
    def spend(alpha: float, t: float) -> float:
        return alpha * t if gamma == 0 else alpha * math.expm1(-gamma * t) / math.expm1(-gamma)
    return spend


#: name -> spending function (a registry: a design names its function).
SPENDING: dict[str, SpendingFunction] = {
    "obrien-fleming": _obrien_fleming,
    "pocock": _pocock,
    "hsd-4": _hwang_shih_decani(-4.0),
    "hsd-2": _hwang_shih_decani(-2.0),
    "hsd-1": _hwang_shih_decani(-1.0),
    "hsd0": _hwang_shih_decani(0.0),
    "hsd1": _hwang_shih_decani(1.0),
}

#: Defaults, chosen by the simulation in benchmarks/sequential_simulation.py (docs/methodology.md).
DEFAULT_SPENDING = "hsd-2"
DEFAULT_MARGIN = 0.05
DEFAULT_MAX_ROUNDS = 20
DEFAULT_MIN_ROUNDS = 3
DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class Design:
    """One sequential design: looks at every n in [min_rounds, max_rounds] pairs, α spent by ``spending``."""

    max_rounds: int = DEFAULT_MAX_ROUNDS  # the cap N: invocations per arm and case
    min_rounds: int = DEFAULT_MIN_ROUNDS  # the first look
    alpha: float = DEFAULT_ALPHA  # two-sided; 1 − alpha is the simultaneous coverage
    margin: float = DEFAULT_MARGIN  # the band (−log(1+m), log(1+m)) of "no difference"
    spending: str = DEFAULT_SPENDING

    def __post_init__(self) -> None:
        if not 2 <= self.min_rounds <= self.max_rounds:
            raise ValueError(f"need 2 ≤ min_rounds ≤ max_rounds, not {self.min_rounds} and {self.max_rounds}")
        if not 0 < self.alpha < 1 or not self.margin > 0:
            raise ValueError(f"alpha must be in (0, 1) and margin > 0, not {self.alpha} and {self.margin}")
        if self.spending not in SPENDING:
            raise ValueError(f"unknown spending function {self.spending!r}; known: {', '.join(SPENDING)}")

    @property
    def delta(self) -> float:
        """The margin on the log scale: log(1 + margin)."""
        return math.log1p(self.margin)

    @property
    def looks(self) -> tuple[int, ...]:
        """The planned looks: after min_rounds, min_rounds + 1, ..., max_rounds pairs."""
        return _looks(self.min_rounds, self.max_rounds)

    def boundary(self, n: int) -> float:
        """c_n: the normal-scale two-sided boundary of the look at n pairs, at level ``nominal_alpha``."""
        return float(boundaries(self.looks, self.max_rounds, self.nominal_alpha, self.spending)[self._index(n)])

    @property
    def critical_ts(self) -> np.ndarray:
        """q_n of every planned look, in ``looks`` order."""
        return _critical_t(self)

    def critical_t(self, n: int) -> float:
        """q_n: the t-scale boundary of the look at n pairs (``t_boundaries``)."""
        return float(_critical_t(self)[self._index(n)])

    @property
    def nominal_alpha(self) -> float:
        """α': the level the normal-theory boundaries are designed at so the t boundaries keep ``alpha``."""
        return t_boundaries(self.looks, self.max_rounds, self.alpha, self.spending)[0]

    def _index(self, n: int) -> int:
        if not self.min_rounds <= n <= self.max_rounds:
            raise ValueError(f"no look planned at {n} pairs: the design looks at {self.min_rounds}..{self.max_rounds}")
        return n - self.min_rounds


@functools.lru_cache(maxsize=64)
def _looks(first: int, last: int) -> tuple[int, ...]:
    return tuple(range(first, last + 1))


def _simpson_weights(count: int, step: float) -> np.ndarray:
    """Composite Simpson weights for an odd number of equally spaced points."""
    weights = np.ones(count)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return weights * step / 3


def _grid(half_width: float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Points over [−half_width, half_width] (odd count, spacing ≤ step) and their Simpson weights."""
    count = 2 * max(1, math.ceil(half_width / step)) + 1
    points = np.linspace(-half_width, half_width, count)
    return points, _simpson_weights(count, points[1] - points[0])


@functools.lru_cache(maxsize=64)
def boundaries(looks: tuple[int, ...], horizon: int, alpha: float, spending: str) -> np.ndarray:
    """Two-sided boundaries c_k on |S_k| / √n_k for looks after ``looks`` observations (increasing),
    information fraction n_k / ``horizon``, α spent by ``SPENDING[spending]``; by recursive
    integration of the density of S over the continuation region (module docstring). Cached."""
    spend = SPENDING[spending]
    cumulative = np.array([spend(alpha, min(n / horizon, 1.0)) for n in looks])
    increments = np.diff(np.concatenate(([0.0], cumulative)))
    bounds = np.empty(len(looks))
    bounds[0] = stats.norm.isf(max(increments[0], 1e-300) / 2)
    points, mass = _first_look(bounds[0], looks[0])
    for k in range(1, len(looks)):
        sd = math.sqrt(looks[k] - looks[k - 1])
        bounds[k] = _solve_boundary(points, mass, sd, math.sqrt(looks[k]), increments[k])
        points, mass = _next_look(bounds[k], looks[k], points, mass, sd)
    return bounds


def _solve_boundary(points: np.ndarray, mass: np.ndarray, sd: float, root_n: float, target: float) -> float:
    """The c at which the probability of first crossing at this look equals ``target``."""
    def exit_probability(c: float) -> float:
        edge = c * root_n
        return float(mass @ (special.ndtr((-edge - points) / sd) + special.ndtr((points - edge) / sd)))

    high, low = 40.0, 1e-6
    if target <= 1e-15:
        return np.inf
    if exit_probability(high) >= target:
        return high
    if exit_probability(low) <= target:  # more may be spent than is left: the boundary is ~0
        return low
    return float(optimize.brentq(lambda c: exit_probability(c) - target, low, high, xtol=1e-8))


def _normal_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _first_look(c: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid over |S_n| < c·√n and the mass (density × Simpson weight) of S_n ~ N(0, n) on it."""
    root_n = math.sqrt(n)
    points, weights = _grid(min(c, _TAIL_SD) * root_n, root_n / _GRID_PER_SD)
    return points, weights * _normal_pdf(points / root_n) / root_n


def _next_look(c: float, n: int, previous: np.ndarray, previous_mass: np.ndarray, sd: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Grid over |S_n| < c·√n and the mass of S_n there having stayed inside every earlier look:
    the previous mass convolved with the N(0, sd²) increment."""
    points, weights = _grid(min(c, _TAIL_SD) * math.sqrt(n), sd / _GRID_PER_SD)
    kernel = _normal_pdf((points[:, None] - previous[None, :]) / sd) / sd
    return points, weights * (kernel @ previous_mass)


def _critical_t(design: Design) -> np.ndarray:
    return t_boundaries(design.looks, design.max_rounds, design.alpha, design.spending)[1]


def _null_t_paths(looks: tuple[int, ...]) -> np.ndarray:
    """|t| = |mean|/(sd/√n) at each look of sequences of standard normal values (fixed seed), float32.

    The t statistic of the pivot (d̄ − θ)/(s/√n) has this null distribution whatever θ and σ are, so
    these paths give the simultaneous error of any set of t boundaries for normal data."""
    horizon = looks[-1]
    paths = max(20_000, min(200_000, _NULL_VALUES // len(looks)))
    rng = np.random.default_rng(_NULL_SEED)
    index = np.asarray(looks) - 1
    n = np.arange(1, horizon + 1, dtype=float)
    out = np.empty((paths, len(looks)), dtype=np.float32)
    for start in range(0, paths, 20_000):
        x = rng.standard_normal((min(20_000, paths - start), horizon))
        total, squares = np.cumsum(x, axis=1), np.cumsum(x * x, axis=1)
        mean = total / n
        with np.errstate(invalid="ignore", divide="ignore"):
            variance = np.maximum(squares - n * mean**2, 0.0) / (n - 1)
            out[start:start + x.shape[0]] = (np.abs(mean) / np.sqrt(variance / n))[:, index]
    return out


@functools.lru_cache(maxsize=32)
def t_boundaries(looks: tuple[int, ...], horizon: int, alpha: float, spending: str) -> tuple[float, np.ndarray]:
    """(α', q): the t-scale boundaries q_k = t⁻¹_{n_k−1}(1 − p_k/2), p_k = 2(1 − Φ(c_k)), of the
    normal-theory boundaries c_k designed at the level α' that keeps the simultaneous error of the
    t statistics at ``alpha``.

    Mapping each look's nominal level to a t quantile (Jennison & Turnbull §11.4) alone lets the
    error grow with many looks at few degrees of freedom (about 0.056 instead of 0.05 with looks at
    3..20), so α' ≤ α is found by bisection against simulated null paths (``_null_t_paths``: the
    standard error of that error estimate is about 0.0005 with 200 000 paths). Cached.
    """
    null = _null_t_paths(looks)
    dof = np.asarray(looks, dtype=float) - 1

    def critical(level: float) -> np.ndarray:
        return stats.t.isf(special.ndtr(-boundaries(looks, horizon, level, spending)), dof)

    def error(level: float) -> float:
        return float((null >= critical(level)[None, :].astype(np.float32)).any(axis=1).mean())

    low, high = alpha / 4, alpha
    if error(high) <= alpha:
        return high, critical(high)
    for _ in range(14):
        middle = (low + high) / 2
        low, high = (middle, high) if error(middle) <= alpha else (low, middle)
    return low, critical(low)


# --------------------------------------------------------------------------- intervals and decisions


@dataclass(frozen=True)
class Interval:
    """The repeated confidence interval of θ (log ratio) at one look, and the decision it gives."""

    n: int  # pairs
    estimate: float  # d̄
    low: float
    high: float
    sd: float  # s of the paired log ratios
    decision: str
    beyond_margin: bool  # the interval also excludes the whole band ±δ

    @property
    def ratio(self) -> float:
        return math.exp(self.estimate)

    @property
    def ratio_low(self) -> float:
        return math.exp(self.low)

    @property
    def ratio_high(self) -> float:
        return math.exp(self.high)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def decide(low: ArrayLike, high: ArrayLike, delta: float) -> np.ndarray:
    """The decision of intervals [low, high] on θ with band ±δ (module docstring); NaN bounds: open."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    with np.errstate(invalid="ignore"):
        inside = (low > -delta) & (high < delta)
        excludes_zero = (low > 0) | (high < 0)
    return np.where(inside, NO_DIFFERENCE, np.where(excludes_zero, DIFFERENCE, OPEN))


def _decide_one(low: float, high: float, delta: float) -> str:
    """``decide`` for one interval."""
    if low > -delta and high < delta:
        return NO_DIFFERENCE
    return DIFFERENCE if low > 0 or high < 0 else OPEN


def running_intervals(log_ratios: ArrayLike, design: Design) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, low, high) at every planned look of each row of ``log_ratios`` (runs × rounds).

    Column j of the outputs is the look after j + 1 pairs; columns before ``min_rounds`` and
    past the cap are NaN. Rows are independent runs (the simulations in tests/ use this directly).
    """
    d = np.atleast_2d(np.asarray(log_ratios, dtype=float))
    rounds = d.shape[1]
    n = np.arange(1, rounds + 1, dtype=float)
    total = np.cumsum(d, axis=1)
    mean = total / n
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = np.maximum((np.cumsum(d * d, axis=1) - n * mean**2) / (n - 1), 0.0)
    q = np.full(rounds, np.nan)
    planned = (n >= design.min_rounds) & (n <= design.max_rounds)
    q[planned] = _critical_t(design)[(n[planned] - design.min_rounds).astype(int)]
    half = q * np.sqrt(variance / n)
    return mean, mean - half, mean + half


def interval(log_ratios: ArrayLike, design: Design) -> Interval:
    """The repeated confidence interval and decision after the pairs in ``log_ratios`` (in round order)."""
    d = np.asarray(log_ratios, dtype=float)
    d = d[np.isfinite(d)]
    n = d.size
    if n > design.max_rounds:
        raise ValueError(f"{n} pairs is past the design's cap of {design.max_rounds}: the intervals cover "
                         "only the planned looks")
    if n < design.min_rounds:
        estimate = float(d.mean()) if n else math.nan
        sd = float(d.std(ddof=1)) if n > 1 else math.nan
        return Interval(n, estimate, math.nan, math.nan, sd, TOO_FEW, False)
    estimate = float(d.mean())
    sd = float(d.std(ddof=1))
    half = design.critical_t(n) * sd / math.sqrt(n)
    low, high = estimate - half, estimate + half
    beyond = bool(low > design.delta or high < -design.delta)
    return Interval(n, estimate, low, high, sd, _decide_one(low, high, design.delta), beyond)


# --------------------------------------------------------------------------- from the results table

PAIR_KEYS = ["benchmark", "case", "metric", "arm"]


def invocation_medians(results: pd.DataFrame) -> pd.DataFrame:
    """One row per benchmark × case × metric × arm × invocation (ok, finite rows): the median value.

    Columns: benchmark, case, metric, arm, invocation, median. Invocations of several run ids
    (a resumed run keeps one run id) are told apart by the invocation number alone.
    """
    ok = results["status"].eq(STATUS_OK).to_numpy(dtype=bool, na_value=False)
    values = results["value"].to_numpy(dtype=float, na_value=np.nan)
    rows = results.loc[ok & np.isfinite(values), [*PAIR_KEYS, "invocation", "value"]]
    rows = rows.astype({"value": float})
    out = rows.groupby([*PAIR_KEYS, "invocation"], sort=False, dropna=False)["value"].median()
    return out.rename("median").reset_index()


def paired_log_ratios(medians: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """``d = log(median_arm) − log(median_base)`` for every invocation number both have, per
    benchmark × case × metric × arm (arm ≠ baseline), in invocation (round) order.

    Columns: benchmark, case, metric, arm, invocation, log_ratio. A non-positive median gives no pair.
    """
    base = medians[medians["arm"] == baseline].drop(columns="arm").rename(columns={"median": "base"})
    arms = medians[medians["arm"] != baseline]
    joined = arms.merge(base, on=["benchmark", "case", "metric", "invocation"], how="inner")
    with np.errstate(divide="ignore", invalid="ignore"):
        joined["log_ratio"] = np.log(joined["median"].to_numpy(float)) - np.log(joined["base"].to_numpy(float))
    joined = joined[np.isfinite(joined["log_ratio"])]
    joined = joined.sort_values([*PAIR_KEYS, "invocation"], kind="stable")
    return joined[[*PAIR_KEYS, "invocation", "log_ratio"]].reset_index(drop=True)


SEQUENTIAL_COLUMNS = [*PAIR_KEYS, "n_pairs", "ratio", "ratio_low", "ratio_high", "sd_log", "decision", "beyond_margin"]


def sequential_compare(results: pd.DataFrame, baseline: str, design: Design = Design()) -> pd.DataFrame:
    """The repeated confidence interval and decision of every benchmark × case × metric × arm.

    Pass only the rows of performance metrics (``benchlib.findings.performance_rows``); the ratio
    is arm / baseline of the metric as stored (for rates, overhead flips: ``stats.overhead_from_ratio``).
    """
    pairs = paired_log_ratios(invocation_medians(results), baseline)
    rows = []
    for key, group in pairs.groupby(PAIR_KEYS, sort=False, dropna=False):
        found = interval(group["log_ratio"].to_numpy(), design)
        rows.append({**dict(zip(PAIR_KEYS, key)), "n_pairs": found.n, "ratio": found.ratio,
                     "ratio_low": found.ratio_low, "ratio_high": found.ratio_high, "sd_log": found.sd,
                     "decision": found.decision, "beyond_margin": found.beyond_margin})
    return pd.DataFrame(rows, columns=SEQUENTIAL_COLUMNS)
