"""The ``isolated`` and ``rootfs`` arms (docs/architecture.md, "Arms"): isolation without the image's stack, and
the image's stack without isolation.

``isolated`` (engine ``runc``)
    The invocation runs under ``runc run`` with a generated OCI bundle whose root filesystem is the
    host's own ``/``, read-only: what a default Docker container gets, applied to the host userland.
    :func:`isolated_argv` returns::

        HOST_PYTHON benchlib/_oci_launch.py PLAN_JSON

    where PLAN_JSON holds the runc binary, its state root (``/run/benchlib-runc/state``), the bundle
    folder (``/run/benchlib-runc/bundles/ID``), the container ID and the whole ``config.json``. The
    launcher writes the bundle, bind-mounts ``/`` (not recursively) onto the bundle's ``rootfs`` in a
    private mount namespace of its own, runs ``runc --root STATE run --bundle BUNDLE ID``, and removes
    the bundle when runc returns. The container gets:

    * pid, network (loopback only: runc brings ``lo`` up), ipc, uts, mount and cgroup namespaces;
      ``--ipc=host``, ``--network=host`` and ``--pid=host`` in the arm's flags leave one out;
    * Docker's 14 default capabilities (root) or none (any other UID), ``noNewPrivileges``;
    * Docker's masked and read-only paths, a fresh ``/proc``, a read-only ``/sys`` and
      ``/sys/fs/cgroup``, ``/dev`` as a 64 MiB tmpfs with runc's default nodes (null, zero, full,
      random, urandom, tty, console, ptmx and ``/dev/pts``), ``/dev/mqueue``, ``/dev/shm`` a 64 MiB
      tmpfs (``--shm-size``), ``/tmp`` a tmpfs;
    * the root filesystem read-only, every other host mount (except /proc, /sys, /dev, /run, /tmp)
      bound read-only at its own path, the checkout read-only and the run directory read-write;
    * the NVIDIA device nodes (``/dev/nvidia*``, ``/dev/nvidia-caps/*``) created with device-cgroup
      rules allowing them when GPUs are wanted; the driver libraries are the host's own (the root
      filesystem is the host's), and ``LD_LIBRARY_PATH`` and ``PATH`` are the invoker's;
    * cgroup limits from docker-like flags: ``--cpus``, ``--cpuset-cpus``, ``--cpuset-mems``,
      ``--memory``/``-m``, ``--memory-swap``, ``--pids-limit``; ``--ulimit``, ``--cap-add``,
      ``--cap-drop``; ``--security-opt seccomp=PATH`` (Docker's JSON profile format, or an OCI one) or
      ``seccomp=unconfined``. Without a profile no seccomp filter is applied, where Docker applies its
      default profile: give Docker's ``default.json`` (moby ``profiles/seccomp/default.json``) to
      match it;
    * the invoker's UID and GIDs, the host's hostname in its own UTS namespace, the invoker's
      rlimits, and only the runner's environment plus ``PATH``, ``LD_LIBRARY_PATH``, ``HOME=/tmp``
      and ``LANG``.

    runc needs root here. When cgroups cannot be created (a read-only ``/sys/fs/cgroup``), an arm
    without limits runs with ``runc --rootless true`` (cgroup errors ignored, no cgroup of its own);
    an arm with limits is refused at preflight.

``rootfs`` (engine ``chroot``)
    The image's filesystem, exported with ``benchlib image export IMAGE DIR`` (:func:`export_image`),
    entered with chroot and no isolation at all. The arm's ``image`` is that DIR (default:
    ``$BENCHLIB_ROOTFS``, else ``~/.cache/benchlib/rootfs/benchlib-latest``). :func:`rootfs_argv`
    returns::

        HOST_PYTHON benchlib/_chroot_launch.py PLAN_JSON

    The launcher enters a private mount namespace (a user namespace too when not root), binds the
    host's ``/dev``, ``/proc``, ``/sys`` and ``/tmp`` (recursively) and ``/etc/hosts``,
    ``/etc/resolv.conf``, the checkout (read-only) and the run directory (read-write) at the same
    paths inside the rootfs, mounts a tmpfs on ``/usr/local/nvidia`` holding the host's NVIDIA driver
    libraries (``lib64``, found with ``ldconfig -p``, in ``/usr/local/nvidia/lib64`` and on
    ``LD_LIBRARY_PATH``) and tools (``bin``: nvidia-smi, ...), then chroots, applies the image's
    environment (its ``Env`` as exported, then the runner's) and ``ENTRYPOINT``, and execs the
    command with the image's own ``python3``. The bind mounts vanish with the namespace when the
    process exits. Mount points that the image lacks are created (as empty folders) in DIR.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from .arms import Arm
from .errors import BenchlibError, PreflightError

__all__ = [
    "DOCKER_DEFAULT_CAPS", "DOCKER_MASKED_PATHS", "DOCKER_READONLY_PATHS", "IMAGE_RECORD", "RunFlags",
    "bundle_config", "cgroup_support", "driver_binaries", "driver_libraries", "export_image",
    "isolated_argv", "nvidia_device_nodes", "parse_run_flags", "read_rootfs_record", "rootfs_argv",
    "default_rootfs_dir", "rootfs_dir", "runc_binary", "seccomp_to_oci", "stop_isolated",
]

#: The capabilities Docker gives a container by default (moby ``oci/caps/defaults.go``).
DOCKER_DEFAULT_CAPS: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
#: Docker's masked paths (read from a Docker 20.10 container's config.json) and, from Docker 25 on,
#: /sys/devices/virtual/powercap.
DOCKER_MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
DOCKER_READONLY_PATHS: tuple[str, ...] = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
DEFAULT_SHM_BYTES = 64 * 1024 * 1024

STATE_ROOT = Path("/run/benchlib-runc")
#: Written into an exported rootfs by :func:`export_image`: the image's identity and its config.
IMAGE_RECORD = ".benchlib-image.json"
#: Where the rootfs launcher puts the host's driver inside the rootfs (NGC images have these on
#: LD_LIBRARY_PATH and PATH already).
NVIDIA_DIR = "/usr/local/nvidia"
#: Host mounts that an isolated container does not see (it gets fresh ones) or must not see.
_HOST_ONLY_PREFIXES = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/run")
#: Container engines' own state (image layers, running containers): never needed by the host python.
_ENGINE_STATE = ("/var/lib/docker", "/var/lib/containers", "/var/lib/containerd", "/var/lib/kubelet", "/snap")
_PSEUDO_FS = {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "autofs", "binfmt_misc", "tracefs",
              "debugfs", "securityfs", "fusectl", "configfs", "bpf", "pstore", "hugetlbfs", "efivarfs", "rpc_pipefs",
              "nsfs"}
#: The host's driver user-space libraries that a CUDA/NVML process loads (as libnvidia-container
#: mounts for the "compute" and "utility" capabilities).
DRIVER_LIBRARY_PATTERNS = (
    "libcuda.so", "libcudadebugger.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so", "libnvidia-nvvm.so",
    "libnvidia-gpucomp.so", "libnvidia-allocator.so", "libnvidia-cfg.so", "libnvidia-opencl.so",
    "libnvidia-pkcs11.so", "libnvidia-pkcs11-openssl3.so", "libnvidia-fatbinaryloader.so",
)
DRIVER_BINARIES = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control",
                   "nvidia-cuda-mps-server")
QUERY_TIMEOUT_S = 30


# --------------------------------------------------------------------------------------------------
# the arm's flags (docker-like syntax)


@dataclass
class RunFlags:
    """What an isolated or rootfs arm's ``flags`` ask for (docker ``run`` syntax)."""

    cpus: float | None = None
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    memory: int | None = None
    memory_swap: int | None = None  # -1: unlimited
    pids_limit: int | None = None
    shm_size: int = DEFAULT_SHM_BYTES
    seccomp: str | None = None  # None: no filter; "unconfined"; or a profile path
    ipc_host: bool = False
    net_host: bool = False
    pid_host: bool = False
    ulimits: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (soft, hard); -1 unlimited
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)

    @property
    def has_cgroup_limits(self) -> bool:
        return any(value is not None for value in (self.cpus, self.cpuset_cpus, self.cpuset_mems, self.memory,
                                                   self.memory_swap, self.pids_limit))


