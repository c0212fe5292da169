"""The ``rootfs`` arm (engine ``chroot``): the image's software stack with no isolation at all.

The image's filesystem, exported with ``benchlib image export IMAGE DIR`` (:func:`export_image`),
entered with chroot and no isolation at all. The arm's ``image`` is that DIR (default:
``$BENCHLIB_ROOTFS``, else ``~/.cache/benchlib/rootfs/benchlib-latest``). :meth:`ChrootLauncher.argv`
returns::

HOST_PYTHON benchlib/arms/_chroot_launch.py PLAN_JSON

The launcher enters a private mount namespace (a user namespace too when not root), binds the
host's ``/dev``, ``/proc``, ``/sys`` and ``/tmp`` (recursively) and ``/etc/hosts``,
``/etc/resolv.conf``, the checkout (read-only) and the run directory (read-write) at the same
paths inside the rootfs, mounts a tmpfs on ``/usr/local/nvidia`` holding the host's NVIDIA driver
libraries (``lib64``, found with ``ldconfig -p``, in ``/usr/local/nvidia/lib64`` and on
``LD_LIBRARY_PATH``) and tools (``bin``: nvidia-smi, ...), then chroots, applies the image's
environment (its ``Env`` as exported, then the runner's) and ``ENTRYPOINT``, and execs the
command with the image's own ``python3``. The bind mounts vanish with the namespace when the
process exits. Mount points that the image lacks are created (as empty folders) in DIR.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import BenchlibError, PreflightError
from ._base import QUERY_TIMEOUT_S, HostFacts, LaunchSpec, Launcher, Mechanism, first_error_line, wants_gpus
from ._flags import RunFlags, expand_cpu_list, parse_run_flags
from ._model import Arm
from ._probe import ProbeAdvice, run_probe

__all__ = ["IMAGE_RECORD", "ChrootLauncher", "default_rootfs_dir", "driver_binaries", "driver_libraries",
           "export_image", "read_rootfs_record", "rootfs_dir"]

#: Written into an exported rootfs by :func:`export_image`: the image's identity and its config.
IMAGE_RECORD = ".benchlib-image.json"
#: Where the rootfs launcher puts the host's driver inside the rootfs (NGC images have these on
#: LD_LIBRARY_PATH and PATH already).
NVIDIA_DIR = "/usr/local/nvidia"


#: The host's driver user-space libraries that a CUDA/NVML process loads (as libnvidia-container
#: mounts for the "compute" and "utility" capabilities).
DRIVER_LIBRARY_PATTERNS = (
    "libcuda.so", "libcudadebugger.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so", "libnvidia-nvvm.so",
    "libnvidia-gpucomp.so", "libnvidia-allocator.so", "libnvidia-cfg.so", "libnvidia-opencl.so",
    "libnvidia-pkcs11.so", "libnvidia-pkcs11-openssl3.so", "libnvidia-fatbinaryloader.so",
)
DRIVER_BINARIES = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control",
                   "nvidia-cuda-mps-server")


def driver_libraries() -> dict[str, str]:
    """The host's NVIDIA driver libraries: soname or link name -> the real file.

    Found with ``ldconfig -p`` (this machine's architecture only), then in /usr/local/nvidia/lib64,
    /usr/local/nvidia/lib and the folders on ``LD_LIBRARY_PATH`` (where some machines keep the driver
    outside the loader's cache). Empty on a machine without the NVIDIA driver.
    """
    found: dict[str, str] = {}

    def consider(name: str, path: str) -> None:
        if name in found or not any(name.startswith(pattern) for pattern in DRIVER_LIBRARY_PATTERNS):
            return
        real = os.path.realpath(path)
        if os.path.isfile(real):
            found[name] = real

    ldconfig = shutil.which("ldconfig") or ("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else None)
    if ldconfig:
        try:
            listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=QUERY_TIMEOUT_S).stdout
        except (OSError, subprocess.TimeoutExpired):
            listing = ""
        arch_tag = {"x86_64": "x86-64", "aarch64": "AArch64", "ppc64le": "64bit"}.get(platform.machine(), "")
        for line in listing.splitlines():
            match = re.match(r"\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)", line)
            if match and (not arch_tag or arch_tag in match.group(2)):
                consider(match.group(1), match.group(3))
    extra = ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib"]
    extra += [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    for directory in extra:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            consider(name, os.path.join(directory, name))
    return found


def driver_binaries() -> dict[str, str]:
    """The host's NVIDIA tools (nvidia-smi, ...) found on PATH or in /usr/local/nvidia/bin."""
    search = os.environ.get("PATH", "") + os.pathsep + "/usr/local/nvidia/bin:/usr/bin:/usr/sbin"
    found = {}
    for name in DRIVER_BINARIES:
        path = shutil.which(name, path=search)
        if path:
            found[name] = os.path.realpath(path)
    return found


def default_rootfs_dir() -> Path:
    """Where the built-in ``rootfs`` arm looks: ``$BENCHLIB_ROOTFS``, else
    ``${XDG_CACHE_HOME:-~/.cache}/benchlib/rootfs/benchlib-latest``."""
    if os.environ.get("BENCHLIB_ROOTFS"):
        return Path(os.environ["BENCHLIB_ROOTFS"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "benchlib" / "rootfs" / "benchlib-latest"


def rootfs_dir(arm: Arm) -> Path:
    """The rootfs folder of a rootfs arm: its ``image``, else :func:`default_rootfs_dir`."""
    return Path(arm.image or default_rootfs_dir()).expanduser().resolve()


def read_rootfs_record(directory: Path) -> dict[str, Any] | None:
    """The export record (:data:`IMAGE_RECORD`) of a rootfs folder, or None when it has none."""
    try:
        return json.loads((Path(directory) / IMAGE_RECORD).read_text())
    except (OSError, ValueError):
        return None


def export_image(image: str, dest: Path, engine: str = "docker", force: bool = False,
                 log=lambda message: None) -> dict[str, Any]:
    """Unpack ``image``'s filesystem into ``dest`` (``benchlib image export``); returns the record.

    ``ENGINE create`` + ``ENGINE export | tar -x`` (ownership kept when run as root), then the
    engine's own files (``/.dockerenv``) are removed and ``dest/.benchlib-image.json`` is written
    last: image, ID, digest, creation date, export date, and the image's Env, Entrypoint, Cmd,
    WorkingDir and User, which the rootfs arm applies. A non-empty ``dest`` is refused unless it holds
    an earlier export and ``force`` is set (its contents are then replaced).
    """
    dest = Path(dest).expanduser().resolve()
    if not shutil.which(engine):
        raise BenchlibError(f"`{engine}` is not on PATH; install it (CI: `.ci/docker-setup.sh` as root) "
                            f"to export {image}.")
    if dest == Path("/") or len(dest.parts) < 3:
        raise BenchlibError(f"refusing to export into {dest}; choose a dedicated folder such as ~/.cache/benchlib/rootfs/NAME.")
    replace = dest.exists() and any(dest.iterdir())
    if replace and read_rootfs_record(dest) is None:
        raise BenchlibError(f"{dest} is not empty and holds no earlier export ({IMAGE_RECORD}); choose an "
                            "empty or new folder.")
    if replace and not force:
        raise BenchlibError(f"{dest} already holds an exported image; pass --force to replace it.")
    done = subprocess.run([engine, "image", "inspect", image], capture_output=True, text=True,
                          timeout=QUERY_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise BenchlibError(f"image {image} is not present for {engine}; build it with `benchlib image build` "
                            "or `make images` first.")
    info = json.loads(done.stdout)[0]
    if replace:
        _clear(dest)
    dest.mkdir(parents=True, exist_ok=True)
    created = subprocess.run([engine, "create", image, "true"], capture_output=True, text=True,
                             timeout=QUERY_TIMEOUT_S * 4, check=False)
    if created.returncode != 0:
        raise BenchlibError(f"`{engine} create {image}` failed: {(created.stderr or created.stdout).strip()[-300:]}")
    cid = created.stdout.strip().splitlines()[-1]
    try:
        log(f"exporting {image} ({info.get('Id', '')[:19]}) into {dest} ...")
        tar = ["tar", "-x", "-C", str(dest), "-f", "-"]
        tar += ["--numeric-owner", "--same-owner"] if os.geteuid() == 0 else ["--no-same-owner"]
        exporter = subprocess.Popen([engine, "export", cid], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        unpack = subprocess.run(tar, stdin=exporter.stdout, capture_output=True, text=True, check=False)
        exporter.stdout.close()
        export_err = exporter.stderr.read().decode(errors="replace")
        exporter.wait()
        if exporter.returncode != 0 or unpack.returncode != 0:
            raise BenchlibError(f"exporting {image} failed: {(export_err or unpack.stderr).strip()[-300:]}")
    finally:
        subprocess.run([engine, "rm", "-f", cid], capture_output=True, timeout=QUERY_TIMEOUT_S, check=False)
    for leftover in (".dockerenv",):
        try:
            (dest / leftover).unlink()
        except OSError:
            pass
    config = info.get("Config") or {}
    digests = info.get("RepoDigests") or []
    record = {
        "image": image,
        "image_id": info.get("Id"),
        "image_digest": digests[0] if digests else info.get("Id"),
        "repo_digests": digests,
        "image_created": info.get("Created"),
        "exported_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "engine": engine,
        "env": list(config.get("Env") or []),
        "entrypoint": list(config.get("Entrypoint") or []),
        "cmd": list(config.get("Cmd") or []),
        "working_dir": config.get("WorkingDir") or "",
        "user": config.get("User") or "",
        "labels": config.get("Labels") or {},
    }
    tmp = dest / (IMAGE_RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(dest / IMAGE_RECORD)
    return record


def _clear(directory: Path) -> None:
    """Empty an earlier export, staying on its filesystem (never follows a mount or a symlink)."""
    device = directory.stat().st_dev
    for entry in directory.iterdir():
        if entry.is_symlink() or not entry.is_dir():
            entry.unlink()
        elif entry.stat().st_dev != device or os.path.ismount(entry):
            raise BenchlibError(f"{entry} is a mount point; unmount it before replacing the export.")
        else:
            shutil.rmtree(entry)


def rootfs_env(record: dict[str, Any], spec_env: dict[str, str], libs: bool, bins: bool,
               forwarded: Iterable[str] = ("CUDA_VISIBLE_DEVICES",)) -> dict[str, str]:
    """The image's Env (as exported), the forwarded variables and the runner's; the driver folders
    go first on LD_LIBRARY_PATH and PATH when the host's driver is bound in."""
    env: dict[str, str] = {}
    for item in record.get("env") or []:
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOME", "/root" if os.getuid() == 0 else "/tmp")
    for key in forwarded:
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(spec_env)

    def prepend(key: str, folder: str) -> None:
        parts = [p for p in env.get(key, "").split(":") if p]
        if folder not in parts:
            env[key] = ":".join([folder] + parts)

    if libs:
        prepend("LD_LIBRARY_PATH", f"{NVIDIA_DIR}/lib64")
    if bins:
        prepend("PATH", f"{NVIDIA_DIR}/bin")
    return env


def _rootfs_missing(arm: Arm, directory: Path) -> str:
    state = "does not exist" if not directory.exists() else f"holds no {IMAGE_RECORD} (not an exported image)"
    return (f"arm {arm.name!r}: the rootfs folder {directory} {state}; export it with `benchlib image export "
            f"IMAGE {directory}` (e.g. IMAGE benchlib:latest), or set the arm's image to an exported folder.")


def _userns_works() -> bool:
    try:
        return subprocess.run(["unshare", "--user", "--map-current-user", "true"], capture_output=True,
                              timeout=QUERY_TIMEOUT_S, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


#: Flags a rootfs arm accepts: it has no isolation, so only what a plain process can set on itself.
_ROOTFS_FLAGS = {"--ulimit", "--cpuset-cpus", "--ipc"}


def _refuse(name: str, value: str | None) -> str | None:
    if name not in _ROOTFS_FLAGS or (name == "--ipc" and value != "host"):
        return (f"a rootfs arm has no isolation to configure, so flag {name} does not apply; it accepts only "
                "--cpuset-cpus, --ipc=host and --ulimit (use an isolated arm for limits).")
    return None


def _advice(directory: Path) -> ProbeAdvice:
    inside = f"the rootfs {directory}"
    fix = "export an image built from this project's Dockerfile (`benchlib image export benchlib:latest DIR`)"
    return ProbeAdvice(
        inside=f"in {inside}",
        unwritable=f"UID {{uid}} in {inside} cannot write under {{run_dir}} ({{error}}); make the outputs folder "
                   "writable by that user.",
        unreadable=f"{inside} cannot read the checkout; check its permissions.",
        missing=f"{inside} lacks {{modules}}; {fix}.",
        no_torch=f"torch does not import in {inside} ({{error}}); {fix}.",
        no_gpu=f"the host has a GPU but none is visible in {inside}; check that /dev/nvidia* exist and the driver "
               "libraries are found (`ldconfig -p | grep libcuda`), or set `gpus: none` on the arm to measure without "
               "GPUs.",
        no_report=f"the trial run chrooted into {directory} printed no report ({{error}}); run `benchlib env` there by "
                  "hand to see why, then retry.",
    )


class ChrootLauncher(Launcher):
    engine = "chroot"
    kind = "rootfs"
    userland = "image"
    isolation = "none (a private mount namespace only)"
    mechanisms = {Mechanism.CPUSET: "--cpuset-cpus=LIST (CPU affinity)", Mechanism.MEMLOCK: "--ulimit memlock=BYTES",
                  Mechanism.ENV: "the arm's env"}

    def parsed_flags(self, arm: Arm) -> RunFlags:
        return parse_run_flags(arm, _refuse)

    def check(self, arm: Arm) -> None:
        self.parsed_flags(arm)

    def image_identity(self, image: str) -> str | None:
        """The digest of the image the folder was exported from."""
        record = read_rootfs_record(Path(image))
        return record.get("image_digest") if record else None

    def argv(self, arm: Arm, spec: LaunchSpec, host: HostFacts) -> list[str]:
        """``HOST_PYTHON benchlib/arms/_chroot_launch.py PLAN_JSON``; see the module docstring."""
        directory = rootfs_dir(arm)
        record = read_rootfs_record(directory)
        if record is None:
            raise PreflightError(_rootfs_missing(arm, directory))
        flags = self.parsed_flags(arm)
        gpus = wants_gpus(arm, host)
        libs = driver_libraries() if gpus else {}
        bins = driver_binaries() if gpus else {}
        env = dict(spec.env)
        env.setdefault("BENCHLIB_IMAGE", str(directory))
        if record.get("image_digest"):
            env.setdefault("BENCHLIB_IMAGE_DIGEST", record["image_digest"])
        binds: list[dict[str, Any]] = [
            {"source": "/dev", "target": "/dev", "recursive": True, "readonly": False},
            {"source": "/proc", "target": "/proc", "recursive": True, "readonly": False},
            {"source": "/sys", "target": "/sys", "recursive": True, "readonly": False},
            {"source": "/tmp", "target": "/tmp", "recursive": True, "readonly": False},
        ]
        for name in ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname"):
            if os.path.isfile(name):
                binds.append({"source": name, "target": name, "recursive": False, "readonly": True})
        repo, run = str(Path(spec.repo_dir)), str(Path(spec.run_dir))
        binds.append({"source": repo, "target": repo, "recursive": True, "readonly": True})
        binds.append({"source": run, "target": run, "recursive": True, "readonly": False})
        plan = {
            "rootfs": str(directory),
            "binds": binds,
            "driver": {"dir": NVIDIA_DIR, "libs": libs, "bins": bins},
            "env": rootfs_env(record, env, bool(libs), bool(bins)),
            "cwd": str(Path(spec.workdir)),
            "argv": list(record.get("entrypoint") or []) + list(spec.argv),
            "ulimits": {name: list(pair) for name, pair in flags.ulimits.items()},
            "cpuset": expand_cpu_list(flags.cpuset_cpus) if flags.cpuset_cpus else None,
        }
        return [sys.executable, str(Path(__file__).with_name("_chroot_launch.py")), json.dumps(plan)]

    def explain_failed_probe(self, arm: Arm, done: subprocess.CompletedProcess, attempt: Callable[[bool], Any]) -> None:
        detail = first_error_line(done.stderr or done.stdout).rstrip('"')
        if done.returncode in (126, 127):
            raise PreflightError(f"arm {arm.name!r}: the exported image at {rootfs_dir(arm)} has no runnable python3 "
                                 f"({detail}); export an image that has one with `benchlib image export`.")
        raise PreflightError(f"arm {arm.name!r}: the trial run chrooted into {rootfs_dir(arm)} failed with exit code "
                             f"{done.returncode} ({detail}); run benchlib as root (or where user namespaces are "
                             "allowed) and re-export the image with `benchlib image export --force` if it persists.")

    def preflight(self, arm: Arm, repo_dir: Path, run_dir: Path, host: HostFacts) -> dict[str, Any]:
        """An exported image, chroot possible, the driver libraries where GPUs are wanted, a trial run."""
        where = f"arm {arm.name!r}"
        directory = rootfs_dir(arm)
        record = read_rootfs_record(directory)
        if record is None:
            raise PreflightError(_rootfs_missing(arm, directory))
        self.parsed_flags(arm)
        if os.geteuid() != 0 and not _userns_works():
            raise PreflightError(f"{where}: entering the rootfs needs root or unprivileged user namespaces, and this "
                                 "machine allows neither to this user; run benchlib as root (sudo) or leave the arm out.")
        gpus = wants_gpus(arm, host)
        libs = driver_libraries() if gpus else {}
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
            "driver_binaries": driver_binaries() if gpus else {},
        }
        if gpus is False and host.has_gpu is False:
            facts["driver_libraries"] = "no GPU on this host: no driver libraries to bind"
        facts.update(run_probe(self, arm, repo_dir, run_dir, host, _advice(directory)))
        return facts

