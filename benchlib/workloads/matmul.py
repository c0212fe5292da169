"""Dense matrix product C = A @ B, square n x n, timed with the shared timer.

dtype ``fp32`` asks for exact float32 (TF32 off, matmul precision "highest"); ``tf32`` allows TF32;
``bf16`` / ``fp16`` run in that type. The math mode is set for the product and restored after. A
container whose environment overrides it (NGC's ``TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1``) still shows:
the ``rel_error`` metric (against a float64 product of the first rows) then moves with the time.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal

from pydantic import Field

from ..device import Device
from ..params import CommonParams, common_default
from ..timer import Sample, measure
from . import Metric, Workload

DTYPES = ("fp32", "tf32", "bf16", "fp16")
CHECK_ROWS = 64


class MatmulParams(CommonParams):
    n: int = Field(256, gt=0, le=65536)
    dtype: Literal["fp32", "tf32", "bf16", "fp16"] = "fp32"
    peak_tflops: float | None = Field(None, gt=0)  # a stated peak; the ceilings table otherwise
    # this workload"s timing defaults (its notebook"s parameters cell is checked against the model)
    max_time_s: float = common_default("max_time_s", 10.0)


@contextmanager
def _math_mode(dtype: str) -> Iterator[None]:
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    torch.set_float32_matmul_precision("high" if dtype == "tf32" else "highest")
    try:
        yield
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
    with _math_mode(params.dtype):
        measurement = measure(lambda: torch.matmul(a, b, out=c), device.torch_device,
                              params.timer_config(back_to_back=True))
        rel_error = _relative_error(a, b, c)
    flops = 2.0 * params.n**3
    first = measurement.samples[-1]
    return [
        Metric.from_measurement("time", measurement, work=flops, work_unit="FLOP"),
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


WORKLOAD = Workload(
    name="matmul",
    description="dense n x n matrix product (fp32, tf32, bf16, fp16); TFLOP/s and % of peak",
    params_model=MatmulParams,
    case_keys=("n", "dtype"),
    run=run,
)