_VALUE_FLAGS = {"--cpus", "--cpuset-cpus", "--cpuset-mems", "--memory", "-m", "--memory-swap", "--pids-limit",
                "--shm-size", "--security-opt", "--ipc", "--network", "--net", "--pid", "--ulimit", "--cap-add",
                "--cap-drop"}
#: Flags a rootfs arm accepts: it has no isolation, so only what a plain process can set on itself.
_ROOTFS_FLAGS = {"--ulimit", "--cpuset-cpus", "--ipc"}
_RLIMITS = {"core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc", "rss",
            "rtprio", "rttime", "sigpending", "stack", "as"}


def parse_size(text: str) -> int:
    """Docker's sizes: ``64m``, ``8g``, ``1.5G``, ``1024k``, ``512mb``, ``100`` (bytes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size (like 64m or 8g)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** " kmgtp".index(unit or " "))


def _tokens(flags: Iterable[str]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    items = list(flags)
    i = 0
    while i < len(items):
        token = str(items[i])
        if token.startswith("--") and "=" in token:
            name, _, value = token.partition("=")
            out.append((name, value))
        elif token in _VALUE_FLAGS:
            if i + 1 >= len(items):
                raise ValueError(f"{token} needs a value")
            out.append((token, str(items[i + 1])))
            i += 1
        else:
            out.append((token, None))
        i += 1
    return out


def parse_run_flags(arm: Arm) -> RunFlags:
    """The arm's run flags (preset first) as :class:`RunFlags`; PreflightError names a bad one."""
    where = f"arm {arm.name!r}"
    flags = RunFlags()
    try:
        tokens = _tokens(arm.run_flags)
    except ValueError as exc:
        raise PreflightError(f"{where}: {exc} in its flags; write flags like --cpus=4.") from None
    for name, value in tokens:
        if arm.kind == "rootfs" and (name not in _ROOTFS_FLAGS or (name == "--ipc" and value != "host")):
            raise PreflightError(f"{where}: a rootfs arm has no isolation to configure, so flag {name} does not "
                                 "apply; it accepts only --cpuset-cpus, --ipc=host and --ulimit (use an isolated "
                                 "arm for limits).")
        try:
            _apply_flag(flags, name, value)
        except ValueError as exc:
            raise PreflightError(f"{where}: flag {name}{'=' + value if value is not None else ''} is not "
                                 f"understood ({exc}); see the isolated arm's flags in benchlib/oci.py.") from None
    return flags


