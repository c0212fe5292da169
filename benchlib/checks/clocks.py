"""GPU clocks against their maximum under load, in every arm alike.

A poll is *under load* when the GPU's utilisation is at least ``load_util_pct`` (where NVML reports
it), or, where it does not, when no ``gpu_idle`` clock-event reason is set. For each arm, benchmark,
case and GPU, :func:`clock_fractions` gives the median SM and memory clock of those polls as a
fraction of the GPU's maximum from the fingerprint (``gpus.*.max_sm_clock_mhz``), the clock-event
reasons seen, and the share of loaded polls below the threshold. :func:`stuck_clock_findings` names a
case whose median falls below ``threshold`` (default 70 %) of the maximum in any arm, with the reasons
seen and what they point at, plus the causes known on DGX Spark (GB10) when that is the GPU.

This is not the per-sample throttling mark (``stats.mark_throttled``, against the run's own median
clock): a clock capped for the whole run sets its own median, so only the maximum shows it.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

from . import Finding, invocation_keys

THRESHOLD = 0.70
LOAD_UTIL_PCT = 50.0
MIN_LOADED_POLLS = 5

#: Clock-event reason -> what it points at.
REASON_HINTS: dict[str, str] = {
    "sw_power_cap": "sw_power_cap: the GPU reached its power limit (compare gpus.*.power_limit_w with "
                    "power_default_limit_w in the fingerprint)",
    "hw_slowdown": "hw_slowdown: the hardware halved the clocks or more: power delivery or temperature protection",
    "hw_power_brake_slowdown": "hw_power_brake_slowdown: the external power brake is asserted: power delivery",
    "sw_thermal_slowdown": "sw_thermal_slowdown: the GPU is too hot: check airflow and cooling",
    "hw_thermal_slowdown": "hw_thermal_slowdown: the GPU is too hot: check airflow and cooling",
    "applications_clocks_setting": "applications_clocks_setting: application or locked clocks are set below the "
                                   "maximum (nvidia-smi -ac / -lgc; ask the machine's owner)",
    "sync_boost": "sync_boost: the GPU is in a sync-boost group held to the slowest member's clock",
    "display_clock_setting": "display_clock_setting: a display clock setting limits the GPU",
}
NO_REASON_HINT = ("no clock-event reason was reported while the clock was low: the cap comes from outside the "
                  "GPU's own reasons (on DGX Spark, the power-delivery negotiation)")
#: Causes DGX Spark owners have reported for a GB10 clock stuck far below its maximum (user reports,
#: not NVIDIA documentation), shown when the GPU is a GB10.
DGX_SPARK_HINTS: tuple[str, ...] = (
    "DGX Spark, power delivery: a degraded USB-C power negotiation leaves the GPU capped at about 500-850 MHz "
    "with no error; a full power cycle (unplug the power adapter from the wall and from the Spark, wait 60 s, "
    "reconnect) renegotiates it; use the supplied power adapter and cable",
    "DGX Spark, thermals: keep the vents clear and the unit off soft surfaces; sustained heat lowers the clocks "
    "and has caused reboots",
    "DGX Spark: if the whole system stays near 30 W under load, a power-delivery controller fault has been "
    "reported on some units: contact NVIDIA support",
)
FRACTION_COLUMNS = ["arm", "benchmark", "case", "gpu_index", "gpu_name", "polls_loaded", "sm_clock_mhz",
                    "max_sm_clock_mhz", "sm_fraction", "mem_clock_mhz", "max_mem_clock_mhz", "mem_fraction",
                    "share_below", "reasons"]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _gpu_entry(env: Mapping[str, Any], gpu_index: int, uuid: str | None) -> Mapping[str, Any] | None:
    """The fingerprint's ``gpus`` entry of the GPU whose counters the telemetry of ``gpu_index`` holds."""
    gpus = env.get("gpus") if isinstance(env.get("gpus"), list) else []
    sampled = next((g for g in ((env.get("telemetry") or {}).get("gpus") or []) if g.get("gpu_index") == gpu_index), {})
    uuid = uuid or sampled.get("uuid")
    for gpu in gpus:
        if uuid and gpu.get("uuid") == uuid:
            return gpu
    for gpu in gpus:
        if sampled.get("nvml_index") is not None and gpu.get("index") == sampled.get("nvml_index"):
            return gpu
    return gpus[0] if len(gpus) == 1 else None


