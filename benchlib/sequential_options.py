"""The options of a sequential run, parsed and validated before anything runs: ``--until``,
``--budget``, ``--max-invocations`` (and the suite keys ``until``, ``budget``, ``max_invocations``).

Each parser takes the value as given (a command-line string, or a YAML scalar from a suite file) and
``source``, the flag or suite key it came from (``"--budget"``, ``"params/suites/quick.yaml: key
'budget'"``), and raises :class:`benchlib.errors.ParamsError` with one sentence naming that source
and what is allowed. Durations: a number of seconds (``900``), or numbers with units s, m, h
(``900s``, ``15m``, ``1.5h``, ``1h30m``, ``2h 5m 30s``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import ParamsError
from .sequential import DEFAULT_MAX_ROUNDS, DEFAULT_MIN_ROUNDS

UNTIL_VALUES = ("conclusive",)
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh])", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(?:(?:\d+(?:\.\d*)?|\.\d+)\s*[smh]\s*)+$", re.IGNORECASE)
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*$")


def parse_budget(value: Any, source: str = "--budget") -> float:
    """Seconds of a positive duration (module docstring)."""
    seconds = _duration_seconds(value)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ParamsError(f"{source} must be a positive duration such as 15m, 1h30m or 900 (seconds), not {value!r}.")
    return seconds


def _duration_seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    if number := _NUMBER.match(value):
        return float(number.group(1))
    if not _DURATION.match(value):
        return None
    return sum(float(amount) * _UNIT_SECONDS[unit.lower()] for amount, unit in _PART.findall(value))


def parse_until(value: Any, source: str = "--until") -> str:
    """The stopping goal: ``conclusive`` (add rounds until every performance metric is decided)."""
    if not isinstance(value, str) or value.strip().lower() not in UNTIL_VALUES:
        raise ParamsError(f"{source} must be {' or '.join(UNTIL_VALUES)}, not {value!r}.")
    return value.strip().lower()


def parse_max_invocations(value: Any, source: str = "--max-invocations",
                          minimum: int = DEFAULT_MIN_ROUNDS) -> int:
    """The cap on invocations per arm and case: a whole number, at least ``minimum``."""
    count = _whole_number(value)
    if count is None or count <= 0:
        raise ParamsError(f"{source} must be a whole number of invocations per arm and case, at least {minimum}, "
                          f"not {value!r}.")
    if count < minimum:
        raise ParamsError(f"{source} {count} is below the minimum of {minimum} invocations per arm and case; "
                          f"give at least {minimum}.")
    return count


def _whole_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    return None


def format_duration(seconds: float) -> str:
    """``15m``, ``1h30m``, ``45s``: a duration as the parsers accept it (rounded up to whole seconds)."""
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"


def check_budget_covers_minimum(budget_s: float, invocation_estimates_s: Iterable[float | None], arms: int,
                                min_invocations: int = DEFAULT_MIN_ROUNDS, source: str = "--budget") -> None:
    """Refuse a budget smaller than the minimum rounds are estimated to take.

    ``invocation_estimates_s``: seconds one invocation of each case takes (the suite's ``estimate_s``);
    with any unknown, nothing can be said and nothing is checked."""
    estimates = list(invocation_estimates_s)
    if not estimates or any(estimate is None for estimate in estimates):
        return
    needed = sum(estimates) * arms * min_invocations
    if budget_s < needed:
        raise ParamsError(f"{source} {format_duration(budget_s)} is too small for the minimum of {min_invocations} "
                          f"invocations per arm of {len(estimates)} cases in {arms} arms (about "
                          f"{format_duration(needed)} from the suite's estimate_s); give at least "
                          f"{format_duration(needed)}.")


@dataclass(frozen=True)
class SequentialOptions:
    """A sequential run's settings, validated."""

    until: str = "conclusive"
    budget_s: float | None = None  # None: no budget, the cap alone bounds the run
    max_invocations: int = DEFAULT_MAX_ROUNDS
    min_invocations: int = DEFAULT_MIN_ROUNDS


def sequential_options(until: Any = "conclusive", budget: Any = None, max_invocations: Any = None,
                       min_invocations: int = DEFAULT_MIN_ROUNDS, sources: dict[str, str] | None = None
                       ) -> SequentialOptions:
    """Validate the three values together; ``sources`` maps until, budget, max_invocations to where each
    came from (default: the command-line flags)."""
    where = {"until": "--until", "budget": "--budget", "max_invocations": "--max-invocations", **(sources or {})}
    cap = (DEFAULT_MAX_ROUNDS if max_invocations is None
           else parse_max_invocations(max_invocations, where["max_invocations"], min_invocations))
    return SequentialOptions(
        until=parse_until(until, where["until"]),
        budget_s=None if budget is None else parse_budget(budget, where["budget"]),
        max_invocations=max(cap, min_invocations),
        min_invocations=min_invocations,
    )
