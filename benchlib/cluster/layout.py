"""Where a run on a cluster keeps what: the folders under the run directory and their file names.

A run submitted with ``--on slurm`` is one run directory on a filesystem every node shares::

    <run>/slurm/job.sbatch            the batch script (readable; ``sbatch`` it again to resume)
    <run>/slurm/submission.json       what was asked for: options, slots, job id, token's digest
    <run>/slurm/shared-token          a random token the tasks read back (the shared-filesystem check)
    <run>/slurm/plan.json             the plan of one slot (a manifest with every invocation pending)
    <run>/slurm/nodes/<node>.json     written by each node before measuring: the check passed, images
                                      imported (or why not)
    <run>/slurm/logs/                 Slurm's output files: the batch script's and every task's
    <run>/nodes/<node>-gpu<k>/        one shard per (node, GPU): a run directory of its own
                                      (manifest.json, <arm>/<benchmark>/<case>/inv-<k>/...)
    <run>/manifest.json               written by ``benchlib collect``: every shard's invocations, merged
    <run>/fleet.json                  written by ``benchlib collect``: every slot's state, missing ones and why

A shard is a complete run directory, so a task that was killed or requeued resumes it exactly as
``benchlib run --resume`` resumes a local run. ``k`` is the GPU's global index on its node as Slurm
names it (``SLURM_STEP_GPUS``, which stays global under device cgroups, unlike
``CUDA_VISIBLE_DEVICES``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..manifest import SHARDS_DIR as NODES_DIR

SLURM_DIR = "slurm"
SCRIPT_FILE, SUBMISSION_FILE, TOKEN_FILE, PLAN_FILE = "job.sbatch", "submission.json", "shared-token", "plan.json"
NODE_RECORDS_DIR, LOGS_DIR = "nodes", "logs"
FLEET_FILE = "fleet.json"
SLOT_FILE = "slot.json"  # in a shard: the node, GPU, job, step and CPU binding the task ran with

#: A Slurm node name as it may appear in a folder name: letters, digits, '.', '_', '-'.
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHARD_NAME = re.compile(r"^(?P<node>[A-Za-z0-9][A-Za-z0-9._-]{0,127})-gpu(?P<gpu>\d{1,4})$")


@dataclass(frozen=True, order=True)
class Slot:
    """One (node, GPU) of the allocation: one task, one shard."""

    node: str
    gpu: int  # the GPU's global index on its node (SLURM_STEP_GPUS)

    @property
    def name(self) -> str:
        return f"{self.node}-gpu{self.gpu}"

    @classmethod
    def parse(cls, name: str) -> "Slot":
        match = _SHARD_NAME.match(name)
        if not match:
            raise ValueError(f"{name!r} is not a shard name of the form <node>-gpu<k>")
        return cls(match["node"], int(match["gpu"]))


def valid_node_name(name: str) -> bool:
    return bool(_NODE_NAME.match(name))


def slurm_dir(run_dir: Path) -> Path:
    return Path(run_dir) / SLURM_DIR


def script_path(run_dir: Path) -> Path:
    return slurm_dir(run_dir) / SCRIPT_FILE


def submission_path(run_dir: Path) -> Path:
    return slurm_dir(run_dir) / SUBMISSION_FILE


def token_path(run_dir: Path) -> Path:
    return slurm_dir(run_dir) / TOKEN_FILE


def plan_path(run_dir: Path) -> Path:
    return slurm_dir(run_dir) / PLAN_FILE


def logs_dir(run_dir: Path) -> Path:
    return slurm_dir(run_dir) / LOGS_DIR


def node_record_path(run_dir: Path, node: str) -> Path:
    return slurm_dir(run_dir) / NODE_RECORDS_DIR / f"{node}.json"


def shards_dir(run_dir: Path) -> Path:
    return Path(run_dir) / NODES_DIR


def shard_dir(run_dir: Path, slot: Slot) -> Path:
    return shards_dir(run_dir) / slot.name


def fleet_path(run_dir: Path) -> Path:
    return Path(run_dir) / FLEET_FILE


def shard_prefix(shard: str) -> str:
    """A shard's folder relative to the run directory (what the merged manifest puts before rel_dir)."""
    return f"{NODES_DIR}/{shard}"


def existing_shards(run_dir: Path) -> list[Slot]:
    """The shards present under ``<run>/nodes/`` (folders named ``<node>-gpu<k>``), sorted."""
    folder = shards_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        try:
            found.append(Slot.parse(path.name))
        except ValueError:
            continue
    return sorted(found)


def recorded_nodes(run_dir: Path) -> list[str]:
    """Nodes that wrote their record (``<run>/slurm/nodes/<node>.json``), sorted."""
    folder = slurm_dir(run_dir) / NODE_RECORDS_DIR
    return sorted(path.stem for path in folder.glob("*.json")) if folder.is_dir() else []
