"""The reference backend: the plain-PyTorch Llama decoder with a static KV cache.

``mode: graph`` captures the decode step once per batch size in a CUDA graph (warmed up on a side
stream first, as the ``torch.cuda.graphs`` documentation asks) and replays it per token;
``mode: eager`` runs the same step op by op, the CPU-bound regime where a container's CPU limits
and syscall costs show. The prefill runs eagerly in both modes. ``compile`` wraps the step in
``torch.compile`` (default mode, no inductor CUDA graphs: the capture stays ours).

Timing: on a GPU a CUDA event is recorded after the prefill and after every decode step; the host
synchronises once, at the end, so the measurement itself never stalls the pipeline. Token times are
the event times from a start event recorded right after the wall-clock start stamp. On the CPU the
work is synchronous and ``perf_counter_ns`` is read after each step.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import hostmem
from ..device import Device
from ..errors import SkipCase
from .base import Backend, BackendConfig, GenerationResult, RequestResult
from .inputs import Batch, InputSpec
from .model import ReferenceModel, Session, kv_pool_tokens

CAPTURE_WARMUP_STEPS = 3


class _EventClock:
    """CUDA events after each token; read once, after the last."""

    def __init__(self, torch_module: Any, marks: int):
        self.torch = torch_module
        self.begin = torch_module.cuda.Event(enable_timing=True)
        self.events = [torch_module.cuda.Event(enable_timing=True) for _ in range(marks)]

    def start(self) -> None:
        self.begin.record()

    def mark(self, index: int) -> None:
        self.events[index].record()

    def offsets_s(self, count: int) -> np.ndarray:
        self.events[count - 1].synchronize()
        return np.array([self.begin.elapsed_time(event) / 1e3 for event in self.events[:count]])


class _HostClock:
    """perf_counter_ns after each token: the CPU backend runs synchronously."""

    def __init__(self, marks: int):
        self.times = np.zeros(marks, dtype=np.int64)
        self.begin = 0

    def start(self) -> None:
        self.begin = time.perf_counter_ns()

    def mark(self, index: int) -> None:
        self.times[index] = time.perf_counter_ns()

    def offsets_s(self, count: int) -> np.ndarray:
        return (self.times[:count] - self.begin) / 1e9


def prompt_tensors(batch: Batch, torch_device: str) -> tuple[Any, Any]:
    """A batch's right-padded prompt ids ``[batch, length]`` and their lengths, on ``torch_device``."""
    import torch

    tokens, _ = batch.padded()
    return torch.from_numpy(tokens).to(torch_device), torch.from_numpy(batch.lengths).to(torch_device)


@dataclass(frozen=True)
class KernelChoice:
    """Which kernels the decode step runs, why (for the record, where it is not the plain default)
    and, for the fused kernels, with which tiles."""

    kernels: str  # "triton" or "torch"
    why: str = ""
    tiles: Any = None  # benchlib.llm.tiles.TileChoice


def resolve_kernels(config: BackendConfig, device: Device, overlap: bool | None = None,
                    tiles: Any = None) -> KernelChoice:
    """The decode step's kernels. ``auto`` fuses where fusion is what the regime measures: a CUDA
    graph without torch.compile, Triton importable, the fused kernels compiling and decoding a test
    model like PyTorch ops on this GPU (:func:`fused_kernels_problem`, else PyTorch ops with the
    reason); at batch 1 always, above it where the tile search measured the fused products faster
    than cuBLAS. Eager mode keeps PyTorch ops: it is the many-small-launches, CPU-bound regime.
    ``overlap``: the launch mode the tiles are for (None: where supported); ``tiles``: a TileChoice
    to use (None: :func:`benchlib.llm.tiles.choose`'s, searched when nothing measured is known for
    this GPU: this runs before any timing)."""
    from . import kernels

    if config.kernels == "torch":
        return KernelChoice("torch")
    missing = kernels.available()
    if config.kernels == "triton":
        if missing:
            raise RuntimeError(f"kernels: triton was asked for but {missing}")
        if not device.is_cuda and not kernels.interpreting():
            raise SkipCase("skipped: kernels: triton needs a CUDA GPU (or TRITON_INTERPRET=1 to run the kernels "
                           "in Triton's interpreter)")
        if config.batch > kernels.MAX_BATCH:
            raise RuntimeError(f"kernels: triton serves batch <= {kernels.MAX_BATCH}, not {config.batch}; "
                               "use kernels: auto or torch")
        problem = fused_kernels_problem(device.torch_device, config.dtype, config.batch) if device.is_cuda else None
        if problem:
            raise RuntimeError(f"kernels: triton was asked for but {problem}; use kernels: auto or torch")
        return KernelChoice("triton", tiles=tiles or _tiles(config, device, overlap))
    if config.mode != "graph" or not device.is_cuda or config.compile or missing or config.batch > kernels.MAX_BATCH:
        return KernelChoice("torch")
    problem = fused_kernels_problem(device.torch_device, config.dtype, config.batch)
    if problem:
        return KernelChoice("torch", f"PyTorch ops because {problem}")
    return auto_choice(config, tiles or _tiles(config, device, overlap))