def _apply_flag(flags: RunFlags, name: str, value: str | None) -> None:
    if value is None:
        raise ValueError("unknown flag or missing value")
    if name == "--cpus":
        flags.cpus = float(value)
        if flags.cpus <= 0:
            raise ValueError("must be positive")
    elif name == "--cpuset-cpus":
        flags.cpuset_cpus = _cpu_list(value)
    elif name == "--cpuset-mems":
        flags.cpuset_mems = _cpu_list(value)
    elif name in ("--memory", "-m"):
        flags.memory = parse_size(value)
    elif name == "--memory-swap":
        flags.memory_swap = -1 if value.strip() == "-1" else parse_size(value)
    elif name == "--pids-limit":
        flags.pids_limit = int(value)
    elif name == "--shm-size":
        flags.shm_size = parse_size(value)
    elif name == "--security-opt":
        key, sep, rest = value.partition("=")
        if key == "seccomp" and sep:
            flags.seccomp = rest
        elif key in ("no-new-privileges", "no-new-privileges:true") or value == "no-new-privileges=true":
            pass  # always on
        else:
            raise ValueError("only seccomp=PATH|unconfined is supported")
    elif name in ("--ipc", "--network", "--net", "--pid"):
        if value not in ("host", "private", "none", "bridge", "shareable"):
            raise ValueError("only host (share the host's) or the default")
        host = value == "host"
        if name == "--ipc":
            flags.ipc_host = host
        elif name == "--pid":
            flags.pid_host = host
        else:
            flags.net_host = host
    elif name == "--ulimit":
        key, sep, limits = value.partition("=")
        if not sep or key not in _RLIMITS:
            raise ValueError(f"write NAME=SOFT[:HARD] with NAME one of {', '.join(sorted(_RLIMITS))}")
        soft, _, hard = limits.partition(":")
        flags.ulimits[key] = (int(soft), int(hard or soft))
    elif name in ("--cap-add", "--cap-drop"):
        cap = value.upper()
        cap = cap if cap.startswith("CAP_") or cap == "ALL" else f"CAP_{cap}"
        (flags.cap_add if name == "--cap-add" else flags.cap_drop).append(cap)
    else:
        raise ValueError("unknown flag")


def _cpu_list(value: str) -> str:
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", value.strip()):
        raise ValueError("write CPUs like 0-3 or 0,2,4")
    return value.strip()


def _expand_cpu_list(value: str) -> list[int]:
    cpus: list[int] = []
    for part in value.split(","):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


# --------------------------------------------------------------------------------------------------
# host facts


def runc_binary() -> str | None:
    """The runc to use: ``$BENCHLIB_RUNC`` (a path or a name on PATH) or ``runc`` on PATH."""
    override = os.environ.get("BENCHLIB_RUNC", "").strip()
    if override:
        if os.sep in override:
            return override if os.path.isfile(override) and os.access(override, os.X_OK) else None
        return shutil.which(override)
    return shutil.which("runc")


def nvidia_device_nodes(dev: Path = Path("/dev")) -> list[Path]:
    """The NVIDIA character devices: /dev/nvidia0.., nvidiactl, nvidia-uvm*, nvidia-modeset, nvidia-caps/*."""
    found = sorted(dev.glob("nvidia*")) + sorted((dev / "nvidia-caps").glob("*"))
    nodes = []
    for path in found:
        try:
            if _is_char_device(path):
                nodes.append(path)
        except OSError:
            continue
    return nodes


def _is_char_device(path: Path) -> bool:
    import stat

    return stat.S_ISCHR(path.stat().st_mode)


