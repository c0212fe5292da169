"""Engines: turn (arm, papermill argv) into the command that launches it; preflight arms; build images.

How each engine launches an invocation (docs/architecture.md, "Arms"):

* ``native`` (engine ``host``): the argv unchanged; the runner adds ``LaunchSpec.env`` to its own.
* ``docker`` / ``podman``::

      docker run --rm --pull=never --name NAME --user UID:GID
          -v REPO:REPO:ro -v RUN_DIR:RUN_DIR:rw -w WORKDIR -e K=V ...
          [--gpus all | --device nvidia.com/gpu=all]  <arm.run_flags>  IMAGE  argv...

  The checkout is mounted read-only and the run directory read-write, each at its own path, and
  nothing else: no --privileged, no host network, no extra devices beyond the GPUs. GPUs are passed
  when ``arm.gpus == "all"``, or ``"auto"`` and the host has one: through CDI
  (``--device nvidia.com/gpu=all``) when a CDI spec for NVIDIA exists in /etc/cdi or /var/run/cdi and
  always for podman, else through ``--gpus all`` (the NVIDIA Container Toolkit hook).
  ``CUDA_VISIBLE_DEVICES`` set where benchlib runs is forwarded, so both arms use the same GPU.
* ``apptainer``::

      env APPTAINERENV_K=V ... apptainer exec --containall
          --bind REPO:REPO:ro,RUN_DIR:RUN_DIR:rw --pwd WORKDIR [--nv] <arm.run_flags> IMAGE argv...

  ``--containall`` gives the container its own /tmp, HOME, PID and IPC namespaces and a clean
  environment, so that, as with Docker, nothing from the host (``~/.local`` site-packages above
  all) leaks in; the environment goes through ``APPTAINERENV_`` variables, which survive
  ``--containall`` and, unlike ``--env``, do not split values at commas. IMAGE is a ``.sif`` path
  or a URI (``docker://``, ``oras://``, ...) as given, or else a local Docker image read through
  ``docker-daemon://IMAGE``. This launcher follows the Apptainer 1.x CLI documentation but could not
  be run where it was written (no Apptainer there): only its argv is unit-tested.

* ``isolated`` (engine ``runc``) and ``rootfs`` (engine ``chroot``): ``HOST_PYTHON
  benchlib/_oci_launch.py PLAN`` and ``HOST_PYTHON benchlib/_chroot_launch.py PLAN``, built by
  :mod:`benchlib.oci` (which documents what each gets); both run as the invoking user.
  :func:`stop` kills and deletes an isolated invocation's runc container; ``benchlib image export``
  (:func:`benchlib.oci.export_image`) makes the folder a rootfs arm enters.

Who runs inside the container: the invoking user's UID:GID, so that files in the run directory
belong to them. When the invoker is root (CI), the container runs as UID:GID 1000:1000 instead, the
image's non-root user, so that results describe a non-root container; the run directory must then
be writable by UID 1000, which :func:`prepare_run_dir` arranges (it chowns the run directory's
folders, never files, and only when benchlib runs as root). ``BENCHLIB_CONTAINER_USER=UID:GID``
overrides the choice. Rootless podman gets ``--userns=keep-id`` so that the UID inside is the
invoker's own.

A container is named (:func:`container_name`) so that an invocation that overruns its time limit can
be removed with :func:`stop` (killing the docker client alone leaves the container running).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import oci
from .arms import DEFAULT_IMAGE, Arm
from .errors import BenchlibError, PreflightError

__all__ = [
    "CDI_DIRS", "ROOT_CONTAINER_USER", "LaunchSpec", "build_image", "cdi_specs_present", "container_name",
    "container_user", "gpu_flags", "image_digest", "launch_argv", "prepare_run_dir", "preflight", "stop",
    "wants_gpus",
]

#: Where CDI specs live (the NVIDIA Container Toolkit writes nvidia.yaml into one of them).
CDI_DIRS: tuple[Path, ...] = (Path("/etc/cdi"), Path("/var/run/cdi"))
#: The UID:GID a container runs as when benchlib itself runs as root: the image's non-root user.
ROOT_CONTAINER_USER: tuple[int, int] = (1000, 1000)
OCI_ENGINES = ("docker", "podman")
#: Environment variables forwarded from where benchlib runs into every container arm.
FORWARDED_ENV = ("CUDA_VISIBLE_DEVICES",)

QUERY_TIMEOUT_S = 30  # docker info / image inspect / version
PROBE_TIMEOUT_S = 180  # one short container run (first start of a large image can be slow)
BUILD_TIMEOUT_S = 3 * 3600
PREFLIGHT_MARK = "BENCHLIB-PREFLIGHT "


@dataclass(frozen=True)
class LaunchSpec:
    """What to run for one invocation, independent of the arm that launches it."""

    argv: list[str]  # the papermill command line to run inside the arm
    repo_dir: Path  # absolute; mounted READ-ONLY at the same path inside a container
    run_dir: Path  # absolute outputs/<run_id>; mounted READ-WRITE at the same path
    workdir: Path  # cwd for the command (inside run_dir)
    env: dict[str, str] = field(default_factory=dict)  # environment for the command
    name: str | None = None  # container name; None: derived from workdir (see container_name)


# --------------------------------------------------------------------------------------------------
# launching


def launch_argv(arm: Arm, spec: LaunchSpec, host_has_gpu: bool, *, cdi: bool | None = None) -> list[str]:
    """The full command that runs ``spec.argv`` through ``arm``.

    ``cdi`` forces (True) or forbids (False) CDI device naming for Docker; None looks for CDI specs.
    For a native arm the argv is returned unchanged: the caller adds ``spec.env`` to the environment.
    """
    if arm.kind == "native":
        return list(spec.argv)
    if arm.kind == "container" and arm.engine in OCI_ENGINES:
        return _oci_argv(arm, spec, host_has_gpu, cdi)
    if arm.kind == "container" and arm.engine == "apptainer":
        return _apptainer_argv(arm, spec, host_has_gpu)
    if arm.kind == "isolated" and arm.engine == "runc":
        return oci.isolated_argv(arm, list(spec.argv), oci.isolated_env(spec.env, FORWARDED_ENV), spec.repo_dir,
                                 spec.run_dir, spec.workdir, wants_gpus(arm, host_has_gpu), container_name(spec))
    if arm.kind == "rootfs" and arm.engine == "chroot":
        return oci.rootfs_argv(arm, list(spec.argv), dict(spec.env), spec.repo_dir, spec.run_dir, spec.workdir,
                               wants_gpus(arm, host_has_gpu))
    raise PreflightError(
        f"arm {arm.name!r}: benchlib cannot launch a {arm.kind} arm with engine {arm.engine!r} yet; "
        "use a native or container arm (docker, podman, apptainer)."
    )


def wants_gpus(arm: Arm, host_has_gpu: bool) -> bool:
    return arm.gpus == "all" or (arm.gpus == "auto" and host_has_gpu)


def cdi_specs_present(dirs: tuple[Path, ...] = CDI_DIRS) -> bool:
    """True when an NVIDIA CDI spec exists (``nvidia-ctk cdi generate`` writes one)."""
    for directory in dirs:
        try:
            if any(p.suffix in (".yaml", ".yml", ".json") for p in directory.glob("nvidia*")):
                return True
        except OSError:
            continue
    return False


def gpu_flags(arm: Arm, host_has_gpu: bool, cdi: bool | None = None) -> list[str]:
    """The run flags that pass GPUs into a docker/podman container (empty when none are wanted)."""
    if not wants_gpus(arm, host_has_gpu):
        return []
    if arm.engine == "podman" or (cdi_specs_present() if cdi is None else cdi):
        return ["--device", "nvidia.com/gpu=all"]
    return ["--gpus", "all"]


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


def container_name(spec: LaunchSpec) -> str:
    """A stable container name for an invocation: ``benchlib-`` and a hash of its workdir."""
    if spec.name:
        return spec.name
    return "benchlib-" + hashlib.sha1(str(spec.workdir).encode()).hexdigest()[:16]


def _container_env(spec: LaunchSpec) -> dict[str, str]:
    env = dict(spec.env)
    for key in FORWARDED_ENV:
        if key in os.environ and key not in env:
            env[key] = os.environ[key]
    return env


def _oci_argv(arm: Arm, spec: LaunchSpec, host_has_gpu: bool, cdi: bool | None) -> list[str]:
    repo, run, workdir = (str(Path(p)) for p in (spec.repo_dir, spec.run_dir, spec.workdir))
    uid, gid = container_user()
    argv = [arm.engine, "run", "--rm", "--pull=never", "--name", container_name(spec), "--user", f"{uid}:{gid}"]
    if arm.engine == "podman" and os.geteuid() != 0:
        argv.append("--userns=keep-id")  # rootless podman: keep the invoker's UID inside
    argv += ["-v", f"{repo}:{repo}:ro", "-v", f"{run}:{run}:rw", "-w", workdir]
    for key, value in _container_env(spec).items():
        argv += ["-e", f"{key}={value}"]
    argv += gpu_flags(arm, host_has_gpu, cdi)
    argv += list(arm.run_flags)
    argv.append(str(arm.image or DEFAULT_IMAGE))
    return argv + list(spec.argv)


def apptainer_image_ref(image: str) -> str:
    """A .sif path or URI as given; anything else is a local Docker image (``docker-daemon://``)."""
    if "://" in image or image.endswith((".sif", ".sqsh", ".img")) or image.startswith(("/", "./", "../")):
        return image
    return f"docker-daemon://{image}"


def _apptainer_argv(arm: Arm, spec: LaunchSpec, host_has_gpu: bool) -> list[str]:
    repo, run, workdir = (str(Path(p)) for p in (spec.repo_dir, spec.run_dir, spec.workdir))
    env_prefix = ["env"] + [f"APPTAINERENV_{k}={v}" for k, v in _container_env(spec).items()]
    argv = ["apptainer", "exec", "--containall", "--bind", f"{repo}:{repo}:ro,{run}:{run}:rw", "--pwd", workdir]
    if wants_gpus(arm, host_has_gpu):
        argv.append("--nv")
    argv += list(arm.run_flags)
    argv.append(apptainer_image_ref(str(arm.image or DEFAULT_IMAGE)))
    return (env_prefix if len(env_prefix) > 1 else []) + argv + list(spec.argv)


def stop(arm: Arm, spec: LaunchSpec) -> None:
    """Remove an invocation's container (after a timeout: killing the client leaves it running)."""
    if arm.kind == "container" and arm.engine in OCI_ENGINES and shutil.which(arm.engine):
        subprocess.run([arm.engine, "rm", "-f", container_name(spec)], capture_output=True,
                       timeout=QUERY_TIMEOUT_S, check=False)
    elif arm.kind == "isolated":
        oci.stop_isolated(container_name(spec))


def prepare_run_dir(run_dir: Path, arm: Arm | int, gid: int | None = None) -> None:
    """Make the run directory writable by the UID a container arm runs as.

    Only needed (and only done) when benchlib runs as root and the container runs as another UID
    (1000 by default, see :func:`container_user`): every folder under ``run_dir`` (``run_dir``
    included, files excluded) is chowned to that UID:GID. ``arm`` may also be a UID.
    Native, isolated, rootfs and apptainer arms run as the invoker: nothing to do.
    """
    if isinstance(arm, Arm):
        if not (arm.kind == "container" and arm.engine in OCI_ENGINES):
            return
        uid, gid = container_user()
    else:
        uid, gid = int(arm), int(arm if gid is None else gid)
    if os.geteuid() != 0 or uid == 0:
        return
    run_dir = Path(run_dir)
    for directory, _subdirs, _files in os.walk(run_dir):
        status = os.stat(directory)
        if (status.st_uid, status.st_gid) != (uid, gid):
            os.chown(directory, uid, gid)


# --------------------------------------------------------------------------------------------------
# images


def image_digest(engine: str, image: str) -> str | None:
    """The image's registry digest (``repo@sha256:...``) when it has one, else its ID (``sha256:...``).

    A locally built image has no registry digest; its ID (the digest of its configuration) still
    identifies its content. None when the image or the engine is not there. For apptainer, a
    ``.sif`` file's SHA-256 (cached by path, size and mtime) or the Docker image's for
    ``docker-daemon://`` images.
    """
    if engine == "chroot":  # a rootfs arm: the image the folder was exported from
        return oci.rootfs_digest(image)
    if engine in ("runc", "host"):
        return None
    if engine == "apptainer":
        ref = apptainer_image_ref(image)
        if ref.startswith("docker-daemon://"):
            return image_digest("docker", ref[len("docker-daemon://"):])
        path = Path(ref)
        if path.is_file():
            status = path.stat()
            return _file_sha256(str(path.resolve()), status.st_size, status.st_mtime_ns)
        return None
    info = _inspect_image(engine, image)
    if info is None:
        return None
    digests = info.get("RepoDigests") or []
    return digests[0] if digests else info.get("Id")


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _inspect_image(engine: str, image: str) -> dict | None:
    if not shutil.which(engine):
        return None
    try:
        done = subprocess.run([engine, "image", "inspect", image], capture_output=True, text=True,
                              timeout=QUERY_TIMEOUT_S, check=False)
    except (subprocess.TimeoutExpired, OSError):
        return None
    if done.returncode != 0:
        return None
    try:
        records = json.loads(done.stdout)
    except json.JSONDecodeError:
        return None
    return records[0] if records else None


def build_image(tag: str = DEFAULT_IMAGE, base_image: str | None = None, build_args: dict[str, str] | None = None,
                engine: str = "docker", repo_dir: Path | None = None, ca_bundle: Path | None = None) -> None:
    """Build the project image from the repository's Dockerfile (``benchlib image build``).

    Passes the identity build args (PROJECT_VERSION, VCS_REF, BUILD_DATE; ``build_args`` override
    them) and BASE_IMAGE when given. When ``ca_bundle`` (default: ``$BENCHLIB_PIP_CA`` or
    ``$PIP_CERT``) names a file, it is copied to ``.ci/cache/pip-ca.crt`` for pip inside the build
    (networks that re-sign TLS). Uses Docker's legacy builder when buildx is missing. Output streams
    to the terminal; a failure raises BenchlibError.
    """
    from . import __version__
    from .paths import repo_root

    repo = Path(repo_dir or repo_root()).resolve()
    dockerfile = repo / "Dockerfile"
    if not dockerfile.is_file():
        raise BenchlibError(f"there is no Dockerfile in {repo}; run `benchlib image build` from a benchlib checkout.")
    if not shutil.which(engine):
        hint = " (CI: `.ci/docker-setup.sh` as root)" if engine == "docker" else ""
        raise BenchlibError(f"`{engine}` is not on PATH; install it{hint} to build {tag}.")
    ca = ca_bundle or os.environ.get("BENCHLIB_PIP_CA") or os.environ.get("PIP_CERT")
    cache = repo / ".ci" / "cache"
    if ca and Path(ca).is_file():
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca, cache / "pip-ca.crt")
    args = {
        "PROJECT_VERSION": __version__,
        "VCS_REF": _vcs_ref(repo),
        "BUILD_DATE": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if base_image:
        args["BASE_IMAGE"] = base_image
    args.update(build_args or {})
    argv = [engine, "build", "-t", tag, "-f", str(dockerfile)]
    for key, value in args.items():
        argv += ["--build-arg", f"{key}={value}"]
    argv.append(str(repo))
    env = dict(os.environ)
    if engine == "docker" and "DOCKER_BUILDKIT" not in env and not _has_buildx():
        env["DOCKER_BUILDKIT"] = "0"
    try:
        code = subprocess.run(argv, env=env, timeout=BUILD_TIMEOUT_S, check=False).returncode
    except subprocess.TimeoutExpired:
        raise BenchlibError(f"building {tag} took more than {BUILD_TIMEOUT_S // 3600} h; see the output above.") from None
    if code != 0:
        raise BenchlibError(f"building {tag} failed (exit {code}); the cause is in the build output above.")


def _has_buildx() -> bool:
    try:
        return subprocess.run(["docker", "buildx", "version"], capture_output=True, timeout=QUERY_TIMEOUT_S,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _vcs_ref(repo: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=QUERY_TIMEOUT_S, check=False)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "benchlib", "pyproject.toml",
                                "Dockerfile"], capture_output=True, text=True, timeout=QUERY_TIMEOUT_S, check=False)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


