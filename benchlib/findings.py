"""Results split by what their metrics are (:mod:`benchlib.metricspec`): performance rows for verdicts,
context findings, and failed checks. Pure functions of the tidy results table.

- :func:`performance_rows`: the rows whose metric measures speed; only these get ratios, intervals
  and verdicts (``stats.compare``, ``sequential.sequential_compare``), with
  :func:`higher_is_better` giving the direction of each.
- :func:`context_findings`: per benchmark × case × context or check metric × arm, the arm's value
  against the baseline's when they differ by more than the spec's tolerance, or when one arm did not
  record it and the spec says what that means (``absent``). A value is the median over invocations of
  each invocation's median (constants are constants; a counter that moves takes its typical value).
- :func:`check_problems`: per benchmark × case × check × arm, the invocations whose value exceeds the
  check's bound for that case.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

from .metricspec import CHECK, CONTEXT, PERFORMANCE, MetricSpec, inferred_spec, spec_registry
from .schema import STATUS_OK

CONTEXT_COLUMNS = ["benchmark", "case", "metric", "role", "label", "unit", "baseline", "arm",
                   "value_base", "value_arm", "text"]
PROBLEM_COLUMNS = ["benchmark", "case", "metric", "arm", "invocations", "worst", "bound", "text"]


def _ok(results: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """The ok rows (of ``columns`` only, when given: taking every column of a large frame is slow)."""
    ok = results["status"].eq(STATUS_OK).to_numpy(dtype=bool, na_value=False)
    return results.loc[ok, columns if columns is not None else results.columns]


def specs_of(results: pd.DataFrame) -> dict[tuple[str, str], MetricSpec]:
    """The spec of every (benchmark, metric) in the results: declared, or inferred from the unit."""
    declared = spec_registry()
    columns = [c for c in ("benchmark", "metric", "unit") if c in results.columns]
    rows = _ok(results, columns) if "status" in results.columns else results[columns]
    pairs = rows.drop_duplicates(["benchmark", "metric"]).reindex(columns=["benchmark", "metric", "unit"])
    return {(b, m): declared.get((b, m)) or inferred_spec(m, u)
            for b, m, u in pairs.itertuples(index=False, name=None)}


def undeclared(results: pd.DataFrame) -> list[tuple[str, str]]:
    """(benchmark, metric) pairs in the results that no workload declares."""
    declared = spec_registry()
    pairs = _ok(results, ["benchmark", "metric"]).drop_duplicates()
    return sorted({(b, m) for b, m in pairs.itertuples(index=False, name=None) if (b, m) not in declared})


def _roles(results: pd.DataFrame) -> np.ndarray:
    """The role of each row's metric ("" for rows of a metric with no ok row, such as a failed case's)."""
    specs = specs_of(results)
    groups = results.groupby(["benchmark", "metric"], sort=False, dropna=False)
    first = groups.head(1)[["benchmark", "metric"]].itertuples(index=False, name=None)
    roles = np.array([specs[key].role if key in specs else "" for key in first], dtype=object)
    return roles[groups.ngroup().to_numpy()]


def performance_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The rows of performance metrics (every status, so failed cases still show as such). Also takes a
    smaller frame with benchmark and metric columns, such as ``sequential.invocation_medians``' (cheaper
    than filtering every sample of a large run)."""
    if results.empty:
        return results
    roles = _roles(results)
    keep = roles == PERFORMANCE
    if "status" in results.columns:
        keep |= ~results["status"].eq(STATUS_OK).to_numpy(dtype=bool, na_value=False)
    return results if keep.all() else results.loc[keep]


def higher_is_better(results: pd.DataFrame) -> frozenset[str]:
    """Names of the performance metrics in the results for which higher is better (rates, fractions)."""
    return frozenset(m for (_, m), spec in specs_of(results).items() if spec.role == PERFORMANCE and spec.higher_is_better)


def _values(rows: pd.DataFrame) -> pd.Series:
    """Median over invocations of each invocation's median, per benchmark × case × metric × arm."""
    keys = ["benchmark", "case", "metric", "arm"]
    per_invocation = rows.groupby([*keys, "run_id", "invocation"], sort=False, dropna=False)["value"].median()
    return per_invocation.groupby(level=keys, sort=False, dropna=False).median()


