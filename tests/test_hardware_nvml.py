"""The user's hardware without the hardware: NVML replaced at the library boundary (tests/fake_nvml.py).

A DGX Spark (GB10: NVML has no memory figures), an 8-GPU server with one GPU lost, and an H100 in
MIG mode, each through the real telemetry sampler, fingerprint, device listing, GPU lock and memcap
code. Only ``sys.modules["pynvml"]`` is replaced.
"""
from __future__ import annotations

import math
import os
import sys
import time

import pandas as pd
import pytest

from benchlib import device, fingerprint, gpulock, telemetry
from benchlib.telemetry import NvmlSampler, energy_rate, pid_namespace_note
from benchlib.workloads import memcap

from fake_nvml import FakeGpu, dgx_spark, eight_gpu_server, make_nvml, mig_h100

GIB = 2**30


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """Install a stand-in NVML for ``gpus`` (and a CUDA_VISIBLE_DEVICES value, None: unset)."""
    def install(gpus: list[FakeGpu], visible: str | None = None):
        module = make_nvml(gpus)
        monkeypatch.setitem(sys.modules, "pynvml", module)
        monkeypatch.delenv(gpulock.IDS_ENV, raising=False)
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        device._host_gpus.cache_clear()
        return module

    yield install
    device._host_gpus.cache_clear()


def _sample(seconds: float = 0.25, **kwargs) -> NvmlSampler:
    with NvmlSampler(**kwargs) as sampler:
        time.sleep(seconds)
    return sampler


# ----------------------------------------------------------------------------------------- DGX Spark

def test_gb10_telemetry_keeps_clocks_and_host_memory_when_nvml_has_no_memory(machine) -> None:
    machine(dgx_spark())
    sampler = _sample(hz=100)
    assert sampler.status == "ok"
    frame = sampler.frame()
    assert (frame["sm_clock_mhz"] == 2405).all() and (frame["power_w"] == 90.0).all()
    assert frame["mem_used_bytes"].isna().all() and frame["proc_gpu_bytes"].isna().all()
    first, last = frame.iloc[0], frame.iloc[-1]
    for row in (first, last):  # memory is read on the first and last poll, whatever the rate
        assert row["mem_available_bytes"] > 0 and row["proc_rss_bytes"] > 0
    gpu = sampler.summary()["gpus"][0]
    assert gpu["name"] == "NVIDIA GB10" and gpu["scope"] == "whole GPU"
    assert "mem_used_bytes" in gpu["unsupported"]
    if pid_namespace_note() is None:
        assert "proc_gpu_bytes" in gpu["unsupported"]
    else:  # in its own PID namespace the sampler does not ask, and says why
        assert gpu["notes"] == [pid_namespace_note()]
    assert "Not Supported" in gpu["unsupported_why"]["mem_used_bytes"]


def test_gb10_memcap_says_nvml_does_not_support_memory_not_that_the_gpu_is_missing(machine) -> None:
    nvml = machine(dgx_spark())
    uuid = dgx_spark()[0].uuid
    found = memcap.nvml_memory(nvml, uuid.removeprefix("GPU-"))  # torch gives the UUID without its prefix
    assert found.free is None
    assert found.note.startswith("NVML: memory info is not supported on this GPU (NVIDIA GB10)")
    assert "no device with UUID" not in found.note
    assert memcap.nvml_memory(nvml, "GPU-00000000-dead-beef").note == "NVML: no device with UUID GPU-00000000-dead-beef"
    server = memcap.nvml_memory(machine(eight_gpu_server()), eight_gpu_server()[0].uuid)
    assert (server.total, server.used, server.note) == (80 * GIB, 2 * GIB, "")


def test_gb10_fingerprint_records_the_gpu_and_what_nvml_cannot_say(machine) -> None:
    nvml = machine(dgx_spark())
    (gpu,) = fingerprint._gpus(nvml)
    assert gpu["name"] == "NVIDIA GB10" and gpu["max_sm_clock_mhz"] == 3003
    assert gpu["memory_total_bytes"].startswith("error: NVMLError_NotSupported")
    assert "mig_devices" not in gpu