def auto_choice(config: BackendConfig, tiles) -> KernelChoice:
    """``auto``'s choice where the fused kernels work: at batch 1 always; above it where ``tiles``
    (a TileChoice) measured the fused products faster per step than cuBLAS, else PyTorch ops."""
    if config.batch == 1:
        return KernelChoice("triton", tiles=tiles)
    step = {which: tiles.step_seconds(config.shape, which) for which in ("fused", "cublas")}
    if tiles.fused_beats_cublas(config.shape):
        return KernelChoice("triton", f"fused: products {step['fused'] * 1e3:.3f} ms a step against cuBLAS's "
                                      f"{step['cublas'] * 1e3:.3f} ms in the tile search", tiles)
    if step["fused"] is None or step["cublas"] is None:
        return KernelChoice("torch", f"PyTorch ops: no measured comparison of the fused products with cuBLAS at "
                                     f"batch {config.batch} on this GPU ({tiles.describe()})")
    return KernelChoice("torch", f"PyTorch ops: cuBLAS's products took {step['cublas'] * 1e3:.3f} ms a step against "
                                 f"the fused {step['fused'] * 1e3:.3f} ms in the tile search ({tiles.describe()})")


def _tiles(config: BackendConfig, device: Device, overlap: bool | None):
    from . import kernels, tiles

    if overlap is None:
        overlap = kernels.overlap_unavailable(device.torch_device) is None
    if not device.is_cuda:
        return tiles.for_session(config.shape, config.dtype, config.batch, overlap, device.torch_device)
    return tiles.choose(config.shape, config.dtype, config.batch, overlap, device.torch_device, search_allowed=True)


#: Largest relative logit error of the fused step against PyTorch ops on the test model, per dtype.
FUSED_CHECK_TOLERANCE = {"fp32": 1e-3, "bf16": 0.05, "fp16": 0.05}


@functools.lru_cache(maxsize=None)
def _fused_problem(torch_device: str, dtype: str, tensor_cores: bool) -> str | None:
    from . import kernels

    try:
        target = kernels.device_target(torch_device)
    except Exception as exc:  # noqa: BLE001
        return f"the GPU's compute capability could not be read ({kernels.error_cause(exc)})"
    overlap = kernels.overlap_unavailable(torch_device) is None
    problem = kernels.compile_problem(target, dtype, tensor_cores, overlap)
    if problem:
        return problem
    try:
        agreement = check_fused_matches_torch("tiny", dtype, 2 if tensor_cores else 1, 8, 2, device=torch_device)
    except Exception as exc:  # noqa: BLE001 - a kernel that compiles but does not run here
        return f"the fused kernels did not run on this GPU ({kernels.error_cause(exc)})"
    if not agreement["fused_argmax_exact"] or not agreement["max_rel_logit_error"] < FUSED_CHECK_TOLERANCE[dtype]:
        return (f"the fused kernels decoded a test model unlike PyTorch ops (relative logit error "
                f"{agreement['max_rel_logit_error']:.3g}, own argmax exact: {agreement['fused_argmax_exact']})")
    return None


