"""Statistics on the tidy results table (docs/architecture.md, "Statistics"): summaries, arm-vs-baseline
comparisons with verdicts (their sentences come from benchlib.wording), and throttle awareness. Pure functions of DataFrames; every random
draw comes from a seeded ``numpy.random.Generator``.

Invocations, not samples, are the independent unit: samples within one invocation share its
process, JIT state, allocator and clocks, so they are not independent of one another. An
invocation is identified by ``(run_id, invocation)`` within one ``benchmark × case × metric × arm``.
Only rows with ``status == "ok"`` and a finite ``value`` are used.

Formulas (i: invocation, j: sample within it, x: ``value``)

- Arm statistic: ``T = median_i(median_j x_ij)``, the median over invocations of the
  per-invocation medians (robust to a slow invocation and to outlier samples alike).
- Ratio: ``R = T_arm / T_base``. Overhead (``overhead_from_ratio``): ``R - 1`` where lower is better
  (times, and every metric by default), ``1/R - 1`` where higher is better (metrics named in
  ``higher_is_better`` or with a unit ending in ``/s``). Positive overhead = the arm is worse.
- CI: 95 % percentile interval of ``R*_b = T*_arm,b / T*_base,b`` over ``n_boot`` hierarchical
  bootstrap replicates. One replicate of an arm with k invocations draws k invocations with
  replacement, then resamples the n samples of each drawn invocation with replacement, takes
  each resample's median and the median of those. The resample's median is drawn exactly from
  its distribution instead of by drawing n indices (see ``_MedianSampler``), so a replicate costs
  O(k log n) rather than O(k n). Percentile, not BCa: the acceleration would need a jackknife
  of the two-level statistic, and with few invocations it is unstable.
- Welch's t (``scipy.stats.ttest_ind``, ``equal_var=False``) and Mann-Whitney U (two-sided) on the
  invocation medians of the two arms: secondary tests.
- TOST (``tost_welch``) on log invocation medians, bounds ``±log(1 + margin)``: two one-sided
  Welch t-tests; ``p_tost = max`` of the two. It tests the difference of mean log medians (the
  log of a ratio of geometric means), which is what a t-test can speak about.
- Holm (``holm``) step-down adjustment within each family ``benchmark × metric × arm``: the
  cases of one benchmark compared for one arm are the family of questions a report answers
  together; arms and metrics are separate questions.
- Verdict: fewer than 3 invocations in either arm -> ``too_few``; else Holm-adjusted TOST p < 0.05
  -> ``equivalent``; else CI excludes 1 -> ``overhead`` (with the seed's band); else
  ``inconclusive`` with ``required_invocations``.
- Invocations needed: ``s² = (s_arm² + s_base²) / 2`` of log invocation medians (ddof 1),
  ``h = max(log(1 + margin), |log R|)``, ``n = (z·s·√2 / h)²`` with ``z = Φ⁻¹(0.975)``,
  ``N = max(0, ceil(n) - current)``: the per-arm count at which the normal-approximation CI
  half-width of the log ratio falls below the margin, or below the observed effect to separate it
  from zero, whichever needs fewer.
"""
from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Collection, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import special, stats

from .schema import INVOCATION_KEYS, STATUS_OK

__all__ = [
    "ALPHA", "ARM_KEYS", "BENIGN_CLOCK_EVENT_REASONS", "CASE_KEYS", "COMPARE_COLUMNS", "CONFIDENCE",
    "DECOMPOSE_COLUMNS", "EFFECTS", "HOLM_FAMILY", "INVOCATION_ID", "MIN_INVOCATIONS", "PERCENTILES",
    "ROLES", "SUMMARY_COLUMNS", "compare", "compare_with_without_throttled", "decompose",
    "hierarchical_bootstrap", "holm", "mark_throttled", "overhead_from_ratio", "required_invocations", "required_invocations_range",
    "deciding_half_width", "deciding_half_width_range",
    "summarise", "throttle_summary", "throttled_polls", "tost_welch"
]

CASE_KEYS = ["benchmark", "case", "metric"]
ARM_KEYS = [*CASE_KEYS, "arm"]
INVOCATION_ID = ["run_id", "invocation"]
HOLM_FAMILY = ["benchmark", "metric", "arm"]
PERCENTILES = (5, 50, 95, 99)
CONFIDENCE = 0.95
ALPHA = 0.05
MIN_INVOCATIONS = 3

#: clock-event reasons that do not mean the GPU was held back.
BENIGN_CLOCK_EVENT_REASONS = frozenset({"", "gpu_idle", "applications_clocks_setting"})


COMPARE_COLUMNS = [
    "benchmark", "case", "metric", "unit", "arm", "baseline", "n_inv_arm", "n_inv_base",
    "median_arm", "median_base", "ratio", "ci_low", "ci_high", "ci_halfwidth_rel", "overhead",
    "p_welch", "p_mwu", "p_tost", "p_welch_holm", "p_tost_holm", "verdict_code", "verdict", "band",
]
SUMMARY_COLUMNS = [
    *ARM_KEYS, "n_invocations", "n_samples", "median", "mean", "std", "cv",
    *(f"p{q}" for q in PERCENTILES), "min", "max", "unit",
]


# --------------------------------------------------------------------------- grouping


