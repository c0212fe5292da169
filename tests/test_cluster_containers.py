"""Cluster launchers: the argv and mounts pyxis, enroot, Apptainer and Docker get (written against
pyxis's README v0.24.0, enroot's doc/cmd/*.md, Apptainer 1.x and srun(1) of Slurm 22.05; pyxis,
enroot and Apptainer are not installed here, so these tests check what is generated, not how it
runs). Docker's image import runs for real against the engine on this machine."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from benchlib.arms import Arm
from benchlib.cluster import containers
from benchlib.cluster.containers import NodeContext
from benchlib.cluster.task import run_imports
from benchlib.arms import LaunchSpec
from benchlib.errors import PreflightError

REPO, RUN = Path("/shared/benchlib"), Path("/shared/runs/r1")
WORKDIR = RUN / "nodes/dgx07-gpu3/pyxis/matmul/n=8192/inv-1"
ARGV = ["python3", "-m", "papermill", "nb.ipynb", "out.ipynb"]
UUID = "GPU-8f2c0e6a-1111-2222-3333-444455556666"
CTX = NodeContext(node="dgx07", job_id="4242", gpus_per_node=8, cuda_device=UUID, cache_dir=Path("/tmp/cache"))
SPEC = LaunchSpec(argv=ARGV, repo_dir=REPO, run_dir=RUN, workdir=WORKDIR,
                  env={"BENCHLIB_ARM": "pyxis", "PYTHONPATH": str(REPO)})
NGC = "nvcr.io/nvidia/pytorch:25.10-py3"


def arm(engine: str, image: str = NGC, flags: tuple[str, ...] = ()) -> Arm:
    return Arm(engine, kind="container", engine=engine, image=image, flags=flags)


def value(argv: list[str], flag: str) -> str:
    matches = [item.split("=", 1)[1] for item in argv if item.startswith(f"{flag}=")]
    assert len(matches) == 1, f"{flag} appears {len(matches)} times in {argv}"
    return matches[0]


@pytest.mark.parametrize("image, uri", [
    (NGC, "docker://nvcr.io#nvidia/pytorch:25.10-py3"),  # registry separated by '#' (enroot import.md)
    ("ubuntu:24.04", "docker://ubuntu:24.04"),
    ("localhost:5000/bench:1", "docker://localhost:5000#bench:1"),
    ("dockerd://benchlib:latest", "dockerd://benchlib:latest"),
    ("/shared/images/bench.sqsh", "/shared/images/bench.sqsh"),
])
def test_enroot_uris(image, uri):
    assert containers.enroot_uri(image) == uri


def test_pyxis_step_mounts_checkout_read_only_and_run_dir_writable():
    argv = containers.pyxis_argv(arm("pyxis"), SPEC, CTX, gpus=True)
    srun = argv.index("srun")
    assert argv[:srun] == ["env", "BENCHLIB_ARM=pyxis", f"PYTHONPATH={REPO}"]  # srun passes them on
    assert argv[srun + 1] == "--overlap"  # shares the measuring step's CPUs and GPUs (srun(1), 22.05)
    assert {"--nodes=1", "--ntasks=1", "--nodelist=dgx07", "--jobid=4242", "--gpus-per-node=8"} <= set(argv)
    assert value(argv, "--container-image") == "nvcr.io#nvidia/pytorch:25.10-py3"
    assert value(argv, "--container-mounts") == f"{REPO}:{REPO}:ro,{RUN}:{RUN}"
    assert value(argv, "--container-workdir") == str(WORKDIR)
    assert "--no-container-mount-home" in argv
    assert value(argv, "--container-env") == "BENCHLIB_ARM,PYTHONPATH"  # host values win over the image's
    assert value(argv, "--container-name") == containers.image_key(NGC)  # the container the import created
    assert not any(item.startswith("--container-unshare") for item in argv)  # IPC shared: the default
    # inside: the slot's GPU by UUID, whatever CUDA_VISIBLE_DEVICES Slurm set for the step
    assert argv[-len(ARGV) - 2:] == ["env", f"CUDA_VISIBLE_DEVICES={UUID}", *ARGV]


def test_pyxis_ipc_choice_and_arm_flags():
    argv = containers.pyxis_argv(arm("pyxis", flags=("--container-writable",)), SPEC, CTX, gpus=False, ipc="private")
    assert value(argv, "--container-unshare") == "ipc"
    assert "--container-writable" in argv
    assert not any(item.startswith("--gpus") for item in argv) and "env" not in argv[argv.index("srun"):]
    assert "not the isolation of a Docker arm" in containers.isolation_note("pyxis", "host")
    assert "shares the host's IPC" in containers.isolation_note("pyxis", "host")
    assert "IPC namespaces" in containers.isolation_note("pyxis", "private")


def test_pyxis_refuses_paths_that_break_its_mount_list():
    bad = LaunchSpec(argv=ARGV, repo_dir=Path("/shared/a,b"), run_dir=RUN, workdir=WORKDIR)
    with pytest.raises(PreflightError, match="separate pyxis mount entries"):
        containers.pyxis_argv(arm("pyxis"), bad, CTX, gpus=True)


def test_enroot_start_of_the_created_container():
    argv = containers.enroot_argv(arm("enroot"), SPEC, CTX, gpus=True, ipc="private")
    start = argv.index("start")
    assert argv[:start - 1] == ["env", "ENROOT_MOUNT_HOME=n", "ENROOT_ROOTFS_WRITABLE=n", "ENROOT_UNSHARE_IPC=y"]
    mounts = [argv[i + 1] for i, item in enumerate(argv) if item == "--mount"]
    assert mounts == [f"{REPO}:{REPO}:none:x-create=dir,bind,ro", f"{RUN}:{RUN}:none:x-create=dir,bind,rw"]
    envs = [argv[i + 1] for i, item in enumerate(argv) if item == "--env"]
    assert {"BENCHLIB_ARM=pyxis", f"PYTHONPATH={REPO}", "NVIDIA_VISIBLE_DEVICES=all"} <= set(envs)
    name = containers.image_key(NGC)
    assert argv[-4:-1] == [name, "sh", "-c"]
    assert argv[-1].startswith(f"cd {WORKDIR} && exec env CUDA_VISIBLE_DEVICES={UUID} python3 -m papermill")


def test_enroot_mounts_are_fstab_lines_with_colons():
    with pytest.raises(PreflightError):  # a space would split the fstab line enroot writes (start.md)
        containers.enroot_argv(arm("enroot"), LaunchSpec(argv=ARGV, repo_dir=Path("/a b"), run_dir=RUN,
                                                         workdir=WORKDIR), CTX, gpus=False)


def test_apptainer_runs_the_pulled_sif_with_nv_and_containall():
    argv = containers.apptainer_argv(arm("apptainer"), SPEC, CTX, gpus=True)
    start = argv.index("apptainer")
    assert argv[start:start + 3] == ["apptainer", "exec", "--containall"]
    assert "--nv" in argv
    assert argv[argv.index("--bind") + 1] == f"{REPO}:{REPO}:ro,{RUN}:{RUN}:rw"
    assert str(CTX.cache_dir / f"{containers.image_key(NGC)}.sif") in argv
    assert "APPTAINERENV_BENCHLIB_ARM=pyxis" in argv[:start]
    sif = containers.apptainer_argv(arm("apptainer", image="/shared/bench.sif"), SPEC, CTX, gpus=False)
    assert "/shared/bench.sif" in sif and "--nv" not in sif


def test_docker_names_the_slots_gpu_by_uuid():
    argv = containers.docker_argv(arm("docker", image="benchlib:latest"), SPEC, CTX, gpus=True)
    assert argv[:2] == ["docker", "run"]
    assert f"CUDA_VISIBLE_DEVICES={UUID}" in argv and "-e" in argv
    assert f"{REPO}:{REPO}:ro" in argv and f"{RUN}:{RUN}:rw" in argv


def test_images_are_imported_once_per_node_before_measuring():
    pyxis = containers.import_steps(arm("pyxis"), CTX)
    assert len(pyxis) == 1 and pyxis[0].argv[-1] == "true"
    assert value(pyxis[0].argv, "--container-name") == containers.image_key(NGC)
    enroot = containers.import_steps(arm("enroot"), CTX)
    squashfs = str(CTX.cache_dir / f"{containers.image_key(NGC)}.sqsh")
    assert enroot[0].argv == ["enroot", "import", "--output", squashfs, "docker://nvcr.io#nvidia/pytorch:25.10-py3"]
    assert enroot[0].done_if == ["test", "-s", squashfs]
    assert enroot[1].argv == ["enroot", "create", "--force", "--name", containers.image_key(NGC), squashfs]
    apptainer = containers.import_steps(arm("apptainer"), CTX)
    assert apptainer[0].argv[:2] == ["apptainer", "pull"] and apptainer[0].argv[-1] == f"docker-daemon://{NGC}"
    docker = containers.import_steps(arm("docker"), CTX)
    assert docker[0].argv == ["docker", "pull", NGC] and docker[0].done_if == ["docker", "image", "inspect", NGC]
    assert containers.import_steps(Arm("native"), CTX) == []


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not docker_answers(), reason="no Docker engine answers here")
def test_docker_import_for_real(tmp_path):
    """An image the node has is not pulled; one it cannot get makes that arm unavailable, in one
    sentence naming the node and the fix, while the other arms go on."""
    present = subprocess.run(["docker", "image", "inspect", "benchlib:latest"], capture_output=True).returncode == 0
    if not present:
        pytest.skip("benchlib:latest is not built here (.ci/build-images.sh)")
    ctx = NodeContext(node="vm", job_id=None, gpus_per_node=1, cuda_device=None, cache_dir=tmp_path)
    arms = [Arm("native"), Arm("container", kind="container", engine="docker", image="benchlib:latest"),
            Arm("ghost", kind="container", engine="docker", image="benchlib-never-built:nope")]
    records, unavailable = run_imports(arms, ctx, timeout_s=120)
    assert [record["ok"] for record in records] == [True, True, False]
    assert list(unavailable) == ["ghost"]
    why = unavailable["ghost"]
    assert why.startswith("node vm: arm 'ghost' cannot use image benchlib-never-built:nope")
    assert "docker load" in why and why.endswith("the node measures its other arms.")
