"""Wording: every sentence the analysis says about numbers, in one place.

Verdicts of a comparison and the seed's bands, the reading of a decomposition, the phrasing of
ratios, overheads and named cases, and what the decomposition lacks. The numbers come from
:mod:`benchlib.stats` and :mod:`benchlib.numbers`; nothing here computes a statistic.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from . import figures
from .numbers import slower_rows
from .stats import EFFECTS, ROLES

__all__ = ["BANDS", "DECOMPOSITION_TITLES", "DOMINATED_SHARE", "FASTER_BAND", "band", "decomposition_reading",
           "group_answer", "image_mismatch", "untested",
           "missing_effects", "named", "overhead_text", "p_text", "ratio_text", "throttle_note", "throttle_reasons_of",
           "verdict"]

#: (upper bound of overhead, band) for the seed's verdict bands; overhead as a fraction.
BANDS: tuple[tuple[float, str], ...] = (
    (0.10, "under 10 %: the container is not the problem — look at drivers, thermals, power, configuration"),
    (0.20, "10-20 %: between the seed's bands"),
    (0.40, "20-40 %: a normal container cost"),
    (0.50, "40-50 %: between the seed's bands"),
    (np.inf, "over 50 %: the container is the problem"),
)
FASTER_BAND = "faster than the baseline: look for a configuration difference"

def _percent(value: float) -> str:
    return f"{100 * value:+.1f} %"

def _alone(name: str, row: dict[str, Any]) -> str:
    """``the isolation costs +3.1 %`` / ``... is faster by 2.0 %`` / ``no clear isolation effect``."""
    subject = {"isolation": "the isolation", "stack": "the image's software stack", "total": "the container"}[name]
    if not row["ci_excludes_one"]:
        return f"no clear effect of {subject} ({_percent(row['overhead'])}, CI includes 0)"
    if row["overhead"] < 0:
        return f"{subject} is faster by {-100 * row['overhead']:.1f} %"
    return f"{subject} costs {_percent(row['overhead'])}"

def _explained(effects: dict[str, dict[str, Any]]) -> str:
    """What explains a clear total: the part with the largest share of log(1 + total overhead)."""
    total = effects["total"]
    what = "overhead" if total["overhead"] > 0 else "speed-up"
    whole = np.log1p(total["overhead"])
    parts = {name: np.log1p(effects[name]["overhead"]) for name in ("isolation", "stack", "interaction") if name in effects}
    if not parts:
        return _alone("total", total) + " (no isolated or rootfs arm to split it)"
    name = max(parts, key=lambda part: parts[part] / whole)
    row, most = effects[name], parts[name] / whole >= 0.5 and effects[name]["ci_excludes_one"]
    of_total = f"({_percent(row['overhead'])} of {_percent(total['overhead'])})"
    if "interaction" not in effects:
        if most:
            return f"the {name} explains most of the container's {what} {of_total}"
        other = "the isolation" if name == "stack" else "the stack"
        return f"the {name} explains little of the container's {what} {of_total}: the rest comes with {other}"
    if most and name == "interaction":
        text = (f"neither effect alone explains the container's {what} ({_percent(total['overhead'])}): "
                "most of it appears only when the isolation and the stack combine")
    elif most:
        text = f"the {name} explains most of the container's {what} {of_total}"
    else:
        text = (f"the isolation ({_percent(effects['isolation']['overhead'])}) and the stack "
                f"({_percent(effects['stack']['overhead'])}) both contribute to the container's {what} "
                f"({_percent(total['overhead'])})")
    inter = effects["interaction"]
    if not inter["ci_excludes_one"]:
        return text + "; no clear interaction: the two effects simply multiply"
    if name != "interaction" or not most:
        more = "more" if inter["overhead"] > 0 else "less"
        text += f"; together they cost {more} than the product of the two ({_percent(inter['overhead'])})"
    return text

def decomposition_reading(effects: dict[str, dict[str, Any]], min_invocations: int) -> str:
    """One plain-words sentence on a case's effects (rules in ``stats.decompose``'s docstring)."""
    if any(not np.isfinite(row["ci_low"]) for row in effects.values()):
        return f"too few invocations for confidence intervals (need ≥ {min_invocations} in each arm)"
    alone = [_alone(name, effects[name]) for name in ("isolation", "stack") if name in effects]
    if "total" not in effects:
        return "; ".join(alone)
    if effects["total"]["ci_excludes_one"]:
        return _explained(effects)
    return "no clear overall effect of the container (CI includes 0)" + "".join(f"; {text}" for text in alone
                                                                              if not text.startswith("no clear"))


def band(overhead: float) -> str:
    """The seed's band of an overhead (a fraction); FASTER_BAND below zero."""
    if overhead < 0:
        return FASTER_BAND
    return next(text for bound, text in BANDS if overhead < bound)


