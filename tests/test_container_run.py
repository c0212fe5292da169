"""The container arm for real: the smoke suite, native and container interleaved, on a real Docker engine."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from docker_fixtures import docker_engine, docker_image  # noqa: F401  (fixtures)

from benchlib import load_envs, load_run, schema
from benchlib.manifest import Manifest

pytestmark = [pytest.mark.docker, pytest.mark.notebook]


@pytest.fixture(scope="module")
def two_arm_run(tmp_path_factory, docker_image) -> Path:  # noqa: F811
    from conftest import run_cli

    out = tmp_path_factory.mktemp("outputs")
    done = run_cli("run", "--suite", "smoke", "--arms", "native,container", "--invocations", "3",
                   "--out", str(out), "--no-progress", timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr[-5000:]
    (run_dir,) = [path.parent for path in out.glob("*/manifest.json")]
    return run_dir


def test_both_arms_have_every_case_and_invocation(two_arm_run: Path):
    manifest = Manifest.load(two_arm_run)
    assert manifest.status == "complete", [inv.error for inv in manifest.invocations if inv.error]
    results = load_run(two_arm_run)
    per_arm = {arm: set(map(tuple, group[["benchmark", "case", "invocation"]].drop_duplicates().values))
               for arm, group in results.groupby("arm")}
    assert set(per_arm) == {"native", "container"}
    assert per_arm["native"] == per_arm["container"]
    planned = {(inv.benchmark, inv.case, inv.invocation) for inv in manifest.invocations}
    assert per_arm["native"] == planned


def test_invocations_ran_interleaved(two_arm_run: Path):
    manifest = Manifest.load(two_arm_run)
    by_position = sorted(manifest.invocations, key=lambda inv: inv.ran_as)
    first_case = (by_position[0].benchmark, by_position[0].case)
    arms = [(inv.arm, inv.invocation) for inv in by_position if (inv.benchmark, inv.case) == first_case]
    assert arms == [("native", 1), ("container", 1), ("native", 2), ("container", 2), ("native", 3), ("container", 3)]


def test_container_fingerprint_says_docker_and_non_root(two_arm_run: Path, docker_image: str):  # noqa: F811
    envs = load_envs(two_arm_run)
    container_envs = [env for (arm, *_), env in envs.items() if arm == "container"]
    native_envs = [env for (arm, *_), env in envs.items() if arm == "native"]
    assert container_envs and native_envs
    for env in container_envs:
        assert env["container"]["detected"] is True
        assert env["container"]["engine"] == "docker"
        assert env["process"]["uid"] != 0 and env["process"]["is_root"] is False
        assert env["arm"]["image"] == docker_image and env["arm"]["kind"] == "container"
        assert env["container"]["image_identity"]["project_version"]
    for env in native_envs:
        assert env["arm"]["name"] == "native" and env["arm"]["image"] is None


def test_results_schema_is_identical_across_arms(two_arm_run: Path):
    manifest = Manifest.load(two_arm_run)
    schemas = {}
    for inv in manifest.invocations:
        frame = pd.read_parquet(two_arm_run / inv.rel_dir / "results.parquet")
        schemas.setdefault(inv.arm, set()).add(tuple((c, str(t)) for c, t in frame.dtypes.items()))
    assert schemas["native"] == schemas["container"]
    assert len(schemas["native"]) == 1
    assert [c for c, _ in next(iter(schemas["native"]))] == list(schema.RESULT_COLUMNS)


def test_manifest_records_arm_and_image(two_arm_run: Path):
    manifest = Manifest.load(two_arm_run)
    arms = {arm["name"]: arm for arm in manifest.arms}
    assert arms["container"]["engine"] == "docker" and arms["container"]["image"]
    assert arms["container"]["preflight"]


def test_missing_image_stops_the_run_before_writing(tmp_path: Path, docker_engine):  # noqa: F811
    from conftest import run_cli

    suite = tmp_path / "s.yaml"
    suite.write_text("arms: [native, {name: ghost, extends: container, image: 'benchlib-no-such-image:0'}]\n"
                     "benchmarks:\n  - {benchmark: matmul, params: smoke}\n")
    out = tmp_path / "outputs"
    done = run_cli("run", "--suite", str(suite), "--out", str(out), "--no-progress")
    assert done.returncode == 2
    assert "ghost" in done.stderr and "benchlib image build" in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_skip_unavailable_runs_the_rest_and_says_why(tmp_path: Path, docker_engine):  # noqa: F811
    from conftest import run_cli

    suite = tmp_path / "s.yaml"
    suite.write_text("invocations: 1\narms: [native, {name: ghost, extends: container, image: 'benchlib-no-such-image:0'}]\n"
                     "benchmarks:\n  - {benchmark: matmul, params: smoke}\n")
    out = tmp_path / "outputs"
    done = run_cli("run", "--suite", str(suite), "--out", str(out), "--skip-unavailable", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "skipping arm ghost" in done.stderr
    (run_dir,) = [path.parent for path in out.glob("*/manifest.json")]
    manifest = Manifest.load(run_dir)
    assert [skip["arm"] for skip in manifest.skipped_arms] == ["ghost"]
    assert {inv.arm for inv in manifest.invocations} == {"native"}
