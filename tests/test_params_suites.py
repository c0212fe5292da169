"""Params files, case expansion, suite loading and the interleaved plan."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchlib.arms import Arm, arm_from_spec, select_arms
from benchlib.errors import ParamsError
from benchlib.params import expand_cases, read_yaml, validate
from benchlib.suites import expand_entry, load_suite, plan, suite_names
from benchlib.workloads.matmul import MatmulParams


def test_case_keys_expand_to_the_cartesian_product_and_other_keys_are_copied():
    cases = expand_cases({"n": [1, 2], "dtype": ["fp32", "bf16"], "warmup": 5}, ["n", "dtype"])
    assert [(c["n"], c["dtype"]) for c in cases] == [(1, "fp32"), (1, "bf16"), (2, "fp32"), (2, "bf16")]
    assert all(c["warmup"] == 5 for c in cases)


def test_a_list_on_a_non_case_key_is_rejected_by_validation():
    with pytest.raises(ParamsError, match="'warmup'"):
        validate(MatmulParams, {"n": 8, "warmup": [1, 2]}, "params/matmul/x.yaml")


@pytest.mark.parametrize("values, key", [
    ({"n": 0}, "'n'"), ({"n": -5}, "'n'"), ({"dtype": "fp8"}, "'dtype'"), ({"bogus": 1}, "'bogus'"),
    ({"device": "tpu"}, "'device'"),
])
def test_bad_values_name_the_file_and_key(values, key):
    with pytest.raises(ParamsError) as info:
        validate(MatmulParams, values, "params/matmul/x.yaml")
    message = str(info.value)
    assert "params/matmul/x.yaml" in message and key in message
    assert "\n" not in message


def test_malformed_and_missing_yaml_are_one_sentence(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n: [1, 2\n")
    with pytest.raises(ParamsError, match="bad.yaml is not valid YAML at line"):
        read_yaml(bad)
    with pytest.raises(ParamsError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="must hold a mapping"):
        read_yaml(scalar)


def test_every_committed_params_file_and_suite_is_valid(repo: Path):
    for path in sorted((repo / "params").glob("*/*.yaml")):
        if path.parent.name == "suites":
            continue
        assert expand_entry(path.parent.name, path.stem, "test"), path
    assert {"smoke", "quick", "seed"} <= set(suite_names())
    for name in suite_names():
        load_suite(name)


def test_seed_params_are_the_seed_protocol():
    (case,) = expand_entry("matmul", "seed", "test")
    params = validate(MatmulParams, case.values, "seed")
    assert (params.n, params.dtype, params.warmup, params.fixed_samples) == (10000, "fp32", 3, 10)


def test_plan_interleaves_arms_round_by_round():
    suite = load_suite("smoke")
    arms = [Arm("native"), arm_from_spec("container")]
    invocations = plan(suite, arms, 2)
    first_case = suite.cases[0].case
    sequence = [(inv.arm, inv.invocation) for inv in invocations if inv.case == first_case
                and inv.benchmark == suite.cases[0].benchmark]
    assert sequence == [("native", 1), ("container", 1), ("native", 2), ("container", 2)]
    assert [inv.order for inv in invocations] == list(range(len(invocations)))
    assert len(invocations) == 2 * 2 * len(suite.cases)


def test_shuffled_rounds_are_reproducible(tmp_path: Path, repo: Path):
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text("invocations: 4\nshuffle_arms: true\nseed: 7\narms: [native, container]\n"
                          "benchmarks:\n  - {benchmark: matmul, params: smoke}\n")
    suite = load_suite(str(suite_file))
    first = [inv.arm for inv in plan(suite, suite.arms, 4)]
    assert first == [inv.arm for inv in plan(suite, suite.arms, 4)]
    assert sorted(set(first)) == ["container", "native"]


@pytest.mark.parametrize("body, fragment", [
    ("benchmarks: []\n", "'benchmarks'"),
    ("benchmarks:\n  - {benchmark: nope, params: smoke}\n", "key 'benchmarks\\[0\\].benchmark' must be one of .*, not 'nope'"),
    ("benchmarks:\n  - {benchmark: matmul, params: missing}\n", "missing.yaml, which does not exist"),
    ("arms: [warp]\nbenchmarks:\n  - {benchmark: matmul, params: smoke}\n", "unknown arm 'warp'"),
    ("invocations: 0\nbenchmarks:\n  - {benchmark: matmul, params: smoke}\n", "'invocations'"),
    ("benchmarks:\n  - {benchmark: matmul, params: smoke}\n  - {benchmark: matmul, params: smoke}\n", "plans case .* again"),
])
def test_bad_suites_fail_before_anything_runs(tmp_path: Path, body: str, fragment: str):
    suite_file = tmp_path / "bad.yaml"
    suite_file.write_text(body)
    with pytest.raises(ParamsError, match=fragment):
        load_suite(str(suite_file))


def test_unknown_suite_lists_the_real_ones():
    with pytest.raises(ParamsError, match="unknown suite 'nosuch'.*smoke"):
        load_suite("nosuch")


def test_arms_from_specs_and_presets():
    arm = arm_from_spec({"name": "ngc", "extends": "container", "image": "nvcr.io/nvidia/pytorch:25.10-py3",
                         "preset": "nvidia", "flags": ["--shm-size=8g"]})
    assert arm.kind == "container" and arm.engine == "docker"
    assert arm.run_flags == ("--ipc=host", "--ulimit", "memlock=-1", "--ulimit", "stack=67108864", "--shm-size=8g")
    with pytest.raises(ParamsError, match="engine' must be one of docker, podman, apptainer for a container arm, not 'runc'"):
        arm_from_spec({"name": "x", "kind": "container", "engine": "runc", "image": "i"})
    with pytest.raises(ParamsError, match="twice"):
        select_arms([Arm("native")], ["native", "native"], "--arms")


def test_a_case_key_left_to_its_default_is_named_as_the_results_name_it(tmp_path: Path):
    from benchlib.schema import case_id

    params = tmp_path / "p.yaml"
    params.write_text("dtype: bf16\n")  # n left to its default
    (planned,) = expand_entry("matmul", str(params), "test")
    validated = validate(MatmulParams, planned.values, "test").model_dump()
    assert planned.case == case_id(validated, ("n", "dtype", "settings")) == "n=256,dtype=bf16,settings=user"
