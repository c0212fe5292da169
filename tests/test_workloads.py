"""The issue-5 workloads on the CPU: real runs at tiny sizes, skips, failures, validation, accounting."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchlib import ceilings, run_benchmark
from benchlib.device import Device
from benchlib.errors import ParamsError
from benchlib.suites import expand_entry, load_suite
from benchlib.timer import measure
from benchlib.workloads import cpu_bound, launch, membw, memcap, registry, shm_dataloader
from benchlib.workloads import _support

CPU = Device("cpu", "cpu")
FAST = dict(warmup=1, min_samples=3, max_samples=10, max_time_s=0.5, target_rel_ci=0.2, telemetry_hz=0)
NEW = ("membw", "transfer", "launch", "shm_dataloader", "cpu_bound", "memcap")
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


def _ok(result) -> pd.DataFrame:
    frame = result.results
    assert (frame["status"] == "ok").all(), frame.loc[frame["status"] != "ok", "note"].tolist()
    return frame


def _metric(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    rows = frame[frame["metric"] == name]
    assert not rows.empty, f"no {name} rows; metrics are {sorted(set(frame['metric']))}"
    return rows


# ----------------------------------------------------------------------------------------- membw

def test_membw_counts_read_plus_write_bytes():
    assert membw.bytes_moved("copy", 1000) == 2000
    assert membw.bytes_moved("triad", 1000) == 3000


def test_membw_copy_and_triad_run_and_report_bandwidth():
    result = run_benchmark("membw", op=["copy", "triad"], size_mib=2, dtype=["fp32", "bf16"], **FAST)
    frame = _ok(result)
    works = frame.groupby("case")["work"].first()
    assert works["op=copy,size_mib=2,dtype=fp32"] == 2 * 2 * 2**20
    assert works["op=triad,size_mib=2,dtype=bf16"] == 3 * 2 * 2**20
    assert set(frame["work_unit"]) == {"B"}
    summary = result.summary()
    assert (summary["rate_unit"] == "GB/s").all() and (summary["rate"] > 0).all()


def test_membw_triad_computes_a_plus_scalar_times_c():
    params = membw.MembwParams(op="triad", size_mib=1)
    buffers = membw.allocate(params, CPU)
    buffers[2].fill_(2.0)
    membw.op_for("triad", buffers)()
    assert torch.all(buffers[0] == 1.0 + membw.TRIAD_SCALAR * 2.0)


def test_membw_summary_gives_the_fraction_of_a_stated_bandwidth():
    summary = run_benchmark("membw", size_mib=1, peak_gbs=1000.0, **FAST).summary()
    row = summary.iloc[0]
    assert row["pct_of_peak"] == pytest.approx(100.0 * row["rate"] / 1000.0)


def test_an_allocation_that_cannot_fit_is_a_failed_case_with_its_reason():
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1":
        pytest.skip("overcommit_memory=1 would grant a 1 TiB allocation and let the fill exhaust the machine")
    frame = run_benchmark("membw", size_mib=1 << 20, **FAST).results
    assert list(frame["status"]) == ["failed"]
    assert "allocate" in frame["note"].iloc[0]


# -------------------------------------------------------------------------------------- transfer

@no_gpu
def test_transfer_without_a_gpu_is_visibly_skipped():
    frame = run_benchmark("transfer", mode=["single", "many_small"], direction=["h2d", "d2h"],
                          memory=["pinned", "pageable"], size_kib=4, **FAST).results
    assert len(frame) == 8 and (frame["status"] == "skipped").all()
    assert frame["note"].str.startswith("skipped: no GPU").all()


# ---------------------------------------------------------------------------------------- launch

@no_gpu
def test_launch_on_the_cpu_measures_the_dispatch_analogue_and_names_the_skipped_metrics():
    frame = _ok(run_benchmark("launch", launches=50, **FAST))
    assert set(frame["metric"]) == {"eager_cpu_launch"}
    assert (frame["value"] > 0).all() and (frame["value"] < 1e-3).all()
    note = frame["note"].iloc[0]
    assert "skipped: no GPU" in note and all(name in note for name in launch.GPU_ONLY)


def test_per_call_divides_every_sample():
    measurement = measure(lambda: None, "cpu", launch.LaunchParams(**FAST).timer_config())
    scaled = _support.per_call(measurement, 10)
    assert [s.seconds * 10 for s in scaled.samples] == pytest.approx([s.seconds for s in measurement.samples])
    assert scaled.stop_reason == measurement.stop_reason


# -------------------------------------------------------------------------------- shm_dataloader

def test_shm_dataloader_moves_batches_and_states_the_free_shm():
    frame = _ok(run_benchmark("shm_dataloader", num_workers=2, batch_mib=1, batch_size=4, batches=3, **FAST))
    rows = _metric(frame, "time")
    assert rows["work"].iloc[0] == 2**20
    assert "/dev/shm:" in rows["note"].iloc[0] and "MiB free" in rows["note"].iloc[0]


def _small_shm_available() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _small_shm_available(), reason="cannot mount a small /dev/shm in a user+mount namespace")
def test_a_full_dev_shm_is_a_failed_case_with_the_reason_and_the_fix(repo: Path):
    """A real DataLoader against a real 4 MiB /dev/shm (a private tmpfs in a mount namespace)."""
    script = ("import json, benchlib; r = benchlib.run_benchmark('shm_dataloader', num_workers=2, batch_mib=[1, 8], "
              "batch_size=4, batches=2, warmup=0, min_samples=1, max_samples=2, telemetry_hz=0); "
              "print(json.dumps(r.results.drop_duplicates('case')[['case', 'status', 'note']].to_dict('records')))")
    done = subprocess.run(["unshare", "-rm", "sh", "-c",
                           f"mount -t tmpfs -o size=4m tmpfs /dev/shm && exec {sys.executable} -c \"{script}\""],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["case"]: row for row in json.loads(done.stdout.strip().splitlines()[-1])}
    fits, too_big = rows["num_workers=2,batch_mib=1"], rows["num_workers=2,batch_mib=8"]
    assert fits["status"] == "ok"
    assert too_big["status"] == "failed"
    note = too_big["note"]
    assert "no space left in /dev/shm" in note and "4.0 MiB free" in note
    assert "--ipc=host" in note and "--shm-size=" in note


class _Failing:
    """A dataset whose worker fails the way a full /dev/shm makes it fail."""

    def __init__(self, how: str):
        self.how = how

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        if self.how == "enospc":
            raise OSError(28, "unable to allocate shared memory(shm) for file </torch_1>: No space left on device")
        os.kill(os.getpid(), getattr(signal, self.how))
        return index


def _real_failure(how: str) -> BaseException:
    from torch.utils.data import DataLoader

    with pytest.raises((RuntimeError, OSError)) as info:
        list(DataLoader(_Failing(how), batch_size=2, num_workers=1, timeout=30))
    return info.value


def test_failures_naming_shared_memory_are_always_blamed_on_it():
    exc = _real_failure("enospc")
    assert shm_dataloader.classify_failure(exc, shm_free=10**12, needed_bytes=1) == "no space left in /dev/shm"


@pytest.mark.parametrize("how", ["SIGBUS", "SIGKILL"])
def test_a_dead_worker_is_blamed_on_shm_only_when_the_batches_did_not_fit(how):
    """torch's worker handles SIGBUS ("insufficient shared memory" on stderr) and exits; the main
    process only sees that a worker died, so the free /dev/shm decides."""
    dead = _real_failure(how)
    assert shm_dataloader.classify_failure(dead, shm_free=10**12, needed_bytes=2**20) is None
    meaning = shm_dataloader.classify_failure(dead, shm_free=2**20, needed_bytes=2**30)
    assert meaning in {meaning for _, meaning in shm_dataloader.SHM_MAYBE}


def test_the_failure_message_is_one_line_with_the_fix():
    params = shm_dataloader.ShmDataloaderParams(num_workers=4, batch_mib=32)
    message = shm_dataloader.failure_message("no space left in /dev/shm", params, (64 * 2**20, 60 * 2**20))
    assert "\n" not in message and "256 MiB in flight" in message
    assert "60.0 MiB free of 64.0 MiB" in message and "--shm-size=1g" in message


# ------------------------------------------------------------------------------------- cpu_bound

def test_cpu_bound_records_its_limits_and_throttling():
    result = run_benchmark("cpu_bound", task=["matmul", "tokenize"], settings=["user", "forced"], n=64, text_kib=4,
                           **FAST)
    frame = _ok(result)
    matmul = frame[frame["case"] == "task=matmul,settings=user,threads=0"]
    assert _metric(matmul, "time")["work"].iloc[0] == 2 * 64**3
    assert _metric(matmul, "torch_threads")["value"].iloc[0] == torch.get_num_threads()
    assert _metric(matmul, "affinity_cpus")["value"].iloc[0] == len(os.sched_getaffinity(0))
    pinned = frame[frame["case"] == "task=matmul,settings=forced,threads=0"]  # the CPUs allowed
    assert _metric(pinned, "torch_threads")["value"].iloc[0] == _support.allowed_cpus()
    assert "pinned by the workload" in _metric(pinned, "time")["note"].iloc[0]
    one = {m.name: m for m in cpu_bound.run(cpu_bound.CpuBoundParams(settings="forced", threads=1, n=16, **FAST), CPU)}
    assert one["torch_threads"].samples[0].seconds == 1
    assert [case["settings"] for case in result.env["workload"]["cases"]] == ["user", "forced", "user", "forced"]
    tokens = _metric(frame[frame["case"] == "task=tokenize,settings=user,threads=0"], "time")
    text = cpu_bound.synthetic_text(4, 42)
    assert tokens["work"].iloc[0] == len(cpu_bound.TOKEN.findall(text)) and tokens["work_unit"].iloc[0] == "token"
    if _support.cpu_throttling()["nr_throttled"] is not None:
        delta = _metric(matmul, "nr_throttled_delta")
        assert len(delta) == 1 and delta["unit"].iloc[0] == "count" and delta["value"].iloc[0] >= 0
    assert torch.get_num_threads() == _metric(matmul, "torch_threads")["value"].iloc[0]  # restored


@pytest.mark.parametrize("text, cores", [("200000 100000", 2.0), ("150000 100000", 1.5), ("max 100000", None),
                                         (None, None), ("garbage", None)])
def test_cpu_max_parsing(text, cores):
    assert _support.parse_cpu_max(text) == cores


def test_a_cgroup_v2_quota_and_throttling_become_metrics(tmp_path: Path, monkeypatch):
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    (tmp_path / "cpu.stat").write_text("usage_usec 10\nnr_periods 5\nnr_throttled 3\nthrottled_usec 700\n")
    (tmp_path / "memory.max").write_text(f"{8 * 2**30}\n")
    monkeypatch.setattr(_support, "CGROUP_ROOT", tmp_path)
    assert _support.cpu_quota().cores == 2.0
    assert _support.cpu_throttling() == {"nr_throttled": 3, "throttled_usec": 700}
    assert _support.memory_max() == 8 * 2**30
    assert _support.allowed_cpus() == min(2, len(os.sched_getaffinity(0)))
    metrics = {m.name: m for m in cpu_bound.run(cpu_bound.CpuBoundParams(settings="forced", n=32, threads=4, **FAST),
                                                CPU)}
    assert metrics["cpu_quota_cores"].samples[0].seconds == 2.0
    assert "more threads than the quota allows" in metrics["cpu_quota_cores"].note
    assert metrics["nr_throttled_delta"].samples[0].seconds == 0


def test_a_thread_count_needs_settings_forced():
    with pytest.raises(ParamsError, match=r"params/cpu_bound/x.yaml: key 'threads' cannot be 1: a thread count pins "
                                          r"the pool, which is settings: forced"):
        expand_entry_values("cpu_bound", {"threads": 1})


def test_settings_forced_is_refused_where_the_workload_pins_nothing():
    with pytest.raises(ParamsError, match=r"key 'settings' cannot be 'forced': this benchmark pins no math mode, "
                                          r"thread pool or allocator setting itself, so only 'user' applies"):
        expand_entry_values("membw", {"settings": "forced"})


def expand_entry_values(benchmark: str, values: dict) -> None:
    from benchlib.params import validated_cases

    workload = registry()[benchmark]
    validated_cases(workload.params_model, values, workload.case_keys, f"params/{benchmark}/x.yaml")


# ----------------------------------------------------------------------------------------- matmul

MATH_MODE = """
import json, torch
from benchlib import run_benchmark
fast = dict(warmup=1, min_samples=3, max_samples=5, max_time_s=0.5, target_rel_ci=0.2, telemetry_hz=0)
result = run_benchmark("matmul", n=16, settings=["user", "forced"], **fast)
time = result.results[result.results["metric"] == "time"].drop_duplicates("case")
print(json.dumps({"notes": dict(zip(time["case"], time["note"])), "after": torch.get_float32_matmul_precision(),
                  "fingerprint": result.env["torch"]["float32_matmul_precision"], "cases": result.env["workload"]}))
