"""Whether the baseline arm ran on bare metal, from its fingerprints (``env.json``).

A "native" baseline that itself runs inside a container (an engine's marker file, a container
``pid 1``, an engine in ``/proc/1/cgroup``: ``fingerprint.container``) or a virtual machine (the
``hypervisor`` CPU flag, ``/sys/hypervisor/type``, a hypervisor's DMI name: ``fingerprint.virtualization``)
measures the container against another container or a VM, not against the machine: the report says
so at its top. Fingerprints captured before ``virtualization`` existed give only the container evidence.
"""
from __future__ import annotations

from typing import Any, Mapping

from . import Finding

CHECK = "baseline_not_bare_metal"


def _evidence(env: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    container = env.get("container")
    if isinstance(container, Mapping) and container.get("detected"):
        engine = container.get("engine")
        found.append(f"a container{f' ({engine})' if engine and engine != 'unknown' else ''} was detected: "
                     + "; ".join(map(str, container.get("evidence") or [])))
    virtualization = env.get("virtualization")
    if isinstance(virtualization, Mapping) and virtualization.get("vm"):
        found.append("it is a virtual machine: " + "; ".join(map(str, virtualization.get("evidence") or [])))
    return found


def bare_metal_findings(envs: Mapping[tuple, Mapping[str, Any]], baseline: str | None,
                        kinds: Mapping[str, str] | None = None) -> list[Finding]:
    """One finding when the baseline's fingerprints show a container or a VM.

    ``envs`` is keyed like :func:`benchlib.load_envs` (arm, benchmark, case, invocation); ``kinds``
    maps arm names to their kind (``native``, ``docker``...): a baseline that is not of kind
    ``native`` is meant to be a container and is not flagged.
    """
    if baseline is None or (kinds and kinds.get(baseline, "native") != "native"):
        return []
    evidence = list(dict.fromkeys(item for key, env in envs.items() if key[0] == baseline
                                  for item in _evidence(env)))
    if not evidence:
        return []
    message = (f"native is not bare metal: the baseline {baseline} ran where {' and '.join(evidence)}. "
               "Its figures are those of that container or VM, so the comparison says what the container "
               "costs against it, not against the machine; run the baseline on the host itself to measure that.")
    return [Finding(CHECK, "problem", "", "", (baseline,), message, (), {"evidence": evidence})]
