"""benchlib: is running inside a container costing me GPU performance, and why?

The public API is small; everything else is private to its module. Names load lazily, so the
command line starts without importing torch or pandas.

- :func:`run_benchmark`, :func:`notebook_parameters` — what a benchmark notebook calls.
- :func:`load_run`, :func:`load_telemetry`, :func:`load_envs`, :func:`load_manifest` — a run.
- :func:`analyse` — a run compared arm by arm (:class:`Analysis`: tables, verdicts, figures).
- :func:`measure`, :class:`TimerConfig`, :class:`Measurement` — the shared timer.
- :class:`NvmlSampler` — background NVML telemetry.
- :func:`capture_fingerprint` — the environment fingerprint.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Analysis": ("report", "Analysis"),
    "analyse": ("report", "analyse"),
    "BenchResult": ("bench", "BenchResult"),
    "run_benchmark": ("bench", "run_benchmark"),
    "notebook_parameters": ("bench", "notebook_parameters"),
    "capture_fingerprint": ("fingerprint", "capture"),
    "load_envs": ("results", "load_envs"),
    "load_manifest": ("results", "load_manifest"),
    "load_run": ("results", "load_run"),
    "load_telemetry": ("results", "load_telemetry"),
    "NvmlSampler": ("telemetry", "NvmlSampler"),
    "Measurement": ("timer", "Measurement"),
    "TimerConfig": ("timer", "TimerConfig"),
    "measure": ("timer", "measure"),
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'benchlib' has no attribute {name!r}")
    module_name, attribute = _EXPORTS[name]
    return getattr(importlib.import_module(f".{module_name}", __name__), attribute)
