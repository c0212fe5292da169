"""benchlib.diagnosis.mechanisms, .alignments and .blame on real and planted fingerprints.

The baseline is a real env.json of the bundled sample (native on an H100); the arms are that
fingerprint with a planted difference (a CPU quota, an environment variable, another stack...), or
the sample's real isolated arm.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from benchlib import envdiff
from benchlib.diagnosis.alignments import (AlignCpuQuota, AlignCpuset, AlignIpcHost, AlignMemoryLimit, AlignShm,
                                           AlignUlimit, ApplyEnv, Combined, SeccompUnconfined, SetEnv, SetThreads,
                                           StackSplit, format_bytes)
from benchlib.diagnosis.blame import blame, case_sensitivity
from benchlib.diagnosis.classes import GPU_KERNELS, HOST, Sensitivity
from benchlib.diagnosis.mechanisms import _IDENTITY, _matches, differences, fingerprint_pairs
from benchlib.results import load_envs

SAMPLE = Path(__file__).resolve().parents[1] / "outputs" / "sample"
CASE = "n=8192,dtype=fp32"


@pytest.fixture(scope="module")
def sample_envs() -> dict:
    return load_envs(SAMPLE)


@pytest.fixture
def native(sample_envs) -> dict:
    return copy.deepcopy(sample_envs[("native", "matmul", CASE, 1)])


def flat(env: dict) -> dict[str, str]:
    return envdiff.representative({("x", "b", "c", 1): env})["x"]


def diff(base: dict, arm: dict) -> dict:
    return {d.mechanism: d for d in differences(flat(base), flat(arm))}


def test_the_sample_isolated_arm_differs_in_shm_network_and_filesystem_but_no_quota(sample_envs):
    found = fingerprint_pairs(sample_envs, "native", benchmark="matmul", case=CASE)["isolated"]
    names = [d.mechanism for d in found]
    # native has no readable cpu.max and no cpuset file, the isolated arm "max 100000" and "0-15":
    # both mean no quota and every CPU, so neither is a difference
    assert "cpu_quota" not in names and "cpuset" not in names
    assert names[0] == "shm" and {"network", "filesystem", "env:(informational)", "no_effect"} <= set(names)
    shm = found[0]
    assert shm.alignments == (AlignShm(128 << 30), AlignIpcHost())
    assert shm.evidence("native", "isolated") == "shm.size_bytes: 128 GiB in native, 64 MiB in isolated"
    informational = next(d for d in found if d.mechanism == "env:(informational)")
    assert "env.NCCL_VERSION" in {kd.key for kd in informational.keys}  # describes the image; configures nothing


def test_no_differing_key_is_lost_or_counted_twice(sample_envs, native):
    arm = copy.deepcopy(native)
    arm["cgroup"].update(cpu_max="100000 100000", cpu_quota_cores=1.0)
    arm["env"].update(FOO_UNKNOWN_SETTING="1", OMP_NUM_THREADS="1")
    arm["torch"]["num_threads"] = 1
    arm["versions"]["torch"] = "2.10.0a0+nv25.10"
    arm["security"].update(seccomp=2, seccomp_mode="filter", seccomp_filters=1)
    for base, other in ((native, arm), (native, sample_envs[("isolated", "matmul", CASE, 1)])):
        a, b = flat(base), flat(other)
        differing = {k for k in set(a) | set(b) if a.get(k, envdiff.ABSENT) != b.get(k, envdiff.ABSENT)
                     and not _matches(k, _IDENTITY)}
        keys = [kd.key for d in differences(a, b) for kd in d.keys if kd.key in a or kd.key in b]
        assert len(keys) == len(set(keys))
        explained_away = {"cgroup.cpu_max", "cgroup.cpu_stat.nr_periods", "cgroup.cpuset_cpus_effective",
                          "cgroup.cpu_stat.nr_throttled", "cgroup.cpu_stat.throttled_usec"}
        assert differing - set(keys) <= explained_away, differing - set(keys)


def test_a_cpu_quota_under_a_host_sized_pool_gives_two_mechanisms(native):
    arm = copy.deepcopy(native)
    arm["cgroup"].update(cpu_max="100000 100000", cpu_quota_cores=1.0, cpu_stat={"nr_throttled": 40})
    found = diff(native, arm)
    assert found["cpu_quota"].alignments == (AlignCpuQuota(None),)
    threads = found["threads"]  # the same 16 threads in both, but the arm may use 1 CPU
    assert threads.alignments == (SetThreads(1),)
    assert ("CPUs allowed (affinity, quota)", "16", "1") in [(kd.key, kd.baseline, kd.arm) for kd in threads.keys]
    assert "OMP_NUM_THREADS=1" in threads.alignments[0].fix and "--cpus" in found["cpu_quota"].alignments[0].fix


def test_an_environment_only_arm_names_each_variable_with_its_evidence(native):
    """NGC's TF32 override and launch blocking, beside a variable that does nothing here."""
    arm = copy.deepcopy(native)
    arm["env"].update(TORCH_ALLOW_TF32_CUBLAS_OVERRIDE="1", CUDA_LAUNCH_BLOCKING="1", NCCL_DEBUG="INFO")
    arm["torch"].update(cuda_matmul_allow_tf32=True, float32_matmul_precision="high")
    found = diff(native, arm)
    assert set(found) == {"env:TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "env:CUDA_LAUNCH_BLOCKING", "env:NCCL_DEBUG"}
    tf32 = found["env:TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"]
    assert [kd.key for kd in tf32.keys] == ["env.TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "torch.cuda_matmul_allow_tf32",
                                            "torch.float32_matmul_precision"]
    assert tf32.alignments == (SetEnv((("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", None),)),
                               ApplyEnv((("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1"),)))
    assert tf32.alignments[0].side == "arm" and tf32.alignments[1].side == "baseline"
    assert tf32.classes == {GPU_KERNELS} and found["env:CUDA_LAUNCH_BLOCKING"].classes == {HOST}
    assert "unset TORCH_ALLOW_TF32_CUBLAS_OVERRIDE" in tf32.alignments[0].fix
    arm["env"]["TRITON_PTXAS_PATH"] = "/usr/local/cuda/bin/ptxas"  # recorded by the fingerprint on main
    assert diff(native, arm)["env:TRITON_PTXAS_PATH"].classes == {GPU_KERNELS}


def test_tf32_flags_with_no_variable_behind_them_are_the_stacks_math_mode(native):
    arm = copy.deepcopy(native)
    arm["torch"]["float32_matmul_precision"] = "high"
    (only,) = differences(flat(native), flat(arm))
    assert only.mechanism == "math_mode" and not only.testable and "stack" in only.note


def test_another_image_is_one_stack_difference_with_its_library_path(native):
    arm = copy.deepcopy(native)
    arm["versions"].update(torch="2.10.0a0+nv25.10", cublas="12.9.1")
    arm["python"]["executable"] = "/usr/bin/python3"
    arm["env"].update(LD_LIBRARY_PATH="/usr/local/lib/python3.12/dist-packages/torch/lib", CUDA_VERSION="13.1",
                      SOME_IMAGE_SETTING="x")
    found = diff(native, arm)
    stack = found["stack"]
    assert {"versions.torch", "versions.cublas", "python.executable", "env.LD_LIBRARY_PATH"} <= {kd.key for kd in stack.keys}
    assert stack.alignments == (StackSplit("isolated"), StackSplit("rootfs"), StackSplit("native_image_env"))
    assert [a.side for a in stack.alignments] == ["arm", "baseline", "baseline"]
    assert found["env:(unknown)"].alignments[0] == SetEnv((("SOME_IMAGE_SETTING", None),))
    assert [kd.key for kd in found["env:(informational)"].keys] == ["env.CUDA_VERSION"]


def test_seccomp_memlock_memory_and_cpuset(native):
    arm = copy.deepcopy(native)
    arm["security"].update(seccomp=2, seccomp_mode="filter", seccomp_filters=1,
                           speculation_store_bypass="thread force mitigated")
    arm["limits"]["memlock"] = {"soft": 65536, "hard": 65536}
    arm["cgroup"]["memory_max"] = 8 << 30
    arm["cpu"].update(affinity_count=2, affinity_cpus="0-1")
    found = diff(native, arm)
    seccomp = found["seccomp"]
    assert seccomp.alignments == (SeccompUnconfined(),) and "mitigations" not in found
    assert "security.speculation_store_bypass" in {kd.key for kd in seccomp.keys}
    memlock = found["ulimit:memlock"].alignments[0]
    assert memlock == AlignUlimit("memlock", "unlimited", "unlimited") and memlock.fix.endswith("--ulimit memlock=-1")
    assert found["memory_limit"].alignments == (AlignMemoryLimit(None),)
    assert found["cpuset"].alignments == (AlignCpuset(None),)


def test_alignment_wording():
    assert [format_bytes(n) for n in (64 << 20, 128 << 30, 3 << 10, 1536, 1000)] == ["64m", "128g", "3k", "1536b", "1000b"]
    assert AlignShm(1 << 30).fix == "run the container with --shm-size=1g (or --ipc=host)"
    assert AlignUlimit("stack", "67108864", "unlimited").value == "67108864:-1"
    both = Combined((AlignShm(1 << 30), SeccompUnconfined()))
    assert both.side == "arm" and both.what == "/dev/shm at the baseline's 1g and no seccomp filter"
    with pytest.raises(ValueError, match="one side"):
        Combined((SetEnv((("A", None),)), ApplyEnv((("A", "1"),))))


# ------------------------------------------------------------------------------------- blame


def test_no_blame_out_of_class_for_a_gpu_matmul(sample_envs, native):
    """The bundled report explained a bf16 matmul gap with /dev/shm and the CPU quota: neither can act on a
    GPU product, so neither is a likely cause; both stay under "also differs" with the reason."""
    found = fingerprint_pairs(sample_envs, "native", benchmark="matmul", case="n=8192,dtype=bf16")["isolated"]
    params = json.dumps({"n": 8192, "dtype": "bf16"})
    verdict = blame(found, case_sensitivity("matmul", params, "cuda:0 NVIDIA H100 80GB HBM3"))
    assert verdict.likely == ()
    likely, also = verdict.sentences("native", "isolated")
    assert likely == "" and "/dev/shm size (acts on shared memory, not on this case's GPU kernels)" in also


def test_the_quota_and_not_shm_is_the_likely_cause_for_cpu_bound(native):
    """The issue's planted case: a CPU quota beside a /dev/shm difference that cannot matter."""
    arm = copy.deepcopy(native)
    arm["cgroup"].update(cpu_max="100000 100000", cpu_quota_cores=1.0)
    arm["shm"]["size_bytes"] = 64 << 20
    sensitivity = case_sensitivity("cpu_bound", {"task": "matmul", "settings": "user", "threads": 0}, "cpu")
    verdict = blame(differences(flat(native), flat(arm)), sensitivity)
    assert [d.mechanism for d in verdict.likely] == ["cpu_quota", "threads"]
    assert [(d.mechanism, why) for d, why in verdict.also_differs] == [
        ("shm", "acts on shared memory, not on this case's host-bound code")]
    forced = case_sensitivity("cpu_bound", {"task": "matmul", "settings": "forced", "threads": 0}, "cpu")
    pinned = blame(differences(flat(native), flat(arm)), forced)
    assert [d.mechanism for d in pinned.likely] == ["cpu_quota"]
    assert ("threads", "settings: forced pins the thread pool") in [(d.mechanism, w) for d, w in pinned.also_differs]


def test_the_tf32_override_acts_on_fp32_as_the_user_runs_it_only(native):
    arm = copy.deepcopy(native)
    arm["env"].update(TORCH_ALLOW_TF32_CUBLAS_OVERRIDE="1", CUDA_LAUNCH_BLOCKING="1", FOO="1")
    found = differences(flat(native), flat(arm))
    gpu = "cuda:0 NVIDIA H200"
    user = blame(found, case_sensitivity("matmul", {"dtype": "fp32", "settings": "user"}, gpu))
    assert [d.mechanism for d in user.likely] == ["env:TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"]
    assert dict((d.mechanism, w) for d, w in user.also_differs) == {
        "env:CUDA_LAUNCH_BLOCKING": "acts on host-bound code, not on this case's GPU kernels",
        "env:(unknown)": "unknown effect: only an ablation can tell"}
    forced = blame(found, case_sensitivity("matmul", {"dtype": "fp32", "settings": "forced"}, gpu))
    assert forced.likely == ()
    bf16 = blame(found, case_sensitivity("matmul", {"dtype": "bf16"}, gpu))
    assert dict((d.mechanism, w) for d, w in bf16.also_differs)["env:TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"] == \
        "bf16 products use no TF32"
    launch = blame(found, case_sensitivity("launch", {"launches": 1000}, gpu))
    assert [d.mechanism for d in launch.likely] == ["env:CUDA_LAUNCH_BLOCKING"]


def test_sensitivity_classes_are_checked():
    with pytest.raises(ValueError, match="unknown sensitivity class"):
        Sensitivity(frozenset({"GPU kernel"}))
