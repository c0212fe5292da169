"""Shards of a run on a cluster: the plan each slot runs, their state, and merging them into one run.

Every (node, GPU) slot runs the same plan (``<run>/slurm/plan.json``, written at submission) into
its own shard ``<run>/nodes/<node>-gpu<k>/``, a run directory with its own manifest
(:func:`shard_manifest`), so a killed or requeued task resumes it as a local run resumes.

:func:`fleet_state` reads the run directory (and, when given, what Slurm says of the job) and says
for every slot expected how far it got, and for every slot or node that is missing why: still in
the queue, the node never wrote its shared-filesystem check, an image could not be imported there,
the task stopped half-way. :func:`collect` merges the shards into ``<run>/manifest.json`` (every
shard's invocations, each with its ``shard``, so :func:`benchlib.results.load_run` reads them all)
and writes that state to ``<run>/fleet.json``; it can run again at any time and replaces both.
Nothing here measures or submits: these are functions of the files (and of a :class:`JobInfo`).
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import _atomic, redact
from ..errors import BenchlibError
from ..manifest import COMPLETE, FAILED, INTERRUPTED, PARTIAL, PENDING, RUNNING, Invocation, Manifest
from . import layout
from .layout import Slot

PLANNED = "planned"  # plan.json's status: a template, never run as it is
FLEET_SCHEMA_VERSION = 1

#: Slot states, from best to worst.
SLOT_COMPLETE, SLOT_PARTIAL, SLOT_RUNNING, SLOT_STOPPED, SLOT_NOT_STARTED, SLOT_MISSING = (
    "complete", "partial", "running", "stopped", "not started", "missing")
#: Slurm job states in which no task runs any more (squeue(1), "JOB STATE CODES").
ENDED_JOB_STATES = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                              "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT", "SPECIAL_EXIT", "REVOKED"})


@dataclass(frozen=True)
class JobInfo:
    """What Slurm says of the run's job (``scontrol show job``): None fields when it does not say."""

    job_id: str
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, CANCELLED, ...
    reason: str | None = None  # why it is pending, or why it ended
    nodes: tuple[str, ...] = ()  # the nodes allocated (empty while pending)
    exit_code: str | None = None

    @property
    def ended(self) -> bool:
        return self.state.split()[0].rstrip("+") in ENDED_JOB_STATES

    @property
    def pending(self) -> bool:
        return self.state.startswith("PENDING")


@dataclass
class SlotState:
    slot: str  # <node>-gpu<k>, or <node>-gpu? for a slot of a known node that never reported
    node: str
    gpu: int | None
    state: str
    complete: int = 0
    total: int = 0
    failed: int = 0
    why: str | None = None  # for every state but complete: what happened, and what to do
    updated_at: str | None = None


@dataclass
class FleetState:
    run_id: str
    nodes_expected: int
    gpus_per_node: int
    slots: list[SlotState]
    missing: list[dict[str, str]]  # {"where": node or slot, "why": one sentence}, for the report
    job: dict[str, Any] | None = None
    schema_version: int = FLEET_SCHEMA_VERSION
    written_at: str = field(default_factory=lambda: _now())

    @property
    def slots_expected(self) -> int:
        return self.nodes_expected * self.gpus_per_node

    @property
    def complete(self) -> bool:
        done = [slot for slot in self.slots if slot.state == SLOT_COMPLETE]
        return len(done) == self.slots_expected and not self.missing

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for slot in self.slots:
            counts[slot.state] = counts.get(slot.state, 0) + 1
        return counts

    def describe(self) -> str:
        """The state for a terminal: one line for the run, one per slot that is not complete."""
        counts = ", ".join(f"{n} {state}" for state, n in self.counts().items())
        head = (f"run {self.run_id}: {self.nodes_expected} node(s) x {self.gpus_per_node} GPU(s) = "
                f"{self.slots_expected} slots; {counts or 'no slot has reported'}")
        if self.job:
            head += f"; job {self.job['job_id']} {self.job['state']}"
        lines = [head]
        for slot in self.slots:
            progress = f"{slot.complete}/{slot.total} invocations" if slot.total else ""
            if slot.state == SLOT_COMPLETE:
                lines.append(f"  {slot.slot}: complete ({progress})")
            else:
                lines.append(f"  {slot.slot}: {slot.state}{' (' + progress + ')' if progress else ''}"
                             f"{': ' + slot.why if slot.why else ''}")
        listed = {slot.node for slot in self.slots if slot.state in (SLOT_MISSING, SLOT_NOT_STARTED)}
        lines += [f"  {item['where']}: missing: {item['why']}" for item in self.missing
                  if item["where"].split(" ")[0] not in listed]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# the plan and the shards


