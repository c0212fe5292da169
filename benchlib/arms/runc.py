"""The ``isolated`` arm (engine ``runc``): the isolation of a default Docker container around the host's own userland.

The invocation runs under ``runc run`` with a generated OCI bundle whose root filesystem is the
host's own ``/``, read-only: what a default Docker container gets, applied to the host userland.
:meth:`RuncLauncher.argv` returns::

    HOST_PYTHON benchlib/arms/_oci_launch.py PLAN_JSON

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
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import PreflightError
from ._base import (DOCKER_SYNTAX, FORWARDED_ENV, QUERY_TIMEOUT_S, HostFacts, LaunchSpec, Launcher, container_name,
                    first_error_line, run_quiet, wants_gpus)
from ._flags import RunFlags, parse_run_flags
from ._model import Arm
from ._probe import ProbeAdvice, run_probe
from ._seccomp import load_seccomp, seccomp_to_oci  # noqa: F401  (seccomp_to_oci: the conversion, for users)

__all__ = ["DOCKER_DEFAULT_CAPS", "DOCKER_MASKED_PATHS", "DOCKER_READONLY_PATHS", "RuncLauncher", "bundle_config",
           "cgroup_support", "nvidia_device_nodes", "runc_binary"]

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
STATE_ROOT = Path("/run/benchlib-runc")


#: Host mounts that an isolated container does not see (it gets fresh ones) or must not see.
_HOST_ONLY_PREFIXES = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/run")
#: Container engines' own state (image layers, running containers): never needed by the host python.
_ENGINE_STATE = ("/var/lib/docker", "/var/lib/containers", "/var/lib/containerd", "/var/lib/kubelet", "/snap")
_PSEUDO_FS = {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "autofs", "binfmt_misc", "tracefs",
              "debugfs", "securityfs", "fusectl", "configfs", "bpf", "pstore", "hugetlbfs", "efivarfs", "rpc_pipefs",
              "nsfs"}


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
    flags = parse_run_flags(arm, _refuse)
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
        linux["seccomp"] = load_seccomp(flags.seccomp, caps, where)
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


def _runc_missing(arm: Arm) -> str:
    override = os.environ.get("BENCHLIB_RUNC", "").strip()
    what = f"BENCHLIB_RUNC={override} is not an executable runc" if override else "`runc` is not on PATH"
    return (f"arm {arm.name!r}: {what}; install runc (Debian/Ubuntu: apt-get install runc) or point "
            "BENCHLIB_RUNC at its binary, or leave the arm out.")


def remove_bundle(bundle: Path) -> None:
    """Remove a bundle folder without ever descending into ``rootfs`` (the host's / may be bound there
    in a namespace that still lives): unlink config.json, rmdir rootfs (fails while mounted), rmdir."""
    for action in (lambda: (bundle / "config.json").unlink(), lambda: (bundle / "rootfs").rmdir(), bundle.rmdir):
        try:
            action()
        except OSError:
            pass


def _refuse(name: str, value: str | None) -> str | None:
    """The isolated arm applies every flag its parser knows: nothing to refuse beyond that."""
    return None


_ADVICE = ProbeAdvice(
    inside="in the isolated container",
    unwritable="UID {uid} in the isolated container cannot write under {run_dir} ({error}); make the outputs folder "
               "writable by that user.",
    unreadable="the isolated container cannot read the checkout; check its permissions.",
    missing=f"the isolated container lacks {{modules}}; install the project into {sys.executable}'s environment "
            "(`make setup`).",
    no_torch=f"torch does not import in the isolated container ({{error}}); install the project into {sys.executable}'s "
             "environment (`make setup`).",
    no_gpu="the host has a GPU but none is visible in the isolated container; check that /dev/nvidia* exist and the "
           "driver libraries are found (`ldconfig -p | grep libcuda`), or set `gpus: none` on the arm to measure "
           "without GPUs.",
    no_report="the trial run under runc printed no report ({error}); run `benchlib env` there by hand to see why, "
              "then retry.",
)


class RuncLauncher(Launcher):
    engine = "runc"
    kind = "isolated"
    userland = "host"
    isolation = "pid, net (loopback), ipc, uts, mount and cgroup namespaces, Docker's 14 capabilities, masked paths"
    mechanisms = DOCKER_SYNTAX
    stuck_hint = "`runc --root /run/benchlib-runc/state list`"

    def parsed_flags(self, arm: Arm) -> RunFlags:
        return parse_run_flags(arm, _refuse)

    def check(self, arm: Arm) -> None:
        self.parsed_flags(arm)

    def argv(self, arm: Arm, spec: LaunchSpec, host: HostFacts) -> list[str]:
        """``HOST_PYTHON benchlib/arms/_oci_launch.py PLAN_JSON``; see the module docstring."""
        runc = runc_binary()
        if runc is None:
            raise PreflightError(_runc_missing(arm))
        support = cgroup_support()
        cid = container_id(container_name(spec))
        config = bundle_config(arm, list(spec.argv), isolated_env(spec.env, FORWARDED_ENV), spec.repo_dir, spec.run_dir,
                               spec.workdir, wants_gpus(arm, host), support["writable"], cid)
        plan = {"runc": runc, "state_root": str(STATE_ROOT / "state"), "bundle": str(STATE_ROOT / "bundles" / cid),
                "id": cid, "global": [] if support["writable"] else ["--rootless", "true"], "config": config}
        return [sys.executable, str(Path(__file__).with_name("_oci_launch.py")), json.dumps(plan)]

    def stop(self, arm: Arm, spec: LaunchSpec) -> None:
        """Kill and delete an isolated invocation's container and its bundle (after a timeout)."""
        runc, cid = runc_binary(), container_id(container_name(spec))
        if runc:
            state = str(STATE_ROOT / "state")
            for argv in ([runc, "--root", state, "kill", cid, "KILL"], [runc, "--root", state, "delete", "--force", cid]):
                try:
                    subprocess.run(argv, capture_output=True, timeout=QUERY_TIMEOUT_S, check=False)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        remove_bundle(STATE_ROOT / "bundles" / cid)

    def explain_failed_probe(self, arm: Arm, done: subprocess.CompletedProcess, attempt: Callable[[bool], Any]) -> None:
        detail = first_error_line(done.stderr or done.stdout).rstrip('"')  # runc logs msg="..."
        lowered = detail.lower()
        if "cgroup" in lowered:
            fix = ("cgroups could not be set up for the container; run as root where /sys/fs/cgroup is writable, or "
                   "drop the arm's --cpus/--cpuset-*/--memory*/--pids-limit flags")
        elif "rlimit" in lowered:
            fix = ("runc may not raise that ulimit here (benchlib's own hard limit is lower and it lacks "
                   "CAP_SYS_RESOURCE), so raise the hard limit (`ulimit -H`) or drop that --ulimit from the arm")
        elif "seccomp" in lowered:
            fix = "fix or drop the arm's --security-opt seccomp=PATH"
        elif done.returncode in (126, 127):
            fix = f"the host python {sys.executable} could not be started inside the container"
        else:
            fix = "see `runc --root /run/benchlib-runc/state list` and the message, and fix the arm's flags or runc"
        raise PreflightError(f"arm {arm.name!r}: the trial run under runc failed with exit code {done.returncode} "
                             f"({detail}); {fix}.")

    def preflight(self, arm: Arm, repo_dir: Path, run_dir: Path, host: HostFacts) -> dict[str, Any]:
        """runc present, root, cgroups where limits are asked for, GPU nodes where GPUs are wanted, a trial run."""
        where = f"arm {arm.name!r}"
        runc = runc_binary()
        if runc is None:
            raise PreflightError(_runc_missing(arm))
        if os.geteuid() != 0:
            raise PreflightError(f"{where}: the isolated arm needs root (runc creates its namespaces, cgroups and "
                                 "device nodes; rootless runc is not supported here); run benchlib as root (sudo) or "
                                 "leave the arm out.")
        flags = self.parsed_flags(arm)
        cgroups = cgroup_support()
        if flags.has_cgroup_limits and not cgroups["writable"]:
            raise PreflightError(f"{where}: its flags ask for cgroup limits but cgroups cannot be created here "
                                 f"({cgroups['why']}); run where /sys/fs/cgroup is writable or drop "
                                 "--cpus/--cpuset-*/--memory*/--pids-limit from the arm.")
        gpus = wants_gpus(arm, host)
        nodes = nvidia_device_nodes() if gpus else []
        if gpus and not nodes:
            raise PreflightError(f"{where}: GPUs are wanted but there are no /dev/nvidia* device nodes to pass in; "
                                 "load the NVIDIA driver (`nvidia-smi` creates them) or set `gpus: none` on the arm.")
        try:
            version = run_quiet([runc, "--version"], QUERY_TIMEOUT_S).stdout.splitlines()
        except (OSError, subprocess.TimeoutExpired):
            version = []
        config = bundle_config(arm, ["true"], {}, repo_dir, run_dir, run_dir, gpus, cgroups["writable"], "preflight")
        facts: dict[str, Any] = {
            "engine": "runc", "runc": runc, "engine_version": version[0].split()[-1] if version else None,
            "cgroups": cgroups, "rootless_cgroups": not cgroups["writable"],
            "namespaces": [ns["type"] for ns in config["linux"]["namespaces"]],
            "capabilities": config["process"]["capabilities"]["bounding"],
            "shm_bytes": flags.shm_size if not flags.ipc_host else "host",
            "seccomp": flags.seccomp or "none (Docker would apply its default profile)",
            "resources": {k: v for k, v in config["linux"]["resources"].items() if k != "devices"},
            "gpu_device_nodes": [str(node) for node in nodes],
            "host_mounts_bound_ro": [m["destination"] for m in config["mounts"] if m["options"] == ["bind", "ro"]],
        }
        facts.update(run_probe(self, arm, repo_dir, run_dir, host, _ADVICE))
        return facts

