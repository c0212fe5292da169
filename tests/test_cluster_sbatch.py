"""The --on slurm options, their validation sentences, the batch script, and Slurm's own refusals."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchlib.cluster import slurmctl
from benchlib.cluster.sbatch import (JobScript, SlurmOptions, check_paths, expand_hostlist, render_script,
                                     resolve_options, time_seconds)
from benchlib.errors import ParamsError

SUITE = "params/suites/x.yaml"


@pytest.mark.parametrize("text, seconds", [
    ("90", 5400), ("5:30", 330), ("2:00:00", 7200), ("1-12", 129600), ("1-0:30", 88200),
    ("2-01:02:03", 2 * 86400 + 3723), ("0", 0),
])
def test_slurm_time_formats(text, seconds):
    assert time_seconds(text) == seconds


@pytest.mark.parametrize("text", ["1h", "90m", "1:2:3:4", "-5", "1-", "", "2 hours"])
def test_times_slurm_does_not_take(text):
    assert time_seconds(text) is None


def test_hostlists_expand_like_slurm():
    assert expand_hostlist("dgx[01-03,07],gpu-a") == ["dgx01", "dgx02", "dgx03", "dgx07", "gpu-a"]
    assert expand_hostlist("r[1-2]n[1-2]") == ["r1n1", "r1n2", "r2n1", "r2n2"]
    assert expand_hostlist("a,a,b") == ["a", "b"]  # duplicates ignored, as sbatch(1) says
    for bad in ("dgx[01-03", "dgx01]", "dgx[3-1]", "dgx[a-b]", "a,,b"):
        with pytest.raises(ValueError):
            expand_hostlist(bad)


def test_defaults_and_counts():
    options = resolve_options(None, SUITE, {})
    assert (options.node_count, options.gpus_per_node, options.exclusive) == (1, 1, True)
    listed = resolve_options({"nodelist": "dgx[01-04]", "gpus_per_node": 8}, SUITE, {})
    assert listed.node_count == 4 and listed.node_names[0] == "dgx01"
    typed = resolve_options({"gpus_per_node": 8, "gpu_type": "h100"}, SUITE, {})
    assert typed.gpus_option == "h100:8"


def test_command_line_wins_over_the_suite():
    options = resolve_options({"partition": "batch", "time": "10", "gpus_per_node": 8}, SUITE,
                              {"partition": "gpu", "time": None, "nodes": 2})
    assert (options.partition, options.time, options.nodes, options.gpus_per_node) == ("gpu", "10", 2, 8)


@pytest.mark.parametrize("values, words", [
    ({"time": "1h"}, ["slurm.time", "'1h'", "2:00:00"]),
    ({"nodes": 0}, ["slurm.nodes", "at least 1"]),
    ({"nodelist": "dgx[01-"}, ["slurm.nodelist", "bracket"]),
    ({"nodelist": "dgx[1-4]", "nodes": 2}, ["fewer than the 4 nodes"]),
    ({"partition": "gpu batch"}, ["slurm.partition", "sinfo -s"]),
    ({"account": "a;rm -rf"}, ["slurm.account"]),
    ({"gpus_per_node": "8"}, ["slurm.gpus_per_node", "whole number"]),
    ({"sbatch_options": ["--qos high"]}, ["slurm.sbatch_options", "one sbatch option"]),
    ({"sbatch_options": ["--array=0-3"]}, ["--array=0-3", "benchlib sets it itself"]),
    ({"sbatch_options": ["--nodes=4"]}, ["use the key 'nodes' instead"]),
    ({"sbatch_options": ["-p", "gpu"]}, ["use the key 'partition' instead"]),
    ({"partitoin": "gpu"}, ["not a known key", "did you mean 'partition'"]),
])
def test_bad_suite_values_are_one_sentence_naming_the_file_and_key(values, words):
    with pytest.raises(ParamsError) as caught:
        resolve_options(values, SUITE, {})
    message = str(caught.value)
    assert message.startswith(f"{SUITE}: ") and message.endswith(".") and message.count("\n") == 0
    for word in words:
        assert word in message


@pytest.mark.parametrize("flags, flag", [
    ({"time": "soon"}, "--time"), ({"nodes": 0}, "--nodes"), ({"nodelist": "x[2-1]"}, "--nodelist"),
    ({"gpus_per_node": 100}, "--gpus-per-node"), ({"partition": "a b"}, "--partition"),
])
def test_bad_command_line_values_name_the_flag(flags, flag):
    with pytest.raises(ParamsError) as caught:
        resolve_options({"time": "10"}, SUITE, flags)
    message = str(caught.value)
    assert message.startswith("the command line: ") and flag in message and SUITE not in message


def job(tmp_path: Path, **options) -> JobScript:
    return JobScript(run_dir=tmp_path / "run%1", repo_dir=Path("/repo"), python="/repo/.venv/bin/python",
                     options=SlurmOptions(**options), token="abc123", run_id="run1", suite="smoke",
                     arms=["native", "container"], invocations_per_slot=48, written_by="login1 at now")


def directives(text: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH ")]


def test_the_script_asks_for_whole_nodes_one_task_per_gpu(tmp_path):
    text = render_script(job(tmp_path, partition="gpu", account="proj", time="2:00:00", nodelist="dgx[01-02]",
                             gpus_per_node=8, sbatch_options=["--qos=high", "--constraint=h100"]))
    lines = directives(text)
    assert lines[:1] == ["--job-name=benchlib-smoke"]
    for expected in ("--partition=gpu", "--account=proj", "--time=2:00:00", "--nodes=2", "--nodelist=dgx[01-02]",
                     "--ntasks-per-node=8", "--gpus-per-node=8", "--exclusive", "--qos=high", "--constraint=h100"):
        assert expected in lines
    # '%' of the run directory is doubled in filename patterns, so Slurm does not expand it
    assert f"--output={tmp_path}/run%%1/slurm/logs/job-%j.out" in lines
    assert f"--chdir={tmp_path}/run%1" in lines
    # every #SBATCH line comes before the first command (sbatch stops reading them there)
    body = text.splitlines()
    first_command = next(i for i, line in enumerate(body) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(body) if line.startswith("#SBATCH"))
    # step 1 once per node, step 2 one task per GPU with Slurm setting CUDA_VISIBLE_DEVICES, step 3 collect
    assert re.search(r"srun --ntasks=\"\$SLURM_JOB_NUM_NODES\" --ntasks-per-node=1 .*\n.*\n.*task prepare", text)
    assert "--gpus-per-task=1" in text and "task measure" in text and "-m benchlib collect" in text
    assert "--kill-on-bad-exit=0" in text and "set -e" not in text.replace("No `set -e`", "")
    assert "export BENCHLIB_SHARED_TOKEN=abc123" in text


def test_the_script_quotes_its_shell_values(tmp_path):
    text = render_script(JobScript(**{**job(tmp_path).__dict__, "run_dir": tmp_path / "run$HOME"}))
    assert f"export BENCHLIB_RUN_DIR='{tmp_path}/run$HOME'" in text  # no expansion by the shell
    assert "--partition" not in text and "--account" not in text and "--time" not in text


def test_paths_that_a_batch_script_cannot_carry(tmp_path):
    with pytest.raises(ParamsError, match="run directory .* holds a space"):
        check_paths(tmp_path / "my runs", Path("/repo"), "/usr/bin/python3")
    with pytest.raises(ParamsError, match="checkout"):
        check_paths(tmp_path, Path("/home/a'b/repo"), "/usr/bin/python3")


@pytest.mark.parametrize("stderr, words", [
    ("sbatch: error: invalid partition specified: nope\nallocation failure: Invalid partition name specified",
     ["--partition", "sinfo -s"]),
    ("allocation failure: Invalid node name specified", ["--nodelist", "sinfo -N"]),
    ("allocation failure: Requested node configuration is not available", ["--gpus-per-node", "--nodes"]),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
     ["--account"]),
    ("allocation failure: Invalid feature specification", ["--constraint"]),
    ("sbatch: error: Invalid --time specification", ["--time"]),
])
def test_slurms_refusals_name_the_option(stderr, words):
    sentence = slurmctl.rejection_sentence(stderr)
    assert sentence.startswith("Slurm rejects the job (") and sentence.endswith(".")
    for word in words:
        assert word in sentence


def test_scontrol_job_records():
    text = ("JobId=42 JobName=benchlib-smoke UserId=u(1) JobState=PENDING Reason=Resources Dependency=(null) "
            "ExitCode=0:0 NodeList=(null) BatchHost=(null)")
    info = slurmctl.parse_job(text)
    assert (info.job_id, info.state, info.reason, info.nodes, info.pending, info.ended) == \
        ("42", "PENDING", "Resources", (), True, False)
    done = slurmctl.parse_job("JobId=43 JobState=TIMEOUT Reason=TimeLimit NodeList=dgx[01-02] ExitCode=0:15")
    assert done.nodes == ("dgx01", "dgx02") and done.ended
    assert slurmctl.parse_job("slurm_load_jobs error: Invalid job id specified") is None
