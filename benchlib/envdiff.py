"""What differs between the arms' environment fingerprints (env.json), the known causes first.

Each fingerprint is flattened to dotted keys (``torch.num_threads``, ``gpus.0.power_limit_w``,
``env.CUDA_MODULE_LOADING``); a list of scalars stays one value. Per arm, a key's value is the one
seen most often over that arm's invocations, and a key whose value changes between invocations of
one arm is flagged. Keys in :data:`IGNORED` are noise (timestamps, pids, free-memory figures, the
arm's own name) and never shown. Keys matched by a :data:`MECHANISMS` entry come first, in the
order of the table in docs/architecture.md of what is known to make a container slower, each with one line on why
it matters; every other difference follows, by key.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from .units import env_value

__all__ = [
    "ABSENT", "ARM_IDENTITY", "DIFF_COLUMNS_HEAD", "DIFF_COLUMNS_TAIL", "IGNORED", "MECHANISMS",
    "Mechanism", "arm_counts", "between", "env_diff", "flatten", "is_ignored", "likely_causes",
    "mechanism_of"
]

#: Shown for a key that one arm's fingerprints lack.
ABSENT = "(absent)"

#: Keys that differ between any two invocations without saying anything about the environment.
IGNORED: tuple[str, ...] = (
    "captured_at",
    "host.hostname",  # a container's hostname is its id
    "process.pid",
    "arm.name", "env.BENCHLIB_ARM",  # the arm's own name: the columns already say it
    "cgroup.path", "cgroup.path.*",  # per-process cgroup paths
    "cgroup.cpu_stat.nr_periods", "cgroup.cpu_stat.throttled_usec",  # cumulative counters
    "memory.mem_available_bytes", "memory.cuda_mem_get_info.free_bytes", "shm.free_bytes",
    # instants of memory use: the memory findings (benchlib.checks.memory) compare them between arms
    "memory.mem_free_bytes", "memory.page_cache_bytes", "memory.sreclaimable_bytes", "memory.available_bytes",
    "memory.available_how", "memory.cgroup_memory_current_bytes", "memory.cgroup_memory_peak_bytes",
    "telemetry.memory_peaks", "telemetry.memory_peaks.*", "telemetry.energy_hz_per_gpu",
    "gpus.*.sm_clock_mhz", "gpus.*.mem_clock_mhz", "gpus.*.performance_state",  # instants: see telemetry
    "gpus.*.clock_event_reasons",
    "telemetry.hz_achieved", "telemetry.polls", "telemetry.dropped_polls", "telemetry.mean_poll_cost_us",
    "telemetry.last_error", "telemetry.gpus", "telemetry.gpus.*",
    "workload.*",  # which benchmark and cases the invocation ran, and their settings: the case says it
)


@dataclass(frozen=True)
class Mechanism:
    """A known way for two environments to run the same code at different speeds."""

    name: str
    why: str  # one line: what it does to performance
    keys: tuple[str, ...]  # fnmatch patterns of flattened fingerprint keys


#: The mechanism whose keys say which arm a process ran in rather than why it ran at another speed.
ARM_IDENTITY = "container / engine / image"


#: docs/architecture.md, "What is known to make a container slower", in that order.
MECHANISMS: tuple[Mechanism, ...] = (
    Mechanism("framework build", "a different torch/CUDA/cuBLAS/cuDNN build runs different kernels: 2x and more",
              ("versions.torch", "versions.torch_cuda_runtime", "versions.cublas", "versions.cudnn",
               "versions.nvidia_driver", "versions.cuda_driver")),
    Mechanism("GPU arch vs build", "a device arch missing from the build is PTX-JIT compiled at start: minutes, 2x and more",
              ("torch.arch_list", "torch.device_capability", "torch.arch_supported", "torch.arch_match")),
    Mechanism("TF32 / matmul precision", "TF32 on or off moves fp32 matmul 2-7x (NGC sets TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1)",
              ("torch.cuda_matmul_allow_tf32", "torch.float32_matmul_precision", "torch.cuda_matmul_fp32_precision",
               "torch.cudnn_allow_tf32", "torch.cudnn_fp32_precision", "torch.allow_*_reduced_precision_reduction",
               "env.TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "env.NVIDIA_TF32_OVERRIDE")),
    Mechanism("CUDA JIT cache / module loading", "CUDA_CACHE_DISABLE=1 repeats JIT at every start; lazy loading slows the first call",
              ("env.CUDA_CACHE_DISABLE", "env.CUDA_CACHE_PATH", "env.CUDA_CACHE_MAXSIZE", "env.CUDA_MODULE_LOADING")),
    Mechanism("/dev/shm size", "64 MiB /dev/shm without --ipc=host/--shm-size: DataLoader bus errors, NCCL failures or slow fallback",
              ("shm.size_bytes",)),
    Mechanism("CPU quota / cpuset", "a CPU quota or cpuset under thread pools sized to the host's cores: 2x to 45x on CPU-bound code",
              ("cgroup.cpu_max", "cgroup.cpu_quota_cores", "cgroup.cpuset_cpus_effective", "cgroup.cpu_stat.nr_throttled")),
    Mechanism("threads vs CPUs allowed", "thread pools larger than the CPUs allowed oversubscribe; smaller ones leave cores idle",
              ("torch.num_threads", "torch.num_interop_threads", "cpu.affinity_count", "cpu.affinity_cpus",
               "cpu.logical_cores", "env.OMP_NUM_THREADS", "env.MKL_NUM_THREADS")),
    Mechanism("memory limit / accounting", "a memory limit or unified-memory accounting leaves less room (smaller batches, KV cache)",
              ("cgroup.memory_max", "cgroup.memory_high", "memory.mem_total_bytes", "memory.cuda_mem_get_info.total_bytes")),
    Mechanism("seccomp", "a seccomp filter costs 0-20 % on syscall-heavy code, about 0 on GPU kernels",
              ("security.seccomp", "security.seccomp_mode", "security.seccomp_filters", "security.no_new_privs")),
    Mechanism("speculation mitigations", "speculation mitigations slow syscalls and context switches, not GPU kernels",
              ("security.speculation_*", "cpu.vulnerabilities.*")),
    Mechanism("memlock ulimit", "a low memlock limit restricts pinned host memory: copies fall back to pageable (about 3x slower)",
              ("limits.memlock.*",)),
    Mechanism("GPU clocks / power", "power limit, clocks, persistence, MIG or ECC change GPU speed directly, natively too",
              ("gpus.*.power_*", "gpus.*.max_*_clock_mhz", "gpus.*.applications_*_clock_mhz", "gpus.*.persistence_mode",
               "gpus.*.mig_mode*", "gpus.*.ecc_mode*", "gpus.*.compute_mode", "gpus.*.pcie_*", "gpus.*.name", "gpus")),
    Mechanism("overlay filesystem / network namespace", "an overlay or read-only root and a network namespace cost "
              "I/O and network latency only", ("mounts.*", "process.namespaces.net")),
    Mechanism(ARM_IDENTITY, "which engine, image, run flags and namespaces the process ran in: the "
              "arm itself (namespace ids change with every container)",
              ("container.*", "arm.*", "env.BENCHLIB_ARM_KIND", "env.BENCHLIB_ENGINE", "env.BENCHLIB_IMAGE*",
               "env.BENCHLIB_RUN_FLAGS", "process.namespaces.*", "process.pid_namespace_pid1", "process.pid1_name")),
    Mechanism("library versions", "the image's own transformers/triton/... run different code paths for the same call",
              ("versions.*",)),
)

DIFF_COLUMNS_HEAD = ["key", "mechanism", "why"]
DIFF_COLUMNS_TAIL = ["differs", "varies_in"]


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts (and lists of dicts) to ``{dotted.key: scalar}``; a list of scalars is one value."""
    if isinstance(obj, Mapping):
        items: Iterable[tuple[str, Any]] = ((str(k), v) for k, v in obj.items())
    elif isinstance(obj, list) and any(isinstance(v, (Mapping, list)) for v in obj):
        items = ((str(i), v) for i, v in enumerate(obj))
    else:
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def is_ignored(key: str) -> bool:
    return any(fnmatchcase(key, pattern) for pattern in IGNORED)


