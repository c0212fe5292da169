"""The environment fingerprint (docs/architecture.md, "What is known to make a container slower"): env.json.

:func:`capture` records, once per invocation, everything that can make two arms differ: container
engine and evidence, versions (driver, CUDA, cuBLAS, cuDNN, torch), the torch build's GPU arches vs
the device, math modes, GPU clocks and power limits, CPU quota and cpuset, memory limits, /dev/shm,
seccomp, ulimits, NCCL (version, and the GPU topology from ``nvidia-smi topo -m`` on a host with
2+ GPUs) and the CUDA_/NVIDIA_/TORCH_/NCCL_/NVSHMEM_/OMP_/TRITON_ environment. Every probe is guarded: a failure is
recorded as ``"error: ..."`` (or None for an absent file), never raised. Nothing spawns a process
except ``nvidia-smi topo -m``, and only with 2+ GPUs. The result passes through
:func:`benchlib.redact.redact` so no secret reaches env.json or a report.
"""
from __future__ import annotations

import ctypes
import glob
import json
import os
import platform
import re
import socket
import sys
import warnings
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

from . import hostmem
from .redact import REDACTED, redact  # noqa: F401  (re-exported: the fingerprint's redaction)
from .telemetry import NvmlUnavailable, decode_clock_event_reasons, nvml_session, visible_devices

ENV_PREFIXES = ("CUDA_", "NVIDIA_", "TORCH_", "NCCL_", "NVSHMEM_", "OMP_", "PYTORCH_", "MKL_", "BENCHLIB_", "TRITON_")
ENGINES = ("docker", "podman", "apptainer", "enroot", "containerd", "kubernetes", "runc")
IMAGE_IDENTITY = Path("/etc/benchlib/image.json")
#: What the runner sets in every arm (the launchers in benchlib.arms), by fingerprint key.
#: Packages whose version can change a workload's speed (an image pins its own).
PERF_PACKAGES = ("triton", "transformers", "safetensors", "tensorrt_llm", "flash_attn", "pandas",
                 "pyarrow", "scipy", "mkl", "intel-openmp", "nvidia-cublas-cu12", "nvidia-cublas",
                 "nvidia-cudnn-cu12", "nvidia-cudnn-cu13", "nvidia-nccl-cu12", "nvidia-nccl-cu13")

ARM_ENV = {
    "name": "BENCHLIB_ARM",
    "kind": "BENCHLIB_ARM_KIND",
    "engine": "BENCHLIB_ENGINE",
    "image": "BENCHLIB_IMAGE",
    "image_digest": "BENCHLIB_IMAGE_DIGEST",
    "run_flags": "BENCHLIB_RUN_FLAGS",
}
_HOST_INITS = frozenset({"systemd", "init", "launchd", "upstart", "openrc-init", "runit"})
_SECCOMP_MODES = {"0": "disabled", "1": "strict", "2": "filter"}
_COMPUTE_MODES = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}
_UNLIMITED_V1 = 2**62  # cgroup v1 reports "no memory limit" as a page-rounded LONG_MAX


# --------------------------------------------------------------------------- redaction
# One redaction for every writer: benchlib.redact (re-exported here, where env.json is built).

def to_json(fp: Mapping[str, Any]) -> str:
    return json.dumps(fp, indent=2, sort_keys=True, default=str)


# --------------------------------------------------------------------------- capture

