"""The batch script of a run on Slurm: its options, validated, and the script itself (pure functions).

Options come from a suite's ``slurm:`` mapping and from the command line (which wins), and are
checked before anything is written (:func:`resolve_options`): a bad value is one sentence naming the
flag or the suite key, exit 2. What each option means is Slurm 22.05's ``sbatch(1)``/``srun(1)``:

``partition`` (``-p``; a comma-separated list lets Slurm pick), ``account`` (``-A``), ``time``
(``-t``: ``minutes``, ``minutes:seconds``, ``hours:minutes:seconds``, ``days-hours``,
``days-hours:minutes`` or ``days-hours:minutes:seconds``; ``0`` is no limit), ``nodes`` (``-N``, one
count: the fleet is that many nodes), ``nodelist`` (``-w``, a host list such as ``dgx[01-04,07]``;
``nodes`` then defaults to its length), ``gpus_per_node`` (``--gpus-per-node=[type:]N``, with
``gpu_type``), ``exclusive`` (``--exclusive``, on by default: a benchmark should own its nodes), and
``sbatch_options``: further ``#SBATCH`` lines, e.g. ``--qos=high`` or ``--constraint=h100``
(``--reservation``, ``--requeue``, ``--mail-type``...). Options that benchlib sets itself (the
node, task and GPU counts, output files, the job's working directory) are refused there with the key
to use instead.

The script (:func:`render_script`) runs in one allocation of whole nodes:

1. ``srun`` one task per node: ``python -m benchlib.cluster.task prepare RUN``: the node reads the
   token the submitting host wrote into the run directory (so the directory is shared), writes its
   record back, and imports every container image the arms need, before anything is measured;
2. ``srun`` one task per (node, GPU) (``--gpus-per-task=1``, so Slurm sets each task's
   ``CUDA_VISIBLE_DEVICES``; the node's CPUs split evenly between its GPUs):
   ``python -m benchlib.cluster.task measure RUN``: the slot's interleaved plan, every arm on that
   GPU, into ``<run>/nodes/<node>-gpu<k>/``;
3. ``python -m benchlib collect RUN`` on the first node: shards merged, the fleet's state written.

A step that fails on one node does not stop the others (``--kill-on-bad-exit=0``, and the script
goes on after a failed step). Every task resumes its shard, so ``sbatch <run>/slurm/job.sbatch``
again (or a requeue) completes an interrupted run.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ParamsError
from ..params import error_sentence, key_name
from . import layout

#: Slurm's time formats (sbatch(1), -t/--time).
_TIME_FORMATS = (
    (re.compile(r"^(\d+)$"), ("m",)),
    (re.compile(r"^(\d+):(\d+)$"), ("m", "s")),
    (re.compile(r"^(\d+):(\d+):(\d+)$"), ("h", "m", "s")),
    (re.compile(r"^(\d+)-(\d+)$"), ("d", "h")),
    (re.compile(r"^(\d+)-(\d+):(\d+)$"), ("d", "h", "m")),
    (re.compile(r"^(\d+)-(\d+):(\d+):(\d+)$"), ("d", "h", "m", "s")),
)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
#: A name Slurm takes for a partition, account, GPU type or job (no spaces, quotes, '#' or separators).
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}"
_NAME_RE = re.compile(rf"^{_NAME}$")
_PARTITIONS_RE = re.compile(rf"^{_NAME}(,{_NAME})*$")
#: One extra option: ``--long[=value]`` or ``-X[value]``, nothing that would break its #SBATCH line.
_OPTION_RE = re.compile(r"^(--[a-z][a-z0-9-]*(=[^\s'\"\\#]+)?|-[A-Za-z][^\s'\"\\#]*)$")

#: Options benchlib sets itself, with the key to use instead (None: set by benchlib, no key).
_OWN_OPTIONS: dict[str, str | None] = {
    "-p": "partition", "--partition": "partition", "-A": "account", "--account": "account",
    "-t": "time", "--time": "time", "-N": "nodes", "--nodes": "nodes", "-w": "nodelist",
    "--nodelist": "nodelist", "--gpus-per-node": "gpus_per_node", "--exclusive": "exclusive",
    "-n": None, "--ntasks": None, "--ntasks-per-node": None, "-G": "gpus_per_node", "--gpus": "gpus_per_node",
    "--gpus-per-task": None, "--gres": "gpus_per_node", "-c": None, "--cpus-per-task": None, "-a": None,
    "--array": None, "-o": None, "--output": None, "-e": None, "--error": None, "-D": None, "--chdir": None,
    "-J": None, "--job-name": None, "--wrap": None, "-W": None, "--wait": None, "--open-mode": None,
}
#: Command-line flag of each option, for error sentences.
CLI_FLAGS = {"partition": "--partition", "account": "--account", "time": "--time", "nodes": "--nodes",
             "nodelist": "--nodelist", "gpus_per_node": "--gpus-per-node", "gpu_type": "--gpu-type",
             "exclusive": "--shared-nodes", "sbatch_options": "--sbatch-option"}


def time_seconds(value: str) -> int | None:
    """Seconds of a Slurm time limit (0: no limit); None when ``value`` is in none of Slurm's formats."""
    for pattern, units in _TIME_FORMATS:
        match = pattern.match(value.strip())
        if match:
            return sum(int(part) * _SECONDS[unit] for part, unit in zip(match.groups(), units))
    return None


