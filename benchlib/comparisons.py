"""The comparisons as people read them: grouped by outcome (slower, faster, the same, open, failed),
one line per comparison in the style of pyperf's ``compare_to``::

    matmul n=8192 dtype=bf16 time (isolated vs native): 1.23 ms ± 0.01 ms → 1.26 ms ± 0.02 ms: 1.021x slower [1.004, 1.022]

``±`` is the spread between invocations (the standard deviation of the invocations' medians: the
invocation is the independent unit), the interval the ratio's 95 % confidence interval from
benchlib.stats. In the tables each case's parameters are columns of their own, one table per
outcome and benchmark. Values are rounded for reading only: summary.csv and summary.json keep the
full precision.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from .figures import format_value, time_scale
from .numbers import ok_rows
from .wording import DOMINATED_SHARE, p_text, throttle_reasons_of

__all__ = ["CSS", "LINE_COLUMNS", "OUTCOMES", "OUTCOME_TITLES", "Line", "case_params", "change_text", "comparison_lines",
           "grouped", "invocation_spread", "outcome_of", "table_of", "value_text"]

#: Outcomes in the order they are shown.
OUTCOMES = ("slower", "faster", "same", "open", "failed")
OUTCOME_TITLES = {
    "slower": "Slower", "faster": "Faster", "same": "The same within the margin",
    "open": "Open, not decided: the interval is wider than the margin, or too few invocations",
    "failed": "Failed: no result in the arm where the baseline has one",
}


#: The comparison tables' own style: a short parameter needs no wide first column.
CSS = """
table.benchlib-compare td:first-child { min-width: 0; }
p.benchlib-outcome { margin: 14px 0 2px 0; font-size: 1.05em; } p.benchlib-caption { margin: 6px 0 0 0; color: #444; }
p.benchlib-slower strong, p.benchlib-failed strong { color: #b00020; } p.benchlib-same strong { color: #1b7f3b; }
"""


@dataclass
class Line:
    """One comparison (or one failed case) as read."""

    outcome: str  # one of OUTCOMES
    benchmark: str
    case: str
    metric: str
    arm: str
    baseline: str
    base_value: str  # median ± spread between invocations
    arm_value: str
    change: str  # 1.021x slower [1.004, 1.022]
    p: str  # the deciding test's Holm-adjusted p-value, as read
    unthrottled: str  # the verdict without the throttled samples, where throttling dominates; else ""
    line: str  # the whole line, compare_to style


LINE_COLUMNS = [field for field in Line.__dataclass_fields__]


def case_params(case: str) -> dict[str, str]:
    """``n=8192,dtype=bf16`` -> ``{"n": "8192", "dtype": "bf16"}``; a piece without ``=`` belongs to the
    value before it (a value with a comma), a case that is not ``key=value`` at all is ``{"case": case}``."""
    params: dict[str, str] = {}
    last = None
    for piece in str(case).split(","):
        key, sep, value = piece.partition("=")
        if sep and key.strip():
            last = key.strip()
            params[last] = value
        elif last is not None:
            params[last] += "," + piece
        else:
            return {"case": str(case)}
    return params or {"case": str(case)}


def _params_text(case: str) -> str:
    return " ".join(f"{k}={v}" for k, v in case_params(case).items()) if "=" in str(case) else str(case)


def invocation_spread(results: pd.DataFrame) -> pd.DataFrame:
    """Per arm, benchmark, case and metric: ``spread``, the standard deviation of the invocations'
    medians of the successful samples (NaN with one invocation)."""
    keys = ["arm", "benchmark", "case", "metric"]
    ok = ok_rows(results) if not results.empty else results
    if ok.empty:
        return pd.DataFrame(columns=[*keys, "spread"])
    medians = ok.groupby([*keys, "invocation"], sort=False)["value"].median()
    return medians.groupby(level=keys, sort=False).std(ddof=1).rename("spread").reset_index()


def value_text(median: float, spread: float, unit: str) -> str:
    """``1.23 ms ± 0.01 ms`` (seconds in the median's prefix), ``512 ± 3 GB/s``, or ``—``."""
    if median is None or not np.isfinite(float(median)):
        return "—"
    median, unit = float(median), str(unit)
    if spread is None or not np.isfinite(float(spread)):
        return format_value(median, unit)
    spread = float(spread)
    if unit == "s":
        scale, prefix = time_scale([median])
        return f"{median / scale:.3g} {prefix} ± {spread / scale:.2g} {prefix}"
    suffix = "" if unit in ("", "1") else f" {unit}"
    return f"{median:.3g}{suffix} ± {spread:.2g}{suffix}"


def outcome_of(row: Any) -> str:
    """slower / faster (a difference beyond the noise), same (equivalent within the margin), open."""
    code = str(row.verdict_code)
    if code == "equivalent":
        return "same"
    if code == "overhead" and np.isfinite(float(row.overhead)):
        return "slower" if float(row.overhead) > 0 else "faster"
    return "open"


def _slowdowns(row: Any) -> tuple[float, float, float]:
    """(slowdown, low, high): how many times slower the arm is (1 + overhead) and its 95 % interval, for
    times and for rates alike (a rate's ratio is inverted)."""
    slowdown = 1.0 + float(row.overhead)
    ratio, low, high = float(row.ratio), float(row.ci_low), float(row.ci_high)
    inverted = np.isfinite(ratio) and ratio > 0 and not np.isclose(slowdown, ratio)
    if inverted:
        low, high = (1 / high if high else np.inf), (1 / low if low else np.inf)
    return slowdown, low, high


def change_text(row: Any, margin: float) -> str:
    """``1.021x slower [1.004, 1.022]``, ``1.294x faster [1.176, 1.428]``, ``1.000x [0.999, 1.001]: the
    same within ±2 %``, ``1.035x slower? [0.990, 1.080]: not decided`` or the verdict where no ratio."""
    if not np.isfinite(float(row.overhead)) or not np.isfinite(float(row.ratio)):
        return str(row.verdict)
    slowdown, low, high = _slowdowns(row)
    has_ci = np.isfinite(low) and np.isfinite(high)
    outcome = outcome_of(row)
    if outcome == "faster" or (outcome == "open" and slowdown < 1):
        text = f"{1 / slowdown:.3f}x faster" + ("?" if outcome == "open" else "")
        interval = f" [{1 / high:.3f}, {1 / low:.3f}]" if has_ci else ""
    else:
        text = f"{slowdown:.3f}x" + ("" if outcome == "same" else " slower") + ("?" if outcome == "open" else "")
        interval = f" [{low:.3f}, {high:.3f}]" if has_ci else " (no interval)"
    if outcome == "same":
        return f"{text}{interval}: the same within ±{100 * margin:g} %"
    if outcome == "open":
        reason = str(row.verdict).removeprefix("inconclusive: ").split(" if the ratio")[0].split(";")[0]
        return f"{text}{interval}: not decided ({reason})"
    return text + interval


def _p(row: Any, outcome: str) -> str:
    """The deciding test's p-value: TOST (equivalence) for the same, Welch (difference) otherwise."""
    value = row.p_tost_holm if outcome == "same" else row.p_welch_holm
    test = "TOST" if outcome == "same" else "Welch"
    text = p_text(float(value)) if value is not None else "—"
    return "—" if text == "—" else f"{text} ({test})"


def _dominated(row: Any) -> bool:
    shares = [float(getattr(row, name, np.nan) or 0) for name in ("throttled_share_arm", "throttled_share_base")]
    return any(np.isfinite(share) and share > DOMINATED_SHARE for share in shares)


def comparison_lines(comparison: pd.DataFrame, results: pd.DataFrame, margin: float,
                     failures: dict[str, dict[str, dict[str, str]]] | None = None) -> pd.DataFrame:
    """One :class:`Line` per comparison row and per failed case (``failures``: arm -> benchmark -> case ->
    why, as :meth:`benchlib.analysis.Analysis.failures`), in :data:`OUTCOMES` order, then as compared."""
    spread = invocation_spread(results).set_index(["arm", "benchmark", "case", "metric"])["spread"]

    def spread_of(arm: str, row: Any) -> float:
        return float(spread.get((arm, row.benchmark, row.case, row.metric), np.nan))

    lines: list[Line] = []
    for row in comparison.itertuples(index=False):
        outcome = outcome_of(row)
        base_value = value_text(row.median_base, spread_of(str(row.baseline), row), str(row.unit))
        arm_value = value_text(row.median_arm, spread_of(str(row.arm), row), str(row.unit))
        change = change_text(row, margin)
        unthrottled = ""
        if _dominated(row) and hasattr(row, "verdict_unthrottled"):
            reasons = throttle_reasons_of(row)
            verdict = str(getattr(row, "verdict_unthrottled")).split(" if the ratio")[0]
            unthrottled = (f"{verdict} (throttled"
                           + (f" by {reasons}" if reasons else "") + ")")
        label = f"{row.benchmark} {_params_text(row.case)} {row.metric}"
        who = f" ({row.arm} vs {row.baseline})"
        text = f"{label}{who}: {base_value} → {arm_value}: {change}"
        if unthrottled:
            text += f"; without the throttled samples: {unthrottled}"
        lines.append(Line(outcome, str(row.benchmark), str(row.case), str(row.metric), str(row.arm),
                          str(row.baseline), base_value, arm_value, change, _p(row, outcome), unthrottled, text))
    for arm, benchmarks in (failures or {}).items():
        for benchmark, cases in benchmarks.items():
            for case, why in cases.items():
                why = why.removeprefix("failed: ")
                baseline = str(comparison["baseline"].iloc[0]) if not comparison.empty else "the baseline"
                lines.append(Line("failed", benchmark, case, "—", arm, baseline, "ran", "failed", f"failed: {why}", "—",
                                  "", f"{benchmark} {_params_text(case)} ({arm} vs {baseline}): failed in {arm}: {why}"))
    frame = pd.DataFrame([asdict(line) for line in lines], columns=LINE_COLUMNS)
    order = frame["outcome"].map({name: index for index, name in enumerate(OUTCOMES)})
    return frame.iloc[order.argsort(kind="stable")].reset_index(drop=True)


def table_of(lines: pd.DataFrame) -> pd.DataFrame:
    """The lines of one outcome and benchmark as a table: each case parameter a column, then the metric
    (when not only time), the arm (when several), the baseline's and the arm's median ± spread, the
    change with its interval, p, and the verdict without throttled samples where throttling dominated."""
    params = [case_params(case) for case in lines["case"]]
    names = list(dict.fromkeys(key for item in params for key in item))
    table = pd.DataFrame([{name: item.get(name, "") for name in names} for item in params], index=lines.index)
    if not (lines["metric"].isin(["time", "—"])).all():
        table["metric"] = lines["metric"]
    arms, baselines = lines["arm"].unique(), lines["baseline"].unique()
    if len(arms) == 1 and len(baselines) == 1:
        table[f"{baselines[0]}: median ± spread"] = lines["base_value"]
        table[f"{arms[0]}: median ± spread"] = lines["arm_value"]
    else:
        table["arm vs baseline"] = lines["arm"] + " vs " + lines["baseline"]
        table["baseline: median ± spread"] = lines["base_value"]
        table["arm: median ± spread"] = lines["arm_value"]
    table["change [95 % CI]"] = lines["change"]
    if not lines["p"].eq("—").all():
        table["p (Holm)"] = lines["p"]
    if lines["unthrottled"].ne("").any():
        table["without throttled samples"] = lines["unthrottled"]
    return table.reset_index(drop=True)


def grouped(lines: pd.DataFrame) -> Iterable[tuple[str, str, pd.DataFrame]]:
    """(outcome, benchmark, its lines) in :data:`OUTCOMES` order, benchmarks as they first appear."""
    for outcome in OUTCOMES:
        part = lines[lines["outcome"] == outcome]
        for benchmark in dict.fromkeys(part["benchmark"]):
            yield outcome, benchmark, part[part["benchmark"] == benchmark]
