"""What each metric is: a measure of speed, a piece of context, or a correctness check.

Every workload declares its metrics (``Workload.metrics``, a tuple of :class:`MetricSpec`); the
analysis looks them up by (benchmark, metric) with :func:`spec_for`. Only **performance** metrics
get ratios, intervals, verdicts and "overhead"; a **context** metric (a thread count, a memory
total, a KV-cache size) that differs between arms is a finding stated as such; a **check** (a
numerical error with a bound) that fails is a problem. :mod:`benchlib.findings` turns results into
those three kinds of rows.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

PERFORMANCE, CONTEXT, CHECK = "performance", "context", "check"
ROLES = (PERFORMANCE, CONTEXT, CHECK)
LOWER, HIGHER = "lower", "higher"

#: A check's largest acceptable value, as a number or from the case's parameters.
Bound = Callable[[Mapping[str, Any]], float]


@dataclass(frozen=True)
class MetricSpec:
    """One metric of one workload.

    ``better`` (performance only): ``lower`` for times, ``higher`` for rates and fractions of a
    ceiling. ``tolerance`` (context and checks): the relative difference between two arms' values
    below which they count as equal (0: any difference is a finding). ``absent`` (context): what it
    means when an arm did not record the metric (``"no quota"``); None when a missing value says
    nothing (the counter could not be read), so one arm recording it is no finding. ``bound``
    (checks only): the largest acceptable value, a number or a function of the case's parameters;
    ``fails_means`` says in words what exceeding it points to.
    """

    name: str
    role: str
    unit: str
    label: str
    better: str | None = None
    tolerance: float = 0.0
    absent: str | None = None
    bound: float | Bound | None = None
    fails_means: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"metric {self.name!r}: role must be one of {', '.join(ROLES)}, not {self.role!r}")
        if (self.role == PERFORMANCE) != (self.better in (LOWER, HIGHER)):
            raise ValueError(f"metric {self.name!r}: a performance metric, and only one, says whether lower or "
                             f"higher is better (role {self.role!r}, better {self.better!r})")
        if (self.role == CHECK) != (self.bound is not None):
            raise ValueError(f"metric {self.name!r}: a check, and only a check, has a bound")
        if self.tolerance < 0:
            raise ValueError(f"metric {self.name!r}: tolerance must be ≥ 0")

    @property
    def higher_is_better(self) -> bool:
        return self.better == HIGHER

    def bound_for(self, params: Mapping[str, Any] | str | None) -> float:
        """The check's bound for a case (``params`` as a mapping or the results' JSON column)."""
        if self.bound is None:
            raise ValueError(f"metric {self.name!r} is not a check")
        if callable(self.bound):
            values = json.loads(params) if isinstance(params, str) else dict(params or {})
            return float(self.bound(values))
        return float(self.bound)

    def passes(self, value: float, params: Mapping[str, Any] | str | None) -> bool:
        return math.isfinite(value) and value <= self.bound_for(params)


def time_metric(name: str, label: str) -> MetricSpec:
    """A time in seconds, lower is better: most performance metrics."""
    return MetricSpec(name, PERFORMANCE, "s", label, better=LOWER)


class SpecRegistry(dict):
    """(benchmark, metric) -> spec. A spec whose name ends in ``*`` declares a family of metrics by
    prefix (``busbw@*`` covers ``busbw@1GiB``): exact names win, then the longest matching prefix."""

    def _family(self, key: tuple[str, str]) -> MetricSpec | None:
        benchmark, metric = key
        matches = [spec for (bench, name), spec in self.items()
                   if bench == benchmark and name.endswith("*") and metric.startswith(name[:-1])]
        return max(matches, key=lambda spec: len(spec.name), default=None)

    def get(self, key, default=None):  # type: ignore[override]
        found = super().get(key)
        if found is None and isinstance(key, tuple):
            found = self._family(key)
        return default if found is None else found

    def __contains__(self, key) -> bool:
        return self.get(key) is not None


def spec_registry() -> SpecRegistry:
    """(benchmark, metric) -> spec, for every workload in the registry."""
    from .workloads import registry

    return SpecRegistry({(workload.name, spec.name): spec for workload in registry().values()
                         for spec in workload.metrics})


def spec_for(benchmark: str, metric: str) -> MetricSpec | None:
    """The declared spec of a metric, or None when its workload does not declare it."""
    return spec_registry().get((benchmark, metric))


def inferred_spec(metric: str, unit: str | None) -> MetricSpec:
    """What an undeclared metric is taken to be: a time (unit ``s``) or a rate (unit ending ``/s``) is
    performance, anything else context. Declared specs always win; this keeps a user's own workload
    analysable until it declares its metrics."""
    unit = unit if isinstance(unit, str) else ""
    if unit == "s":
        return MetricSpec(metric, PERFORMANCE, unit, metric, better=LOWER)
    if unit.endswith("/s"):
        return MetricSpec(metric, PERFORMANCE, unit, metric, better=HIGHER)
    return MetricSpec(metric, CONTEXT, unit, metric)