def load_plan(run_dir: Path) -> Manifest:
    path = layout.plan_path(run_dir)
    if not path.is_file():
        raise BenchlibError(f"{run_dir} has no {layout.SLURM_DIR}/{layout.PLAN_FILE}: it is not a run submitted with "
                            "`benchlib run --on slurm`.")
    return Manifest.read(path)


def write_plan(run_dir: Path, plan: Manifest) -> Path:
    """``<run>/slurm/plan.json``: the plan every slot runs (status ``planned``)."""
    plan = copy.deepcopy(plan)
    plan.status = PLANNED
    for invocation in plan.invocations:
        invocation.status = PENDING
    path = layout.plan_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _atomic.write_json(path, redact.redact_obj(json.loads(json.dumps(asdict(plan), default=str))))


def shard_manifest(plan: Manifest, slot: Slot, host: dict[str, Any],
                   unavailable_arms: dict[str, str] | None = None) -> Manifest:
    """The manifest a slot starts its shard with: the plan's invocations, all pending, minus those of
    arms that cannot run on this node (recorded as skipped, with why). Its run id is
    ``<run_id>@<node>-gpu<k>``, so every shard's invocations stay distinct when merged."""
    dropped = dict(unavailable_arms or {})
    invocations = [copy.deepcopy(inv) for inv in plan.invocations if inv.arm not in dropped]
    for invocation in invocations:
        invocation.status, invocation.ran_as, invocation.files, invocation.notes = PENDING, None, {}, []
    return Manifest(
        run_id=shard_run_id(plan.run_id, slot), suite=plan.suite, created_at=_now(),
        arms=[copy.deepcopy(arm) for arm in plan.arms if arm.get("name") not in dropped],
        invocations=invocations, host=host, benchlib=dict(plan.benchlib),
        skipped_arms=[*plan.skipped_arms, *({"arm": arm, "why": why} for arm, why in dropped.items())],
        status=RUNNING, suite_file=plan.suite_file,
    )


def shard_run_id(run_id: str, slot: Slot) -> str:
    return f"{run_id}@{slot.name}"


def read_shard(run_dir: Path, slot: Slot) -> Manifest | None:
    """A shard's manifest, or None when the slot never wrote one (or it is unreadable)."""
    try:
        return Manifest.load(layout.shard_dir(run_dir, slot))
    except (BenchlibError, TypeError):
        return None


def read_node_record(run_dir: Path, node: str) -> dict[str, Any] | None:
    path = layout.node_record_path(run_dir, node)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_submission(run_dir: Path) -> dict[str, Any]:
    path = layout.submission_path(run_dir)
    try:
        return json.loads(path.read_text())
    except OSError:
        raise BenchlibError(f"{run_dir} has no {layout.SLURM_DIR}/{layout.SUBMISSION_FILE}: it is not a run "
                            "submitted with `benchlib run --on slurm`.") from None
    except json.JSONDecodeError as exc:
        raise BenchlibError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None


# --------------------------------------------------------------------------------------------------
# state


def fleet_state(run_dir: Path, job: JobInfo | None = None) -> FleetState:
    """Every slot's state and every missing slot or node with why (see the module docstring)."""
    run_dir = Path(run_dir)
    submission = read_submission(run_dir)
    options = submission.get("options", {})
    gpus = int(options.get("gpus_per_node") or 1)
    listed = list(submission.get("node_names") or [])
    nodes_expected = max(int(submission.get("node_count") or 1), len(listed))
    shards = layout.existing_shards(run_dir)
    known = _ordered_unique([*listed, *(job.nodes if job else ()), *layout.recorded_nodes(run_dir),
                             *(slot.node for slot in shards)])
    logs = layout.logs_dir(run_dir)
    slots: list[SlotState] = []
    missing: list[dict[str, str]] = []
    for node in known:
        record = read_node_record(run_dir, node)
        node_shards = [slot for slot in shards if slot.node == node]
        for slot in node_shards:
            slots.append(_slot_state(run_dir, slot, job))
        absent = gpus - len(node_shards)
        if absent <= 0:
            continue
        why = _node_missing_why(node, record, job, logs)
        where = node if not node_shards else f"{node} ({absent} of {gpus} GPU slots)"
        missing.append({"where": where, "why": why})
        state = SLOT_NOT_STARTED if record and record.get("shared_check") == "ok" and not job_ended(job) else SLOT_MISSING
        for k in range(len(node_shards), gpus):
            slots.append(SlotState(f"{node} (slot {k + 1}/{gpus})", node, None, state, why=why))
    unknown = nodes_expected - len(known)
    if unknown > 0:
        missing.append({"where": f"{unknown} node(s) not yet known",
                        "why": _unknown_nodes_why(unknown, job)})
    return FleetState(
        run_id=submission.get("run_id", run_dir.name), nodes_expected=nodes_expected, gpus_per_node=gpus,
        slots=slots, missing=missing, job=asdict(job) if job else None,
    )


