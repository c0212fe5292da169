"""Params files: load, expand into cases, validate against a workload's pydantic model.

A params file (``params/<benchmark>/<name>.yaml``) holds the notebook's parameters, flat, so plain
``papermill notebooks/<benchmark>.ipynb out.ipynb -f params/<benchmark>/<name>.yaml`` works. Keys
that define a case (the workload's ``case_keys``) may hold a list: the file then stands for the
cartesian product of those lists, one case each, and the runner gives each case its own invocations.

Validation is strict, so a file means what it says: an integer key takes a YAML integer (not ``"3"``,
``3.0`` or ``true``), a number key a finite number (not ``.inf``), a flag ``true`` or ``false``; a key
may appear once in a file; a swept list is not empty and names each value once. Every problem is one
sentence naming the file, the key and what is allowed (:func:`error_sentence`), for example
``params/matmul/quick.yaml: key 'dtype' must be one of fp32, tf32, bf16, fp16, not 'int4'.``
"""
from __future__ import annotations

import difflib
import itertools
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from .errors import ParamsError
from .schema import case_id
from .timer import TimerConfig

__all__ = [
    "CommonParams", "case_name", "common_default", "error_sentence", "expand_cases", "key_name",
    "read_yaml", "validate", "validated_cases"
]

if TYPE_CHECKING:
    from .workloads import Workload


#: What ``settings`` may say: ``user`` leaves math modes, thread pools and allocator settings to the
#: environment, as a script that sets nothing gets them; ``forced`` lets the workload pin them.
Settings = Literal["user", "forced"]


class CommonParams(BaseModel):
    """Parameters every workload takes: where to run, how to time, how fast to sample NVML, and
    whether the workload pins its own settings (``settings``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    #: What a workload pins itself in ``settings: forced`` (one phrase), or None when it pins nothing:
    #: ``forced`` is then refused. Subclasses that can pin something set it.
    FORCED: ClassVar[str | None] = None

    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    # user: math modes (TF32, matmul precision, cuDNN flags), thread pools and allocator settings as the
    # environment gives them, as the user's own script gets them; forced: the workload pins them (FORCED)
    settings: Settings = "user"
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

    @field_validator("settings")
    @classmethod
    def _forced_pins_something(cls, settings: str) -> str:
        if settings == "forced" and cls.FORCED is None:
            raise ValueError("this benchmark pins no math mode, thread pool or allocator setting itself, so "
                             "only 'user' applies")
        return settings

    def settings_record(self) -> dict[str, Any]:
        """Which mode the case runs in and what the workload pins in it, for the fingerprint."""
        return {"settings": self.settings, "pinned": self.FORCED if self.settings == "forced" else None}

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


def common_default(name: str, value: Any) -> Any:
    """:class:`CommonParams`' field ``name`` with a workload's own default, its constraints kept.

    A workload whose measurements want another budget than the common one (a shorter ``max_time_s``
    for a latency loop) declares it in its model, the one source of defaults: its notebook's
    parameters cell is checked against the model (tests/test_notebooks.py), so a params file that
    leaves a key out means the same thing to the plan, the notebook and a direct call.
    """
    return FieldInfo.merge_field_infos(CommonParams.model_fields[name], default=value)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the
    last silently, so a typo'd duplicate would quietly change what runs)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                line = first_line.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the base class says so
                break
            if line != key_node.start_mark.line + 1:
                raise _DuplicateKey(key, line, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first_line: int, second_line: int):
        super().__init__(f"key {key!r} appears twice")
        self.key, self.first_line, self.second_line = key, first_line, second_line


def read_yaml(path: Path, what: str = "params file") -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is one clear sentence naming it."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{what} {path} does not exist.")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise ParamsError(f"{path}: key {str(exc.key)!r} is given twice (lines {exc.first_line} and "
                          f"{exc.second_line}); give each key once.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = str(getattr(exc, "problem", None) or exc).replace("\n", " ")
        raise ParamsError(f"{what} {path} is not valid YAML{where}: {problem}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{what} {path} cannot be read: {getattr(exc, 'strerror', None) or exc}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{what} {path} must hold a mapping of key: value, not a {type(data).__name__}.")
    return data


def expand_cases(values: Mapping[str, Any], case_keys: Iterable[str]) -> list[dict[str, Any]]:
    """The cartesian product over list-valued case keys; other keys are copied into every case.

    A swept list must hold at least one value and each value once (a repeated value would plan the
    same case twice)."""
    sweep_keys = [key for key in case_keys if isinstance(values.get(key), (list, tuple))]
    for key in sweep_keys:
        if not values[key]:
            raise ParamsError(f"key {key!r} is an empty list; give at least one value.")
        for index, value in enumerate(values[key]):
            if value in list(values[key])[:index]:
                raise ParamsError(f"key {key!r} lists {value!r} twice; give each value once.")
    fixed = {key: value for key, value in values.items() if key not in sweep_keys}
    combos = itertools.product(*(values[key] for key in sweep_keys))
    return [{**fixed, **dict(zip(sweep_keys, combo))} for combo in combos]


def validated_cases(model: type[BaseModel], values: Mapping[str, Any], case_keys: Sequence[str],
                    source: str) -> list[tuple[dict[str, Any], BaseModel]]:
    """Every case of one params file as (its values as written, the validated model); ``source`` (the
    file) starts every error."""
    for key, value in values.items():
        if isinstance(value, (list, tuple)) and key not in case_keys and key in model.model_fields:
            sweepable = ", ".join(case_keys) if case_keys else "none"
            raise ParamsError(f"{source}: key {key!r} holds a list, but only case keys ({sweepable}) may list "
                              "values to sweep; give it one value.")
    try:
        cases = expand_cases(values, case_keys)
    except ParamsError as exc:
        raise ParamsError(f"{source}: {exc}") from None
    return [(case, validate(model, case, source)) for case in cases]


def validate(model: type[BaseModel], values: Mapping[str, Any], source: str) -> BaseModel:
    """Validate one case; the first error becomes one sentence naming ``source`` and the key."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        raise ParamsError(error_sentence(source, exc, model)) from None