def capture() -> dict[str, Any]:
    """The fingerprint of this process's environment, redacted and JSON-serialisable."""
    torch = _import("torch")
    with ExitStack() as stack:
        try:
            nvml: ModuleType | None = stack.enter_context(nvml_session())
            nvml_status = "ok"
        except NvmlUnavailable as exc:
            nvml, nvml_status = None, f"unavailable: {exc}"
        arm = _safe(_arm)
        fp = {
            "captured_at": datetime.now(timezone.utc).isoformat(),
            "host": _safe(_host),
            "container": _safe(_container, arm if isinstance(arm, dict) else {}),
            "arm": arm,
            "process": _safe(_process),
            "python": {"version": platform.python_version(), "executable": sys.executable},
            "versions": _safe(_versions, torch, nvml, nvml_status),
            "torch": _safe(_torch, torch, nvml),
            "gpus": _safe(_gpus, nvml) if nvml else nvml_status,
            "visible_devices": _safe(_visible_devices, nvml) if nvml else nvml_status,
            "cpu": _safe(_cpu),
            "virtualization": _safe(_virtualization),
            "cgroup": _safe(_cgroup),
            "memory": _safe(_memory, torch),
            "shm": _safe(_shm),
            "security": _safe(_security),
            "limits": _safe(_limits),
            "mounts": _safe(_mounts),
            "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES) or k == "LD_LIBRARY_PATH"},
            "nccl": _safe(_nccl, torch, nvml),
        }
    return redact(fp)


def _safe(probe: Callable[..., Any], *args: Any) -> Any:
    try:
        return probe(*args)
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"


def _probe_all(probes: Mapping[str, Callable[[], Any]]) -> dict[str, Any]:
    return {key: _safe(probe) for key, probe in probes.items()}


def _import(name: str) -> ModuleType | None:
    try:
        return __import__(name)
    except Exception:
        return None


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


def _colon_fields(path: str) -> dict[str, str]:
    """``Key: value`` lines of a /proc file (status, meminfo, cpuinfo) as a dict, first one wins."""
    fields: dict[str, str] = {}
    for line in (_read(path) or "").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _host() -> dict[str, Any]:
    os_release = _read("/etc/os-release") or _read("/usr/lib/os-release") or ""
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', os_release, re.M)
    return {
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "os": pretty[1] if pretty else None,
    }


def _arm() -> dict[str, Any]:
    arm: dict[str, Any] = {key: os.environ.get(var) for key, var in ARM_ENV.items()}
    if arm["run_flags"] is not None:
        try:
            arm["run_flags"] = json.loads(arm["run_flags"])
        except json.JSONDecodeError:
            pass  # keep the raw string: still worth showing
    return arm


def _pid1_name() -> str | None:
    return _read("/proc/1/comm")


def _container(arm: Mapping[str, Any]) -> dict[str, Any]:
    """Whether we run in a container, which engine, and the evidence for it."""
    evidence: list[str] = []
    engines: list[str] = []  # strongest first

    def found(engine: str | None, why: str) -> None:
        evidence.append(why)
        if engine:
            engines.append(engine)

    containerenv = _parse_containerenv(_read("/run/.containerenv")) if Path("/run/.containerenv").exists() else None
    if containerenv is not None:
        found("podman", f"/run/.containerenv {containerenv}")
    if Path("/.dockerenv").exists():
        found("docker", "/.dockerenv")
    for var in ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        if os.environ.get(var):
            found("apptainer", f"{var}={os.environ[var]}")
    enroot = sorted(k for k in os.environ if k.startswith("ENROOT_"))
    if enroot:
        found("enroot", f"env {', '.join(enroot)}")
    if os.environ.get("container"):
        value = os.environ["container"]
        found(value if value in ENGINES else None, f"env container={value}")
    for line in (_read("/proc/1/cgroup") or "").splitlines():
        engine = _cgroup_engine(line)
        if engine:
            found(engine, f"/proc/1/cgroup {line}")
            break
    root = _root_mount()
    if root and root[0] == "overlay":
        found(None, "root filesystem is overlay")
    pid1 = _pid1_name()
    if pid1 is not None and pid1 not in _HOST_INITS:
        found(None, f"pid 1 is {pid1!r}, not a host init")
    detected = bool(evidence)
    engine = engines[0] if engines else ("unknown" if detected else None)
    if detected and arm.get("engine") in ENGINES:
        engine = arm["engine"]
        evidence.append(f"BENCHLIB_ENGINE={engine}")
    return {
        "detected": detected,
        "engine": engine,
        "evidence": evidence,
        "containerenv": containerenv,
        "image_identity": _image_identity(),
    }


def _parse_containerenv(text: str | None) -> dict[str, str]:
    pairs = (line.partition("=") for line in (text or "").splitlines())
    return {key.strip(): value.strip().strip('"') for key, sep, value in pairs if sep}


