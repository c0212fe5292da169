"""Atomic writes: a reader never sees a half-written file, and a crash leaves the old one intact."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd


def _umask_mode() -> int:
    """The mode ``open()`` would give a new file (mkstemp's is 0600, unreadable by a container UID)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_mode()


TEMP_GLOB = ".*.tmp"  # the names _write_via_temp gives its temporary files: .<name>.<random>.tmp


def _write_via_temp(path: Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    return _write_via_temp(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet(path: Path, frame: pd.DataFrame, metadata: dict[bytes, bytes] | None = None) -> Path:
    """A DataFrame as parquet; ``metadata`` is added to the schema's (benchlib.formats: the version)."""
    if not metadata:
        return _write_via_temp(path, lambda tmp: frame.to_parquet(tmp, index=False, engine="pyarrow"))
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    return write_arrow_parquet(path, table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata}))


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files a killed writer left under ``folder`` (a SIGKILL skips the cleanup)."""
    leftovers = sorted(path for path in Path(folder).rglob(TEMP_GLOB) if path.is_file())
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def write_arrow_parquet(path: Path, table: Any) -> Path:
    """A pyarrow Table as parquet, its schema (and pandas metadata) exactly as given."""
    import pyarrow.parquet as pq

    return _write_via_temp(path, lambda tmp: pq.write_table(table, tmp))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
