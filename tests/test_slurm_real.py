"""The batch script on a real Slurm: the one-node cluster of .ci/slurm-setup.sh (Slurm 22.05, two fake
GPUs as gres). Outside CI these tests skip when no such cluster answers; with CI=true they fail.

One job, two GPU slots: Slurm gives each task its own CUDA_VISIBLE_DEVICES, the node reads back the
token (the run directory is shared), each slot writes its shard and runs its plan, and the script's
last step merges the shards. A run directory the node sees as another directory is refused by the
node with one sentence, and the run's state says why that node is missing. Slurm's refusal of a
partition stops the run before anything is written.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import benchlib
from benchlib.cluster import layout, sbatch, shards, slurmctl, submit
from benchlib.errors import ParamsError
from benchlib.suites import load_suite

IN_CI = os.environ.get("CI", "").lower() == "true"
JOB_WAIT_S = 480


def _cluster_node() -> str | None:
    if shutil.which("sinfo") is None:
        return None
    done = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T %G"], capture_output=True, text=True, timeout=30)
    for line in done.stdout.splitlines():
        name, state, gres = (line.split() + ["", "", ""])[:3]
        if state in ("idle", "mixed", "allocated", "completing") and "gpu:" in gres:
            return name
    return None


@pytest.fixture(scope="module")
def node() -> str:
    name = _cluster_node()
    if name is None:
        reason = "no Slurm node with GPUs as gres answers here; run .ci/slurm-setup.sh as root"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    return name


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("description: one small matmul case\ninvocations: 2\narms: [native]\n"
                    "benchmarks:\n  - {benchmark: matmul, params: smoke}\n")
    return load_suite(str(path))


def wait_for(job_id: str) -> shards.JobInfo:
    deadline = time.monotonic() + JOB_WAIT_S
    while time.monotonic() < deadline:
        info = slurmctl.job_info(job_id)
        if info is not None and info.ended:
            return info
        time.sleep(2)
    subprocess.run(["scancel", job_id], check=False)
    pytest.fail(f"job {job_id} did not end within {JOB_WAIT_S} s")


def submitted(tmp_path: Path, suite, **options):
    run_dir = tmp_path / "outputs" / "cluster-run"
    job = submit.create_run(run_dir, suite, suite.arms, suite.invocations,
                            sbatch.resolve_options(None, "suite", options))
    return run_dir, job


def test_two_gpu_slots_on_one_node(node, suite, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCHLIB_LOCK_DIR", str(tmp_path / "locks"))  # the job inherits it
    run_dir, job = submitted(tmp_path, suite, gpus_per_node=2, time="10")
    job_id = submit.submit(run_dir, job)
    info = wait_for(job_id)
    log = (layout.logs_dir(run_dir) / f"job-{job_id}.out").read_text()
    assert info.state == "COMPLETED", log
    assert "prepare exit 0, measure exit 0, collect exit 0" in log
    record = json.loads(layout.node_record_path(run_dir, node).read_text())
    assert record["shared_check"] == "ok" and record["unusable"] is None and record["job_id"] == job_id
    slots = {}
    for gpu in (0, 1):
        folder = layout.shard_dir(run_dir, layout.Slot(node, gpu))
        attempt = json.loads((folder / layout.SLOT_FILE).read_text())["attempts"][-1]
        slots[gpu] = attempt
        assert benchlib.load_manifest(folder).status == "complete"
        assert (folder / "shard-index.json").is_file()  # consolidated on the node for the collecting host
    # Slurm gave each task its own GPU (gres File=/dev/nvidia[0-1]), and both ran in one job step
    assert {slots[g]["CUDA_VISIBLE_DEVICES"] for g in slots} == {"0", "1"}
    assert all(slots[g]["SLURM_STEP_GPUS"] == str(g) for g in slots)
    assert {slots[g]["SLURM_JOB_ID"] for g in slots} == {job_id}
    assert slots[0]["SLURM_STEP_ID"] == slots[1]["SLURM_STEP_ID"] == "1"  # step 0 prepared the node
    # the script's last step merged the shards
    merged = benchlib.load_manifest(run_dir)
    assert merged.status == "complete" and {inv.shard for inv in merged.invocations} == {f"{node}-gpu0",
                                                                                          f"{node}-gpu1"}
    results = benchlib.load_run(run_dir)
    assert sorted(results["run_id"].unique()) == [f"{run_dir.name}@{node}-gpu0", f"{run_dir.name}@{node}-gpu1"]
    assert set(results["status"]) == {"ok"}
    state = shards.fleet_state(run_dir, info)
    assert state.complete and state.counts() == {"complete": 2}
    from benchlib.cluster.load import load_fleet

    fleet_results, _ = load_fleet(run_dir)
    assert sorted(set(zip(fleet_results["node"], fleet_results["gpu"]))) == [(node, 0), (node, 1)]
    assert len(fleet_results) == len(results)


def test_a_run_directory_the_node_does_not_share(node, suite, tmp_path):
    """The node finds another token at the run directory's path (as a node-local directory of the same
    name would hold): it refuses before measuring, and the run's state says why the node is missing."""
    run_dir, job = submitted(tmp_path, suite, gpus_per_node=2, time="5")
    layout.token_path(run_dir).write_text("a token some other directory holds\n")
    job_id = submit.submit(run_dir, job)
    info = wait_for(job_id)
    assert not layout.node_record_path(run_dir, node).exists()
    assert not layout.shards_dir(run_dir).exists()
    prepare_log = (layout.logs_dir(run_dir) / f"prepare-{job_id}-{node}.out").read_text()
    assert f"node {node} sees another token" in prepare_log and "put --out on a filesystem both share" in prepare_log
    task_logs = " ".join(path.read_text() for path in layout.logs_dir(run_dir).glob(f"task-{job_id}-*.out"))
    assert task_logs.count("sees another token") == 2  # both GPU tasks refuse too
    state = shards.fleet_state(run_dir, info)
    assert [item["where"] for item in state.missing] == [node]
    assert "never wrote its shared-filesystem check" in state.missing[0]["why"]
    assert not state.complete


def test_slurm_refuses_a_partition_before_anything_is_written(node, suite, tmp_path):
    with pytest.raises(ParamsError) as caught:
        submitted(tmp_path, suite, partition="no-such-partition")
    assert "--partition" in str(caught.value) and "sinfo -s" in str(caught.value)
    assert not (tmp_path / "outputs" / "cluster-run").exists()
    with pytest.raises(ParamsError, match="--gpus-per-node"):
        submitted(tmp_path, suite, gpus_per_node=3)  # the node has two
