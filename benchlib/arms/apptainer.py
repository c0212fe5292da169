"""Apptainer arms (engine ``apptainer``, kind ``container``)::

    env APPTAINERENV_K=V ... apptainer exec --containall
        --bind REPO:REPO:ro,RUN_DIR:RUN_DIR:rw --pwd WORKDIR [--nv] <arm.run_flags> IMAGE argv...

``--containall`` gives the container its own /tmp, HOME, PID and IPC namespaces and a clean
environment, so that, as with Docker, nothing from the host (``~/.local`` site-packages above all)
leaks in; the environment goes through ``APPTAINERENV_`` variables, which survive ``--containall``
and, unlike ``--env``, do not split values at commas. IMAGE is a ``.sif`` path or a URI
(``docker://``, ``oras://``, ...) as given, or else a local Docker image read through
``docker-daemon://IMAGE``. This launcher follows the Apptainer 1.x CLI documentation but could not be
run where it was written (no Apptainer there): only its argv is unit-tested.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

from ..errors import PreflightError
from ._base import QUERY_TIMEOUT_S, HostFacts, LaunchSpec, Launcher, forwarded_env, run_quiet, wants_gpus
from ._images import file_sha256, inspect_image
from ._model import DEFAULT_IMAGE, Arm
from ._probe import run_probe
from .docker import DockerLauncher, container_advice, explain_engine_probe

__all__ = ["ApptainerLauncher", "apptainer_image_ref"]


def apptainer_image_ref(image: str) -> str:
    """A .sif path or URI as given; anything else is a local Docker image (``docker-daemon://``)."""
    if "://" in image or image.endswith((".sif", ".sqsh", ".img")) or image.startswith(("/", "./", "../")):
        return image
    return f"docker-daemon://{image}"


class ApptainerLauncher(Launcher):
    engine = "apptainer"
    kind = "container"
    userland = "image"
    needs_image = True
    isolation = "pid, ipc and mount namespaces (--containall); no cgroup limits, no seccomp filter of its own"
    stuck_hint = "`apptainer instance list`"

    def argv(self, arm: Arm, spec: LaunchSpec, host: HostFacts) -> list[str]:
        repo, run, workdir = (str(Path(p)) for p in (spec.repo_dir, spec.run_dir, spec.workdir))
        env_prefix = ["env"] + [f"APPTAINERENV_{k}={v}" for k, v in forwarded_env(spec).items()]
        argv = ["apptainer", "exec", "--containall", "--bind", f"{repo}:{repo}:ro,{run}:{run}:rw", "--pwd", workdir]
        if wants_gpus(arm, host):
            argv.append("--nv")
        argv += list(arm.run_flags)
        argv.append(apptainer_image_ref(str(arm.image or DEFAULT_IMAGE)))
        return (env_prefix if len(env_prefix) > 1 else []) + argv + list(spec.argv)

    def image_identity(self, image: str) -> str | None:
        """A ``.sif`` file's SHA-256 (cached by path, size and mtime), or the Docker image's for
        ``docker-daemon://`` images."""
        ref = apptainer_image_ref(image)
        if ref.startswith("docker-daemon://"):
            return DockerLauncher().image_identity(ref[len("docker-daemon://"):])
        path = Path(ref)
        if path.is_file():
            status = path.stat()
            return file_sha256(str(path.resolve()), status.st_size, status.st_mtime_ns)
        return None

    def explain_failed_probe(self, arm: Arm, done: subprocess.CompletedProcess, attempt: Callable[[bool], Any]) -> None:
        explain_engine_probe(arm, done, attempt)

    def preflight(self, arm: Arm, repo_dir: Path, run_dir: Path, host: HostFacts) -> dict[str, Any]:
        where = f"arm {arm.name!r}"
        if not shutil.which("apptainer"):
            raise PreflightError(f"{where}: `apptainer` is not on PATH; install Apptainer "
                                 "(https://apptainer.org/docs/admin/main/installation.html) or leave the arm out.")
        try:
            version = run_quiet(["apptainer", "--version"], QUERY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise PreflightError(f"{where}: `apptainer --version` did not answer within {QUERY_TIMEOUT_S} s; "
                                 "check the Apptainer installation.") from None
        image = str(arm.image or DEFAULT_IMAGE)
        ref = apptainer_image_ref(image)
        if ref.startswith("docker-daemon://") and inspect_image("docker", image) is None:
            raise PreflightError(f"{where}: image {image} is not present for docker (apptainer reads it through "
                                 "docker-daemon://); build it with `benchlib image build` or `make image`, or give "
                                 "the arm a .sif path.")
        if "://" not in ref and not Path(ref).exists():
            raise PreflightError(f"{where}: image {ref} does not exist; build it with `apptainer build {ref} "
                                 f"docker-daemon://{DEFAULT_IMAGE}` after `benchlib image build`.")
        facts: dict[str, Any] = {"engine": "apptainer", "engine_version": version.stdout.strip(), "image": ref,
                                 "image_digest": self.image_identity(image)}
        facts.update(run_probe(self, arm, repo_dir, run_dir, host, container_advice(arm.image)))
        return facts
