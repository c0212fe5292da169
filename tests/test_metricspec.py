"""Metric roles: every metric the workloads emit is declared, and results split into performance rows,
context findings and failed checks (planted differences, with red herrings)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchlib import findings, run_benchmark, stats
from benchlib.llm.trtllm import BENCH_GROUPS, BENCH_STATS, BenchReport, bench_metrics
from benchlib.metricspec import CHECK, CONTEXT, HIGHER, LOWER, PERFORMANCE, MetricSpec, spec_for, spec_registry
from benchlib.results import load_run
from benchlib.schema import RESULT_COLUMNS, conform

SAMPLE = Path(__file__).resolve().parent.parent / "outputs" / "sample"
FAST = dict(warmup=1, min_samples=3, max_samples=5, max_time_s=0.3, target_rel_ci=0.5, telemetry_hz=0)


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return load_run(SAMPLE)


def _emitted(frame: pd.DataFrame) -> set[tuple[str, str]]:
    ok = frame[frame["status"] == "ok"]
    return set(zip(ok["benchmark"], ok["metric"]))


def test_every_metric_of_the_bundled_sample_is_declared(sample):
    emitted = _emitted(sample)
    assert len(emitted) == 33
    assert {key for key in emitted if key not in spec_registry()} == set()


def test_every_metric_the_workloads_emit_on_this_machine_is_declared():
    """Each workload's CPU path, run for real at tiny sizes; the GPU-only metrics are in the sample."""
    runs = [
        run_benchmark("matmul", n=32, dtype=["fp32", "bf16"], **FAST),
        run_benchmark("membw", size_mib=1, **FAST),
        run_benchmark("launch", launches=10, **FAST),
        run_benchmark("cpu_bound", task=["matmul", "tokenize"], n=32, text_kib=1, **FAST),
        run_benchmark("memcap", chunk_mib=8, host_cap_mib=16, **FAST),
        run_benchmark("shm_dataloader", num_workers=1, batch_mib=1, batches=2, **FAST),
        run_benchmark("llm_inference", shape="tiny", dtype="fp32", input_len=4, output_len=3, **FAST),
        run_benchmark("fault", mode="ok", **FAST),
    ]
    emitted = set().union(*(_emitted(run.results) for run in runs))
    assert len(emitted) >= 20
    assert {key for key in emitted if key not in spec_registry()} == set()


def test_every_trtllm_bench_metric_is_declared():
    report = BenchReport({"Total Latency (ms)": 100.0}, {g: dict.fromkeys(BENCH_STATS, 1.0) for g in BENCH_GROUPS})
    names = {metric.name for metric in bench_metrics(report, 640, 1, 2)}
    assert len(names) == 1 + len(BENCH_GROUPS) * len(BENCH_STATS)
    assert all(spec_for("llm_inference", name).role == PERFORMANCE for name in names)


@pytest.mark.parametrize("bench, metric, role, better", [
    ("cpu_bound", "torch_threads", CONTEXT, None), ("memcap", "mem_total", CONTEXT, None),
    ("llm_inference", "kv_cache_bytes", CONTEXT, None), ("matmul", "rel_error", CHECK, None),
    ("launch", "sync_roundtrip", PERFORMANCE, LOWER), ("llm_inference", "ttft", PERFORMANCE, LOWER),
    ("llm_inference", "decode_roofline_fraction", PERFORMANCE, HIGHER), ("memcap", "allocated", CONTEXT, None),
])
def test_roles_of_the_metrics_the_issue_names(bench, metric, role, better):
    spec = spec_for(bench, metric)
    assert (spec.role, spec.better) == (role, better)


def test_a_spec_must_be_consistent():
    with pytest.raises(ValueError, match="lower or higher"):
        MetricSpec("time", PERFORMANCE, "s", "time")
    with pytest.raises(ValueError, match="lower or higher"):
        MetricSpec("threads", CONTEXT, "count", "threads", better=LOWER)
    with pytest.raises(ValueError, match="bound"):
        MetricSpec("error", CHECK, "1", "error")
    with pytest.raises(ValueError, match="role"):
        MetricSpec("x", "speed", "s", "x", better=LOWER)


# ------------------------------------------------------------------- findings on planted frames

def _frame(rows: list[tuple], invocations: int = 3) -> pd.DataFrame:
    """rows: (arm, benchmark, case, params, metric, unit, values-per-invocation or one value)."""
    records = []
    for arm, benchmark, case, params, metric, unit, value in rows:
        for invocation in range(invocations):
            v = value[invocation] if isinstance(value, (list, tuple)) else value
            records.append({"run_id": "r", "arm": arm, "benchmark": benchmark, "case": case,
                            "params": json.dumps(params), "invocation": invocation, "sample": 0, "metric": metric,
                            "unit": unit, "value": float(v), "work": np.nan, "work_unit": pd.NA, "start_ns": 0,
                            "end_ns": 1, "device": "cpu", "status": "ok", "note": pd.NA})
    return conform(pd.DataFrame(records), RESULT_COLUMNS)


