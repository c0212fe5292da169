"""Synthetic fleets with known answers, for the fleet statistics' tests and the performance benchmark.

Nothing here is a measurement: every row says ``synthetic`` in ``device`` and ``note``. A
:class:`FleetSpec` plants what the statistics must find: node-to-node and GPU-to-GPU spread, an arm
effect, slow slots (a factor on their rates, optionally with low clocks and throttle reasons), noisy
but normal nodes (wider invocation and sample scatter, same centre) and arm-specific slowdowns.
:func:`simulate` returns results and telemetry in the project's schemas with the cluster's slot
columns; :func:`write_run` lays them out as a collected cluster run directory (submission, plan,
one shard per slot with its manifest and parquet files), so loaders and ``collect`` read them as
they read a real run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from .. import _atomic, schema
from ..manifest import COMPLETE, Invocation, Manifest
from . import layout, shards
from .load import consolidate_shard, write_consolidated
from .layout import Slot

#: (benchmark, case, work per sample, work unit, median seconds per sample at factor 1)
CASES = (
    ("membw", "op=copy,size_mib=1024,dtype=fp32", 2 * 1024**3, "B", 2 * 1024**3 / 3.0e12),
    ("matmul", "n=8192,dtype=bf16", 2 * 8192**3, "FLOP", 2 * 8192**3 / 700e12),
    ("launch", "kind=empty", np.nan, None, 8e-6),
)
SAMPLE_GAP_NS = 2_000_000
POLL_NS = 100_000_000
POLLS_PER_BLOCK = 5  # one before the block, then every POLL_NS: more than a block lasts
BLOCK_STRIDE_NS = 10 * POLL_NS
SM_CLOCK_MHZ = 1980.0


@dataclass
class FleetSpec:
    nodes: int = 16
    gpus: int = 4
    arms: tuple[str, ...] = ("native", "container")
    invocations: int = 5
    samples: int = 20
    sample_cv: float = 0.02  # within an invocation
    invocation_sd: float = 0.01  # log scale, between invocations of one slot and arm
    node_sd: float = 0.01  # log scale
    gpu_sd: float = 0.005  # log scale, within a node
    arm_effect: dict[str, float] = field(default_factory=lambda: {"container": 0.05})  # arm -> fraction slower
    slow: dict[tuple[int, int | None], float] = field(default_factory=dict)  # (node, gpu or None: all) -> rate factor
    clock_stuck: dict[tuple[int, int | None], float] = field(default_factory=dict)  # -> clock factor, throttled
    noisy: dict[int, float] = field(default_factory=dict)  # node -> noise multiplier (red herrings)
    arm_slow: dict[tuple[int, str], float] = field(default_factory=dict)  # (node, arm) -> rate factor
    telemetry: bool = True
    seed: int = 0
    run_id: str = "synthetic"

    def node_name(self, node: int) -> str:
        return f"node{node:03d}"


def _factor(table: dict, node: int, gpu: int, default: float = 1.0) -> float:
    return table.get((node, gpu), table.get((node, None), default))


def simulate(spec: FleetSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, telemetry) of the fleet in the project's schemas; run ids are shards'
    (``<run_id>@<node>-gpu<k>``), so :func:`benchlib.fleet.with_slots` finds every row's slot.

    Each block (slot × invocation × arm × case, in that order of time) is one invocation of one
    case: its samples are lognormal around ``seconds / speed``, the speed being the node's, GPU's,
    planted and arm factors; its telemetry is five polls around it."""
    rng = np.random.default_rng(spec.seed)
    nodes, gpus, invs, arms, cases, samples = (spec.nodes, spec.gpus, spec.invocations, len(spec.arms),
                                                len(CASES), spec.samples)
    node_effect = rng.normal(0.0, spec.node_sd, nodes)
    gpu_effect = rng.normal(0.0, spec.gpu_sd, (nodes, gpus))
    n, g, k, a, c = (axis.ravel() for axis in np.meshgrid(np.arange(nodes), np.arange(gpus), np.arange(invs),
                                                          np.arange(arms), np.arange(cases), indexing="ij"))
    slow = np.array([[_factor(spec.slow, i, j) for j in range(gpus)] for i in range(nodes)])
    clock = np.array([[_factor(spec.clock_stuck, i, j) for j in range(gpus)] for i in range(nodes)])
    arm_slow = np.array([[spec.arm_slow.get((i, arm), 1.0) for arm in spec.arms] for i in range(nodes)])
    arm_cost = np.array([1.0 + spec.arm_effect.get(arm, 0.0) for arm in spec.arms])
    noise = np.array([spec.noisy.get(i, 1.0) for i in range(nodes)])
    seconds = np.array([case[4] for case in CASES])
    speed = np.exp(node_effect[n] + gpu_effect[n, g]) * slow[n, g] * arm_slow[n, a] / arm_cost[a]
    drift = np.exp(rng.normal(0.0, spec.invocation_sd, n.size) * noise[n])
    block_seconds = seconds[c] / speed * drift
    values = block_seconds[:, None] * np.exp(rng.normal(0.0, spec.sample_cv, (n.size, samples)) * noise[n][:, None])
    durations = np.maximum((values * 1e9).astype(np.int64), 1)
    block_start = 1_700_000_000_000_000_000 + np.arange(n.size, dtype=np.int64) * BLOCK_STRIDE_NS
    starts = block_start[:, None] + np.concatenate(
        (np.zeros((n.size, 1), np.int64), np.cumsum(durations + SAMPLE_GAP_NS, axis=1)[:, :-1]), axis=1)
    run_ids = np.array([[shards.shard_run_id(spec.run_id, Slot(spec.node_name(i), j)) for j in range(gpus)]
                        for i in range(nodes)], dtype=object)
    block = {"run_id": run_ids[n, g], "arm": np.array(spec.arms, dtype=object)[a],
             "benchmark": np.array([case[0] for case in CASES], dtype=object)[c],
             "case": np.array([case[1] for case in CASES], dtype=object)[c], "invocation": k + 1}
    work = np.array([case[2] for case in CASES], dtype=float)[c]
    work_unit = np.array([case[3] for case in CASES], dtype=object)[c]
    results = pd.DataFrame({
        **{key: np.repeat(column, samples) for key, column in block.items()},
        "params": "{}", "sample": np.tile(np.arange(samples), n.size), "metric": "time", "unit": "s",
        "value": values.ravel(), "work": np.repeat(work, samples), "work_unit": np.repeat(work_unit, samples),
        "start_ns": starts.ravel(), "end_ns": (starts + durations).ravel(), "device": "synthetic",
        "status": schema.STATUS_OK, "note": "synthetic (a test fleet, not a measurement)",
    })
    results = schema.conform(results)
    if not spec.telemetry:
        return results, pd.DataFrame()
    polls = np.arange(-1, POLLS_PER_BLOCK - 1)
    stamps = (block_start[:, None] + polls[None, :] * POLL_NS).ravel()
    block_clock = np.repeat(clock[n, g], POLLS_PER_BLOCK)
    telemetry = pd.DataFrame({
        "timestamp_ns": stamps, "gpu_index": 0,
        "sm_clock_mhz": SM_CLOCK_MHZ * block_clock * np.exp(rng.normal(0.0, 0.003, stamps.size)),
        "mem_clock_mhz": 2619.0, "power_w": 500.0 * block_clock, "energy_mj": np.nan, "temperature_c": 60.0,
        "gpu_util_pct": 100.0, "mem_util_pct": 50.0, "mem_used_bytes": 1e9,
        "clock_event_reasons": np.where(block_clock < 1, "hw_slowdown", ""),
        **{key: np.repeat(column, POLLS_PER_BLOCK) for key, column in block.items()},
    })
    return results, telemetry


