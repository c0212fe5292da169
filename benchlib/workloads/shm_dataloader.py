"""A torch DataLoader moving batches from worker processes to the main process through /dev/shm.

Each worker builds ``batch_size`` samples and collates them into one batch of ``batch_mib`` MiB;
the collate allocates that batch in shared memory (that is how worker batches reach the main
process), so ``num_workers x prefetch_factor`` batches can sit in /dev/shm at once. The main
process reads one byte of every page of each batch. One timed sample is one epoch of ``batches``
batches with persistent workers, reported per batch; the rate is GB/s of batches delivered.

A default container has a 64 MiB /dev/shm. When the batches in flight do not fit, the worker fails
("No space left on device", or a bus error on older torch) and the case is recorded as failed with
the reason, the free /dev/shm measured before the run, and the fix: run the container with
``--ipc=host`` or ``--shm-size=...``. This is a CPU path: it always runs on the CPU.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from ..device import Device
from ..diagnosis.classes import HOST, SHARED_MEMORY, always
from ..params import CommonParams, common_default
from ..timer import measure
from ..metricspec import time_metric
from . import Metric, Workload
from ._support import per_call, shm_space

MIB = 1024 * 1024
PAGE = 4096

#: Substrings of a DataLoader failure -> what they mean; the first match wins. These name shared
#: memory themselves.
SHM_FAILURES: tuple[tuple[str, str], ...] = (
    ("no space left on device", "no space left in /dev/shm"),
    ("unable to allocate shared memory", "could not allocate shared memory"),
    ("bus error", "a worker was killed by a bus error (shared memory exhausted)"),
    ("out of shared memory", "a worker ran out of shared memory"),
)
#: Failures that a full /dev/shm also causes, among other things: blamed on it only when the
#: batches in flight did not fit in the free /dev/shm.
SHM_MAYBE: tuple[tuple[str, str], ...] = (
    ("killed by signal", "a worker was killed by a signal"),
    ("exited unexpectedly", "a worker exited unexpectedly"),
    ("timed out", "a worker did not deliver a batch in time"),
)


class ShmDataloaderParams(CommonParams):
    device: Literal["cpu"] = "cpu"  # a CPU / shared-memory path
    num_workers: int = Field(2, ge=1, le=256)
    batch_mib: int = Field(4, gt=0, le=64 * 1024)  # bytes of one batch, in MiB
    batch_size: int = Field(8, ge=1, le=4096)  # samples collated into one batch
    batches: int = Field(8, ge=1, le=100_000)  # batches per epoch (one timed sample)
    prefetch_factor: int = Field(2, ge=1, le=64)  # batches each worker keeps ready
    loader_timeout_s: float = Field(60.0, gt=0)  # a stalled worker fails the case after this
    # this workload's timing defaults (its notebook's parameters cell is checked against the model)
    max_samples: int = common_default("max_samples", 100)
    max_time_s: float = common_default("max_time_s", 2.0)
    target_rel_ci: float = common_default("target_rel_ci", 0.01)


class ShmExhausted(RuntimeError):
    """A DataLoader worker could not hand a batch over through /dev/shm."""


class _Batches:
    """``batches x batch_size`` samples of ``sample_bytes`` each; picklable for any start method."""

    def __init__(self, length: int, sample_bytes: int):
        self.length = length
        self.sample_bytes = sample_bytes

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        import torch

        return torch.full((self.sample_bytes,), index % 251, dtype=torch.uint8)


def in_flight_mib(params: ShmDataloaderParams) -> int:
    """MiB of batches that can sit in /dev/shm at once: every worker's prefetched batches."""
    return params.num_workers * params.prefetch_factor * params.batch_mib


def classify_failure(exc: BaseException, shm_free: int | None, needed_bytes: int) -> str | None:
    """What a DataLoader failure means for shared memory, or None when it is not about /dev/shm.

    Errors that name shared memory are always its fault; a worker killed, gone or stalled is
    blamed on /dev/shm only when the batches in flight did not fit in its free space.
    """
    text = str(exc).lower()
    reason = next((meaning for needle, meaning in SHM_FAILURES if needle in text), None)
    if reason is None and shm_free is not None and shm_free < needed_bytes:
        reason = next((meaning for needle, meaning in SHM_MAYBE if needle in text), None)
    return reason


def shm_note(space: tuple[int, int] | None) -> str:
    if space is None:
        return "/dev/shm: not present"
    size, free = space
    return f"/dev/shm: {free / MIB:.1f} MiB free of {size / MIB:.1f} MiB before the run"


def failure_message(reason: str, params: ShmDataloaderParams, space: tuple[int, int] | None) -> str:
    """One line: what failed, the shared memory it needed, and the fix."""
    in_flight = in_flight_mib(params)
    suggested_gib = max(1, math.ceil(2 * in_flight / 1024))
    return (f"DataLoader through /dev/shm failed: {reason}; {shm_note(space)}; up to {params.num_workers} "
            f"workers x {params.prefetch_factor} prefetched x {params.batch_mib} MiB = {in_flight} MiB in "
            f"flight; fix: run the container with --ipc=host or --shm-size={suggested_gib}g")


def run(params: ShmDataloaderParams, device: Device) -> list[Metric]:
    import torch
    from torch.utils.data import DataLoader

    sample_bytes = params.batch_mib * MIB // params.batch_size
    batch_bytes = sample_bytes * params.batch_size
    space = shm_space()
    loader = DataLoader(
        _Batches(params.batches * params.batch_size, sample_bytes), batch_size=params.batch_size,
        num_workers=params.num_workers, prefetch_factor=params.prefetch_factor, persistent_workers=True,
        timeout=params.loader_timeout_s,
    )

    def epoch() -> None:
        for batch in loader:
            int(batch.view(-1)[::PAGE].sum(dtype=torch.int64))  # read every page of the batch

    try:
        measurement = measure(epoch, "cpu", params.timer_config())
    except (RuntimeError, OSError) as exc:
        reason = classify_failure(exc, space[1] if space else None, in_flight_mib(params) * MIB)
        if reason is None:
            raise
        raise ShmExhausted(failure_message(reason, params, space)) from exc
    note = (f"{params.num_workers} workers, {params.batch_size} samples per batch, {params.batches} batches "
            f"per sample, time per batch; {shm_note(space)}")
    return [Metric.from_measurement("time", per_call(measurement, params.batches), work=float(batch_bytes),
                                    work_unit="B", note=note)]


WORKLOAD = Workload(
    name="shm_dataloader",
    description="DataLoader workers handing batches over through /dev/shm; time per batch, GB/s, shm failures",
    params_model=ShmDataloaderParams,
    case_keys=("num_workers", "batch_mib"),
    run=run,
    metrics=(time_metric("time", "time per batch"),),
    sensitivity=always(SHARED_MEMORY, HOST)  # batches through /dev/shm from worker processes,
)
