"""Why the GPU was throttled, in words: the NVML clock-event reasons (telemetry's
``clock_event_reasons``) of the polls :func:`benchlib.stats.throttled_polls` counts as throttled, per
arm, benchmark and case, most frequent first (``software power cap 70 %; SM clock under 75 % of its
median (no reason reported) 30 %``). The shares themselves come from :func:`benchlib.stats.compare_with_without_throttled`.
"""
from __future__ import annotations

from collections import Counter

import pandas as pd

from .stats import BENIGN_CLOCK_EVENT_REASONS, throttled_polls

__all__ = ["LOW_CLOCK", "MINOR", "REASON_NAMES", "reason_name", "throttle_reasons"]

#: NVML clock-event reason (benchlib.telemetry) -> what people call it.
REASON_NAMES = {
    "sw_power_cap": "software power cap",
    "hw_slowdown": "hardware slowdown",
    "sync_boost": "sync boost",
    "sw_thermal_slowdown": "software thermal slowdown",
    "hw_thermal_slowdown": "hardware thermal slowdown",
    "hw_power_brake_slowdown": "hardware power brake",
    "display_clock_setting": "display clock setting",
}

#: A throttled poll with no reason set: its SM clock was below the share of its median that
#: benchlib.stats.mark_throttled uses.
LOW_CLOCK = "SM clock under 75 % of its median (no reason reported)"

_KEYS = ["arm", "benchmark", "case"]
MINOR = 0.05  # a reason behind fewer of the throttled polls is left unsaid


def reason_name(reason: str) -> str:
    return REASON_NAMES.get(reason, f"NVML reason {reason}")


def throttle_reasons(telemetry: pd.DataFrame, limit: int = 2) -> pd.DataFrame:
    """Columns arm, benchmark, case, reasons: the ``limit`` most frequent reasons among the throttled
    polls of each (arm, benchmark, case), with their share of those polls (those under :data:`MINOR`
    left out); no row where none was throttled, an empty frame without telemetry."""
    columns = [*_KEYS, "reasons"]
    if telemetry.empty or not set(_KEYS) <= set(telemetry.columns):
        return pd.DataFrame(columns=columns)
    bad = throttled_polls(telemetry)
    polls = telemetry.loc[bad, [*_KEYS, "clock_event_reasons"]]
    rows = []
    for (arm, benchmark, case), part in polls.groupby(_KEYS, sort=False, dropna=False):
        counts: Counter[str] = Counter()
        for value in part["clock_event_reasons"].fillna("").astype(str):
            named = [reason_name(name.strip()) for name in value.split("|")
                     if name.strip() not in BENIGN_CLOCK_EVENT_REASONS]
            counts.update(named or [LOW_CLOCK])
        total = len(part)
        common = counts.most_common(limit)
        kept = [(name, count) for name, count in common if count >= MINOR * total] or common[:1]
        text = "; ".join(f"{name} {100 * count / total:.0f} %" for name, count in kept)
        rows.append({"arm": arm, "benchmark": benchmark, "case": case, "reasons": text})
    return pd.DataFrame(rows, columns=columns)
