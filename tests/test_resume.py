"""Resume after a kill at any point: a real `benchlib run` is SIGKILLed at seeded random moments and
resumed until done; then the states a kill can leave in the rarer windows (a manifest temp file, results
written but the manifest not yet updated, a removed or altered complete invocation) are resumed."""
from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from runs import marked_processes, start_cli, wait_for

from benchlib import load_run, schema
from benchlib._atomic import sha256_of
from benchlib._process import MARK
from benchlib.manifest import Manifest

pytestmark = pytest.mark.notebook

SUITE = ("invocations: 2\nbenchmarks:\n  - {benchmark: cpu_bound, params: smoke}\n"
         "  - {benchmark: launch, params: smoke}\n")
SEEDS = (1, 2, 3, 4, 5)  # one kill each, at a moment drawn from random.Random(seed)
STARTUP_S, INVOCATION_S = 1.5, 4.0  # about what the CLI's start and one CPU invocation take here
# Each round (a fresh run, then resumes) is killed within its start and first invocation and a half,
# so kills land in every phase (start-up and clean-up, the kernel, between invocations) and the run
# still has work left for most rounds.
KILL_WINDOW_S = STARTUP_S + 1.5 * INVOCATION_S


@dataclass
class Chain:
    run_dir: Path
    final: subprocess.CompletedProcess
    kills: list[tuple[int, float, bool]] = field(default_factory=list)  # seed, delay, whether it hit a live run
    first_seen: dict[str, dict] = field(default_factory=dict)  # rel_dir -> state when first seen complete


def _complete_state(run_dir: Path) -> dict[str, dict]:
    """Every complete invocation's files (sha256, mtime) and run record; checks the manifest parses and
    that a complete invocation's files match their checksums at every moment."""
    json.loads((run_dir / "manifest.json").read_text())
    state = {}
    for inv in Manifest.load(run_dir).invocations:
        if inv.status != "complete":
            continue
        folder = run_dir / inv.rel_dir
        files = {name: (sha256_of(folder / name), (folder / name).stat().st_mtime_ns) for name in inv.files}
        assert {name: digest for name, (digest, _) in files.items()} == inv.files, inv.label
        state[inv.rel_dir] = {"files": files, "ran_as": inv.ran_as, "started_at": inv.started_at}
    return state


def _the_run(out: Path) -> Path | None:
    runs = [path.parent for path in out.glob("*/manifest.json")]
    assert len(runs) <= 1
    return runs[0] if runs else None


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Chain:
    from conftest import run_cli

    root = tmp_path_factory.mktemp("killed")
    (root / "suite.yaml").write_text(SUITE)
    out, first_seen, kills = root / "outputs", {}, []
    for seed in SEEDS:
        run_dir = _the_run(out)
        args = (["--resume", str(run_dir)] if run_dir else ["--suite", str(root / "suite.yaml"), "--out", str(out)])
        delay = random.Random(seed).uniform(0.2, KILL_WINDOW_S)
        runner = start_cli("run", *args, "--no-progress", log=root / "run.log")
        try:
            runner.wait(timeout=delay)
            kills.append((seed, delay, False))  # it ended first
        except subprocess.TimeoutExpired:
            runner.kill()  # SIGKILL, to the runner alone: nothing of it runs after this
            runner.wait()
            kills.append((seed, delay, True))
        run_dir = _the_run(out)
        if run_dir is None:
            continue  # killed before its manifest existed: the next round starts afresh
        wait_for(lambda: not marked_processes(run_dir), 10, "the killed run's papermill and kernel to exit")
        state = _complete_state(run_dir)
        for rel_dir, seen in first_seen.items():
            assert state.get(rel_dir) == seen, f"{rel_dir} was complete and has been touched since"
        first_seen.update({rel_dir: now for rel_dir, now in state.items() if rel_dir not in first_seen})
    run_dir = _the_run(out)
    final = run_cli("run", "--resume", str(run_dir), "--no-progress")
    return Chain(run_dir, final, kills, first_seen)


def test_a_run_killed_at_random_points_resumes_to_one_complete_run(chain: Chain):
    assert chain.final.returncode == 0, chain.final.stdout + chain.final.stderr
    assert sum(hit for _, _, hit in chain.kills) >= 3, chain.kills
    manifest = Manifest.load(chain.run_dir)
    assert manifest.status == "complete"
    assert [inv.status for inv in manifest.invocations] == ["complete"] * 4
    assert sorted(inv.ran_as for inv in manifest.invocations) == sorted({inv.ran_as for inv in manifest.invocations})
    for inv in manifest.invocations:
        assert inv.file_problem(chain.run_dir, required=("results.parquet", "executed.ipynb")) is None
        frame = pd.read_parquet(chain.run_dir / inv.rel_dir / "results.parquet")
        assert list(frame.columns) == list(schema.RESULT_COLUMNS) and (frame["status"] == "ok").all()
    assert not list(chain.run_dir.rglob("*.tmp"))
    assert not marked_processes(chain.run_dir)