def write_run(run_dir: Path, spec: FleetSpec, results: pd.DataFrame, telemetry: pd.DataFrame,
              invocation_files: bool = True) -> Path:
    """Lay the fleet out as a cluster run directory: submitted, every shard complete and consolidated
    as its task leaves it. With ``invocation_files`` False only the consolidated files are written
    (the manifests list each invocation complete, without files): what :func:`load_fleet` reads when
    consolidations are current, written in a fraction of the time, for the performance benchmark."""
    run_dir = Path(run_dir)
    keys = ["run_id", "arm", "benchmark", "case", "invocation"]
    arms = [{"name": arm, "kind": "native", "engine": "host"} for arm in spec.arms]
    plan_invocations = [Invocation(order=i, arm=arm, benchmark=b, case=c, params_file="synthetic", invocation=k,
                                   params={})
                        for i, (k, (b, c, *_), arm) in enumerate(
                            (k, case, arm) for k in range(1, spec.invocations + 1) for case in CASES for arm in spec.arms)]
    plan = Manifest(run_id=spec.run_id, suite="synthetic", created_at="2026-01-01T00:00:00+00:00", arms=arms,
                    invocations=plan_invocations)
    shards.write_plan(run_dir, plan)
    _atomic.write_json(layout.submission_path(run_dir), {
        "schema_version": 1, "run_id": spec.run_id, "suite": "synthetic", "arms": list(spec.arms),
        "options": {"gpus_per_node": spec.gpus}, "node_names": [spec.node_name(n) for n in range(spec.nodes)],
        "node_count": spec.nodes, "gpus_per_node": spec.gpus, "job_id": None})
    results_by_shard = dict(tuple(results.groupby("run_id", sort=False)))
    telemetry_by_shard = dict(tuple(telemetry.groupby("run_id", sort=False))) if not telemetry.empty else {}
    for node in range(spec.nodes):
        name = spec.node_name(node)
        _atomic.write_json(layout.node_record_path(run_dir, name), {"node": name, "shared_check": "ok"})
        for gpu in range(spec.gpus):
            slot = Slot(name, gpu)
            manifest = shards.shard_manifest(plan, slot, {"hostname": name, "synthetic": True})
            folder = layout.shard_dir(run_dir, slot)
            folder.mkdir(parents=True, exist_ok=True)
            mine = results_by_shard[manifest.run_id].reset_index(drop=True)
            polls = telemetry_by_shard.get(manifest.run_id)
            if invocation_files:
                _write_invocations(folder, manifest, mine, polls)
            for invocation in manifest.invocations:
                invocation.status = COMPLETE
            manifest.status = COMPLETE
            manifest.save(folder)
            if invocation_files:
                consolidate_shard(folder)  # as each task does when its shard has run
            else:
                write_consolidated(folder, manifest.run_id, manifest.invocations,
                                   pa.Table.from_pandas(mine, preserve_index=False),
                                   pa.Table.from_pandas(polls.reset_index(drop=True), preserve_index=False)
                                   if polls is not None else None)
    return run_dir