# --------------------------------------------------------------------------------------------------
# preflight

# Runs inside the arm (as the launch will): can it write the run dir, read the checkout, import what
# the notebooks need, and see a GPU? Prints one marked JSON line (NGC's entrypoint prints a banner).
_PROBE = r"""
import json, os, shutil, subprocess, sys
probe, repo = sys.argv[1], sys.argv[2]
facts = {"uid": os.getuid(), "gid": os.getgid(), "python": sys.version.split()[0], "executable": sys.executable}
try:
    with open(probe, "w") as handle:
        handle.write("ok")
    os.unlink(probe)
    facts["run_dir_writable"] = True
except OSError as exc:
    facts["run_dir_writable"] = False
    facts["write_error"] = f"{type(exc).__name__}: {exc.strerror or exc}"
facts["repo_readable"] = os.access(os.path.join(repo, "benchlib", "__init__.py"), os.R_OK)
missing = []
for name in ("papermill", "ipykernel", "pandas", "pyarrow", "benchlib"):
    try:
        __import__(name)
    except Exception as exc:
        missing.append(f"{name} ({type(exc).__name__})")
facts["missing_modules"] = missing
try:
    import benchlib
    facts["benchlib_from"] = os.path.dirname(benchlib.__file__)
except Exception:
    pass
try:
    import torch
    facts["torch"] = torch.__version__
    facts["cuda_available"] = bool(torch.cuda.is_available())
    facts["torch_gpu_count"] = torch.cuda.device_count() if facts["cuda_available"] else 0
except Exception as exc:
    facts["torch_error"] = f"{type(exc).__name__}: {exc}"
smi = shutil.which("nvidia-smi")
if smi:
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60).stdout
        facts["nvidia_smi_gpus"] = [line.strip() for line in out.splitlines() if line.startswith("GPU ")]
    except Exception as exc:
        facts["nvidia_smi_error"] = f"{type(exc).__name__}: {exc}"
try:
    with open("/etc/benchlib/image.json") as handle:
        facts["image_json"] = json.load(handle)
except (OSError, ValueError):
    facts["image_json"] = None
print(__MARK__ + json.dumps(facts), flush=True)
""".replace("__MARK__", repr(PREFLIGHT_MARK))


