"""Tiles of the fused decode products per GPU: measured by a short search, cached, shipped.

The fused decode step's matrix products (:func:`benchlib.llm.kernels.gemv`: QKV, O, gate/up, down,
the LM head) run fastest with tiles that depend on the GPU: on an H200 the H100's tiles gave 68 % of
the roofline where the H100 reached 79 %. A :class:`TileChoice` holds one set of tiles for a model
shape, dtype, batch bucket (1; then 16, 32, 64: the tensor-core product's padded batch) and launch
mode (with or without programmatic dependent launch), and where it came from. :func:`choose` looks,
in this order:

1. ``file``: the table named by ``BENCHLIB_LLM_TILES`` (pins one table for every arm of a run);
2. ``shipped``: ``tiles.json`` next to this module, measured on GPUs of the same product here
   (whatever their driver and Triton version: every arm and machine with that GPU gets the same
   tiles);
3. ``cache``: the user's cache, ``$BENCHLIB_CACHE_DIR`` or ``$XDG_CACHE_HOME/benchlib`` or
   ``~/.cache/benchlib``, file :data:`CACHE_FILE`, keyed by GPU product, driver and Triton version
   (a new driver or Triton misses it);
4. ``search``: when allowed, a short measured search (:func:`search`), written to the cache;
5. ``default``: :func:`benchlib.llm.kernels.default_config`.

The search never runs inside a timed generation: the reference backend resolves its tiles while it
is built, before the warm-up (a first invocation on an unknown GPU takes a minute longer to set up),
and ``python -m benchlib.llm.tiles`` runs it ahead of time. Each product is timed as the decode step
sees it: many calls captured in one CUDA graph, each on its own copy of the weight so that the L2
cannot serve them, launched with programmatic dependent launch where the step uses it, so
consecutive calls overlap; the median replay. cuBLAS (``torch.matmul``) is timed on the same
operands, and above batch 1 ``kernels: auto`` fuses only where the fused products took less time per
step than cuBLAS (:attr:`TileChoice.fused_beats_cublas`).

Table files (shipped, cache, ``BENCHLIB_LLM_TILES``) share one versioned JSON format
(:data:`SCHEMA`): ``{"schema", "version", "entries": [...]}``, one entry per GPU product, driver,
Triton version, shape, dtype, bucket and launch mode, with the tiles (``8x2048w2``,
``tc64x128w4s4``: :meth:`GemvConfig.describe`) and the weight-read bandwidth measured per product,
fused and cuBLAS. ``python -m benchlib.llm.tiles --json FILE`` writes entries in that format, to be
pasted into ``tiles.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .kernels import Argmax, GemvConfig, default_config, finish_step_, gemv
from .model import DTYPE_BYTES, SHAPES, ModelShape

SCHEMA = "benchlib-llm-tiles"
VERSION = 1
CACHE_FILE = "llm-tiles-v1.json"
SHIPPED = Path(__file__).with_name("tiles.json")
TILES_ENV = "BENCHLIB_LLM_TILES"
NO_SEARCH_ENV = "BENCHLIB_LLM_NO_TILE_SEARCH"
SOURCES = ("file", "shipped", "cache", "search", "default")
#: Batch buckets: the broadcast-and-sum product at batch 1, the tensor-core product's padded batch above.
BUCKETS = (1, 16, 32, 64)

#: Broadcast-and-sum tiles tried at batch 1: (rows, columns, warps). Rows x columns above 16k
#: elements spill registers except with 8 warps (32k).
BROADCAST_CANDIDATES = ((2, 2048, 2), (4, 2048, 2), (4, 2048, 4), (8, 2048, 2), (8, 2048, 4), (16, 2048, 8),
                        (2, 1024, 4), (4, 1024, 2), (4, 1024, 4), (8, 1024, 4), (16, 1024, 4))
#: Tensor-core tiles tried above batch 1: (weight rows, columns, warps, pipeline stages). Tiles whose
#: stages do not fit in shared memory fail to launch and are skipped.
TENSOR_CORE_CANDIDATES = ((16, 128, 4, 4), (16, 256, 4, 4), (16, 256, 4, 6), (32, 128, 4, 4), (32, 256, 4, 3),
                          (64, 64, 4, 5), (64, 128, 4, 3), (64, 128, 4, 4), (64, 128, 8, 4), (128, 64, 4, 4),
                          (128, 64, 8, 3))
#: Weight bytes streamed per timed replay, as a multiple of the L2 (at least two calls per replay).
STREAM_L2_MULTIPLE = 4
#: Weight bytes timed per candidate (replays x bytes per replay), at least MIN_REPLAYS replays.
TIMED_BYTES = 1.5e9
MIN_REPLAYS, MAX_REPLAYS = 3, 10


# --------------------------------------------------------------------------- what is tuned

@dataclass(frozen=True)
class Product:
    """One matrix product of the decode step: ``n`` outputs (``2 n`` weight rows for SwiGLU) over ``k``."""

    name: str
    n: int
    k: int
    per_step: int  # calls per decode step
    norm: bool = False
    residual: bool = False
    swiglu: bool = False
    argmax: bool = False

    @property
    def rows(self) -> int:
        return 2 * self.n if self.swiglu else self.n

    def weight_bytes(self, dtype: str) -> int:
        return self.rows * self.k * DTYPE_BYTES[dtype]

    def default(self, batch: int, overlap: bool) -> GemvConfig:
        return default_config(self.norm, self.residual, self.swiglu, batch, self.argmax, overlap)


def products(shape: ModelShape) -> tuple[Product, ...]:
    """The products of one decode step, in the order the fused step launches them."""
    qkv = (shape.heads + 2 * shape.kv_heads) * shape.head_dim
    layers = shape.layers
    return (
        Product("qkv", qkv, shape.hidden, layers, norm=True),
        Product("o", shape.hidden, shape.heads * shape.head_dim, layers, residual=True),
        Product("gate_up", shape.intermediate, shape.hidden, layers, norm=True, swiglu=True),
        Product("down", shape.hidden, shape.intermediate, layers, residual=True),
        Product("lm_head", shape.vocab, shape.hidden, 1, norm=True, argmax=True),
    )


def batch_bucket(batch: int) -> int:
    """The tiles' batch: 1, else the tensor-core product's padded batch (16, 32 or 64)."""
    if batch < 1 or batch > BUCKETS[-1]:
        raise ValueError(f"the fused decode kernels serve batch 1 to {BUCKETS[-1]}, not {batch}")
    return next(bucket for bucket in BUCKETS if batch <= bucket)


@dataclass(frozen=True)
class TileKey:
    """What one set of tiles is for."""

    shape: str
    dtype: str
    bucket: int
    overlap: bool

    def label(self) -> str:
        return (f"{self.shape} {self.dtype} batch {'1' if self.bucket == 1 else f'<= {self.bucket}'}, "
                f"{'with' if self.overlap else 'without'} programmatic dependent launch")


@dataclass(frozen=True)
class GpuIdentity:
    """The GPU product, driver and Triton version a measurement holds for."""

    gpu: str
    driver: str
    triton: str


def identify(torch_device: str) -> GpuIdentity:
    """This process's GPU product name, NVIDIA driver version and Triton version."""
    import torch
    import triton

    return GpuIdentity(torch.cuda.get_device_name(torch.device(torch_device)), driver_version(), triton.__version__)