def case_name(workload: Workload, case: BaseModel | Mapping[str, Any], source: str = "the case") -> str:
    """The name of one case (``n=8192,dtype=bf16``): its case keys' values once validated, so a key
    left to its default is named by the model's default. The plan (benchlib.suites) and the notebook
    (benchlib.bench) both name cases with this, so the loaders (benchlib.results), which tag telemetry
    and fingerprints with the manifest's case, join them to the results by the same name."""
    model = case if isinstance(case, BaseModel) else validate(workload.params_model, case, source)
    return case_id(model.model_dump(), workload.case_keys)


def error_sentence(source: str, exc: ValidationError, model: type[BaseModel], prefix: Sequence[Any] = ()) -> str:
    """The first error of ``exc`` as one sentence: ``SOURCE: key 'K' must be ALLOWED, not VALUE.``

    ``prefix`` is where ``model`` sits in the file (e.g. ``("arms", 2)``), so the key is named in full.
    """
    error = exc.errors(include_url=False)[0]
    loc = tuple(error["loc"])
    key = key_name((*prefix, *loc))
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "missing":
        return f"{source}: key {key!r} is required."
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), list(owner.model_fields), n=1) if owner else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{source}: key {key!r} is not a known key here{hint}; allowed keys are {_field_names(owner)}."
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        inner = _model_at(model, loc)
        keys = f" with keys {_field_names(inner)}" if inner is not None else ""
        return f"{source}: key {key!r} must be a mapping{keys}, not {_shown(value)}."
    if kind == "value_error":
        reason = str(error["msg"]).removeprefix("Value error, ")
        return f"{source}: key {key!r} cannot be {_shown(value)}: {reason}."
    return f"{source}: key {key!r} must be {_allowed(kind, ctx, error['msg'], model, loc)}, not {_shown(value)}."


def key_name(loc: Sequence[Any]) -> str:
    """``("benchmarks", 0, "params")`` -> ``benchmarks[0].params``."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "(top level)"


_ALLOWED = {
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string (quote it in YAML)", "list_type": "a list", "tuple_type": "a list",
}


def _allowed(kind: str, ctx: dict[str, Any], msg: str, model: type[BaseModel], loc: tuple) -> str:
    if kind in _ALLOWED:
        return _ALLOWED[kind]
    if kind == "literal_error":
        options = [part.strip().strip("'") for part in str(ctx["expected"]).replace(" or ", ", ").split(", ")]
        return f"one of {', '.join(options)}"
    bounds = {"greater_than": "greater than {gt}", "greater_than_equal": "at least {ge}",
              "less_than": "less than {lt}", "less_than_equal": "at most {le}",
              "too_short": "a list of at least {min_length} item(s)", "too_long": "a list of at most {max_length} item(s)"}
    if kind in bounds:
        return bounds[kind].format(**{name: _number(value) for name, value in ctx.items()})
    if kind == "string_pattern_mismatch":
        owner = _model_at(model, loc[:-1])
        field = owner.model_fields.get(loc[-1]) if owner is not None and loc else None
        return field.description if field is not None and field.description else f"a string matching {ctx['pattern']}"
    return msg.replace("Input should be ", "").replace("String should ", "a string that should ")


def _model_at(model: type[BaseModel] | None, loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model that validates the value at ``loc`` (through fields and list items)."""
    annotation: Any = model
    for part in loc:
        annotation = _strip_optional(annotation)
        if isinstance(part, int):
            args = typing.get_args(annotation)
            annotation = args[0] if typing.get_origin(annotation) in (list, tuple) and args else None
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel) and part in annotation.model_fields:
            annotation = annotation.model_fields[part].annotation
        else:
            return None
    annotation = _strip_optional(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return options[0] if len(options) == 1 else annotation
    return annotation


def _field_names(model: type[BaseModel] | None) -> str:
    return ", ".join(sorted(model.model_fields)) if model is not None else "(none)"


def _number(value: Any) -> Any:
    """``0.0`` -> ``0``, so a bound reads as the user would write it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
