"""Collectives over every GPU of the host: all-reduce, all-gather, reduce-scatter, broadcast.

One case is one collective (``op``) in one ``dtype`` over a sweep of message sizes, ``min_bytes``
to ``max_bytes`` by ``step_factor`` (nccl-tests' ``-b -e -f``). The invocation starts one process
per GPU (:mod:`benchlib._collectives_worker`; ``torch.distributed`` with NCCL), or ``ranks`` CPU
processes with gloo (2 by default) when there is no GPU, and waits for them. Per size, every rank
first checks one collective against inputs whose sum is exact, then warms up and takes samples with
the shared timer (CUDA events back to back on a GPU, ``perf_counter_ns`` on the CPU, rank 0's
stopping rule for all); a sample's time is the mean over ranks, as nccl-tests averages them.

Metrics (names say what they are; sizes as ``8B``, ``64KiB``, ``1GiB``):

* ``time@<size>`` (s, lower is better): one collective; for small sizes this is its latency.
  ``work`` is nccl-tests' size S in bytes, so the derived rate S/t is its *algorithm bandwidth*.
* ``busbw@<size>`` (GB/s, higher is better), sizes from ``busbw_min_bytes`` with 2+ ranks:
  nccl-tests' *bus bandwidth*, algbw x 2(n-1)/n (all-reduce), (n-1)/n (all-gather,
  reduce-scatter), 1 (broadcast) (:mod:`benchlib.nccl`), computed per sample from ``time@``.
* context, one reading per invocation: ``ranks``; with NCCL, ``transport_<class>`` (connections)
  for p2p, shm, net_socket, net_ib, net_other, other, counted from the NCCL_DEBUG=INFO log of every
  rank, the transports as NCCL named them (``P2P/CUMEM/read``, ``SHM/direct/direct``, ...) in the note.

The workers get ``NCCL_NVLS_ENABLE=0``, ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` and
``NVSHMEM_DISABLE_NVLS=1`` unless the environment sets them (so no NVLink multicast object is ever
created), and ``NCCL_DEBUG=INFO`` into per-rank files. A job that fails (NCCL cannot create its
/dev/shm segment under Docker's 64 MiB default, a rank dies, ``timeout_s`` passes, a wrong result)
fails the case with the reason and, where known, the fix; its other cases go on.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from .. import _process
from ..device import Device
from ..diagnosis.classes import COLLECTIVES, HOST, SHARED_MEMORY, Sensitivity
from ..errors import SkipCase
from ..metricspec import CONTEXT, HIGHER, PERFORMANCE, MetricSpec, time_metric
from ..nccl import (ELEMENT_BYTES, DebugLog, Shape, busbw_factor, diagnose_failure, parse_debug_log, shape, size_label,
                    size_sweep)
from ..params import CommonParams
from ..timer import Sample
from . import Metric, Workload
from ._support import point_metric, shm_space

MIB = 1 << 20
MAX_BYTES = 64 << 30
#: Set in the workers unless the environment already sets them: no NVLink SHARP (NVLS) multicast.
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
PEER_GRACE_S = 15.0  # after one rank fails, how long the others get to fail or finish on their own
WORKER = "benchlib._collectives_worker"


class CollectivesParams(CommonParams):
    device: Literal["auto", "cpu", "cuda"] = "auto"  # cuda: every GPU (one rank each); cpu: gloo ranks
    op: Literal["all_reduce", "all_gather", "reduce_scatter", "broadcast"] = "all_reduce"
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    min_bytes: int = Field(8, ge=1, le=MAX_BYTES)  # nccl-tests -b
    max_bytes: int = Field(1 * MIB, ge=1, le=MAX_BYTES)  # nccl-tests -e
    step_factor: int = Field(2, ge=2, le=1 << 20)  # nccl-tests -f
    ranks: int | None = Field(None, ge=1, le=1024)  # None: every GPU, or 2 CPU processes without one
    busbw_min_bytes: int = Field(1 * MIB, ge=1)  # sizes from here also get busbw@<size>
    check: bool = True  # check one collective per size against the exact result
    timeout_s: float = Field(600.0, gt=0)  # the whole sweep; the ranks are killed after it
    # the timer's settings apply to each message size
    warmup: int = Field(5, ge=0)
    max_samples: int = Field(100, ge=1)
    max_time_s: float = Field(1.0, gt=0)
    target_rel_ci: float = Field(0.01, gt=0, lt=1)

    @field_validator("max_bytes")
    @classmethod
    def _not_below_min(cls, value: int, info: Any) -> int:
        low = info.data.get("min_bytes")
        if low is not None and value < low:
            raise ValueError(f"it must be at least min_bytes ({low})")
        return value

    def sizes(self) -> list[int]:
        return size_sweep(self.min_bytes, self.max_bytes, self.step_factor)


class CollectiveFailed(RuntimeError):
    """The ranks of a collectives job did not all finish with exact results."""


@dataclass(frozen=True)
class Plan:
    backend: str  # "nccl" | "gloo"
    ranks: int


def plan(params: CollectivesParams, device: Device) -> Plan:
    """NCCL over every visible GPU (or ``ranks`` of them), gloo over ``ranks`` CPU processes."""
    import torch.distributed as dist

    if not device.is_cuda:
        if not dist.is_gloo_available():
            raise SkipCase("skipped: this torch has no gloo backend (torch.distributed.is_gloo_available() is False)")
        return Plan("gloo", params.ranks or 2)
    import torch

    if not dist.is_nccl_available():
        raise SkipCase("skipped: this torch has no NCCL backend (torch.distributed.is_nccl_available() is False)")
    visible = torch.cuda.device_count()
    ranks = params.ranks or visible
    if ranks > visible:
        raise SkipCase(f"skipped: ranks={ranks} but {visible} GPU(s) are visible")
    if ranks < 2:
        raise SkipCase("skipped: one GPU visible; a collective needs 2+ GPUs to move data between them "
                       "(ranks: 1 times single-rank NCCL calls, without bus traffic)")
    return Plan("nccl", ranks)


def worker_env(job_dir: Path, base: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """The ranks' environment and what benchlib set in it (for the record)."""
    base = dict(os.environ if base is None else base)
    env, notes = dict(base), []
    for key, value in NO_MULTICAST.items():
        if key in base:
            notes.append(f"{key}={base[key]} (from the environment)")
        else:
            env[key] = value
            notes.append(f"{key}={value}")
    if base.get("NCCL_DEBUG", "").upper() not in ("INFO", "TRACE"):
        env["NCCL_DEBUG"] = "INFO"  # into the files below, not the notebook
    env["NCCL_DEBUG_FILE"] = str(job_dir / "nccl.%h.%p.log")
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, base.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env, notes


