"""Load a run: its manifest, all its invocations' results, telemetry and fingerprints as DataFrames, and
its summary; every file's format version is checked (benchlib.formats)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from . import formats, paths, schema
from .layout import ENV_FILE, MANIFEST_FILE, RESULTS_FILE, SUMMARY_JSON, TELEMETRY_FILE, find_runs
from .errors import BenchlibError
from .manifest import COMPLETE, FAILED, Invocation, Manifest

__all__ = ["default_run_dir", "load_envs", "load_manifest", "load_run", "load_summary", "load_telemetry",
           "read_results"]


def load_manifest(run_dir: str | Path) -> Manifest:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BenchlibError(f"run directory {run_dir} does not exist.")
    return Manifest.load(run_dir)


def _complete(run_dir: Path) -> list[Invocation]:
    return [inv for inv in load_manifest(run_dir).invocations if inv.status == COMPLETE]


def load_run(run_dir: str | Path) -> pd.DataFrame:
    """Every complete invocation's results.parquet, as one tidy DataFrame in the results schema."""
    run_dir = Path(run_dir)
    frames = [formats.read_parquet(run_dir / inv.rel_dir / RESULTS_FILE, "results") for inv in _complete(run_dir)]
    frames = [frame for frame in frames if not frame.empty]
    if not frames:
        return schema.empty_results()
    return schema.conform(pd.concat(frames, ignore_index=True))


def load_telemetry(run_dir: str | Path) -> pd.DataFrame:
    """All telemetry of a run, each row tagged with the invocation it was taken in."""
    run_dir = Path(run_dir)
    frames = []
    for inv in _complete(run_dir):
        path = run_dir / inv.rel_dir / TELEMETRY_FILE
        frame = formats.read_parquet(path, "telemetry") if path.is_file() else schema.empty_telemetry()
        if frame.empty:
            continue
        frames.append(frame.assign(run_id=Path(run_dir).name, arm=inv.arm, benchmark=inv.benchmark,
                                   case=inv.case, invocation=inv.invocation))
    if not frames:
        keys = pd.DataFrame({key: pd.Series(dtype="string") for key in schema.INVOCATION_KEYS})
        return pd.concat([schema.empty_telemetry(), keys], axis=1)
    return pd.concat(frames, ignore_index=True)


def load_envs(run_dir: str | Path) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """Fingerprints keyed by (arm, benchmark, case, invocation): of every complete invocation, and of
    every failed one that wrote its fingerprint before failing (an arm that always fails still shows
    what differs in it; a damaged file of a failed invocation is left out)."""
    run_dir = Path(run_dir)
    envs = {}
    for inv in load_manifest(run_dir).invocations:
        path = run_dir / inv.rel_dir / ENV_FILE
        if inv.status == COMPLETE and path.is_file():
            envs[(inv.arm, inv.benchmark, inv.case, inv.invocation)] = formats.read_json(path, "env")
        elif inv.status == FAILED and path.is_file():
            try:
                envs[(inv.arm, inv.benchmark, inv.case, inv.invocation)] = formats.read_json(path, "env")
            except formats.FormatError:
                continue
    return envs


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    """The run's summary.json (written by ``benchlib report``), its format version checked."""
    path = Path(run_dir) / SUMMARY_JSON
    if not path.is_file():
        raise BenchlibError(f"{run_dir} has no {SUMMARY_JSON}; build it with `benchlib report {run_dir}`.")
    return formats.read_json(path, "summary")


def default_run_dir() -> Path:
    """The bundled sample (``outputs/sample/``, or the latest run in it) if present, else the latest
    run under ``outputs/``."""
    outputs = paths.default_outputs()
    sample = outputs / "sample"
    if (sample / MANIFEST_FILE).is_file():
        return sample
    for folder in (sample, outputs):
        runs = sorted(find_runs(folder), key=lambda p: p.stat().st_mtime)
        if runs:
            return runs[-1]
    raise BenchlibError(f"no run under {outputs}: run `benchlib run` first, or pass run_dir.")


def read_results(run_dir: Path, manifest: Manifest) -> tuple[pd.DataFrame, list[Invocation]]:
    """Results of every complete invocation that has them, and the complete ones that do not."""
    complete = [inv for inv in manifest.invocations if inv.status == COMPLETE]
    missing = [inv for inv in complete if not (run_dir / inv.rel_dir / RESULTS_FILE).is_file()]
    frames = [formats.read_parquet(run_dir / inv.rel_dir / RESULTS_FILE, "results") for inv in complete if inv not in missing]
    frames = [frame for frame in frames if not frame.empty]
    results = schema.conform(pd.concat(frames, ignore_index=True)) if frames else schema.empty_results()
    return results, missing
