"""Docker arms (engine ``docker``, kind ``container``)::

    docker run --rm --pull=never --name NAME --user UID:GID
        -v REPO:REPO:ro -v RUN_DIR:RUN_DIR:rw -w WORKDIR -e K=V ...
        [--gpus all | --device nvidia.com/gpu=all]  <arm.run_flags>  IMAGE  argv...

The checkout is mounted read-only and the run directory read-write, each at its own path, and
nothing else: no --privileged, no host network, no extra devices beyond the GPUs. GPUs are passed
when ``arm.gpus == "all"``, or ``"auto"`` and the host has one: through CDI
(``--device nvidia.com/gpu=all``) when a CDI spec for NVIDIA exists in /etc/cdi or /var/run/cdi, else
through ``--gpus all`` (the NVIDIA Container Toolkit hook). ``CUDA_VISIBLE_DEVICES`` set where
benchlib runs is forwarded, so both arms use the same GPU.

Who runs inside: the invoking user's UID:GID, so that files in the run directory belong to them.
When the invoker is root (CI), the container runs as UID:GID 1000:1000 instead, the image's
non-root user, so that results describe a non-root container; the run directory must then be
writable by UID 1000, which :meth:`DockerLauncher.prepare_run_dir` arranges (it chowns the run
directory's folders, never files, and only when benchlib runs as root).
``BENCHLIB_CONTAINER_USER=UID:GID`` overrides the choice. A container is named
(:func:`benchlib.arms.container_name`) so that an invocation that overruns its time limit can be
removed (killing the docker client alone leaves the container running).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

from ..errors import PreflightError
from ._base import (DOCKER_SYNTAX, QUERY_TIMEOUT_S, HostFacts, LaunchSpec, Launcher, container_name, first_error_line,
                    forwarded_env, run_quiet, wants_gpus)
from ._images import inspect_image
from ._model import DEFAULT_IMAGE, Arm
from ._probe import ProbeAdvice, run_probe

__all__ = ["CDI_DIRS", "ROOT_CONTAINER_USER", "DockerLauncher", "cdi_specs_present", "container_user"]

#: Where CDI specs live (the NVIDIA Container Toolkit writes nvidia.yaml into one of them).
CDI_DIRS: tuple[Path, ...] = (Path("/etc/cdi"), Path("/var/run/cdi"))
#: The UID:GID a container runs as when benchlib itself runs as root: the image's non-root user.
ROOT_CONTAINER_USER: tuple[int, int] = (1000, 1000)


def cdi_specs_present(dirs: tuple[Path, ...] = CDI_DIRS) -> bool:
    """True when an NVIDIA CDI spec exists (``nvidia-ctk cdi generate`` writes one)."""
    for directory in dirs:
        try:
            if any(p.suffix in (".yaml", ".yml", ".json") for p in directory.glob("nvidia*")):
                return True
        except OSError:
            continue
    return False


def container_user() -> tuple[int, int]:
    """UID and GID inside a container: the invoker's, or 1000:1000 when the invoker is root."""
    override = os.environ.get("BENCHLIB_CONTAINER_USER", "").strip()
    if override:
        try:
            uid, _, gid = override.partition(":")
            return int(uid), int(gid or uid)
        except ValueError:
            raise PreflightError(
                f"BENCHLIB_CONTAINER_USER={override!r} is not UID:GID; set it like 1000:1000 or unset it."
            ) from None
    if os.geteuid() == 0:
        return ROOT_CONTAINER_USER
    return os.getuid(), os.getgid()


def chown_folders(run_dir: Path, uid: int, gid: int) -> None:
    """Chown every folder under ``run_dir`` (itself included, files excluded) to UID:GID, when benchlib
    runs as root and the target is not root."""
    if os.geteuid() != 0 or uid == 0:
        return
    for directory, _subdirs, _files in os.walk(Path(run_dir)):
        status = os.stat(directory)
        if (status.st_uid, status.st_gid) != (uid, gid):
            os.chown(directory, uid, gid)