def loaded(telemetry: pd.DataFrame, load_util_pct: float = LOAD_UTIL_PCT) -> pd.Series:
    """Which polls were taken under load (utilisation, or no ``gpu_idle`` reason where it is unknown)."""
    util = telemetry["gpu_util_pct"] if "gpu_util_pct" in telemetry else pd.Series(math.nan, index=telemetry.index)
    reasons = telemetry["clock_event_reasons"] if "clock_event_reasons" in telemetry else pd.Series(pd.NA, index=telemetry.index)
    busy = reasons.notna() & ~reasons.fillna("").str.contains("gpu_idle", regex=False)
    return (util >= load_util_pct).where(util.notna(), busy).astype(bool)


def clock_fractions(telemetry: pd.DataFrame, envs: Mapping[tuple, Mapping[str, Any]],
                    threshold: float = THRESHOLD, load_util_pct: float = LOAD_UTIL_PCT) -> pd.DataFrame:
    """Per arm, benchmark, case and GPU: the median clocks under load as a fraction of the maximum.

    ``envs`` is keyed like :func:`benchlib.load_envs` (arm, benchmark, case, invocation). Columns:
    :data:`FRACTION_COLUMNS`; fractions are NaN where the maximum or the clock is unknown.
    """
    if telemetry.empty or "sm_clock_mhz" not in telemetry:
        return pd.DataFrame(columns=FRACTION_COLUMNS)
    keys = invocation_keys(telemetry)
    frame = telemetry.loc[loaded(telemetry, load_util_pct)].copy()
    if frame.empty:
        return pd.DataFrame(columns=FRACTION_COLUMNS)
    frame["max_sm"], frame["max_mem"], frame["gpu_name"] = math.nan, math.nan, None
    for group, rows in frame.groupby([*keys, "gpu_index"], sort=False, dropna=False):
        key = dict(zip([*keys, "gpu_index"], group if isinstance(group, tuple) else (group,)))
        env = envs.get((key.get("arm"), key.get("benchmark"), key.get("case"), key.get("invocation")), {})
        uuid = rows["gpu_uuid"].dropna().iloc[0] if "gpu_uuid" in rows and rows["gpu_uuid"].notna().any() else None
        gpu = _gpu_entry(env, int(key["gpu_index"]), uuid) or {}
        frame.loc[rows.index, "max_sm"] = _number(gpu.get("max_sm_clock_mhz"))
        frame.loc[rows.index, "max_mem"] = _number(gpu.get("max_mem_clock_mhz"))
        frame.loc[rows.index, "gpu_name"] = gpu.get("name") if isinstance(gpu.get("name"), str) else None
    frame["below"] = (frame["sm_clock_mhz"] / frame["max_sm"]) < threshold
    out = []
    for group, rows in frame.groupby([k for k in ("arm", "benchmark", "case") if k in frame] + ["gpu_index"],
                                     sort=False, dropna=False):
        key = dict(zip([k for k in ("arm", "benchmark", "case") if k in frame] + ["gpu_index"], group))
        sm, mem = rows["sm_clock_mhz"].median(), rows["mem_clock_mhz"].median()
        max_sm, max_mem = rows["max_sm"].max(), rows["max_mem"].max()
        reasons = sorted({name for text in rows["clock_event_reasons"].dropna() for name in str(text).split("|")
                          if name and name != "gpu_idle"}) if "clock_event_reasons" in rows else []
        out.append({"arm": key.get("arm"), "benchmark": key.get("benchmark"), "case": key.get("case"),
                    "gpu_index": key["gpu_index"], "gpu_name": rows["gpu_name"].dropna().iloc[0]
                    if rows["gpu_name"].notna().any() else None, "polls_loaded": len(rows),
                    "sm_clock_mhz": sm, "max_sm_clock_mhz": max_sm, "sm_fraction": sm / max_sm if max_sm else math.nan,
                    "mem_clock_mhz": mem, "max_mem_clock_mhz": max_mem,
                    "mem_fraction": mem / max_mem if max_mem else math.nan,
                    "share_below": float(rows["below"].mean()), "reasons": "|".join(reasons)})
    return pd.DataFrame(out, columns=FRACTION_COLUMNS)