def mechanism_of(key: str) -> tuple[int, int, Mechanism] | None:
    """(rank of the mechanism, index of the pattern, mechanism) of the first known mechanism whose
    patterns match ``key``; None for a key no mechanism names."""
    for rank, mechanism in enumerate(MECHANISMS):
        for index, pattern in enumerate(mechanism.keys):
            if fnmatchcase(key, pattern):
                return rank, index, mechanism
    return None


def _text(value: Any) -> str:
    """A value as it is shown and compared: JSON for lists, plain text otherwise."""
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), default=str)
    return str(value)


def arm_counts(envs: Mapping[tuple, Mapping[str, Any]]) -> dict[str, dict[str, Counter]]:
    """Per arm, per flattened key: how often each value was seen over the arm's invocations.

    ``envs`` is :func:`benchlib.results.load_envs`'s mapping, keyed ``(arm, benchmark, case, invocation)``.
    A key missing from some invocations counts as :data:`ABSENT` there.
    """
    flat_by_arm: dict[str, list[dict[str, Any]]] = {}
    for (arm, *_), env in envs.items():
        flat_by_arm.setdefault(arm, []).append(flatten(env))
    counts: dict[str, dict[str, Counter]] = {}
    for arm, flats in flat_by_arm.items():
        keys = {key for flat in flats for key in flat if not is_ignored(key)}
        counts[arm] = {key: Counter(_text(flat[key]) if key in flat else ABSENT for flat in flats) for key in keys}
    return counts