def driver_libraries() -> dict[str, str]:
    """The host's NVIDIA driver libraries: soname or link name -> the real file.

    Found with ``ldconfig -p`` (this machine's architecture only), then in /usr/local/nvidia/lib64,
    /usr/local/nvidia/lib and the folders on ``LD_LIBRARY_PATH`` (where some machines keep the driver
    outside the loader's cache). Empty on a machine without the NVIDIA driver.
    """
    found: dict[str, str] = {}

    def consider(name: str, path: str) -> None:
        if name in found or not any(name.startswith(pattern) for pattern in DRIVER_LIBRARY_PATTERNS):
            return
        real = os.path.realpath(path)
        if os.path.isfile(real):
            found[name] = real

    ldconfig = shutil.which("ldconfig") or ("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else None)
    if ldconfig:
        try:
            listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=QUERY_TIMEOUT_S).stdout
        except (OSError, subprocess.TimeoutExpired):
            listing = ""
        arch_tag = {"x86_64": "x86-64", "aarch64": "AArch64", "ppc64le": "64bit"}.get(platform.machine(), "")
        for line in listing.splitlines():
            match = re.match(r"\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)", line)
            if match and (not arch_tag or arch_tag in match.group(2)):
                consider(match.group(1), match.group(3))
    extra = ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib"]
    extra += [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    for directory in extra:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            consider(name, os.path.join(directory, name))
    return found


def driver_binaries() -> dict[str, str]:
    """The host's NVIDIA tools (nvidia-smi, ...) found on PATH or in /usr/local/nvidia/bin."""
    search = os.environ.get("PATH", "") + os.pathsep + "/usr/local/nvidia/bin:/usr/bin:/usr/sbin"
    found = {}
    for name in DRIVER_BINARIES:
        path = shutil.which(name, path=search)
        if path:
            found[name] = os.path.realpath(path)
    return found


@functools.lru_cache(maxsize=1)
def cgroup_support() -> dict[str, Any]:
    """Can runc create cgroups here? ``{"version": 1|2|None, "writable": bool, "why": str}``.

    Tried for real: a folder is created and removed where runc will create the container's cgroup
    (cgroup v2: under /sys/fs/cgroup/benchlib; v1: under this process's own cgroup of each of the
    cpu, cpuset, memory and pids controllers).
    """
    root = Path("/sys/fs/cgroup")
    probe = f"benchlib-probe-{uuid.uuid4().hex[:8]}"
    if (root / "cgroup.controllers").exists():
        targets, version = [root / "benchlib" / probe], 2
    elif (root / "cpu").is_dir() or (root / "memory").is_dir():
        version = 1
        own = {}
        for line in (_read("/proc/self/cgroup") or "").splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3:
                for controller in parts[1].split(","):
                    own[controller] = parts[2]
        targets = [root / c / own.get(c, "/").lstrip("/") / probe for c in ("cpu", "cpuset", "memory", "pids")
                   if (root / c).is_dir()]
    else:
        return {"version": None, "writable": False, "why": "no cgroup filesystem at /sys/fs/cgroup"}
    for target in targets:
        try:
            target.parent.mkdir(exist_ok=True)
            target.mkdir()
            target.rmdir()
        except OSError as exc:
            return {"version": version, "writable": False,
                    "why": f"cannot create a cgroup under {target.parent} ({exc.strerror})"}
    return {"version": version, "writable": True, "why": "ok"}


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _host_submounts() -> list[str]:
    """Mount points of the host (other than / and the fresh or private ones) for read-only binds."""
    points: list[str] = []
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or not tail:
            continue
        point = fields[4].replace("\\040", " ")
        if point == "/" or tail[0] in _PSEUDO_FS or tail[0] == "overlay":  # overlay: other containers' roots
            continue
        if any(point == p or point.startswith(p + "/") for p in _HOST_ONLY_PREFIXES + _ENGINE_STATE):
            continue
        try:
            os.stat(point)
        except OSError:  # gone, or not ours to see (a FUSE mount of another user)
            continue
        if point not in points:
            points.append(point)
    return sorted(points, key=lambda p: p.count("/"))


# --------------------------------------------------------------------------------------------------
# seccomp


def _go_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
            "riscv64": "riscv64"}.get(platform.machine(), platform.machine())


_SCMP_NATIVE = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64", "arm": "SCMP_ARCH_ARM",
                "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X", "riscv64": "SCMP_ARCH_RISCV64"}


