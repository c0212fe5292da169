"""Docker seccomp profiles in the OCI runtime's form (the isolated arm's ``--security-opt seccomp=PATH``)."""
from __future__ import annotations

import json
import platform
import re
from pathlib import Path
from typing import Any, Iterable

from ..errors import PreflightError

__all__ = ["load_seccomp", "seccomp_to_oci"]


def _go_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
            "riscv64": "riscv64"}.get(platform.machine(), platform.machine())


_SCMP_NATIVE = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64", "arm": "SCMP_ARCH_ARM",
                "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X", "riscv64": "SCMP_ARCH_RISCV64"}


def _kernel_at_least(version: str) -> bool:
    def parts(text: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", text)[:2])

    return parts(platform.release()) >= parts(version)


def seccomp_to_oci(profile: dict[str, Any], caps: Iterable[str]) -> dict[str, Any]:
    """A Docker seccomp profile (``archMap``, ``includes``/``excludes``) as the OCI ``linux.seccomp``.

    Follows moby's ``profiles/seccomp`` loader: the host architecture's entry of ``archMap``; a rule
    is kept when every capability it ``includes`` is in ``caps``, the host architecture and kernel
    match its ``includes``, and nothing in its ``excludes`` matches. A profile already in the OCI
    form passes through.
    """
    caps, arch = set(caps), _go_arch()
    out: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    if "defaultErrnoRet" in profile:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    if profile.get("archMap"):
        native = _SCMP_NATIVE.get(arch)
        for entry in profile["archMap"]:
            if entry.get("architecture") == native:
                out["architectures"] = [native] + list(entry.get("subArchitectures") or [])
    elif profile.get("architectures"):
        out["architectures"] = list(profile["architectures"])
    for key in ("flags", "listenerPath", "listenerMetadata"):
        if profile.get(key):
            out[key] = profile[key]
    rules = []
    for rule in profile.get("syscalls") or []:
        includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
        if any(cap not in caps for cap in includes.get("caps") or []):
            continue
        if includes.get("arches") and arch not in includes["arches"]:
            continue
        if includes.get("minKernel") and not _kernel_at_least(includes["minKernel"]):
            continue
        if any(cap in caps for cap in excludes.get("caps") or []):
            continue
        if arch in (excludes.get("arches") or []):
            continue
        if excludes.get("minKernel") and _kernel_at_least(excludes["minKernel"]):
            continue
        names = list(rule.get("names") or ([rule["name"]] if rule.get("name") else []))
        if not names:
            continue
        kept = {"names": names, "action": rule["action"]}
        for key in ("args", "errnoRet"):
            if rule.get(key) is not None:
                kept[key] = rule[key]
        rules.append(kept)
    out["syscalls"] = rules
    return out


def load_seccomp(path: str, caps: Iterable[str], where: str) -> dict[str, Any]:
    try:
        profile = json.loads(Path(path).read_text())
        return seccomp_to_oci(profile, caps)
    except OSError as exc:
        raise PreflightError(f"{where}: cannot read the seccomp profile {path} ({exc.strerror}); fix the path in "
                             "--security-opt seccomp=PATH.") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise PreflightError(f"{where}: {path} is not a Docker or OCI seccomp profile ({type(exc).__name__}: "
                             f"{exc}); give a JSON profile like Docker's default.json.") from None
