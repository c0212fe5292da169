"""One rank of the collectives workload: ``python -m benchlib._collectives_worker CONFIG RANK``.

:mod:`benchlib.workloads.collectives` starts one of these per GPU (NCCL) or per CPU rank (gloo) and
reads back ``rank-<r>.json`` from the job folder. Each rank joins the process group through a
FileStore in that folder, then for every message size: checks one collective against values whose
sum is exact, warms up, and times samples with the shared timer (CUDA events back to back on a GPU,
``perf_counter_ns`` on the CPU). Every rank must run the same number of collectives, so rank 0 alone
applies the stopping rule (:func:`benchlib.timer.stop_reason`) and broadcasts its decision and the
next batch's size. A failure is written to ``rank-<r>.json`` (``error``) and the exit code is 1.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from .nccl import ELEMENT_BYTES, Shape, nccl_version, shape
from .timer import BATCH_SECONDS, TimerConfig, measure, stop_reason

#: Largest integer each dtype holds exactly (the check's sums stay at or below it).
EXACT_INTEGER = {"fp32": 1 << 24, "bf16": 256, "fp16": 2048}
CHECK_CHUNK = 1 << 24  # elements compared at once, so a 1 GiB check needs no 1 GiB of temporaries


def pattern(torch: Any, rank: int, start: int, length: int, dtype: Any, device: Any):
    """The check's input of ``rank`` at elements [start, start+length): ``((rank + i) % 4) + 1``.

    Integers 1..4, so any sum over n ranks is an integer of at most 4n, exact in fp32, and in bf16
    (fp16) up to 64 (512) ranks, whatever order the reduction adds in.
    """
    index = torch.arange(start, start + length, device=device, dtype=torch.int64)
    return ((index + rank) % 4 + 1).to(dtype)


def expected(torch: Any, op: str, rank: int, ranks: int, start: int, length: int, per_rank: int, dtype: Any,
             device: Any):
    """What ``rank``'s output holds at elements [start, start+length) after ``op`` on :func:`pattern` inputs."""
    if op == "all_reduce":
        return sum(pattern(torch, q, start, length, torch.int64, device) for q in range(ranks)).to(dtype)
    if op == "reduce_scatter":
        offset = rank * per_rank + start
        return sum(pattern(torch, q, offset, length, torch.int64, device) for q in range(ranks)).to(dtype)
    if op == "all_gather":
        index = torch.arange(start, start + length, device=device, dtype=torch.int64)
        source, position = index // per_rank, index % per_rank
        return ((position + source) % 4 + 1).to(dtype)
    return pattern(torch, 0, start, length, dtype, device)  # broadcast from rank 0


class Buffers:
    """One size's input and output on this rank, and the collective that runs on them."""

    def __init__(self, torch: Any, dist: Any, op: str, geometry: Shape, rank: int, dtype: Any, device: Any):
        self.torch, self.op, self.geometry, self.rank = torch, op, geometry, rank
        self.dtype, self.device = dtype, device
        self.send = torch.empty(geometry.send_elements, dtype=dtype, device=device)
        in_place = op in ("all_reduce", "broadcast")
        self.recv = self.send if in_place else torch.empty(geometry.recv_elements, dtype=dtype, device=device)
        all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        self.run: Callable[[], Any] = {
            "all_reduce": lambda: dist.all_reduce(self.send),
            "all_gather": lambda: all_gather(self.recv, self.send),
            "reduce_scatter": lambda: reduce_scatter(self.recv, self.send),
            "broadcast": lambda: dist.broadcast(self.send, src=0),
        }[op]

    def fill_for_check(self) -> None:
        torch, n = self.torch, self.send.numel()
        for start in range(0, n, CHECK_CHUNK):
            length = min(CHECK_CHUNK, n - start)
            self.send[start:start + length] = pattern(torch, self.rank, start, length, self.dtype, self.device)
        if self.op == "broadcast" and self.rank != 0:
            self.send.zero_()  # 0 is no pattern value: a rank that received nothing fails the check

    def wrong_elements(self) -> int:
        """Elements of this rank's output that differ from the exact result."""
        torch, n = self.torch, self.recv.numel()
        per_rank = self.geometry.send_elements if self.op == "all_gather" else self.geometry.recv_elements
        wrong = 0
        for start in range(0, n, CHECK_CHUNK):
            length = min(CHECK_CHUNK, n - start)
            want = expected(torch, self.op, self.rank, self.geometry.ranks, start, length, per_rank, self.dtype,
                            self.device)
            wrong += int((self.recv[start:start + length] != want).sum())
        return wrong

    def fill_for_timing(self) -> None:
        """Zeros: an in-place all-reduce repeated on the check's values would grow them without bound."""
        self.send.zero_()