def explain_engine_probe(arm: Arm, done: subprocess.CompletedProcess, attempt: Callable[[bool], Any]) -> None:
    """A failed trial run of a container engine (docker, podman, apptainer), in one sentence."""
    where, engine = f"arm {arm.name!r}", arm.engine
    detail = first_error_line(done.stderr or done.stdout)
    lowered = detail.lower()
    if done.returncode == 125:  # the engine refused to create or start the container
        if "gpu" in lowered or "nvidia" in lowered or "cdi" in lowered:
            if "cdi" in lowered or "nvidia.com/gpu" in lowered:
                fix = ("generate the CDI spec (`sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`) "
                       "and enable CDI in the engine")
            else:
                fix = ("install the NVIDIA Container Toolkit and run `sudo nvidia-ctk runtime configure "
                       f"--runtime={engine}`, then restart {engine}")
            raise PreflightError(f"{where}: {engine} cannot pass GPUs into the container ({detail}); {fix}, "
                                 "or set `gpus: none` on the arm.")
        if arm.run_flags:
            plain = attempt(False)
            if plain.returncode == 0:
                fix = "fix 'flags'/'preset' of the arm in the suite"
                if "rlimit" in lowered:
                    fix = (f"{engine} may not raise that ulimit on this machine (the daemon's own hard limit is "
                           "lower and it lacks CAP_SYS_RESOURCE), so raise the daemon's limit (e.g. "
                           "LimitMEMLOCK=infinity) or drop that --ulimit from the arm")
                raise PreflightError(f"{where}: {engine} rejects the arm's run flags "
                                     f"{' '.join(arm.run_flags)} ({detail}); {fix}.")
        raise PreflightError(f"{where}: {engine} could not start a container from {arm.image} ({detail}); "
                             "fix the engine or the arm's flags and retry.")
    if done.returncode in (126, 127):
        raise PreflightError(f"{where}: image {arm.image} has no runnable python3 ({detail}); rebuild it with "
                             "`benchlib image build` or `make image`.")
    raise PreflightError(f"{where}: the trial run inside {arm.image} failed with exit code {done.returncode} "
                         f"({detail}); rebuild the image with `benchlib image build` and retry.")


def container_advice(image: str) -> ProbeAdvice:
    """What a container engine's trial run can find wrong, in its words."""
    return ProbeAdvice(
        inside="inside the container",
        unwritable="UID {uid} inside the container cannot write under {run_dir} ({error}); make it writable for "
                   "that UID (run benchlib as the owner, or set BENCHLIB_CONTAINER_USER=UID:GID).",
        unreadable="the container cannot read the mounted checkout; on SELinux hosts add `--security-opt "
                   "label=disable` to the arm's flags, otherwise check the checkout's permissions.",
        missing=f"image {image} lacks {{modules}}; rebuild it with `benchlib image build` or `make image`.",
        no_torch=f"torch does not import inside {image} ({{error}}); use an image that has torch (the Dockerfile's "
                 "NGC base) and rebuild.",
        no_gpu="the host has a GPU but none is visible inside the container; install the NVIDIA Container Toolkit "
               "(`nvidia-ctk runtime configure`), or set `gpus: none` on the arm to measure without GPUs.",
        no_report=f"the trial run inside {image} printed no report ({{error}}); rebuild the image with "
                  "`benchlib image build` and retry.",
    )