def _cgroup_engine(line: str) -> str | None:
    for marker, engine in (("kubepods", "kubernetes"), ("libpod", "podman"), ("docker", "docker"),
                           ("containerd", "containerd"), ("lxc", "unknown")):
        if marker in line:
            return engine
    return None


def _image_identity() -> Any:
    if not IMAGE_IDENTITY.exists():
        return None
    return json.loads(IMAGE_IDENTITY.read_text())


def _process() -> dict[str, Any]:
    import pwd  # POSIX only, like the rest of this section

    uid = os.getuid()
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:  # an arbitrary uid inside a container
        user = None
    pid1 = _pid1_name()
    return {
        "uid": uid,
        "gid": os.getgid(),
        "user": user,
        "is_root": uid == 0,
        "pid": os.getpid(),
        "pid1_name": pid1,
        "pid_namespace_pid1": os.getpid() == 1 or (pid1 is not None and pid1 not in _HOST_INITS),
        # The kernel's namespace ids: two arms in the same namespace show the same id, whatever
        # the machine itself runs in (a host that is already a container looks "containerised").
        "namespaces": {name: _readlink(f"/proc/self/ns/{name}")
                       for name in ("pid", "net", "ipc", "uts", "mnt", "cgroup", "user")},
    }


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


# --------------------------------------------------------------------------- versions, torch, GPUs

def _versions(torch: ModuleType | None, nvml: ModuleType | None, nvml_status: str) -> dict[str, Any]:
    def installed(package: str) -> Callable[[], str | None]:
        """The installed distribution's version from its metadata (nothing is imported)."""
        def read() -> str | None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                return version(package)
            except PackageNotFoundError:
                return None
        return read

    def benchlib_version() -> str | None:
        return installed("benchlib")() or getattr(sys.modules.get("benchlib"), "__version__", None)

    def nvml_call(name: str) -> Callable[[], Any]:
        return lambda: _text(getattr(nvml, name)()) if nvml else nvml_status

    def cuda_driver() -> str:
        if not nvml:
            return nvml_status
        try:
            value = nvml.nvmlSystemGetCudaDriverVersion_v2()
        except (AttributeError, nvml.NVMLError):
            value = nvml.nvmlSystemGetCudaDriverVersion()
        return f"{value // 1000}.{value % 1000 // 10}"

    return _probe_all({
        "torch": lambda: torch.__version__ if torch else None,
        "torch_cuda_runtime": lambda: torch.version.cuda if torch else None,
        "cudnn": lambda: torch.backends.cudnn.version() if torch else None,
        "cublas": lambda: cublas_version(torch),
        "nvidia_driver": nvml_call("nvmlSystemGetDriverVersion"),
        "nvml": nvml_call("nvmlSystemGetNVMLVersion"),
        "cuda_driver": cuda_driver,
        "numpy": lambda: _import("numpy").__version__,
        "benchlib": benchlib_version,
        # the rest of the stack a workload's speed depends on: a container's image pins its own
        **{name: installed(name) for name in PERF_PACKAGES},
    })


def cublas_version(torch: ModuleType | None) -> str | None:
    """The version of the cuBLAS this process uses (cublasGetProperty), or None on a CPU-only torch.

    Prefers the library already mapped into the process (torch loads it at import), then torch's
    own lib folder and pip's ``nvidia/*/lib``, then the dynamic loader's search by soname.
    """
    if torch is None or not torch.version.cuda:
        return None
    lib = ctypes.CDLL(_cublas_path(torch))
    parts = []
    for prop in (0, 1, 2):  # libraryPropertyType: MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
        value = ctypes.c_int()
        status = lib.cublasGetProperty(prop, ctypes.byref(value))
        if status != 0:
            raise RuntimeError(f"cublasGetProperty({prop}) returned status {status}")
        parts.append(str(value.value))
    return ".".join(parts)


