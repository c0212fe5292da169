"""Suites: ``params/suites/<name>.yaml`` names benchmarks, their params files, arms and invocations.

A suite expands into a plan: every case of every params file, run ``invocations`` times in every
arm, interleaved round by round (native#1, container#1, native#2, container#2, ...) so that drift
(clocks, heat) hits all arms alike. Everything is validated here, before anything is written: the
suite file against :class:`_SuiteFile` (strictly: ``invocations: "3"`` or ``cooldown_s: -1`` is an
error, as is any key not listed), every arm (:mod:`benchlib.arms`, and an isolated or rootfs arm's
flags), every benchmark name, and every case of every params file against its workload's model. A
case may appear once in a suite. Each error is one sentence naming the file, the key and what is
allowed, e.g. ``params/suites/x.yaml: key 'benchmarks[1].benchmark' must be one of ..., not 'matmull'.``

A suite entry's ``params`` is either a file stem under ``params/<benchmark>/`` (``quick``) or a path
to a YAML file ending in ``.yaml`` or ``.yml``: absolute, or relative to the suite file's folder (a
path relative to the repository root, such as ``params/matmul/quick.yaml``, is also found).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import paths
from .arms import Arm, arm_from_spec, launcher_for
from .errors import ParamsError, PreflightError
from .manifest import Invocation
from .sequential_options import SequentialOptions, sequential_options
from .params import case_name, error_sentence, key_name, read_yaml, validated_cases
from .workloads import get_workload, registry

__all__ = ["PlannedCase", "Suite", "expand_entry", "load_suite", "params_path", "plan", "suite_names"]

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Entry(BaseModel):
    model_config = _STRICT
    benchmark: str
    params: str = Field(min_length=1)  # a file stem under params/<benchmark>/, or a path to a .yaml file
    estimate_s: float | None = Field(None, gt=0)  # seconds one invocation of one case takes, for `benchlib list`


class _SuiteFile(BaseModel):
    model_config = _STRICT
    description: str = ""
    invocations: int = Field(3, ge=1)
    arms: list[Any] = Field(default_factory=lambda: ["native"], min_length=1)  # names or mappings (arms.ArmSpec)
    benchmarks: list[_Entry] = Field(min_length=1)
    cooldown_s: float = Field(0.0, ge=0)  # pause between invocations, to let clocks and heat settle
    shuffle_arms: bool = False  # shuffle the arm order within each round, with ``seed``
    seed: int = 42
    timeout_s: float = Field(1800.0, gt=0)  # per invocation
    # a sequential run (benchlib.sequential_options parses them, naming the key in its errors)
    until: Any = None  # conclusive: add rounds until every performance metric is decided
    budget: Any = None  # a duration (15m, 1h30m, 900): the invocations' seconds a sequential run may spend
    max_invocations: Any = None  # the cap on invocations per arm and case of a sequential run


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
    sequential: SequentialOptions | None = None  # the suite's until/budget/max_invocations; None: fixed design

    @property
    def source(self) -> str:
        """The suite file as errors name it (relative to the repository when inside it)."""
        return _display(self.path)

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
        raise ParamsError(error_sentence(source, exc, _SuiteFile)) from None
    arms = _arms(spec.arms, source)
    cases: list[PlannedCase] = []
    first_seen: dict[tuple[str, str], tuple[int, str]] = {}
    for index, entry in enumerate(spec.benchmarks):
        for case in expand_entry(entry.benchmark, entry.params, source, entry.estimate_s,
                                 loc=("benchmarks", index), base_dir=path.resolve().parent):
            _check_unique(case, index, first_seen, source)
            cases.append(case)
    return Suite(path.stem, path, spec.description, spec.invocations, arms, cases,
                 spec.cooldown_s, spec.shuffle_arms, spec.seed, spec.timeout_s, _sequential(spec, source))


def _sequential(spec: _SuiteFile, source: str) -> SequentialOptions | None:
    """The suite's sequential design: None without ``until``; ``budget`` or ``max_invocations`` alone is an error."""
    where = {key: f"{source}: key {key!r}" for key in ("until", "budget", "max_invocations")}
    if spec.until is None:
        for key in ("budget", "max_invocations"):
            if getattr(spec, key) is not None:
                raise ParamsError(f"{where[key]} applies to a sequential run only; add until: conclusive to the suite "
                                  "or remove the key.")
        return None
    return sequential_options(spec.until, spec.budget, spec.max_invocations, sources=where)