def driver_version() -> str:
    """The NVIDIA kernel driver's version, from /proc/driver/nvidia/version or NVML; "unknown" without."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
        if match:
            return match.group(1)
    except OSError:
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return "unknown"


# --------------------------------------------------------------------------- a choice of tiles

@dataclass(frozen=True)
class TileChoice:
    """Tiles per product for one :class:`TileKey`, where they came from, and what was measured."""

    key: TileKey
    tiles: dict[str, GemvConfig]
    source: str  # one of SOURCES
    measured_on: GpuIdentity | None = None
    measured_at: str | None = None  # UTC date
    fused_gbs: dict[str, float | None] = field(default_factory=dict)  # weight bytes read / time, per product
    cublas_gbs: dict[str, float | None] = field(default_factory=dict)
    how: str = ""  # how the figures were measured
    note: str = ""  # e.g. why no search ran

    def step_seconds(self, shape: ModelShape, which: str) -> float | None:
        """Seconds of one decode step's products at the measured rates (``which``: fused or cublas)."""
        rates = self.fused_gbs if which == "fused" else self.cublas_gbs
        seconds = 0.0
        for product in products(shape):
            rate = rates.get(product.name)
            if not rate:
                return None
            seconds += product.per_step * product.weight_bytes(self.key.dtype) / (rate * 1e9)
        return seconds

    def fused_beats_cublas(self, shape: ModelShape) -> bool | None:
        """Whether the fused products took less time per step than cuBLAS; None where not measured."""
        fused, cublas = self.step_seconds(shape, "fused"), self.step_seconds(shape, "cublas")
        return None if fused is None or cublas is None else fused < cublas

    def describe(self) -> str:
        """One line for the results: the tiles, their source and provenance."""
        where = {"file": f"the table in {TILES_ENV}", "shipped": "the shipped table", "cache": "the tile cache",
                 "search": "a search on this GPU", "default": "the defaults"}[self.source]
        origin = ""
        if self.measured_on:
            origin = (f" ({self.measured_on.gpu}, driver {self.measured_on.driver}, Triton {self.measured_on.triton}"
                      f"{', ' + self.measured_at if self.measured_at else ''})")
        tiles = " ".join(f"{name} {config.describe()}" for name, config in self.tiles.items())
        return f"tiles from {where}{origin}: {tiles}{'; ' + self.note if self.note else ''}"

    def entry(self) -> dict[str, Any]:
        """The table entry (see the module's docstring)."""
        identity = asdict(self.measured_on) if self.measured_on else {"gpu": None, "driver": None, "triton": None}
        return {**identity, **asdict(self.key), "measured_at": self.measured_at,
                "tiles": {name: config.describe() for name, config in self.tiles.items()},
                "fused_gbs": self.fused_gbs, "cublas_gbs": self.cublas_gbs, "how": self.how}