def _cublas_path(torch: ModuleType) -> str:
    for line in (_read("/proc/self/maps") or "").splitlines():
        path = line.split(maxsplit=5)[-1]
        if os.path.basename(path).startswith("libcublas.so"):
            return path
    dirs = [os.path.join(os.path.dirname(torch.__file__), "lib")]
    dirs += [d for p in sys.path for d in glob.glob(os.path.join(p, "nvidia", "*", "lib"))]
    for d in dirs:
        found = sorted(glob.glob(os.path.join(d, "libcublas.so*")))
        if found:
            return found[-1]
    return f"libcublas.so.{torch.version.cuda.split('.')[0]}"


def arch_support(arch_list: list[str], capability: tuple[int, int]) -> tuple[bool, str | None]:
    """Whether a build for ``arch_list`` runs natively on a device of ``capability``, and how.

    ``(True, "sm_90")`` for the closest machine code that runs on the device (same major, minor not
    above the device's; an ``a`` suffix needs the exact arch), ``(True, "PTX JIT (compute_80)")`` when only PTX
    at or below the device matches (the driver compiles it at start), ``(False, None)`` otherwise.
    """
    major, minor = capability
    sass: list[tuple[int, str]] = []
    ptx: list[tuple[int, int, str]] = []
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        m = re.fullmatch(r"(\d+)(\d)([a-z]?)", number)
        if not m:
            continue
        a_major, a_minor, suffix = int(m[1]), int(m[2]), m[3]
        if kind == "sm" and a_major == major and (a_minor == minor if suffix == "a" else a_minor <= minor):
            sass.append((a_minor, arch))
        elif kind == "compute" and suffix != "a" and (a_major, a_minor) <= (major, minor):
            ptx.append((a_major, a_minor, arch))
    if sass:
        return True, max(sass)[1]
    return (True, f"PTX JIT ({max(ptx)[2]})") if ptx else (False, None)


def _torch(torch: ModuleType | None, nvml: ModuleType | None) -> dict[str, Any] | None:
    if torch is None:
        return None
    with warnings.catch_warnings():  # the TF32 flags warn about their successor API in torch >= 2.9
        warnings.simplefilter("ignore")
        matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
        out = _probe_all({
            "arch_list": torch.cuda.get_arch_list,
            "cuda_available": torch.cuda.is_available,
            "device_count": torch.cuda.device_count,
            "device_names": lambda: [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "cuda_matmul_allow_tf32": lambda: matmul.allow_tf32,
            "cudnn_allow_tf32": lambda: cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision,
            "cuda_matmul_fp32_precision": lambda: getattr(matmul, "fp32_precision", None),
            "cudnn_fp32_precision": lambda: getattr(cudnn, "fp32_precision", None),
            "allow_bf16_reduced_precision_reduction": lambda: matmul.allow_bf16_reduced_precision_reduction,
            "allow_fp16_reduced_precision_reduction": lambda: matmul.allow_fp16_reduced_precision_reduction,
            "num_threads": torch.get_num_threads,
            "num_interop_threads": torch.get_num_interop_threads,
        })
    capability = _safe(_capability, torch, nvml)
    out["device_capability"] = f"sm_{capability[0]}{capability[1]}" if isinstance(capability, tuple) else capability
    out["arch_supported"], out["arch_match"] = (
        arch_support(out["arch_list"], capability)
        if isinstance(capability, tuple) and isinstance(out["arch_list"], list) else (None, None)
    )
    return out


def _capability(torch: ModuleType, nvml: ModuleType | None) -> tuple[int, int] | None:
    """Device 0's compute capability: from torch, or from NVML when torch cannot reach the GPU."""
    if torch.cuda.is_available():
        return tuple(torch.cuda.get_device_capability(0))
    if nvml and nvml.nvmlDeviceGetCount():
        return tuple(nvml.nvmlDeviceGetCudaComputeCapability(nvml.nvmlDeviceGetHandleByIndex(0)))
    return None


def _gpus(nvml: ModuleType) -> list[dict[str, Any]]:
    """One entry per GPU NVML lists; a GPU NVML cannot read (lost, in reset) is one entry with its
    ``error`` and never takes the others' entries with it."""
    return [_gpu_or_error(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]


def _gpu_or_error(nvml: ModuleType, index: int) -> dict[str, Any]:
    try:
        h = nvml.nvmlDeviceGetHandleByIndex(index)
        nvml.nvmlDeviceGetUUID(h)  # a lost GPU fails here: one error instead of one per probe
    except Exception as exc:
        return {"index": index, "error": f"{type(exc).__name__}: {exc}"}
    return _gpu(nvml, h, index)


def _visible_devices(nvml: ModuleType) -> dict[str, Any]:
    """The devices this process's CUDA sees (CUDA_VISIBLE_DEVICES), in CUDA order: the GPU whose
    counters telemetry reads and, for a MIG slice, the slice's own UUID and profile."""
    spec = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = []
    for ordinal, device in enumerate(visible_devices(nvml, spec)):
        parent = _safe(lambda: _text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(device.nvml_index))))
        devices.append({"cuda_ordinal": ordinal, "nvml_index": device.nvml_index, "gpu_uuid": parent,
                        "mig_uuid": device.mig_uuid, "mig_name": device.mig_name,
                        "mig_profile": mig_profile(device.mig_name) if device.mig_name else None})
    return {"cuda_visible_devices": spec, "devices": devices}