def fused_kernels_problem(torch_device: str, dtype: str, batch: int) -> str | None:
    """None when the fused kernels for ``batch`` compile for this GPU (:func:`kernels.compile_problem`)
    and decode the ``tiny`` shape like PyTorch ops, teacher-forced over two steps; else why not, in
    one sentence. Checked once per process, device, dtype and product kind (batch 1 or above)."""
    return _fused_problem(str(torch_device), dtype, batch > 1)


def free_memory(device: Device, paths: hostmem.HostPaths = hostmem.DEFAULT_PATHS) -> tuple[int, str]:
    """Bytes free for a KV cache now (after the weights), and where the figure comes from: on a GPU
    ``cudaMemGetInfo`` after emptying torch's cache, as TensorRT-LLM and vLLM read it; on the CPU what
    the host really has (:func:`benchlib.hostmem.available`)."""
    if device.is_cuda:
        import torch

        torch.cuda.synchronize(device.torch_device)
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(device.torch_device)
        return int(free), "free after the weights (cudaMemGetInfo)"
    room = hostmem.available(paths)
    return room.bytes or 0, f"host memory available after the weights ({room.how})"


def kv_pool_size(config: BackendConfig, device: Device,
                 paths: hostmem.HostPaths = hostmem.DEFAULT_PATHS) -> tuple[int | None, str]:
    """``kv_cache: free_memory``: the pool's tokens (:func:`benchlib.llm.model.kv_pool_tokens`) and how
    they were worked out; ``static``: None (the batch's own cache) and a note saying so."""
    if config.kv_cache == "static":
        return None, "static: exactly what the batch needs (batch x longest request)"
    free, where = free_memory(device, paths)
    tokens = kv_pool_tokens(free, config.kv_cache_free_fraction, config.shape, config.dtype, config.kv_cache_max_tokens)
    cap = f", capped at kv_cache_max_tokens={config.kv_cache_max_tokens}" if config.kv_cache_max_tokens else ""
    return tokens, (f"free_memory: {config.kv_cache_free_fraction:g} x {free / 2**30:.2f} GiB {where} / "
                    f"{config.shape.kv_bytes_per_token(config.dtype)} B per token = {tokens} tokens{cap}")


