"""benchlib.envdiff on hand-built fingerprints: what differs, in which order, with which notes."""
from __future__ import annotations

import copy

import pytest

from benchlib.envdiff import ABSENT, MECHANISMS, between, env_diff, flatten, is_ignored, likely_causes, mechanism_of

BASE = {
    "captured_at": "2026-11-23T10:00:00+00:00",
    "host": {"hostname": "node-1", "kernel": "6.8.0"},
    "process": {"pid": 100, "uid": 0},
    "python": {"executable": "/usr/bin/python3"},
    "versions": {"torch": "2.11.0+cu130", "cublas": "13.0.0"},
    "torch": {"arch_list": ["sm_80", "sm_90"], "float32_matmul_precision": "highest", "num_threads": 8},
    "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "power_limit_w": 700.0, "sm_clock_mhz": 1980}],
    "cgroup": {"cpu_max": "max 100000", "cpu_stat": {"nr_periods": 10, "nr_throttled": 0}},
    "shm": {"size_bytes": 137438953472, "free_bytes": 137000000000},
    "memory": {"mem_available_bytes": 500_000_000_000},
    "env": {"BENCHLIB_ARM": "native", "CUDA_VISIBLE_DEVICES": "0"},
}


def _container(**changes) -> dict:
    """BASE as seen inside an NGC-like container, with per-invocation noise."""
    env = copy.deepcopy(BASE)
    env["host"]["hostname"] = "3f2c1a4e9b7d"
    env["python"]["executable"] = "/usr/local/bin/python"
    env["versions"]["torch"] = "2.10.0a0+nv25.10"
    env["torch"]["float32_matmul_precision"] = "high"
    env["shm"]["size_bytes"] = 67108864
    env["env"].update({"BENCHLIB_ARM": "container", "CUDA_CACHE_DISABLE": "1", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "1"})
    for dotted, value in changes.items():
        node = env
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return env


def _native(pid: int, free: int) -> dict:
    env = copy.deepcopy(BASE)
    env["process"]["pid"], env["shm"]["free_bytes"] = pid, free
    env["captured_at"] = f"2026-11-23T10:00:{pid % 60:02d}+00:00"
    return env


@pytest.fixture
def envs() -> dict:
    return {
        ("native", "matmul", "n=8192", 1): _native(101, 1),
        ("native", "matmul", "n=8192", 2): _native(102, 2),
        ("container", "matmul", "n=8192", 1): _container(process__pid=7, cgroup__cpu_stat={"nr_periods": 5, "nr_throttled": 3}),
        ("container", "matmul", "n=8192", 2): _container(process__pid=7, cgroup__cpu_stat={"nr_periods": 9, "nr_throttled": 9}),
        ("container", "matmul", "n=8192", 3): _container(process__pid=7, cgroup__cpu_stat={"nr_periods": 9, "nr_throttled": 9},
                                                         torch__num_threads=4),
    }


def test_flatten_gives_dotted_keys_indexes_lists_of_dicts_and_keeps_scalar_lists_whole():
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "gpus": [{"name": "x"}, {"name": "y"}], "s": "text"})
    assert flat == {"a.b": 1, "a.c": [1, 2], "gpus.0.name": "x", "gpus.1.name": "y", "s": "text"}


def test_known_mechanisms_come_first_in_the_design_order_then_the_rest(envs: dict):
    diff = env_diff(envs, ["native", "container"])
    assert list(diff.columns) == ["key", "mechanism", "why", "native", "container", "differs", "varies_in"]
    assert list(diff["key"]) == [
        "versions.torch",  # framework build
        "torch.float32_matmul_precision", "env.TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",  # TF32, in pattern order
        "env.CUDA_CACHE_DISABLE",  # JIT cache
        "shm.size_bytes",  # /dev/shm
        "cgroup.cpu_stat.nr_throttled",  # CPU quota
        "torch.num_threads",  # threads: same most common value, varies within the container arm
        "python.executable",  # not a known mechanism: after all the known ones
    ]
    known = diff[diff["mechanism"].notna()]
    assert known["why"].str.len().gt(20).all() and diff.loc[diff["key"] == "python.executable", "why"].isna().all()
    assert diff.set_index("key").loc["shm.size_bytes", ["native", "container"]].tolist() == ["137438953472", "67108864"]