def _ok_samples(results: pd.DataFrame) -> pd.DataFrame:
    """Rows with status ok and a finite value."""
    ok = results["status"].eq(STATUS_OK).to_numpy(dtype=bool, na_value=False)
    finite = np.isfinite(results["value"].to_numpy(dtype=float, na_value=np.nan))
    return results.loc[ok & finite]


@dataclass(frozen=True)
class _Sorted:
    """The values of a frame grouped by keys, sorted within each group, groups concatenated."""

    first: pd.DataFrame  # the first row of each group, groups in order of first appearance
    code: np.ndarray  # group of each row of the frame, in the frame's row order
    values: np.ndarray  # values sorted within group; group g is values[offsets[g]:offsets[g]+counts[g]]
    offsets: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame, keys: list[str]) -> _Sorted:
        code = frame.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()
        values = frame["value"].to_numpy(dtype=float)
        counts = np.bincount(code, minlength=code.max() + 1 if code.size else 0)
        first = frame.drop_duplicates(keys).reset_index(drop=True)
        return cls(first, code, values[np.lexsort((values, code))], np.cumsum(counts) - counts, counts)

    def quantile(self, q: float) -> np.ndarray:
        """Per-group quantile, numpy's default (linear) rule: x[floor(p)] + frac(p)·(x[floor(p)+1] − x[floor(p)]), p = (n−1)q."""
        pos = (self.counts - 1) * q
        low = np.floor(pos).astype(np.int64)
        high = np.minimum(low + 1, self.counts - 1)
        below, above = self.values[self.offsets + low], self.values[self.offsets + high]
        return below + (pos - low) * (above - below)