def job_ended(job: JobInfo | None) -> bool:
    return job is not None and job.ended


def _slot_state(run_dir: Path, slot: Slot, job: JobInfo | None) -> SlotState:
    manifest = read_shard(run_dir, slot)
    if manifest is None:
        why = (f"its folder exists but holds no readable manifest; see {layout.logs_dir(run_dir)}/task-*-{slot.node}-*.out")
        return SlotState(slot.name, slot.node, slot.gpu, SLOT_STOPPED if job_ended(job) else SLOT_NOT_STARTED, why=why)
    counts = manifest.counts()
    total, done, failed = len(manifest.invocations), counts.get(COMPLETE, 0), counts.get(FAILED, 0)
    updated = max((inv.ended_at or inv.started_at or "" for inv in manifest.invocations), default="") or manifest.created_at
    base = dict(slot=slot.name, node=slot.node, gpu=slot.gpu, complete=done, total=total, failed=failed,
                updated_at=updated)
    if manifest.status == COMPLETE:
        return SlotState(state=SLOT_COMPLETE, **base)
    if manifest.status == PARTIAL:
        first = next(inv for inv in manifest.invocations if inv.status == FAILED)
        return SlotState(state=SLOT_PARTIAL, why=f"{failed} invocation(s) failed, e.g. {first.label}: {first.error}",
                         **base)
    resubmit = f"resubmit with `sbatch {layout.script_path(run_dir)}` to resume it"
    error = _last_attempt_error(run_dir, slot)
    if error and (job is None or job.ended):
        return SlotState(state=SLOT_STOPPED, why=f"{error}; {resubmit} once fixed", **base)
    if manifest.status == INTERRUPTED:
        note = _last_note(manifest)
        return SlotState(state=SLOT_STOPPED, why=f"interrupted ({note}); {resubmit}", **base)
    if job_ended(job):
        return SlotState(state=SLOT_STOPPED, why=f"the task ended without finishing (job {job.state}"
                         f"{', ' + job.reason if job.reason and job.reason != 'None' else ''}): it was killed or its "
                         f"node failed; {resubmit}", **base)
    return SlotState(state=SLOT_RUNNING, **base)


def _last_attempt_error(run_dir: Path, slot: Slot) -> str | None:
    """The error of the slot's last attempt (slot.json), when it ended with one (e.g. an arm's preflight)."""
    try:
        attempts = json.loads((layout.shard_dir(run_dir, slot) / layout.SLOT_FILE).read_text()).get("attempts", [])
    except (OSError, json.JSONDecodeError):
        return None
    return attempts[-1].get("error") if attempts else None


def _last_note(manifest: Manifest) -> str:
    notes = [note for inv in manifest.invocations for note in inv.notes]
    return notes[-1].split(" ", 1)[-1] if notes else "no note"


