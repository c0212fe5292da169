"""Running a suite across a Slurm cluster: one shard per (node, GPU), merged into one run.

- :mod:`benchlib.cluster.sbatch` — the ``--on slurm`` options, validated, and the batch script.
- :mod:`benchlib.cluster.submit` — a run directory for the cluster, checked by Slurm, submitted.
- :mod:`benchlib.cluster.task` — what each node and each (node, GPU) task runs.
- :mod:`benchlib.cluster.shards` — shards' state (``benchlib status``) and merging (``benchlib collect``).
- :mod:`benchlib.cluster.containers` — pyxis, enroot, Apptainer and Docker argv and image imports.
- :mod:`benchlib.cluster.layout` — where everything lives under the run directory.

The fleet's statistics (per-node comparisons, node vs arm variance, outlier nodes) are in
:mod:`benchlib.fleet`.
"""
from __future__ import annotations

__all__: list[str] = []
