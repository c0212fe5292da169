"""Talking to Slurm from the submitting host: ``sbatch`` (test, submit) and ``scontrol show job``.

Every call has a time limit and every failure is one sentence naming the option and the fix.
:func:`parse_job` and :func:`rejection_sentence` are pure, so they are tested on Slurm's own text.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from ..errors import BenchlibError, ParamsError
from .sbatch import expand_hostlist
from .shards import JobInfo

QUERY_TIMEOUT_S = 30

#: Words in Slurm's refusal -> the option a user fixes, and how (first match wins: "account/partition" is the account).
_REJECTIONS: tuple[tuple[str, str], ...] = (
    ("account", "--account names an account Slurm does not accept for you; `sacctmgr show assoc user=$USER` lists yours"),
    ("partition", "--partition names a partition this cluster does not have or you may not use; `sinfo -s` lists them"),
    ("node name", "--nodelist names a node this cluster does not have; `sinfo -N` lists them"),
    ("feature", "a --constraint in the suite's sbatch_options names a feature no node has; `sinfo -o '%N %f'` lists them"),
    ("qos", "a --qos in the suite's sbatch_options is not one you may use; `sacctmgr show qos` lists them"),
    ("time", "--time is not accepted (over the partition's limit, or malformed); `sinfo -o '%P %l'` shows the limits"),
    ("configuration is not available", "no node matches --nodes, --nodelist and --gpus-per-node together (too many "
                                       "nodes, or fewer GPUs per node than asked); `sinfo -o '%N %G'` shows what "
                                       "each node has"),
)


def require_sbatch() -> str:
    path = shutil.which("sbatch")
    if path is None:
        raise BenchlibError("`sbatch` is not on PATH: run `benchlib run --on slurm` on a login node of the cluster, or "
                            "install the Slurm client (Debian: apt-get install slurm-client; CI: .ci/slurm-setup.sh).")
    return path


def rejection_sentence(stderr: str) -> str:
    """Slurm's refusal of a job's options as one sentence naming the option to fix."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    detail = next((line for line in lines if "error" in line.lower() or "failure" in line.lower()),
                  lines[-1] if lines else "no message")
    detail = re.sub(r"^(sbatch: error: |allocation failure: )", "", detail)
    lowered = detail.lower()
    for word, fix in _REJECTIONS:
        if word in lowered:
            return f"Slurm rejects the job ({detail}): {fix}."
    return f"Slurm rejects the job ({detail}): check the --on slurm options and the suite's sbatch_options."


def _sbatch(args: list[str], script_text: str | None = None) -> subprocess.CompletedProcess:
    """``sbatch ARGS`` (the script on stdin when given); Slurm's refusal as one sentence (exit 2)."""
    sbatch = require_sbatch()
    try:
        done = subprocess.run([sbatch, *args], input=script_text, capture_output=True, text=True,
                              timeout=QUERY_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise BenchlibError(f"`sbatch {args[0]}` did not answer within {QUERY_TIMEOUT_S} s: is slurmctld "
                            "reachable? (`scontrol ping`)") from None
    if done.returncode != 0:
        raise ParamsError(rejection_sentence(done.stderr or done.stdout))
    return done


def check_accepted(script_text: str) -> None:
    """``sbatch --test-only`` with the job's script: Slurm validates every option, submits nothing."""
    _sbatch(["--test-only"], script_text)


def submit(script: Path) -> str:
    """Submit the batch script; the job id."""
    done = _sbatch(["--parsable", str(script)])
    job_id = done.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise BenchlibError(f"sbatch answered {done.stdout.strip()!r} instead of a job id; see `squeue --me`.")
    return job_id


def parse_job(text: str) -> JobInfo | None:
    """``scontrol show job -o`` output as a :class:`JobInfo` (None when it names no job)."""
    fields = dict(re.findall(r"(?:^|\s)([A-Za-z][\w:/]*)=(\S*)", text))
    if "JobId" not in fields or "JobState" not in fields:
        return None
    nodes_text = fields.get("NodeList", "")
    try:
        nodes = tuple(expand_hostlist(nodes_text)) if nodes_text and nodes_text != "(null)" else ()
    except ValueError:
        nodes = ()
    reason = fields.get("Reason")
    return JobInfo(job_id=fields["JobId"], state=fields["JobState"],
                   reason=None if reason in (None, "None", "(null)") else reason, nodes=nodes,
                   exit_code=fields.get("ExitCode"))


def job_info(job_id: str) -> JobInfo | None:
    """What Slurm says of the job now; None when it no longer knows it (purged after MinJobAge) or
    cannot be asked."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return None
    try:
        done = subprocess.run([scontrol, "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                              timeout=QUERY_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_job(done.stdout) if done.returncode == 0 else None