def expand_hostlist(expression: str) -> list[str]:
    """Slurm's host list syntax, expanded: ``dgx[01-03,07],gpu-a`` -> dgx01, dgx02, dgx03, dgx07, gpu-a.

    Brackets may appear several times in one name (``r[1-2]n[1-2]``); ranges keep their zero
    padding. Raises ValueError for what Slurm would not read (an unclosed bracket, a reversed range).
    """
    names: list[str] = []
    for part in _split_top_level(expression.strip()):
        if not part:
            raise ValueError("it has an empty name (two commas in a row, or a trailing comma)")
        names.extend(_expand_one(part))
    seen: dict[str, None] = {}
    for name in names:
        seen.setdefault(name, None)
    return list(seen)


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError("it closes a bracket it never opened")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise ValueError("it leaves a bracket open")
    return parts + [current]


def _expand_one(name: str) -> list[str]:
    start = name.find("[")
    if start < 0:
        return [name]
    end = name.index("]", start)
    head, body, tail = name[:start], name[start + 1:end], name[end + 1:]
    values = []
    for item in body.split(","):
        low, sep, high = item.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(f"[{body}] is not a list of numbers and ranges such as [01-04,07]")
        if sep:
            if int(high) < int(low):
                raise ValueError(f"the range {item} runs backwards")
            width = len(low)
            values += [str(k).zfill(width) for k in range(int(low), int(high) + 1)]
        else:
            values.append(low)
    return [head + value + rest for value in values for rest in _expand_one(tail)]