def capture_graph(step: Callable[[], None]):
    """Warm ``step`` up on a side stream, then capture one call of it in a CUDA graph."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(CAPTURE_WARMUP_STEPS):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


class ReferenceBackend(Backend):
    """Static-batch generation with the reference model; every request of a batch shares one timeline."""

    def __init__(self, config: BackendConfig, device: Device, model: ReferenceModel | None = None,
                 overlap: bool | None = None, tiles: Any = None):
        """``overlap``: the fused kernels' programmatic dependent launch (None: where supported);
        ``tiles``: their :class:`benchlib.llm.tiles.TileChoice` (None: :func:`resolve_kernels`'s,
        searched here, before any timing, when this GPU has none measured)."""
        import torch

        if config.mode == "graph" and not device.is_cuda:
            raise SkipCase("skipped: mode graph captures a CUDA graph and needs a GPU; use mode eager on the CPU")
        self.torch, self.device, self.output_len = torch, device, config.output_len
        self.model = model or ReferenceModel(config.shape, config.dtype, device.torch_device, config.seed)
        self.kernel_choice = resolve_kernels(config, device, overlap, tiles)
        self.kv_pool_tokens, self.kv_cache_note = kv_pool_size(config, device)
        try:
            self._build(config, overlap)
        except Exception as exc:
            # auto's fused kernels that fail while the step is built (compiling these tiles, the
            # capture warm-up) give way to PyTorch ops; running out of memory is the case's failure
            if config.kernels != "auto" or self.kernels != "triton" or isinstance(exc, torch.cuda.OutOfMemoryError):
                raise
            from .kernels import error_cause

            self.session = self.step = None
            torch.cuda.empty_cache()
            self.kernel_choice = KernelChoice("torch", f"PyTorch ops because the fused step failed to build "
                                                       f"({error_cause(exc)})")
            self._build(config, overlap)
        self.kv_cache_bytes, self.kv_cache_tokens = self.session.kv_bytes, self.session.kv_capacity_tokens
        self.timer = _EventClock(torch, config.output_len) if device.is_cuda else _HostClock(config.output_len)
        how = "CUDA graph replay" if config.mode == "graph" else "eager step"
        per_token = "cuda_event per decode step" if device.is_cuda else "perf_counter per decode step"
        ops = "fused Triton kernels" if self.kernels == "triton" else "PyTorch ops"
        if self.session.overlap:
            ops += " with programmatic dependent launch"
        details = [self.kernel_choice.why, self.session.tile_choice.describe() if self.session.fused else ""]
        self.clock = (f"{per_token} ({how}, {ops}{', torch.compile' if config.compile else ''}); prefill eager"
                      + "".join(f"; {detail}" for detail in details if detail))

    @property
    def kernels(self) -> str:
        """``triton`` or ``torch``: the decode step's kernels."""
        return self.kernel_choice.kernels

    def _build(self, config: BackendConfig, overlap: bool | None) -> None:
        """The session and its decode step (captured in a CUDA graph in graph mode)."""
        torch = self.torch
        self.session = Session(self.model, config.batch, config.max_tokens, config.output_len,
                               fused=self.kernels == "triton", overlap=overlap, tiles=self.kernel_choice.tiles,
                               kv_pool_tokens=self.kv_pool_tokens)
        step = self.session.decode_step
        if config.compile:
            step = torch.compile(step, dynamic=False)
        with torch.inference_mode():
            self.session.reset()
            self.step = capture_graph(step).replay if config.mode == "graph" else step

    def generate(self, batch: Batch) -> GenerationResult:
        torch = self.torch
        with torch.inference_mode():
            prompts, lengths = prompt_tensors(batch, self.device.torch_device)
            if self.device.is_cuda:
                torch.cuda.synchronize(self.device.torch_device)
            start_ns = time.time_ns()
            self.timer.start()
            self.session.prefill(prompts, lengths)
            self.timer.mark(0)
            for index in range(1, self.output_len):
                self.step()
                self.timer.mark(index)
            offsets = self.timer.offsets_s(self.output_len)
            output_ids = self.session.out.cpu().numpy()
            if not bool(torch.isfinite(self.session.logits).all()):  # after timing: costs no measured time
                raise RuntimeError("the model produced non-finite logits; the result is wrong, not only slow")
        requests = tuple(
            RequestResult(int(length), output_ids[row].copy(), offsets, start_ns)
            for row, length in enumerate(batch.lengths)
        )
        return GenerationResult(requests, shared_timeline=True)


def check_graph_matches_eager(shape: str = "llama-1b", dtype: str = "bf16", batch: int = 1, input_len: int = 128,
                              output_len: int = 64, seed: int = 42, device: str = "cuda",
                              kernels: str = "torch") -> dict[str, Any]:
    """Generate the same prompts with the same weights eagerly and through the CUDA graph.

    Greedy decoding over identical kernels (``kernels``: torch or triton, in both modes) must give
    identical tokens. Returns ``equal``, the number
    of differing tokens and the first difference as ``(row, token index)``. Needs a GPU.
    """
    from ..device import resolve_device
    from .model import SHAPES

    target = resolve_device(device)
    if not target.is_cuda:
        raise SkipCase("skipped: check_graph_matches_eager needs a GPU (CUDA graphs)")
    model = ReferenceModel(SHAPES[shape], dtype, target.torch_device, seed)
    spec = InputSpec(batch, input_len, output_len, SHAPES[shape].vocab, seed=seed)
    tokens = {}
    for mode in ("eager", "graph"):
        config = BackendConfig("reference", SHAPES[shape], dtype, mode, batch, input_len, output_len, seed,
                               kernels=kernels)
        result = ReferenceBackend(config, target, model).generate(spec.batch_at(0))
        tokens[mode] = np.stack([request.output_ids for request in result.requests])
    differ = np.argwhere(tokens["eager"] != tokens["graph"])
    return {
        "equal": not len(differ), "differing_tokens": int(len(differ)), "tokens_compared": int(tokens["eager"].size),
        "first_difference": tuple(int(i) for i in differ[0]) if len(differ) else None,
    }


