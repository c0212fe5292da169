"""Container launches on cluster nodes: pyxis, enroot, Apptainer and Docker argv, and the image imports
done once per node before anything is measured. Pure functions of an arm, a launch spec and what
Slurm gave the task (:class:`NodeContext`); :mod:`benchlib.cluster.task` runs them.

Written against the real documentation: pyxis's README (v0.24.0: ``srun --container-image``,
``--container-mounts=SRC:DST[:FLAGS]`` with flags joined by ``+``, ``--container-workdir``,
``--container-name``, ``--no-container-mount-home``, ``--container-env``, ``--container-unshare``),
enroot's ``doc/cmd/{import,create,start}.md`` (``enroot import --output FILE URI``, ``enroot create
--name NAME FILE``, ``enroot start --mount SRC:DST:none:OPTS --env K=V NAME CMD``, mounts being
fstab lines with ``:`` for spaces), Apptainer 1.x (``pull``, ``exec --nv --containall --bind``) and
Slurm 22.05's ``srun(1)``. pyxis, enroot and Apptainer could not be run where this was written:
their argv is tested, not their behaviour.

Isolation differs between them, and the report must say so (:func:`isolation_note`):

* **pyxis** runs the task inside an enroot container: user and mount namespaces only. It shares the
  host's IPC namespace (``/dev/shm`` is the host's), network, PID and UTS unless
  ``--container-unshare=ipc`` (or ``net``, ``uts``) is given, which needs pyxis >= 0.24.0 and an
  enroot with IPC namespace support. No cgroup of its own beyond Slurm's, no seccomp filter, no
  capability drop beyond the unprivileged user. A pyxis arm is therefore not the isolation of a
  Docker arm; its IPC choice is recorded with each invocation.
* **enroot** alone: the same namespaces; ``ENROOT_UNSHARE_IPC=y`` (``enroot start --ipc``, enroot
  after 4.1.2) adds an IPC namespace.
* **Apptainer** with ``--containall``: its own PID and IPC namespaces, /tmp and HOME, a clean
  environment; network shared.
* **Docker**: every namespace, cgroups, seccomp, a capability set, ``/dev/shm`` of 64 MiB.

Images: pyxis imports an image on first use; :func:`import_steps` makes that happen in the
per-node preparation step with a named container (``--container-name``), which the measured
invocations then reuse, so no download or unpacking falls inside an invocation. enroot imports into
a squashfs file in a node-local cache and creates the container once; Apptainer pulls a ``.sif``
into that cache (an image given as a ``.sif`` path is used in place); Docker pulls the image when the
node lacks it.
"""
from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Sequence

from ..arms import Arm
from ..arms import LaunchSpec, apptainer_image_ref, launch_argv
from ..errors import PreflightError

IpcChoice = Literal["host", "private"]
#: pyxis versions that accept --container-unshare (added in 0.24.0).
PYXIS_UNSHARE_SINCE = "0.24.0"


@dataclass(frozen=True)
class NodeContext:
    """What Slurm gave one task, as the launchers need it."""

    node: str
    job_id: str | None  # SLURM_JOB_ID; None outside a job
    gpus_per_node: int
    cuda_device: str | None  # the slot's GPU as CUDA_VISIBLE_DEVICES names it inside (a UUID where NVML has one)
    cache_dir: Path  # node-local folder for imported images ($BENCHLIB_NODE_CACHE, else /tmp/benchlib-images-UID)


@dataclass(frozen=True)
class ImportStep:
    """One command of a node's image import; skipped when ``done_if`` exits 0 (the image is there)."""

    argv: list[str]
    done_if: list[str] | None
    what: str  # "import nvcr.io/nvidia/pytorch:25.10-py3 with enroot", for messages


def image_key(image: str) -> str:
    """A name for an image's container or file: readable, and unique by a hash of the full reference."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", image.rsplit("/", 1)[-1]).strip("-.")[:40] or "image"
    return f"benchlib-{stem}-{hashlib.sha1(image.encode()).hexdigest()[:10]}"


def enroot_uri(image: str) -> str:
    """An image as enroot imports it: ``docker://[REGISTRY#]IMAGE[:TAG]`` (the registry separated by
    ``#``), a ``dockerd://`` or ``podman://`` URI as given, or a squashfs path as given."""
    if image.startswith(("docker://", "dockerd://", "podman://")) or _is_file_image(image):
        return image
    first, sep, rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost") and "#" not in image:
        image = f"{first}#{rest}"
    return f"docker://{image}"


