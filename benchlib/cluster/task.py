"""The node side of a run on Slurm: ``python -m benchlib.cluster.task {prepare|measure} RUN_DIR``.

The batch script (:mod:`benchlib.cluster.sbatch`) runs ``prepare`` once per node, then ``measure``
once per (node, GPU):

* **prepare** reads the token the submitting host wrote into the run directory and compares it with
  the one the batch script carries (``BENCHLIB_SHARED_TOKEN``): the same file seen from both sides
  proves the directory is shared, before anything is measured. It then imports every arm's image on
  the node (:func:`benchlib.cluster.containers.import_steps`), and writes the node's record
  (``<run>/slurm/nodes/<node>.json``): the check passed, how each import went, which arms cannot run
  here and why. A node whose check fails writes nothing there and says why on its Slurm output.
* **measure** finds its slot (the node and the GPU Slurm gave it: ``SLURMD_NODENAME`` and
  ``SLURM_STEP_GPUS``), starts its shard from the plan (or finds it from an earlier attempt), records
  what Slurm gave it (``slot.json``: job, step, task, ``CUDA_VISIBLE_DEVICES``, the GPU's UUID, the
  CPUs it may run on), takes its GPU's lock (``BENCHLIB_GPU_IDS`` = that GPU alone) and runs the
  shard as ``benchlib run --resume`` runs a local run: invocations interleaved across arms, every
  arm preflighted on the node, complete invocations kept. Then it consolidates the shard into two
  files (:func:`benchlib.cluster.load.consolidate_shard`) for the host that collects.

Exit status: 0 the slot is complete, 1 it ended with failed invocations, 2 bad input or an arm that
cannot run (one sentence), 3 the node cannot take part (run directory not shared, no record, no arm
usable), 128 + signal when stopped.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import _atomic, redact
from ..arms import Arm, arm_from_spec
from ..errors import BenchlibError
from ..manifest import MANIFEST_FILE
from . import containers, layout, shards
from .layout import Slot

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NODE = 0, 1, 2, 3
IMPORT_TIMEOUT_S = 3600.0
TOKEN_ENV, GPUS_ENV, CACHE_ENV = "BENCHLIB_SHARED_TOKEN", "BENCHLIB_GPUS_PER_NODE", "BENCHLIB_NODE_CACHE"
#: Environment variables that say what Slurm gave a task (srun(1), "OUTPUT ENVIRONMENT VARIABLES").
SLURM_KEYS = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_RESTART_COUNT",
              "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST", "SLURM_STEP_GPUS", "SLURM_CPUS_PER_TASK",
              "SLURM_CPU_BIND", "SLURM_CPU_BIND_TYPE", "SLURM_CPU_BIND_LIST", "SLURM_GPUS_ON_NODE",
              "CUDA_VISIBLE_DEVICES")


def node_name(env: Mapping[str, str]) -> str:
    return env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def slot_of(env: Mapping[str, str]) -> Slot:
    """This task's (node, GPU): the GPU's global index from ``SLURM_STEP_GPUS`` (not renumbered by
    device cgroups), else the first of ``CUDA_VISIBLE_DEVICES``, else the node-local task id."""
    for key in ("SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES", "SLURM_LOCALID"):
        first = (env.get(key) or "").split(",")[0].strip()
        if first.isdigit():
            return Slot(node_name(env), int(first))
    raise BenchlibError("this task has no GPU slot: SLURM_STEP_GPUS, CUDA_VISIBLE_DEVICES and SLURM_LOCALID are "
                        "unset; run it through the run's batch script (srun --gpus-per-task=1).")


def cuda_device(env: Mapping[str, str], uuids: tuple[str, ...]) -> str | None:
    """The slot's GPU as CUDA_VISIBLE_DEVICES should name it inside any launcher: its UUID when NVML
    lists the GPUs (the index Slurm gave, resolved as CUDA resolves it), else Slurm's value."""
    visible = (env.get("CUDA_VISIBLE_DEVICES") or "").split(",")[0].strip()
    if not visible:
        return None
    if uuids:
        from ..telemetry import resolve_visible

        indices = resolve_visible(visible, len(uuids), lambda token: next(
            (i for i, uuid in enumerate(uuids) if uuid.startswith(token) or uuid.startswith(f"GPU-{token}")), None))
        if indices:
            return uuids[indices[0]]
    return visible