def _decide(torch: Any, dist: Any, rank: int, device: Any, seconds: list[float], config: TimerConfig,
            elapsed_s: float) -> tuple[str, int]:
    """Rank 0's stopping reason ("" to go on; other ranks get "stop") and the next batch's size,
    broadcast so that every rank runs the same collectives."""
    decision = torch.zeros(2, dtype=torch.int64, device=device)
    reason = ""
    if rank == 0:
        reason = stop_reason(seconds, config, elapsed_s)
        typical = sorted(seconds)[len(seconds) // 2] or 1e-9
        decision[0] = int(bool(reason))
        decision[1] = max(1, min(int(BATCH_SECONDS / typical), config.max_samples - len(seconds)))
    dist.broadcast(decision, src=0)
    return (reason or ("stop" if int(decision[0]) else "")), int(decision[1])


def time_size(torch: Any, dist: Any, buffers: Buffers, rank: int, device: Any, config: TimerConfig,
              cuda: bool) -> dict[str, Any]:
    """Samples of one size: warm-up, then batches until rank 0's stopping rule says enough."""
    samples: list[dict[str, float]] = []
    warmup, batch = config.warmup, (config.fixed_samples or config.min_samples)
    clock, reason, began = "", "", time.perf_counter()
    while not reason:
        part = measure(buffers.run, device, TimerConfig(warmup=warmup, fixed_samples=batch, back_to_back=cuda))
        warmup, clock = 0, part.clock
        samples += [{"seconds": s.seconds, "start_ns": s.start_ns, "end_ns": s.end_ns} for s in part.samples]
        reason, batch = _decide(torch, dist, rank, device, [s["seconds"] for s in samples], config,
                                time.perf_counter() - began)
    return {"samples": samples, "clock": clock, "stop_reason": reason}


def run(config: dict[str, Any], rank: int) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    cuda = config["backend"] == "nccl"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[config["dtype"]]
    ranks, op = config["ranks"], config["op"]
    store = dist.FileStore(config["store"], ranks)
    extra = {"device_id": device} if cuda else {}
    dist.init_process_group(config["backend"], store=store, rank=rank, world_size=ranks,
                            timeout=timedelta(seconds=config["timeout_s"]), **extra)
    timer = TimerConfig(**config["timer"])
    exact = 4 * ranks <= EXACT_INTEGER[config["dtype"]]
    sizes = []
    try:
        for requested in config["sizes"]:
            geometry = shape(op, requested, ELEMENT_BYTES[config["dtype"]], ranks)
            if geometry.empty:
                continue
            buffers = Buffers(torch, dist, op, geometry, rank, dtype, device)
            wrong = None
            if config["check"] and exact:
                buffers.fill_for_check()
                buffers.run()
                if cuda:
                    torch.cuda.synchronize(device)
                wrong = buffers.wrong_elements()
            buffers.fill_for_timing()
            timed = time_size(torch, dist, buffers, rank, device, timer, cuda)
            sizes.append({"requested_bytes": requested, "bytes": geometry.bytes,
                          "send_elements": geometry.send_elements, "recv_elements": geometry.recv_elements,
                          "wrong": wrong, **timed})
            del buffers
            if cuda:
                torch.cuda.empty_cache()
    finally:
        dist.destroy_process_group()
    return {"rank": rank, "sizes": sizes, "exact_check": exact,
            "torch": torch.__version__, "nccl": nccl_version(torch) if cuda else None}


def main(argv: list[str]) -> int:
    config_path, rank = Path(argv[0]), int(argv[1])
    config = json.loads(config_path.read_text())
    out = config_path.parent / f"rank-{rank}.json"
    try:
        record = run(config, rank)
    except BaseException as exc:  # reported to the parent, which decides what the case records
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        _write_json(out, {"rank": rank, "error": f"{type(exc).__name__}: {' | '.join(lines)[:4000]}",
                          "traceback": traceback.format_exc()[-6000:]})
        return 1
    _write_json(out, record)
    return 0


def _write_json(path: Path, record: dict[str, Any]) -> None:
    """Whole or not at all (the parent reads it once this process has exited); no pandas import here."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