def pyxis_image(image: str) -> str:
    """What ``--container-image`` takes: an enroot URI without ``docker://`` (pyxis adds it), a
    ``dockerd://`` URI, or a squashfs path."""
    uri = enroot_uri(image)
    return uri.removeprefix("docker://")


def _is_file_image(image: str) -> bool:
    return image.startswith(("/", "./", "../")) or image.endswith((".sqsh", ".squashfs", ".sif"))


def _check_mount_paths(arm: Arm, spec: LaunchSpec, separators: str) -> None:
    for path in (spec.repo_dir, spec.run_dir, spec.workdir):
        if any(char in str(path) for char in separators):
            raise PreflightError(f"arm {arm.name!r}: the path {str(path)!r} holds one of {' '.join(separators)}, "
                                 f"which separate {arm.engine} mount entries; use paths without them.")


def _inside_command(spec: LaunchSpec, ctx: NodeContext, gpus: bool) -> list[str]:
    """The command inside the container: the slot's GPU selected by ``env`` after Slurm and the image
    have set their own CUDA_VISIBLE_DEVICES (a UUID names the same GPU whatever the numbering)."""
    if gpus and ctx.cuda_device:
        return ["env", f"CUDA_VISIBLE_DEVICES={ctx.cuda_device}", *spec.argv]
    return list(spec.argv)


def pyxis_mounts(spec: LaunchSpec) -> str:
    """``--container-mounts``: the checkout read-only, the run directory writable, each at its own path."""
    repo, run = str(spec.repo_dir), str(spec.run_dir)
    return f"{repo}:{repo}:ro,{run}:{run}"