def default_choice(shape: ModelShape, key: TileKey, note: str = "") -> TileChoice:
    return TileChoice(key, {p.name: p.default(key.bucket, key.overlap) for p in products(shape)}, "default", note=note)


def _choice_from_entry(entry: dict[str, Any], shape: ModelShape, source: str) -> TileChoice:
    key = TileKey(entry["shape"], entry["dtype"], int(entry["bucket"]), bool(entry["overlap"]))
    tiles = {name: GemvConfig.parse(text) for name, text in entry["tiles"].items()}
    missing = {p.name for p in products(shape)} - set(tiles)
    if missing:
        raise ValueError(f"entry for {key.label()} lacks tiles for {', '.join(sorted(missing))}")
    return TileChoice(key, tiles, source, GpuIdentity(entry["gpu"], entry["driver"], entry["triton"]),
                      entry.get("measured_at"), dict(entry.get("fused_gbs") or {}),
                      dict(entry.get("cublas_gbs") or {}), entry.get("how", ""))


# --------------------------------------------------------------------------- table files

class TableError(ValueError):
    """A tile table that cannot be read (the message is one sentence naming the file)."""


def read_table(path: Path) -> list[dict[str, Any]]:
    """The entries of a table file; [] when it does not exist; :class:`TableError` when unreadable."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise TableError(f"{path} cannot be read ({exc.strerror})") from None
    try:
        table = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TableError(f"{path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(table, dict) or table.get("schema") != SCHEMA or not isinstance(table.get("entries"), list):
        raise TableError(f"{path} is not a benchlib tile table (no \"schema\": \"{SCHEMA}\" with \"entries\")")
    if table.get("version") != VERSION:
        raise TableError(f"{path} is a version {table.get('version')} tile table; this benchlib reads version {VERSION}")
    return table["entries"]


def table_json(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schema": SCHEMA, "version": VERSION, "entries": entries}


def cache_dir() -> Path:
    """``$BENCHLIB_CACHE_DIR``, else ``$XDG_CACHE_HOME/benchlib``, else ``~/.cache/benchlib``."""
    if os.environ.get("BENCHLIB_CACHE_DIR"):
        return Path(os.environ["BENCHLIB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "benchlib"


def cache_path() -> Path:
    return cache_dir() / CACHE_FILE


def _matches(entry: dict[str, Any], key: TileKey, gpu: str) -> bool:
    return (entry.get("gpu") == gpu and entry.get("shape") == key.shape and entry.get("dtype") == key.dtype
            and entry.get("bucket") == key.bucket and entry.get("overlap") == key.overlap)


def lookup(entries: list[dict[str, Any]], key: TileKey, identity: GpuIdentity, exact: bool) -> dict[str, Any] | None:
    """The latest entry for ``key`` on ``identity.gpu``; with ``exact`` only one measured with the same
    driver and Triton version."""
    found = [entry for entry in entries if _matches(entry, key, identity.gpu)
             and (not exact or (entry.get("driver"), entry.get("triton")) == (identity.driver, identity.triton))]
    return max(found, key=lambda entry: entry.get("measured_at") or "") if found else None


def store(path: Path, choice: TileChoice) -> None:
    """Add (or replace) ``choice``'s entry in the table at ``path``, atomically. An unreadable table
    is replaced (a cache is rebuilt, never trusted half-read)."""
    from .._atomic import write_json

    try:
        entries = read_table(path)
    except TableError:
        entries = []
    mine = choice.entry()
    same = ("gpu", "driver", "triton", "shape", "dtype", "bucket", "overlap")
    entries = [entry for entry in entries if any(entry.get(k) != mine[k] for k in same)] + [mine]
    write_json(path, table_json(entries))


# --------------------------------------------------------------------------- the choice

def choose(shape: ModelShape, dtype: str, batch: int, overlap: bool, torch_device: str, *, search_allowed: bool,
           log: Callable[[str], None] | None = None, identity: GpuIdentity | None = None) -> TileChoice:
    """The tiles for ``shape`` at ``batch`` on ``torch_device`` (see the module's docstring for the order).

    ``search_allowed``: run :func:`search` on a miss (it takes a minute; never from a timed section).
    ``BENCHLIB_LLM_NO_TILE_SEARCH=1`` forbids it. An unreadable cache is reported in the choice's note
    and ignored; an unreadable ``BENCHLIB_LLM_TILES`` table raises :class:`TableError`. ``identity``:
    the GPU, driver and Triton version to look up (default: :func:`identify` ``torch_device``).
    """
    key = TileKey(shape.name, dtype, batch_bucket(batch), overlap)
    identity = identity or identify(torch_device)
    pinned = os.environ.get(TILES_ENV)
    if pinned:
        entry = lookup(read_table(Path(pinned)), key, identity, exact=False)
        if entry:
            return _choice_from_entry(entry, shape, "file")
    entry = lookup(read_table(SHIPPED), key, identity, exact=False)
    if entry:
        return _choice_from_entry(entry, shape, "shipped")
    note = ""
    try:
        entry = lookup(read_table(cache_path()), key, identity, exact=True)
    except TableError as exc:
        note = f"{exc}: ignored, and rewritten by the next tile search (delete it to silence this)"
        warnings.warn(note, stacklevel=2)
        entry = None
    if entry:
        return _choice_from_entry(entry, shape, "cache")
    if not search_allowed or os.environ.get(NO_SEARCH_ENV) == "1":
        why = f"{NO_SEARCH_ENV}=1" if search_allowed else "no search here"
        return default_choice(shape, key, "; ".join(filter(None, [note, f"no measured tiles for this GPU ({why})"])))
    try:
        choice = search(shape, dtype, key.bucket, overlap, torch_device, log=log)
    except Exception as exc:  # noqa: BLE001 - no measured tiles is not a reason to fail the case
        from .kernels import error_cause

        return default_choice(shape, key, "; ".join(filter(None, [note, f"the tile search failed ({error_cause(exc)})"])))
    try:
        store(cache_path(), choice)
    except OSError as exc:
        note = "; ".join(filter(None, [note, f"not cached: {cache_path()} cannot be written ({exc.strerror})"]))
    return replace(choice, note=note) if note else choice


def for_session(shape: ModelShape, dtype: str, batch: int, overlap: bool, torch_device: str) -> TileChoice:
    """A session's tiles when none were given: :func:`choose` without a search on a GPU (the backend
    searches, if at all, before it builds the session), the defaults on the CPU (the interpreter)."""
    if not str(torch_device).startswith("cuda"):
        return default_choice(shape, TileKey(shape.name, dtype, batch_bucket(batch), overlap),
                              "Triton's interpreter on the CPU")
    return choose(shape, dtype, batch, overlap, torch_device, search_allowed=False)


# --------------------------------------------------------------------------- measuring

@dataclass
class Operands:
    """A product's operands on the GPU: weight copies beyond the L2 and the buffers a call writes."""

    weights: list[Any]
    calls: int  # calls per replay, cycling through the copies
    x: Any
    out: Any
    wide: Any  # cuBLAS's output: every weight row
    norm: Any
    step_buffers: tuple[Any, ...]  # tokens, positions, step counter, outputs (the step end)