def mig_profile(name: str | None) -> str | None:
    """The MIG profile in a MIG device's name (``"NVIDIA H100 80GB HBM3 MIG 1g.10gb"`` -> ``"1g.10gb"``)."""
    match = re.search(r"\bMIG\s+(\d+g\.\d+gb(?:\+me)?)\s*$", name or "", re.I)
    return match[1] if match else None


def _mig_devices(nvml: ModuleType, h: Any) -> list[dict[str, Any]]:
    """The MIG slices of a GPU in MIG mode: identity, profile, SMs and memory of each."""
    slices = []
    for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(h)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, slot)
        except nvml.NVMLError:
            continue  # an empty slot
        name = _safe(lambda: _text(nvml.nvmlDeviceGetName(mig)))
        attributes = _safe(nvml.nvmlDeviceGetAttributes, mig)
        slices.append({
            "uuid": _safe(lambda: _text(nvml.nvmlDeviceGetUUID(mig))), "name": name,
            "profile": mig_profile(name) if isinstance(name, str) else None,
            "gpu_instance_id": _safe(nvml.nvmlDeviceGetGpuInstanceId, mig),
            "compute_instance_id": _safe(nvml.nvmlDeviceGetComputeInstanceId, mig),
            "sm_count": getattr(attributes, "multiprocessorCount", attributes),
            "memory_total_bytes": attributes.memorySizeMB * 2**20 if hasattr(attributes, "memorySizeMB") else attributes,
        })
    return slices