def _node_missing_why(node: str, record: dict[str, Any] | None, job: JobInfo | None, logs: Path) -> str:
    if record is not None and record.get("shared_check") == "ok":
        unusable = record.get("unusable")
        if unusable:
            return unusable
        if job_ended(job):
            return (f"the node passed its checks but its tasks never wrote a shard; see {logs}/task-{job.job_id}-"
                    f"{node}-*.out")
        return "the node passed its checks; its tasks have not written their shards yet"
    if record is not None:
        return record.get("error") or "the node's check failed"
    if job is None:
        return ("the node has not written its shared-filesystem check (no job information: is the job still "
                "queued? `squeue --me` says)")
    if job.pending:
        return f"the job is still waiting in the queue ({job.reason or 'no reason given'})"
    if job.ended or job.state.startswith("RUNNING"):
        return (f"the node never wrote its shared-filesystem check into the run directory: the directory is not on a "
                f"filesystem the node shares with the submitting host, or the node failed; put --out on a shared "
                f"filesystem and see {logs}/prepare-{job.job_id}-{node}.out on that node")
    return f"the node has not written its shared-filesystem check (job {job.state})"


def _unknown_nodes_why(count: int, job: JobInfo | None) -> str:
    if job is None:
        return "Slurm has not said which nodes the job got (the job may still be queued)"
    if job.pending:
        return f"the job is still waiting in the queue ({job.reason or 'no reason given'})"
    return (f"the job ({job.state}) got {len(job.nodes)} node(s) but {count} more were asked for; they never "
            "reported")


def _ordered_unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(item for item in items if item))


# --------------------------------------------------------------------------------------------------
# merging


def merge_shards(run_dir: Path, state: FleetState) -> Manifest:
    """One manifest of every shard's invocations (each with its ``shard``), in shard then run order.

    Status: complete when every expected slot is complete; else partial when some invocation failed
    or some slot is missing, else running.
    """
    plan = load_plan(run_dir)
    invocations: list[Invocation] = []
    shards: dict[str, Any] = {}
    skipped: list[dict[str, str]] = list(plan.skipped_arms)
    for slot in layout.existing_shards(run_dir):
        manifest = read_shard(run_dir, slot)
        if manifest is None:
            continue
        shards[slot.name] = {"run_id": manifest.run_id, "status": manifest.status, "host": manifest.host,
                             "arms": manifest.arms}
        for item in manifest.skipped_arms:
            if item not in plan.skipped_arms:
                skipped.append({**item, "shard": slot.name})
        for invocation in sorted(manifest.invocations, key=lambda inv: (inv.ran_as is None, inv.ran_as, inv.order)):
            merged = copy.deepcopy(invocation)
            merged.shard = slot.name
            invocations.append(merged)
    for order, invocation in enumerate(invocations):
        invocation.order = order
    any_failed = any(inv.status == FAILED for inv in invocations)
    if state.complete:
        status = COMPLETE
    elif any_failed or state.missing or any(slot.state in (SLOT_STOPPED, SLOT_MISSING) for slot in state.slots):
        status = PARTIAL
    else:
        status = RUNNING
    return Manifest(
        run_id=plan.run_id, suite=plan.suite, created_at=plan.created_at, arms=plan.arms, invocations=invocations,
        host={**plan.host, "cluster": {"scheduler": "slurm", "shards": shards}}, benchlib=plan.benchlib,
        skipped_arms=skipped, status=status, suite_file=plan.suite_file,
    )


@dataclass
class Collected:
    run_dir: Path
    manifest: Manifest
    state: FleetState

    @property
    def complete(self) -> bool:
        return self.manifest.status == COMPLETE


def collect(run_dir: Path, job: JobInfo | None = None) -> Collected:
    """Merge the shards into ``<run>/manifest.json`` and write ``<run>/fleet.json`` (both replaced)."""
    run_dir = Path(run_dir).resolve()
    state = fleet_state(run_dir, job)
    manifest = merge_shards(run_dir, state)
    manifest.save(run_dir)
    _atomic.write_json(layout.fleet_path(run_dir), asdict(state))
    return Collected(run_dir, manifest, state)


def load_fleet_state(run_dir: Path) -> FleetState:
    """``<run>/fleet.json`` as written by :func:`collect`."""
    path = layout.fleet_path(run_dir)
    try:
        data = json.loads(path.read_text())
    except OSError:
        raise BenchlibError(f"{run_dir} has no {layout.FLEET_FILE}; run `benchlib collect {run_dir}` first.") from None
    version = data.get("schema_version")
    if version != FLEET_SCHEMA_VERSION:
        raise BenchlibError(f"{path} has schema version {version}, this benchlib reads {FLEET_SCHEMA_VERSION}; run "
                            f"`benchlib collect {run_dir}` again to rewrite it.")
    data["slots"] = [SlotState(**slot) for slot in data.get("slots", [])]
    return FleetState(**data)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