def _arms(specs: list[Any], source: str) -> list[Arm]:
    """Every arm of the suite, validated (an isolated or rootfs arm's flags too), names unique."""
    arms: list[Arm] = []
    for index, spec in enumerate(specs):
        arm = arm_from_spec(spec, source, loc=("arms", index))
        try:
            launcher_for(arm).check(arm)  # pure parsing; what the arm's preflight would refuse later
        except PreflightError as exc:
            reason = str(exc).removeprefix(f"arm {arm.name!r}: ")
            raise ParamsError(f"{source}: key {key_name(('arms', index, 'flags'))!r} is not valid: {reason}") from None
        if any(arm.name == other.name for other in arms):
            raise ParamsError(f"{source}: key {key_name(('arms', index))!r} repeats arm name {arm.name!r}; "
                              "arm names must be unique.")
        arms.append(arm)
    return arms


def params_path(benchmark: str, params: str, base_dir: Path | None = None) -> Path:
    """Where a suite entry's ``params`` points: a stem under params/<benchmark>/, or a .yaml path
    (absolute, relative to ``base_dir`` (the suite's folder), else relative to the repository root)."""
    candidate = Path(params).expanduser()
    if candidate.suffix in (".yaml", ".yml"):
        if candidate.is_absolute():
            return candidate
        nearby = (base_dir or paths.repo_root()) / candidate
        from_root = paths.repo_root() / candidate
        return nearby if nearby.is_file() or not from_root.is_file() else from_root
    return paths.params_dir() / benchmark / f"{params}.yaml"


def expand_entry(benchmark: str, params: str, source: str, estimate_s: float | None = None,
                 loc: tuple = ("benchmarks",), base_dir: Path | None = None) -> list[PlannedCase]:
    """Validate one params file against its workload and return its cases; ``source`` is the suite
    file and ``loc`` the entry's place in it, for errors about the entry itself."""
    if benchmark not in registry():
        raise ParamsError(f"{source}: key {key_name((*loc, 'benchmark'))!r} must be one of "
                          f"{', '.join(sorted(registry()))}, not {benchmark!r}.")
    workload = get_workload(benchmark)
    path = params_path(benchmark, params, base_dir)
    if not path.is_file():
        stems = ", ".join(sorted(p.stem for p in (paths.params_dir() / benchmark).glob("*.yaml")))
        raise ParamsError(f"{source}: key {key_name((*loc, 'params'))!r} names {path}, which does not exist; "
                          f"use a file of params/{benchmark}/ ({stems}) or a path to a .yaml file.")
    where = _display(path)
    values = read_yaml(path)
    planned = []
    for case_values, validated in validated_cases(workload.params_model, values, workload.case_keys, where):
        planned.append(PlannedCase(benchmark, where, case_name(workload, validated), case_values, estimate_s))
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


def _check_unique(case: PlannedCase, index: int, first_seen: dict[tuple[str, str], tuple[int, str]],
                  source: str) -> None:
    key = (case.benchmark, case.case)
    if key in first_seen:
        first_index, first_file = first_seen[key]
        raise ParamsError(
            f"{source}: key {key_name(('benchmarks', index))!r} plans case {case.case!r} of {case.benchmark} again "
            f"({case.params_file}), which {key_name(('benchmarks', first_index))} ({first_file}) already plans; "
            "each case may appear once in a suite."
        )
    first_seen[key] = (index, case.params_file)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(paths.repo_root()))
    except ValueError:
        return str(path)