def verdict(code: str, row: Any, margin: float, min_invocations: int, more: int | tuple[int, int, int] = 0,
            ends: tuple[float, float] = (np.nan, np.nan)) -> tuple[str, str | None]:
    """(verdict, band) of one compare row (a namedtuple) given its verdict code: ``ends`` are the
    overheads at the CI's ends, ``more`` the invocations an inconclusive row still needs (a count, or
    the point estimate with the fewest and most the data allow: stats.required_invocations_range)."""
    if code == "too_few":
        return (f"too few invocations for a confidence interval ({row.n_inv_base} {row.baseline}, "
                f"{row.n_inv_arm} {row.arm}; need ≥ {min_invocations} each)", None)
    if code == "undefined":
        return (f"no ratio: the baseline's median is {row.median_base:g} and {row.arm}'s {row.median_arm:g}; "
                "compare the values directly", None)
    if code == "equivalent":
        return f"no overhead beyond {margin * 100:g} %", None
    if code == "overhead":
        low, high = 100 * np.sort(ends)
        if row.overhead < 0:
            return f"faster by {-100 * row.overhead:.1f} % [{-high:.1f} %, {-low:.1f} %]", FASTER_BAND
        return f"overhead {100 * row.overhead:.1f} % [{low:.1f} %, {high:.1f} %]", band(row.overhead)
    # the data in hand did not settle it, so at least one more is needed whatever the approximation says
    point, low, high = (more, None, None) if isinstance(more, (int, np.integer)) else more
    point = max(int(point), 1)
    if low is None or high is None or low == high == point:
        return f"inconclusive: about {point} more invocations needed in each arm", None
    low, high = min(low, point), max(high, point)
    return (f"inconclusive: about {point} more invocations needed in each arm if the ratio is what was measured; "
            f"between {low} and {_count(high)} over the ratios the interval allows", None)


def _count(n: int) -> str:
    """A count of invocations, or "over 1000" past what any run would spend."""
    return f"over {MANY_INVOCATIONS:,}" if n > MANY_INVOCATIONS else f"{n:,}"


MANY_INVOCATIONS = 1000


NAMED_CASES = 3  # cases named per verdict in the headline; the rest are counted


def named(rows: pd.DataFrame, describe: Callable[[Any], str]) -> str:
    """``case: description`` for the first NAMED_CASES rows, then how many more there are."""
    named = [f"{figures.case_label(r.benchmark, r.case, r.metric)}: {describe(r)}"
             for r in rows.head(NAMED_CASES).itertuples(index=False)]
    more = len(rows) - len(named)
    return "; ".join(named) + (f"; and {more} more (see the comparison tables)" if more else "")


def ratio_text(ratio: float, low: float, high: float) -> str:
    """``1.163 [1.133, 1.307]``, ``1.163 (no CI)`` or ``—``."""
    if not np.isfinite(ratio):
        return "—"
    return f"{ratio:.3f} [{low:.3f}, {high:.3f}]" if np.isfinite(low) and np.isfinite(high) else f"{ratio:.3f} (no CI)"


#: effect of stats.decompose -> its column in the decomposition table.
DECOMPOSITION_TITLES = {
    "isolation": "isolation effect [95 % CI]", "stack": "stack effect [95 % CI]",
    "interaction": "interaction [95 % CI]", "total": "total [95 % CI]",
}


#: role -> how to add its arm to a run, for the sentence on what the decomposition lacks.
_ROLE_HINTS = {
    "native": "add native to --arms",
    "isolated": "add isolated to --arms",
    "rootfs": "export the container's image with `benchlib image export IMAGE DIR`, then add rootfs to --arms "
              "with BENCHLIB_ROOTFS=DIR",
    "container": "add container to --arms",
}


