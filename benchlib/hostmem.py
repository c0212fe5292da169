"""What the host's memory really is: /proc/meminfo, the cgroup's memory files, a process tree's RSS.

Readers with injectable roots (:class:`HostPaths`: ``proc`` and ``cgroup``), so a test can hand them a
unified-memory machine's /proc/meminfo and a container's cgroup tree. Nothing raises: a file that
cannot be read gives None.

:func:`available` is what a new allocation can really get here, and says how it got the figure:
``MemAvailable`` (the kernel's estimate, which counts reclaimable page cache and slab as free), and
under a cgroup memory limit at most ``memory.max - (memory.current - page cache)`` at every level of
the cgroup tree that sets one. On a unified-memory machine (DGX Spark) this is also what the GPU can
get; ``cudaMemGetInfo``'s free figure there leaves the page cache out, which is why memcap does not
size itself by it.

cgroup v2 files are read by their own names; v1 files are mapped onto them (``memory.limit_in_bytes``
and ``hierarchical_memory_limit`` -> max, ``memory.usage_in_bytes`` -> current,
``memory.max_usage_in_bytes`` -> peak).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: cgroup v1 reports "no memory limit" as a page-rounded LONG_MAX; anything this large is no limit.
UNLIMITED_V1 = 2**62
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class HostPaths:
    """Where /proc and the cgroup mount are (tests point them at a planted tree)."""

    proc: Path = Path("/proc")
    cgroup: Path = Path("/sys/fs/cgroup")


DEFAULT_PATHS = HostPaths()


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None


def meminfo(paths: HostPaths = DEFAULT_PATHS) -> dict[str, int]:
    """``/proc/meminfo`` in bytes (``{"MemTotal": ..., "MemAvailable": ...}``); empty when unreadable."""
    out: dict[str, int] = {}
    for line in (_read(paths.proc / "meminfo") or "").splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            out[name.strip()] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return out


def is_cgroup_v2(paths: HostPaths = DEFAULT_PATHS) -> bool:
    return (paths.cgroup / "cgroup.controllers").exists()


def cgroup_dir(paths: HostPaths = DEFAULT_PATHS, controller: str = "memory") -> Path | None:
    """This process's cgroup folder for ``controller`` (v2: the unified hierarchy), or None.

    Inside a container with its own cgroup namespace the path in /proc/self/cgroup is not under
    the mount; the mount itself is then the process's cgroup.
    """
    v2 = is_cgroup_v2(paths)
    for line in (_read(paths.proc / "self" / "cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if (v2 and controllers == "") or (not v2 and controller in controllers.split(",")):
            mount = paths.cgroup if v2 else paths.cgroup / controller
            candidate = mount / path.lstrip("/")
            return candidate if candidate.is_dir() else mount
    return None


@dataclass(frozen=True)
class CgroupMemory:
    """One cgroup level's memory files in bytes (None: absent, unreadable, or no limit)."""

    path: Path
    max_bytes: int | None  # memory.max; None = no limit
    high_bytes: int | None
    current_bytes: int | None
    peak_bytes: int | None  # memory.peak (Linux >= 5.19) / v1 memory.max_usage_in_bytes
    page_cache_bytes: int | None  # active_file + inactive_file of memory.stat: reclaimable

    @property
    def room_bytes(self) -> int | None:
        """What this level still lets its processes allocate, page cache counted as reclaimable."""
        if self.max_bytes is None or self.current_bytes is None:
            return None
        return max(0, self.max_bytes - self.current_bytes + (self.page_cache_bytes or 0))


def _stat(text: str | None) -> dict[str, int]:
    pairs = (line.split() for line in (text or "").splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}


def _limit(text: str | None) -> int | None:
    value = _int(text)
    return None if value is None or value >= UNLIMITED_V1 else value


def cgroup_memory(paths: HostPaths = DEFAULT_PATHS) -> CgroupMemory | None:
    """The memory files of this process's own cgroup (v1 mapped onto v2 names), or None."""
    base = cgroup_dir(paths, "memory")
    if base is None:
        return None
    return _level(base, is_cgroup_v2(paths))


def _level(base: Path, v2: bool) -> CgroupMemory:
    if v2:
        stat = _stat(_read(base / "memory.stat"))
        return CgroupMemory(base, _limit(_read(base / "memory.max")), _limit(_read(base / "memory.high")),
                            _int(_read(base / "memory.current")), _int(_read(base / "memory.peak")),
                            _page_cache(stat))
    stat = _stat(_read(base / "memory.stat"))
    limits = [v for v in (_limit(_read(base / "memory.limit_in_bytes")), _limit(str(stat.get("hierarchical_memory_limit", ""))))
              if v is not None]
    return CgroupMemory(base, min(limits) if limits else None, None, _int(_read(base / "memory.usage_in_bytes")),
                        _int(_read(base / "memory.max_usage_in_bytes")),
                        _page_cache({k.removeprefix("total_"): v for k, v in stat.items() if k.startswith("total_")} or stat))