def test_complete_invocations_were_never_run_again(chain: Chain):
    state = _complete_state(chain.run_dir)
    assert set(chain.first_seen) <= set(state)
    for rel_dir, seen in chain.first_seen.items():
        assert state[rel_dir] == seen  # same bytes, same mtime, same place in the order


def test_the_loader_reads_each_invocation_exactly_once(chain: Chain):
    results = load_run(chain.run_dir)
    planned = {(inv.arm, inv.benchmark, inv.case, inv.invocation) for inv in Manifest.load(chain.run_dir).invocations}
    keys = ["arm", "benchmark", "case", "invocation"]
    assert set(map(tuple, results[keys].drop_duplicates().values)) == planned
    assert not results.duplicated(keys + ["metric", "sample"]).any()


def test_resume_repairs_every_state_a_kill_can_leave(chain: Chain, tmp_path: Path):
    from conftest import run_cli

    run_dir = tmp_path / chain.run_dir.name
    shutil.copytree(chain.run_dir, run_dir)  # copytree keeps mtimes
    manifest = Manifest.load(run_dir)
    was_running, removed, altered, kept = manifest.invocations
    kept_state = _complete_state(run_dir)[kept.rel_dir]
    # killed while the manifest's temporary file was being written
    (run_dir / ".manifest.json.k1ll3d00.tmp").write_text('{"run_id": "half')
    # killed after the notebook wrote its results, before the manifest said so (and mid-write of another)
    was_running.status = "running"
    (run_dir / was_running.rel_dir / ".telemetry.parquet.x7y8z9ab.tmp").write_bytes(b"PAR1")
    manifest.save(run_dir)
    shutil.rmtree(run_dir / removed.rel_dir)  # a complete invocation's folder removed by hand
    with open(run_dir / altered.rel_dir / "results.parquet", "ab") as handle:
        handle.write(b"\0")  # a complete invocation's results changed
    # a process the killed run left (it carries the invocation mark, as papermill and the kernel do)
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                                env={**os.environ, MARK: str(run_dir / was_running.rel_dir)})
    try:
        done = run_cli("run", "--resume", str(run_dir), "--no-progress")
        assert leftover.wait(timeout=5) == -9
    finally:
        leftover.kill()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 processes killed, 2 temporary files removed" in done.stderr
    assert f"{removed.label}: its " in done.stderr and "is missing; it runs again" in done.stderr
    assert f"{altered.label}: its results.parquet does not match the checksum in the manifest; it runs again" \
        in done.stderr
    assert "3 of 4 invocations left" in done.stderr
    after = {inv.rel_dir: inv for inv in Manifest.load(run_dir).invocations}
    assert all(inv.status == "complete" and inv.file_problem(run_dir) is None for inv in after.values())
    assert _complete_state(run_dir)[kept.rel_dir] == kept_state
    earlier_end = max(inv.ran_as for inv in manifest.invocations)
    assert all(after[inv.rel_dir].ran_as > earlier_end for inv in (was_running, removed, altered))
    assert "does not match the checksum" in after[altered.rel_dir].notes[-1]
    assert "is missing" in after[removed.rel_dir].notes[-1]
    assert not list(run_dir.rglob("*.tmp"))
    assert len(load_run(run_dir).groupby(["benchmark", "case", "invocation"])) == 4


def test_a_second_runner_is_refused_and_a_complete_run_resumes_to_itself(chain: Chain, tmp_path: Path):
    from conftest import run_cli

    run_dir = tmp_path / chain.run_dir.name
    shutil.copytree(chain.run_dir, run_dir)
    before = (run_dir / "manifest.json").stat().st_mtime_ns
    holder = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live runner holds it
        refused = run_cli("run", "--resume", str(run_dir), "--no-progress")
    finally:
        os.close(holder)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: another benchlib process is writing run directory {run_dir}; wait for it to end (or stop it), "
        "then run `benchlib run --resume` again.")
    assert (run_dir / "manifest.json").stat().st_mtime_ns == before
    again = run_cli("run", "--resume", str(run_dir), "--no-progress")
    assert again.returncode == 0 and "0 of 4 invocations left" in again.stderr
    assert _complete_state(run_dir) == _complete_state(chain.run_dir)
