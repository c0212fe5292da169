"""Dense matrix product C = A @ B, square n x n, timed with the shared timer.

``settings: user`` (the quick and full suites) runs the product as a script that sets nothing: the
math mode is the environment's, so a container whose environment turns TF32 on (NGC's
``TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1``) runs fp32 products in TF32, as the user's own code would;
dtype ``tf32`` asks for TF32 the way a user does (``torch.set_float32_matmul_precision("high")``).
``settings: forced`` pins the math mode: ``fp32`` is exact float32 (TF32 off, matmul precision
"highest"), ``tf32`` allows TF32; the mode is set for the product and restored after. ``bf16`` /
``fp16`` run in that type. The ``time`` note names the math mode in effect, and the ``rel_error``
metric (against a float64 product of the first rows) moves with it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal

from pydantic import Field

from ..device import Device
from ..diagnosis.classes import GPU_KERNELS, HOST, MATH_MODE_MECHANISMS, Sensitivity, excluding
from ..params import CommonParams, common_default
from ..timer import Sample, measure
from ..metricspec import CHECK, MetricSpec, time_metric
from . import Metric, Workload

DTYPES = ("fp32", "tf32", "bf16", "fp16")
CHECK_ROWS = 64
#: Largest acceptable ``rel_error`` per dtype. Measured on an H100 at n = 8192: exact fp32 1.6e-6, TF32
#: about 3e-4, bf16 1.7e-3; fp32 above 5e-5 means the product did not run in exact fp32 (TF32 or
#: another reduced-precision mode, e.g. NGC's TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1).
REL_ERROR_BOUND = {"fp32": 5e-5, "tf32": 5e-3, "bf16": 1e-2, "fp16": 5e-3}


class MatmulParams(CommonParams):
    FORCED = "the math mode: exact fp32 (TF32 off, float32 matmul precision 'highest'), TF32 for dtype tf32"

    n: int = Field(256, gt=0, le=65536)
    dtype: Literal["fp32", "tf32", "bf16", "fp16"] = "fp32"
    peak_tflops: float | None = Field(None, gt=0)  # a stated peak; the ceilings table otherwise
    # this workload's timing defaults (its notebook's parameters cell is checked against the model)
    max_time_s: float = common_default("max_time_s", 10.0)


@contextmanager
def _math_mode(dtype: str, settings: str) -> Iterator[str]:
    """Pin the math mode (forced), or leave the environment's (user; tf32 asks for TF32 as a user does);
    yield the mode in effect, in words."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    if settings == "forced":
        torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    if settings == "forced" or dtype == "tf32":
        torch.set_float32_matmul_precision("high" if dtype == "tf32" else "highest")
    source = "pinned by the workload" if settings == "forced" else "the environment's"
    try:
        yield (f"math mode {source}: allow_tf32={torch.backends.cuda.matmul.allow_tf32}, "
               f"float32_matmul_precision={torch.get_float32_matmul_precision()}")
    finally:
        torch.backends.cuda.matmul.allow_tf32, precision = saved
        torch.set_float32_matmul_precision(precision)


def _torch_dtype(dtype: str):
    import torch

    return {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


def run(params: MatmulParams, device: Device) -> list[Metric]:
    import torch

    generator = torch.Generator(device=device.torch_device).manual_seed(params.seed)
    dtype = _torch_dtype(params.dtype)
    shape = (params.n, params.n)
    a = torch.randn(shape, generator=generator, device=device.torch_device, dtype=dtype)
    b = torch.randn(shape, generator=generator, device=device.torch_device, dtype=dtype)
    c = torch.empty(shape, device=device.torch_device, dtype=dtype)
    with _math_mode(params.dtype, params.settings) as math_mode:
        measurement = measure(lambda: torch.matmul(a, b, out=c), device.torch_device,
                              params.timer_config(back_to_back=True))
        rel_error = _relative_error(a, b, c)
    flops = 2.0 * params.n**3
    first = measurement.samples[-1]
    return [
        Metric.from_measurement("time", measurement, work=flops, work_unit="FLOP", note=math_mode),
        Metric("rel_error", "1", [Sample(rel_error, first.start_ns, first.end_ns)],
               note=f"||C - C64|| / ||C64|| over the first {CHECK_ROWS} rows, float64 reference"),
    ]


def _relative_error(a, b, c) -> float:
    """Error of the product's first rows against a float64 product on the same device."""
    import torch

    rows = min(CHECK_ROWS, a.shape[0])
    reference = a[:rows].double() @ b.double()
    error = torch.linalg.vector_norm(c[:rows].double() - reference) / torch.linalg.vector_norm(reference)
    value = float(error)
    if value != value:  # NaN: the product is broken, not slow
        raise RuntimeError("matmul produced NaN; the result is wrong, not only slow")
    return value


def sensitivity(params: MatmulParams, on_gpu: bool) -> Sensitivity:
    """GPU kernels on a GPU (host-bound code on the CPU); no TF32 mechanism acts on a pinned math mode or
    on a bf16/fp16 product."""
    classes = frozenset({GPU_KERNELS if on_gpu else HOST})
    if params.dtype in ("bf16", "fp16"):
        return Sensitivity(classes, excluding(MATH_MODE_MECHANISMS, f"{params.dtype} products use no TF32"))
    if params.settings == "forced":
        pinned = MATH_MODE_MECHANISMS if params.dtype == "fp32" else MATH_MODE_MECHANISMS[:2]
        return Sensitivity(classes, excluding(pinned, "settings: forced pins the math mode"))
    return Sensitivity(classes)


WORKLOAD = Workload(
    name="matmul",
    description="dense n x n matrix product (fp32, tf32, bf16, fp16); TFLOP/s and % of peak",
    params_model=MatmulParams,
    case_keys=("n", "dtype", "settings"),
    run=run,
    metrics=(
        time_metric("time", "time per product"),
        MetricSpec("rel_error", CHECK, "1", "relative error against float64", tolerance=0.5,
                   bound=lambda params: REL_ERROR_BOUND[params.get("dtype", "fp32")],
                   fails_means="the product did not run in the requested precision (TF32 or another reduced-precision "
                               "math mode)"),
    ),
    sensitivity=sensitivity,
)
