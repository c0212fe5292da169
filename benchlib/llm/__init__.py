"""LLM inference: one backend interface, three backends, one result shape.

- :mod:`.model` — the named Llama shapes, their byte/FLOP counts, the plain-PyTorch reference model.
- :mod:`.inputs` — seeded synthetic requests (fixed / uniform / normal prompt lengths).
- :mod:`.base` — :class:`Backend` (``generate(batch) -> GenerationResult``), :func:`run_scenario`.
- :mod:`.reference` — static KV cache, decode step eager or replayed from a CUDA graph.
- :mod:`.hf` — transformers ``generate`` (imported only when used).
- :mod:`.trtllm` — TensorRT-LLM's ``LLM`` API and ``trtllm-bench`` (imported only when used).
- :mod:`.metrics` — generations to tidy metrics, roofline fractions.
"""
from __future__ import annotations

from ..device import Device
from ..errors import SkipCase
from .base import Backend, BackendConfig, GenerationResult, RequestResult, run_scenario, tpot
from .inputs import Batch, InputSpec
from .model import SHAPES, ModelShape

__all__ = [
    "Backend", "BackendConfig", "Batch", "GenerationResult", "InputSpec", "ModelShape", "RequestResult", "SHAPES",
    "make_backend", "run_scenario", "tpot",
]

TRANSFORMERS_MISSING = (
    "transformers is not installed in this environment; pip install transformers, or backend: reference"
)


def make_backend(config: BackendConfig, device: Device) -> Backend:
    """Build ``config.backend`` for one scenario; a backend this environment lacks skips the case."""
    if config.backend == "reference":
        from .reference import ReferenceBackend

        return ReferenceBackend(config, device)
    if config.backend == "transformers":
        try:
            from .hf import HfBackend
        except ImportError:
            raise SkipCase(f"skipped: {TRANSFORMERS_MISSING}") from None
        return HfBackend(config, device)
    from .trtllm import TrtLlmBackend

    return TrtLlmBackend(config, device)
