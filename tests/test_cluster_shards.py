"""A cluster run's state and merging, on run directories with planted faults: a node that never
wrote its shared-filesystem check, a queued job, a task killed half-way, failed invocations, a node
where no arm could run. Every missing slot must come with why."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import benchlib
from benchlib.cluster import layout, shards
from benchlib.cluster._synthetic import FleetSpec, simulate, write_run
from benchlib.cluster.layout import Slot
from benchlib.cluster.shards import JobInfo
from benchlib.errors import BenchlibError
from benchlib.manifest import COMPLETE, FAILED, INTERRUPTED, PARTIAL, RUNNING, Manifest

SPEC = FleetSpec(nodes=3, gpus=2, invocations=2, samples=4, telemetry=False, run_id="r1", seed=3)
NODES = [SPEC.node_name(n) for n in range(3)]


@pytest.fixture
def run(tmp_path) -> Path:
    results, telemetry = simulate(SPEC)
    return write_run(tmp_path / "r1", SPEC, results, telemetry)


def edit_shard(run: Path, slot: Slot, change) -> None:
    folder = layout.shard_dir(run, slot)
    manifest = Manifest.load(folder)
    change(manifest)
    manifest.save(folder)


def remove_node(run: Path, node: str) -> None:
    for gpu in range(SPEC.gpus):
        shutil.rmtree(layout.shard_dir(run, Slot(node, gpu)))
    layout.node_record_path(run, node).unlink()


def by_slot(state) -> dict:
    return {slot.slot: slot for slot in state.slots}


def test_a_complete_fleet_merges_into_one_run(run):
    collected = shards.collect(run)
    assert collected.complete and collected.state.complete
    assert collected.state.counts() == {"complete": 6}
    manifest = benchlib.load_manifest(run)
    assert manifest.status == COMPLETE and len(manifest.invocations) == 6 * 2 * 3 * 2
    assert {inv.shard for inv in manifest.invocations} == {f"{node}-gpu{g}" for node in NODES for g in (0, 1)}
    assert manifest.invocations[0].rel_dir.startswith(f"nodes/{manifest.invocations[0].shard}/")
    results = benchlib.load_run(run)  # the ordinary loader reads every shard through the merged manifest
    assert results["run_id"].nunique() == 6 and len(results) == 6 * 2 * 3 * 2 * 4
    assert all(problem is None for problem in (inv.file_problem(run) for inv in manifest.invocations))
    fleet = shards.load_fleet_state(run)
    assert fleet.complete and len(fleet.slots) == 6


def test_a_node_that_never_checked_in(run):
    remove_node(run, NODES[2])
    ended = JobInfo("77", "COMPLETED", nodes=tuple(NODES))
    state = shards.fleet_state(run, ended)
    assert [item["where"] for item in state.missing] == [NODES[2]]
    why = state.missing[0]["why"]
    assert "never wrote its shared-filesystem check" in why and "put --out on a shared filesystem" in why
    assert f"prepare-77-{NODES[2]}.out" in why
    assert sum(slot.state == shards.SLOT_MISSING for slot in state.slots) == 2
    collected = shards.collect(run, ended)
    assert collected.manifest.status == PARTIAL and not collected.complete
    assert len(collected.manifest.invocations) == 4 * 12  # the other nodes' shards are merged all the same
    text = collected.state.describe()
    assert f"{NODES[2]} (slot 1/2): missing" in text and "4 complete" in text


def test_nodes_still_in_the_queue(run):
    remove_node(run, NODES[2])
    pending = JobInfo("78", "PENDING", reason="Resources")
    why = shards.fleet_state(run, pending).missing[0]["why"]
    assert why == "the job is still waiting in the queue (Resources)"
    no_job = shards.fleet_state(run, None).missing[0]["why"]
    assert "has not written its shared-filesystem check" in no_job and "squeue" in no_job


def test_nodes_slurm_never_named(run):
    submission = json.loads(layout.submission_path(run).read_text())
    submission.update(node_names=[], node_count=5)
    layout.submission_path(run).write_text(json.dumps(submission))
    state = shards.fleet_state(run, JobInfo("79", "RUNNING", nodes=tuple(NODES)))
    assert state.nodes_expected == 5 and state.missing[-1]["where"] == "2 node(s) not yet known"
    assert "got 3 node(s) but 2 more were asked for" in state.missing[-1]["why"]


def test_a_task_killed_half_way_and_one_interrupted(run):
    killed, stopped = Slot(NODES[0], 1), Slot(NODES[1], 0)

    def half_done(manifest):
        manifest.status = RUNNING
        for invocation in manifest.invocations[len(manifest.invocations) // 2:]:
            invocation.status = "pending"

    def interrupted(manifest):
        half_done(manifest)
        manifest.status = INTERRUPTED
        manifest.invocations[-1].notes.append("2026-01-01T00:00:00+00:00 interrupted by SIGTERM; discarded")

    edit_shard(run, killed, half_done)
    edit_shard(run, stopped, interrupted)
    running = by_slot(shards.fleet_state(run, JobInfo("80", "RUNNING")))
    assert running[killed.name].state == shards.SLOT_RUNNING and running[killed.name].complete == 6
    ended = by_slot(shards.fleet_state(run, JobInfo("80", "TIMEOUT", reason="TimeLimit")))
    assert ended[killed.name].state == shards.SLOT_STOPPED
    assert "job TIMEOUT, TimeLimit" in ended[killed.name].why and "sbatch" in ended[killed.name].why
    assert ended[stopped.name].state == shards.SLOT_STOPPED
    assert "interrupted by SIGTERM" in ended[stopped.name].why


def test_failed_invocations_and_an_unusable_node(run):
    def one_failed(manifest):
        manifest.status = PARTIAL
        manifest.invocations[0].status, manifest.invocations[0].error = FAILED, "exit code 1: CUDA error: ECC"

    edit_shard(run, Slot(NODES[0], 0), one_failed)
    remove_node(run, NODES[1])
    record = {"node": NODES[1], "shared_check": "ok",
              "unusable": f"node {NODES[1]}: no arm can run here: enroot import failed"}
    layout.node_record_path(run, NODES[1]).write_text(json.dumps(record))
    state = shards.fleet_state(run, JobInfo("81", "COMPLETED"))
    slots = by_slot(state)
    partial = slots[f"{NODES[0]}-gpu0"]
    assert partial.state == shards.SLOT_PARTIAL and "CUDA error: ECC" in partial.why and partial.failed == 1
    assert {"where": NODES[1], "why": record["unusable"]} in state.missing


def test_fleet_file_versions(run):
    shards.collect(run)
    path = layout.fleet_path(run)
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(BenchlibError, match="schema version 99.*benchlib collect"):
        shards.load_fleet_state(run)


def test_not_a_cluster_run(tmp_path):
    with pytest.raises(BenchlibError, match="not a run submitted with `benchlib run --on slurm`"):
        shards.fleet_state(tmp_path)


def test_status_and_collect_commands(run, cli):
    remove_node(run, NODES[2])
    status = cli("status", str(run))
    assert status.returncode == 0 and "4 complete" in status.stdout and "missing" in status.stdout
    collect = cli("collect", str(run))
    assert collect.returncode == 1 and "(partial)" in collect.stdout
    assert (run / "manifest.json").is_file() and (run / "fleet.json").is_file()
    bad = cli("status", str(run.parent / "nowhere"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "--on slurm" in bad.stderr


def test_load_fleet_reads_consolidated_shards_and_files_alike(tmp_path):
    from benchlib.cluster.load import SHARD_INDEX, load_fleet

    spec = FleetSpec(nodes=2, gpus=2, invocations=2, samples=3, run_id="r2", seed=4)
    results, telemetry = simulate(spec)
    run = write_run(tmp_path / "r2", spec, results, telemetry)
    shards.collect(run)

    def ordered(frame):
        return frame.sort_values(list(frame.columns)).reset_index(drop=True)

    fast_results, fast_polls = load_fleet(run)
    assert set(fast_results["node"]) == {"node000", "node001"} and set(fast_results["gpu"]) == {0, 1}
    assert len(fast_results) == len(results) and len(fast_polls) == len(telemetry)
    # the same rows, file by file, once the consolidations are gone
    for index in run.glob(f"nodes/*/{SHARD_INDEX}"):
        index.unlink()
    slow_results, slow_polls = load_fleet(run)
    columns = list(fast_results.columns)
    pd.testing.assert_frame_equal(ordered(fast_results), ordered(slow_results[columns]))
    assert ordered(fast_polls[list(slow_polls.columns)]).equals(ordered(slow_polls))
    # a consolidation that no longer matches its shard's manifest (a resumed invocation) is not used
    from benchlib.cluster.load import consolidate_shard

    folder = layout.shard_dir(run, Slot("node000", 1))
    consolidate_shard(folder)
    edit_shard(run, Slot("node000", 1), lambda m: m.invocations[0].files.update({"results.parquet": "0" * 64}))
    shards.collect(run)
    stale_results, _ = load_fleet(run)
    pd.testing.assert_frame_equal(ordered(stale_results[columns]), ordered(fast_results))
    # the polls carry each shard's run id, so they join the samples of their invocation
    assert set(fast_polls["run_id"]) == set(fast_results["run_id"])