def _gpu(nvml: ModuleType, h: Any, index: int) -> dict[str, Any]:
    def pair(fn: Callable[[Any], Any], *names: str) -> dict[str, Any]:
        values = _safe(fn, h)
        return dict(zip(names, values)) if isinstance(values, (list, tuple)) else dict.fromkeys(names, values)

    sm, mem = nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM
    gpu = {"index": index} | _probe_all({
        "name": lambda: _text(nvml.nvmlDeviceGetName(h)),
        "uuid": lambda: _text(nvml.nvmlDeviceGetUUID(h)),
        "pci_bus_id": lambda: _text(nvml.nvmlDeviceGetPciInfo(h).busId),
        "memory_total_bytes": lambda: nvml.nvmlDeviceGetMemoryInfo(h).total,
        "sm_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(h, sm),
        "mem_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(h, mem),
        "max_sm_clock_mhz": lambda: nvml.nvmlDeviceGetMaxClockInfo(h, sm),
        "max_mem_clock_mhz": lambda: nvml.nvmlDeviceGetMaxClockInfo(h, mem),
        "applications_sm_clock_mhz": lambda: nvml.nvmlDeviceGetApplicationsClock(h, sm),
        "applications_mem_clock_mhz": lambda: nvml.nvmlDeviceGetApplicationsClock(h, mem),
        "power_limit_w": lambda: nvml.nvmlDeviceGetPowerManagementLimit(h) / 1e3,
        "power_default_limit_w": lambda: nvml.nvmlDeviceGetPowerManagementDefaultLimit(h) / 1e3,
        "power_enforced_limit_w": lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3,
        "persistence_mode": lambda: bool(nvml.nvmlDeviceGetPersistenceMode(h)),
        "compute_mode": lambda: _COMPUTE_MODES.get(nvml.nvmlDeviceGetComputeMode(h), "unknown"),
        "performance_state": lambda: f"P{nvml.nvmlDeviceGetPerformanceState(h)}",
        "pcie_gen": lambda: nvml.nvmlDeviceGetCurrPcieLinkGeneration(h),
        "pcie_gen_max": lambda: nvml.nvmlDeviceGetMaxPcieLinkGeneration(h),
        "pcie_width": lambda: nvml.nvmlDeviceGetCurrPcieLinkWidth(h),
        "pcie_width_max": lambda: nvml.nvmlDeviceGetMaxPcieLinkWidth(h),
        "clock_event_reasons": lambda: decode_clock_event_reasons(_clock_event_mask(nvml, h), nvml),
    })
    gpu |= pair(nvml.nvmlDeviceGetMigMode, "mig_mode", "mig_mode_pending")
    gpu |= pair(nvml.nvmlDeviceGetEccMode, "ecc_mode", "ecc_mode_pending")
    if gpu.get("mig_mode") == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
        gpu["mig_devices"] = _safe(_mig_devices, nvml, h)
    return gpu


def _clock_event_mask(nvml: ModuleType, h: Any) -> int:
    try:
        return nvml.nvmlDeviceGetCurrentClocksEventReasons(h)
    except (AttributeError, nvml.NVMLError_FunctionNotFound, nvml.NVMLError_NotSupported):
        return nvml.nvmlDeviceGetCurrentClocksThrottleReasons(h)


def _nccl(torch: ModuleType | None, nvml: ModuleType | None) -> dict[str, Any]:
    """NCCL as torch links it, and how the GPUs connect (the collectives workload's context)."""
    from .nccl import nccl_version

    return {"version": _safe(nccl_version, torch), "topology": _safe(_topology, nvml)}


def _topology(nvml: ModuleType | None) -> Any:
    """``nvidia-smi topo -m`` as ``{"GPU0": {"GPU1": "NV18", ...}}`` with 2+ GPUs; None with fewer."""
    import shutil
    import subprocess

    from .nccl import parse_topology

    if nvml is None or nvml.nvmlDeviceGetCount() < 2:
        return None
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return "nvidia-smi not found"
    done = subprocess.run([binary, "topo", "-m"], capture_output=True, text=True, timeout=15)
    if done.returncode != 0:
        return f"error: nvidia-smi topo -m exited {done.returncode}: {(done.stderr or done.stdout).strip()[:300]}"
    return parse_topology(done.stdout) or done.stdout.strip()[:4000]


# --------------------------------------------------------------------------- CPU, cgroup, memory, OS

def _cpu() -> dict[str, Any]:
    info = _colon_fields("/proc/cpuinfo")
    model = info.get("model name") or (
        f"implementer {info['CPU implementer']} part {info['CPU part']}" if "CPU part" in info else None
    )
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []  # Linux only
    nodes = glob.glob("/sys/devices/system/node/node[0-9]*")
    vulnerabilities = {
        os.path.basename(p): _read(p) for p in sorted(glob.glob("/sys/devices/system/cpu/vulnerabilities/*"))
    }
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "affinity_count": len(affinity) or None,
        "affinity_cpus": _ranges(affinity) or None,
        "numa_nodes": len(nodes) if nodes else None,
        "scaling_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "vulnerabilities": vulnerabilities,
    }


#: DMI vendor or product names of hypervisors (lower case, matched as words of sys_vendor + product_name).
_VM_DMI = re.compile(r"\b(qemu|kvm|vmware|virtualbox|innotek|xen|bochs|parallels|amazon ec2|google compute engine|"
                     r"openstack|firecracker|cloud hypervisor|virtual machine)\b", re.I)


