"""Values as people read them: byte counts in binary units (``64 MiB``, ``128 GiB``) and fingerprint
values by their key (:func:`env_value`), namespace identities as whose namespace it is
(:func:`namespace_text`). Only what is shown changes: summary.csv and summary.json keep the raw values.
"""
from __future__ import annotations

import re
from typing import Any

__all__ = ["BYTE_KEYS", "NAMESPACE_PREFIX", "env_value", "human_bytes", "is_byte_key", "is_namespace_key",
           "namespace_text"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")

#: Fingerprint keys (fnmatch-free: a suffix or an exact key) whose values are byte counts.
BYTE_KEYS: tuple[str, ...] = ("_bytes", "cgroup.memory_max", "cgroup.memory_high", "cgroup.memory_current",
                              "limits.memlock.soft", "limits.memlock.hard", "limits.stack.soft",
                              "limits.stack.hard")

#: Fingerprint keys that name a namespace by its inode (``net:[4026531840]``).
NAMESPACE_PREFIX = "process.namespaces."

_INTEGER = re.compile(r"^\s*-?\d+(\.0+)?\s*$")


def human_bytes(count: float | int | str) -> str:
    """``67108864`` -> ``64 MiB``, ``137438953472`` -> ``128 GiB``, ``1536`` -> ``1.5 KiB``, ``512`` -> ``512 B``:
    binary units, whole numbers without decimals, three significant figures otherwise; text that is
    not a number comes back unchanged."""
    try:
        value = float(count)
    except (TypeError, ValueError):
        return str(count)
    if value != value or value in (float("inf"), float("-inf")):
        return str(count)
    size, unit = abs(value), 0
    while size >= 1024 and unit < len(_UNITS) - 1:
        size /= 1024
        unit += 1
    sign = "-" if value < 0 else ""
    text = f"{size:.0f}" if size == int(size) else f"{size:.3g}"
    return f"{sign}{text} {_UNITS[unit]}"


def is_byte_key(key: str) -> bool:
    """Whether a flattened fingerprint key holds a byte count (``shm.size_bytes``, ``cgroup.memory_max``)."""
    return any(key.endswith(suffix) if suffix.startswith("_") else key == suffix for suffix in BYTE_KEYS)


def is_namespace_key(key: str) -> bool:
    return key.startswith(NAMESPACE_PREFIX)


def env_value(key: str, value: Any) -> str:
    """A fingerprint value as shown: byte counts in binary units (``64 MiB``), anything else as text
    (``max``, ``(absent)`` and non-numbers unchanged)."""
    text = "" if value is None else str(value)
    if is_byte_key(key) and _INTEGER.match(text):
        return human_bytes(text)
    return text


def namespace_text(key: str, value: str, host_value: str | None, host_label: str = "host's") -> str:
    """A namespace value (``net:[4026532265]``) as whose namespace it is: ``host's network namespace``
    when it is ``host_value`` (the native arm's), ``own network namespace`` otherwise; the inode
    number says nothing more than that."""
    kind = key.removeprefix(NAMESPACE_PREFIX)
    name = {"net": "network", "mnt": "mount", "pid": "PID", "ipc": "IPC", "uts": "UTS (hostname)",
            "user": "user", "cgroup": "cgroup", "time": "time"}.get(kind, kind)
    if not value or value.startswith("("):  # (absent)
        return value
    if host_value is not None and value == host_value:
        return f"{host_label} {name} namespace"
    return f"own {name} namespace"