@dataclass
class JobOutcome:
    records: list[dict[str, Any]]  # rank-<r>.json of every rank that wrote one
    exit_codes: list[int | None]
    logs: list[str]  # each rank's stdout+stderr tail
    debug: DebugLog
    timed_out: bool
    killed: bool


def run_job(job_dir: Path, config: dict[str, Any], ranks: int, timeout_s: float,
            env: dict[str, str]) -> JobOutcome:
    """Start the ranks, wait for all of them (a failed rank's peers get PEER_GRACE_S), read what they left."""
    config_path = job_dir / "config.json"
    config_path.write_text(json.dumps(config))
    logs = [open(job_dir / f"rank-{rank}.log", "wb") for rank in range(ranks)]
    procs: list[subprocess.Popen] = []
    timed_out = killed = False
    try:
        for rank in range(ranks):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", WORKER, str(config_path), str(rank)], env=env, stdout=logs[rank],
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_process._die_with_parent()))
        deadline, failed_at = time.monotonic() + timeout_s, None
        while any(proc.poll() is None for proc in procs):
            now = time.monotonic()
            if failed_at is None and any(proc.poll() not in (None, 0) for proc in procs):
                failed_at = now
            if now > deadline or (failed_at is not None and now - failed_at > PEER_GRACE_S):
                timed_out = now > deadline
                break
            time.sleep(0.05)
    finally:
        for proc in procs:
            if proc.poll() is None:
                killed = True
                _process.stop_tree(proc)
        for log in logs:
            log.close()
    records = []
    for rank in range(ranks):
        path = job_dir / f"rank-{rank}.json"
        if path.is_file():
            records.append(json.loads(path.read_text()))
    debug = DebugLog()
    for path in sorted(job_dir.glob("nccl.*.log")):
        with open(path, errors="replace") as handle:
            parse_debug_log(handle, into=debug)
    tails = [_tail(job_dir / f"rank-{rank}.log") for rank in range(ranks)]
    return JobOutcome(records, [proc.returncode for proc in procs], tails, debug, timed_out, killed)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running (killed)"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def failure_message(params: CollectivesParams, job: Plan, outcome: JobOutcome, space: tuple[int, int] | None) -> str:
    """One line: what failed, why (the known reason and its fix first), and the first rank's error."""
    errors = [record["error"] for record in outcome.records if "error" in record]
    diagnosis = diagnose_failure([*errors, *outcome.debug.warnings, *outcome.logs])
    what = f"{params.op} over {job.ranks} ranks ({job.backend})"
    if outcome.timed_out:
        cause = f"did not finish within timeout_s={params.timeout_s:g} s (the ranks were killed)"
    else:
        states = ", ".join(f"rank {rank}: {_exit_text(code)}" for rank, code in enumerate(outcome.exit_codes)
                           if code != 0)
        cause = f"failed ({states})"
    parts = [f"{what} {cause}"]
    if diagnosis:
        parts.append(diagnosis.reason)
    parts.append(_shm_note(space))
    if diagnosis and diagnosis.fix:
        parts.append(f"fix: {diagnosis.fix}")
    if outcome.debug.warnings:
        parts.append(f"NCCL WARN: {outcome.debug.warnings[0]}")
    detail = errors[0] if errors else next((tail.splitlines()[-1] for tail in outcome.logs if tail.strip()), "")
    if detail:
        parts.append(detail)
    return "; ".join(parts).replace("\n", " ")


