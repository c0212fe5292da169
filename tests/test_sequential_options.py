"""The sequential run's options (--until, --budget, --max-invocations and their suite keys): bad values
are refused with one sentence naming the flag or key (issue 15, "Bad input")."""
from __future__ import annotations

import pytest

from benchlib.errors import ParamsError
from benchlib.sequential_options import (
    SequentialOptions, check_budget_covers_minimum, format_duration, parse_budget, parse_max_invocations, parse_until,
    sequential_options,
)

SUITE_KEY = "params/suites/quick.yaml: key 'budget'"


@pytest.mark.parametrize("value, seconds", [
    ("15m", 900), ("900", 900), ("900s", 900), ("1h30m", 5400), ("1.5h", 5400), (" 2h 5m 30s", 7530),
    ("45S", 45), (".5m", 30), (900, 900), (90.5, 90.5),
])
def test_budgets_parse_to_seconds(value, seconds):
    assert parse_budget(value) == seconds


@pytest.mark.parametrize("value", ["0", "0m", -5, "-5m", "abc", "15x", "", "m", "5mm", "1h-30m", "inf", "nan",
                                   float("inf"), None, True, [15]])
def test_a_bad_budget_is_one_sentence_naming_the_flag(value):
    with pytest.raises(ParamsError) as error:
        parse_budget(value)
    message = str(error.value)
    assert message.startswith("--budget must be a positive duration") and message.endswith(".")
    assert message.count(". ") == 0  # one sentence


def test_a_bad_suite_budget_names_the_suite_key():
    with pytest.raises(ParamsError, match=r"^params/suites/quick.yaml: key 'budget' must be a positive duration"):
        parse_budget("soon", SUITE_KEY)


def test_until_accepts_conclusive_only():
    assert parse_until("conclusive") == "conclusive"
    assert parse_until(" Conclusive ") == "conclusive"
    for value in ("forever", "", None, 3):
        with pytest.raises(ParamsError, match=r"^--until must be conclusive, not "):
            parse_until(value)


@pytest.mark.parametrize("value, expected", [("20", 20), (20, 20), (3, 3), (30.0, 30)])
def test_max_invocations_parse(value, expected):
    assert parse_max_invocations(value) == expected


@pytest.mark.parametrize("value", ["0", 0, -4, "ten", "2.5", 2.5, "", None, True])
def test_a_bad_cap_names_the_flag(value):
    with pytest.raises(ParamsError, match=r"^--max-invocations must be a whole number of invocations"):
        parse_max_invocations(value)


def test_a_cap_below_the_minimum_is_refused_with_the_minimum():
    with pytest.raises(ParamsError, match=r"^--max-invocations 2 is below the minimum of 3 invocations per arm and "
                                          r"case; give at least 3\.$"):
        parse_max_invocations(2)
    with pytest.raises(ParamsError, match=r"^params/suites/x.yaml: key 'max_invocations' 4 is below the minimum of 5"):
        parse_max_invocations("4", "params/suites/x.yaml: key 'max_invocations'", minimum=5)


def test_a_budget_too_small_for_the_minimum_rounds_is_refused():
    with pytest.raises(ParamsError, match=r"^--budget 1m is too small for the minimum of 3 invocations per arm of 2 "
                                          r"cases in 2 arms \(about 6m from the suite's estimate_s\); give at least 6m\.$"):
        check_budget_covers_minimum(60, [20.0, 40.0], arms=2)
    check_budget_covers_minimum(360, [20.0, 40.0], arms=2)  # exactly enough
    check_budget_covers_minimum(60, [20.0, None], arms=2)  # an unknown estimate: nothing to say


def test_options_together_and_durations_round_trip():
    options = sequential_options("conclusive", "15m", "30")
    assert options == SequentialOptions("conclusive", 900.0, 30, 3)
    assert sequential_options().budget_s is None and sequential_options().max_invocations == 20
    with pytest.raises(ParamsError, match=r"^suite key 'until'"):
        sequential_options("sometime", sources={"until": "suite key 'until'"})
    for seconds in (45, 900, 5400, 7530):
        assert parse_budget(format_duration(seconds)) == seconds