def _virtualization(cpuinfo: str = "/proc/cpuinfo", sys_root: str = "/sys") -> dict[str, Any]:
    """Whether this machine is a virtual machine, and the evidence: the ``hypervisor`` CPU flag (set by
    every x86 hypervisor), ``/sys/hypervisor/type`` (Xen) and the DMI vendor and product names."""
    flags = _colon_fields(cpuinfo).get("flags", "").split()
    dmi = " ".join(filter(None, (_read(f"{sys_root}/class/dmi/id/{name}")
                                 for name in ("sys_vendor", "product_name"))))
    hypervisor_type = _read(f"{sys_root}/hypervisor/type")
    evidence = []
    if "hypervisor" in flags:
        evidence.append("the hypervisor flag is set in /proc/cpuinfo")
    if hypervisor_type:
        evidence.append(f"/sys/hypervisor/type is {hypervisor_type!r}")
    if dmi and _VM_DMI.search(dmi):
        evidence.append(f"DMI says {dmi!r}")
    return {"vm": bool(evidence), "evidence": evidence, "dmi": dmi or None, "hypervisor_type": hypervisor_type}


def _ranges(cpus: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``: the syntax of cpuset.cpus, so the two compare directly."""
    spans: list[list[int]] = []
    for cpu in cpus:
        if spans and cpu == spans[-1][1] + 1:
            spans[-1][1] = cpu
        else:
            spans.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)


def _cgroup() -> dict[str, Any]:
    """The limits of this process's cgroup. v2 files by their own names; v1 mapped onto them
    (``path`` is then the controller -> path mapping)."""
    path: Any
    lines = [line.split(":", 2) for line in (_read("/proc/self/cgroup") or "").splitlines() if line.count(":") >= 2]
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        path = next((p for _, ctrl, p in lines if ctrl == ""), "/")
        base = _cgroup_dir("/sys/fs/cgroup", path)
        cpu_max = _read(base / "cpu.max")
        stat = _key_values(_read(base / "cpu.stat"))
        memory_max = _read(base / "memory.max")
        memory_high = _read(base / "memory.high")
        pids_max = _read(base / "pids.max")
        cpuset = _read(base / "cpuset.cpus.effective")
        version = 2
    else:
        paths = {c: p for _, ctrls, p in lines for c in ctrls.split(",") if c}
        path = paths

        def v1(controller: str, name: str) -> str | None:
            return _read(_cgroup_dir(f"/sys/fs/cgroup/{controller}", paths.get(controller, "/")) / name)

        quota, period = v1("cpu", "cpu.cfs_quota_us"), v1("cpu", "cpu.cfs_period_us")
        cpu_max = None if period is None else f"{'max' if quota in (None, '-1') else quota} {period}"
        stat = _key_values(v1("cpu", "cpu.stat"))
        if "throttled_time" in stat:
            stat["throttled_usec"] = stat.pop("throttled_time") // 1000
        limit = v1("memory", "memory.limit_in_bytes")
        memory_max = "max" if limit is not None and int(limit) >= _UNLIMITED_V1 else limit
        memory_high, pids_max = None, v1("pids", "pids.max")
        cpuset = v1("cpuset", "cpuset.effective_cpus")
        version = 1
    return {
        "version": version,
        "path": path,
        "cpu_max": cpu_max,
        "cpu_quota_cores": _quota_cores(cpu_max),
        "cpuset_cpus_effective": cpuset,
        "memory_max": _int_or_text(memory_max),
        "memory_high": _int_or_text(memory_high),
        "pids_max": _int_or_text(pids_max),
        "cpu_stat": {k: stat.get(k) for k in ("nr_periods", "nr_throttled", "throttled_usec")},
    }


def _cgroup_dir(mount: str, path: str) -> Path:
    """The cgroup's folder: under the mount when the host's hierarchy is visible, else the mount
    itself (a container with its own cgroup namespace sees its cgroup as the root)."""
    candidate = Path(mount) / path.lstrip("/")
    return candidate if candidate.is_dir() else Path(mount)


def _key_values(text: str | None) -> dict[str, int]:
    pairs = (line.split() for line in (text or "").splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].lstrip("-").isdigit()}


def _int_or_text(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def _quota_cores(cpu_max: str | None) -> float | None:
    quota, _, period = (cpu_max or "max").partition(" ")
    return int(quota) / int(period) if quota.isdigit() and period.isdigit() else None


def _memory(torch: ModuleType | None, paths: hostmem.HostPaths = hostmem.DEFAULT_PATHS) -> dict[str, Any]:
    """Host memory (/proc/meminfo), what is really available (page cache counted as reclaimable, the
    cgroup limit applied: :func:`benchlib.hostmem.available`), the cgroup's usage and peak, and the
    CUDA device's view (``cudaMemGetInfo``; whether the GPU shares the host's memory)."""
    info = hostmem.meminfo(paths)
    level = hostmem.cgroup_memory(paths)
    room = hostmem.available(paths)

    def cuda_mem() -> dict[str, int] | None:
        if torch is None or not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info(0)
        return {"free_bytes": free, "total_bytes": total}

    def integrated() -> bool | None:
        if torch is None or not torch.cuda.is_available():
            return None
        return bool(getattr(torch.cuda.get_device_properties(0), "is_integrated", False))

    return {"mem_total_bytes": info.get("MemTotal"), "mem_available_bytes": info.get("MemAvailable"),
            "mem_free_bytes": info.get("MemFree"), "page_cache_bytes": info.get("Cached"),
            "sreclaimable_bytes": info.get("SReclaimable"), "swap_total_bytes": info.get("SwapTotal"),
            "available_bytes": room.bytes, "available_how": room.how,
            "cgroup_memory_current_bytes": level.current_bytes if level else None,
            "cgroup_memory_peak_bytes": level.peak_bytes if level else None,
            "cuda_mem_get_info": _safe(cuda_mem),
            "cuda_device_integrated": _safe(integrated)}


def _shm() -> dict[str, int]:
    st = os.statvfs("/dev/shm")
    return {"size_bytes": st.f_blocks * st.f_frsize, "free_bytes": st.f_bavail * st.f_frsize}


def _security() -> dict[str, Any]:
    status = _colon_fields("/proc/self/status")
    seccomp = status.get("Seccomp")
    return {
        "seccomp": _int_or_text(seccomp),
        "seccomp_mode": _SECCOMP_MODES.get(seccomp or "", None),
        "seccomp_filters": _int_or_text(status.get("Seccomp_filters")),
        "no_new_privs": _int_or_text(status.get("NoNewPrivs")),
        "cap_eff": status.get("CapEff"),
        "speculation_store_bypass": status.get("Speculation_Store_Bypass"),
        "speculation_indirect_branch": status.get("SpeculationIndirectBranch"),
    }


def _limits() -> dict[str, dict[str, int | str]]:
    import resource  # POSIX only

    def limit(which: int) -> dict[str, int | str]:
        return {side: "unlimited" if value == resource.RLIM_INFINITY else value
                for side, value in zip(("soft", "hard"), resource.getrlimit(which))}

    return {"memlock": limit(resource.RLIMIT_MEMLOCK), "stack": limit(resource.RLIMIT_STACK),
            "nofile": limit(resource.RLIMIT_NOFILE)}


def _root_mount() -> tuple[str, str] | None:
    """(fstype, source) of the filesystem mounted on /, the last such mount winning."""
    root = None
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) > 4 and fields[4] == "/" and len(tail) >= 2:
            root = (tail[0], tail[1])
    return root


def _mounts() -> dict[str, Any]:
    root = _root_mount()
    try:
        interfaces: list[str] | None = sorted(os.listdir("/sys/class/net"))
    except OSError:
        interfaces = None
    return {"root_fstype": root[0] if root else None, "root_source": root[1] if root else None,
            "root_readonly": bool(os.statvfs("/").f_flag & os.ST_RDONLY),
            "network_interfaces": interfaces}