def _shm_note(space: tuple[int, int] | None) -> str:
    if space is None:
        return "/dev/shm: not present"
    size, free = space
    return f"/dev/shm: {free / MIB:.1f} MiB free of {size / MIB:.1f} MiB before the run"


def _remove_new_segments(before: set[str]) -> None:
    """NCCL segments (/dev/shm/nccl-*) that killed ranks left behind: those that appeared during the job
    and belong to this user. A clean exit unlinks its own."""
    try:
        names = set(os.listdir("/dev/shm"))
    except OSError:
        return
    for name in sorted(names - before):
        path = Path("/dev/shm") / name
        try:
            if name.startswith("nccl-") and path.stat().st_uid == os.getuid():
                path.unlink()
        except OSError:
            continue


def combine_samples(per_rank: list[list[dict[str, float]]]) -> list[Sample]:
    """Sample i of the job: the mean over ranks of their sample i (nccl-tests averages ranks' times),
    from the earliest start to the latest end."""
    count = min(len(samples) for samples in per_rank)
    combined = []
    for index in range(count):
        row = [samples[index] for samples in per_rank]
        seconds = sum(sample["seconds"] for sample in row) / len(row)
        combined.append(Sample(seconds, int(min(s["start_ns"] for s in row)), int(max(s["end_ns"] for s in row))))
    return combined


def size_metrics(params: CollectivesParams, job: Plan, records: list[dict[str, Any]]) -> list[Metric]:
    """time@<size> (and busbw@<size>) of every size the ranks timed; a wrong result fails the case."""
    metrics, wrong = [], []
    exact = all(record.get("exact_check", False) for record in records)
    for index, first in enumerate(records[0]["sizes"]):
        per_size = [record["sizes"][index] for record in records]
        geometry = shape(params.op, first["requested_bytes"], ELEMENT_BYTES[params.dtype], job.ranks)
        label = size_label(first["requested_bytes"])
        errors = [entry["wrong"] for entry in per_size if entry.get("wrong")]
        if errors:
            wrong.append(f"{label}: {sum(errors)} element(s)")
        samples = combine_samples([entry["samples"] for entry in per_size])
        note = _size_note(params, job, geometry, first, exact)
        metrics.append(Metric(f"time@{label}", "s", samples, work=float(geometry.bytes), work_unit="B", note=note))
        if job.ranks >= 2 and first["requested_bytes"] >= params.busbw_min_bytes:
            factor = busbw_factor(params.op, job.ranks)
            bus = [Sample(geometry.busbw(sample.seconds) / 1e9, sample.start_ns, sample.end_ns) for sample in samples]
            metrics.append(Metric(f"busbw@{label}", "GB/s", bus,
                                  note=f"nccl-tests bus bandwidth: {geometry.bytes} B / time x {factor:.4g}; {note}"))
    if wrong:
        raise CollectiveFailed(f"{params.op} over {job.ranks} ranks ({job.backend}) gave wrong results "
                               f"({', '.join(wrong)}): check the GPUs and the interconnect (nccl-tests' #wrong)")
    return metrics


