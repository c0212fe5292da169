"""The one arm model (docs/architecture.md, "Arms"): one way of launching the same notebook with the same params.

An arm is data; its launcher (:mod:`benchlib.arms.registry`, by the arm's engine) turns (arm,
papermill argv) into the argv that launches it.
Suites name arms either by a built-in name (``native``, ``container``, ...) or by a mapping with
the fields of :class:`Arm` plus ``extends`` (a built-in arm to start from), validated against
:class:`ArmSpec`: unknown keys, wrong types, an unknown kind, engine, preset or ``extends``, a
container arm without an image and flags that are not one list item each are refused in one sentence
naming the file and key. An arm's name becomes a folder of the run, so it is 1-64 characters, not
``.`` or ``..``, without ``/``, ``\\`` or control characters; whatever else it holds is escaped where shown.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ParamsError
from ..params import error_sentence, key_name

#: The arm kinds: their roles in the decomposition (host; image + isolation; host + isolation; image alone).
ArmKind = Literal["native", "container", "isolated", "rootfs"]
ARM_KINDS: tuple[str, ...] = ("native", "container", "isolated", "rootfs")

DEFAULT_IMAGE = "benchlib:latest"

#: Named sets of run flags. "defaults" is the engine as installed; "nvidia" is what NVIDIA
#: recommends for PyTorch containers (NGC documentation).
PRESETS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "nvidia": ("--ipc=host", "--ulimit", "memlock=-1", "--ulimit", "stack=67108864"),
}


#: An arm's name becomes a folder of the run: 1-64 characters, not '.' or '..', no '/', '\' or control
#: characters. Anything else (markup included) is allowed and escaped wherever it is shown.
ARM_NAME_PATTERN = r"^[^/\\\x00-\x1f\x7f]{1,64}$"  # '.' and '..' are refused by _validate


class ArmSpec(BaseModel):
    """An arm written as a mapping in a suite file (the schema; :class:`Arm` is the model)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=ARM_NAME_PATTERN,
                      description="a folder name of 1 to 64 characters, not '.' or '..', without '/', '\\' or "
                                  "control characters")
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


#: Run flags that raise a container's privileges or open the host to it. benchlib never adds one
#: itself; an arm that asks for one is warned about when it runs and in its report.
_PRIVILEGE_FLAGS = {
    "--privileged": "every capability and host device, no seccomp or AppArmor confinement",
    "--cap-add": "a capability beyond the engine's default set",
    "--security-opt": "confinement switched off",
    "--user": "root inside the container",
    "-u": "root inside the container",
    "--pid": "the host's process namespace",
    "--device": "a host device beyond the GPUs",
    "-v": "a writable host path",
    "--volume": "a writable host path",
    "--mount": "a writable host path",
    # apptainer
    "--fakeroot": "root inside the container",
    "--keep-privs": "root's privileges kept",
    "--allow-setuid": "setuid programs allowed",
    "--add-caps": "capabilities added",
    "--writable": "a writable image",
    "--bind": "a writable host path",
    "-B": "a writable host path",
}
_BOOLEAN_FLAGS = {"--privileged", "--fakeroot", "--keep-privs", "--allow-setuid", "--writable"}


def flag_privileges(run_flags: Sequence[str]) -> list[str]:
    """The run flags that raise privileges (``--privileged``, ``--cap-add``, ``--security-opt
    seccomp=unconfined``, ``--user 0``, ``--pid=host``, ``--device``, writable ``-v`` mounts,
    apptainer's ``--fakeroot``...), each as ``flag (what it grants)``."""
    found = []
    items = [str(flag) for flag in run_flags]
    i = 0
    while i < len(items):
        name, sep, value = items[i].partition("=")
        if name not in _PRIVILEGE_FLAGS:
            i += 1
            continue
        if not sep and name not in _BOOLEAN_FLAGS:
            value = items[i + 1] if i + 1 < len(items) else ""
            i += 1
        i += 1
        if _raises(name, value, bool(sep)):
            shown = f"{name} {value}" if value and name not in _BOOLEAN_FLAGS else items[i - 1]
            found.append(f"{shown} ({_PRIVILEGE_FLAGS[name]})")
    return found


def _raises(name: str, value: str, explicit: bool) -> bool:
    lowered = value.lower()
    if name in _BOOLEAN_FLAGS:
        return not explicit or lowered not in ("false", "0")
    if name == "--security-opt":
        return "unconfined" in lowered or re.search(r"label[=:]disable|no-new-privileges[=:]false", lowered) is not None
    if name in ("--user", "-u"):
        return lowered.partition(":")[0] in ("0", "root")
    if name == "--pid":
        return lowered == "host"
    if name in ("-v", "--volume"):
        return "docker.sock" in lowered or "ro" not in ",".join(lowered.split(":")[2:]).split(",")
    if name in ("--bind", "-B"):  # apptainer: SRC[:DST[:OPTS]], several separated by commas
        return "docker.sock" in lowered or any(bind.split(":")[2:3] != ["ro"] for bind in lowered.split(","))
    if name == "--mount":
        fields = [part.strip() for part in lowered.split(",")]
        return "docker.sock" in lowered or not any(f in ("readonly", "ro", "readonly=true", "ro=true") for f in fields)
    return True  # --cap-add, --device, --add-caps


def _validate(arm: Arm, source: str, loc: tuple = ()) -> None:
    def key(name: str) -> str:
        return f"{source}: key {key_name((*loc, name))!r}" if loc else f"{source}: arm {arm.name!r}: key {name!r}"

    if not arm.name or arm.name in (".", "..") or re.search(r"[/\\\x00-\x1f\x7f]", arm.name):
        raise ParamsError(f"{source}: arm {arm.name!r}: an arm name names a folder of the run, so it may not be "
                          "empty, '.' or '..', nor hold '/', '\\' or control characters.")
    from .registry import engines_of_kind, launcher_for

    if arm.kind not in ARM_KINDS:
        raise ParamsError(f"{key('kind')} must be one of {', '.join(ARM_KINDS)}, not {arm.kind!r}.")
    if arm.engine not in engines_of_kind(arm.kind):
        allowed = ", ".join(engines_of_kind(arm.kind))
        raise ParamsError(f"{key('engine')} must be one of {allowed} for a {arm.kind} arm, not {arm.engine!r}.")
    if arm.preset not in PRESETS:
        raise ParamsError(f"{key('preset')} must be one of {', '.join(PRESETS)}, not {arm.preset!r}.")
    if launcher_for(arm).needs_image and not arm.image:
        raise ParamsError(f"{key('image')} is required for a {arm.kind} arm (e.g. {DEFAULT_IMAGE}).")
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


def select_arms(available: list[Arm], names: Sequence[str | Arm] | None, source: str) -> list[Arm]:
    """Pick arms by name (``--arms``), from the suite's own arms first, then the built-ins; an Arm given
    instead of a name (from code) is taken as it is."""
    if not names:
        return available
    by_name = {arm.name: arm for arm in available}
    chosen = []
    for name in names:
        if isinstance(name, Arm):
            chosen.append(name)
        else:
            chosen.append(by_name[name] if name in by_name else arm_from_spec(name, source))
    if len({arm.name for arm in chosen}) != len(chosen):
        raise ParamsError(f"--arms names an arm twice: {','.join(arm.name for arm in chosen)}.")
    return chosen