CPU_CASE = ("cpu_bound", "task=matmul,threads=0", {"task": "matmul"})


def _cpu(arm: str, metric: str, unit: str, value) -> tuple:
    return (arm, *CPU_CASE, metric, unit, value)


def test_context_that_differs_is_a_finding_in_words_and_never_a_verdict():
    frame = _frame([
        _cpu("native", "time", "s", [0.010, 0.011, 0.010]), _cpu("container", "time", "s", [0.030, 0.031, 0.029]),
        _cpu("native", "torch_threads", "count", 16), _cpu("container", "torch_threads", "count", 1),
        _cpu("native", "affinity_cpus", "count", 16), _cpu("container", "affinity_cpus", "count", 16),  # same: no finding
        _cpu("container", "cpu_quota_cores", "cores", 2.0),  # absent in native: "no quota"
        _cpu("container", "nr_throttled_delta", "count", 0),  # absent in native says nothing: no finding
        ("native", "memcap", "chunk_mib=64", {}, "mem_available", "B", 100e9),
        ("container", "memcap", "chunk_mib=64", {}, "mem_available", "B", 99.5e9),  # within 2 %: red herring
        ("native", "memcap", "chunk_mib=64", {}, "allocated", "B", 100 * 2**30),
        ("container", "memcap", "chunk_mib=64", {}, "allocated", "B", 70 * 2**30),
    ])
    found = findings.context_findings(frame, "native")
    assert list(found["text"]) == [
        "torch threads: 16 in native, 1 in container",
        "cgroup CPU quota: no quota in native, 2 cores in container",
        "memory the process could allocate: 100.00 GiB in native, 70.00 GiB in container",
    ]
    assert "time" not in set(found["metric"])
    verdicts = stats.compare(findings.performance_rows(frame), baseline="native", n_boot=200)
    assert set(verdicts["metric"]) == {"time"}


def test_a_failed_check_is_a_problem_and_a_passing_one_is_not():
    def matmul(arm, dtype, error):
        return (arm, "matmul", f"n=1024,dtype={dtype}", {"n": 1024, "dtype": dtype}, "rel_error", "1", error)

    frame = _frame([
        matmul("native", "fp32", 1.6e-6), matmul("container", "fp32", [3e-4, 3e-4, 3.1e-4]),  # TF32 under fp32
        matmul("native", "bf16", 1.65e-3), matmul("container", "bf16", 1.65e-3),  # bf16's own error: fine
    ])
    problems = findings.check_problems(frame)
    assert len(problems) == 1
    row = problems.iloc[0]
    assert (row["case"], row["arm"], row["invocations"], row["bound"]) == ("n=1024,dtype=fp32", "container", [0, 1, 2], 5e-5)
    assert "did not run in the requested precision" in row["text"]
    found = findings.context_findings(frame, "native")  # the check also differs between the arms
    assert list(found["case"]) == ["n=1024,dtype=fp32"]


def test_the_sample_judges_no_constant_as_speed(sample):
    frame = sample
    performance = findings.performance_rows(frame)
    ok = performance[performance["status"] == "ok"]
    assert not {"torch_threads", "mem_total", "rel_error", "kv_cache_bytes", "allocated"} & set(ok["metric"])
    assert findings.higher_is_better(frame) == {"prefill_roofline_fraction", "decode_roofline_fraction"}
    assert findings.check_problems(frame).empty
    assert findings.context_findings(frame, "native").empty  # the two arms saw the same constants


def test_an_undeclared_metric_is_inferred_from_its_unit_and_listed():
    frame = _frame([("native", "mine", "default", {}, "latency", "s", 1.0),
                    ("native", "mine", "default", {}, "widgets", "count", 3)])
    assert findings.undeclared(frame) == [("mine", "latency"), ("mine", "widgets")]
    roles = findings.classify(frame).set_index("metric")["role"]
    assert roles.to_dict() == {"latency": PERFORMANCE, "widgets": CONTEXT}


def test_the_report_reads_a_higher_roofline_fraction_as_faster(sample):
    """A fraction of the roofline is better when higher (its MetricSpec): the analysis passes that
    direction on, so the sample's prefill fraction that rose from 0.032 to 0.039 in the isolated arm
    reads as a negative overhead, and its time-like metrics keep reading a larger value as slower."""
    from benchlib.analysis import analyse

    comparison = analyse(SAMPLE).comparison
    fractions = comparison[comparison["metric"] == "prefill_roofline_fraction"]
    assert len(fractions) == 2 and (fractions["ratio"] > 1.1).all()
    assert (fractions["overhead"] < -0.1).all()
    assert np.allclose(fractions["overhead"], 1 / fractions["ratio"] - 1)
    times = comparison[comparison["unit"] == "s"]
    assert np.allclose(times["overhead"], times["ratio"] - 1)
