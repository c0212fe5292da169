"""Launch latency: what one tiny kernel costs eagerly, in a CUDA graph, and a host<->GPU round trip.

The kernel is ``x.add_(1)`` on a one-element tensor, so its run time is negligible next to its
launch. Metrics (seconds; each sample runs ``launches`` kernels or ``round_trips`` round trips and
is reported per launch / per round trip):

- ``eager_cpu_launch``: host time to issue one eager launch (``perf_counter`` around the launch loop,
  no synchronisation inside it; the GPU is idle when each sample starts).
- ``eager_gpu_per_launch``: GPU time per launch over the same loop (CUDA events around it): the
  launch rate the GPU actually sees.
- ``graph_per_launch``: the same ``launches`` kernels captured in one CUDA graph and replayed.
- ``sync_roundtrip``: ``torch.cuda.synchronize()`` on an idle device, host time per call.
- ``event_query_roundtrip``: launch the kernel, record an event and poll ``event.query()`` until it
  completes: the latency from issuing work to the host seeing it done, without a blocking sync.

On a machine without a GPU only the CPU analogue of ``eager_cpu_launch`` is measured (dispatch of
the same op on a CPU tensor); its note says the GPU-only metrics were skipped.
"""
from __future__ import annotations

from typing import Any, Callable

from pydantic import Field

from ..device import Device
from ..diagnosis.classes import HOST, always
from ..params import CommonParams, common_default
from ..timer import measure
from ..metricspec import time_metric
from . import Metric, Workload
from ._support import per_call

GPU_ONLY = ("eager_gpu_per_launch", "graph_per_launch", "sync_roundtrip", "event_query_roundtrip")


class LaunchParams(CommonParams):
    launches: int = Field(1000, ge=1, le=100_000)  # tiny kernels per sample
    round_trips: int = Field(100, ge=1, le=100_000)  # synchronisations / event polls per sample
    # this workload's timing defaults (its notebook's parameters cell is checked against the model)
    max_samples: int = common_default("max_samples", 100)
    max_time_s: float = common_default("max_time_s", 2.0)
    target_rel_ci: float = common_default("target_rel_ci", 0.01)


def run(params: LaunchParams, device: Device) -> list[Metric]:
    import torch

    x = torch.zeros(1, device=device.torch_device)

    def launch() -> None:
        x.add_(1)

    if not device.is_cuda:
        cpu = measure(launch, "cpu", params.timer_config(inner_repeats=params.launches))
        note = (f"CPU analogue (no GPU): dispatch of x.add_(1) on a CPU tensor, {params.launches} per sample; "
                f"skipped: no GPU: {', '.join(GPU_ONLY)}")
        return [Metric.from_measurement("eager_cpu_launch", cpu, note=note)]
    return _gpu_metrics(params, device, x, launch)


def _gpu_metrics(params: LaunchParams, device: Device, x: Any, launch: Callable[[], None]) -> list[Metric]:
    import torch

    def synchronize() -> None:
        torch.cuda.synchronize(device.torch_device)

    many = params.timer_config(inner_repeats=params.launches)
    trips = params.timer_config(inner_repeats=params.round_trips)
    host_issue = measure(launch, "cpu", many, before_sample=synchronize)
    gpu_rate = measure(launch, device.torch_device, many)
    graph = _capture(x, params.launches)
    graph_replay = per_call(measure(graph.replay, device.torch_device, params.timer_config()), params.launches)
    sync = measure(synchronize, "cpu", trips, before_sample=synchronize)
    event_trip = measure(_event_round_trip(launch), "cpu", trips, before_sample=synchronize)
    n = f"{params.launches} launches per sample"
    return [
        Metric.from_measurement("eager_cpu_launch", host_issue, note=f"host time to issue one launch; {n}"),
        Metric.from_measurement("eager_gpu_per_launch", gpu_rate, note=f"CUDA events over the eager loop; {n}"),
        Metric.from_measurement("graph_per_launch", graph_replay, note=f"one CUDA graph of {params.launches} kernels"),
        Metric.from_measurement("sync_roundtrip", sync, note="torch.cuda.synchronize() on an idle device"),
        Metric.from_measurement("event_query_roundtrip", event_trip,
                                note="launch + event.record + poll event.query() until done"),
    ]


def _capture(x: Any, launches: int) -> Any:
    """``launches`` in-place adds captured in one CUDA graph (warmed up on a side stream first)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        x.add_(1)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(launches):
            x.add_(1)
    return graph


def _event_round_trip(launch: Callable[[], None]) -> Callable[[], None]:
    import torch

    event = torch.cuda.Event()

    def round_trip() -> None:
        launch()
        event.record()
        while not event.query():
            pass

    return round_trip


WORKLOAD = Workload(
    name="launch",
    description="launch latency of a tiny kernel: eager (host and GPU side), CUDA graph, sync round trips",
    params_model=LaunchParams,
    case_keys=("launches",),
    run=run,
    metrics=(
        time_metric("eager_cpu_launch", "host time per eager launch"),
        time_metric("eager_gpu_per_launch", "GPU time per eager launch"),
        time_metric("graph_per_launch", "time per launch in a CUDA graph"),
        time_metric("sync_roundtrip", "synchronize round trip"),
        time_metric("event_query_roundtrip", "event-query round trip"),
    ),
    sensitivity=always(HOST)  # the host issues and waits: launch latency is host-bound,
)
