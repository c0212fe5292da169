"""The report's one environment table and its system header, from the fingerprints (env.json, via
benchlib.envdiff) and the manifest's arm records.

:func:`system_frame`: per arm, the GPU, driver, CUDA, torch, Python, CPU, OS, container engine and
version, image. :func:`env_frame`: every key that differs between the arms (or varies within one),
known mechanisms first and the keys that only say which arm it is (engine, image, namespaces) last,
with the effect a difference belongs to (isolation: the isolated arm differs; stack: the rootfs arm;
container: the container arm; another arm by its name); values as read (``64 MiB``; a namespace as
``own network namespace`` or ``host's``, never its inode number). summary.json keeps envdiff's raw
table.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from .envdiff import ARM_IDENTITY, representative
from .units import env_value, is_namespace_key, namespace_text

__all__ = ["EFFECTS_OF_KIND", "MAX_VALUE", "SYSTEM_FACTS", "env_frame", "system_frame"]

#: Arm kind -> the effect a difference in that arm belongs to (benchlib.stats.decompose's names).
EFFECTS_OF_KIND = {"isolated": "isolation", "rootfs": "stack", "container": "container"}

#: Longer values are cut for the page (summary.json keeps them whole).
MAX_VALUE = 120

#: (row title, fingerprint keys joined with " / " when several are present).
SYSTEM_FACTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("NVIDIA driver", ("versions.nvidia_driver",)),
    ("CUDA (driver API / torch's runtime)", ("versions.cuda_driver", "versions.torch_cuda_runtime")),
    ("torch", ("versions.torch",)),
    ("cuBLAS / cuDNN", ("versions.cublas", "versions.cudnn")),
    ("Python", ("python.version",)),
    ("CPU", ("cpu.model",)),
    ("OS / kernel", ("host.os", "host.kernel")),
)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def _gpus(values: Mapping[str, str]) -> str:
    names = [value for key, value in sorted(values.items()) if key.startswith("gpus.") and key.endswith(".name")]
    if not names:
        return "none seen"
    counts = {name: names.count(name) for name in dict.fromkeys(names)}
    return ", ".join(f"{count} × {name}" if count > 1 else name for name, count in counts.items())


def _engine(spec: Mapping[str, Any]) -> str:
    engine = str(spec.get("engine") or "unknown")
    if engine == "host":
        return "none (on the host)"
    preflight = spec.get("preflight") or {}
    version = preflight.get("engine_version") or preflight.get("version")
    return f"{engine} {version}" if version else engine


def _image(spec: Mapping[str, Any]) -> str:
    preflight = spec.get("preflight") or {}
    image = spec.get("image")
    identity = preflight.get("image_id") or preflight.get("image_digest")
    if image:
        return f"{image} ({str(identity)[:19]})" if identity else str(image)
    kind = spec.get("kind")
    if kind == "rootfs":
        return f"an exported image's files{f' ({str(identity)[:19]})' if identity else ''}"
    return "none: the host's own files"


def system_frame(envs: Mapping[tuple, Mapping[str, Any]], arm_specs: Sequence[Mapping[str, Any]],
                 arms: Sequence[str]) -> pd.DataFrame:
    """Rows: GPU, then :data:`SYSTEM_FACTS`, container engine and version, image; a column per arm
    (``(not recorded)`` where its fingerprints lack the key, e.g. no invocation of it ran)."""
    values = representative(envs)
    specs = {str(spec.get("name")): spec for spec in arm_specs}
    rows: dict[str, dict[str, str]] = {"GPU": {}}
    for title, _ in SYSTEM_FACTS:
        rows[title] = {}
    rows["container engine"], rows["image"] = {}, {}
    for arm in arms:
        seen = values.get(arm, {})
        rows["GPU"][arm] = _gpus(seen) if seen else "(not recorded)"
        for title, keys in SYSTEM_FACTS:
            found = [seen[key] for key in keys if seen.get(key) not in (None, "None", "(absent)")]
            rows[title][arm] = " / ".join(found) if found else "(not recorded)"
        spec = specs.get(arm, {})
        rows["container engine"][arm] = _engine(spec)
        rows["image"][arm] = _image(spec)
    frame = pd.DataFrame([{"": title, **{arm: _cut(cells.get(arm, "")) for arm in arms}} for title, cells in rows.items()])
    return frame


def env_frame(diff: pd.DataFrame, arms: Sequence[str], baseline: str | None, kinds: Mapping[str, str]) -> pd.DataFrame:
    """envdiff.env_diff as read: columns key, known mechanism, effect, one per arm, why it matters (once
    per mechanism), varies within. Namespace keys become whose namespace it is, against the native arm
    (else the baseline), and are left out where that says no difference."""
    arms = [arm for arm in arms if arm in diff.columns]
    columns = ["key", "known mechanism", "effect", *arms, "why it matters", "varies within"]
    if diff.empty or not arms:
        return pd.DataFrame(columns=columns)
    reference = next((arm for arm in arms if kinds.get(arm) == "native"), baseline if baseline in arms else arms[0])
    label = "host's" if kinds.get(reference) == "native" else f"{reference}'s"
    base = baseline if baseline in arms else arms[0]
    rows = []
    for row in diff.to_dict("records"):
        key = str(row["key"])
        raw = {arm: str(row[arm]) for arm in arms}
        if is_namespace_key(key):
            shown = {arm: namespace_text(key, raw[arm], raw[reference], label) for arm in arms}
            if len(set(shown.values())) == 1 and not row.get("varies_in"):
                continue
        else:
            shown = {arm: _cut(env_value(key, raw[arm])) for arm in arms}
        differing = [arm for arm in arms if arm != base and raw[arm] != raw[base]]
        effects = list(dict.fromkeys(EFFECTS_OF_KIND.get(kinds.get(arm, ""), arm) for arm in differing))
        mechanism = row.get("mechanism")
        mechanism = mechanism if isinstance(mechanism, str) else ""
        rows.append({"key": key, "known mechanism": mechanism,
                     "effect": " and ".join(effects) if effects else "varies only",
                     **shown, "why it matters": row.get("why") if isinstance(row.get("why"), str) else "",
                     "varies within": row.get("varies_in") or "", "_last": mechanism == ARM_IDENTITY})
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    frame = frame.iloc[frame["_last"].argsort(kind="stable")].reset_index(drop=True)
    repeated = frame["known mechanism"].ne("") & frame["known mechanism"].duplicated()
    frame["why it matters"] = frame["why it matters"].mask(repeated, "")
    return frame[columns]