def make_operands(torch, product: Product, batch: int, dtype: str, device: str, l2_bytes: int) -> Operands:
    """Copies of the weight so that a copy is read again only after twice the L2 of other bytes, and
    enough calls that a replay streams STREAM_L2_MULTIPLE times the L2 (at least two calls)."""
    from .model import torch_dtype

    tdtype = torch_dtype(dtype)
    size = product.weight_bytes(dtype)
    copies = 1 if size >= 2 * l2_bytes else -(-2 * l2_bytes // size) + 1
    calls = max(2, copies, -(-STREAM_L2_MULTIPLE * l2_bytes // size))
    return Operands(
        weights=[torch.randn(product.rows, product.k, device=device, dtype=tdtype) * 0.02 for _ in range(copies)],
        calls=calls,
        x=torch.randn(batch, product.k, device=device, dtype=tdtype),
        out=torch.zeros(batch, product.n, device=device, dtype=tdtype),
        wide=torch.empty(batch, product.rows, device=device, dtype=tdtype),
        norm=torch.ones(product.k, device=device, dtype=tdtype) if product.norm else None,
        step_buffers=(torch.zeros(batch, dtype=torch.long, device=device),
                      torch.zeros(batch, dtype=torch.long, device=device),
                      torch.zeros(1, dtype=torch.long, device=device),
                      torch.zeros(batch, 1 << 16, dtype=torch.long, device=device)),
    )


def product_call(torch, ops: Operands, product: Product, config: GemvConfig | None, overlap: bool = False,
                 warmup: bool = False) -> Callable[[Any], None]:
    """One call of the product on weight ``w``: the fused kernel with ``config`` (and, for the LM head,
    the step end that picks the token), or with ``config=None`` cuBLAS (and ``torch.argmax``).
    ``warmup``: compile only (Triton's ``warmup``), launching nothing."""
    x, out = ops.x, ops.out
    if config is None:
        def call(w) -> None:
            torch.matmul(x, w.t(), out=ops.wide)
            if product.argmax:
                ops.wide.argmax(dim=-1)
        return call
    argmax = Argmax(x.shape[0], product.n, x.device, config) if product.argmax else None

    def fused(w) -> None:
        gemv(x, w, out, norm_weight=ops.norm, residual=product.residual, swiglu=product.swiglu, argmax=argmax,
             config=config, overlap=overlap, warmup=warmup)
        if argmax is not None:
            finish_step_(argmax, *ops.step_buffers, overlap=overlap, warmup=warmup)
    return fused


def graph_seconds(torch, call: Callable[[Any], None], ops: Operands, replays: int) -> float:
    """Median seconds per call of ``ops.calls`` calls captured in one CUDA graph (after one replay)."""
    calls = [ops.weights[i % len(ops.weights)] for i in range(ops.calls)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for w in calls[:2]:
            call(w)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for w in calls:
            call(w)
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / len(calls))
    del graph
    return statistics.median(times)


def replays_for(product: Product, ops: Operands, dtype: str) -> int:
    per_replay = ops.calls * product.weight_bytes(dtype)
    return max(MIN_REPLAYS, min(MAX_REPLAYS, -(-int(TIMED_BYTES) // per_replay)))


def candidate_tiles(product: Product, batch: int, overlap: bool) -> list[GemvConfig]:
    """The tiles :func:`search` tries for ``product`` at ``batch`` (its default first)."""
    from .kernels import _next_power_of_2

    widest = _next_power_of_2(product.k)
    if batch == 1:
        candidates = [GemvConfig(n, k, w) for n, k, w in BROADCAST_CANDIDATES
                      if k <= widest and (n * k <= 16384 or (n * k <= 32768 and w == 8))]
    else:
        candidates = [GemvConfig(n, k, w, s, tensor_cores=True) for n, k, w, s in TENSOR_CORE_CANDIDATES
                      if k <= max(widest, 64)]
    default = product.default(batch, overlap)
    return [default] + [config for config in candidates if config != default]


def precompile(torch, ops: Operands, product: Product, configs: list[GemvConfig], overlap: bool) -> None:
    """Compile every candidate before timing, in parallel threads where Triton can (``AsyncCompileMode``,
    Triton >= 3.5); a candidate that fails to compile fails again, and is skipped, when timed."""
    import triton

    calls = [product_call(torch, ops, product, config, overlap, warmup=True) for config in configs]
    mode = getattr(triton, "AsyncCompileMode", None)
    if mode is None:
        return
    from concurrent.futures import ThreadPoolExecutor

    try:
        with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool, mode(pool, ignore_errors=True):
            for call in calls:
                try:
                    call(ops.weights[0])
                except Exception:  # noqa: BLE001 - a tile the compiler refuses is skipped when timed
                    pass
    except Exception:  # noqa: BLE001 - compiling ahead only saves time: the timing compiles what is missing
        pass


def search(shape: ModelShape, dtype: str, bucket: int, overlap: bool, torch_device: str,
           log: Callable[[str], None] | None = None) -> TileChoice:
    """Time :func:`candidate_tiles` and cuBLAS for every product of ``shape`` at batch ``bucket``; the
    fastest tiles per product. About 10 candidates per product; a minute on an H100."""
    import torch

    log = log or (lambda line: None)
    device = torch.device(torch_device)
    l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 64 << 20
    tiles, fused_gbs, cublas_gbs = {}, {}, {}
    with torch.cuda.device(device):
        for product in products(shape):
            ops = make_operands(torch, product, bucket, dtype, torch_device, l2_bytes)
            replays = replays_for(product, ops, dtype)
            candidates = candidate_tiles(product, bucket, overlap)
            precompile(torch, ops, product, candidates, overlap)
            size = product.weight_bytes(dtype)
            cublas_gbs[product.name] = size / graph_seconds(torch, product_call(torch, ops, product, None), ops,
                                                            replays) / 1e9
            timed = []
            for config in candidates:
                try:
                    seconds = graph_seconds(torch, product_call(torch, ops, product, config, overlap), ops, replays)
                except Exception as exc:  # noqa: BLE001 - e.g. shared memory exceeded: skipped, not fatal
                    log(f"  {product.name} {config.describe()}: skipped ({type(exc).__name__})")
                    continue
                timed.append((seconds, config))
                log(f"  {product.name} {config.describe()}: {size / seconds / 1e9:.0f} GB/s")
            if not timed:
                raise RuntimeError(f"no tile of the {product.name} product ran on {torch.cuda.get_device_name(device)}")
            seconds, best = min(timed, key=lambda item: item[0])
            tiles[product.name], fused_gbs[product.name] = best, size / seconds / 1e9
            log(f"{product.name}: {best.describe()} {fused_gbs[product.name]:.0f} GB/s, cuBLAS "
                f"{cublas_gbs[product.name]:.0f} GB/s")
            del ops
            torch.cuda.empty_cache()
    how = (f"benchlib.llm.tiles.search: median of {MIN_REPLAYS}-{MAX_REPLAYS} CUDA-graph replays, weights beyond "
           f"the L2{', consecutive calls overlapped (PDL)' if overlap else ''}")
    return TileChoice(TileKey(shape.name, dtype, bucket, overlap), tiles, "search", identify(torch_device),
                      datetime.now(timezone.utc).date().isoformat(), fused_gbs, cublas_gbs, how)


# --------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    """``python -m benchlib.llm.tiles``: search the tiles of this GPU ahead of a run."""
    from .kernels import overlap_unavailable

    parser = argparse.ArgumentParser(prog="python -m benchlib.llm.tiles", description=main.__doc__)
    parser.add_argument("--shape", default="llama-1b", choices=sorted(set(SHAPES) - {"tiny"}))
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 32, 64],
                        help="batches whose buckets to search (1, 16, 32, 64)")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--json", type=Path, help="also write the entries to this file (the shipped table's format)")
    parser.add_argument("--no-cache", action="store_true", help="do not write the user cache")
    args = parser.parse_args(argv)
    try:
        buckets = sorted({batch_bucket(batch) for batch in args.batch})
    except ValueError as exc:
        print(f"--batch: {exc}", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("python -m benchlib.llm.tiles measures on a GPU; torch sees none here.", file=sys.stderr)
        return 2
    overlap = overlap_unavailable(args.device) is None
    shape, entries = SHAPES[args.shape], []
    for bucket in buckets:
        choice = search(shape, args.dtype, bucket, overlap, args.device, log=print)
        if not args.no_cache:
            store(cache_path(), choice)
        entries.append(choice.entry())
        print(f"{choice.key.label()}: {choice.describe()}; fused products beat cuBLAS: "
              f"{choice.fused_beats_cublas(shape)}")
    if args.json:
        from .._atomic import write_json

        write_json(args.json, table_json(entries))
    print(f"cache: {'not written' if args.no_cache else cache_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
