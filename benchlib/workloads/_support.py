"""Helpers the workloads share: per-call scaling, one-reading metrics, and what the host allows.

The host facts (CPU quota and throttling, memory limits, /dev/shm) are recorded as result metrics
by ``cpu_bound``, ``memcap`` and ``shm_dataloader``, not only in the fingerprint. cgroup v2 files
are read by their own names; v1 files are mapped onto them (``cpu.cfs_quota_us`` and
``cpu.cfs_period_us`` -> cpu.max, ``throttled_time`` ns -> ``throttled_usec``,
``memory.limit_in_bytes`` -> memory.max). A file that cannot be read gives None, never an error.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .. import hostmem
from ..timer import Measurement, Sample
from . import Metric

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuQuota:
    """cgroup cpu.max as text (``"max 100000"``, ``"200000 100000"``) and in cores (None: no quota)."""

    text: str | None
    cores: float | None


def per_call(measurement: Measurement, calls: int) -> Measurement:
    """The measurement with every sample divided by ``calls`` (one sample ran that many)."""
    samples = [Sample(s.seconds / calls, s.start_ns, s.end_ns) for s in measurement.samples]
    return replace(measurement, samples=samples)


def point_metric(name: str, unit: str, value: float, note: str = "") -> Metric:
    """A metric with one sample that is a reading, not a time: the value is stored as the sample."""
    now = time.time_ns()
    return Metric(name, unit, [Sample(float(value), now, now)], note=note)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _paths() -> hostmem.HostPaths:
    return hostmem.HostPaths(cgroup=CGROUP_ROOT)  # read at call time: tests point CGROUP_ROOT elsewhere


def _is_v2() -> bool:
    return hostmem.is_cgroup_v2(_paths())


def cgroup_dir(controller: str) -> Path | None:
    """This process's cgroup folder for ``controller`` (see :func:`benchlib.hostmem.cgroup_dir`)."""
    return hostmem.cgroup_dir(_paths(), controller)


def cpu_quota() -> CpuQuota:
    """The CPU quota of this process's cgroup."""
    base = cgroup_dir("cpu")
    if base is None:
        return CpuQuota(None, None)
    if _is_v2():
        text = _read(base / "cpu.max")
    else:
        quota, period = _read(base / "cpu.cfs_quota_us"), _read(base / "cpu.cfs_period_us")
        text = None if period is None else f"{'max' if quota in (None, '-1') else quota} {period}"
    return CpuQuota(text, parse_cpu_max(text))


def parse_cpu_max(text: str | None) -> float | None:
    """Cores a cpu.max line allows (``"200000 100000"`` -> 2.0); None for ``max`` or unreadable."""
    quota, _, period = (text or "max").partition(" ")
    if quota.isdigit() and period.isdigit() and int(period) > 0:
        return int(quota) / int(period)
    return None


def cpu_throttling() -> dict[str, int | None]:
    """cgroup cpu.stat ``nr_throttled`` and ``throttled_usec`` (None where unreadable)."""
    base = cgroup_dir("cpu")
    text = _read(base / "cpu.stat") if base is not None else None
    stat: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            stat[key] = int(value)
    if "throttled_time" in stat and "throttled_usec" not in stat:  # v1 counts nanoseconds
        stat["throttled_usec"] = stat["throttled_time"] // 1000
    return {"nr_throttled": stat.get("nr_throttled"), "throttled_usec": stat.get("throttled_usec")}


def memory_max() -> int | None:
    """cgroup memory.max in bytes; None when there is no limit or it cannot be read."""
    level = hostmem.cgroup_memory(_paths())
    return level.max_bytes if level else None


def meminfo_bytes(key: str) -> int | None:
    """A ``/proc/meminfo`` field (e.g. ``MemAvailable``) in bytes, or None."""
    return hostmem.meminfo(_paths()).get(key)


def shm_space(path: str = "/dev/shm") -> tuple[int, int] | None:
    """(size, free) bytes of the shared-memory filesystem, or None when it does not exist."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def affinity_count() -> int:
    """CPUs this process may run on (its affinity mask, which a cpuset narrows)."""
    return len(os.sched_getaffinity(0))


def allowed_cpus() -> int:
    """CPUs this process may keep busy: its affinity, capped by the ceiling of its CPU quota (as Go and
    the JVM size their pools in a container)."""
    cores = cpu_quota().cores
    return max(1, min(affinity_count(), math.ceil(cores))) if cores is not None else affinity_count()
