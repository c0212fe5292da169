"""The results schema, derived rates, and atomic writes."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchlib import _atomic, schema


def _row(**overrides):
    row = {"run_id": "r", "arm": "native", "benchmark": "matmul", "case": "n=2", "params": "{}",
           "invocation": 1, "sample": 0, "metric": "time", "unit": "s", "value": 0.5, "work": 16.0,
           "work_unit": "FLOP", "start_ns": 1, "end_ns": 2, "device": "cpu", "status": "ok", "note": ""}
    row.update(overrides)
    return row


def test_conform_orders_columns_and_types_and_names_missing_ones():
    frame = pd.DataFrame([_row()])[list(reversed(schema.RESULT_COLUMNS))]
    out = schema.conform(frame)
    assert list(out.columns) == list(schema.RESULT_COLUMNS)
    assert str(out["invocation"].dtype) == "int64" and str(out["value"].dtype) == "float64"
    with pytest.raises(ValueError, match="metric"):
        schema.conform(frame.drop(columns=["metric"]))


def test_rates_are_derived_from_times_and_work_only():
    frame = schema.conform(pd.DataFrame([
        _row(), _row(metric="rel_error", unit="1", value=1e-6, work=np.nan, work_unit=None),
    ]))
    rated = schema.with_rates(frame)
    assert rated.loc[0, "rate"] == 32.0 and rated.loc[0, "rate_unit"] == "FLOP/s"
    assert np.isnan(rated.loc[1, "rate"]) and pd.isna(rated.loc[1, "rate_unit"])


def test_empty_frames_have_the_schema():
    assert list(schema.empty_results().columns) == list(schema.RESULT_COLUMNS)
    assert list(schema.empty_telemetry().columns) == list(schema.TELEMETRY_COLUMNS)


def test_parquet_round_trip_keeps_the_schema(tmp_path: Path):
    frame = schema.conform(pd.DataFrame([_row(), _row(sample=1, value=0.25)]))
    path = _atomic.write_parquet(tmp_path / "results.parquet", frame)
    back = schema.conform(pd.read_parquet(path))
    pd.testing.assert_frame_equal(frame, back)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path: Path):
    target = tmp_path / "results.parquet"
    _atomic.write_text(target, "old")

    class Boom(Exception):
        pass

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise Boom

    with pytest.raises(Boom):
        _atomic._write_via_temp(target, fail)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["results.parquet"]  # no temp file left behind


def test_case_id_is_stable_and_short():
    assert schema.case_id({"dtype": "bf16", "n": 8192, "warmup": 3}, ["n", "dtype"]) == "n=8192,dtype=bf16"
    assert schema.case_id({}, []) == "default"
