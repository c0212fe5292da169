"""The one arm model (DESIGN.md, "Arms"): one way of launching the same notebook with the same params.

An arm is data; :mod:`benchlib.engines` turns (arm, papermill argv) into the argv that launches it.
Suites name arms either by a built-in name (``native``, ``container``, ...) or by a mapping with
the fields of :class:`Arm`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Mapping

from .errors import ParamsError

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


def arm_from_spec(spec: str | Mapping[str, Any], source: str = "the suite") -> Arm:
    """Build an Arm from a built-in name or a mapping; ``source`` names the file for errors."""
    if isinstance(spec, str):
        if spec not in BUILTIN_ARMS:
            known = ", ".join(BUILTIN_ARMS)
            raise ParamsError(f"{source}: unknown arm {spec!r}; built-in arms are {known}.")
        return BUILTIN_ARMS[spec]
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ParamsError(f"{source}: each entry under 'arms' needs a 'name' (or is a built-in arm name).")
    values = dict(spec)
    base = BUILTIN_ARMS.get(values.get("extends", values["name"]))
    values.pop("extends", None)
    unknown = set(values) - set(Arm.__dataclass_fields__)
    if unknown:
        raise ParamsError(f"{source}: arm {values['name']!r} has unknown key(s) {', '.join(sorted(unknown))}.")
    if "flags" in values:
        values["flags"] = tuple(str(flag) for flag in values["flags"] or ())
    arm = replace(base, **values) if base else Arm(**values)
    _validate(arm, source)
    return arm


def _validate(arm: Arm, source: str) -> None:
    where = f"{source}: arm {arm.name!r}"
    if arm.kind not in ARM_KINDS:
        raise ParamsError(f"{where}: kind must be one of {', '.join(ARM_KINDS)}, not {arm.kind!r}.")
    if arm.engine not in ENGINES_BY_KIND[arm.kind]:
        allowed = ", ".join(ENGINES_BY_KIND[arm.kind])
        raise ParamsError(f"{where}: engine {arm.engine!r} does not launch a {arm.kind} arm; use {allowed}.")
    if arm.preset not in PRESETS:
        raise ParamsError(f"{where}: unknown preset {arm.preset!r}; presets are {', '.join(PRESETS)}.")
    if arm.kind == "container" and not arm.image:
        raise ParamsError(f"{where}: a container arm needs 'image' (e.g. {DEFAULT_IMAGE}).")
    if arm.gpus not in ("auto", "all", "none"):
        raise ParamsError(f"{where}: gpus must be auto, all or none, not {arm.gpus!r}.")


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