class DockerLauncher(Launcher):
    engine = "docker"
    kind = "container"
    userland = "image"
    needs_image = True
    drops_root = True
    isolation = "namespaces (pid, net, ipc, uts, mount), cgroups, Docker's seccomp profile and 14 capabilities"
    mechanisms = DOCKER_SYNTAX

    @property
    def stuck_hint(self) -> str:  # type: ignore[override]
        return f"`{self.engine} ps`"

    def gpu_flags(self, arm: Arm, host: HostFacts) -> list[str]:
        """The run flags that pass GPUs into the container (empty when none are wanted)."""
        if not wants_gpus(arm, host):
            return []
        if cdi_specs_present() if host.cdi is None else host.cdi:
            return ["--device", "nvidia.com/gpu=all"]
        return ["--gpus", "all"]

    def user_flags(self) -> list[str]:
        uid, gid = container_user()
        return ["--user", f"{uid}:{gid}"]

    def argv(self, arm: Arm, spec: LaunchSpec, host: HostFacts) -> list[str]:
        repo, run, workdir = (str(Path(p)) for p in (spec.repo_dir, spec.run_dir, spec.workdir))
        argv = [self.engine, "run", "--rm", "--pull=never", "--name", container_name(spec), *self.user_flags()]
        argv += ["-v", f"{repo}:{repo}:ro", "-v", f"{run}:{run}:rw", "-w", workdir]
        for key, value in forwarded_env(spec).items():
            argv += ["-e", f"{key}={value}"]
        argv += self.gpu_flags(arm, host)
        argv += list(arm.run_flags)
        argv.append(str(arm.image or DEFAULT_IMAGE))
        return argv + list(spec.argv)

    def stop(self, arm: Arm, spec: LaunchSpec) -> None:
        if shutil.which(self.engine):
            subprocess.run([self.engine, "rm", "-f", container_name(spec)], capture_output=True,
                           timeout=QUERY_TIMEOUT_S, check=False)

    def prepare_run_dir(self, arm: Arm, run_dir: Path) -> None:
        chown_folders(run_dir, *container_user())

    def image_identity(self, image: str) -> str | None:
        """The registry digest (``repo@sha256:...``) when the image has one, else its ID (``sha256:...``)."""
        info = inspect_image(self.engine, image)
        if info is None:
            return None
        digests = info.get("RepoDigests") or []
        return digests[0] if digests else info.get("Id")

    def install_hint(self) -> str:
        return "run `.ci/docker-setup.sh` (as root) or install Docker Engine"

    def start_hint(self) -> str:
        return "start it (`.ci/docker-setup.sh` as root, or `sudo systemctl start docker`)"

    def explain_failed_probe(self, arm: Arm, done: subprocess.CompletedProcess, attempt: Callable[[bool], Any]) -> None:
        explain_engine_probe(arm, done, attempt)

    def preflight(self, arm: Arm, repo_dir: Path, run_dir: Path, host: HostFacts) -> dict[str, Any]:
        engine, where = self.engine, f"arm {arm.name!r}"
        if not shutil.which(engine):
            raise PreflightError(f"{where}: `{engine}` is not on PATH; {self.install_hint()}, or leave the arm out.")
        facts: dict[str, Any] = {"engine": engine}
        try:
            info = run_quiet([engine, "version", "--format", "{{json .}}"], QUERY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise PreflightError(f"{where}: `{engine} version` did not answer within {QUERY_TIMEOUT_S} s; "
                                 f"check that the {engine} daemon is healthy (restart it) and retry.") from None
        if info.returncode != 0:
            detail = first_error_line(info.stderr)
            if "permission denied" in detail.lower():
                fix = f"add your user to the `{engine}` group (then log in again) or run as root"
            else:
                fix = self.start_hint()
            raise PreflightError(f"{where}: the {engine} engine does not answer ({detail}); {fix}.")
        try:
            version = json.loads(info.stdout)
            server = version.get("Server") or {}
            facts["engine_version"] = server.get("Version") or (version.get("Client") or {}).get("Version")
            facts["engine_api_version"] = server.get("ApiVersion") or server.get("APIVersion")
        except (json.JSONDecodeError, AttributeError):
            facts["engine_version"] = None
        image = str(arm.image or DEFAULT_IMAGE)
        record = inspect_image(engine, image)
        if record is None:
            raise PreflightError(f"{where}: image {image} is not present for {engine}; build it with "
                                 "`benchlib image build` or `make image` (CI: `.ci/build-images.sh`).")
        digests = record.get("RepoDigests") or []
        config = record.get("Config") or {}
        facts.update(image=image, image_id=record.get("Id"), image_digest=digests[0] if digests else record.get("Id"),
                     image_created=record.get("Created"), image_labels=config.get("Labels") or {})
        uid, gid = container_user()
        facts["container_user"] = f"{uid}:{gid}"
        facts["gpu_flags"] = self.gpu_flags(arm, host)
        facts.update(run_probe(self, arm, repo_dir, run_dir, host, container_advice(image)))
        return facts