def test_noise_keys_never_show(envs: dict):
    keys = set(env_diff(envs)["key"])
    for noise in ("captured_at", "process.pid", "host.hostname", "shm.free_bytes", "env.BENCHLIB_ARM",
                  "cgroup.cpu_stat.nr_periods", "gpus.0.sm_clock_mhz", "memory.mem_available_bytes"):
        assert noise not in keys and is_ignored(noise)


def test_the_most_common_value_stands_for_the_arm_and_variation_is_flagged(envs: dict):
    diff = env_diff(envs, ["native", "container"]).set_index("key")
    threads = diff.loc["torch.num_threads"]
    assert (threads["native"], threads["container"], threads["differs"], threads["varies_in"]) == ("8", "8", False, "container")
    throttled = diff.loc["cgroup.cpu_stat.nr_throttled"]
    assert (throttled["native"], throttled["container"], throttled["varies_in"]) == ("0", "9", "container")
    # differences rank before mere variation within the same mechanism's group
    assert diff.loc["versions.torch", "differs"] and diff.loc["versions.torch", "varies_in"] == ""


def test_a_key_one_arm_lacks_reads_absent(envs: dict):
    diff = env_diff(envs, ["native", "container"]).set_index("key")
    assert diff.loc["env.CUDA_CACHE_DISABLE", "native"] == ABSENT
    assert diff.loc["env.CUDA_CACHE_DISABLE", "container"] == "1"


def test_identical_arms_give_an_empty_table_with_the_columns():
    same = {("a", "b", "c", 1): _native(1, 1), ("z", "b", "c", 1): _native(2, 2)}
    diff = env_diff(same, ["a", "z"])
    assert diff.empty and list(diff.columns) == ["key", "mechanism", "why", "a", "z", "differs", "varies_in"]


def test_likely_causes_name_the_first_known_differences_with_their_values(envs: dict):
    diff = env_diff(envs, ["native", "container"])
    assert likely_causes(diff, "container", "native") == [
        "framework build differs (versions.torch: 2.11.0+cu130 in native, 2.10.0a0+nv25.10 in container)",
        "TF32 / matmul precision differs (torch.float32_matmul_precision: highest in native, high in container)",
    ]
    assert likely_causes(diff, "container", "missing-arm") == []


def test_between_keeps_the_keys_that_differ_for_one_pair_of_arms(envs: dict):
    rootfs = _container(shm__size_bytes=BASE["shm"]["size_bytes"])
    rootfs["env"]["BENCHLIB_ARM_KIND"] = "rootfs"
    envs = {**envs, ("rootfs", "matmul", "n=8192", 1): rootfs}
    diff = env_diff(envs, ["native", "container", "rootfs"])
    pair = between(diff, "rootfs", "native")
    assert list(pair.columns) == ["key", "mechanism", "why", "native", "rootfs"]
    assert pair["key"].iloc[0] == "versions.torch" and "shm.size_bytes" not in set(pair["key"])
    assert list(pair["key"])[-2:] == ["python.executable", "env.BENCHLIB_ARM_KIND"]  # other keys, then the arm's identity
    assert "shm.size_bytes" in set(between(diff, "container", "native")["key"])
    assert "torch.num_threads" not in set(pair["key"])  # varies within container only: same value in the pair
    assert between(diff, "missing-arm", "native").empty


def test_mechanisms_cover_the_design_table_and_no_known_key_is_ignored():
    names = [mechanism.name for mechanism in MECHANISMS]
    assert names[:3] == ["framework build", "GPU arch vs build", "TF32 / matmul precision"]
    for key, mechanism in [
        ("torch.arch_list", "GPU arch vs build"), ("env.CUDA_MODULE_LOADING", "CUDA JIT cache / module loading"),
        ("cgroup.cpuset_cpus_effective", "CPU quota / cpuset"), ("cgroup.memory_max", "memory limit / accounting"),
        ("security.seccomp", "seccomp"), ("security.speculation_store_bypass", "speculation mitigations"),
        ("limits.memlock.soft", "memlock ulimit"), ("gpus.0.persistence_mode", "GPU clocks / power"),
        ("gpus.0.mig_mode", "GPU clocks / power"), ("container.engine", "container / engine / image"),
        ("arm.image", "container / engine / image"), ("cpu.affinity_count", "threads vs CPUs allowed"),
        ("process.namespaces.pid", "container / engine / image"),
        ("mounts.root_fstype", "overlay filesystem / network namespace"),
        ("process.namespaces.net", "overlay filesystem / network namespace"),
    ]:
        found = mechanism_of(key)
        assert found is not None and found[2].name == mechanism, key
        assert not is_ignored(key), key