def _describe(row: pd.Series, which: str) -> str:
    clock, top = row[f"{which}_clock_mhz"], row[f"max_{which}_clock_mhz"]
    return f"{row['arm']} {row[f'{which}_fraction']:.0%} ({clock:.0f} of {top:.0f} MHz)"


def stuck_clock_findings(fractions: pd.DataFrame, threshold: float = THRESHOLD,
                         min_loaded_polls: int = MIN_LOADED_POLLS) -> list[Finding]:
    """One finding per benchmark and case where any arm's median clock under load is below ``threshold``
    of the GPU's maximum (SM or memory clock), naming every arm so affected and how the others ran."""
    findings: list[Finding] = []
    if fractions.empty:
        return findings
    usable = fractions[fractions["polls_loaded"] >= min_loaded_polls]
    for (benchmark, case), rows in usable.groupby(["benchmark", "case"], sort=False, dropna=False):
        low = {which: rows[rows[f"{which}_fraction"] < threshold] for which in ("sm", "mem")}
        stuck_arms = sorted(set(low["sm"]["arm"]) | set(low["mem"]["arm"]))
        if not stuck_arms:
            continue
        every_arm = set(stuck_arms) == set(rows["arm"])
        parts = []
        for which, label in (("sm", "SM clock"), ("mem", "memory clock")):
            if not low[which].empty:
                seen = ", ".join(_describe(row, which) for _, row in low[which].iterrows())
                parts.append(f"{label} {seen} of its maximum")
        where = ("in every arm" if every_arm and len(rows["arm"].unique()) > 1
                 else "in the only arm" if every_arm else f"in {', '.join(stuck_arms)}")
        message = (f"{benchmark} {case}: the GPU ran below {threshold:.0%} of its maximum clock under load {where}: "
                   f"{'; '.join(parts)} (median of the loaded polls).")
        if every_arm and len(rows["arm"].unique()) > 1:
            message += (" Every arm is slowed alike, so their ratio stays near 1: a verdict of no container "
                        "overhead does not mean this GPU runs at its speed.")
        elif not every_arm:
            healthy = rows[~rows["arm"].isin(stuck_arms)]
            message += (" The other arms ran at " + ", ".join(_describe(row, "sm") for _, row in healthy.iterrows())
                        + ": the difference between arms is the clock, not the container.")
        reasons = sorted({name for text in rows[rows["arm"].isin(stuck_arms)]["reasons"] for name in text.split("|") if name})
        hints = [REASON_HINTS.get(name, f"{name}: reported by the driver") for name in reasons] or [NO_REASON_HINT]
        if rows["gpu_name"].fillna("").str.contains(r"\bGB10\b", regex=True).any():
            hints += DGX_SPARK_HINTS
        findings.append(Finding(
            "stuck_clock", "problem", str(benchmark), str(case), tuple(stuck_arms), message, tuple(hints),
            {"reasons": reasons, "threshold": threshold,
             "sm_fraction": {r["arm"]: float(r["sm_fraction"]) for _, r in rows.iterrows()},
             "mem_fraction": {r["arm"]: float(r["mem_fraction"]) for _, r in rows.iterrows()}},
        ))
    return findings
