"""Versioned file formats: what a run writes carries a schema version, and readers check it.

| format | file | where the version is |
| --- | --- | --- |
| ``manifest`` | ``manifest.json`` | key ``schema_version`` |
| ``results`` | ``results.parquet`` | parquet schema metadata ``benchlib`` (JSON ``{"format", "schema_version"}``) |
| ``telemetry`` | ``telemetry.parquet`` | the same |
| ``env`` | ``env.json`` | key ``schema_version`` |
| ``summary`` | ``summary.json`` | key ``schema_version`` |
| ``diagnosis`` | ``diagnosis/<stamp>-diagnose/diagnosis.json`` | key ``schema_version`` |

Every format is at version 1, the layout documented in ``benchlib.schema`` (results, telemetry),
``benchlib.manifest`` and ``benchlib.fingerprint``. A file written before versions were recorded
(the bundled sample ``outputs/sample`` among them) has none and reads as version 1. A change that an
older reader would misread bumps the format's entry in :data:`VERSIONS`; :data:`OLDEST` says which
older versions this benchlib still reads. A file outside that range is refused with one sentence
that names it and what to do (:class:`FormatError`, exit 2 on the command line).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from .errors import BenchlibError

__all__ = ["FormatError", "OLDEST", "PARQUET_KEY", "VERSIONS", "VERSION_KEY", "check", "parquet_metadata",
           "parquet_version", "read_json", "read_parquet", "stamped"]

#: format -> the version this benchlib writes (manifest 2: a sequential run's ``sequential`` and ``cases``).
VERSIONS: dict[str, int] = {"manifest": 2, "results": 1, "telemetry": 1, "env": 1, "summary": 1, "diagnosis": 1}
#: format -> the oldest version this benchlib still reads.
OLDEST: dict[str, int] = {"manifest": 1, "results": 1, "telemetry": 1, "env": 1, "summary": 1, "diagnosis": 1}
#: The key of the version in a JSON file.
VERSION_KEY = "schema_version"
#: The parquet schema-metadata key holding ``{"format": ..., "schema_version": ...}``.
PARQUET_KEY = b"benchlib"
#: The version of a file that records none: written before versions were recorded.
UNVERSIONED = 1


class FormatError(BenchlibError):
    """A file in a format version this benchlib does not read."""


def check(fmt: str, version: Any, path: str | Path) -> int:
    """``version`` as an int when this benchlib reads it; FormatError (one sentence) otherwise."""
    from . import __version__

    if version is None:
        return UNVERSIONED
    if isinstance(version, bool) or not isinstance(version, int):
        raise FormatError(f"{path} has schema version {version!r}, which is not a whole number: the file is damaged; "
                          "run that part of the suite again (benchlib run --resume re-runs damaged invocations).")
    if version > VERSIONS[fmt]:
        raise FormatError(f"{path} is {fmt} format version {version}, newer than benchlib {__version__} reads (up to "
                          f"{VERSIONS[fmt]}); update benchlib (git pull, then make setup) to read it.")
    if version < OLDEST[fmt]:
        raise FormatError(f"{path} is {fmt} format version {version}, older than benchlib {__version__} reads (from "
                          f"{OLDEST[fmt]}); read it with the benchlib that wrote it (manifest.json names its version) "
                          "or run the suite again.")
    return version


def stamped(fmt: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON record with this benchlib's version of ``fmt`` first."""
    return {VERSION_KEY: VERSIONS[fmt], **{k: v for k, v in record.items() if k != VERSION_KEY}}


def read_json(path: str | Path, fmt: str) -> dict[str, Any]:
    """A JSON object file of format ``fmt``, its version checked (the key stays in the record)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); the file is damaged: run that "
                          "part of the suite again.") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path} holds a JSON {type(data).__name__}, not an object; it is not a benchlib {fmt} file.")
    check(fmt, data.get(VERSION_KEY), path)
    return data


def parquet_metadata(fmt: str) -> dict[bytes, bytes]:
    """The schema metadata a parquet file of ``fmt`` is written with."""
    return {PARQUET_KEY: json.dumps({"format": fmt, VERSION_KEY: VERSIONS[fmt]}).encode()}


def parquet_version(path: str | Path, fmt: str) -> int:
    """The checked version of a parquet file of ``fmt`` (its footer only is read)."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    raw = metadata.get(PARQUET_KEY)
    if raw is None:
        return UNVERSIONED
    try:
        record = json.loads(raw)
    except json.JSONDecodeError:
        record = {VERSION_KEY: raw.decode(errors="replace")}
    if record.get("format", fmt) != fmt:
        raise FormatError(f"{path} holds benchlib {record.get('format')} data, not {fmt}; the file was misplaced.")
    return check(fmt, record.get(VERSION_KEY), path)


def read_parquet(path: str | Path, fmt: str, **kwargs: Any) -> pd.DataFrame:
    """A parquet file of ``fmt`` as a DataFrame, its version checked first."""
    parquet_version(path, fmt)
    return pd.read_parquet(path, **kwargs)