# --------------------------------------------------------------------------- summarise


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark × case × metric × arm (ok rows): counts, centre, spread and percentiles.

    ``std`` has ddof 1, ``cv = std / mean``; percentiles use numpy's linear rule. Groups appear in
    the order of their first row.
    """
    ok = _ok_samples(results)
    groups = _Sorted.of(ok, ARM_KEYS)
    n = groups.counts
    in_group = np.repeat(np.arange(n.size), n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(in_group, groups.values, n.size) / n
        std = np.sqrt(np.bincount(in_group, (groups.values - mean[in_group]) ** 2, n.size) / (n - 1))
    first_of_invocation = np.unique(ok.groupby(ARM_KEYS + INVOCATION_ID, sort=False, dropna=False).ngroup().to_numpy(), return_index=True)[1]
    out = groups.first[ARM_KEYS].copy()
    out["n_invocations"] = np.bincount(groups.code[first_of_invocation], minlength=n.size)
    out["n_samples"] = n
    out["median"] = groups.quantile(0.5)
    out["mean"] = mean
    out["std"] = std
    out["cv"] = std / mean
    for q in PERCENTILES:
        out[f"p{q}"] = groups.quantile(q / 100)
    out["min"] = groups.quantile(0.0)
    out["max"] = groups.quantile(1.0)
    out["unit"] = groups.first["unit"].to_numpy()
    return out[SUMMARY_COLUMNS]


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class _MedianSampler:
    """Draws the median of a with-replacement resample of one invocation's samples, exactly.

    For n sorted values resampled n times, let N(≤a) ~ Binomial(n, a/n) count draws of ranks ≤ a
    and m = ceil(n/2). The lower middle order statistic L of the resample has
    ``P(L ≤ a) = P(N(≤a) ≥ m) = I_{a/n}(m, n−m+1)`` (regularised incomplete beta), drawn by
    inverting that CDF. Odd n: the median is x_L. Even n: the median is (x_L + x_U)/2 with U the
    next order statistic, and ``P(U > b | L = a) = K_a·((n−b)/n)^(n−m)`` for b ≥ a, where
    ``K_a = C(n,m)·[(a/n)^m − ((a−1)/n)^m] / P(L = a)`` (m draws ≤ a, at least one equal to a, the
    other n−m above b), so ``U = max(a, floor(n·(1 − (v/K_a)^(1/(n−m)))) + 1)`` for v ~ U(0, 1).
    """

    values: np.ndarray  # sorted within invocation, invocations concatenated
    offsets: np.ndarray
    counts: np.ndarray
    cdf_key: np.ndarray  # invocation index + P(L ≤ rank), aligned with values; non-decreasing
    log_k: np.ndarray  # log K_rank, aligned with values (used for even n)

    @classmethod
    def build(cls, values: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> _MedianSampler:
        invocation = np.repeat(np.arange(counts.size), counts)
        n = counts[invocation].astype(float)
        rank = np.arange(values.size) - offsets[invocation] + 1.0
        m = np.ceil(n / 2)
        cdf = special.betainc(m, n - m + 1, rank / n)
        cdf[offsets + counts - 1] = 1.0
        previous = np.where(rank > 1, np.concatenate(([0.0], cdf[:-1])), 0.0)
        with np.errstate(divide="ignore"):
            log_k = (
                special.gammaln(n + 1) - special.gammaln(m + 1) - special.gammaln(n - m + 1)
                + m * np.log(rank / n) + np.log(-np.expm1(m * np.log1p(-1 / rank)))
                - np.log(cdf - previous)
            )
        return cls(values, offsets, counts, invocation + cdf, log_k)

    @classmethod
    def of_arrays(cls, invocations: Sequence[ArrayLike]) -> _MedianSampler:
        arrays = [np.sort(np.asarray(a, dtype=float)) for a in invocations]
        counts = np.array([a.size for a in arrays], dtype=np.int64)
        return cls.build(np.concatenate(arrays), np.cumsum(counts) - counts, counts)

    def draw(self, invocation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One resampled median for each entry of ``invocation`` (indices into this sampler)."""
        n, start = self.counts[invocation], self.offsets[invocation]
        lower = np.searchsorted(self.cdf_key, invocation + rng.random(invocation.shape), side="right")
        lower = np.minimum(lower, start + n - 1)
        rank = lower - start + 1
        m = (n + 1) // 2
        with np.errstate(divide="ignore", over="ignore"):
            root = np.exp((np.log(rng.random(invocation.shape)) - self.log_k[lower]) / np.maximum(n - m, 1))
        upper_rank = np.clip(np.floor(n * (1 - root)) + 1, rank, n).astype(np.int64)
        upper = np.where(n % 2 == 0, start + upper_rank - 1, lower)
        return 0.5 * (self.values[lower] + self.values[upper])

    def hierarchical(self, invocations: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
        """``n_boot`` replicates of T = median over resampled invocations of resampled medians."""
        picks = invocations[rng.integers(0, invocations.size, size=(n_boot, invocations.size))]
        return np.median(self.draw(picks, rng), axis=1)


def hierarchical_bootstrap(invocations: Sequence[ArrayLike], n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Bootstrap replicates of ``median_i(median_j x_ij)`` for one arm, given its invocations' samples.

    Each replicate resamples the invocations with replacement, then the samples within each
    drawn invocation with replacement (see ``_MedianSampler`` for the exact median draw).
    """
    sampler = _MedianSampler.of_arrays(invocations)
    return sampler.hierarchical(np.arange(sampler.counts.size), n_boot, np.random.default_rng(seed))


# --------------------------------------------------------------------------- tests and helpers


def overhead_from_ratio(ratio: ArrayLike, higher_is_better: bool = False) -> np.ndarray | float:
    """Overhead of the arm from ``ratio = arm / baseline``: ``ratio − 1`` (lower is better) or
    ``1/ratio − 1`` (higher is better). Positive = the arm is worse by that fraction."""
    ratio = np.asarray(ratio, dtype=float)
    with np.errstate(divide="ignore"):
        out = 1 / ratio - 1 if higher_is_better else ratio - 1
    return float(out) if out.ndim == 0 else out


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN stays NaN and does not count towards m.

    With the m finite p-values sorted ascending, ``p_adj(i) = min(1, max_{j≤i} (m − j + 1)·p(j))``.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = ~np.isnan(p)
    order = np.argsort(p[finite], kind="stable")
    m = order.size
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[finite][order]))
    out[finite] = adjusted
    return out


def tost_welch(log_arm: ArrayLike, log_base: ArrayLike, margin: float) -> float:
    """TOST p-value that ``mean(log_arm) − mean(log_base)`` lies within ``±log(1 + margin)``.

    With d the difference, ``se² = s_a²/n_a + s_b²/n_b`` and Welch-Satterthwaite df:
    ``p = max(P(t_df ≥ (d + δ)/se), P(t_df ≤ (d − δ)/se))``, δ = log(1 + margin). With se = 0 the
    answer is certain: 0 inside the bounds, 1 outside. NaN with fewer than 2 values in an arm.
    """
    a, b = np.asarray(log_arm, dtype=float), np.asarray(log_base, dtype=float)
    if a.size < 2 or b.size < 2:
        return np.nan
    delta = np.log1p(margin)
    diff = a.mean() - b.mean()
    var_a, var_b = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se2 = var_a + var_b
    if se2 == 0:
        return 0.0 if abs(diff) < delta else 1.0
    df = se2**2 / (var_a**2 / (a.size - 1) + var_b**2 / (b.size - 1))
    se = np.sqrt(se2)
    return float(max(stats.t.sf((diff + delta) / se, df), stats.t.cdf((diff - delta) / se, df)))


def deciding_half_width(log_ratio: float, delta: float) -> float:
    """h*(θ) = max(δ − |θ|, |θ|): the half-width (log scale) an interval around a true log ratio θ must
    reach to decide: inside the band (±δ) when |θ| < δ/2, clear of 0 otherwise. V-shaped, least (δ/2) at
    |θ| = δ/2, where a decision is hardest."""
    return max(delta - abs(log_ratio), abs(log_ratio))


def deciding_half_width_range(low: float, high: float, delta: float) -> tuple[float, float]:
    """(smallest, largest) h*(θ) for θ in [low, high]."""
    ends = [deciding_half_width(low, delta), deciding_half_width(high, delta)]
    inside = [t for t in (-delta / 2, delta / 2) if low <= t <= high]
    return (delta / 2 if inside else min(ends)), max(ends)


def required_invocations(
    sd_log_arm: float, sd_log_base: float, log_ratio: float, margin: float, current: int,
    confidence: float = CONFIDENCE,
) -> int:
    """More invocations per arm for a conclusive answer if the ratio is what was measured:
    ``N = max(0, ceil(n) − current)`` with ``n = (z·s·√2 / h*)²``, ``s² = (sd_arm² + sd_base²)/2``,
    ``h* = max(δ − |log_ratio|, |log_ratio|)`` (:func:`deciding_half_width`, ``δ = log(1 + margin)``),
    ``z = Φ⁻¹((1 + confidence)/2)``. sd are of log invocation medians."""
    return _more(np.sqrt((sd_log_arm**2 + sd_log_base**2) / 2),
                 deciding_half_width(log_ratio, np.log1p(margin)), current, confidence)


def required_invocations_range(
    sd_log_arm: float, sd_log_base: float, log_low: float, log_high: float, margin: float, n_arm: int,
    n_base: int, confidence: float = CONFIDENCE, range_confidence: float = 0.90,
) -> tuple[int, int]:
    """(fewest, most) more invocations per arm over what the data allow: the true log ratio anywhere in
    its interval [log_low, log_high] and the noise s within its chi-square bounds (``range_confidence``,
    n_arm + n_base − 2 degrees of freedom). The point estimate alone assumes the measured ratio and
    spread are the true ones; with few invocations either may be far off, and this range says how far."""
    df = n_arm + n_base - 2
    s = np.sqrt((sd_log_arm**2 + sd_log_base**2) / 2)
    if df < 1 or not np.isfinite(s) or not (np.isfinite(log_low) and np.isfinite(log_high)):
        return 1, 1
    tail = (1 - range_confidence) / 2
    s_low, s_high = s * np.sqrt(df / stats.chi2.isf(tail, df)), s * np.sqrt(df / stats.chi2.ppf(tail, df))
    smallest, largest = deciding_half_width_range(log_low, log_high, np.log1p(margin))
    current = min(n_arm, n_base)
    return (max(1, _more(s_low, largest, current, confidence)), max(1, _more(s_high, smallest, current, confidence)))


def _more(s: float, half_width: float, current: int, confidence: float) -> int:
    z = stats.norm.ppf((1 + confidence) / 2)
    return max(0, int(np.ceil((z * s * np.sqrt(2) / half_width) ** 2)) - current)


def _secondary_tests(arm: np.ndarray, base: np.ndarray, margin: float) -> tuple[float, float, float]:
    """(p_welch, p_mwu, p_tost) on invocation medians; NaN with fewer than 2 in an arm."""
    if min(arm.size, base.size) < 2:
        return np.nan, np.nan, np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero variance: scipy warns and returns NaN
        p_welch = stats.ttest_ind(arm, base, equal_var=False).pvalue
        p_mwu = stats.mannwhitneyu(arm, base, alternative="two-sided").pvalue
        with np.errstate(divide="ignore", invalid="ignore"):
            p_tost = tost_welch(np.log(arm), np.log(base), margin)
    return float(p_welch), float(p_mwu), p_tost


# --------------------------------------------------------------------------- compare


def _is_higher_better(metric: str, unit: object, higher_is_better: Collection[str]) -> bool:
    return metric in higher_is_better or (isinstance(unit, str) and unit.endswith("/s"))


def _row_rng(seed: int, key: Sequence[object]) -> np.random.Generator:
    """A generator per comparison, so that a row's CI does not depend on which other rows exist."""
    return np.random.default_rng([seed, zlib.crc32("\x1f".join(map(str, key)).encode())])


def _percentile_ci(replicates: np.ndarray) -> tuple[float, float]:
    """The CONFIDENCE percentile interval of bootstrap replicates of a ratio."""
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return low, high


def _compare_one(
    sampler: _MedianSampler, medians: np.ndarray, arm: np.ndarray, base: np.ndarray,
    margin: float, n_boot: int, rng: np.random.Generator,
) -> dict[str, float]:
    """Numbers of one arm-vs-baseline row; ``arm`` and ``base`` index the sampler's invocations."""
    med_arm, med_base = medians[arm], medians[base]
    stat_arm = np.median(med_arm) if arm.size else np.nan
    stat_base = np.median(med_base) if base.size else np.nan
    ci_low = ci_high = np.nan
    if min(arm.size, base.size) >= MIN_INVOCATIONS:
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero baseline: the verdict says so
            boot = sampler.hierarchical(arm, n_boot, rng) / sampler.hierarchical(base, n_boot, rng)
        ci_low, ci_high = _percentile_ci(boot)
    p_welch, p_mwu, p_tost = _secondary_tests(med_arm, med_base, margin)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "n_inv_arm": arm.size, "n_inv_base": base.size,
            "median_arm": stat_arm, "median_base": stat_base, "ratio": stat_arm / stat_base,
            "ci_low": ci_low, "ci_high": ci_high,
            "p_welch": p_welch, "p_mwu": p_mwu, "p_tost": p_tost,
            "sd_arm": np.log(med_arm).std(ddof=1) if arm.size > 1 else np.nan,
            "sd_base": np.log(med_base).std(ddof=1) if base.size > 1 else np.nan,
        }




def _verdict(row: Any, margin: float) -> tuple[str, str, str | None]:
    """(verdict_code, verdict, band) of one compare row (a namedtuple); rules in the module docstring,
    words in benchlib.wording."""
    from . import wording

    more, ends = 0, (np.nan, np.nan)
    if min(row.n_inv_arm, row.n_inv_base) < MIN_INVOCATIONS:
        code = "too_few"
    elif not np.isfinite(row.ratio):
        code = "undefined"
    elif row.p_tost_holm < ALPHA:
        code = "equivalent"
    elif row.ci_low > 1 or row.ci_high < 1:
        code, ends = "overhead", tuple(overhead_from_ratio([row.ci_low, row.ci_high], row.higher))
    else:
        code = "inconclusive"
        more = (required_invocations(row.sd_arm, row.sd_base, np.log(row.ratio), margin,
                                     min(row.n_inv_arm, row.n_inv_base)),
                *required_invocations_range(row.sd_arm, row.sd_base, np.log(row.ci_low), np.log(row.ci_high), margin,
                                            int(row.n_inv_arm), int(row.n_inv_base)))
    return (code, *wording.verdict(code, row, margin, MIN_INVOCATIONS, more, ends))


def _comparisons(results: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """benchmark, case, metric, arm of every row to produce (any status), with its unit, in order of
    first appearance of the case and of the arm."""
    arm_rank = {arm: i for i, arm in enumerate(pd.unique(results["arm"]))}
    rows = results.assign(
        _case=results.groupby(CASE_KEYS, sort=False, dropna=False).ngroup().to_numpy(),
        _arm=results["arm"].map(arm_rank).to_numpy(),
        _ok=results["status"].eq(STATUS_OK).to_numpy(dtype=bool, na_value=False),
    )
    units = rows.sort_values("_ok", ascending=False, kind="stable").drop_duplicates(CASE_KEYS)[[*CASE_KEYS, "unit"]]
    rows = rows[rows["arm"] != baseline].drop_duplicates(ARM_KEYS).sort_values(["_case", "_arm"], kind="stable")
    return rows[ARM_KEYS].merge(units, on=CASE_KEYS, how="left")


def compare(
    results: pd.DataFrame,
    baseline: str | None = None,
    margin: float = 0.02,
    n_boot: int = 2000,
    seed: int = 0,
    higher_is_better: Collection[str] = frozenset(),
) -> pd.DataFrame:
    """Every arm against ``baseline`` (default: the first arm in row order) per benchmark × case × metric.

    Columns: ``COMPARE_COLUMNS``. ``median_*`` is T = median over invocations of the invocation
    medians; ``ratio = median_arm / median_base``; ``ci_*`` the hierarchical-bootstrap 95 %
    percentile CI of the ratio (NaN with < 3 invocations in an arm); ``ci_halfwidth_rel =
    (ci_high − ci_low) / (2·ratio)``; ``overhead = overhead_from_ratio(ratio)``; p-values as in the
    module docstring, ``*_holm`` adjusted within benchmark × metric × arm. An arm with no ok rows
    for a case still gets a row (``too_few``), so failures show.
    """
    if baseline is None:
        if results.empty:
            return pd.DataFrame(columns=COMPARE_COLUMNS)
        baseline = str(results["arm"].iloc[0])
    elif not results["arm"].eq(baseline).any():
        raise ValueError(f"baseline arm {baseline!r} is not in the results (arms: {', '.join(map(str, pd.unique(results['arm'])))})")
    invocations = _Sorted.of(_ok_samples(results), ARM_KEYS + INVOCATION_ID)
    sampler = _MedianSampler.build(invocations.values, invocations.offsets, invocations.counts)
    medians = invocations.quantile(0.5)
    of_arm = {key: np.asarray(idx) for key, idx in invocations.first.groupby(ARM_KEYS, sort=False, dropna=False).indices.items()}
    none = np.array([], dtype=np.int64)
    rows = _comparisons(results, baseline)
    if rows.empty:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    numbers = [
        _compare_one(sampler, medians, of_arm.get((b, c, m, a), none), of_arm.get((b, c, m, baseline), none),
                     margin, n_boot, _row_rng(seed, (b, c, m, a, baseline)))
        for b, c, m, a in rows[ARM_KEYS].itertuples(index=False, name=None)
    ]
    out = pd.concat([rows, pd.DataFrame(numbers, index=rows.index)], axis=1)
    out["baseline"] = baseline
    out["higher"] = [_is_higher_better(m, u, higher_is_better) for m, u in zip(out["metric"], out["unit"])]
    out["ci_halfwidth_rel"] = (out["ci_high"] - out["ci_low"]) / (2 * out["ratio"])
    out["overhead"] = np.where(out["higher"], overhead_from_ratio(out["ratio"], True), overhead_from_ratio(out["ratio"]))
    for column in ("p_welch", "p_tost"):
        out[f"{column}_holm"] = _holm_by(out, column)
    verdicts = pd.DataFrame([_verdict(row, margin) for row in out.itertuples(index=False)],
                            index=out.index, columns=["verdict_code", "verdict", "band"])
    return pd.concat([out, verdicts], axis=1)[COMPARE_COLUMNS].reset_index(drop=True)


def _holm_by(frame: pd.DataFrame, column: str) -> np.ndarray:
    """Holm-adjust ``column`` within each ``HOLM_FAMILY`` group."""
    out = np.full(len(frame), np.nan)
    p = frame[column].to_numpy(dtype=float)
    for idx in frame.groupby(HOLM_FAMILY, sort=False, dropna=False).indices.values():
        out[idx] = holm(p[idx])
    return out


# --------------------------------------------------------------------------- decomposition

#: The four arm roles of the decomposition (docs/architecture.md, "Arms"): host, host + isolation, image
#: without isolation, image + isolation.
ROLES = ("native", "isolated", "rootfs", "container")
#: effect -> (roles multiplied in the numerator, roles in the denominator) of its ratio of T.
EFFECTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "isolation": (("isolated",), ("native",)),
    "stack": (("rootfs",), ("native",)),
    "interaction": (("container", "native"), ("isolated", "rootfs")),
    "total": (("container",), ("native",)),
}
DECOMPOSE_COLUMNS = [
    "benchmark", "case", "metric", "unit", "effect", "formula", "n_inv_min", "ratio", "ci_low", "ci_high",
    "overhead", "overhead_low", "overhead_high", "ci_excludes_one", "reading",
]


def _lead(of_role: dict[str, np.ndarray]) -> str:
    """The first of container, isolated, rootfs with enough invocations for a CI (else native)."""
    enough = [role for role in ("container", "isolated", "rootfs") if of_role.get(role, np.empty(0)).size >= MIN_INVOCATIONS]
    return enough[0] if enough else "native"


def _arm_replicates(
    sampler: _MedianSampler, of_role: dict[str, np.ndarray], n_boot: int, rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of T for each role with ≥ MIN_INVOCATIONS invocations, from one generator.

    The ``_lead`` role is drawn first and native second, as ``compare`` draws an arm and its
    baseline: given compare's generator for that pair, that ratio's CI is compare's.
    """
    lead = _lead(of_role)
    order = [lead] + [role for role in ROLES if role != lead]
    return {role: sampler.hierarchical(of_role[role], n_boot, rng)
            for role in order if of_role.get(role, np.empty(0)).size >= MIN_INVOCATIONS}


def _formula(effect: str, roles: dict[str, str]) -> str:
    """``isolated / native`` or ``container·native / (isolated·rootfs)`` with the run's arm names."""
    over, under = ("·".join(roles[r] for r in side) for side in EFFECTS[effect])
    return f"{over} / ({under})" if len(EFFECTS[effect][1]) > 1 else f"{over} / {under}"


def _effect_row(effect: str, stat: dict[str, float], boot: dict[str, np.ndarray], counts: dict[str, int],
                higher: bool) -> dict[str, Any]:
    """Ratio, 95 % CI and overhead of one effect; the CI is NaN unless every arm in it has replicates."""
    over, under = EFFECTS[effect]
    ratio = np.prod([stat[r] for r in over]) / np.prod([stat[r] for r in under])
    ci_low = ci_high = np.nan
    if all(r in boot for r in over + under):
        replicates = np.prod([boot[r] for r in over], axis=0) / np.prod([boot[r] for r in under], axis=0)
        ci_low, ci_high = _percentile_ci(replicates)
    ends = np.sort(overhead_from_ratio([ci_low, ci_high], higher))
    return {
        "effect": effect, "n_inv_min": min(counts[r] for r in over + under), "ratio": ratio,
        "ci_low": ci_low, "ci_high": ci_high, "overhead": overhead_from_ratio(ratio, higher),
        "overhead_low": ends[0], "overhead_high": ends[1], "ci_excludes_one": bool(ci_low > 1 or ci_high < 1),
    }










def decompose(
    results: pd.DataFrame,
    native: str,
    isolated: str | None = None,
    rootfs: str | None = None,
    container: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    higher_is_better: Collection[str] = frozenset(),
) -> pd.DataFrame:
    """The container's overhead split into isolation, software stack and their interaction.

    Arms by role (docs/architecture.md, "Arms"): ``native`` (host), ``isolated`` (host userland, container
    isolation), ``rootfs`` (the image's userland, no isolation), ``container`` (both). With T each
    arm's statistic (as in ``compare``): isolation = T_isolated / T_native, stack = T_rootfs /
    T_native, interaction = T_container·T_native / (T_isolated·T_rootfs) (1: the two effects
    multiply independently), total = T_container / T_native. Each effect's 95 % CI is the
    percentile interval of the same formula over the arms' hierarchical-bootstrap replicates of T,
    one set of replicates per arm shared by every effect (so the interaction's CI accounts for
    native appearing in all of them); no CI when an arm in it has fewer than MIN_INVOCATIONS.
    Overheads follow ``overhead_from_ratio`` (higher-is-better metrics flip); ``ci_excludes_one``
    says the CI excludes ratio 1.

    One row per benchmark × case × metric × computable effect (native and the effect's arms have
    ok results), effects in ``EFFECTS`` order. ``reading`` (the same on each row of a case) says in
    words which part explains the total: the one with the largest share of log(1 + total overhead),
    called "most" when that share is ≥ 1/2 and its CI excludes 1; no reading without CIs.
    """
    from . import wording

    roles = {role: arm for role, arm in zip(ROLES, (native, isolated, rootfs, container)) if arm is not None}
    ok = _ok_samples(results[results["arm"].isin(list(roles.values()))])
    if ok.empty or not ok["arm"].eq(native).any():
        return pd.DataFrame(columns=DECOMPOSE_COLUMNS)
    invocations = _Sorted.of(ok, ARM_KEYS + INVOCATION_ID)
    sampler = _MedianSampler.build(invocations.values, invocations.offsets, invocations.counts)
    medians = invocations.quantile(0.5)
    of_arm = {key: np.asarray(idx) for key, idx in invocations.first.groupby(ARM_KEYS, sort=False, dropna=False).indices.items()}
    rows = []
    for (b, c, m), unit in ok.drop_duplicates(CASE_KEYS).set_index(CASE_KEYS)["unit"].items():
        of_role = {role: of_arm[(b, c, m, arm)] for role, arm in roles.items() if (b, c, m, arm) in of_arm}
        rng = _row_rng(seed, (b, c, m, roles.get(_lead(of_role), native), native))  # compare's, for that arm
        boot = _arm_replicates(sampler, of_role, n_boot, rng)
        stat = {role: float(np.median(medians[idx])) for role, idx in of_role.items()}
        counts = {role: idx.size for role, idx in of_role.items()}
        higher = _is_higher_better(m, unit, higher_is_better)
        with np.errstate(divide="ignore", invalid="ignore"):
            effects = {effect: _effect_row(effect, stat, boot, counts, higher)
                       for effect, (over, under) in EFFECTS.items() if set(over + under) <= set(of_role)}
        reading = wording.decomposition_reading(effects, MIN_INVOCATIONS) if effects else ""
        rows += [{"benchmark": b, "case": c, "metric": m, "unit": unit, **row,
                  "formula": _formula(row["effect"], roles), "reading": reading} for row in effects.values()]
    return pd.DataFrame(rows, columns=DECOMPOSE_COLUMNS)


# --------------------------------------------------------------------------- throttling


def _throttle_reason(reasons: str) -> bool:
    """True when a "|"-joined clock-event-reason string names anything not benign."""
    return any(name.strip() not in BENIGN_CLOCK_EVENT_REASONS for name in reasons.split("|"))


def _bad_polls(telemetry: pd.DataFrame, sm_clock_fraction: float) -> np.ndarray:
    """Per poll: a non-benign clock-event reason, or an SM clock below ``fraction × median``.

    The median is of that GPU's SM clock over the run (per run_id when the column exists), over
    polls not marked gpu_idle (all polls if every one is idle): idle clocks would drag it down.
    """
    reasons = telemetry["clock_event_reasons"].fillna("").astype(str)
    bad = reasons.map({value: _throttle_reason(value) for value in reasons.unique()}).to_numpy(dtype=bool)
    idle = reasons.map({value: "gpu_idle" in value.split("|") for value in reasons.unique()}).to_numpy(dtype=bool)
    clock = telemetry["sm_clock_mhz"].to_numpy(dtype=float, na_value=np.nan)
    busy_clock = pd.Series(np.where(idle, np.nan, clock), index=telemetry.index)
    keys = [k for k in ("run_id", "gpu_index") if k in telemetry.columns]
    grouped_busy = busy_clock.groupby([telemetry[k] for k in keys], dropna=False).transform("median")
    grouped_all = pd.Series(clock, index=telemetry.index).groupby([telemetry[k] for k in keys], dropna=False).transform("median")
    median = grouped_busy.fillna(grouped_all).to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        return bad | (clock < sm_clock_fraction * median)


def throttled_polls(telemetry: pd.DataFrame, sm_clock_fraction: float = 0.75) -> np.ndarray:
    """Per telemetry poll, whether :func:`mark_throttled` counts it as throttled (a non-benign
    clock-event reason, or an SM clock below ``sm_clock_fraction`` of its median)."""
    return _bad_polls(telemetry, sm_clock_fraction)


def _join_keys(results: pd.DataFrame, telemetry: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Key columns to match samples to polls: the invocation keys telemetry carries, plus the GPU
    when telemetry covers several (the sample's ``cuda:N`` taken as NVML index N)."""
    keys = [k for k in INVOCATION_KEYS if k in telemetry.columns]
    left = results[keys].astype(object)
    right = telemetry[keys].astype(object)
    if telemetry["gpu_index"].nunique() > 1:
        ordinal = results["device"].astype(object).str.extract(r"^cuda:(\d+)", expand=False)
        left = left.assign(_gpu=pd.to_numeric(ordinal).fillna(-1).astype(np.int64).to_numpy())
        right = right.assign(_gpu=telemetry["gpu_index"].to_numpy(dtype=np.int64))
    return left, right


def _join_group(
    stamps: np.ndarray, bad: np.ndarray, start: np.ndarray, end: np.ndarray, interval: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(throttled, covered) for samples [start, end] against sorted poll ``stamps`` of one group.

    Polls inside the sample decide; with none inside, the nearer of the polls just before and just
    after decides if it is within ``interval`` of the sample; otherwise not throttled, not covered.
    """
    count = stamps.size
    if count == 0:
        return np.zeros(start.size, bool), np.zeros(start.size, bool)
    cumulative = np.concatenate(([0], np.cumsum(bad)))
    low = np.searchsorted(stamps, start, side="left")
    high = np.searchsorted(stamps, end, side="right")
    inside = high > low
    before, after = np.maximum(low - 1, 0), np.minimum(low, count - 1)
    gap_before = np.where(low > 0, start - stamps[before], np.inf)
    gap_after = np.where(low < count, stamps[after] - end, np.inf)
    nearest = np.where(gap_before <= gap_after, before, after)
    near = np.minimum(gap_before, gap_after) <= interval
    throttled = np.where(inside, cumulative[high] - cumulative[low] > 0, near & bad[nearest])
    return throttled, inside | near


def mark_throttled(results: pd.DataFrame, telemetry: pd.DataFrame, sm_clock_fraction: float = 0.75) -> pd.DataFrame:
    """A copy of ``results`` with bool columns ``throttled`` and ``telemetry_covered``.

    A sample [start_ns, end_ns] is matched to the polls (``timestamp_ns``) of the same invocation
    (the ``INVOCATION_KEYS`` present in telemetry; by time only when none are) and is throttled when
    a matched poll is bad (``_bad_polls``). A sample with no poll inside uses the nearest poll
    within one poll interval (the median gap between consecutive polls of one group); with none,
    it is not throttled and ``telemetry_covered`` is False.
    """
    out = results.copy()
    left, right = _join_keys(results, telemetry)
    both = pd.concat([left, right], ignore_index=True)
    code = both.groupby(list(both.columns), sort=False, dropna=False).ngroup().to_numpy() if both.columns.size else np.zeros(len(both), np.int64)
    sample_code, poll_code = code[: len(left)], code[len(left):]
    stamps = telemetry["timestamp_ns"].to_numpy(dtype=np.int64)
    order = np.lexsort((stamps, poll_code))
    poll_code, stamps, bad = poll_code[order], stamps[order], _bad_polls(telemetry, sm_clock_fraction)[order]
    gaps = np.diff(stamps)[np.diff(poll_code) == 0]
    interval = float(np.median(gaps)) if gaps.size else 0.0
    start, end = results["start_ns"].to_numpy(dtype=np.int64), results["end_ns"].to_numpy(dtype=np.int64)
    throttled, covered = np.zeros(len(results), bool), np.zeros(len(results), bool)
    bounds = np.searchsorted(poll_code, np.arange(code.max() + 2 if code.size else 1))
    for group, rows in pd.Series(np.arange(len(results))).groupby(sample_code).indices.items():
        polls = slice(bounds[group], bounds[group + 1])
        throttled[rows], covered[rows] = _join_group(stamps[polls], bad[polls], start[rows], end[rows], interval)
    out["throttled"], out["telemetry_covered"] = throttled, covered
    return out


def throttle_summary(results_marked: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark × case × arm (ok rows): n_samples, n_throttled, share_throttled, share_covered.

    Counts are of result rows (sample × metric)."""
    ok = results_marked.loc[results_marked["status"].eq(STATUS_OK).to_numpy(dtype=bool, na_value=False)]
    grouped = ok.groupby(["benchmark", "case", "arm"], sort=False, dropna=False)
    return grouped.agg(
        n_samples=("throttled", "size"), n_throttled=("throttled", "sum"),
        share_throttled=("throttled", "mean"), share_covered=("telemetry_covered", "mean"),
    ).reset_index()


def compare_with_without_throttled(
    results_marked: pd.DataFrame,
    baseline: str | None = None,
    margin: float = 0.02,
    n_boot: int = 2000,
    seed: int = 0,
    higher_is_better: Collection[str] = frozenset(),
) -> pd.DataFrame:
    """``compare`` on all samples and on the unthrottled ones, side by side.

    Takes the output of ``mark_throttled``. Columns: ``COMPARE_COLUMNS``, then n_inv_arm, n_inv_base,
    ratio, ci_low, ci_high, overhead, verdict_code, verdict with suffix ``_unthrottled`` (throttled
    samples count as not ok there, so a case left without invocations reads ``too_few``), then
    ``throttled_share_arm`` and ``throttled_share_base`` from ``throttle_summary``.
    """
    if "throttled" not in results_marked.columns:
        raise ValueError("results lack the 'throttled' column: call mark_throttled(results, telemetry) first")
    if baseline is None and not results_marked.empty:
        baseline = str(results_marked["arm"].iloc[0])
    options = dict(baseline=baseline, margin=margin, n_boot=n_boot, seed=seed, higher_is_better=higher_is_better)
    full = compare(results_marked, **options)
    throttled = results_marked["throttled"].to_numpy(dtype=bool)
    clean = compare(results_marked.assign(status=results_marked["status"].where(~throttled, "throttled")), **options)
    kept = ["n_inv_arm", "n_inv_base", "ratio", "ci_low", "ci_high", "overhead", "verdict_code", "verdict"]
    out = full.merge(clean[ARM_KEYS + kept].rename(columns={c: f"{c}_unthrottled" for c in kept}), on=ARM_KEYS, how="left")
    share = throttle_summary(results_marked)[["benchmark", "case", "arm", "share_throttled"]]
    out = out.merge(share.rename(columns={"share_throttled": "throttled_share_arm"}), on=["benchmark", "case", "arm"], how="left")
    base_share = share.rename(columns={"arm": "baseline", "share_throttled": "throttled_share_base"})
    return out.merge(base_share, on=["benchmark", "case", "baseline"], how="left")