# ----------------------------------------------------------------------------- 8 GPUs, one lost

@pytest.mark.parametrize("how", ["handle", "queries"])
def test_a_lost_gpu_is_left_out_of_the_host_listing_with_its_reason(machine, how: str) -> None:
    machine(eight_gpu_server(lost=3, how=how))
    assert device.host_gpu_count() == 7
    assert eight_gpu_server()[3].uuid not in device.host_gpu_uuids()
    (problem,) = device.host_gpu_problems()
    assert problem.startswith("GPU 3 (NVML index): NVMLError_GpuIsLost")


def test_nvml_failing_at_the_count_is_no_gpu_not_a_crash(machine, monkeypatch) -> None:
    nvml = machine(eight_gpu_server())

    def broken() -> int:
        raise nvml.NVMLError(nvml.NVML_ERROR_UNKNOWN)

    monkeypatch.setattr(nvml, "nvmlDeviceGetCount", broken)
    device._host_gpus.cache_clear()
    assert device.host_gpu_count() == 0 and device.host_gpu_problems() == ()


@pytest.mark.parametrize("how", ["handle", "queries"])
def test_one_lost_gpu_degrades_only_its_own_telemetry(machine, how: str) -> None:
    machine(eight_gpu_server(lost=3, how=how))
    sampler = _sample(hz=50)
    assert sampler.status == "ok"
    frame = sampler.frame()
    assert sorted(frame["gpu_index"].unique()) == list(range(8))
    lost, healthy = frame[frame["gpu_index"] == 3], frame[frame["gpu_index"] != 3]
    assert lost["sm_clock_mhz"].isna().all() and lost["power_w"].isna().all()
    assert (healthy["sm_clock_mhz"] == 1980).all() and (healthy["power_w"] == 350.0).all()
    gpus = {gpu["gpu_index"]: gpu for gpu in sampler.summary()["gpus"]}
    assert gpus[3]["error"].startswith("cannot open: NVMLError_GpuIsLost")
    assert all(gpus[i]["error"] is None for i in gpus if i != 3)


def test_one_lost_gpu_keeps_the_other_fingerprint_entries(machine) -> None:
    nvml = machine(eight_gpu_server(lost=3, how="queries"))
    gpus = fingerprint._gpus(nvml)
    assert len(gpus) == 8
    assert gpus[3] == {"index": 3, "error": "NVMLError_GpuIsLost: GPU is lost"}
    assert gpus[0]["name"] == "NVIDIA H100 80GB HBM3" and gpus[7]["max_sm_clock_mhz"] == 1980


def test_energy_rate_fits_the_gpu_count() -> None:
    assert energy_rate(100, 10, 1) == 10
    assert energy_rate(100, 10, 8) == 10  # 8 reads of 3 ms spread over 10 polls of 10 ms
    assert energy_rate(100, 10, 16) == 6.25  # one read per poll at most: 100 / 16 per GPU
    assert energy_rate(10, 10, 8) == 10  # a 100 ms poll holds all 8 reads
    assert energy_rate(100, 10, 40) == 2.5
    assert energy_rate(100, 0, 8) == 0