def check_overlap_matches_sequential(shape: str = "llama-1b", dtype: str = "bf16", batch: int = 1,
                                     input_len: int = 128, steps: int = 64, seed: int = 42,
                                     device: str = "cuda") -> dict[str, Any]:
    """The fused step's graph with programmatic dependent launch against the same kernels and tiles
    launched one after another: every step's logits must be bitwise equal (a kernel reading before
    its wait what its predecessor writes would show here). Returns ``equal``, the steps compared and
    the largest absolute logit difference, and the tiles. Needs a Hopper or newer GPU."""
    import torch

    from ..device import resolve_device
    from . import kernels
    from .model import SHAPES

    target = resolve_device(device)
    unavailable = kernels.overlap_unavailable(target.torch_device)
    if unavailable:
        raise SkipCase(f"skipped: {unavailable}")
    model = ReferenceModel(SHAPES[shape], dtype, target.torch_device, seed)
    prompts = prompt_tensors(InputSpec(batch, input_len, steps + 1, SHAPES[shape].vocab, seed=seed).batch_at(0),
                             target.torch_device)
    logits, tiles = [], None
    with torch.inference_mode():
        for overlap in (True, False):
            session = Session(model, batch, input_len + steps + 1, steps + 1, fused=True, overlap=overlap, tiles=tiles)
            tiles = session.tile_choice  # the overlapped session's, for both
            session.reset()
            graph = capture_graph(session.decode_step)
            session.prefill(*prompts)
            per_step = []
            for _ in range(steps):
                graph.replay()
                per_step.append(session.logits.clone())
            logits.append(torch.stack(per_step).float())
    overlapped, sequential = logits
    return {"equal": bool(torch.equal(overlapped, sequential)), "steps": steps, "batch": batch,
            "max_abs_difference": float((overlapped - sequential).abs().max()), "tiles": tiles.describe()}


def check_fused_matches_torch(shape: str = "llama-1b", dtype: str = "bf16", batch: int = 1, input_len: int = 128,
                              steps: int = 32, seed: int = 42, device: str = "cuda", tiles: Any = None) -> dict[str, Any]:
    """Decode the same prompts through the fused Triton kernels and the PyTorch ops, teacher-forced.

    Both sessions share weights and prefill; after every decode step the logits are compared and
    the fused session is handed the PyTorch session's tokens, so one near-tie cannot send the two
    down different paths. Returns the worst relative logit error (max |a - b| / max |b|), the
    lowest cosine similarity of a row's logits, the fraction of steps whose greedy tokens agree, and
    whether the fused token (the LM head's argmax epilogue) always equals the argmax of its logits,
    and the fused session's tiles (``tiles``: a TileChoice to use). The two round at different points, so agreement is to the dtype's precision, not bitwise.
    """
    import torch

    from ..device import resolve_device
    from .model import SHAPES

    target = resolve_device(device)
    model = ReferenceModel(SHAPES[shape], dtype, target.torch_device, seed)
    prompts = InputSpec(batch, input_len, steps + 1, SHAPES[shape].vocab, seed=seed).batch_at(0)
    with torch.inference_mode():
        tokens, lengths = prompt_tensors(prompts, target.torch_device)
        plain, fused = (Session(model, batch, input_len + steps + 1, steps + 1, fused=f, tiles=tiles if f else None)
                        for f in (False, True))
        for session in (plain, fused):
            session.prefill(tokens, lengths)
        worst_error, lowest_cosine, agreeing, own_argmax = 0.0, 1.0, 0, True
        for _ in range(steps):
            plain.decode_step()
            fused.decode_step()
            reference, candidate = plain.logits.float(), fused.logits.float()
            worst_error = max(worst_error, float((candidate - reference).abs().max() / reference.abs().max()))
            cosine = torch.nn.functional.cosine_similarity(candidate, reference, dim=-1).min()
            lowest_cosine = min(lowest_cosine, float(cosine))
            agreeing += int(torch.equal(candidate.argmax(-1), reference.argmax(-1)))
            own_argmax &= torch.equal(fused.tokens, fused.logits.argmax(-1))  # the fused argmax epilogue
            fused.tokens.copy_(plain.tokens)
    return {"max_rel_logit_error": worst_error, "min_cosine": lowest_cosine,
            "token_agreement": agreeing / steps, "fused_argmax_exact": bool(own_argmax), "steps": steps,
            "batch": batch, "tiles": fused.tile_choice.describe()}
