"""The one arm model (DESIGN.md, "Arms"): one way of launching the same notebook with the same params.

An arm is data; :mod:`benchlib.engines` turns (arm, papermill argv) into the argv that launches it.
Suites name arms either by a built-in name (``native``, ``container``, ...) or by a mapping with
the fields of :class:`Arm` plus ``extends`` (a built-in arm to start from), validated against
:class:`ArmSpec`: unknown keys, wrong types, an unknown kind, engine, preset or ``extends``, a
container arm without an image and flags that are not one list item each are refused in one sentence
naming the file and key. An arm's name becomes a folder of the run, so it is letters, digits, ``.``,
``_`` and ``-``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ParamsError
from .params import error_sentence, key_name

ArmKind = Literal["native", "container", "isolated", "rootfs"]
ARM_KINDS: tuple[str, ...] = ("native", "container", "isolated", "rootfs")
ENGINES_BY_KIND: dict[str, tuple[str, ...]] = {
    "native": ("host",),
    "container": ("docker", "podman", "apptainer"),
    "isolated": ("runc",),
    "rootfs": ("chroot",),
}

DEFAULT_IMAGE = "benchlib:latest"

#: Named sets of run flags. "defaults" is the engine as installed; "nvidia" is what NVIDIA
#: recommends for PyTorch containers (NGC documentation).
PRESETS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "nvidia": ("--ipc=host", "--ulimit", "memlock=-1", "--ulimit", "stack=67108864"),
}


ARM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ArmSpec(BaseModel):
    """An arm written as a mapping in a suite file (the schema; :class:`Arm` is the model)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=ARM_NAME_PATTERN,
                      description="a folder name of up to 64 letters, digits, '.', '_' or '-' (not starting with "
                                  "'.', '_' or '-')")
    extends: str | None = None  # a built-in arm whose fields this one starts from
    kind: Literal["native", "container", "isolated", "rootfs"] | None = None
    engine: str | None = None
    image: str | None = None
    preset: str | None = None
    flags: list[str] | None = None
    gpus: Literal["auto", "all", "none"] | None = None
    env: dict[str, str] | None = None


@dataclass(frozen=True)
class Arm:
    name: str
    kind: ArmKind = "native"
    engine: str = "host"
    image: str | None = None
    preset: str = "defaults"
    flags: tuple[str, ...] = ()  # extra run flags, after the preset's
    gpus: Literal["auto", "all", "none"] = "auto"  # auto: pass GPUs through when the host has one
    env: Mapping[str, str] = field(default_factory=dict)  # extra environment for the notebook

    @property
    def run_flags(self) -> tuple[str, ...]:
        """The preset's flags followed by the arm's own."""
        return PRESETS[self.preset] + tuple(self.flags)

    @property
    def is_containerised(self) -> bool:
        return self.kind != "native"

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["flags"] = list(self.flags)
        record["env"] = dict(self.env)
        record["run_flags"] = list(self.run_flags)
        return record


#: Arms that can be named on the command line without a suite defining them.
BUILTIN_ARMS: dict[str, Arm] = {
    "native": Arm("native"),
    "container": Arm("container", kind="container", engine="docker", image=DEFAULT_IMAGE),
    "container-nvidia": Arm(
        "container-nvidia", kind="container", engine="docker", image=DEFAULT_IMAGE, preset="nvidia"
    ),
    "podman": Arm("podman", kind="container", engine="podman", image=DEFAULT_IMAGE),
    "apptainer": Arm("apptainer", kind="container", engine="apptainer", image=DEFAULT_IMAGE),
    "isolated": Arm("isolated", kind="isolated", engine="runc"),
    "rootfs": Arm("rootfs", kind="rootfs", engine="chroot"),
}


def arm_from_spec(spec: str | Mapping[str, Any], source: str = "the suite", loc: tuple = ()) -> Arm:
    """Build an Arm from a built-in name or a mapping; ``source`` names the file and ``loc`` where the
    arm sits in it (e.g. ``("arms", 1)``) for errors."""
    where = f"{source}: key {key_name(loc)!r}" if loc else source
    if isinstance(spec, str):
        if spec not in BUILTIN_ARMS:
            known = ", ".join(BUILTIN_ARMS)
            raise ParamsError(f"{where} names unknown arm {spec!r}; built-in arms are {known}, or define one as a "
                              "mapping with a 'name'.")
        return BUILTIN_ARMS[spec]
    if not isinstance(spec, Mapping):
        raise ParamsError(f"{where} must be a built-in arm name or a mapping with a 'name', not {spec!r}.")
    try:
        fields = ArmSpec.model_validate(dict(spec))
    except ValidationError as exc:
        raise ParamsError(error_sentence(source, exc, ArmSpec, prefix=loc)) from None
    if fields.extends is not None and fields.extends not in BUILTIN_ARMS:
        raise ParamsError(f"{source}: key {key_name((*loc, 'extends'))!r} must be one of {', '.join(BUILTIN_ARMS)}, "
                          f"not {fields.extends!r}.")
    base = BUILTIN_ARMS.get(fields.extends or fields.name)
    values = fields.model_dump(exclude_none=True, exclude={"extends"})
    if "flags" in values:
        values["flags"] = tuple(values["flags"])
    arm = replace(base, **values) if base else Arm(**values)
    _validate(arm, source, loc)
    return arm


def _validate(arm: Arm, source: str, loc: tuple = ()) -> None:
    def key(name: str) -> str:
        return f"{source}: key {key_name((*loc, name))!r}" if loc else f"{source}: arm {arm.name!r}: key {name!r}"

    if arm.kind not in ARM_KINDS:
        raise ParamsError(f"{key('kind')} must be one of {', '.join(ARM_KINDS)}, not {arm.kind!r}.")
    if arm.engine not in ENGINES_BY_KIND[arm.kind]:
        allowed = ", ".join(ENGINES_BY_KIND[arm.kind])
        raise ParamsError(f"{key('engine')} must be one of {allowed} for a {arm.kind} arm, not {arm.engine!r}.")
    if arm.preset not in PRESETS:
        raise ParamsError(f"{key('preset')} must be one of {', '.join(PRESETS)}, not {arm.preset!r}.")
    if arm.kind == "container" and not arm.image:
        raise ParamsError(f"{key('image')} is required for a container arm (e.g. {DEFAULT_IMAGE}).")
    if arm.gpus not in ("auto", "all", "none"):
        raise ParamsError(f"{key('gpus')} must be one of auto, all, none, not {arm.gpus!r}.")
    for flag in arm.flags:
        if not flag.strip() or _several_flags_in_one(flag):
            raise ParamsError(f"{key('flags')} must list each flag and value as its own item (e.g. "
                              f"[--shm-size=8g, --ulimit, memlock=-1]), not {flag!r}.")


def _several_flags_in_one(flag: str) -> bool:
    """``"--ulimit memlock=-1"`` or ``"--ipc=host --shm-size=8g"``: the engine would get one argument."""
    words = flag.split()
    return flag.startswith("-") and len(words) > 1 and ("=" not in words[0] or any(w.startswith("-") for w in words[1:]))


def select_arms(available: list[Arm], names: list[str] | None, source: str) -> list[Arm]:
    """Pick arms by name (``--arms``), from the suite's own arms first, then the built-ins."""
    if not names:
        return available
    by_name = {arm.name: arm for arm in available}
    chosen = []
    for name in names:
        chosen.append(by_name[name] if name in by_name else arm_from_spec(name, source))
    if len({arm.name for arm in chosen}) != len(chosen):
        raise ParamsError(f"--arms names an arm twice: {','.join(names)}.")
    return chosen
