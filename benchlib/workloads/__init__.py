"""The workload registry: benchmark name -> params model, case keys and the function that runs it.

A workload is a function ``run(params, device) -> list[Metric]``. It never prints results, runs on
the CPU when no GPU is present (small sizes) and raises :class:`benchlib.errors.SkipCase` for a
case that cannot run here. Each benchmark has ``notebooks/<name>.ipynb`` and ``params/<name>/``.
It declares what it is sensitive to (``sensitivity``: the classes of mechanisms that can act on a
case, see :mod:`benchlib.diagnosis.classes`), so a report blames no mechanism out of class.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..device import Device
from ..diagnosis.classes import ALL_CLASSES, SensitivityRule, always
from ..errors import ParamsError
from ..metricspec import MetricSpec
from ..params import CommonParams
from ..timer import Measurement, Sample


@dataclass(frozen=True)
class Metric:
    """One measured quantity of a case: its samples, unit, and the work one sample did."""

    name: str
    unit: str
    samples: Sequence[Sample]
    work: float | None = None  # e.g. FLOP per product; rate = work / value
    work_unit: str | None = None
    note: str = ""

    @classmethod
    def from_measurement(cls, name: str, measurement: Measurement, **kwargs) -> "Metric":
        note = (
            f"{measurement.clock}; stop={measurement.stop_reason}; "
            f"median CI ±{measurement.rel_ci_halfwidth:.2%}"
        )
        extra = kwargs.pop("note", "")
        return cls(name, "s", measurement.samples, note=f"{note}; {extra}" if extra else note, **kwargs)


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    params_model: type[CommonParams]
    case_keys: tuple[str, ...]
    run: Callable[[CommonParams, Device], list[Metric]] = field(repr=False)
    # what can act on a case: its params and whether it runs on a GPU -> classes (default: every class)
    sensitivity: SensitivityRule = field(default=always(*ALL_CLASSES), repr=False)
    for_tests: bool = False  # fault injection and the like: kept out of suites and apart in `benchlib list`
    metrics: tuple[MetricSpec, ...] = ()  # what each metric it records is: performance, context or check


@functools.lru_cache(maxsize=1)
def registry() -> dict[str, Workload]:
    """Every module of this package that defines ``WORKLOAD`` is a benchmark."""
    workloads = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        workload = getattr(module, "WORKLOAD", None)
        if isinstance(workload, Workload):
            workloads[workload.name] = workload
    return workloads


def get_workload(name: str) -> Workload:
    workloads = registry()
    if name not in workloads:
        raise ParamsError(f"unknown benchmark {name!r}; benchmarks are {', '.join(sorted(workloads))}.")
    return workloads[name]