def _kernel_at_least(version: str) -> bool:
    def parts(text: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", text)[:2])

    return parts(platform.release()) >= parts(version)


def seccomp_to_oci(profile: dict[str, Any], caps: Iterable[str]) -> dict[str, Any]:
    """A Docker seccomp profile (``archMap``, ``includes``/``excludes``) as the OCI ``linux.seccomp``.

    Follows moby's ``profiles/seccomp`` loader: the host architecture's entry of ``archMap``; a rule
    is kept when every capability it ``includes`` is in ``caps``, the host architecture and kernel
    match its ``includes``, and nothing in its ``excludes`` matches. A profile already in the OCI
    form passes through.
    """
    caps, arch = set(caps), _go_arch()
    out: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    if "defaultErrnoRet" in profile:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    if profile.get("archMap"):
        native = _SCMP_NATIVE.get(arch)
        for entry in profile["archMap"]:
            if entry.get("architecture") == native:
                out["architectures"] = [native] + list(entry.get("subArchitectures") or [])
    elif profile.get("architectures"):
        out["architectures"] = list(profile["architectures"])
    for key in ("flags", "listenerPath", "listenerMetadata"):
        if profile.get(key):
            out[key] = profile[key]
    rules = []
    for rule in profile.get("syscalls") or []:
        includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
        if any(cap not in caps for cap in includes.get("caps") or []):
            continue
        if includes.get("arches") and arch not in includes["arches"]:
            continue
        if includes.get("minKernel") and not _kernel_at_least(includes["minKernel"]):
            continue
        if any(cap in caps for cap in excludes.get("caps") or []):
            continue
        if arch in (excludes.get("arches") or []):
            continue
        if excludes.get("minKernel") and _kernel_at_least(excludes["minKernel"]):
            continue
        names = list(rule.get("names") or ([rule["name"]] if rule.get("name") else []))
        if not names:
            continue
        kept = {"names": names, "action": rule["action"]}
        for key in ("args", "errnoRet"):
            if rule.get(key) is not None:
                kept[key] = rule[key]
        rules.append(kept)
    out["syscalls"] = rules
    return out


def _load_seccomp(path: str, caps: Iterable[str], where: str) -> dict[str, Any]:
    try:
        profile = json.loads(Path(path).read_text())
        return seccomp_to_oci(profile, caps)
    except OSError as exc:
        raise PreflightError(f"{where}: cannot read the seccomp profile {path} ({exc.strerror}); fix the path in "
                             "--security-opt seccomp=PATH.") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise PreflightError(f"{where}: {path} is not a Docker or OCI seccomp profile ({type(exc).__name__}: "
                             f"{exc}); give a JSON profile like Docker's default.json.") from None


# --------------------------------------------------------------------------------------------------
# isolated: the OCI bundle


def container_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:128]


def _capabilities(flags: RunFlags) -> list[str]:
    caps = list(DOCKER_DEFAULT_CAPS)
    if "ALL" in flags.cap_drop:
        caps = []
    caps = [c for c in caps if c not in flags.cap_drop]
    for cap in flags.cap_add:
        if cap == "ALL":
            raise PreflightError("--cap-add=ALL is not supported by the isolated arm; add capabilities by name.")
        if cap not in caps:
            caps.append(cap)
    return caps


def _resources(flags: RunFlags, devices: list[dict[str, Any]]) -> dict[str, Any]:
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}] + [
        {"allow": True, "type": "c", "major": d["major"], "minor": d["minor"], "access": "rwm"} for d in devices]}
    cpu: dict[str, Any] = {}
    if flags.cpus is not None:
        period = 100000
        cpu.update(quota=int(round(flags.cpus * period)), period=period)
    if flags.cpuset_cpus:
        cpu["cpus"] = flags.cpuset_cpus
    if flags.cpuset_mems:
        cpu["mems"] = flags.cpuset_mems
    if cpu:
        resources["cpu"] = cpu
    memory: dict[str, Any] = {}
    if flags.memory is not None:
        memory["limit"] = flags.memory
    if flags.memory_swap is not None:
        memory["swap"] = flags.memory_swap
    if memory:
        resources["memory"] = memory
    if flags.pids_limit is not None:
        resources["pids"] = {"limit": flags.pids_limit}
    return resources


def _device_entries(paths: list[Path]) -> list[dict[str, Any]]:
    entries = []
    for path in paths:
        status = path.stat()
        entries.append({"path": str(path), "type": "c", "major": os.major(status.st_rdev),
                        "minor": os.minor(status.st_rdev), "fileMode": status.st_mode & 0o7777,
                        "uid": status.st_uid, "gid": status.st_gid})
    return entries