def _size_note(params: CollectivesParams, job: Plan, geometry: Shape, entry: dict[str, Any], exact: bool) -> str:
    checked = "checked: exact" if params.check and exact else "not checked"
    return (f"{params.op} of {geometry.bytes} B ({geometry.send_elements} -> {geometry.recv_elements} {params.dtype} "
            f"elements per rank), {job.ranks} ranks, {job.backend}; mean over ranks per sample; {entry['clock']}, "
            f"stop={entry['stop_reason']}; {checked}")


def context_metrics(job: Plan, outcome: JobOutcome, env_notes: list[str],
                    space: tuple[int, int] | None) -> list[Metric]:
    """ranks, and with NCCL the connections per transport class from its INFO log."""
    versions = sorted({str(record.get("nccl")) for record in outcome.records if record.get("nccl")})
    worker = f"workers: {', '.join(env_notes)}; {_shm_note(space)}"
    if job.backend == "gloo":
        return [point_metric("ranks", "count", job.ranks, note=f"gloo over TCP, {job.ranks} CPU processes; {worker}")]
    summary = outcome.debug.summary()
    if not outcome.debug.lines:
        summary = "no NCCL_DEBUG output (NCCL_DEBUG_SUBSYS may exclude INIT)"
    version = f"; NCCL {', '.join(versions)} (torch)" if versions else ""
    metrics = [point_metric("ranks", "count", job.ranks, note=f"NCCL, one process per GPU{version}; {worker}")]
    for name, count in outcome.debug.counts().items():
        metrics.append(point_metric(f"transport_{name}", "connections", count, note=f"transport: {summary}"))
    return metrics


def run(params: CollectivesParams, device: Device) -> list[Metric]:
    job = plan(params, device)
    sizes = params.sizes()
    job_dir = Path(tempfile.mkdtemp(prefix="benchlib-collectives-"))
    env, env_notes = worker_env(job_dir)
    space = shm_space()
    try:
        before = set(os.listdir("/dev/shm"))
    except OSError:
        before = set()
    timer = params.timer_config()
    config = {
        "backend": job.backend, "ranks": job.ranks, "op": params.op, "dtype": params.dtype, "sizes": sizes,
        "check": params.check, "timeout_s": params.timeout_s, "store": str(job_dir / "store"),
        "timer": {"warmup": timer.warmup, "min_samples": timer.min_samples, "max_samples": timer.max_samples,
                  "max_time_s": timer.max_time_s, "min_time_s": timer.min_time_s,
                  "target_rel_ci": timer.target_rel_ci, "fixed_samples": timer.fixed_samples},
    }
    try:
        outcome = run_job(job_dir, config, job.ranks, params.timeout_s, env)
        if outcome.killed:
            _remove_new_segments(before)
        if outcome.timed_out or any(code != 0 for code in outcome.exit_codes) or len(outcome.records) < job.ranks:
            raise CollectiveFailed(failure_message(params, job, outcome, space))
        return [*size_metrics(params, job, outcome.records), *context_metrics(job, outcome, env_notes, space)]
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


WORKLOAD = Workload(
    name="collectives",
    description="all-reduce, all-gather, reduce-scatter, broadcast over every GPU (NCCL; gloo on CPU): "
                "latency, nccl-tests bus bandwidth, the transport NCCL chose",
    params_model=CollectivesParams,
    case_keys=("op", "dtype"),
    run=run,
    metrics=(
        time_metric("time@*", "time per collective (latency for small messages)"),
        MetricSpec("busbw@*", PERFORMANCE, "GB/s", "bus bandwidth (nccl-tests' definition)", better=HIGHER),
        MetricSpec("ranks", CONTEXT, "count", "ranks (processes) in the collective"),
        MetricSpec("transport_*", CONTEXT, "connections", "NCCL connections per transport"),
    ),
    sensitivity=lambda params, on_gpu: Sensitivity(frozenset({COLLECTIVES, SHARED_MEMORY, HOST})),
)
