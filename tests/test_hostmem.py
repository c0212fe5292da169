"""benchlib.hostmem and memcap's limit on planted /proc and cgroup trees (a DGX Spark's unified memory,
a container's cgroup v2 limit, a user slice's limit, cgroup v1), and the telemetry's memory columns."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from benchlib import hostmem
from benchlib.hostmem import HostPaths
from benchlib.telemetry import HostSource
from benchlib.workloads import memcap

GIB = 2**30
KIB = 1024

#: /proc/meminfo of a DGX Spark under load: 128 GB shared by CPU and GPU, most of the page cache reclaimable.
SPARK_MEMINFO = f"""MemTotal:       {124_600_000} kB
MemFree:        {9_000_000} kB
MemAvailable:   {(100 * GIB) // KIB} kB
Buffers:          120000 kB
Cached:         {70_000_000} kB
SwapCached:            0 kB
Shmem:            900000 kB
SReclaimable:    1500000 kB
SwapTotal:             0 kB
"""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def planted(tmp_path: Path, meminfo: str = SPARK_MEMINFO, cgroup: str = "0::/system.slice/docker-abc.scope\n",
            v2: bool = True) -> HostPaths:
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    _write(proc / "meminfo", meminfo)
    _write(proc / "self" / "cgroup", cgroup)
    if v2:
        _write(root / "cgroup.controllers", "cpu memory pids\n")
    else:
        (root / "memory").mkdir(parents=True)
    return HostPaths(proc=proc, cgroup=root)


def _level(directory: Path, max_bytes: int | str, current: int, active_file: int, inactive_file: int,
           peak: int | None = None) -> None:
    _write(directory / "memory.max", f"{max_bytes}\n")
    _write(directory / "memory.current", f"{current}\n")
    _write(directory / "memory.stat", f"anon {current - active_file - inactive_file}\nfile {active_file + inactive_file}\n"
                                      f"active_file {active_file}\ninactive_file {inactive_file}\nshmem 0\n")
    if peak is not None:
        _write(directory / "memory.peak", f"{peak}\n")


def test_meminfo_reads_bytes(tmp_path: Path) -> None:
    info = hostmem.meminfo(planted(tmp_path))
    assert info["MemAvailable"] == 100 * GIB and info["MemTotal"] == 124_600_000 * KIB and info["SwapTotal"] == 0


def test_without_a_limit_available_is_memavailable_page_cache_included(tmp_path: Path) -> None:
    paths = planted(tmp_path, cgroup="0::/\n")
    room = hostmem.available(paths)
    assert room.bytes == 100 * GIB
    assert room.how.startswith("MemAvailable") and "reclaimable page cache" in room.how


def test_a_container_limit_counts_its_page_cache_as_reclaimable(tmp_path: Path) -> None:
    paths = planted(tmp_path)
    _level(paths.cgroup / "system.slice" / "docker-abc.scope", 64 * GIB, 40 * GIB, 10 * GIB, 14 * GIB, peak=52 * GIB)
    level = hostmem.cgroup_memory(paths)
    assert (level.max_bytes, level.current_bytes, level.peak_bytes, level.page_cache_bytes) == (
        64 * GIB, 40 * GIB, 52 * GIB, 24 * GIB)
    room = hostmem.available(paths)
    assert room.bytes == 48 * GIB  # 64 - (40 - 24), below MemAvailable's 100
    assert room.how.startswith("cgroup docker-abc.scope memory.max")


def test_a_limit_on_an_ancestor_cgroup_binds_too(tmp_path: Path) -> None:
    paths = planted(tmp_path, cgroup="0::/user.slice/user-1000.slice/session-1.scope\n")
    _level(paths.cgroup / "user.slice" / "user-1000.slice" / "session-1.scope", "max", 3 * GIB, 0, 0)
    _level(paths.cgroup / "user.slice", 32 * GIB, 30 * GIB, 0, 1 * GIB)
    room = hostmem.available(paths)
    assert room.bytes == 3 * GIB and "user.slice" in room.how


def test_cgroup_v1_maps_onto_the_v2_names(tmp_path: Path) -> None:
    paths = planted(tmp_path, cgroup="4:memory:/docker/abc\n", v2=False)
    base = paths.cgroup / "memory" / "docker" / "abc"
    _write(base / "memory.limit_in_bytes", f"{16 * GIB}\n")
    _write(base / "memory.usage_in_bytes", f"{10 * GIB}\n")
    _write(base / "memory.max_usage_in_bytes", f"{12 * GIB}\n")
    _write(base / "memory.stat", f"cache 1\nhierarchical_memory_limit {8 * GIB}\ntotal_active_file {GIB}\n"
                                 f"total_inactive_file {GIB}\n")
    level = hostmem.cgroup_memory(paths)
    assert (level.max_bytes, level.current_bytes, level.peak_bytes, level.page_cache_bytes) == (
        8 * GIB, 10 * GIB, 12 * GIB, 2 * GIB)  # the hierarchical limit is the tighter one
    assert hostmem.available(paths).bytes == 0  # 8 - (10 - 2): nothing left


def test_an_unlimited_v1_cgroup_is_no_limit(tmp_path: Path) -> None:
    paths = planted(tmp_path, cgroup="4:memory:/\n", v2=False)
    _write(paths.cgroup / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert hostmem.cgroup_memory(paths).max_bytes is None
    assert hostmem.available(paths).bytes == 100 * GIB


# ------------------------------------------------------------------------------- memcap's limit

def test_memcap_on_unified_memory_takes_a_quarter_of_what_is_available_never_cuda_free(tmp_path: Path) -> None:
    room = hostmem.available(planted(tmp_path, cgroup="0::/\n"))
    limit = memcap.device_limit(None, None, unified=True, available=room, nvml_free=None, cuda_free=60 * GIB)
    assert limit.bytes == 25 * GIB
    assert limit.how.startswith("0.25 x the 100.00 GiB the host has available (MemAvailable")
    assert "leaves most of it to the machine's other users" in limit.how


def test_memcap_on_unified_memory_inside_a_container_follows_its_limit(tmp_path: Path) -> None:
    paths = planted(tmp_path)
    _level(paths.cgroup / "system.slice" / "docker-abc.scope", 64 * GIB, 40 * GIB, 10 * GIB, 14 * GIB)
    limit = memcap.device_limit(None, 0.5, unified=True, available=hostmem.available(paths), nvml_free=None,
                                cuda_free=90 * GIB)
    assert limit.bytes == 24 * GIB and "0.5 x the 48.00 GiB" in limit.how


def test_memcap_on_a_discrete_gpu_takes_nvmls_free_memory(tmp_path: Path) -> None:
    room = hostmem.available(planted(tmp_path, cgroup="0::/\n"))
    limit = memcap.device_limit(None, None, unified=False, available=room, nvml_free=70 * GIB, cuda_free=69 * GIB)
    assert limit.bytes == int(0.9 * 70 * GIB) and "NVML reports" in limit.how
    fallback = memcap.device_limit(None, None, unified=False, available=room, nvml_free=None, cuda_free=69 * GIB)
    assert "NVML could not say" in fallback.how
    stated = memcap.device_limit(100.0, None, unified=True, available=room, nvml_free=None, cuda_free=0)
    assert stated.bytes == 100 * GIB and stated.how == "the stated limit max_gib=100"


def test_memcap_on_the_cpu_never_takes_more_than_half_of_what_is_available(tmp_path: Path) -> None:
    paths = planted(tmp_path)
    _level(paths.cgroup / "system.slice" / "docker-abc.scope", 2 * GIB, 1 * GIB, 0, 0)
    limit = memcap.host_limit(4096, hostmem.available(paths))
    assert limit.bytes == GIB // 2 and limit.how.startswith("half of the 1.00 GiB available")
    assert memcap.host_limit(64, hostmem.available(paths)).how == "host_cap_mib=64"


def test_memcap_on_the_cpu_reports_available_and_its_limit(tmp_path: Path) -> None:
    from benchlib.device import Device

    paths = planted(tmp_path)
    _level(paths.cgroup / "system.slice" / "docker-abc.scope", 64 * GIB, 40 * GIB, 10 * GIB, 14 * GIB)
    metrics = {m.name: m for m in memcap.run(memcap.MemcapParams(chunk_mib=2, host_cap_mib=6), Device("cpu", "cpu"), paths)}
    assert metrics["allocated"].samples[0].seconds == 6 * 2**20
    assert metrics["available"].samples[0].seconds == 48 * GIB
    assert metrics["cgroup_memory_max"].samples[0].seconds == 64 * GIB
    assert metrics["cgroup_memory_current"].samples[0].seconds == 40 * GIB
    assert "cgroup memory.max 64.00 GiB" in metrics["allocated"].note


# ------------------------------------------------------------------------------ process tree

def _process(proc: Path, pid: int, ppid: int, rss_pages: int, children: list[int] | None) -> None:
    _write(proc / str(pid) / "statm", f"1000 {rss_pages} 10 1 0 100 0\n")
    _write(proc / str(pid) / "stat", f"{pid} (py thon) S {ppid} 1 1 0\n")
    _write(proc / str(pid) / "status", f"Name:\tpython\nVmHWM:\t  {rss_pages * hostmem.PAGE_BYTES // KIB * 3} kB\n")
    task = proc / str(pid) / "task" / str(pid)
    task.mkdir(parents=True, exist_ok=True)
    if children is not None:
        _write(task / "children", " ".join(map(str, children)) + (" " if children else ""))


@pytest.mark.parametrize("children_files", [True, False])
def test_the_process_tree_rss_sums_every_descendant(tmp_path: Path, children_files: bool) -> None:
    proc = tmp_path / "proc"
    tree = {100: (1, 1000, [101, 102]), 101: (100, 200, [103]), 102: (100, 300, []), 103: (101, 50, []),
            999: (1, 7000, [])}  # 999 is not ours
    for pid, (ppid, pages, kids) in tree.items():
        _process(proc, pid, ppid, pages, kids if children_files else None)
    paths = HostPaths(proc=proc)
    assert sorted(hostmem.process_tree(100, paths)) == [100, 101, 102, 103]
    assert hostmem.tree_rss_bytes(100, paths) == 1550 * hostmem.PAGE_BYTES
    assert hostmem.peak_rss_bytes(100, paths) == 3000 * hostmem.PAGE_BYTES
    assert hostmem.rss_bytes(12345, paths) is None  # gone


def test_the_real_process_tree_includes_a_child(tmp_path: Path) -> None:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        for _ in range(50):
            if child.pid in hostmem.process_tree():
                break
            time.sleep(0.05)
        assert child.pid in hostmem.process_tree()
        assert hostmem.tree_rss_bytes() > hostmem.rss_bytes(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_the_host_source_reads_the_planted_memory_at_its_rate(tmp_path: Path) -> None:
    paths = planted(tmp_path)
    _level(paths.cgroup / "system.slice" / "docker-abc.scope", 64 * GIB, 40 * GIB, 10 * GIB, 14 * GIB, peak=52 * GIB)
    _process(paths.proc, os.getpid(), 1, 2000, [])
    source = HostSource(memory_hz=1.0, paths=paths)
    first = source.poll()
    assert first == {"mem_available_bytes": 100 * GIB, "cgroup_mem_current_bytes": 40 * GIB,
                     "cgroup_mem_peak_bytes": 52 * GIB, "proc_rss_bytes": 2000 * hostmem.PAGE_BYTES}
    assert source.poll() == {}  # within a second: not read again
    assert source.poll(complete=True)["mem_available_bytes"] == 100 * GIB  # the last poll always reads
