"""Fault injection, bad input: malformed params and suite files stop `benchlib run` before anything is
written, with exit code 2 and one sentence naming the file, the key (or line) and what is allowed.

Each case writes a suite (and the params files it points to, as paths relative to the suite's folder)
into a temporary folder and runs the real CLI on it.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import run_cli

GOOD = "{benchmark: launch, params: smoke}"  # a committed, valid entry

# id -> (params file text or None, suite text, the file the error must name, fragment naming the key, extra args)
# "p.yaml" in a suite means the params file written next to it; the named file is "suite" or "params".
CASES = {
    # params files
    "literal": ("dtype: int4\n", "benchmarks:\n  - {benchmark: matmul, params: p.yaml}\n", "params",
                "key 'dtype' must be one of fp32, tf32, bf16, fp16, not 'int4'", ()),
    "unknown-key": ("dtyp: fp32\n", "benchmarks:\n  - {benchmark: matmul, params: p.yaml}\n", "params",
                    "key 'dtyp' is not a known key here (did you mean 'dtype'?); allowed keys are", ()),
    "negative": ("n: -8\n", "benchmarks:\n  - {benchmark: matmul, params: p.yaml}\n", "params",
                 "key 'n' must be greater than 0, not -8", ()),
    "string-for-int": ("n: '128'\n", "benchmarks:\n  - {benchmark: matmul, params: p.yaml}\n", "params",
                       "key 'n' must be a whole number, not '128'", ()),
    "bool-for-int": ("warmup: true\n", "benchmarks:\n  - {benchmark: matmul, params: p.yaml}\n", "params",
                     "key 'warmup' must be a whole number, not True", ()),
    "infinite": ("max_time_s: .inf\n", "benchmarks:\n  - {benchmark: matmul, params: p.yaml}\n", "params",
                 "key 'max_time_s' must be a finite number", ()),
    "out-of-range": ("target_rel_ci: 1.5\n", "benchmarks:\n  - {benchmark: matmul, params: p.yaml}\n", "params",
                     "key 'target_rel_ci' must be less than 1, not 1.5", ()),
    "one-bad-case-of-a-sweep": ("n: [8, 0]\n", "benchmarks:\n  - {benchmark: matmul, params: p.yaml}\n", "params",
                                "key 'n' must be greater than 0, not 0", ()),
    "empty-sweep": ("n: []\n", "benchmarks:\n  - {benchmark: matmul, params: p.yaml}\n", "params",
                    "key 'n' is an empty list; give at least one value", ()),
    "repeated-sweep-value": ("dtype: [fp32, fp32]\n", "benchmarks:\n  - {benchmark: matmul, params: p.yaml}\n",
                             "params", "key 'dtype' lists 'fp32' twice", ()),
    "list-on-a-non-case-key": ("warmup: [1, 2]\n", "benchmarks:\n  - {benchmark: matmul, params: p.yaml}\n",
                               "params", "key 'warmup' holds a list, but only case keys (n, dtype, settings) may", ()),
    "duplicate-yaml-key": ("n: 8\nn: 16\n", "benchmarks:\n  - {benchmark: matmul, params: p.yaml}\n", "params",
                           "key 'n' is given twice (lines 1 and 2)", ()),
    "params-not-a-mapping": ("- 1\n- 2\n", "benchmarks:\n  - {benchmark: matmul, params: p.yaml}\n", "params",
                             "must hold a mapping of key: value, not a list", ()),
    "params-yaml-syntax": ("n: [1, 2\n", "benchmarks:\n  - {benchmark: matmul, params: p.yaml}\n", "params",
                           "is not valid YAML at line 2", ()),
    "bad-params-in-a-later-entry": ("device: tpu\n", f"benchmarks:\n  - {GOOD}\n  - {{benchmark: cpu_bound, params: p.yaml}}\n",
                                    "params", "key 'device' must be one of cpu, not 'tpu'", ()),
    "run-key-in-params": ("output_dir: /tmp/x\n", "benchmarks:\n  - {benchmark: launch, params: p.yaml}\n", "params",
                          "key 'output_dir' is not a known key here", ()),
    # suite files: top level
    "suite-unknown-key": (None, f"invocatons: 2\nbenchmarks:\n  - {GOOD}\n", "suite",
                          "key 'invocatons' is not a known key here (did you mean 'invocations'?)", ()),
    "invocations-string": (None, f"invocations: '3'\nbenchmarks:\n  - {GOOD}\n", "suite",
                           "key 'invocations' must be a whole number, not '3'", ()),
    "invocations-zero": (None, f"invocations: 0\nbenchmarks:\n  - {GOOD}\n", "suite",
                         "key 'invocations' must be at least 1, not 0", ()),
    "cooldown-negative": (None, f"cooldown_s: -5\nbenchmarks:\n  - {GOOD}\n", "suite",
                          "key 'cooldown_s' must be at least 0, not -5", ()),
    "timeout-zero": (None, f"timeout_s: 0\nbenchmarks:\n  - {GOOD}\n", "suite",
                     "key 'timeout_s' must be greater than 0, not 0", ()),
    "shuffle-not-bool": (None, f"shuffle_arms: 'yes'\nbenchmarks:\n  - {GOOD}\n", "suite",
                         "key 'shuffle_arms' must be true or false, not 'yes'", ()),
    "no-benchmarks": (None, "benchmarks: []\n", "suite", "key 'benchmarks' must be a list of at least 1 item", ()),
    "suite-empty-file": (None, "", "suite", "key 'benchmarks' is required", ()),
    "suite-not-a-mapping": (None, "[launch, matmul]\n", "suite", "must hold a mapping of key: value, not a list", ()),
    "suite-yaml-syntax": (None, "benchmarks:\n\t- {benchmark: launch}\n", "suite", "is not valid YAML at line 2", ()),
    # suite files: entries
    "entry-unknown-key": (None, "benchmarks:\n  - {benchmark: launch, params: smoke, repeat: 2}\n", "suite",
                          "key 'benchmarks[0].repeat' is not a known key here; allowed keys are benchmark, estimate_s, params",
                          ()),
    "entry-not-a-mapping": (None, "benchmarks: [launch]\n", "suite",
                            "key 'benchmarks[0]' must be a mapping with keys benchmark, estimate_s, params", ()),
    "unknown-benchmark": (None, f"benchmarks:\n  - {GOOD}\n  - {{benchmark: matmull, params: smoke}}\n", "suite",
                          "key 'benchmarks[1].benchmark' must be one of collectives, cpu_bound,", ()),
    "missing-params-file": (None, "benchmarks:\n  - {benchmark: launch, params: nosuch}\n", "suite",
                            "key 'benchmarks[0].params' names", ()),
    "estimate-negative": (None, "benchmarks:\n  - {benchmark: launch, params: smoke, estimate_s: -1}\n", "suite",
                          "key 'benchmarks[0].estimate_s' must be greater than 0, not -1", ()),
    "duplicate-case": (None, f"benchmarks:\n  - {GOOD}\n  - {GOOD}\n", "suite",
                       "key 'benchmarks[1]' plans case", ()),
    # suite files: arms
    "unknown-arm": (None, f"arms: [native, warp]\nbenchmarks:\n  - {GOOD}\n", "suite",
                    "key 'arms[1]' names unknown arm 'warp'", ()),
    "duplicate-arm": (None, f"arms: [native, native]\nbenchmarks:\n  - {GOOD}\n", "suite",
                      "key 'arms[1]' repeats arm name 'native'", ()),
    "arm-unknown-key": (None, f"arms: [native, {{name: ngc, extends: container, imag: x}}]\nbenchmarks:\n  - {GOOD}\n",
                        "suite", "key 'arms[1].imag' is not a known key here (did you mean 'image'?)", ()),
    "arm-extends-unknown": (None, f"arms: [native, {{name: c, extends: contaner}}]\nbenchmarks:\n  - {GOOD}\n",
                            "suite", "key 'arms[1].extends' must be one of native, container,", ()),
    "arm-flags-a-string": (None, f"arms: [native, {{name: c, extends: container, flags: --ipc=host}}]\n"
                                 f"benchmarks:\n  - {GOOD}\n", "suite", "key 'arms[1].flags' must be a list", ()),
    "arm-flags-joined": (None, f"arms: [native, {{name: c, extends: container, flags: ['--ulimit memlock=-1']}}]\n"
                               f"benchmarks:\n  - {GOOD}\n", "suite",
                         "key 'arms[1].flags' must list each flag and value as its own item", ()),
    "isolated-arm-bad-flag": (None, f"arms: [native, {{name: iso, extends: isolated, flags: [--privileged]}}]\n"
                                    f"benchmarks:\n  - {GOOD}\n", "suite",
                              "key 'arms[1].flags' is not valid: flag --privileged is not understood", ()),
    "arm-env-not-a-string": (None, f"arms: [{{name: n2, extends: native, env: {{OMP_NUM_THREADS: 4}}}}]\n"
                                   f"benchmarks:\n  - {GOOD}\n", "suite",
                             "key 'arms[0].env.OMP_NUM_THREADS' must be a string (quote it in YAML), not 4", ()),
    "arm-name-not-a-folder": (None, f"arms: [{{name: ../up, extends: native}}]\nbenchmarks:\n  - {GOOD}\n", "suite",
                              "key 'arms[0].name' must be a folder name", ()),
    "arm-engine-mismatch": (None, f"arms: [{{name: c, kind: container, engine: runc, image: x}}]\n"
                                  f"benchmarks:\n  - {GOOD}\n", "suite",
                            "key 'arms[0].engine' must be one of docker, podman, apptainer for a container arm", ()),
    # suite files: a sequential run (until, budget, max_invocations)
    "until-unknown": (None, f"until: forever\nbenchmarks:\n  - {GOOD}\n", "suite",
                      "key 'until' must be conclusive, not 'forever'", ()),
    "budget-zero": (None, f"until: conclusive\nbudget: 0\nbenchmarks:\n  - {GOOD}\n", "suite",
                    "key 'budget' must be a positive duration such as 15m, 1h30m or 900 (seconds), not 0", ()),
    "budget-unparseable": (None, f"until: conclusive\nbudget: 15 minutes\nbenchmarks:\n  - {GOOD}\n", "suite",
                           "key 'budget' must be a positive duration", ()),
    "max-invocations-below-minimum": (None, f"until: conclusive\nmax_invocations: 2\nbenchmarks:\n  - {GOOD}\n",
                                      "suite", "key 'max_invocations' 2 is below the minimum of 3", ()),
    "budget-without-until": (None, f"budget: 15m\nbenchmarks:\n  - {GOOD}\n", "suite",
                             "key 'budget' applies to a sequential run only", ()),
    "budget-below-the-minimum": (None, f"until: conclusive\nbudget: 20s\narms: [native, {{name: native-b, extends: native}}]\n"
                                       "benchmarks:\n  - {benchmark: launch, params: smoke, estimate_s: 3.6}\n", "suite",
                                 "key 'budget' 20s is too small for the minimum of 3 invocations per arm", ()),
    "until-with-one-arm": (None, f"until: conclusive\nbenchmarks:\n  - {GOOD}\n", "suite",
                           "key 'until' compares arms, and this run has one", ()),
    "cli-unknown-arm": (None, f"benchmarks:\n  - {GOOD}\n", "suite", "names unknown arm 'warp'", ("--arms", "native,warp")),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_stops_the_run_before_anything_is_written(tmp_path: Path, case: str):
    params_text, suite_text, named, fragment, extra = CASES[case]
    folder = tmp_path / "in"
    folder.mkdir()
    suite = folder / "suite.yaml"
    suite.write_text(suite_text)
    if params_text is not None:
        (folder / "p.yaml").write_text(params_text)
    out = tmp_path / "out"

    done = run_cli("run", "--suite", str(suite), "--out", str(out), "--no-progress", *extra, timeout=120)

    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith("error: ") and all(not line.startswith("error") for line in errors[:-1]), done.stderr
    message = errors[-1].removeprefix("error: ")
    assert message.endswith("."), message
    assert not re.search(r"\.\s+[A-Z]", message), f"more than one sentence: {message}"
    if "--arms" not in extra:
        assert str(folder / ("p.yaml" if named == "params" else "suite.yaml")) in message, message
    assert fragment in message, message
    assert not out.exists() or not any(out.iterdir()), f"{case} wrote {list(out.iterdir())}"
    assert done.stdout == ""


def test_a_params_path_is_relative_to_the_suite_and_valid_input_runs(tmp_path: Path):
    """The supported way to point a suite at a params file outside params/<benchmark>/ (a path ending
    in .yaml, relative to the suite's folder), checked on a plan that validates without running."""
    from benchlib.suites import load_suite

    (tmp_path / "p.yaml").write_text("n: [8, 16]\ndtype: bf16\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text("arms: [native, {name: iso, extends: isolated, flags: ['--cpus=1', --ulimit, 'nofile=1024']}]\n"
                     "benchmarks:\n  - {benchmark: matmul, params: p.yaml}\n")
    loaded = load_suite(str(suite))
    assert [case.case for case in loaded.cases] == ["n=8,dtype=bf16,settings=user", "n=16,dtype=bf16,settings=user"]
    assert {case.params_file for case in loaded.cases} == {str(tmp_path / "p.yaml")}
    assert [arm.name for arm in loaded.arms] == ["native", "iso"]