def format_value(value: float, unit: str) -> str:
    """A value in words: counts as integers, bytes in GiB/MiB, seconds in s/ms/µs/ns, others with their unit."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not recorded"
    if unit == "B":
        return f"{value / 2**30:.2f} GiB" if abs(value) >= 2**30 else f"{value / 2**20:.1f} MiB"
    if unit == "count":
        return f"{value:.0f}"
    if unit == "s":
        scale, name = next(((f, n) for f, n in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"))
                            if abs(value) >= f), (1e-9, "ns"))
        return f"{value / scale:.3g} {name}"
    if unit in ("1", ""):
        return f"{value:.3g}"
    return f"{value:.4g} {unit}"


def _differs(base: float, arm: float, tolerance: float) -> bool:
    if base == arm:
        return False
    return abs(arm - base) > tolerance * max(abs(arm), abs(base))


def context_findings(results: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Context and check metrics whose value differs between an arm and the baseline (module docstring).

    ``text`` reads e.g. ``torch threads: 16 in native, 1 in container``.
    """
    specs = specs_of(results)
    ok = _ok(results, ["benchmark", "case", "metric", "arm", "run_id", "invocation", "value"])
    if ok.empty:
        return pd.DataFrame(columns=CONTEXT_COLUMNS)
    keep = np.array([specs[key].role in (CONTEXT, CHECK) for key in zip(ok["benchmark"], ok["metric"])], dtype=bool)
    values = _values(ok.loc[keep].astype({"value": float}))
    arms = [arm for arm in pd.unique(results["arm"]) if arm != baseline]
    ran = set(ok[["benchmark", "case", "arm"]].drop_duplicates().itertuples(index=False, name=None))
    rows = []
    cases = ok.loc[keep, ["benchmark", "case", "metric"]].drop_duplicates()
    for benchmark, case, metric in cases.itertuples(index=False, name=None):
        spec = specs[(benchmark, metric)]
        base = values.get((benchmark, case, metric, baseline), np.nan)
        for arm in arms:
            value = values.get((benchmark, case, metric, arm), np.nan)
            both_ran = (benchmark, case, arm) in ran and (benchmark, case, baseline) in ran
            if not _is_finding(spec, base, value, both_ran):
                continue
            text = (f"{spec.label}: {_worded(spec, base)} in {baseline}, {_worded(spec, value)} in {arm}")
            rows.append({"benchmark": benchmark, "case": case, "metric": metric, "role": spec.role,
                         "label": spec.label, "unit": spec.unit, "baseline": baseline, "arm": arm,
                         "value_base": base, "value_arm": value, "text": text})
    return pd.DataFrame(rows, columns=CONTEXT_COLUMNS)


def _is_finding(spec: MetricSpec, base: float, value: float, both_ran: bool) -> bool:
    """Both recorded and different, or one missing while both arms ran the case and the spec says what
    a missing value means."""
    have_base, have_arm = np.isfinite(base), np.isfinite(value)
    if have_base and have_arm:
        return _differs(float(base), float(value), spec.tolerance)
    if have_base != have_arm and both_ran:
        return spec.absent is not None
    return False


def _worded(spec: MetricSpec, value: float) -> str:
    if not np.isfinite(value):
        return spec.absent or "not recorded"
    return format_value(float(value), spec.unit)


def check_problems(results: pd.DataFrame) -> pd.DataFrame:
    """Failed checks: per benchmark × case × check metric × arm, the invocations whose value exceeds the
    bound (or is not finite), the worst value and the bound, and a sentence saying what it points to."""
    specs = specs_of(results)
    ok = _ok(results, ["benchmark", "case", "metric", "arm", "invocation", "params", "value"])
    rows = []
    checks = [key for key, spec in specs.items() if spec.role == CHECK]
    for (benchmark, metric) in checks:
        spec = specs[(benchmark, metric)]
        subset = ok[(ok["benchmark"] == benchmark) & (ok["metric"] == metric)]
        for (case, arm), group in subset.groupby(["case", "arm"], sort=False, dropna=False):
            bound = spec.bound_for(group["params"].iloc[0])
            values = group["value"].to_numpy(dtype=float, na_value=np.nan)
            bad = ~np.isfinite(values) | (values > bound)
            if not bad.any():
                continue
            failing = sorted(set(group.loc[bad, "invocation"].astype(int)))
            worst = float(np.nanmax(values[bad])) if np.isfinite(values[bad]).any() else float("nan")
            text = (f"{benchmark} {case}: {spec.label} {format_value(worst, spec.unit)} exceeds the bound "
                    f"{bound:g} in {arm} (invocation {', '.join(map(str, failing))}): {spec.fails_means}")
            rows.append({"benchmark": benchmark, "case": case, "metric": metric, "arm": arm,
                         "invocations": failing, "worst": worst, "bound": bound, "text": text})
    return pd.DataFrame(rows, columns=PROBLEM_COLUMNS)


def classify(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (benchmark, metric) in the results: role, direction, unit, label, declared or not."""
    declared = spec_registry()
    rows = [{"benchmark": b, "metric": m, "role": s.role, "better": s.better, "unit": s.unit, "label": s.label,
             "declared": (b, m) in declared} for (b, m), s in specs_of(results).items()]
    return pd.DataFrame(rows, columns=["benchmark", "metric", "role", "better", "unit", "label", "declared"])


def metric_names(results: pd.DataFrame, roles: Iterable[str]) -> set[tuple[str, str]]:
    """(benchmark, metric) pairs of the results whose role is one of ``roles``."""
    wanted = set(roles)
    return {key for key, spec in specs_of(results).items() if spec.role in wanted}