def gpu_lock_id(slot: Slot, device: str | None) -> str:
    """The device this task locks (benchlib.gpulock): its GPU's UUID, or the gres slot without NVML."""
    return device if device and device.startswith(("GPU-", "MIG-")) else f"{slot.node}-gres-gpu{slot.gpu}"


def slurm_facts(env: Mapping[str, str], affinity: set[int] | None = None) -> dict[str, Any]:
    """What Slurm gave this task, for the shard's manifest and slot.json."""
    facts: dict[str, Any] = {key: env[key] for key in SLURM_KEYS if key in env}
    facts["node"] = node_name(env)
    if affinity is not None:
        facts["cpu_affinity"] = sorted(affinity)
    return facts


def shared_check(run_dir: Path, env: Mapping[str, str]) -> str | None:
    """None when this node reads the token the submitting host wrote; else why not, in one sentence."""
    node, path = node_name(env), layout.token_path(run_dir)
    token = env.get(TOKEN_ENV, "")
    if not token:
        return (f"node {node}: {TOKEN_ENV} is not set, so the run directory cannot be checked; run the job through "
                f"its batch script (sbatch {layout.script_path(run_dir)}).")
    try:
        seen = path.read_text().strip()
    except OSError as exc:
        return (f"node {node} cannot read {path} ({exc.strerror}): the run directory is not on a filesystem this node "
                "shares with the submitting host; put --out on a shared filesystem (NFS, Lustre, GPFS) and submit "
                "again.")
    if seen != token:
        return (f"node {node} sees another token in {path}: the path names a different directory on this node than "
                "on the submitting host; put --out on a filesystem both share and submit again.")
    return None


def _shared(run_dir: Path, env: Mapping[str, str]) -> bool:
    """The shared-filesystem check, its failure said on stderr (the task's Slurm output)."""
    problem = shared_check(run_dir, env)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
    return problem is None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _plan_arms(plan) -> list[Arm]:
    fields = set(Arm.__dataclass_fields__)
    return [arm_from_spec({k: v for k, v in spec.items() if k in fields}, layout.PLAN_FILE) for spec in plan.arms]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return redact.redact_text(lines[-1][:300]) if lines else "no output"


Runner = Callable[..., subprocess.CompletedProcess]


def run_imports(arms: list[Arm], ctx: containers.NodeContext, run: Runner = subprocess.run,
                timeout_s: float = IMPORT_TIMEOUT_S) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every arm's import steps on this node: (what happened per arm, arms that cannot run -> why)."""
    done: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}
    for arm in arms:
        steps = containers.import_steps(arm, ctx)
        record: dict[str, Any] = {"arm": arm.name, "engine": arm.engine, "image": arm.image,
                                  "steps": containers.describe_steps(steps), "ok": True}
        began = time.perf_counter()
        for step in steps:
            try:
                if step.done_if and run(step.done_if, capture_output=True, text=True, timeout=60,
                                        check=False).returncode == 0:
                    continue
                result = run(step.argv, capture_output=True, text=True, timeout=timeout_s, check=False)
                detail = None if result.returncode == 0 else \
                    f"exit code {result.returncode}: {_last_line(result.stderr or result.stdout)}"
            except FileNotFoundError:
                detail = f"`{step.argv[0]}` is not installed on this node"
            except subprocess.TimeoutExpired:
                detail = f"no answer within {timeout_s:.0f} s"
            if detail:
                record["ok"], record["error"] = False, containers.import_failure(step, arm, ctx.node, detail)
                unavailable[arm.name] = record["error"]
                break
        record["seconds"] = round(time.perf_counter() - began, 3)
        done.append(record)
    return done, unavailable


