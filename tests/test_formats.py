"""Versioned formats: what a run writes carries its version, readers refuse what they cannot read in
one sentence, and the committed sample (written before versions were recorded) still loads."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from benchlib import _atomic, formats, layout, load_envs, load_run, load_telemetry, schema
from benchlib.bench import write_invocation
from benchlib.formats import FormatError
from benchlib.manifest import Manifest
from benchlib.redact import redact_file
from benchlib.results import load_summary
from conftest import REPO, run_cli

SAMPLE = REPO / "outputs" / "sample"


def test_the_committed_sample_loads():
    manifest = Manifest.load(SAMPLE)
    assert manifest.schema_version == 1 and len(manifest.invocations) == 100
    results = load_run(SAMPLE)
    assert list(results.columns) == list(schema.RESULT_COLUMNS) and len(results) > 1000
    assert set(results["arm"]) == {"native", "isolated"}
    telemetry = load_telemetry(SAMPLE)
    assert len(telemetry) > 1000 and telemetry["sm_clock_mhz"].notna().any()
    envs = load_envs(SAMPLE)
    assert len(envs) == 100 and all("versions" in env for env in envs.values())
    # unversioned files read as version 1, the layout they were written in
    first = SAMPLE / manifest.invocations[0].rel_dir
    assert formats.parquet_version(first / layout.RESULTS_FILE, "results") == 1
    assert formats.VERSION_KEY not in json.loads((first / layout.ENV_FILE).read_text())


def _invocation(tmp_path: Path) -> Path:
    folder = tmp_path / "inv-1"
    row = {"run_id": "r", "arm": "native", "benchmark": "matmul", "case": "n=2", "params": "{}", "invocation": 1,
           "sample": 0, "metric": "time", "unit": "s", "value": 0.5, "work": 16.0, "work_unit": "FLOP",
           "start_ns": 1, "end_ns": 2, "device": "cpu", "status": "ok", "note": ""}
    write_invocation(folder, pd.DataFrame([row]), schema.empty_telemetry(), {"versions": {"python": "3"}})
    return folder


def test_what_an_invocation_writes_carries_its_format_version(tmp_path: Path):
    folder = _invocation(tmp_path)
    for name, fmt in ((layout.RESULTS_FILE, "results"), (layout.TELEMETRY_FILE, "telemetry")):
        record = json.loads(pq.read_schema(folder / name).metadata[formats.PARQUET_KEY])
        assert record == {"format": fmt, "schema_version": formats.VERSIONS[fmt]}
    env = json.loads((folder / layout.ENV_FILE).read_text())
    assert next(iter(env)) == "schema_version" and env["schema_version"] == formats.VERSIONS["env"]
    assert list(formats.read_parquet(folder / layout.RESULTS_FILE, "results").columns) == list(schema.RESULT_COLUMNS)


def _with_version(path: Path, version) -> None:
    table = pq.read_table(path)
    metadata = {**(table.schema.metadata or {}),
                formats.PARQUET_KEY: json.dumps({"format": path.stem, "schema_version": version}).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path)


@pytest.mark.parametrize("name", [layout.RESULTS_FILE, layout.TELEMETRY_FILE, layout.ENV_FILE])
def test_a_newer_file_is_refused_in_one_sentence_naming_it(tmp_path: Path, name: str):
    folder = _invocation(tmp_path)
    fmt = {"results.parquet": "results", "telemetry.parquet": "telemetry", "env.json": "env"}[name]
    path = folder / name
    if name.endswith(".parquet"):
        _with_version(path, 7)
        read = lambda: formats.read_parquet(path, fmt)  # noqa: E731
    else:
        path.write_text(json.dumps({"schema_version": 7, "versions": {}}))
        read = lambda: formats.read_json(path, fmt)  # noqa: E731
    with pytest.raises(FormatError) as caught:
        read()
    message = str(caught.value)
    assert message.startswith(f"{path} is {fmt} format version 7, newer than benchlib")
    assert "update benchlib" in message and message.count(". ") == 0 and message.endswith(".")


def test_an_older_or_damaged_version_says_what_to_do(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(formats.OLDEST, "summary", 2)
    monkeypatch.setitem(formats.VERSIONS, "summary", 2)
    with pytest.raises(FormatError, match=r"summary format version 1, older than benchlib .* reads \(from 2\); read it "
                                          r"with the benchlib that wrote it"):
        formats.check("summary", 1, "x/summary.json")
    with pytest.raises(FormatError, match=r"schema version '2', which is not a whole number"):
        formats.check("summary", "2", "x/summary.json")
    assert formats.check("summary", None, "x/summary.json") == formats.UNVERSIONED


def test_a_run_with_a_newer_manifest_is_refused_by_every_reader(tmp_path: Path):
    run_dir = tmp_path / SAMPLE.name
    shutil.copytree(SAMPLE, run_dir, ignore=shutil.ignore_patterns("*.ipynb", "*.log", "telemetry.parquet"))
    manifest = json.loads((run_dir / layout.MANIFEST_FILE).read_text())
    newer = formats.VERSIONS["manifest"] + 1
    (run_dir / layout.MANIFEST_FILE).write_text(json.dumps({**manifest, "schema_version": newer}))
    with pytest.raises(FormatError, match=f"manifest format version {newer}, newer than"):
        load_run(run_dir)
    done = run_cli("report", str(run_dir), "--docs", str(tmp_path / "docs"))
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {run_dir / layout.MANIFEST_FILE} is manifest format version {newer}, newer than")
    assert not (tmp_path / "docs").exists(), "nothing written"


def test_summary_json_is_versioned_and_checked(tmp_path: Path):
    path = tmp_path / layout.SUMMARY_JSON
    path.write_text(json.dumps(formats.stamped("summary", {"run_id": "r", "schema_version": 99})))
    assert load_summary(tmp_path) == {"schema_version": formats.VERSIONS["summary"], "run_id": "r"}
    path.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(FormatError, match="summary format version 99"):
        load_summary(tmp_path)


def test_parquet_metadata_survives_redaction(tmp_path: Path):
    path = tmp_path / "results.parquet"
    frame = pd.DataFrame({"note": ["token=ghp_" + "a" * 36], "value": np.array([1.0])})
    _atomic.write_parquet(path, frame, formats.parquet_metadata("results"))
    assert redact_file(path)
    assert formats.parquet_version(path, "results") == 1
    assert "ghp_" not in pd.read_parquet(path)["note"].iloc[0]
