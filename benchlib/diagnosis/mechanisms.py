"""Mechanisms: what differs between two arms, read from their env.json fingerprints, and how an
ablation arm aligns each (docs/architecture.md, "Diagnosis").

:mod:`benchlib.envdiff` lists every fingerprint key that differs, with one line on why it matters.
This module groups those keys into the *mechanisms* an experiment can change one at a time, compares
them by meaning rather than by text (no cgroup file natively and ``max 100000`` in a container are
both "no CPU quota"), and gives each the alignment to try (:mod:`.alignments`) and the classes it acts
through (:mod:`.classes`). Readers run in :data:`READERS` order; each takes the keys it explains, and
keys no reader takes end in one "other keys" difference. Keys that only say which arm a process ran
in (engine, image name, namespace ids, benchlib's own variables) are never a difference.

Mechanism names: ``stack``, ``gpu_state``, ``host_state``, ``math_mode``, ``env:NAME`` (one known
variable), ``env:(informational)`` and ``env:(unknown)`` (the rest, grouped), ``shm``, ``cpu_quota``,
``cpuset``, ``threads``, ``memory_limit``, ``memory_accounting``, ``seccomp``, ``mitigations``,
``ulimit:RESOURCE``, ``network``, ``filesystem``, ``other``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterable, Mapping, Sequence

from .. import envdiff
from ..units import env_value
from .alignments import (AlignCpuQuota, AlignCpuset, AlignIpcHost, AlignMemoryLimit, AlignNetworkHost, Alignment,
                         AlignShm, AlignUlimit, ApplyEnv, SeccompUnconfined, SetEnv, SetThreads, StackSplit)
from .classes import (CAPACITY, COLLECTIVES, EVERY_WORKLOAD, FILES_NETWORK, GPU_KERNELS, HOST, NO_KNOWN_EFFECT,
                      COPIES, SHARED_MEMORY, UNKNOWN)

__all__ = ["ENV_VARIABLES", "INFORMATIONAL_ENV", "READERS", "Difference", "EnvVariable", "KeyDiff", "differences",
           "fingerprint_pairs"]


@dataclass(frozen=True)
class KeyDiff:
    """One fingerprint key (or a figure derived from several) and its value on each side."""

    key: str
    baseline: str
    arm: str


@dataclass(frozen=True)
class Difference:
    """One mechanism that differs between a baseline and an arm."""

    mechanism: str  # e.g. "shm", "cpu_quota", "env:CUDA_LAUNCH_BLOCKING"
    title: str  # e.g. "/dev/shm size"
    classes: frozenset[str]  # what it acts through (benchlib.diagnosis.classes)
    why: str  # one line on what it does to speed
    keys: tuple[KeyDiff, ...]  # the evidence, most telling first
    alignments: tuple[Alignment, ...] = ()  # what an ablation arm can try, the first preferred; () none can
    note: str = ""  # e.g. why no arm can align it

    @property
    def testable(self) -> bool:
        return bool(self.alignments)

    def evidence(self, baseline: str = "baseline", arm: str = "arm", limit: int = 2) -> str:
        """``shm.size_bytes: 128 GiB in native, 64 MiB in isolated`` for the first ``limit`` keys (byte
        counts in binary units, benchlib.units.env_value)."""
        shown = [f"{kd.key}: {env_value(kd.key, kd.baseline)} in {baseline}, {env_value(kd.key, kd.arm)} in {arm}"
                 for kd in self.keys[:limit]]
        more = len(self.keys) - limit
        return "; ".join(shown) + (f" (and {more} more key{'s' if more > 1 else ''})" if more > 0 else "")


@dataclass(frozen=True)
class EnvVariable:
    """What one environment variable (or a family, by fnmatch pattern) does."""

    pattern: str
    classes: frozenset[str]
    why: str
    evidence: tuple[str, ...] = ()  # fingerprint keys it moves (shown with it, not as differences of their own)


_TF32_KEYS = ("torch.cuda_matmul_allow_tf32", "torch.float32_matmul_precision", "torch.cuda_matmul_fp32_precision",
              "torch.cudnn_allow_tf32", "torch.cudnn_fp32_precision")
_THREAD_KEYS = ("torch.num_threads", "torch.num_interop_threads")


def _env(pattern: str, classes: Iterable[str], why: str, evidence: tuple[str, ...] = ()) -> EnvVariable:
    return EnvVariable(pattern, frozenset(classes), why, evidence)


#: Environment variables with a known effect, first match wins (the fingerprint records the variables
#: benchlib.fingerprint.ENV_PREFIXES name, and LD_LIBRARY_PATH).
ENV_VARIABLES: tuple[EnvVariable, ...] = (
    _env("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", [GPU_KERNELS], "1 turns TF32 on for fp32 matrix products at start "
         "(NGC images set it): 2-7x faster fp32 products with a larger error", _TF32_KEYS),
    _env("NVIDIA_TF32_OVERRIDE", [GPU_KERNELS], "0 switches TF32 off in cuBLAS and cuDNN whatever the code asks",
         _TF32_KEYS),
    _env("CUDA_LAUNCH_BLOCKING", [HOST], "1 makes every kernel launch wait until the kernel ends: eager code loses "
         "all overlap of host and GPU (a debugging setting)"),
    _env("CUDA_CACHE_DISABLE", [GPU_KERNELS], "1 switches the PTX JIT cache off: JIT compilation repeats at every start"),
    _env("CUDA_CACHE_*", [GPU_KERNELS], "where the PTX JIT cache lives and how much it keeps"),
    _env("CUDA_FORCE_PTX_JIT", [GPU_KERNELS], "1 ignores the machine code in binaries and JIT-compiles their PTX"),
    _env("CUDA_MODULE_LOADING", [GPU_KERNELS], "LAZY loads kernels at first use (slower first calls), EAGER all at start"),
    _env("CUDA_DEVICE_MAX_CONNECTIONS", [GPU_KERNELS, HOST], "the number of hardware work queues: 1 serialises streams"),
    _env("CUDA_VISIBLE_DEVICES", [GPU_KERNELS], "which GPUs the process sees: another GPU is another measurement"),
    _env("CUDA_DEVICE_ORDER", [GPU_KERNELS], "how CUDA numbers the GPUs: cuda:0 may be another GPU"),
    _env("PYTORCH_CUDA_ALLOC_CONF", [GPU_KERNELS, CAPACITY], "the caching allocator's behaviour (expandable "
         "segments, split sizes, garbage collection)"),
    _env("PYTORCH_ALLOC_CONF", [GPU_KERNELS, CAPACITY], "the caching allocator's behaviour (expandable segments, "
         "split sizes, garbage collection)"),
    _env("PYTORCH_NO_CUDA_MEMORY_CACHING", [GPU_KERNELS, CAPACITY], "1 switches the caching allocator off: every "
         "allocation is a cudaMalloc"),
    _env("PYTORCH_TUNABLEOP_*", [GPU_KERNELS], "TunableOp chooses GEMM kernels by timing them at run time"),
    _env("TRITON_*", [GPU_KERNELS], "Triton's compiler and cache (TRITON_PTXAS_PATH decides whether fused kernels "
         "compile on a GPU like GB10)"),
    _env("OMP_NUM_THREADS", [HOST], "the size of the OpenMP pool, and of torch's intra-op pool", _THREAD_KEYS),
    _env("MKL_NUM_THREADS", [HOST], "the size of MKL's thread pool", _THREAD_KEYS),
    _env("OMP_*", [HOST], "how OpenMP threads wait, bind and are scheduled"),
    _env("MKL_*", [HOST], "MKL's threading and code paths"),
    _env("TORCH_NCCL_*", [COLLECTIVES], "how torch.distributed drives NCCL"),
    _env("NCCL_*", [COLLECTIVES], "NCCL's transports, algorithms and buffers"),
    _env("LD_LIBRARY_PATH", [EVERY_WORKLOAD], "which shared libraries load (cuBLAS, cuDNN, NCCL builds)"),
)

#: Variables that only describe an image or configure the container runtime: read by no library in
#: the process at run time.
INFORMATIONAL_ENV: tuple[str, ...] = (
    "*_VERSION", "NVIDIA_REQUIRE_*", "NVIDIA_BUILD_*", "NVIDIA_PRODUCT_NAME", "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES", "NVIDIA_PYTORCH_*", "PYTORCH_BUILD_*", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME",
    "CUDA_PATH", "PYTORCH_HOME",
)

#: Keys that say which arm a process ran in, not how fast it could run: never a difference.
_IDENTITY = ("env.BENCHLIB_*", "versions.benchlib", "process.namespaces.*", "process.pid*", "container.engine",
             "container.detected", "container.evidence", "container.evidence.*", "container.containerenv",
             "container.containerenv.*", "arm.*")
_STACK = ("versions.*", "torch.arch_list", "torch.arch_supported", "torch.arch_match", "python.executable",
          "python.version", "container.image_identity", "container.image_identity.*", "host.os")
_GPU_STATE = ("versions.nvidia_driver", "versions.cuda_driver", "versions.nvml", "gpus", "gpus.*",
              "torch.device_capability", "torch.device_names", "torch.device_count", "torch.cuda_available")
_HOST_STATE = ("host.kernel", "host.machine", "cpu.model", "cpu.scaling_governor", "cpu.numa_nodes",
               "cpu.vulnerabilities.*")
_MATH_KEYS = (*_TF32_KEYS, "torch.allow_*_reduced_precision_reduction")
#: Keys known to leave speed alone.
_NO_EFFECT = ("security.no_new_privs", "security.cap_eff", "cgroup.pids_max", "cgroup.version", "process.uid",
              "process.gid", "process.user", "process.is_root", "limits.nofile.*")


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(key, pattern) for pattern in patterns)


def _missing(value: str | None) -> bool:
    return value is None or value in (envdiff.ABSENT, "None", "")


@dataclass
class _Pair:
    """Two flattened fingerprints (text values, as :func:`benchlib.envdiff.representative` gives) and
    the keys still to explain."""

    base: Mapping[str, str]
    arm: Mapping[str, str]
    open: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        keys = set(self.base) | set(self.arm)
        self.open = {key for key in keys if self.raw("base", key) != self.raw("arm", key)
                     and not _matches(key, _IDENTITY)}

    def raw(self, side: str, key: str) -> str:
        return (self.base if side == "base" else self.arm).get(key, envdiff.ABSENT)

    def value(self, side: str, key: str) -> str | None:
        value = self.raw(side, key)
        return None if _missing(value) else value

    def take(self, *patterns: str) -> tuple[KeyDiff, ...]:
        """The open keys matching ``patterns`` (in pattern order, then by name), now explained."""
        taken = []
        for pattern in patterns:
            for key in sorted(k for k in self.open if fnmatchcase(k, pattern)):
                self.open.discard(key)
                taken.append(KeyDiff(key, self.raw("base", key), self.raw("arm", key)))
        return tuple(taken)

    def number(self, side: str, key: str) -> float | None:
        try:
            return float(self.value(side, key))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None


def _why(envdiff_name: str) -> str:
    return next(m.why for m in envdiff.MECHANISMS if m.name == envdiff_name)


def _same_userland(pair: _Pair) -> bool:
    return all(pair.raw("base", key) == pair.raw("arm", key)
               for key in ("python.executable", "container.image_identity"))


# ------------------------------------------------------------------------------------- readers


def _environment(pair: _Pair) -> list[Difference]:
    """One difference per known variable; informational and unknown ones grouped; their evidence kept."""
    names = sorted(key.removeprefix("env.") for key in pair.open if key.startswith("env."))
    found, informational, unknown = [], [], []
    for name in names:
        key = f"env.{name}"
        known = next((var for var in ENV_VARIABLES if fnmatchcase(name, var.pattern)), None)
        if name == "LD_LIBRARY_PATH" and not _same_userland(pair):
            continue  # another userland's library path: part of the stack
        if _matches(name, INFORMATIONAL_ENV):  # NCCL_VERSION describes the image, it configures nothing
            informational.append(name)
            continue
        if known is None:
            unknown.append(name)
            continue
        keys = pair.take(key) + pair.take(*known.evidence)
        values = ((name, pair.value("base", key)),)
        envdiff_known = envdiff.mechanism_of(key)
        why = known.why if envdiff_known is None or known.evidence else envdiff_known[2].why
        found.append(Difference(f"env:{name}", name, known.classes, why, keys,
                                (SetEnv(values), ApplyEnv(((name, pair.value("arm", key)),)))))
    for names_, mechanism, classes, why in (
            (unknown, "env:(unknown)", frozenset({UNKNOWN}), "variables no table here describes: only an experiment "
                                                             "says whether they matter"),
            (informational, "env:(informational)", frozenset({NO_KNOWN_EFFECT}), "variables that describe an image or "
                                                                              "configure the container runtime; no "
                                                                              "library reads them at run time")):
        if names_:
            keys = pair.take(*(f"env.{name}" for name in names_))
            found.append(Difference(mechanism, f"other environment variables ({', '.join(names_)})"
                                    if mechanism == "env:(unknown)" else "informational environment variables",
                                    classes, why, keys,
                                    (SetEnv(tuple((n, pair.value("base", f"env.{n}")) for n in names_)),
                                     ApplyEnv(tuple((n, pair.value("arm", f"env.{n}")) for n in names_)))))
    return found


def _stack(pair: _Pair) -> list[Difference]:
    keys = pair.take(*_STACK)
    if not _same_userland(pair):
        keys += pair.take("env.LD_LIBRARY_PATH")
    if not keys:
        return []
    return [Difference("stack", "software stack (framework build, libraries, userland)", frozenset({EVERY_WORKLOAD}),
                       _why("framework build"), keys,
                       (StackSplit("isolated"), StackSplit("rootfs"), StackSplit("native_image_env")))]


def _machine_state(pair: _Pair) -> list[Difference]:
    found = []
    gpu = pair.take(*_GPU_STATE)
    if gpu:
        found.append(Difference("gpu_state", "GPU and driver state", frozenset({GPU_KERNELS, COPIES}),
                                _why("GPU clocks / power"),
                                gpu, note="the GPU's own state (clocks, power limit, driver): no arm aligns it; both "
                                          "arms run on the same GPU, so it changed between invocations"))
    host = pair.take(*_HOST_STATE)
    if host:
        found.append(Difference("host_state", "host kernel and CPU state", frozenset({HOST}),
                                "the kernel, CPU frequency governor and mitigations of the host",
                                host, note="the host's own state: no arm aligns it"))
    return found


def _math_mode(pair: _Pair) -> list[Difference]:
    """TF32 and precision flags that differ with no environment variable to explain them."""
    keys = pair.take(*_MATH_KEYS)
    if not keys:
        return []
    return [Difference("math_mode", "TF32 / matmul precision defaults", frozenset({GPU_KERNELS}),
                       _why("TF32 / matmul precision"), keys,
                       note="no environment variable explains it: the software stack sets it (the stack ablation "
                            "covers it), or the code does")]


def _shm(pair: _Pair) -> list[Difference]:
    keys = pair.take("shm.size_bytes")
    if not keys:
        return []
    size = pair.number("base", "shm.size_bytes")
    alignments: tuple[Alignment, ...] = (AlignIpcHost(),) if size is None else (AlignShm(int(size)), AlignIpcHost())
    return [Difference("shm", "/dev/shm size", frozenset({SHARED_MEMORY}), _why("/dev/shm size"), keys, alignments)]


def _cpu_quota(pair: _Pair) -> list[Difference]:
    keys = pair.take("cgroup.cpu_quota_cores", "cgroup.cpu_max", "cgroup.cpu_stat.nr_throttled")
    base, arm = pair.number("base", "cgroup.cpu_quota_cores"), pair.number("arm", "cgroup.cpu_quota_cores")
    if base == arm:  # e.g. no cgroup file natively, "max 100000" in a container: no quota either way
        return []
    return [Difference("cpu_quota", "CPU quota", frozenset({HOST}), _why("CPU quota / cpuset"), keys,
                       (AlignCpuQuota(base),))]


def _cpuset(pair: _Pair) -> list[Difference]:
    keys = pair.take("cpu.affinity_cpus", "cpu.affinity_count", "cgroup.cpuset_cpus_effective", "cpu.logical_cores")
    if pair.raw("base", "cpu.affinity_cpus") == pair.raw("arm", "cpu.affinity_cpus"):
        return []  # the same CPUs, however the cgroup file reads
    whole = pair.raw("base", "cpu.affinity_count") == pair.raw("base", "cpu.logical_cores")
    keys += pair.take(*_THREAD_KEYS)  # a narrower set sizes torch's pool down with it
    return [Difference("cpuset", "CPU set", frozenset({HOST}), _why("CPU quota / cpuset"), keys,
                       (AlignCpuset(None if whole else pair.value("base", "cpu.affinity_cpus")),))]


def allowed_cpus(fingerprint: Mapping[str, str]) -> int | None:
    """CPUs a process may keep busy, from its flattened fingerprint: its affinity, capped by the
    ceiling of its CPU quota (as ``benchlib.workloads._support.allowed_cpus`` computes it live)."""
    pair = _Pair(fingerprint, fingerprint)
    affinity, quota = pair.number("base", "cpu.affinity_count"), pair.number("base", "cgroup.cpu_quota_cores")
    if affinity is None:
        return None
    return max(1, min(int(affinity), math.ceil(quota))) if quota is not None else int(affinity)


def _threads(pair: _Pair) -> list[Difference]:
    """A pool larger than the CPUs the arm may use (and not the baseline's), or pools that differ
    with nothing else to explain them."""
    threads = {side: pair.number(side, "torch.num_threads") for side in ("base", "arm")}
    allowed = {"base": allowed_cpus(pair.base), "arm": allowed_cpus(pair.arm)}
    if None in threads.values() or None in allowed.values():
        return []
    over = {side: threads[side] > allowed[side] for side in threads}  # type: ignore[operator]
    if over["arm"] and not over["base"]:
        keys = pair.take(*_THREAD_KEYS) or (KeyDiff("torch.num_threads", *(f"{threads[s]:g}" for s in threads)),)
        keys += (KeyDiff("CPUs allowed (affinity, quota)", str(allowed["base"]), str(allowed["arm"])),)
        return [Difference("threads", "thread pool vs CPUs allowed", frozenset({HOST}), _why("threads vs CPUs allowed"),
                           keys, (SetThreads(int(allowed["arm"])),))]  # type: ignore[arg-type]
    keys = pair.take(*_THREAD_KEYS)
    if not keys:
        return []
    same = threads["base"] == threads["arm"]  # then only the inter-op pool differs
    return [Difference("threads", "thread pool size", frozenset({HOST}), _why("threads vs CPUs allowed"), keys,
                       () if same else (SetThreads(int(threads["base"])),),  # type: ignore[arg-type]
                       "only torch's inter-op pool differs: no variable sizes it" if same else "")]


def _memory(pair: _Pair) -> list[Difference]:
    def limit(side: str) -> int | None:
        value = pair.number(side, "cgroup.memory_max")
        return int(value) if value is not None and value < 2**62 else None

    found = []
    keys = pair.take("cgroup.memory_max", "cgroup.memory_high")
    if limit("base") != limit("arm"):
        found.append(Difference("memory_limit", "memory limit", frozenset({CAPACITY}), _why("memory limit / accounting"),
                                keys, (AlignMemoryLimit(limit("base")),)))
    accounting = pair.take("memory.mem_total_bytes", "memory.cuda_mem_get_info.total_bytes")
    if accounting:
        found.append(Difference("memory_accounting", "memory the process is told it has", frozenset({CAPACITY}),
                                _why("memory limit / accounting"), accounting,
                                note="what the kernel and CUDA report as total memory: no arm flag aligns it"))
    return found


def _seccomp(pair: _Pair) -> list[Difference]:
    keys = pair.take("security.seccomp", "security.seccomp_mode", "security.seccomp_filters")
    speculation = pair.take("security.speculation_*")  # a seccomp filter also turns store-bypass mitigation on
    filtered = {side: pair.value(side, "security.seccomp") not in (None, "0") for side in ("base", "arm")}
    if filtered["base"] != filtered["arm"]:
        alignments = (SeccompUnconfined(),) if filtered["arm"] else ()
        note = "" if alignments else "the baseline is the filtered one: no ablation removes a filter from the baseline"
        return [Difference("seccomp", "seccomp filter", frozenset({HOST}), _why("seccomp"),
                           keys + speculation + pair.take("security.no_new_privs"), alignments, note)]
    if speculation:
        return [Difference("mitigations", "speculation mitigations", frozenset({HOST}), _why("speculation mitigations"),
                           speculation, note="set per process by the kernel; no arm flag aligns it")]
    return []


_ULIMIT_CLASSES = {"memlock": frozenset({COPIES, COLLECTIVES}), "stack": frozenset({NO_KNOWN_EFFECT})}


def _ulimits(pair: _Pair) -> list[Difference]:
    found = []
    for resource, classes in _ULIMIT_CLASSES.items():
        keys = pair.take(f"limits.{resource}.*")
        if not keys:
            continue
        soft, hard = (pair.value("base", f"limits.{resource}.{side}") for side in ("soft", "hard"))
        why = _why("memlock ulimit") if resource == "memlock" else "the default stack size of new threads"
        alignments = (AlignUlimit(resource, soft, hard),) if soft and hard else ()
        found.append(Difference(f"ulimit:{resource}", f"{resource} ulimit", classes, why, keys, alignments))
    return found


def _files_network(pair: _Pair) -> list[Difference]:
    found = []
    network = pair.take("mounts.network_interfaces")
    if network:
        found.append(Difference("network", "network namespace", frozenset({FILES_NETWORK}),
                                _why("overlay filesystem / network namespace"), network, (AlignNetworkHost(),)))
    files = pair.take("mounts.*")
    if files:
        found.append(Difference("filesystem", "root filesystem", frozenset({FILES_NETWORK}),
                                _why("overlay filesystem / network namespace"), files,
                                note="the arm's root filesystem is what the arm is: no flag aligns it"))
    return found


def _the_rest(pair: _Pair) -> list[Difference]:
    found = []
    quiet = pair.take(*_NO_EFFECT)
    rest = pair.take("*")
    if rest:
        found.append(Difference("other", "other keys", frozenset({UNKNOWN}), "keys no mechanism here explains", rest))
    if quiet:
        found.append(Difference("no_effect", "keys that leave speed alone", frozenset({NO_KNOWN_EFFECT}),
                                "capabilities, no_new_privs, the process limit, user and file-descriptor limit",
                                quiet))
    return found


#: Readers, in the order they take keys: a variable's evidence before the mechanisms that would
#: otherwise claim it, the stack before the rest.
READERS: tuple[Callable[[_Pair], list[Difference]], ...] = (
    _environment, _machine_state, _stack, _math_mode, _shm, _cpu_quota, _cpuset, _threads, _memory, _seccomp,
    _ulimits, _files_network, _the_rest,
)

#: The order differences are listed in: docs/architecture.md's table of what is known to make a
#: container slower, then the rest.
_DISPLAY = ("stack", "math_mode", "env:TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "env:NVIDIA_TF32_OVERRIDE", "env:CUDA_*",
            "shm", "cpu_quota", "cpuset", "threads", "env:OMP_*", "env:MKL_*", "memory_limit", "memory_accounting",
            "seccomp", "mitigations", "ulimit:memlock", "gpu_state", "host_state", "env:PYTORCH_*", "env:*",
            "network", "filesystem", "ulimit:*", "other", "no_effect")


def _display_rank(name: str) -> int:
    return next((i for i, pattern in enumerate(_DISPLAY) if fnmatchcase(name, pattern)), len(_DISPLAY))


def differences(baseline: Mapping[str, str], arm: Mapping[str, str]) -> list[Difference]:
    """Every mechanism that differs between two flattened fingerprints (text values, e.g. one arm's
    entry of :func:`benchlib.envdiff.representative`), known mechanisms first."""
    pair = _Pair(baseline, arm)
    found = [difference for reader in READERS for difference in reader(pair)]
    return sorted(found, key=lambda d: _display_rank(d.mechanism))


def fingerprint_pairs(envs: Mapping[tuple, Mapping[str, Any]], baseline: str, arms: Sequence[str] | None = None,
                      benchmark: str | None = None, case: str | None = None) -> dict[str, list[Difference]]:
    """Per arm, its differences from ``baseline``, from :func:`benchlib.results.load_envs`'s mapping
    (keyed ``(arm, benchmark, case, invocation)``); with ``benchmark`` and ``case``, only the
    fingerprints of that case's invocations."""
    chosen = {key: env for key, env in envs.items()
              if (benchmark is None or key[1] == benchmark) and (case is None or key[2] == case)}
    flat = envdiff.representative(chosen)
    if baseline not in flat:
        return {}
    return {arm: differences(flat[baseline], flat[arm])
            for arm in (arms if arms is not None else [a for a in flat if a != baseline]) if arm in flat}
