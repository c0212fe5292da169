"""Load a collected cluster run: every shard's results and telemetry, with the slot of every row.

A fleet has many small files (64 nodes x 8 GPUs x the suite's invocations, two files each): read
one by one on the host that collects, that is minutes. So each task, once its shard has run,
consolidates it (:func:`consolidate_shard`): ``<shard>/shard-results.parquet`` and
``shard-telemetry.parquet`` (polls tagged with their invocation's keys) plus ``shard-index.json``,
the checksum of every invocation's results file they hold. The work is spread over the nodes, and
:func:`load_fleet` reads two files per shard. A shard whose consolidation is missing or stale (its
manifest lists other invocations or other checksums, e.g. after a resume) is read file by file,
so the answer is the same either way.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import _atomic, schema
from ..layout import RESULTS_FILE, TELEMETRY_FILE
from ..errors import BenchlibError
from ..fleet import with_slots
from ..manifest import COMPLETE, Invocation, Manifest
from . import layout
from .layout import Slot
from .shards import shard_run_id

SHARD_RESULTS, SHARD_TELEMETRY, SHARD_INDEX = "shard-results.parquet", "shard-telemetry.parquet", "shard-index.json"
READ_THREADS = 8


def _read(path: Path) -> pa.Table | None:
    return pq.read_table(path) if path.is_file() else None


def _index(invocations: list[Invocation]) -> dict[str, str | None]:
    """What a consolidation holds: every complete invocation's folder (inside its shard) and the
    checksum of its results file."""
    return {f"{inv.arm}/{inv.benchmark}/{inv.case}/inv-{inv.invocation}": inv.files.get(RESULTS_FILE)
            for inv in invocations}


def _tagged_telemetry(table: pa.Table, run_id: str, inv: Invocation) -> pa.Table:
    keys = {"run_id": run_id, "arm": inv.arm, "benchmark": inv.benchmark, "case": inv.case,
            "invocation": inv.invocation}
    for name, value in keys.items():
        table = table.append_column(name, pa.array([value] * table.num_rows))
    return table


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    tables = [table for table in tables if table is not None and table.num_rows]
    return pa.concat_tables(tables, promote_options="default") if tables else None


def _read_invocations(folder: Path, run_id: str, invocations: list[Invocation],
                      pool: ThreadPoolExecutor) -> tuple[pa.Table | None, pa.Table | None]:
    """One shard's results and tagged telemetry, read file by file (``folder`` is the shard's)."""
    inside = [folder / f"{inv.arm}/{inv.benchmark}/{inv.case}/inv-{inv.invocation}" for inv in invocations]
    results = list(pool.map(_read, (path / RESULTS_FILE for path in inside)))
    polls = list(pool.map(_read, (path / TELEMETRY_FILE for path in inside)))
    tagged = [_tagged_telemetry(table, run_id, inv) for inv, table in zip(invocations, polls)
              if table is not None and table.num_rows]
    return _concat(results), _concat(tagged)


def consolidate_shard(shard: Path) -> Path | None:
    """Write a shard's two consolidated files and their index (see the module docstring); None when the
    shard has no complete invocation yet."""
    shard = Path(shard)
    manifest = Manifest.load(shard)
    complete = [inv for inv in manifest.invocations if inv.status == COMPLETE]
    if not complete:
        return None
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        results, telemetry = _read_invocations(shard, manifest.run_id, complete, pool)
    return write_consolidated(shard, manifest.run_id, complete, results, telemetry)


def write_consolidated(shard: Path, run_id: str, complete: list[Invocation], results: pa.Table | None,
                       telemetry: pa.Table | None) -> Path:
    """A shard's consolidated files and the index saying which invocations they hold (written last,
    so a reader never trusts files the index does not describe)."""
    if results is not None:
        _atomic.write_arrow_parquet(Path(shard) / SHARD_RESULTS, results)
    if telemetry is not None:
        _atomic.write_arrow_parquet(Path(shard) / SHARD_TELEMETRY, telemetry)
    return _atomic.write_json(Path(shard) / SHARD_INDEX, {"run_id": run_id, "invocations": _index(complete),
                                                           "results": results is not None,
                                                           "telemetry": telemetry is not None})


def _consolidated(folder: Path, invocations: list[Invocation]) -> tuple[pa.Table | None, pa.Table | None] | None:
    try:
        index = json.loads((folder / SHARD_INDEX).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if index.get("invocations") != _index(invocations):
        return None
    results = _read(folder / SHARD_RESULTS) if index.get("results") else None
    telemetry = _read(folder / SHARD_TELEMETRY) if index.get("telemetry") else None
    if (index.get("results") and results is None) or (index.get("telemetry") and telemetry is None):
        return None
    return results, telemetry


def load_fleet(run_dir: str | Path, threads: int = READ_THREADS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, telemetry) of every complete invocation of a collected cluster run; results carry
    ``node`` and ``gpu``, telemetry the invocation keys with each shard's run id."""
    run_dir = Path(run_dir)
    manifest = Manifest.load(run_dir)
    invocations = [inv for inv in manifest.invocations if inv.status == COMPLETE]
    if invocations and not all(inv.shard for inv in invocations):
        raise BenchlibError(f"{run_dir} is not a run collected from a cluster (its invocations name no shard); "
                            "load it with benchlib.load_run.")
    by_shard: dict[str, list[Invocation]] = {}
    for inv in invocations:
        by_shard.setdefault(inv.shard, []).append(inv)
    result_tables, telemetry_tables = [], []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        folders = {shard: layout.shard_dir(run_dir, Slot.parse(shard)) for shard in by_shard}
        quick = dict(zip(by_shard, pool.map(lambda shard: _consolidated(folders[shard], by_shard[shard]), by_shard)))
        for shard, mine in by_shard.items():
            tables = quick[shard] or _read_invocations(folders[shard], shard_run_id(manifest.run_id,
                                                                                   Slot.parse(shard)), mine, pool)
            result_tables.append(tables[0])
            telemetry_tables.append(tables[1])
    results, telemetry = _concat(result_tables), _concat(telemetry_tables)
    frame = schema.conform(results.to_pandas()) if results is not None else schema.empty_results()
    polls = telemetry.to_pandas() if telemetry is not None else pd.DataFrame(
        {**{k: pd.Series(dtype=v) for k, v in schema.TELEMETRY_COLUMNS.items()},
         **{k: pd.Series(dtype="string") for k in schema.INVOCATION_KEYS}})
    if frame.empty:
        return frame.assign(node=pd.Series(dtype="string"), gpu=pd.Series(dtype="int64")), polls
    return with_slots(frame), polls