def python_path(arm: Arm, repo_dir: Path) -> str:
    """PYTHONPATH for an invocation: the repository first, so every arm runs the same benchlib.

    Arms on the host's own userland (native, isolated) keep the host's PYTHONPATH after it, so both
    see the same Python environment; arms with an image's userland (container, rootfs) get the
    repository alone.
    """
    entries = [str(repo_dir)]
    inherited = os.environ.get("PYTHONPATH")
    if inherited and arm.kind in ("native", "isolated"):
        entries.append(inherited)
    return os.pathsep.join(entries)


def preflight(arm: Arm, repo_dir: Path, run_dir: Path, host_has_gpu: bool) -> dict[str, Any]:
    """Check that ``arm`` can run here; return facts for the manifest or raise PreflightError.

    ``run_dir`` is the directory runs are written under (it is created when missing). Every error is
    one sentence that names the arm and the fix. Each engine call is bounded by a timeout.
    """
    repo_dir, run_dir = Path(repo_dir).resolve(), Path(run_dir).resolve()
    if arm.kind == "native":
        return {"engine": "host", "python": sys.executable, "python_version": sys.version.split()[0]}
    if arm.kind == "container" and arm.engine in OCI_ENGINES:
        return _preflight_oci(arm, repo_dir, run_dir, host_has_gpu)
    if arm.kind == "container" and arm.engine == "apptainer":
        return _preflight_apptainer(arm, repo_dir, run_dir, host_has_gpu)
    if arm.kind == "isolated" and arm.engine == "runc":
        return _preflight_isolated(arm, repo_dir, run_dir, host_has_gpu)
    if arm.kind == "rootfs" and arm.engine == "chroot":
        return _preflight_rootfs(arm, repo_dir, run_dir, host_has_gpu)
    launch_argv(arm, LaunchSpec([], repo_dir, run_dir, run_dir), host_has_gpu)  # raises for unknown kinds
    raise PreflightError(f"arm {arm.name!r}: no preflight check for engine {arm.engine!r}; use a native or container arm.")


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def _first_error_line(text: str) -> str:
    """The telling line of an engine's error output, without the runtime's layers of prefixes."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    chosen = lines[-1] if lines else "no output"
    for line in lines:
        lowered = line.lower()
        if "error" in lowered or "unknown" in lowered or "invalid" in lowered or "denied" in lowered:
            chosen = line
            break
    for prefix in ("error during container init: ", "OCI runtime create failed: "):
        if prefix in chosen:
            chosen = chosen.split(prefix, 1)[1]
            break
    return chosen[:300]


def _preflight_oci(arm: Arm, repo_dir: Path, run_dir: Path, host_has_gpu: bool) -> dict[str, Any]:
    engine, where = arm.engine, f"arm {arm.name!r}"
    if not shutil.which(engine):
        fix = "run `.ci/docker-setup.sh` (as root) or install Docker Engine" if engine == "docker" else "install podman"
        raise PreflightError(f"{where}: `{engine}` is not on PATH; {fix}, or leave the arm out.")
    facts: dict[str, Any] = {"engine": engine}
    try:
        info = _run([engine, "version", "--format", "{{json .}}"], QUERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise PreflightError(f"{where}: `{engine} version` did not answer within {QUERY_TIMEOUT_S} s; "
                             f"check that the {engine} daemon is healthy (restart it) and retry.") from None
    if info.returncode != 0:
        detail = _first_error_line(info.stderr)
        if "permission denied" in detail.lower():
            fix = f"add your user to the `{engine}` group (then log in again) or run as root"
        elif engine == "docker":
            fix = "start it (`.ci/docker-setup.sh` as root, or `sudo systemctl start docker`)"
        else:
            fix = "check `podman info`"
        raise PreflightError(f"{where}: the {engine} engine does not answer ({detail}); {fix}.")
    try:
        version = json.loads(info.stdout)
        server = version.get("Server") or {}
        facts["engine_version"] = server.get("Version") or (version.get("Client") or {}).get("Version")
        facts["engine_api_version"] = server.get("ApiVersion") or server.get("APIVersion")
    except (json.JSONDecodeError, AttributeError):
        facts["engine_version"] = None

    image = str(arm.image or DEFAULT_IMAGE)
    record = _inspect_image(engine, image)
    if record is None:
        raise PreflightError(f"{where}: image {image} is not present for {engine}; build it with "
                             "`benchlib image build` or `make image` (CI: `.ci/build-images.sh`).")
    digests = record.get("RepoDigests") or []
    config = record.get("Config") or {}
    facts.update(image=image, image_id=record.get("Id"), image_digest=digests[0] if digests else record.get("Id"),
                 image_created=record.get("Created"), image_labels=config.get("Labels") or {})

    uid, gid = container_user()
    facts["container_user"] = f"{uid}:{gid}"
    facts["gpu_flags"] = gpu_flags(arm, host_has_gpu)
    probe = _probe(arm, repo_dir, run_dir, host_has_gpu)
    facts.update(probe)
    return facts


def _probe(arm: Arm, repo_dir: Path, run_dir: Path, host_has_gpu: bool) -> dict[str, Any]:
    """Run the probe script through the arm, exactly as an invocation would be launched."""
    where = f"arm {arm.name!r}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        scratch = run_dir / f".preflight-{arm.name}-{uuid.uuid4().hex[:8]}"
        scratch.mkdir()
    except OSError as exc:
        raise PreflightError(f"{where}: cannot create {run_dir} ({exc.strerror}); choose a writable --out.") from None
    try:
        prepare_run_dir(scratch, arm)
        name = f"benchlib-preflight-{uuid.uuid4().hex[:12]}"

        def attempt(with_arm_flags: bool) -> tuple[subprocess.CompletedProcess, float]:
            probe_arm = arm if with_arm_flags else _without_flags(arm)
            python = sys.executable if arm.kind == "isolated" else "python3"  # as the runner launches it
            spec = LaunchSpec(argv=[python, "-c", _PROBE, str(scratch / "probe"), str(repo_dir)],
                              repo_dir=repo_dir, run_dir=scratch, workdir=scratch,
                              env={"PYTHONPATH": python_path(arm, repo_dir), "BENCHLIB_REPO": str(repo_dir)}, name=name)
            began = time.perf_counter()
            try:
                done = _run(launch_argv(arm=probe_arm, spec=spec, host_has_gpu=host_has_gpu), PROBE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                stop(probe_arm, spec)
                check = {"runc": "`runc --root /run/benchlib-runc/state list`", "chroot": "the processes left running"}
                raise PreflightError(f"{where}: a trial container did not finish within {PROBE_TIMEOUT_S} s; "
                                     f"check {check.get(arm.engine, f'`{arm.engine} ps`')} and the engine's "
                                     "health, then retry.") from None
            return done, time.perf_counter() - began

        done, elapsed = attempt(with_arm_flags=True)
        if done.returncode != 0 and arm.kind in ("isolated", "rootfs"):
            _explain_failed_local_probe(arm, done)
        if done.returncode != 0:
            _explain_failed_probe(arm, done, attempt, host_has_gpu)
        facts = _parse_probe(arm, done)
        facts["probe_s"] = round(elapsed, 3)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _judge_probe(arm, facts, run_dir, host_has_gpu)
    return {"probe": facts}


def _without_flags(arm: Arm) -> Arm:
    return replace(arm, preset="defaults", flags=())


def _explain_failed_probe(arm: Arm, done: subprocess.CompletedProcess, attempt, host_has_gpu: bool) -> None:
    where, engine = f"arm {arm.name!r}", arm.engine
    detail = _first_error_line(done.stderr or done.stdout)
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
            plain, _ = attempt(with_arm_flags=False)
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


def _explain_failed_local_probe(arm: Arm, done: subprocess.CompletedProcess) -> None:
    """A failed trial run of an isolated (runc) or rootfs (chroot) arm, in one sentence."""
    where = f"arm {arm.name!r}"
    detail = _first_error_line(done.stderr or done.stdout).rstrip('"')  # runc logs msg="..."
    lowered = detail.lower()
    if arm.kind == "isolated":
        if "cgroup" in lowered:
            fix = ("cgroups could not be set up for the container; run as root where /sys/fs/cgroup is writable, or "
                   "drop the arm's --cpus/--cpuset-*/--memory*/--pids-limit flags")
        elif "rlimit" in lowered:
            fix = ("runc may not raise that ulimit here (benchlib's own hard limit is lower and it lacks "
                   "CAP_SYS_RESOURCE), so raise the hard limit (`ulimit -H`) or drop that --ulimit from the arm")
        elif "seccomp" in lowered:
            fix = "fix or drop the arm's --security-opt seccomp=PATH"
        elif done.returncode in (126, 127):
            fix = f"the host python {sys.executable} could not be started inside the container"
        else:
            fix = "see `runc --root /run/benchlib-runc/state list` and the message, and fix the arm's flags or runc"
        raise PreflightError(f"{where}: the trial run under runc failed with exit code {done.returncode} ({detail}); "
                             f"{fix}.")
    if done.returncode in (126, 127):
        raise PreflightError(f"{where}: the exported image at {oci.rootfs_dir(arm)} has no runnable python3 "
                             f"({detail}); export an image that has one with `benchlib image export`.")
    raise PreflightError(f"{where}: the trial run chrooted into {oci.rootfs_dir(arm)} failed with exit code "
                         f"{done.returncode} ({detail}); run benchlib as root (or where user namespaces are "
                         "allowed) and re-export the image with `benchlib image export --force` if it persists.")


def _parse_probe(arm: Arm, done: subprocess.CompletedProcess) -> dict[str, Any]:
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(PREFLIGHT_MARK):
            try:
                return json.loads(line[len(PREFLIGHT_MARK):])
            except json.JSONDecodeError:
                break
    detail = _first_error_line(done.stderr or done.stdout)
    if arm.kind in ("isolated", "rootfs"):
        inside = "under runc" if arm.kind == "isolated" else f"chrooted into {oci.rootfs_dir(arm)}"
        raise PreflightError(f"arm {arm.name!r}: the trial run {inside} printed no report ({detail}); run "
                             "`benchlib env` there by hand to see why, then retry.")
    raise PreflightError(f"arm {arm.name!r}: the trial run inside {arm.image} printed no report ({detail}); "
                         "rebuild the image with `benchlib image build` and retry.")


def _judge_local_probe(arm: Arm, facts: dict[str, Any], run_dir: Path, host_has_gpu: bool) -> None:
    """The trial run's verdict for an isolated (host userland) or rootfs (image userland) arm."""
    where = f"arm {arm.name!r}"
    if arm.kind == "isolated":
        inside = "the isolated container"
        fix = f"install the project into {sys.executable}'s environment (`make setup`)"
    else:
        inside = f"the rootfs {oci.rootfs_dir(arm)}"
        fix = "export an image built from this project's Dockerfile (`benchlib image export benchlib:latest DIR`)"
    if not facts.get("run_dir_writable"):
        raise PreflightError(f"{where}: UID {facts.get('uid')} in {inside} cannot write under {run_dir} "
                             f"({facts.get('write_error')}); make the outputs folder writable by that user.")
    if not facts.get("repo_readable"):
        raise PreflightError(f"{where}: {inside} cannot read the checkout; check its permissions.")
    if facts.get("missing_modules"):
        raise PreflightError(f"{where}: {inside} lacks {', '.join(facts['missing_modules'])}; {fix}.")
    if "torch_error" in facts:
        raise PreflightError(f"{where}: torch does not import in {inside} ({facts['torch_error']}); {fix}.")
    if host_has_gpu and wants_gpus(arm, host_has_gpu):
        seen = max(len(facts.get("nvidia_smi_gpus") or []), int(facts.get("torch_gpu_count") or 0))
        if seen == 0:
            raise PreflightError(f"{where}: the host has a GPU but none is visible in {inside}; check that "
                                 "/dev/nvidia* exist and the driver libraries are found (`ldconfig -p | grep "
                                 "libcuda`), or set `gpus: none` on the arm to measure without GPUs.")