def pyxis_argv(arm: Arm, spec: LaunchSpec, ctx: NodeContext, gpus: bool, ipc: IpcChoice = "host") -> list[str]:
    """One invocation as a job step of the task's own job, on its node, in the node's imported container.

    ``srun --overlap`` shares the CPUs, memory and GPUs the measuring step already holds (srun(1),
    22.05); ``--gpus-per-node`` gives the step the node's GPUs and the command selects the slot's.
    The environment reaches the container through srun (``env K=V srun ...``) and
    ``--container-env`` names every key so that its value wins over the image's.
    """
    _check_mount_paths(arm, spec, ":,")
    env = dict(spec.env)
    argv = ["env", *(f"{key}={value}" for key, value in env.items())] if env else []
    argv += ["srun", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={ctx.node}", "--kill-on-bad-exit=1"]
    if ctx.job_id:
        argv.append(f"--jobid={ctx.job_id}")
    if gpus:
        argv.append(f"--gpus-per-node={ctx.gpus_per_node}")
    argv += [f"--container-image={pyxis_image(str(arm.image))}", f"--container-name={image_key(str(arm.image))}",
             f"--container-mounts={pyxis_mounts(spec)}", f"--container-workdir={spec.workdir}",
             "--no-container-mount-home"]
    if env:
        argv.append(f"--container-env={','.join(env)}")
    if ipc == "private":
        argv.append("--container-unshare=ipc")
    argv += list(arm.run_flags)
    return argv + _inside_command(spec, ctx, gpus)


def enroot_mounts(spec: LaunchSpec) -> list[str]:
    """``enroot start --mount`` entries: fstab lines with ``:`` for the spaces (start.md)."""
    repo, run = str(spec.repo_dir), str(spec.run_dir)
    return [f"{repo}:{repo}:none:x-create=dir,bind,ro", f"{run}:{run}:none:x-create=dir,bind,rw"]


def enroot_argv(arm: Arm, spec: LaunchSpec, ctx: NodeContext, gpus: bool, ipc: IpcChoice = "host") -> list[str]:
    """``enroot start`` of the container :func:`import_steps` created on this node.

    The root filesystem stays read-only (enroot's default), the home directory is not mounted
    (``ENROOT_MOUNT_HOME=n`` overrides a site default), the environment goes in with ``--env``.
    GPUs: enroot's nvidia hook mounts what ``NVIDIA_VISIBLE_DEVICES`` names; ``all`` with the slot's
    GPU selected inside, as for native.
    """
    _check_mount_paths(arm, spec, ": ")
    settings = ["ENROOT_MOUNT_HOME=n", "ENROOT_ROOTFS_WRITABLE=n"]
    if ipc == "private":
        settings.append("ENROOT_UNSHARE_IPC=y")
    argv = ["env", *settings, "enroot", "start"]
    for mount in enroot_mounts(spec):
        argv += ["--mount", mount]
    env = dict(spec.env)
    if gpus:
        env.setdefault("NVIDIA_VISIBLE_DEVICES", "all")
        env.setdefault("NVIDIA_DRIVER_CAPABILITIES", "compute,utility")
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    argv += list(arm.run_flags)
    argv.append(image_key(str(arm.image)))
    workdir = shlex.quote(str(spec.workdir))
    inside = shlex.join(_inside_command(spec, ctx, gpus))
    return argv + ["sh", "-c", f"cd {workdir} && exec {inside}"]


def apptainer_sif(arm: Arm, ctx: NodeContext) -> str:
    """The image Apptainer runs: a ``.sif`` path as given, else the file :func:`import_steps` pulls."""
    image = str(arm.image)
    if image.endswith(".sif") and "://" not in image:
        return image
    return str(ctx.cache_dir / f"{image_key(image)}.sif")


def apptainer_argv(arm: Arm, spec: LaunchSpec, ctx: NodeContext, gpus: bool) -> list[str]:
    """``apptainer exec --containall --nv --bind ...`` of the pulled ``.sif`` (the local launcher's argv,
    image replaced), the slot's GPU selected inside."""
    local = replace(arm, image=apptainer_sif(arm, ctx), gpus="all" if gpus else "none")
    inside = replace(spec, argv=_inside_command(spec, ctx, gpus))
    return launch_argv(local, inside, gpus)


def docker_argv(arm: Arm, spec: LaunchSpec, ctx: NodeContext, gpus: bool) -> list[str]:
    """Docker on a node that has it: the local launcher's argv, with the slot's GPU named by UUID (the
    Docker daemon is outside the job's device cgroup, where Slurm's CUDA_VISIBLE_DEVICES may be
    renumbered)."""
    if gpus and ctx.cuda_device:
        spec = replace(spec, env={**spec.env, "CUDA_VISIBLE_DEVICES": ctx.cuda_device})
    return launch_argv(arm, spec, gpus)


def pyxis_import(arm: Arm, ctx: NodeContext) -> list[ImportStep]:
    """pyxis imports on first use: a one-task step on the node that creates the named container the
    invocations then reuse (pyxis keeps named containers, and skips the import when one exists)."""
    image = str(arm.image)
    step = ["srun", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={ctx.node}"]
    if ctx.job_id:
        step.append(f"--jobid={ctx.job_id}")
    step += [f"--container-image={pyxis_image(image)}", f"--container-name={image_key(image)}",
             "--no-container-mount-home", "true"]
    return [ImportStep(step, None, f"import {image} with pyxis on {ctx.node}")]


def enroot_import(arm: Arm, ctx: NodeContext) -> list[ImportStep]:
    """``enroot import --output CACHE/KEY.sqsh URI`` (unless done), then ``enroot create --force --name KEY``."""
    image, key = str(arm.image), image_key(str(arm.image))
    steps = []
    if _is_file_image(image):
        squashfs = image
    else:
        squashfs = str(ctx.cache_dir / f"{key}.sqsh")
        steps.append(ImportStep(["enroot", "import", "--output", squashfs, enroot_uri(image)],
                                ["test", "-s", squashfs], f"import {image} with enroot on {ctx.node}"))
    steps.append(ImportStep(["enroot", "create", "--force", "--name", key, squashfs], None,
                            f"create the enroot container {key} on {ctx.node}"))
    return steps


def apptainer_import(arm: Arm, ctx: NodeContext) -> list[ImportStep]:
    """``apptainer pull CACHE/KEY.sif URI`` (unless done); a ``.sif`` path is only checked readable."""
    image = str(arm.image)
    sif = apptainer_sif(arm, ctx)
    if sif == image:
        return [ImportStep(["test", "-r", sif], None, f"read {sif} on {ctx.node}")]
    return [ImportStep(["apptainer", "pull", sif, apptainer_image_ref(image)], ["test", "-s", sif],
                       f"pull {image} with apptainer on {ctx.node}")]


def docker_import(arm: Arm, ctx: NodeContext) -> list[ImportStep]:
    """``docker pull IMAGE`` when ``docker image inspect IMAGE`` says the node lacks it."""
    image, engine = str(arm.image), arm.engine
    return [ImportStep([engine, "pull", image], [engine, "image", "inspect", image],
                       f"pull {image} with {engine} on {ctx.node}")]


#: engine -> how a node imports that engine's images before measuring.
IMPORTERS = {"pyxis": pyxis_import, "enroot": enroot_import, "apptainer": apptainer_import,
             "docker": docker_import, "podman": docker_import}


def import_steps(arm: Arm, ctx: NodeContext) -> list[ImportStep]:
    """What a node runs once, before measuring, so that ``arm``'s image is there (empty: nothing to do)."""
    importer = IMPORTERS.get(arm.engine)
    return importer(arm, ctx) if importer and arm.image else []


_IMPORT_FIXES = {
    "pyxis": ("check that `srun --container-image={pyxis} true` works on {node} (registry credentials in "
              "$ENROOT_CONFIG_PATH/.credentials; a local image as a squashfs path made with `enroot import "
              "dockerd://IMAGE`)"),
    "enroot": "check that `enroot import {uri}` works on {node} (credentials, disk space in $ENROOT_CACHE_PATH)",
    "apptainer": ("check that `apptainer pull {apptainer}` works on {node}, or give the arm a .sif path on the "
                  "shared filesystem"),
    "docker": ("build or load the image on {node} (`benchlib image build`, or `docker load -i FILE.tar`), or push "
               "it to a registry the nodes reach"),
}


def import_failure(step: ImportStep, arm: Arm, node: str, detail: str) -> str:
    """One sentence: which node, which option, and the fix, for a failed import step."""
    image = str(arm.image)
    fix = _IMPORT_FIXES.get(arm.engine, _IMPORT_FIXES["docker"]).format(
        pyxis=pyxis_image(image), uri=enroot_uri(image), apptainer=apptainer_image_ref(image), node=node)
    return (f"node {node}: arm {arm.name!r} cannot use image {image} ({step.what} failed: {detail}); {fix}; the "
            "node measures its other arms.")


_ISOLATION = {
    ("pyxis", "host"): ("pyxis/enroot: user and mount namespaces only; shares the host's IPC (/dev/shm), network, "
                        "PID and UTS; no seccomp filter or capability set of its own: not the isolation of a Docker "
                        "arm"),
    ("pyxis", "private"): ("pyxis/enroot with --container-unshare=ipc: user, mount and IPC namespaces; shares the "
                           "host's network, PID and UTS; no seccomp filter or capability set of its own: not the "
                           "isolation of a Docker arm"),
    ("enroot", "host"): ("enroot: user and mount namespaces only; shares the host's IPC (/dev/shm), network, PID and "
                         "UTS: not the isolation of a Docker arm"),
    ("enroot", "private"): ("enroot with ENROOT_UNSHARE_IPC=y: user, mount and IPC namespaces; shares the host's "
                            "network, PID and UTS: not the isolation of a Docker arm"),
    ("apptainer", "host"): ("Apptainer --containall: PID and IPC namespaces, its own /tmp and HOME, a clean "
                            "environment; shares the host's network"),
    ("docker", "host"): ("Docker: every namespace, cgroups, seccomp and a capability set; /dev/shm 64 MiB unless the "
                         "arm sets it"),
}


def isolation_note(engine: str, ipc: IpcChoice = "host") -> str:
    """What a cluster arm isolates, for the report (see the module docstring)."""
    return _ISOLATION.get((engine, ipc)) or _ISOLATION[(engine, "host")]


def describe_steps(steps: Sequence[ImportStep]) -> list[str]:
    return [shlex.join(step.argv) for step in steps]
