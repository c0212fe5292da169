"""Suites: ``params/suites/<name>.yaml`` names benchmarks, their params files, arms and invocations.

A suite expands into a plan: every case of every params file, run ``invocations`` times in every
arm, interleaved round by round (native#1, container#1, native#2, container#2, ...) so that drift
(clocks, heat) hits all arms alike. Everything is validated here, before anything is written.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import paths
from .arms import Arm, arm_from_spec
from .errors import ParamsError
from .manifest import Invocation
from .params import expand_cases, read_yaml, validate
from .schema import case_id
from .workloads import get_workload


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    benchmark: str
    params: str  # a file stem under params/<benchmark>/, or a path
    estimate_s: float | None = Field(None, gt=0)  # seconds one invocation of one case takes, for `benchlib list`


class _SuiteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""
    invocations: int = Field(3, ge=1)
    arms: list[str | dict[str, Any]] = Field(default_factory=lambda: ["native"], min_length=1)
    benchmarks: list[_Entry] = Field(min_length=1)
    cooldown_s: float = Field(0.0, ge=0)  # pause between invocations, to let clocks and heat settle
    shuffle_arms: bool = False  # shuffle the arm order within each round, with ``seed``
    seed: int = 42
    timeout_s: float = Field(1800.0, gt=0)  # per invocation


@dataclass(frozen=True)
class PlannedCase:
    benchmark: str
    params_file: str  # relative to the repository root
    case: str
    values: dict[str, Any]  # the notebook parameters of this case (scalars)
    estimate_s: float | None = None  # seconds per invocation, from the suite file


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    description: str
    invocations: int
    arms: list[Arm]
    cases: list[PlannedCase]
    cooldown_s: float
    shuffle_arms: bool
    seed: int
    timeout_s: float

    def estimated_seconds(self, arms_count: int) -> float | None:
        """Wall time of the whole suite with ``arms_count`` arms: every case's estimate per invocation,
        times invocations and arms, plus the cool-downs between invocations. None when a suite entry
        has no ``estimate_s``."""
        if any(case.estimate_s is None for case in self.cases):
            return None
        runs = self.invocations * arms_count
        total = sum(case.estimate_s for case in self.cases) * runs
        return total + self.cooldown_s * max(0, len(self.cases) * runs - 1)


def suite_names() -> list[str]:
    return sorted(path.stem for path in paths.suites_dir().glob("*.yaml"))


def load_suite(name_or_path: str) -> Suite:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = paths.suites_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ParamsError(
                f"unknown suite {name_or_path!r}; suites are {', '.join(suite_names())} (files in {paths.suites_dir()})."
            )
    raw = read_yaml(path, "suite file")
    source = _display(path)
    try:
        spec = _SuiteFile.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        raise ParamsError(f"{source}: key {key!r}: {error['msg']}.") from None
    arms = [arm_from_spec(entry, source) for entry in spec.arms]
    if len({arm.name for arm in arms}) != len(arms):
        raise ParamsError(f"{source}: two arms share a name; arm names must be unique.")
    cases = [case for entry in spec.benchmarks
             for case in expand_entry(entry.benchmark, entry.params, source, entry.estimate_s)]
    _check_unique_cases(cases, source)
    return Suite(path.stem, path, spec.description, spec.invocations, arms, cases,
                 spec.cooldown_s, spec.shuffle_arms, spec.seed, spec.timeout_s)


def params_path(benchmark: str, params: str) -> Path:
    candidate = Path(params)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate if candidate.is_absolute() else paths.repo_root() / candidate
    return paths.params_dir() / benchmark / f"{params}.yaml"


def expand_entry(benchmark: str, params: str, source: str, estimate_s: float | None = None) -> list[PlannedCase]:
    """Validate one params file against its workload and return its cases."""
    try:
        workload = get_workload(benchmark)
    except ParamsError as exc:
        raise ParamsError(f"{source}: {exc}") from None
    path = params_path(benchmark, params)
    values = read_yaml(path)
    where = _display(path)
    try:
        cases = expand_cases(values, workload.case_keys)
    except ParamsError as exc:
        raise ParamsError(f"{where}: {exc}") from None
    planned = []
    for case_values in cases:
        # The case is named from the validated values, exactly as bench.py names its results,
        # so a case key left to its default still gets the same name in the plan and the data.
        validated = validate(workload.params_model, case_values, where).model_dump()
        planned.append(PlannedCase(benchmark, where, case_id(validated, workload.case_keys), case_values, estimate_s))
    return planned


def plan(suite: Suite, arms: list[Arm], invocations: int) -> list[Invocation]:
    """Interleave: round k runs every case once in every arm (arm order optionally shuffled)."""
    rng = random.Random(suite.seed)
    order: list[Invocation] = []
    for k in range(1, invocations + 1):
        for case in suite.cases:
            round_arms = list(arms)
            if suite.shuffle_arms:
                rng.shuffle(round_arms)
            for arm in round_arms:
                order.append(Invocation(
                    order=len(order), arm=arm.name, benchmark=case.benchmark, case=case.case,
                    params_file=case.params_file, invocation=k, params=dict(case.values),
                ))
    return order


def _check_unique_cases(cases: list[PlannedCase], source: str) -> None:
    seen: dict[tuple[str, str], str] = {}
    for case in cases:
        key = (case.benchmark, case.case)
        if key in seen:
            raise ParamsError(
                f"{source}: case {case.case!r} of {case.benchmark} comes twice ({seen[key]} and {case.params_file}); "
                "each case may appear once in a suite."
            )
        seen[key] = case.params_file


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(paths.repo_root()))
    except ValueError:
        return str(path)