def _judge_probe(arm: Arm, facts: dict[str, Any], run_dir: Path, host_has_gpu: bool) -> None:
    if arm.kind in ("isolated", "rootfs"):
        return _judge_local_probe(arm, facts, run_dir, host_has_gpu)
    where, image = f"arm {arm.name!r}", arm.image
    uid = facts.get("uid")
    if not facts.get("run_dir_writable"):
        raise PreflightError(f"{where}: UID {uid} inside the container cannot write under {run_dir} "
                             f"({facts.get('write_error')}); make it writable for that UID (run benchlib as the "
                             "owner, or set BENCHLIB_CONTAINER_USER=UID:GID).")
    if not facts.get("repo_readable"):
        raise PreflightError(f"{where}: the container cannot read the mounted checkout; on SELinux hosts add "
                             "`--security-opt label=disable` to the arm's flags, otherwise check the "
                             "checkout's permissions.")
    if facts.get("missing_modules"):
        raise PreflightError(f"{where}: image {image} lacks {', '.join(facts['missing_modules'])}; rebuild it "
                             "with `benchlib image build` or `make image`.")
    if "torch_error" in facts:
        raise PreflightError(f"{where}: torch does not import inside {image} ({facts['torch_error']}); use an "
                             "image that has torch (the Dockerfile's NGC base) and rebuild.")
    if host_has_gpu and wants_gpus(arm, host_has_gpu):
        seen = max(len(facts.get("nvidia_smi_gpus") or []), int(facts.get("torch_gpu_count") or 0))
        if seen == 0:
            raise PreflightError(f"{where}: the host has a GPU but none is visible inside the container; "
                                 "install the NVIDIA Container Toolkit (`nvidia-ctk runtime configure`), "
                                 "or set `gpus: none` on the arm to measure without GPUs.")