def isolated_env(spec_env: dict[str, str], forwarded: Iterable[str] = ("CUDA_VISIBLE_DEVICES",)) -> dict[str, str]:
    """The isolated container's environment: the invoker's PATH, LD_LIBRARY_PATH and LANG, HOME=/tmp,
    the forwarded variables, then the runner's."""
    env = {"PATH": os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/tmp", "LANG": os.environ.get("LANG") or "C.UTF-8"}
    if os.environ.get("LD_LIBRARY_PATH"):
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    for key in forwarded:
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(spec_env)
    return env


def bundle_config(arm: Arm, argv: list[str], env: dict[str, str], repo_dir: Path, run_dir: Path, workdir: Path,
                  gpus: bool, cgroups_writable: bool, cid: str) -> dict[str, Any]:
    """The OCI runtime ``config.json`` for one isolated invocation (root path filled by the launcher)."""
    where = f"arm {arm.name!r}"
    flags = parse_run_flags(arm)
    if flags.has_cgroup_limits and not cgroups_writable:
        raise PreflightError(f"{where}: its flags ask for cgroup limits but cgroups cannot be created here "
                             f"({cgroup_support()['why']}); run where /sys/fs/cgroup is writable (as root, "
                             "outside a container) or drop --cpus/--cpuset-*/--memory*/--pids-limit.")
    uid, gid = os.getuid(), os.getgid()
    caps = _capabilities(flags)
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    ]
    if flags.ipc_host:  # the host's IPC namespace: its /dev/shm (mqueue below then shows its queues too)
        mounts.append({"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind", "rw"]})
    else:
        mounts.append({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                       "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={flags.shm_size}"]})
    mounts.append({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                   "options": ["nosuid", "noexec", "nodev"]})
    if flags.net_host:  # sysfs cannot be mounted afresh without a network namespace of one's own
        mounts.append({"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "nosuid", "noexec",
                                                                                             "nodev", "ro"]})
    else:
        mounts.append({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                       "options": ["nosuid", "noexec", "nodev", "ro"]})
    mounts.append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                   "options": ["ro", "nosuid", "noexec", "nodev"]})
    for point in _host_submounts():
        mounts.append({"destination": point, "type": "bind", "source": point, "options": ["bind", "ro"]})
    mounts.append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "nodev", "mode=1777"]})
    repo, run = str(Path(repo_dir)), str(Path(run_dir))
    mounts.append({"destination": repo, "type": "bind", "source": repo, "options": ["rbind", "ro"]})
    mounts.append({"destination": run, "type": "bind", "source": run, "options": ["rbind", "rw"]})

    devices = _device_entries(nvidia_device_nodes()) if gpus else []
    namespaces = [{"type": "mount"}, {"type": "uts"}, {"type": "cgroup"}]
    if not flags.pid_host:
        namespaces.append({"type": "pid"})
    if not flags.net_host:
        namespaces.append({"type": "network"})
    if not flags.ipc_host:
        namespaces.append({"type": "ipc"})
    process: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": uid, "gid": gid, "additionalGids": sorted({g for g in os.getgroups() if g != gid})},
        "args": list(argv),
        "env": [f"{k}={v}" for k, v in env.items()],
        "cwd": str(Path(workdir)),
        "capabilities": {"bounding": caps, "effective": caps if uid == 0 else [],
                         "permitted": caps if uid == 0 else [], "inheritable": [], "ambient": []},
        "noNewPrivileges": True,
    }
    if flags.ulimits:  # otherwise the invoker's rlimits are inherited
        process["rlimits"] = [{"type": f"RLIMIT_{name.upper()}", "soft": _rlimit(soft), "hard": _rlimit(hard)}
                              for name, (soft, hard) in flags.ulimits.items()]
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "devices": devices,
        "resources": _resources(flags, devices) if cgroups_writable else {},
        "maskedPaths": list(DOCKER_MASKED_PATHS),
        "readonlyPaths": list(DOCKER_READONLY_PATHS),
    }
    if cgroups_writable and cgroup_support().get("version") == 2:
        linux["cgroupsPath"] = f"/benchlib/{cid}"  # not under our own cgroup: v2 forbids inner processes
    if flags.seccomp and flags.seccomp != "unconfined":
        linux["seccomp"] = _load_seccomp(flags.seccomp, caps, where)
    return {
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": "rootfs", "readonly": True},
        "hostname": socket.gethostname(),
        "mounts": mounts,
        "linux": linux,
    }


def _rlimit(value: int) -> int:
    return 2 ** 64 - 1 if value < 0 else value


def isolated_argv(arm: Arm, argv: list[str], env: dict[str, str], repo_dir: Path, run_dir: Path, workdir: Path,
                  gpus: bool, name: str) -> list[str]:
    """The command that runs ``argv`` in an isolated (runc) container; see the module docstring."""
    runc = runc_binary()
    if runc is None:
        raise PreflightError(_runc_missing(arm))
    support = cgroup_support()
    cid = container_id(name)
    config = bundle_config(arm, argv, env, repo_dir, run_dir, workdir, gpus, support["writable"], cid)
    plan = {"runc": runc, "state_root": str(STATE_ROOT / "state"), "bundle": str(STATE_ROOT / "bundles" / cid),
            "id": cid, "global": [] if support["writable"] else ["--rootless", "true"], "config": config}
    return [sys.executable, str(Path(__file__).with_name("_oci_launch.py")), json.dumps(plan)]


def _runc_missing(arm: Arm) -> str:
    override = os.environ.get("BENCHLIB_RUNC", "").strip()
    what = f"BENCHLIB_RUNC={override} is not an executable runc" if override else "`runc` is not on PATH"
    return (f"arm {arm.name!r}: {what}; install runc (Debian/Ubuntu: apt-get install runc) or point "
            "BENCHLIB_RUNC at its binary, or leave the arm out.")


def stop_isolated(name: str) -> None:
    """Kill and delete an isolated invocation's container and its bundle (after a timeout)."""
    runc, cid = runc_binary(), container_id(name)
    if runc:
        state = str(STATE_ROOT / "state")
        for argv in ([runc, "--root", state, "kill", cid, "KILL"], [runc, "--root", state, "delete", "--force", cid]):
            try:
                subprocess.run(argv, capture_output=True, timeout=QUERY_TIMEOUT_S, check=False)
            except (OSError, subprocess.TimeoutExpired):
                pass
    remove_bundle(STATE_ROOT / "bundles" / cid)