def representative(envs: Mapping[tuple, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """Per arm, every flattened key (ignored ones left out) with its most common value as text, as
    :func:`env_diff` shows it; :data:`ABSENT` where most invocations lack it."""
    return {arm: {key: _most_common(counter) for key, counter in keys.items()}
            for arm, keys in arm_counts(envs).items()}


def env_diff(envs: Mapping[tuple, Mapping[str, Any]], arms: Sequence[str] | None = None) -> pd.DataFrame:
    """The keys whose value differs between arms or varies within one, known mechanisms first.

    Columns: key, mechanism (None when not a known one), why, one column per arm (its most common
    value), differs (the arms' values are not all equal), varies_in (arms whose invocations saw
    more than one value, comma-joined, "" when none). Rows: known mechanisms in
    :data:`MECHANISMS` order (differences before within-arm variation, then in the order of the
    mechanism's patterns); then the rest by key.
    """
    counts = arm_counts(envs)
    arms = [arm for arm in (arms or list(counts)) if arm in counts]
    rows = []
    for key in sorted({key for arm in arms for key in counts[arm]}):
        values = {arm: _most_common(counts[arm].get(key)) for arm in arms}
        varies = [arm for arm in arms if len(counts[arm].get(key, ())) > 1]
        differs = len(set(values.values())) > 1
        if not differs and not varies:
            continue
        known = mechanism_of(key)
        rank, index, mechanism = known if known else (len(MECHANISMS), 0, None)
        rows.append({
            "_order": (rank, not differs, index, key), "key": key,
            "mechanism": mechanism.name if mechanism else None, "why": mechanism.why if mechanism else None,
            **values, "differs": differs, "varies_in": ", ".join(varies),
        })
    columns = [*DIFF_COLUMNS_HEAD, *arms, *DIFF_COLUMNS_TAIL]
    if not rows:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(sorted(rows, key=lambda row: row["_order"]))[columns]


def _most_common(counter: Counter | None) -> str:
    """The most frequent value (ties: the one seen first), or ABSENT for an arm without the key."""
    return counter.most_common(1)[0][0] if counter else ABSENT


def likely_causes(diff: pd.DataFrame, arm: str, baseline: str, limit: int = 2) -> list[str]:
    """Plain-words leads for why ``arm`` differs from ``baseline``: the first ``limit`` known
    mechanisms whose keys differ between the two, each with its first differing key's values."""
    if diff.empty or arm not in diff.columns or baseline not in diff.columns:
        return []
    known = diff[diff["mechanism"].notna() & (diff[arm] != diff[baseline])]
    leads = []
    for mechanism, rows in known.groupby("mechanism", sort=False):
        first = rows.iloc[0]
        key = str(first["key"])
        leads.append(f"{mechanism} differs ({key}: {env_value(key, first[baseline])} in {baseline}, "
                     f"{env_value(key, first[arm])} in {arm})")
    return leads[:limit]


def between(diff: pd.DataFrame, arm: str, baseline: str) -> pd.DataFrame:
    """The rows of an :func:`env_diff` whose value differs between ``baseline`` and ``arm``: known
    mechanisms first, then other keys, then the keys that only say which arm it is (the
    :data:`ARM_IDENTITY` mechanism: engine, image, namespace ids), each group in ``diff``'s order.
    Columns: key, mechanism, why, baseline, arm; empty when either arm is not in ``diff``."""
    columns = [*DIFF_COLUMNS_HEAD, baseline, arm]
    if diff.empty or arm not in diff.columns or baseline not in diff.columns:
        return pd.DataFrame(columns=columns)
    rows = diff.loc[diff[arm] != diff[baseline], columns]
    group = rows["mechanism"].map(lambda name: 2 if name == ARM_IDENTITY else 1 if name is None or pd.isna(name) else 0)
    return rows.iloc[group.argsort(kind="stable")].reset_index(drop=True)