def _preflight_apptainer(arm: Arm, repo_dir: Path, run_dir: Path, host_has_gpu: bool) -> dict[str, Any]:
    where = f"arm {arm.name!r}"
    if not shutil.which("apptainer"):
        raise PreflightError(f"{where}: `apptainer` is not on PATH; install Apptainer "
                             "(https://apptainer.org/docs/admin/main/installation.html) or leave the arm out.")
    try:
        version = _run(["apptainer", "--version"], QUERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise PreflightError(f"{where}: `apptainer --version` did not answer within {QUERY_TIMEOUT_S} s; "
                             "check the Apptainer installation.") from None
    image = str(arm.image or DEFAULT_IMAGE)
    ref = apptainer_image_ref(image)
    if ref.startswith("docker-daemon://") and _inspect_image("docker", image) is None:
        raise PreflightError(f"{where}: image {image} is not present for docker (apptainer reads it through "
                             "docker-daemon://); build it with `benchlib image build` or `make image`, or give "
                             "the arm a .sif path.")
    if "://" not in ref and not Path(ref).exists():
        raise PreflightError(f"{where}: image {ref} does not exist; build it with `apptainer build {ref} "
                             f"docker-daemon://{DEFAULT_IMAGE}` after `benchlib image build`.")
    facts: dict[str, Any] = {"engine": "apptainer", "engine_version": version.stdout.strip(), "image": ref,
                             "image_digest": image_digest("apptainer", image)}
    facts.update(_probe(arm, repo_dir, run_dir, host_has_gpu))
    return facts


def _preflight_isolated(arm: Arm, repo_dir: Path, run_dir: Path, host_has_gpu: bool) -> dict[str, Any]:
    """runc present, root, cgroups where limits are asked for, GPU nodes where GPUs are wanted, a trial run."""
    where = f"arm {arm.name!r}"
    runc = oci.runc_binary()
    if runc is None:
        raise PreflightError(oci._runc_missing(arm))
    if os.geteuid() != 0:
        raise PreflightError(f"{where}: the isolated arm needs root (runc creates its namespaces, cgroups and "
                             "device nodes; rootless runc is not supported here); run benchlib as root (sudo) or "
                             "leave the arm out.")
    flags = oci.parse_run_flags(arm)
    cgroups = oci.cgroup_support()
    if flags.has_cgroup_limits and not cgroups["writable"]:
        raise PreflightError(f"{where}: its flags ask for cgroup limits but cgroups cannot be created here "
                             f"({cgroups['why']}); run where /sys/fs/cgroup is writable or drop "
                             "--cpus/--cpuset-*/--memory*/--pids-limit from the arm.")
    gpus = wants_gpus(arm, host_has_gpu)
    nodes = oci.nvidia_device_nodes() if gpus else []
    if gpus and not nodes:
        raise PreflightError(f"{where}: GPUs are wanted but there are no /dev/nvidia* device nodes to pass in; "
                             "load the NVIDIA driver (`nvidia-smi` creates them) or set `gpus: none` on the arm.")
    try:
        version = _run([runc, "--version"], QUERY_TIMEOUT_S).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        version = []
    config = oci.bundle_config(arm, ["true"], {}, repo_dir, run_dir, run_dir, gpus, cgroups["writable"], "preflight")
    facts: dict[str, Any] = {
        "engine": "runc", "runc": runc, "engine_version": version[0].split()[-1] if version else None,
        "cgroups": cgroups, "rootless_cgroups": not cgroups["writable"],
        "namespaces": [ns["type"] for ns in config["linux"]["namespaces"]],
        "capabilities": config["process"]["capabilities"]["bounding"],
        "shm_bytes": flags.shm_size if not flags.ipc_host else "host",
        "seccomp": flags.seccomp or "none (Docker would apply its default profile)",
        "resources": {k: v for k, v in config["linux"]["resources"].items() if k != "devices"},
        "gpu_device_nodes": [str(node) for node in nodes],
        "host_mounts_bound_ro": [m["destination"] for m in config["mounts"] if m["options"] == ["bind", "ro"]],
    }
    facts.update(_probe(arm, repo_dir, run_dir, host_has_gpu))
    return facts


def _preflight_rootfs(arm: Arm, repo_dir: Path, run_dir: Path, host_has_gpu: bool) -> dict[str, Any]:
    """An exported image, chroot possible, the driver libraries where GPUs are wanted, a trial run."""
    where = f"arm {arm.name!r}"
    directory = oci.rootfs_dir(arm)
    record = oci.read_rootfs_record(directory)
    if record is None:
        raise PreflightError(oci._rootfs_missing(arm, directory))
    oci.parse_run_flags(arm)
    if os.geteuid() != 0 and not _userns_works():
        raise PreflightError(f"{where}: entering the rootfs needs root or unprivileged user namespaces, and this "
                             "machine allows neither to this user; run benchlib as root (sudo) or leave the arm out.")
    gpus = wants_gpus(arm, host_has_gpu)
    libs = oci.driver_libraries() if gpus else {}
    if gpus and not any(name.startswith("libcuda.so") for name in libs):
        raise PreflightError(f"{where}: GPUs are wanted but no NVIDIA driver library (libcuda.so) was found on this "
                             "host (`ldconfig -p`, /usr/local/nvidia/lib64, LD_LIBRARY_PATH) to bind into the "
                             "rootfs; add the driver's folder to LD_LIBRARY_PATH or set `gpus: none` on the arm.")
    facts: dict[str, Any] = {
        "engine": "chroot", "image": str(directory), "image_id": record.get("image_id"),
        "image_digest": record.get("image_digest"), "image_created": record.get("image_created"),
        "exported_from": record.get("image"), "exported_at": record.get("exported_at"),
        "entrypoint": record.get("entrypoint"),
        "driver_libraries": libs if gpus else "GPUs not wanted: nothing bound",
        "driver_binaries": oci.driver_binaries() if gpus else {},
    }
    if gpus is False and host_has_gpu is False:
        facts["driver_libraries"] = "no GPU on this host: no driver libraries to bind"
    facts.update(_probe(arm, repo_dir, run_dir, host_has_gpu))
    return facts


def _userns_works() -> bool:
    try:
        return subprocess.run(["unshare", "--user", "--map-current-user", "true"], capture_output=True,
                              timeout=QUERY_TIMEOUT_S, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