def remove_bundle(bundle: Path) -> None:
    """Remove a bundle folder without ever descending into ``rootfs`` (the host's / may be bound there
    in a namespace that still lives): unlink config.json, rmdir rootfs (fails while mounted), rmdir."""
    for action in (lambda: (bundle / "config.json").unlink(), lambda: (bundle / "rootfs").rmdir(), bundle.rmdir):
        try:
            action()
        except OSError:
            pass


# --------------------------------------------------------------------------------------------------
# rootfs: image export and the chroot launch


def default_rootfs_dir() -> Path:
    """Where the built-in ``rootfs`` arm looks: ``$BENCHLIB_ROOTFS``, else
    ``${XDG_CACHE_HOME:-~/.cache}/benchlib/rootfs/benchlib-latest``."""
    if os.environ.get("BENCHLIB_ROOTFS"):
        return Path(os.environ["BENCHLIB_ROOTFS"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "benchlib" / "rootfs" / "benchlib-latest"


def rootfs_dir(arm: Arm) -> Path:
    """The rootfs folder of a rootfs arm: its ``image``, else :func:`default_rootfs_dir`."""
    return Path(arm.image or default_rootfs_dir()).expanduser().resolve()


def read_rootfs_record(directory: Path) -> dict[str, Any] | None:
    """The export record (:data:`IMAGE_RECORD`) of a rootfs folder, or None when it has none."""
    try:
        return json.loads((Path(directory) / IMAGE_RECORD).read_text())
    except (OSError, ValueError):
        return None


def rootfs_digest(directory: str | Path) -> str | None:
    record = read_rootfs_record(Path(directory))
    return record.get("image_digest") if record else None


def export_image(image: str, dest: Path, engine: str = "docker", force: bool = False,
                 log=lambda message: None) -> dict[str, Any]:
    """Unpack ``image``'s filesystem into ``dest`` (``benchlib image export``); returns the record.

    ``ENGINE create`` + ``ENGINE export | tar -x`` (ownership kept when run as root), then the
    engine's own files (``/.dockerenv``) are removed and ``dest/.benchlib-image.json`` is written
    last: image, ID, digest, creation date, export date, and the image's Env, Entrypoint, Cmd,
    WorkingDir and User, which the rootfs arm applies. A non-empty ``dest`` is refused unless it holds
    an earlier export and ``force`` is set (its contents are then replaced).
    """
    dest = Path(dest).expanduser().resolve()
    if not shutil.which(engine):
        raise BenchlibError(f"`{engine}` is not on PATH; install it (CI: `.ci/docker-setup.sh` as root) "
                            f"to export {image}.")
    if dest == Path("/") or len(dest.parts) < 3:
        raise BenchlibError(f"refusing to export into {dest}; choose a dedicated folder such as ~/.cache/benchlib/rootfs/NAME.")
    replace = dest.exists() and any(dest.iterdir())
    if replace and read_rootfs_record(dest) is None:
        raise BenchlibError(f"{dest} is not empty and holds no earlier export ({IMAGE_RECORD}); choose an "
                            "empty or new folder.")
    if replace and not force:
        raise BenchlibError(f"{dest} already holds an exported image; pass --force to replace it.")
    done = subprocess.run([engine, "image", "inspect", image], capture_output=True, text=True,
                          timeout=QUERY_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise BenchlibError(f"image {image} is not present for {engine}; build it with `benchlib image build` "
                            "or `make images` first.")
    info = json.loads(done.stdout)[0]
    if replace:
        _clear(dest)
    dest.mkdir(parents=True, exist_ok=True)
    created = subprocess.run([engine, "create", image, "true"], capture_output=True, text=True,
                             timeout=QUERY_TIMEOUT_S * 4, check=False)
    if created.returncode != 0:
        raise BenchlibError(f"`{engine} create {image}` failed: {(created.stderr or created.stdout).strip()[-300:]}")
    cid = created.stdout.strip().splitlines()[-1]
    try:
        log(f"exporting {image} ({info.get('Id', '')[:19]}) into {dest} ...")
        tar = ["tar", "-x", "-C", str(dest), "-f", "-"]
        tar += ["--numeric-owner", "--same-owner"] if os.geteuid() == 0 else ["--no-same-owner"]
        exporter = subprocess.Popen([engine, "export", cid], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        unpack = subprocess.run(tar, stdin=exporter.stdout, capture_output=True, text=True, check=False)
        exporter.stdout.close()
        export_err = exporter.stderr.read().decode(errors="replace")
        exporter.wait()
        if exporter.returncode != 0 or unpack.returncode != 0:
            raise BenchlibError(f"exporting {image} failed: {(export_err or unpack.stderr).strip()[-300:]}")
    finally:
        subprocess.run([engine, "rm", "-f", cid], capture_output=True, timeout=QUERY_TIMEOUT_S, check=False)
    for leftover in (".dockerenv",):
        try:
            (dest / leftover).unlink()
        except OSError:
            pass
    config = info.get("Config") or {}
    digests = info.get("RepoDigests") or []
    record = {
        "image": image,
        "image_id": info.get("Id"),
        "image_digest": digests[0] if digests else info.get("Id"),
        "repo_digests": digests,
        "image_created": info.get("Created"),
        "exported_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "engine": engine,
        "env": list(config.get("Env") or []),
        "entrypoint": list(config.get("Entrypoint") or []),
        "cmd": list(config.get("Cmd") or []),
        "working_dir": config.get("WorkingDir") or "",
        "user": config.get("User") or "",
        "labels": config.get("Labels") or {},
    }
    tmp = dest / (IMAGE_RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(dest / IMAGE_RECORD)
    return record


def _clear(directory: Path) -> None:
    """Empty an earlier export, staying on its filesystem (never follows a mount or a symlink)."""
    device = directory.stat().st_dev
    for entry in directory.iterdir():
        if entry.is_symlink() or not entry.is_dir():
            entry.unlink()
        elif entry.stat().st_dev != device or os.path.ismount(entry):
            raise BenchlibError(f"{entry} is a mount point; unmount it before replacing the export.")
        else:
            shutil.rmtree(entry)


def rootfs_env(record: dict[str, Any], spec_env: dict[str, str], libs: bool, bins: bool,
               forwarded: Iterable[str] = ("CUDA_VISIBLE_DEVICES",)) -> dict[str, str]:
    """The image's Env (as exported), the forwarded variables and the runner's; the driver folders
    go first on LD_LIBRARY_PATH and PATH when the host's driver is bound in."""
    env: dict[str, str] = {}
    for item in record.get("env") or []:
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOME", "/root" if os.getuid() == 0 else "/tmp")
    for key in forwarded:
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(spec_env)

    def prepend(key: str, folder: str) -> None:
        parts = [p for p in env.get(key, "").split(":") if p]
        if folder not in parts:
            env[key] = ":".join([folder] + parts)

    if libs:
        prepend("LD_LIBRARY_PATH", f"{NVIDIA_DIR}/lib64")
    if bins:
        prepend("PATH", f"{NVIDIA_DIR}/bin")
    return env


def rootfs_argv(arm: Arm, argv: list[str], env: dict[str, str], repo_dir: Path, run_dir: Path, workdir: Path,
                gpus: bool) -> list[str]:
    """The command that runs ``argv`` chrooted into the arm's exported image; see the module docstring."""
    directory = rootfs_dir(arm)
    record = read_rootfs_record(directory)
    if record is None:
        raise PreflightError(_rootfs_missing(arm, directory))
    flags = parse_run_flags(arm)
    libs = driver_libraries() if gpus else {}
    bins = driver_binaries() if gpus else {}
    env = dict(env)
    env.setdefault("BENCHLIB_IMAGE", str(directory))
    if record.get("image_digest"):
        env.setdefault("BENCHLIB_IMAGE_DIGEST", record["image_digest"])
    binds: list[dict[str, Any]] = [
        {"source": "/dev", "target": "/dev", "recursive": True, "readonly": False},
        {"source": "/proc", "target": "/proc", "recursive": True, "readonly": False},
        {"source": "/sys", "target": "/sys", "recursive": True, "readonly": False},
        {"source": "/tmp", "target": "/tmp", "recursive": True, "readonly": False},
    ]
    for name in ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname"):
        if os.path.isfile(name):
            binds.append({"source": name, "target": name, "recursive": False, "readonly": True})
    repo, run = str(Path(repo_dir)), str(Path(run_dir))
    binds.append({"source": repo, "target": repo, "recursive": True, "readonly": True})
    binds.append({"source": run, "target": run, "recursive": True, "readonly": False})
    plan = {
        "rootfs": str(directory),
        "binds": binds,
        "driver": {"dir": NVIDIA_DIR, "libs": libs, "bins": bins},
        "env": rootfs_env(record, env, bool(libs), bool(bins)),
        "cwd": str(Path(workdir)),
        "argv": list(record.get("entrypoint") or []) + list(argv),
        "ulimits": {name: list(pair) for name, pair in flags.ulimits.items()},
        "cpuset": _expand_cpu_list(flags.cpuset_cpus) if flags.cpuset_cpus else None,
    }
    return [sys.executable, str(Path(__file__).with_name("_chroot_launch.py")), json.dumps(plan)]


def _rootfs_missing(arm: Arm, directory: Path) -> str:
    state = "does not exist" if not directory.exists() else f"holds no {IMAGE_RECORD} (not an exported image)"
    return (f"arm {arm.name!r}: the rootfs folder {directory} {state}; export it with `benchlib image export "
            f"IMAGE {directory}` (e.g. IMAGE benchlib:latest), or set the arm's image to an exported folder.")