def prepare(run_dir: Path, env: Mapping[str, str], run: Runner = subprocess.run) -> int:
    """Step 1 of the batch script, once per node (see the module docstring)."""
    run_dir = Path(run_dir)
    if not _shared(run_dir, env):
        return EXIT_NODE
    node = node_name(env)
    plan = shards.load_plan(run_dir)
    cache = Path(env.get(CACHE_ENV) or f"/tmp/benchlib-images-{os.getuid()}")
    ctx = containers.NodeContext(node=node, job_id=env.get("SLURM_JOB_ID"),
                                 gpus_per_node=int(env.get(GPUS_ENV) or 1), cuda_device=None, cache_dir=cache)
    arms = _plan_arms(plan)
    if any(containers.import_steps(arm, ctx) for arm in arms):
        cache.mkdir(parents=True, exist_ok=True)
    imports, unavailable = run_imports(arms, ctx, run)
    for why in unavailable.values():
        print(f"warning: {why}", file=sys.stderr)
    unusable = None
    if len(unavailable) == len(arms):
        unusable = f"node {node}: no arm can run here: " + " ".join(unavailable.values())
    record = {"node": node, "shared_check": "ok", "written_at": _now(), "job_id": env.get("SLURM_JOB_ID"),
              "restart_count": env.get("SLURM_RESTART_COUNT", "0"), "python": sys.version.split()[0],
              "platform": platform.platform(), "imports": imports, "unavailable_arms": unavailable,
              "unusable": unusable}
    _atomic.write_json(layout.node_record_path(run_dir, node), redact.redact_obj(record))
    print(f"node {node}: run directory shared; {len(arms) - len(unavailable)} of {len(arms)} arm(s) ready",
          file=sys.stderr)
    return EXIT_NODE if unusable else EXIT_OK


def _append_attempt(shard: Path, attempt: dict[str, Any]) -> None:
    path = shard / layout.SLOT_FILE
    try:
        attempts = json.loads(path.read_text()).get("attempts", [])
    except (OSError, json.JSONDecodeError):
        attempts = []
    attempts.append(attempt)
    _atomic.write_json(path, redact.redact_obj({"attempts": attempts}))


def start_shard(run_dir: Path, slot: Slot, record: Mapping[str, Any], host: dict[str, Any]) -> Path:
    """The slot's shard: started from the plan unless an earlier attempt left one (then it resumes)."""
    shard = layout.shard_dir(run_dir, slot)
    if (shard / MANIFEST_FILE).is_file():
        return shard
    manifest = shards.shard_manifest(shards.load_plan(run_dir), slot, host, record.get("unavailable_arms"))
    shard.mkdir(parents=True, exist_ok=True)
    manifest.save(shard)
    return shard


def measure(run_dir: Path, env: Mapping[str, str]) -> int:
    """Step 2 of the batch script, once per (node, GPU) (see the module docstring)."""
    from ..device import host_gpu_names, host_gpu_uuids
    from ..gpulock import IDS_ENV

    run_dir = Path(run_dir)
    if not _shared(run_dir, env):
        return EXIT_NODE
    slot = slot_of(env)
    record = shards.read_node_record(run_dir, slot.node)
    if record is None:
        print(f"error: node {slot.node} wrote no record in {layout.node_record_path(run_dir, slot.node)}: its "
              f"preparation step failed; see {layout.logs_dir(run_dir)}/prepare-*-{slot.node}.out.", file=sys.stderr)
        return EXIT_NODE
    if record.get("unusable"):
        print(f"error: {record['unusable']}", file=sys.stderr)
        return EXIT_NODE
    uuids = host_gpu_uuids()
    device = cuda_device(env, uuids)
    facts = {**slurm_facts(env, os.sched_getaffinity(0)), "gpu": slot.gpu, "gpu_uuid": device, "started_at": _now()}
    host = {"hostname": slot.node, "python": sys.version.split()[0], "has_gpu": bool(uuids),
            "gpus": list(host_gpu_names()), "slurm": facts}
    shard = start_shard(run_dir, slot, record, host)
    _append_attempt(shard, facts)
    os.environ[IDS_ENV] = gpu_lock_id(slot, device)  # this task's GPU alone, not every GPU of the node
    from ..runner import RunOptions, run_suite

    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    try:
        outcome = run_suite(RunOptions(suite=str(shards.load_plan(run_dir).suite), resume=shard, progress=False),
                            log=log)
    except BenchlibError as exc:
        _append_attempt(shard, {**facts, "error": redact.redact_text(str(exc)), "ended_at": _now()})
        print(f"error: slot {slot.name}: {redact.redact_text(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        return 128 + int(getattr(exc, "signum", 2))
    from .load import consolidate_shard

    consolidate_shard(shard)  # two files per shard for the collecting host, written here on the node
    print(f"slot {slot.name}: {outcome.manifest.status}", file=sys.stderr)
    return EXIT_OK if outcome.ok else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"prepare": prepare, "measure": measure}
    if len(args) != 2 or args[0] not in commands:
        print("usage: python -m benchlib.cluster.task {prepare|measure} RUN_DIR (run by the batch script)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return commands[args[0]](Path(args[1]), os.environ)
    except BenchlibError as exc:
        print(f"error: {redact.redact_text(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
