"""What a workload is sensitive to: the classes of mechanisms that can act on it (docs/architecture.md,
"Diagnosis").

A mechanism acts through one or more classes (a CPU quota acts on host-bound code; /dev/shm on
shared-memory paths); a workload declares, per case, the classes it exercises and the mechanisms that
cannot act on it all the same (``settings: forced`` pins matmul's math mode and cpu_bound's thread
pool; a bf16 product uses no TF32). Without an
experiment, only a mechanism in one of the case's classes, and not excluded by it, may be named as a
likely cause (:func:`benchlib.diagnosis.blame.blame`). This module imports nothing heavy: every
workload module imports it to declare its rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = [
    "ALL_CLASSES", "CAPACITY", "COLLECTIVES", "EVERY_WORKLOAD", "FILES_NETWORK", "GPU_KERNELS", "HOST",
    "MATH_MODE_MECHANISMS", "NO_KNOWN_EFFECT", "COPIES", "SHARED_MEMORY", "Sensitivity", "SensitivityRule",
    "THREAD_MECHANISMS", "UNKNOWN", "always", "excluding",
]

#: GPU kernels: framework build, TF32 and math modes, GPU arch and JIT, clocks and power.
GPU_KERNELS = "GPU kernels"
#: Host-bound code: the CPU quota and set, thread pools, seccomp, mitigations, launch blocking.
HOST = "host-bound code"
#: Shared-memory paths: /dev/shm and the IPC namespace (DataLoader workers, NCCL's shared-memory transport).
SHARED_MEMORY = "shared memory"
#: Capacity: memory limits and unified-memory accounting.
CAPACITY = "memory capacity"
#: Host-device copies: pinned host memory (the memlock limit) and the PCIe link.
COPIES = "host-device copies"
#: Collectives: NCCL and its transports.
COLLECTIVES = "collectives"
#: Files and network: overlay or read-only root filesystem, network namespace.
FILES_NETWORK = "files and network"

#: A workload's classes are drawn from these.
ALL_CLASSES: frozenset[str] = frozenset(
    {GPU_KERNELS, HOST, SHARED_MEMORY, CAPACITY, COPIES, COLLECTIVES, FILES_NETWORK})

#: A mechanism that can act on any workload (a different software stack runs different code everywhere).
EVERY_WORKLOAD = "every workload"
#: A mechanism whose effect on speed nobody knows (an environment variable no table names): only an
#: experiment can blame it.
UNKNOWN = "unknown effect"
#: A mechanism known not to change speed (informational variables, the stack ulimit): never blamed
#: without an experiment.
NO_KNOWN_EFFECT = "no known effect on speed"


@dataclass(frozen=True)
class Sensitivity:
    """The classes one case exercises, and the mechanisms that cannot act on it though their class
    could, each with the reason (``settings: forced`` pins the math mode; bf16 products use no TF32)."""

    classes: frozenset[str]
    excluded: tuple[tuple[str, str], ...] = ()  # (mechanism name of benchlib.diagnosis.mechanisms, why)

    def __post_init__(self) -> None:
        unknown = set(self.classes) - ALL_CLASSES
        if unknown:
            raise ValueError(f"unknown sensitivity class(es) {sorted(unknown)}; classes are {sorted(ALL_CLASSES)}")

    def acts_on(self, classes: frozenset[str]) -> bool:
        """Whether a mechanism acting through ``classes`` can act on this case (exclusions aside)."""
        return EVERY_WORKLOAD in classes or bool(classes & self.classes)

    def exclusion(self, mechanism: str) -> str | None:
        """Why ``mechanism`` cannot act on this case although its class could, or None."""
        return next((why for name, why in self.excluded if name == mechanism), None)


#: A workload's rule: its sensitivity for one case (its validated params) on a GPU (True) or the CPU.
SensitivityRule = Callable[[Any, bool], Sensitivity]


def always(*classes: str) -> SensitivityRule:
    """A rule that ignores the case: the same classes everywhere."""
    sensitivity = Sensitivity(frozenset(classes))
    return lambda params, on_gpu: sensitivity


def excluding(mechanisms: tuple[str, ...], why: str) -> tuple[tuple[str, str], ...]:
    """``Sensitivity.excluded`` entries giving several mechanisms one reason."""
    return tuple((mechanism, why) for mechanism in mechanisms)


#: The mechanisms a workload pins when it sets the math mode itself.
MATH_MODE_MECHANISMS = ("math_mode", "env:TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "env:NVIDIA_TF32_OVERRIDE")
#: The mechanisms a workload pins when it sets the thread pool itself.
THREAD_MECHANISMS = ("threads", "env:OMP_NUM_THREADS", "env:MKL_NUM_THREADS")