def test_eight_gpus_take_turns_reading_energy(machine) -> None:
    gpus = eight_gpu_server(lost=7)
    for gpu in gpus:
        gpu.lost = None
    machine(gpus)
    sampler = _sample(seconds=0.6, hz=100, energy_hz=10)
    frame = sampler.frame()
    polls = frame.assign(poll=frame.index // 8).groupby("poll")["energy_mj"].count()
    middle = polls.iloc[1:-1]  # the first and last poll read every GPU on purpose
    assert polls.iloc[0] == 8 and polls.iloc[-1] == 8
    assert middle.max() <= 1, polls.tolist()  # one GPU per poll, never two
    assert all(gpu.energy_reads >= 4 for gpu in gpus)  # first, last and about 6 in between
    assert sampler.summary()["energy_hz_per_gpu"] == 10


def test_cuda_visible_devices_chooses_what_is_sampled_and_locked(machine) -> None:
    gpus = eight_gpu_server(lost=3)
    machine(gpus, visible=f"{gpus[5].uuid},2")
    frame = _sample(hz=50).frame()
    assert frame.groupby("gpu_index")["gpu_uuid"].first().to_dict() == {0: gpus[5].uuid, 1: gpus[2].uuid}
    assert gpulock.device_ids() == tuple(sorted([gpus[5].uuid, gpus[2].uuid]))
    assert gpulock.device_ids(ordinals=[1]) == (gpus[2].uuid,)
    assert _sample(hz=50, gpu_indices=[1]).frame()["gpu_uuid"].unique().tolist() == [gpus[2].uuid]


def test_the_workloads_device_parameters_choose_the_ordinals() -> None:
    assert device.ordinals_for(["auto", "cuda", "cuda:3", "cpu", "cuda:3"]) == [0, 3]
    assert device.ordinals_for(["cpu"]) == []


def test_process_gpu_memory_is_the_driver_view_of_this_process_tree(machine) -> None:
    gpus = eight_gpu_server()
    gpus[0].processes = [(os.getpid(), 3 * GIB), (2**22 + 17, 5 * GIB)]  # ours, and another tenant's
    machine(gpus)
    frame = _sample(hz=50, gpu_indices=[0]).frame()
    note = pid_namespace_note()
    if note is None:  # host PIDs are ours: the tenant's 5 GiB is not counted
        assert frame["proc_gpu_bytes"].dropna().eq(3 * GIB).all() and frame["proc_gpu_bytes"].notna().sum() >= 2
    else:
        assert frame["proc_gpu_bytes"].isna().all()
    assert pid_namespace_note("pid:[4026531836]") is None
    assert "own PID namespace" in pid_namespace_note("pid:[4026532999]")


# ------------------------------------------------------------------------------------------------ MIG

def test_a_mig_slice_is_recorded_and_its_telemetry_labelled_as_the_parents(machine) -> None:
    gpus = mig_h100()
    slice_1g = gpus[0].mig[0]
    nvml = machine(gpus, visible=slice_1g.uuid)
    sampler = _sample(hz=50)
    frame = sampler.frame()
    assert (frame["gpu_uuid"] == gpus[0].uuid).all() and (frame["mig_uuid"] == slice_1g.uuid).all()
    (gpu,) = sampler.summary()["gpus"]
    assert gpu["mig_name"] == "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    assert gpu["scope"].startswith(f"parent GPU of MIG slice {slice_1g.uuid}")
    visible = fingerprint._visible_devices(nvml)
    assert visible["devices"] == [{"cuda_ordinal": 0, "nvml_index": 0, "gpu_uuid": gpus[0].uuid,
                                   "mig_uuid": slice_1g.uuid, "mig_name": slice_1g.name, "mig_profile": "1g.10gb"}]
    (entry,) = fingerprint._gpus(nvml)
    assert entry["mig_mode"] == 1
    assert [(m["profile"], m["sm_count"], m["memory_total_bytes"]) for m in entry["mig_devices"]] == [
        ("1g.10gb", 16, 9856 * 2**20), ("3g.40gb", 60, 40192 * 2**20)]
    assert gpulock.device_ids() == (slice_1g.uuid,)  # the slice, not the whole GPU


def test_two_slices_of_one_gpu_are_two_devices(machine) -> None:
    gpus = mig_h100()
    machine(gpus, visible=",".join(m.uuid for m in gpus[0].mig))
    frame = _sample(hz=50).frame()
    assert frame.groupby("gpu_index")["mig_uuid"].first().tolist() == [m.uuid for m in gpus[0].mig]
    assert gpulock.device_ids() == tuple(sorted(m.uuid for m in gpus[0].mig))


def test_telemetry_rows_conform_to_the_schema(machine) -> None:
    machine(mig_h100())
    frame = _sample(hz=50).frame()
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == list(telemetry.TELEMETRY_COLUMNS)
    assert not math.isnan(frame["sm_clock_mhz"].iloc[0])