def missing_effects(roles: dict[str, str]) -> str:
    """One sentence on the effects the run's arms cannot give, or ""."""
    missing = [effect for effect, sides in EFFECTS.items() if not set(sum(sides, ())) <= set(roles)]
    if not missing:
        return ""
    lacking = [role for role in ROLES if role not in roles]
    effects = ", ".join(DECOMPOSITION_TITLES[effect].removesuffix(" [95 % CI]") for effect in missing)
    arms = " or ".join([", ".join(lacking[:-1]), lacking[-1]] if len(lacking) > 1 else lacking)
    return (f"Not computed: {effects}, as this run has no {arms} arm "
            f"({'; '.join(_ROLE_HINTS[role] for role in lacking)}).")


def image_mismatch(arms: list[dict[str, Any]], roles: dict[str, str]) -> str:
    """A sentence when the rootfs arm's image is not the container arm's (by image ID), or ""."""
    ids = {role: ((spec.get("preflight") or {}).get("image_id")) for spec in arms
           for role in ("rootfs", "container") if roles.get(role) == spec.get("name")}
    if len(ids) < 2 or not all(ids.values()) or ids["rootfs"] == ids["container"]:
        return ""
    return (f"The rootfs arm's image ({str(ids['rootfs'])[:19]}) is not the container arm's ({str(ids['container'])[:19]}): "
            "the stack effect is another image's, so the interaction mixes two software stacks.")


def overhead_text(row: Any) -> str:
    """``+10.2 % [+7.6, +11.9]``, ``+10.2 % (no CI)`` or ``—`` for a row of stats.decompose."""
    if not np.isfinite(row.overhead):
        return "—"
    if not (np.isfinite(row.overhead_low) and np.isfinite(row.overhead_high)):
        return f"{100 * row.overhead:+.1f} % (no CI)"
    return f"{100 * row.overhead:+.1f} % [{100 * row.overhead_low:+.1f}, {100 * row.overhead_high:+.1f}]"



# --------------------------------------------------------------------------- the answer first

#: A case whose samples ran throttled more than this share in an arm is "dominated by throttling".
DOMINATED_SHARE = 0.5


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _throttled_share(row: Any) -> float:
    shares = [getattr(row, column, np.nan) for column in ("throttled_share_arm", "throttled_share_base")]
    finite = [float(share) for share in shares if share is not None and np.isfinite(float(share))]
    return max(finite, default=0.0)


def throttle_reasons_of(row: Any) -> str:
    """The throttle reasons (benchlib.throttling) of the side of a comparison row that ran throttled
    more, or "" when the telemetry named none."""
    arm = getattr(row, "throttled_share_arm", np.nan)
    base = getattr(row, "throttled_share_base", np.nan)
    side = "arm" if not (np.isfinite(float(base)) and (not np.isfinite(float(arm)) or float(base) > float(arm))) else "base"
    reasons = getattr(row, f"throttle_reasons_{side}", "")
    return reasons if isinstance(reasons, str) else ""


def throttle_note(row: Any) -> str:
    """``96 % of its samples ran while the GPU was throttled (power cap (software) 98 %); without them:
    inconclusive: ...``: the share, why, and the verdict without the throttled samples."""
    reasons = throttle_reasons_of(row)
    return (f"{100 * _throttled_share(row):.0f} % of its samples ran while the GPU was throttled"
            + (f" (by {reasons})" if reasons else "")
            + f"; without them: {str(getattr(row, 'verdict_unthrottled', 'not computed')).split(' if the ratio')[0]}")


