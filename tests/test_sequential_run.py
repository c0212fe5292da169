"""`benchlib run --until conclusive`: the flags' bad input, and a CPU A/A run end to end (issue 15 phase 2).

The A/A run: two arms that are the same (native, and native with a harmless variable), two smoke cases,
a small budget and cap. On a shared 2-core machine the test cannot count on every metric being decided
in a budget that keeps it short, so it asserts what holds whatever the noise: the run is complete (a
stop by budget or cap is not a failure), the manifest records the design and, per case, the invocations
run and a stop reason, the interleaving holds for the added rounds, no A/A interval lies wholly beyond
the margin, and a resume of the finished run changes nothing. A planted slowdown of known size is
checked by the simulations of tests/test_planner.py and tests/test_sequential.py (a CPU slowdown of
known size cannot be planted reliably on a machine shared with other jobs).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import run_cli

from benchlib.planner import STOP_REASONS

TWO_ARMS = "arms: [native, {name: native-b, extends: native, env: {BENCHLIB_AA_MARK: '1'}}]\n"
SUITE = (TWO_ARMS + "shuffle_arms: true\nbenchmarks:\n"
         "  - {benchmark: launch, params: smoke, estimate_s: 3.6}\n"
         "  - {benchmark: matmul, params: smoke, estimate_s: 3.6}\n")

# flags -> what the one sentence says (the suite above, two arms)
FLAG_CASES = {
    "until-unknown": (("--until", "forever"), "--until must be conclusive, not 'forever'."),
    "budget-zero": (("--until", "conclusive", "--budget", "0"), "--budget must be a positive duration"),
    "budget-negative": (("--until", "conclusive", "--budget=-5m"), "--budget must be a positive duration"),
    "budget-unparseable": (("--until", "conclusive", "--budget", "soon"), "not 'soon'."),
    "cap-zero": (("--until", "conclusive", "--max-invocations", "0"), "--max-invocations must be a whole number"),
    "cap-below-minimum": (("--until", "conclusive", "--max-invocations", "2"),
                          "--max-invocations 2 is below the minimum of 3 invocations per arm and case"),
    "budget-below-minimum": (("--until", "conclusive", "--budget", "30s"),
                             "--budget 30s is too small for the minimum of 3 invocations per arm of 2 cases in 2 arms"),
    "budget-without-until": (("--budget", "15m"), "--budget applies to a sequential run only; add --until conclusive"),
    "cap-without-until": (("--max-invocations", "8"), "--max-invocations applies to a sequential run only"),
    "fixed-and-sequential": (("--until", "conclusive", "--invocations", "5"), "--invocations sets a fixed design"),
    "one-arm": (("--until", "conclusive", "--arms", "native"), "--until compares arms, and this run has one"),
}


@pytest.mark.parametrize("case", list(FLAG_CASES), ids=list(FLAG_CASES))
def test_bad_sequential_flags_exit_2_with_one_sentence_and_write_nothing(tmp_path: Path, case: str):
    flags, fragment = FLAG_CASES[case]
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    done = run_cli("run", "--suite", str(suite), "--out", str(out), "--no-progress", *flags, timeout=120)
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and message.endswith("."), message
    assert not re.search(r"\.\s+[A-Z]", message), f"more than one sentence: {message}"
    assert fragment in message, message
    assert not out.exists() or not any(out.iterdir())


def test_resume_refuses_a_new_design(tmp_path: Path):
    done = run_cli("run", "--resume", str(tmp_path), "--until", "conclusive", "--no-progress", timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --until cannot change a run being resumed: --resume continues with the design its manifest records; "
        "leave the flag out.")


def test_an_aa_run_stops_every_case_with_a_reason_and_never_finds_a_difference_beyond_the_margin(tmp_path: Path):
    suite = tmp_path / "aa.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    done = run_cli("run", "--suite", str(suite), "--out", str(out), "--no-progress", "--until", "conclusive",
                   "--budget", "3m", "--max-invocations", "5", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = [path for path in out.iterdir() if path.is_dir()]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["schema_version"] == 2
    design = manifest["sequential"]
    assert design["method"].startswith("group-sequential repeated confidence intervals")
    assert (design["alpha"], design["margin"], design["min_invocations"], design["max_invocations"],
            design["budget_s"]) == (0.05, 0.05, 3, 5, 180.0)
    assert [(case["benchmark"], case["case"]) for case in manifest["cases"]] == list(dict.fromkeys(
        (inv["benchmark"], inv["case"]) for inv in manifest["invocations"]))
    for case in manifest["cases"]:
        assert case["state"] in STOP_REASONS and case["state"] != "failed", case
        runs = case["invocations"]
        assert runs["native"] == runs["native-b"] and 3 <= runs["native"] <= 5, case
        ran = [inv for inv in manifest["invocations"] if (inv["benchmark"], inv["case"]) == (case["benchmark"], case["case"])]
        assert sorted(inv["invocation"] for inv in ran if inv["arm"] == "native") == list(range(1, runs["native"] + 1))
        assert case["metrics"], case  # the performance metrics judged at the last look
        margin = 1 + design["margin"]
        for metric in case["metrics"]:  # A/A: never an interval wholly beyond the margin
            assert not (metric["ratio_low"] > margin or metric["ratio_high"] < 1 / margin), metric
        assert f"  {case['benchmark']} {case['case']}: {case['state'].replace('_', ' ')}" in done.stdout
    # the rounds run interleaved: each added round runs both arms of its case back to back
    order = sorted(manifest["invocations"], key=lambda inv: inv["ran_as"])
    for first, second in zip(order[::2], order[1::2]):
        assert (first["benchmark"], first["case"], first["invocation"]) == (
            second["benchmark"], second["case"], second["invocation"]) and first["arm"] != second["arm"]
    spent = sum(inv["duration_s"] for inv in manifest["invocations"])
    assert spent <= 180 + max(inv["duration_s"] for inv in manifest["invocations"]) * 2  # at most one round past

    # the report reads the run with the run's own margin and says per case how many ran and why it stopped
    from benchlib.report import analyse
    analysis = analyse(run_dir)
    assert analysis.margin == design["margin"]
    stops = analysis.stops()
    assert len(stops) == len(manifest["cases"])
    for line, case in zip(stops, manifest["cases"]):
        runs = case["invocations"]
        assert line.startswith(f"{case['benchmark']} {case['case']}: {case['state']} after native {runs['native']}, "
                               f"native-b {runs['native-b']} invocations"), line
    assert "per case, the invocations run and why it stopped" in str(analysis.answer())

    again = run_cli("run", "--resume", str(run_dir), "--no-progress", timeout=300)
    assert again.returncode == 0 and f"0 of {len(manifest['invocations'])} invocations left" in again.stderr
    after = json.loads((run_dir / "manifest.json").read_text())
    assert [case["state"] for case in after["cases"]] == [case["state"] for case in manifest["cases"]]
    assert len(after["invocations"]) == len(manifest["invocations"])