def _page_cache(stat: dict[str, int]) -> int | None:
    if "active_file" not in stat and "inactive_file" not in stat:
        return None
    return stat.get("active_file", 0) + stat.get("inactive_file", 0)


def cgroup_levels(paths: HostPaths = DEFAULT_PATHS) -> list[CgroupMemory]:
    """Every cgroup v2 level from this process's cgroup up to the mount (a limit can sit on any);
    v1: the process's own cgroup, whose hierarchical limit already covers its ancestors."""
    base = cgroup_dir(paths, "memory")
    if base is None:
        return []
    if not is_cgroup_v2(paths):
        return [_level(base, False)]
    levels, root = [], paths.cgroup.resolve()
    current = base.resolve()
    while True:
        levels.append(_level(current, True))
        if current == root or root not in current.parents:
            return levels
        current = current.parent


@dataclass(frozen=True)
class Available:
    """What a new allocation can get on this host, and how that was worked out."""

    bytes: int | None
    how: str


def available(paths: HostPaths = DEFAULT_PATHS) -> Available:
    """MemAvailable, bounded by the tightest cgroup memory limit (page cache counted as reclaimable)."""
    info = meminfo(paths)
    host = info.get("MemAvailable")
    how = "MemAvailable (/proc/meminfo: free memory plus reclaimable page cache and slab)"
    if host is None and "MemFree" in info:  # kernels before 3.14
        host = info["MemFree"] + info.get("Buffers", 0) + info.get("Cached", 0) + info.get("SReclaimable", 0)
        how = "MemFree + Buffers + Cached + SReclaimable (/proc/meminfo has no MemAvailable)"
    rooms = [(level.room_bytes, level) for level in cgroup_levels(paths) if level.room_bytes is not None]
    if rooms:
        room, level = min(rooms, key=lambda pair: pair[0])
        if host is None or room < host:
            return Available(room, f"cgroup {level.path.name or '/'} memory.max {level.max_bytes} B minus what it "
                                   f"holds beyond its page cache ({level.current_bytes} - {level.page_cache_bytes or 0} B)")
    return Available(host, how if host is not None else "unknown: /proc/meminfo unreadable")


# --------------------------------------------------------------------------- a process tree

def children(pid: int, paths: HostPaths = DEFAULT_PATHS) -> list[int] | None:
    """Direct children of ``pid`` from /proc/<pid>/task/*/children; None when the kernel lacks it."""
    task_dir = paths.proc / str(pid) / "task"
    try:
        tasks = list(task_dir.iterdir())
    except OSError:
        return None
    found: list[int] = []
    for task in tasks:
        text = _read(task / "children")
        if text is None:
            if not (task / "children").exists():
                return None  # CONFIG_PROC_CHILDREN off
            continue
        found.extend(int(p) for p in text.split() if p.isdigit())
    return found


def _children_by_scan(paths: HostPaths) -> dict[int, list[int]]:
    parent_of: dict[int, list[int]] = {}
    try:
        entries = [e for e in paths.proc.iterdir() if e.name.isdigit()]
    except OSError:
        return {}
    for entry in entries:
        stat = _read(entry / "stat")
        if not stat:
            continue
        fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and parentheses
        if len(fields) > 1 and fields[1].isdigit():
            parent_of.setdefault(int(fields[1]), []).append(int(entry.name))
    return parent_of


def process_tree(pid: int | None = None, paths: HostPaths = DEFAULT_PATHS) -> list[int]:
    """``pid`` (default: this process) and all its descendants."""
    root = os.getpid() if pid is None else pid
    tree, pending, scanned = [root], [root], None
    while pending:
        current = pending.pop()
        kids = children(current, paths)
        if kids is None:  # no children files: one scan of /proc for the whole tree
            scanned = scanned if scanned is not None else _children_by_scan(paths)
            kids = scanned.get(current, [])
        for kid in kids:
            if kid not in tree:
                tree.append(kid)
                pending.append(kid)
    return tree


def rss_bytes(pid: int, paths: HostPaths = DEFAULT_PATHS) -> int | None:
    """Resident set size of one process (/proc/<pid>/statm), or None when it is gone."""
    fields = (_read(paths.proc / str(pid) / "statm") or "").split()
    return int(fields[1]) * PAGE_BYTES if len(fields) > 1 and fields[1].isdigit() else None


def tree_rss_bytes(pid: int | None = None, paths: HostPaths = DEFAULT_PATHS) -> int:
    """Sum of the RSS of ``pid`` and its descendants (a page shared by two is counted in each)."""
    return sum(rss for rss in (rss_bytes(p, paths) for p in process_tree(pid, paths)) if rss is not None)


def peak_rss_bytes(pid: int | None = None, paths: HostPaths = DEFAULT_PATHS) -> int | None:
    """The kernel's high-water mark of one process's RSS (VmHWM of /proc/<pid>/status)."""
    text = _read(paths.proc / str(os.getpid() if pid is None else pid) / "status") or ""
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            fields = line.split()
            return int(fields[1]) * 1024 if len(fields) > 1 and fields[1].isdigit() else None
    return None