def group_answer(benchmark: str, rows: pd.DataFrame, failures: dict[str, str], margin: float) -> tuple[str, str]:
    """(outcome, sentence) for one workload group and one arm: ``fails``, ``slower``, ``faster``,
    ``same`` or ``not sure``, and the sentence that says it with the interval (``rows``: the
    performance comparison rows of that arm and benchmark; ``failures``: case -> why it failed)."""
    codes = rows["verdict_code"] if not rows.empty else pd.Series(dtype=object)
    slower = slower_rows(rows) if not rows.empty else rows
    faster = rows[codes.eq("overhead") & (rows["overhead"] < 0)].sort_values("overhead")
    same, unsure, too_few = int(codes.eq("equivalent").sum()), int(codes.eq("inconclusive").sum()), int(codes.eq("too_few").sum())
    parts = []
    if failures:
        case, why = next(iter(failures.items()))
        parts.append(f"{_plural(len(failures), 'case')} failed ({case}: {why})")

    def slow_text(row: Any) -> str:
        text = str(row.verdict).replace("overhead ", "slower by ", 1)
        if _throttled_share(row) > DOMINATED_SHARE:
            text = f"all samples: {text}; {throttle_note(row)}"
        return text

    if not slower.empty:
        parts.append(f"{len(slower)} of {len(rows)} slower (" + named(slower, slow_text) + ")")
    if not faster.empty:
        parts.append(f"{len(faster)} of {len(rows)} faster (" + named(faster, lambda r: str(r.verdict)) + ")")
    if same:
        parts.append(f"{same} of {len(rows)} the same within ±{100 * margin:g} %")
    if unsure:
        parts.append(f"{unsure} of {len(rows)} not sure (the 95 % interval is wider than the ±{100 * margin:g} % "
                     "margin: more invocations would settle it)")
    if too_few:
        parts.append(f"{too_few} with too few invocations for an interval")
    if not parts:
        parts.append("nothing measured in both arms")
    outcome = ("fails" if failures else "slower" if not slower.empty else "faster" if not faster.empty
               else "same" if same and same == len(rows) else "not sure")
    return outcome, f"{benchmark}: {'; '.join(parts)}."


def untested(roles: dict[str, str], suite: str, arms: list[str], baseline_not_bare: bool,
             throttled: pd.DataFrame) -> list[tuple[str, str]]:
    """(what was not tested and why it could matter, the command that would test it), in order:
    no container arm, no software-stack (rootfs) arm, a baseline that is not bare metal, cases
    dominated by throttling (``throttled``: comparison rows with the throttled shares)."""
    run = f"benchlib run --suite {suite}"
    items = []
    if "container" not in roles:
        items.append(("No container arm: the container itself was not run, so its cost was not measured.",
                      f"{run} --arms {','.join(dict.fromkeys([*arms, 'container']))}"))
    if "rootfs" not in roles:
        items.append(("No software-stack arm: the image's own torch, CUDA and libraries (the likeliest cause of a "
                      "large gap) were not run without the container's isolation.",
                      "sudo .venv/bin/benchlib image export IMAGE ~/.cache/benchlib/rootfs/benchlib-latest && "
                      f"{run} --arms {','.join(dict.fromkeys([*arms, 'rootfs']))}"))
    if baseline_not_bare:
        items.append(("The baseline is not bare metal (see the problems below): nothing here measures the "
                      "container against the machine itself.", f"on the host itself, outside any container or VM: "
                                                                   f"{run} --arms {','.join(arms)}"))
    if not throttled.empty:
        names = "; ".join(f"{figures.case_label(r.benchmark, r.case, r.metric)} ({100 * _throttled_share(r):.0f} %)"
                          for r in throttled.head(NAMED_CASES).itertuples(index=False))
        more = len(throttled) - min(len(throttled), NAMED_CASES)
        items.append((f"Throttling dominates {_plural(len(throttled), 'case')}: most samples ran while the GPU was "
                      f"throttled: {names}{f'; and {more} more' if more else ''}. Their verdict is about a "
                      "throttled GPU.", f"with the GPU idle and cool, nothing else running on it: {run} "
                                        f"--arms {','.join(arms)} --invocations 10"))
    return items


#: Below this a p-value reads "< 1e-4": smaller ones say nothing more to a reader.
P_FLOOR = 1e-4


def p_text(p: float) -> str:
    """A p-value as read in a table: two significant digits (``0.032``), "< 1e-4" below
    :data:`P_FLOOR` (a difference or an equivalence far beyond the noise), "—" where none was computed.
    summary.csv and summary.json keep the full value."""
    if p is None or not np.isfinite(p):
        return "—"
    return f"< {P_FLOOR:.0e}".replace("e-0", "e-") if p < P_FLOOR else f"{p:.2g}"