"""


def test_matmul_in_user_mode_runs_with_the_math_mode_the_environment_gives():
    """NGC's TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 turns TF32 on at start: the user mode keeps it, the forced
    mode pins exact fp32, and the environment's mode is back after the case."""
    env = {**os.environ, "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", MATH_MODE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    notes = out["notes"]
    assert ("math mode the environment's: allow_tf32=True, float32_matmul_precision=high"
            in notes["n=16,dtype=fp32,settings=user"])
    assert ("math mode pinned by the workload: allow_tf32=False, float32_matmul_precision=highest"
            in notes["n=16,dtype=fp32,settings=forced"])
    assert out["after"] == out["fingerprint"] == "high"
    assert out["cases"] == {"benchmark": "matmul", "cases": [
        {"case": "n=16,dtype=fp32,settings=user", "settings": "user", "pinned": None},
        {"case": "n=16,dtype=fp32,settings=forced", "settings": "forced", "pinned": matmul_forced()}]}


def matmul_forced() -> str:
    from benchlib.workloads.matmul import MatmulParams

    return MatmulParams.FORCED


# ----------------------------------------------------------------------------------------- memcap

def test_memcap_on_the_cpu_allocates_only_up_to_its_cap_and_reports_the_system():
    frame = _ok(run_benchmark("memcap", chunk_mib=4, host_cap_mib=12, telemetry_hz=0))
    allocated = _metric(frame, "allocated")
    assert allocated["value"].iloc[0] == 12 * 2**20 and allocated["unit"].iloc[0] == "B"
    assert "host memory only" in allocated["note"].iloc[0]
    assert _metric(frame, "mem_available")["value"].iloc[0] > 0
    assert set(frame.groupby("metric").size()) == {1}


def test_growth_stops_at_a_real_allocation_failure():
    def allocate(nbytes: int):
        return torch.empty(nbytes * 2**40, dtype=torch.uint8)  # never satisfiable: 1 TiB per MiB asked

    allocated, reason = memcap.grow(allocate, chunk_bytes=2**20, cap_bytes=2**22)
    assert allocated == 0 and reason.startswith("out of memory")


# ------------------------------------------------------------------------------ params validation

@pytest.mark.parametrize("bench_name, values, key", [
    ("transfer", {"direction": "sideways"}, "'direction'"),
    ("transfer", {"mode": "bulk"}, "'mode'"),
    ("transfer", {"memory": "managed"}, "'memory'"),
    ("membw", {"dtype": "fp8"}, "'dtype'"),
    ("membw", {"op": "scale"}, "'op'"),
    ("cpu_bound", {"task": "sort"}, "'task'"),
    ("cpu_bound", {"device": "cuda"}, "'device'"),
    ("shm_dataloader", {"num_workers": 0}, "'num_workers'"),
    ("memcap", {"chunk_mib": 0}, "'chunk_mib'"),
])
def test_bad_values_name_the_file_and_key_before_anything_runs(tmp_path: Path, bench_name, values, key):
    path = tmp_path / f"{bench_name}-bad.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    with pytest.raises(ParamsError) as info:
        expand_entry(bench_name, str(path), "test")
    assert str(path) in str(info.value) and key in str(info.value)
    with pytest.raises(ParamsError, match=key):
        run_benchmark(bench_name, **values, telemetry_hz=0)


# ------------------------------------------------------------------------------ ceilings, suites

def test_measured_ceilings_take_the_best_copy_and_matmul():
    copies = run_benchmark("membw", op=["copy", "triad"], size_mib=1, **FAST).results
    products = run_benchmark("matmul", n=32, dtype=["fp32", "bf16"], **FAST).results
    found = ceilings.measured_ceilings(pd.concat([copies, products], ignore_index=True))
    copy = copies[copies["case"].str.startswith("op=copy")]
    assert found["copy_gbs"] == {"cpu": pytest.approx(copy["work"].iloc[0] / copy["value"].median() / 1e9)}
    assert set(found["matmul_tflops"]["cpu"]) == {"fp32", "bf16"}
    assert ceilings.measured_ceilings(copies.iloc[0:0]) == {"copy_gbs": {}, "matmul_tflops": {}}


def test_every_new_workload_is_in_the_suites_with_an_estimate():
    assert set(NEW) <= set(registry())
    for name in ("smoke", "quick", "full"):
        cases = [case for case in load_suite(name).cases if case.benchmark in NEW]
        assert {case.benchmark for case in cases} == set(NEW), name
        assert all(case.estimate_s for case in cases), name


def test_the_suite_estimate_counts_cases_invocations_arms_and_cooldowns(tmp_path: Path):
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text("invocations: 2\ncooldown_s: 1\nbenchmarks:\n"
                          "  - {benchmark: membw, params: full, estimate_s: 5}\n"
                          "  - {benchmark: memcap, params: smoke, estimate_s: 3}\n")
    suite = load_suite(str(suite_file))
    runs = len(suite.cases) * 2 * 3  # cases x invocations x arms
    assert suite.estimated_seconds(3) == pytest.approx((12 * 5 + 3) * 2 * 3 + (runs - 1))
    suite_file.write_text("benchmarks:\n  - {benchmark: memcap, params: smoke}\n")
    assert load_suite(str(suite_file)).estimated_seconds(1) is None


@pytest.mark.slow
def test_the_perf_script_runs_on_the_cpu(repo: Path, tmp_path: Path):
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "benchmarks/perf_workloads.py", "--cpu-smoke", "--json", str(out)],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["membw"]["membw_gbs"] > 0
    assert set(figures["summaries"]) == {f"{name}/smoke" for name in NEW}
    assert "membw copy 16 MiB" in done.stdout
