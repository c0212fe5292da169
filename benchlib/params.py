"""Params files: load, expand into cases, validate against a workload's pydantic model.

A params file (``params/<benchmark>/<name>.yaml``) holds the notebook's parameters, flat, so plain
``papermill notebooks/<benchmark>.ipynb out.ipynb -f params/<benchmark>/<name>.yaml`` works. Keys
that define a case (the workload's ``case_keys``) may hold a list: the file then stands for the
cartesian product of those lists, one case each, and the runner gives each case its own invocations.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ParamsError
from .timer import TimerConfig


class CommonParams(BaseModel):
    """Parameters every workload takes: where to run, how to time, how fast to sample NVML."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    seed: int = 42
    warmup: int = Field(3, ge=0)
    min_samples: int = Field(10, ge=1)
    max_samples: int = Field(200, ge=1)
    max_time_s: float = Field(30.0, gt=0)
    min_time_s: float = Field(0.0, ge=0)
    target_rel_ci: float = Field(0.005, gt=0, lt=1)
    fixed_samples: int | None = Field(None, ge=1)
    flush_l2: bool = False
    telemetry_hz: float = Field(100.0, ge=0)  # 0 switches the NVML sampler off

    def timer_config(self, inner_repeats: int = 1, back_to_back: bool = False) -> TimerConfig:
        return TimerConfig(
            warmup=self.warmup,
            min_samples=min(self.min_samples, self.max_samples),
            max_samples=self.max_samples,
            max_time_s=self.max_time_s,
            min_time_s=min(self.min_time_s, self.max_time_s),
            target_rel_ci=self.target_rel_ci,
            fixed_samples=self.fixed_samples,
            inner_repeats=inner_repeats,
            flush_l2=self.flush_l2,
            back_to_back=back_to_back,
        )


def read_yaml(path: Path, what: str = "params file") -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is one clear sentence naming it."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{what} {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{what} {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{what} {path} must hold a mapping of key: value, not a {type(data).__name__}.")
    return data


def expand_cases(values: Mapping[str, Any], case_keys: Iterable[str]) -> list[dict[str, Any]]:
    """The cartesian product over list-valued case keys; other keys are copied into every case."""
    sweep_keys = [key for key in case_keys if isinstance(values.get(key), (list, tuple))]
    for key in sweep_keys:
        if not values[key]:
            raise ParamsError(f"key {key!r} is an empty list; give at least one value.")
    fixed = {key: value for key, value in values.items() if key not in sweep_keys}
    combos = itertools.product(*(values[key] for key in sweep_keys))
    return [{**fixed, **dict(zip(sweep_keys, combo))} for combo in combos]


def validate(model: type[BaseModel], values: Mapping[str, Any], source: str) -> BaseModel:
    """Validate one case; the first error becomes one sentence naming ``source`` and the key."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            known = ", ".join(sorted(model.model_fields))
            message = f"unknown key; known keys are {known}"
        raise ParamsError(f"{source}: key {key!r}: {message} (got {error.get('input')!r}).") from None