def _write_invocations(folder: Path, manifest: Manifest, results: pd.DataFrame, telemetry: pd.DataFrame | None) -> None:
    keys = ["arm", "benchmark", "case", "invocation"]
    by_invocation = dict(tuple(results.groupby(keys, sort=False)))
    polls_by_invocation = dict(tuple(telemetry.groupby(keys, sort=False))) if telemetry is not None else {}
    for invocation in manifest.invocations:
        key = (invocation.arm, invocation.benchmark, invocation.case, invocation.invocation)
        inv_dir = folder / invocation.rel_dir
        inv_dir.mkdir(parents=True, exist_ok=True)
        # plain writes (no fsync): synthetic files, written fast; real runs write atomically
        by_invocation[key].reset_index(drop=True).to_parquet(inv_dir / "results.parquet", index=False)
        polls = polls_by_invocation.get(key)
        if polls is not None:
            # columns a synthetic poll does not model (memory, MIG) stay empty, as on a host without them
            polls = polls.reindex(columns=list(schema.TELEMETRY_COLUMNS))
            schema.conform(polls, schema.TELEMETRY_COLUMNS).to_parquet(inv_dir / "telemetry.parquet", index=False)
        invocation.files = {name: _atomic.sha256_of(inv_dir / name)
                            for name in ("results.parquet", "telemetry.parquet") if (inv_dir / name).is_file()}