class SlurmOptions(BaseModel):
    """The ``slurm:`` mapping of a suite, and the ``--on slurm`` flags of ``benchlib run``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    partition: str | None = Field(None, description="a partition name, or several separated by commas")
    account: str | None = None
    time: str | None = Field(None, description="a Slurm time limit such as 30, 2:00:00 or 1-12:00:00")
    nodes: int | None = Field(None, ge=1, le=100_000)
    nodelist: str | None = Field(None, description="a Slurm host list such as dgx[01-04,07]")
    gpus_per_node: int = Field(1, ge=1, le=64)
    gpu_type: str | None = None
    exclusive: bool = True
    sbatch_options: list[str] = Field(default_factory=list)

    @field_validator("partition")
    @classmethod
    def _partition(cls, value: str | None) -> str | None:
        if value is not None and not _PARTITIONS_RE.match(value):
            raise ValueError("a partition is letters, digits, '.', '_', '+' or '-' (several separated by commas); "
                             "`sinfo -s` lists them")
        return value

    @field_validator("account", "gpu_type")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME_RE.match(value):
            raise ValueError("it must be letters, digits, '.', '_', '+' or '-' (`sacctmgr show assoc user=$USER` "
                             "lists accounts; `sinfo -o %G` GPU types)")
        return value

    @field_validator("time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None and time_seconds(value) is None:
            raise ValueError("Slurm takes minutes, minutes:seconds, hours:minutes:seconds, days-hours, "
                             "days-hours:minutes or days-hours:minutes:seconds (e.g. 90, 2:00:00, 1-00:00:00)")
        return value

    @field_validator("nodelist")
    @classmethod
    def _nodelist(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            names = expand_hostlist(value)
        except ValueError as exc:
            raise ValueError(f"{exc} (Slurm host lists look like dgx[01-04,07],dgx10)") from None
        bad = [name for name in names if not layout.valid_node_name(name)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a node name (letters, digits, '.', '_', '-'); `sinfo -N` lists them")
        return value

    @field_validator("sbatch_options")
    @classmethod
    def _extra(cls, values: list[str]) -> list[str]:
        for item in values:
            if not _OPTION_RE.match(item):
                raise ValueError(f"{item!r} is not one sbatch option as --name=value (no spaces, quotes or '#'; "
                                 "one option per list item)")
            flag = item.split("=", 1)[0] if item.startswith("--") else item[:2]
            if flag in _OWN_OPTIONS:
                instead = _OWN_OPTIONS[flag]
                fix = f"use the key {instead!r} instead" if instead else "benchlib sets it itself"
                raise ValueError(f"{item!r} is an option benchlib writes into the script; {fix}")
        return values

    @model_validator(mode="after")
    def _nodes_cover_list(self) -> "SlurmOptions":
        if self.nodelist is not None and self.nodes is not None:
            listed = len(expand_hostlist(self.nodelist))
            if self.nodes < listed:
                raise ValueError(f"nodes ({self.nodes}) is fewer than the {listed} nodes of nodelist; "
                                 "leave nodes out or make it at least that")
        return self

    @property
    def node_names(self) -> list[str]:
        """The nodes asked for by name (empty when only a count was given)."""
        return expand_hostlist(self.nodelist) if self.nodelist else []

    @property
    def node_count(self) -> int:
        return self.nodes or len(self.node_names) or 1

    @property
    def gpus_option(self) -> str:
        return f"{self.gpu_type}:{self.gpus_per_node}" if self.gpu_type else str(self.gpus_per_node)


def resolve_options(suite_values: Mapping[str, Any] | None, suite_source: str,
                    cli_values: Mapping[str, Any]) -> SlurmOptions:
    """The suite's ``slurm:`` mapping with the command line's values over it, validated.

    ``cli_values`` holds only what was given on the command line (None values are ignored). An
    error names the flag when the value came from the command line, else the suite file and key.
    """
    given = {key: value for key, value in cli_values.items() if value is not None}
    merged = {**dict(suite_values or {}), **given}
    try:
        return SlurmOptions.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        loc = tuple(error["loc"])
        field = str(loc[0]) if loc else ""
        if field in given or (not loc and given):
            sentence = error_sentence("the command line", exc, SlurmOptions)
            flag = CLI_FLAGS.get(field, field)
            raise ParamsError(sentence.replace(f"key {key_name(loc)!r}", flag, 1)
                              .replace(f"key {field!r}", flag, 1)) from None
        raise ParamsError(error_sentence(suite_source, exc, SlurmOptions, prefix=("slurm",))) from None


@dataclass(frozen=True)
class JobScript:
    """Everything the batch script names; :func:`render_script` turns it into text."""

    run_dir: Path  # absolute; on a filesystem every node shares
    repo_dir: Path  # the checkout the nodes import benchlib from (shared too)
    python: str  # the interpreter on the nodes (a venv in the shared checkout, or one on PATH there)
    options: SlurmOptions
    token: str  # the shared-filesystem check's token (also in <run>/slurm/shared-token)
    run_id: str
    suite: str
    arms: Sequence[str]
    invocations_per_slot: int
    written_by: str = ""  # "host at time", for the header


def job_name(suite: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.+-]", "-", f"benchlib-{suite}")[:64]
    return name


def _directive(option: str) -> str:
    return f"#SBATCH {option}"


def _pattern_path(path: Path) -> str:
    """A path in a Slurm filename pattern: '%' doubled, so Slurm does not expand it."""
    return str(path).replace("%", "%%")


def check_paths(run_dir: Path, repo_dir: Path, python: str) -> None:
    """Paths the script names in #SBATCH lines and commands: no whitespace, quotes or newlines
    (``#SBATCH`` lines cannot quote)."""
    for what, value, fix in (("the run directory", str(run_dir), "use --out with a path without spaces"),
                             ("the checkout", str(repo_dir), "clone it to a path without spaces"),
                             ("the python interpreter", python, "use one at a path without spaces")):
        if re.search(r"[\s'\"\\]", value):
            raise ParamsError(f"{what} {value!r} holds a space, quote or backslash, which a Slurm batch script's "
                              f"#SBATCH lines cannot carry; {fix}.")


def render_script(job: JobScript) -> str:
    """The batch script: readable, and usable by hand (``sbatch <run>/slurm/job.sbatch``)."""
    options, run = job.options, Path(job.run_dir)
    check_paths(run, Path(job.repo_dir), job.python)
    gpus = options.gpus_per_node
    logs = layout.logs_dir(run)
    nodes_text = ", ".join(options.node_names) if options.node_names else f"any {options.node_count}"
    lines = [
        "#!/bin/bash",
        f"# benchlib run {job.run_id} on Slurm: suite {job.suite}; arms {', '.join(job.arms)}.",
        f"# {job.invocations_per_slot} invocations on each GPU of {options.node_count} node(s) ({nodes_text}) "
        f"x {gpus} GPU(s).",
        f"# Written by `benchlib run --on slurm`{' on ' + job.written_by if job.written_by else ''}. Submit it again "
        "by hand with",
        f"#   sbatch {run / layout.SLURM_DIR / layout.SCRIPT_FILE}",
        "# to complete an interrupted run: every task resumes its own shard. Progress: benchlib status RUN_DIR.",
        _directive(f"--job-name={job_name(job.suite)}"),
    ]
    if options.partition:
        lines.append(_directive(f"--partition={options.partition}"))
    if options.account:
        lines.append(_directive(f"--account={options.account}"))
    if options.time:
        lines.append(_directive(f"--time={options.time}"))
    lines.append(_directive(f"--nodes={options.node_count}"))
    if options.nodelist:
        lines.append(_directive(f"--nodelist={options.nodelist}"))
    lines += [
        _directive(f"--ntasks-per-node={gpus}"),
        _directive(f"--gpus-per-node={options.gpus_option}"),
    ]
    if options.exclusive:
        lines.append(_directive("--exclusive"))
    lines += [
        _directive(f"--chdir={run}"),
        _directive(f"--output={_pattern_path(logs)}/job-%j.out"),
        _directive("--open-mode=append"),
    ]
    lines += [_directive(item) for item in options.sbatch_options]
    q = shlex.quote
    lines += [
        "",
        "# No `set -e`: a step that fails on one node must not stop the others.",
        f"export BENCHLIB_RUN_DIR={q(str(run))}",
        f"export BENCHLIB_REPO={q(str(job.repo_dir))}",
        f"export BENCHLIB_SHARED_TOKEN={q(job.token)}",
        f"export BENCHLIB_GPUS_PER_NODE={gpus}",
        f"export PYTHONPATH={q(str(job.repo_dir))}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"PYTHON={q(job.python)}",
        f"mkdir -p {q(str(logs))}",
        f"GPUS={gpus}",
        "CPUS=$(( ${SLURM_CPUS_ON_NODE:-$GPUS} / GPUS )); [ \"$CPUS\" -ge 1 ] || CPUS=1",
        'echo "benchlib: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST"',
        "",
        "# 1. once per node: the run directory is shared (token read back), images imported before measuring",
        "srun --ntasks=\"$SLURM_JOB_NUM_NODES\" --ntasks-per-node=1 --kill-on-bad-exit=0 \\",
        f"    --output={_pattern_path(logs)}/prepare-%j-%N.out \\",
        "    \"$PYTHON\" -m benchlib.cluster.task prepare \"$BENCHLIB_RUN_DIR\"",
        "prepared=$?",
        "",
        "# 2. one task per (node, GPU): the slot's interleaved plan, every arm on that GPU",
        "srun --ntasks=$(( SLURM_JOB_NUM_NODES * GPUS )) --ntasks-per-node=\"$GPUS\" --gpus-per-task=1 \\",
        "    --cpus-per-task=\"$CPUS\" --kill-on-bad-exit=0 \\",
        f"    --output={_pattern_path(logs)}/task-%j-%N-%t.out \\",
        "    \"$PYTHON\" -m benchlib.cluster.task measure \"$BENCHLIB_RUN_DIR\"",
        "measured=$?",
        "",
        "# 3. merge the shards (also by hand: benchlib collect RUN_DIR)",
        "\"$PYTHON\" -m benchlib collect \"$BENCHLIB_RUN_DIR\"",
        "collected=$?",
        'echo "benchlib: prepare exit $prepared, measure exit $measured, collect exit $collected"',
        "[ \"$measured\" -ne 0 ] && exit \"$measured\"",
        "exit \"$collected\"",
        "",
    ]
    return "\n".join(lines)
