"""benchlib.checks on planted telemetry and results: stuck clocks (in every arm, in one arm, on a DGX
Spark) against healthy runs with red herrings (idle dips, a power cap that costs little, a clock just
above the threshold), and memory differences between arms against differences too small to matter."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchlib.checks import findings_frame
from benchlib.checks.clocks import DGX_SPARK_HINTS, NO_REASON_HINT, REASON_HINTS, clock_fractions, stuck_clock_findings
from benchlib.checks.memory import SEED_TWIN_REFERENCE, memory_by_arm, memory_findings
from benchlib.schema import TELEMETRY_COLUMNS

GIB = 2**30
H100 = ("NVIDIA H100 80GB HBM3", "GPU-h100", 1980, 2619)
GB10 = ("NVIDIA GB10", "GPU-gb10", 3003, 4266)


def trace(arm: str, sm: float, mem: float = 2619, polls: int = 60, util: float | None = 100.0, reasons: str = "",
          idle_polls: int = 0, gpu: tuple = H100, case: str = "n=8192", invocation: int = 0,
          benchmark: str = "matmul", **memory: float) -> pd.DataFrame:
    """A telemetry trace like load_telemetry gives: ``polls`` under load, then ``idle_polls`` idle ones."""
    rows = []
    for k in range(polls + idle_polls):
        busy = k < polls
        row = {column: np.nan for column in TELEMETRY_COLUMNS}
        row.update(timestamp_ns=1_000_000_000 * invocation + 10_000_000 * k, gpu_index=0,
                   sm_clock_mhz=sm if busy else 345.0, mem_clock_mhz=mem if busy else 405.0,
                   gpu_util_pct=(util if busy else 0.0) if util is not None else np.nan,
                   clock_event_reasons=reasons if busy else "gpu_idle", gpu_uuid=gpu[1], mig_uuid=None, **memory)
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.assign(run_id="r", arm=arm, benchmark=benchmark, case=case, invocation=invocation)


def env(gpu: tuple = H100, **memory) -> dict:
    return {"gpus": [{"index": 0, "name": gpu[0], "uuid": gpu[1], "max_sm_clock_mhz": gpu[2], "max_mem_clock_mhz": gpu[3]}],
            "telemetry": {"gpus": [{"gpu_index": 0, "nvml_index": 0, "uuid": gpu[1]}]}, "memory": memory}


def envs_for(telemetry: pd.DataFrame, gpu: tuple = H100) -> dict:
    keys = telemetry[["arm", "benchmark", "case", "invocation"]].drop_duplicates().itertuples(index=False, name=None)
    return {key: env(gpu) for key in keys}


def check(*traces: pd.DataFrame, gpu: tuple = H100, threshold: float = 0.7):
    telemetry = pd.concat(traces, ignore_index=True)
    fractions = clock_fractions(telemetry, envs_for(telemetry, gpu), threshold=threshold)
    return fractions, stuck_clock_findings(fractions, threshold=threshold)


# ----------------------------------------------------------------------------------- stuck clocks

def test_a_clock_stuck_in_both_arms_is_named_even_though_their_ratio_is_one() -> None:
    fractions, findings = check(trace("native", 810, reasons="hw_slowdown"), trace("container", 810, reasons="hw_slowdown"))
    assert fractions.set_index("arm")["sm_fraction"].round(3).to_dict() == {"native": 0.409, "container": 0.409}
    (finding,) = findings
    assert finding.check == "stuck_clock" and finding.severity == "problem" and finding.arms == ("container", "native")
    assert finding.message == (
        "matmul n=8192: the GPU ran below 70% of its maximum clock under load in every arm: SM clock native 41% "
        "(810 of 1980 MHz), container 41% (810 of 1980 MHz) of its maximum (median of the loaded polls). Every arm "
        "is slowed alike, so their ratio stays near 1: a verdict of no container overhead does not mean this GPU "
        "runs at its speed.")
    assert finding.hints == (REASON_HINTS["hw_slowdown"],)


def test_a_clock_stuck_in_one_arm_is_the_difference_between_the_arms() -> None:
    _, (finding,) = check(trace("native", 1900), trace("container", 700, reasons="sw_thermal_slowdown|sw_power_cap"))
    assert finding.arms == ("container",)
    assert "in container: SM clock container 35% (700 of 1980 MHz)" in finding.message
    assert finding.message.endswith("The other arms ran at native 96% (1900 of 1980 MHz): the difference between "
                                    "arms is the clock, not the container.")
    assert finding.hints == (REASON_HINTS["sw_power_cap"], REASON_HINTS["sw_thermal_slowdown"])


def test_a_stuck_dgx_spark_gets_the_power_delivery_and_thermal_hints() -> None:
    # GB10 as seen: about 850 MHz, no clock-event reason, utilisation reported
    _, (finding,) = check(trace("native", 850, mem=4266, gpu=GB10), trace("spark-dev", 840, mem=4266, gpu=GB10),
                          gpu=GB10)
    assert "SM clock native 28% (850 of 3003 MHz), spark-dev 28% (840 of 3003 MHz)" in finding.message
    assert finding.hints == (NO_REASON_HINT, *DGX_SPARK_HINTS)
    assert "full power cycle" in finding.hints[1]


def test_without_utilisation_load_is_told_by_the_idle_reason() -> None:
    stuck = trace("native", 850, mem=4266, gpu=GB10, util=None, idle_polls=40)
    fractions, (finding,) = check(stuck, gpu=GB10)
    assert fractions["polls_loaded"].tolist() == [60]  # the 40 idle polls (gpu_idle) are left out
    assert "in the only arm" in finding.message


def test_a_stuck_memory_clock_is_named_too() -> None:
    _, (finding,) = check(trace("native", 1950, mem=1200), trace("container", 1950, mem=2619))
    assert finding.arms == ("native",) and "memory clock native 46% (1200 of 2619 MHz)" in finding.message


def test_a_healthy_run_is_silent_whatever_its_idle_dips_and_power_cap() -> None:
    fractions, findings = check(
        trace("native", 1755, reasons="sw_power_cap", idle_polls=50),  # a power cap at 89 %: normal under load
        trace("container", 1980, idle_polls=200),  # long idle stretches at 345 MHz: not under load
    )
    assert findings == []
    assert fractions.set_index("arm")["sm_fraction"].round(3).to_dict() == {"native": 0.886, "container": 1.0}


@pytest.mark.parametrize("sm, flagged", [(1426, False), (1346, True)])  # 72 % and 68 % of 1980 MHz
def test_the_threshold_is_seventy_percent_of_the_maximum(sm: float, flagged: bool) -> None:
    _, findings = check(trace("native", sm), trace("container", 1980))
    assert bool(findings) is flagged


def test_too_few_loaded_polls_say_nothing() -> None:
    _, findings = check(trace("native", 500, polls=3, idle_polls=100))
    assert findings == []


def test_an_unknown_maximum_gives_no_fraction_and_no_finding() -> None:
    telemetry = trace("native", 500)
    fractions = clock_fractions(telemetry, {})
    assert fractions["sm_fraction"].isna().all() and stuck_clock_findings(fractions) == []


def test_findings_become_a_table() -> None:
    _, findings = check(trace("native", 810), trace("container", 810))
    table = findings_frame(findings)
    assert table.columns.tolist()[:6] == ["check", "severity", "benchmark", "case", "arms", "message"]
    assert table["check"].tolist() == ["stuck_clock"]


# ------------------------------------------------------------------------------ memory findings

def _results(metric: str, values: dict[str, list[float]], unit: str = "B", benchmark: str = "llm_inference",
             case: str = "shape=llama-1b") -> pd.DataFrame:
    rows = [{"arm": arm, "benchmark": benchmark, "case": case, "invocation": i, "metric": metric, "unit": unit,
             "value": value, "status": "ok"} for arm, series in values.items() for i, value in enumerate(series)]
    return pd.DataFrame(rows)


def test_a_smaller_kv_cache_and_a_larger_process_tree_are_findings_with_the_spark_reference() -> None:
    results = pd.concat([
        _results("kv_cache_tokens", {"native": [2_200_000, 2_210_000, 2_190_000], "container": [1_200_000] * 3}, "token"),
        _results("peak_memory", {"native": [20.0 * GIB] * 3, "container": [20.3 * GIB] * 3}),  # 0.3 GiB: too small
    ], ignore_index=True)
    telemetry = pd.concat([
        trace("native", 1980, benchmark="llm_inference", case="shape=llama-1b", invocation=i, proc_rss_bytes=20 * GIB)
        for i in range(3)] + [
        trace("container", 1980, benchmark="llm_inference", case="shape=llama-1b", invocation=i, proc_rss_bytes=41 * GIB)
        for i in range(3)], ignore_index=True)
    quantities = memory_by_arm(results, telemetry)
    findings = memory_findings(quantities)
    messages = {f.values["quantity"]: f.message for f in findings}
    assert set(messages) == {"kv_cache_tokens", "peak_process_tree_rss"}
    assert messages["kv_cache_tokens"] == (
        "llm_inference shape=llama-1b: in container the KV cache holds 45% fewer tokens than in native "
        "(1,200,000 tokens vs 2,200,000 tokens): the arm leaves less memory free after the weights.")
    assert messages["peak_process_tree_rss"] == (
        "llm_inference shape=llama-1b: peak RSS of the process tree: 21.0 GiB more in container than in native "
        "(41.0 GiB vs 20.0 GiB, +105%).")
    assert all(f.hints == (SEED_TWIN_REFERENCE,) and f.arms == ("container", "native") for f in findings)


def test_small_differences_are_not_findings() -> None:
    results = pd.concat([
        _results("available", {"native": [100 * GIB], "container": [95 * GIB]}),  # 5 %: below the relative bar
        _results("allocated", {"native": [4 * GIB], "container": [3.5 * GIB]}),  # 12 % but 0.5 GiB
        _results("kv_cache_tokens", {"native": [1000], "container": [950]}, "token"),
    ], ignore_index=True)
    assert memory_findings(memory_by_arm(results)) == []


def test_what_was_available_at_the_start_comes_from_the_fingerprints() -> None:
    envs = {("native", "memcap", "chunk_mib=256", i): env(available_bytes=110 * GIB) for i in range(2)}
    envs |= {("container", "memcap", "chunk_mib=256", i): env(available_bytes=80 * GIB) for i in range(2)}
    (finding,) = memory_findings(memory_by_arm(envs=envs))
    assert finding.message == ("memcap chunk_mib=256: memory available at the start (page cache counted): 30.0 GiB "
                               "less in container than in native (80.0 GiB vs 110.0 GiB, -27%).")


def test_the_baseline_can_be_named_and_more_memory_left_is_not_worse() -> None:
    results = _results("cuda_free_at_end", {"native": [50 * GIB], "isolated": [70 * GIB]})
    (finding,) = memory_findings(memory_by_arm(results), baseline="native")
    assert not finding.values["worse"] and finding.hints == ()


# --------------------------------------------------------------------------- baseline not bare metal

BARE = {"container": {"detected": False, "engine": None, "evidence": []},
        "virtualization": {"vm": False, "evidence": []}}
IN_DOCKER = {"container": {"detected": True, "engine": "docker",
                           "evidence": ["/.dockerenv", "pid 1 is 'process_api', not a host init"]}}  # the sample's
IN_VM = {**BARE, "virtualization": {"vm": True, "evidence": ["the hypervisor flag is set in /proc/cpuinfo"]}}


def _envs(native: dict, container: dict) -> dict:
    return {("native", "matmul", "n=64", i): native for i in (1, 2)} | {("docker", "matmul", "n=64", 1): container}


def test_a_native_baseline_inside_a_container_or_vm_is_a_problem() -> None:
    from benchlib.checks.baseline import bare_metal_findings

    kinds = {"native": "native", "docker": "docker"}
    (docker,) = bare_metal_findings(_envs(IN_DOCKER, IN_DOCKER), "native", kinds)
    assert docker.severity == "problem" and docker.arms == ("native",)
    assert docker.message.startswith("native is not bare metal: the baseline native ran where a container (docker) "
                                     "was detected: /.dockerenv; pid 1 is 'process_api', not a host init.")
    (vm,) = bare_metal_findings(_envs(IN_VM, IN_DOCKER), "native", kinds)
    assert "virtual machine: the hypervisor flag is set in /proc/cpuinfo" in vm.message
    # red herrings: a bare-metal native with a containerised arm; a baseline meant to be a container
    assert bare_metal_findings(_envs(BARE, IN_DOCKER), "native", kinds) == []
    assert bare_metal_findings({("docker", "m", "c", 1): IN_DOCKER}, "docker", kinds) == []
    assert bare_metal_findings({}, None) == []


def test_the_fingerprint_reads_the_hypervisor_flag_and_dmi(tmp_path) -> None:
    from benchlib.fingerprint import _virtualization

    cpuinfo = tmp_path / "cpuinfo"
    (tmp_path / "class/dmi/id").mkdir(parents=True)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu vme sse2 avx\n")
    assert _virtualization(str(cpuinfo), str(tmp_path)) == {"vm": False, "evidence": [], "dmi": None,
                                                            "hypervisor_type": None}
    (tmp_path / "class/dmi/id/sys_vendor").write_text("Dell Inc.\n")
    (tmp_path / "class/dmi/id/product_name").write_text("PowerEdge XE9680\n")
    assert not _virtualization(str(cpuinfo), str(tmp_path))["vm"]
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu vme sse2 hypervisor avx\n")
    (tmp_path / "class/dmi/id/sys_vendor").write_text("QEMU\n")
    (tmp_path / "class/dmi/id/product_name").write_text("Standard PC (Q35 + ICH9, 2009)\n")
    found = _virtualization(str(cpuinfo), str(tmp_path))
    assert found["vm"] and found["evidence"] == ["the hypervisor flag is set in /proc/cpuinfo",
                                                 "DMI says 'QEMU Standard PC (Q35 + ICH9, 2009)'"]
