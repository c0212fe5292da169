"""Launching arms: argv construction (unit) and preflight against a real Docker engine (marked docker)."""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

import shutil

from benchlib import arms
from benchlib.arms import BUILTIN_ARMS, PRESETS, Arm, LaunchSpec, launch_argv, raised_privileges
from benchlib.arms import runc
from benchlib.errors import PreflightError

from docker_fixtures import docker_engine, docker_image  # noqa: F401  (pytest fixtures)

REPO = Path(__file__).resolve().parent.parent
PAPERMILL = ["python3", "-m", "papermill", "nb.ipynb", "out.ipynb", "-k", "python3"]


@pytest.fixture
def spec(tmp_path: Path) -> LaunchSpec:
    run_dir = tmp_path / "outputs" / "run-1"
    return LaunchSpec(argv=list(PAPERMILL), repo_dir=Path("/repo"), run_dir=run_dir,
                      workdir=run_dir / "container" / "matmul" / "c0" / "inv-0",
                      env={"BENCHLIB_ARM": "container", "BENCHLIB_RUN_FLAGS": json.dumps(["--ipc=host", "a,b"]),
                           "PYTHONPATH": "/repo"})


@pytest.fixture
def as_user(monkeypatch):
    """Pretend benchlib runs as a given UID (and GID = UID)."""
    monkeypatch.delenv("BENCHLIB_CONTAINER_USER", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def set_uid(uid: int) -> None:
        monkeypatch.setattr(os, "geteuid", lambda: uid)
        monkeypatch.setattr(os, "getuid", lambda: uid)
        monkeypatch.setattr(os, "getgid", lambda: uid)

    set_uid(4242)
    return set_uid


def _option_values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, item in enumerate(argv[:-1]) if item == option]


def _image_index(argv: list[str], image: str) -> int:
    return argv.index(image)


# --------------------------------------------------------------------------------------------------
# argv construction


def test_native_argv_is_passed_through_unchanged(spec, as_user):
    assert launch_argv(BUILTIN_ARMS["native"], spec, host_has_gpu=True) == PAPERMILL


def test_docker_without_gpu(spec, as_user):
    argv = launch_argv(BUILTIN_ARMS["container"], spec, host_has_gpu=False, cdi=False)
    assert argv[:3] == ["docker", "run", "--rm"]
    assert "--pull=never" in argv
    image_at = _image_index(argv, "benchlib:latest")
    assert argv[image_at + 1:] == PAPERMILL, "the papermill argv follows the image, unchanged"
    assert "--gpus" not in argv and "--device" not in argv
    assert _option_values(argv, "--user") == ["4242:4242"]
    assert _option_values(argv, "-w") == [str(spec.workdir)]
    env = _option_values(argv, "-e")
    assert "BENCHLIB_ARM=container" in env and "PYTHONPATH=/repo" in env
    assert 'BENCHLIB_RUN_FLAGS=["--ipc=host", "a,b"]' in env, "values travel intact, commas and quotes included"
    assert _option_values(argv, "--name") == [arms.container_name(spec)]


def test_docker_mounts_repo_read_only_and_only_run_dir_writable(spec, as_user):
    argv = launch_argv(BUILTIN_ARMS["container"], spec, host_has_gpu=True, cdi=False)
    mounts = _option_values(argv, "-v") + _option_values(argv, "--volume") + _option_values(argv, "--mount")
    assert mounts == [f"/repo:/repo:ro", f"{spec.run_dir}:{spec.run_dir}:rw"]
    assert all(flag not in argv for flag in ("--privileged", "--network=host", "--pid=host", "--cap-add"))
    assert not any(item.startswith("--privileged") for item in argv)


def test_docker_with_gpu_uses_gpus_all_or_cdi(spec, as_user):
    arm = BUILTIN_ARMS["container"]
    argv = launch_argv(arm, spec, host_has_gpu=True, cdi=False)
    assert _option_values(argv, "--gpus") == ["all"]
    assert argv.index("--gpus") < _image_index(argv, "benchlib:latest")
    cdi = launch_argv(arm, spec, host_has_gpu=True, cdi=True)
    assert _option_values(cdi, "--device") == ["nvidia.com/gpu=all"] and "--gpus" not in cdi


def test_gpus_setting_of_the_arm(spec, as_user):
    none = Arm("c", kind="container", engine="docker", image="img", gpus="none")
    every = Arm("c", kind="container", engine="docker", image="img", gpus="all")
    assert "--gpus" not in launch_argv(none, spec, host_has_gpu=True, cdi=False)
    assert "--gpus" in launch_argv(every, spec, host_has_gpu=False, cdi=False)


def test_cdi_is_detected_from_spec_files(tmp_path):
    empty, with_spec = tmp_path / "a", tmp_path / "b"
    empty.mkdir(), with_spec.mkdir()
    (with_spec / "nvidia.yaml").write_text("cdiVersion: 0.5.0\n")
    assert not arms.cdi_specs_present((empty, tmp_path / "missing"))
    assert arms.cdi_specs_present((empty, with_spec))


def test_nvidia_preset_flags_come_after_gpu_flags_and_before_the_image(spec, as_user):
    arm = BUILTIN_ARMS["container-nvidia"]
    argv = launch_argv(arm, spec, host_has_gpu=True, cdi=False)
    flags = list(PRESETS["nvidia"])
    start = argv.index(flags[0])
    assert argv[start:start + len(flags)] == flags
    assert argv.index("--gpus") < start < _image_index(argv, "benchlib:latest")


def test_extra_flags_follow_the_preset(spec, as_user):
    arm = Arm("pinned", kind="container", engine="docker", image="img", preset="nvidia",
              flags=("--cpuset-cpus=0-3", "--shm-size=1g"))
    argv = launch_argv(arm, spec, host_has_gpu=False)
    image_at = _image_index(argv, "img")
    assert argv[image_at - len(arm.run_flags):image_at] == list(arm.run_flags)


PRIVILEGE_FLAGS = ("--privileged", "--cap-add", "--security-opt", "--pid", "--userns", "--device", "--mount",
                   "--network", "--net", "--uts", "--cgroupns")


def _flag_names(argv: list[str]) -> set[str]:
    """Option names in argv; rootless podman's --userns=keep-id (the invoker's UID inside) is not one
    that raises anything."""
    return {item.partition("=")[0] for item in argv if item.startswith("-") and item != "--userns=keep-id"}


@pytest.mark.parametrize("name", ["container", "container-nvidia", "podman"])
def test_builtin_container_arms_run_confined(spec, as_user, name):
    """As the invoker, the checkout read-only, only the run directory writable, nothing privileged:
    the nvidia preset adds --ipc=host and ulimits, never a capability."""
    arm = BUILTIN_ARMS[name]
    argv = launch_argv(arm, spec, host_has_gpu=False, cdi=False)
    image_at = _image_index(argv, "benchlib:latest")
    ours = argv[:image_at]
    assert _option_values(ours, "--user") == ["4242:4242"] and ours.index("--user") < image_at
    assert _option_values(ours, "-v") == ["/repo:/repo:ro", f"{spec.run_dir}:{spec.run_dir}:rw"]
    assert not _flag_names(ours) & set(PRIVILEGE_FLAGS), _flag_names(ours) & set(PRIVILEGE_FLAGS)
    assert raised_privileges(arm.run_flags, arm.kind) == []


def test_privileges_only_when_an_arm_asks_and_then_they_are_named(spec, as_user):
    arm = Arm("raw", kind="container", engine="docker", image="img", preset="nvidia",
              flags=("--privileged", "--cap-add=SYS_ADMIN", "--security-opt", "seccomp=unconfined", "--shm-size=1g"))
    argv = launch_argv(arm, spec, host_has_gpu=False, cdi=False)
    image_at = _image_index(argv, "img")
    assert argv[image_at - len(arm.run_flags):image_at] == list(arm.run_flags), "the arm's own flags, as written"
    assert argv.count("--privileged") == 1 and "--cap-add=SYS_ADMIN" in argv
    assert raised_privileges(arm.run_flags, arm.kind) == [
        "--privileged (every capability and host device, no seccomp or AppArmor confinement)",
        "--cap-add SYS_ADMIN (a capability beyond the engine's default set)",
        "--security-opt seccomp=unconfined (confinement switched off)",
    ]


@pytest.mark.parametrize(("flags", "raised"), [
    (["--ipc=host", "--ulimit", "memlock=-1", "--shm-size=8g", "--cpus=4", "--security-opt=no-new-privileges"], []),
    (["--privileged=false", "-u", "1000:1000", "--pid=private", "-v", "/data:/data:ro",
      "--mount", "type=bind,src=/d,dst=/d,readonly"], []),
    (["--user=0"], ["--user 0 (root inside the container)"]),
    (["-u", "root:root"], ["-u root:root (root inside the container)"]),
    (["--pid", "host"], ["--pid host (the host's process namespace)"]),
    (["-v", "/srv:/srv"], ["-v /srv:/srv (a writable host path)"]),
    (["-v", "/var/run/docker.sock:/var/run/docker.sock:ro"],
     ["-v /var/run/docker.sock:/var/run/docker.sock:ro (a writable host path)"]),
    (["--device=/dev/kvm"], ["--device /dev/kvm (a host device beyond the GPUs)"]),
    (["--security-opt", "apparmor=unconfined"], ["--security-opt apparmor=unconfined (confinement switched off)"]),
    (["--fakeroot", "--bind", "/a:/a:ro,/b:/b"],
     ["--fakeroot (root inside the container)", "--bind /a:/a:ro,/b:/b (a writable host path)"]),
])
def test_raised_privileges_reads_docker_and_apptainer_flags(flags, raised):
    assert raised_privileges(flags, "container") == raised
    assert raised_privileges(flags, "native") == []  # a native arm's flags launch nothing


def test_root_runs_the_container_as_uid_1000(spec, as_user):
    as_user(0)
    argv = launch_argv(BUILTIN_ARMS["container"], spec, host_has_gpu=False, cdi=False)
    assert _option_values(argv, "--user") == ["1000:1000"]


def test_container_user_override(spec, as_user, monkeypatch):
    monkeypatch.setenv("BENCHLIB_CONTAINER_USER", "1234:99")
    argv = launch_argv(BUILTIN_ARMS["container"], spec, host_has_gpu=False, cdi=False)
    assert _option_values(argv, "--user") == ["1234:99"]
    monkeypatch.setenv("BENCHLIB_CONTAINER_USER", "alice")
    with pytest.raises(PreflightError, match="BENCHLIB_CONTAINER_USER"):
        launch_argv(BUILTIN_ARMS["container"], spec, host_has_gpu=False)


def test_cuda_visible_devices_is_forwarded(spec, as_user, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    argv = launch_argv(BUILTIN_ARMS["container"], spec, host_has_gpu=True, cdi=False)
    assert "CUDA_VISIBLE_DEVICES=1" in _option_values(argv, "-e")


def test_podman_uses_cdi_and_keeps_the_rootless_uid(spec, as_user):
    arm = BUILTIN_ARMS["podman"]
    argv = launch_argv(arm, spec, host_has_gpu=True, cdi=False)
    assert argv[:2] == ["podman", "run"]
    assert _option_values(argv, "--device") == ["nvidia.com/gpu=all"] and "--gpus" not in argv
    assert "--userns=keep-id" in argv and _option_values(argv, "--user") == ["4242:4242"]
    as_user(0)
    rootful = launch_argv(arm, spec, host_has_gpu=False)
    assert "--userns=keep-id" not in rootful and "--device" not in rootful


def test_apptainer_argv(spec, as_user):
    arm = BUILTIN_ARMS["apptainer"]
    argv = launch_argv(arm, spec, host_has_gpu=True)
    assert argv[0] == "env"
    exec_at = argv.index("apptainer")
    assert argv[exec_at:exec_at + 3] == ["apptainer", "exec", "--containall"]
    assert set(argv[1:exec_at]) == {f"APPTAINERENV_{k}={v}" for k, v in spec.env.items()}
    assert _option_values(argv, "--bind") == [f"/repo:/repo:ro,{spec.run_dir}:{spec.run_dir}:rw"]
    assert _option_values(argv, "--pwd") == [str(spec.workdir)]
    assert "--nv" in argv
    assert argv[argv.index("docker-daemon://benchlib:latest") + 1:] == PAPERMILL
    assert "--privileged" not in argv and "--writable" not in argv
    no_gpu = launch_argv(arm, spec, host_has_gpu=False)
    assert "--nv" not in no_gpu


def test_apptainer_image_references():
    assert arms.apptainer_image_ref("/images/bench.sif") == "/images/bench.sif"
    assert arms.apptainer_image_ref("docker://nvcr.io/nvidia/pytorch:25.10-py3").startswith("docker://")
    assert arms.apptainer_image_ref("benchlib:latest") == "docker-daemon://benchlib:latest"


def test_isolated_and_rootfs_say_what_is_missing(spec, monkeypatch, tmp_path):
    # Launched for real in tests/test_isolated_rootfs.py; here only the one-sentence refusals.
    monkeypatch.setenv("BENCHLIB_RUNC", "/nonexistent/runc")
    with pytest.raises(PreflightError, match="arm 'isolated'.*apt-get install runc"):
        launch_argv(BUILTIN_ARMS["isolated"], spec, host_has_gpu=False)
    monkeypatch.setenv("BENCHLIB_ROOTFS", str(tmp_path / "no-such-rootfs"))
    with pytest.raises(PreflightError, match="arm 'rootfs'.*benchlib image export"):
        launch_argv(BUILTIN_ARMS["rootfs"], spec, host_has_gpu=False)


def test_container_name_is_stable_per_workdir(spec, tmp_path):
    assert arms.container_name(spec) == arms.container_name(spec)
    other = LaunchSpec(argv=[], repo_dir=spec.repo_dir, run_dir=spec.run_dir, workdir=tmp_path / "x")
    assert arms.container_name(other) != arms.container_name(spec)
    named = LaunchSpec(argv=[], repo_dir=spec.repo_dir, run_dir=spec.run_dir, workdir=tmp_path, name="mine")
    assert arms.container_name(named) == "mine"


def test_preflight_native_needs_nothing(tmp_path):
    facts = arms.preflight(BUILTIN_ARMS["native"], REPO, tmp_path / "out", host_has_gpu=False)
    assert facts["engine"] == "host"


def test_preflight_names_the_arm_when_the_engine_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    arm = Arm("my-podman", kind="container", engine="podman", image="img")
    with pytest.raises(PreflightError, match="arm 'my-podman'.*podman.*not on PATH"):
        arms.preflight(arm, REPO, tmp_path, host_has_gpu=False)


def test_prepare_run_dir_is_a_no_op_for_non_root(tmp_path, as_user):
    (tmp_path / "a").mkdir()
    arms.prepare_run_dir(tmp_path, BUILTIN_ARMS["container"])  # no chown attempted as UID 4242
    assert (tmp_path / "a").stat().st_uid == os.stat(tmp_path).st_uid


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_prepare_run_dir_chowns_folders_not_files_when_root(tmp_path):
    inv = tmp_path / "arm" / "inv-0"
    inv.mkdir(parents=True)
    (inv / "params.yaml").write_text("x: 1\n")
    arms.prepare_run_dir(tmp_path, BUILTIN_ARMS["container"])
    assert {p.stat().st_uid for p in (tmp_path, tmp_path / "arm", inv)} == {1000}
    assert (inv / "params.yaml").stat().st_uid == 0
    arms.prepare_run_dir(tmp_path, BUILTIN_ARMS["native"])  # native: untouched
    assert tmp_path.stat().st_uid == 1000


# --------------------------------------------------------------------------------------------------
# real engine


@pytest.mark.docker
def test_preflight_against_the_real_image(docker_image, tmp_path):
    facts = arms.preflight(BUILTIN_ARMS["container"], REPO, tmp_path / "outputs", host_has_gpu=False)
    probe = facts["probe"]
    assert facts["engine"] == "docker" and facts["engine_version"]
    assert facts["image_id"].startswith("sha256:")
    assert arms.image_digest("docker", docker_image) == facts["image_digest"]
    assert probe["run_dir_writable"] and probe["repo_readable"] and not probe["missing_modules"]
    assert probe["benchlib_from"] == str(REPO / "benchlib"), "the mounted checkout wins over the image's copy"
    expected_uid = 1000 if os.geteuid() == 0 else os.getuid()
    assert probe["uid"] == expected_uid and probe["uid"] != 0
    assert probe["torch"]
    assert set(probe["image_json"]) >= {"base_image", "project_version", "vcs_ref", "build_date"}
    assert list((tmp_path / "outputs").iterdir()) == [], "preflight leaves nothing behind"


@pytest.mark.docker
def test_preflight_missing_image_says_how_to_build_it(docker_engine, tmp_path):
    arm = Arm("ghost", kind="container", engine="docker", image=f"benchlib-missing-{uuid.uuid4().hex[:8]}:none")
    with pytest.raises(PreflightError) as caught:
        arms.preflight(arm, REPO, tmp_path, host_has_gpu=False)
    message = str(caught.value)
    assert "arm 'ghost'" in message and "benchlib image build" in message
    assert message.count(". ") == 0, "one sentence"


@pytest.mark.docker
def test_preflight_bogus_flag_names_the_arm(docker_image, tmp_path):
    arm = Arm("weird", kind="container", engine="docker", image=docker_image, flags=("--bogus-flag",))
    with pytest.raises(PreflightError) as caught:
        arms.preflight(arm, REPO, tmp_path, host_has_gpu=False)
    message = str(caught.value)
    assert "arm 'weird'" in message and "--bogus-flag" in message


@pytest.mark.docker
def test_a_real_launch_writes_only_into_the_run_dir(docker_image, tmp_path):
    run_dir = tmp_path / "run"
    workdir = run_dir / "inv-0"
    workdir.mkdir(parents=True)
    arm = BUILTIN_ARMS["container"]
    arms.prepare_run_dir(run_dir, arm)
    script = (
        "import os, sys\n"
        "open('result.txt', 'w').write(str(os.getuid()))\n"
        "try:\n"
        "    open(os.path.join(sys.argv[1], 'intruder.txt'), 'w')\n"
        "    print('REPO-WRITABLE')\n"
        "except OSError as exc:\n"
        "    print('REPO-READONLY', exc.errno)\n"
    )
    spec = LaunchSpec(argv=["python3", "-c", script, str(REPO)], repo_dir=REPO, run_dir=run_dir, workdir=workdir,
                      env={"PYTHONPATH": str(REPO)})
    done = subprocess.run(launch_argv(arm, spec, host_has_gpu=False), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "REPO-READONLY 30" in done.stdout  # EROFS
    assert not (REPO / "intruder.txt").exists()
    written = (workdir / "result.txt").read_text()
    assert written == str(1000 if os.geteuid() == 0 else os.getuid())


#: bit numbers of Docker's default capabilities (linux/capability.h)
CAP_BITS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6,
            "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13, "CAP_SYS_CHROOT": 18,
            "CAP_SYS_NICE": 23, "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31}
DOCKER_DEFAULT_MASK = sum(1 << CAP_BITS[name] for name in runc.DOCKER_DEFAULT_CAPS)
#: what a confined container sees of itself, printed as one JSON line
CONFINEMENT_PROBE = r"""
import json, os, sys
repo, run = sys.argv[1], sys.argv[2]
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
mounts = []
for line in open("/proc/self/mountinfo"):
    left, _, right = line.partition(" - ")
    fields, tail = left.split(), right.split()
    mounts.append({"point": fields[4], "options": fields[5], "fstype": tail[0]})
def write(folder):
    try:
        with open(os.path.join(folder, "probe.txt"), "w") as handle:
            handle.write("x")
        os.unlink(os.path.join(folder, "probe.txt"))
        return "ok"
    except OSError as exc:
        return exc.errno
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "euid": os.geteuid(),
                  **{key: int(status[key].strip(), 16) for key in ("CapEff", "CapPrm", "CapAmb", "CapBnd")},
                  "seccomp": status["Seccomp"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
                  "mounts": mounts, "repo_write": write(repo), "run_write": write(run)}))
"""
#: filesystems of the container's own making (not a host folder)
_CONTAINER_FS = {"overlay", "proc", "tmpfs", "devpts", "mqueue", "sysfs", "cgroup", "cgroup2", "shm", "fuse-overlayfs"}


@pytest.mark.docker
@pytest.mark.parametrize(("arm_name", "extra_caps"), [("container", ()), ("asks-sys-nice", ("CAP_SYS_NICE",))])
def test_a_real_container_is_confined(docker_image, tmp_path, arm_name, extra_caps):
    """Seen from inside: the invoker's UID (1000 for root), no effective capability, a bounding set no
    wider than Docker's default plus what the arm asks for, the default seccomp filter, the checkout
    read-only and, of the host's folders, only the run directory writable. (The nvidia preset's argv is
    checked above; its ``memlock=-1`` needs a daemon allowed to raise rlimits, which CI's is not.)"""
    arm = BUILTIN_ARMS.get(arm_name) or Arm(arm_name, kind="container", engine="docker", image=docker_image,
                                           flags=("--cap-add=SYS_NICE",))
    run_dir, workdir = tmp_path / "run", tmp_path / "run" / "inv-0"
    workdir.mkdir(parents=True)
    arms.prepare_run_dir(run_dir, arm)
    spec = LaunchSpec(argv=["python3", "-c", CONFINEMENT_PROBE, str(REPO), str(run_dir)], repo_dir=REPO,
                      run_dir=run_dir, workdir=workdir, env={})
    done = subprocess.run(launch_argv(arm, spec, host_has_gpu=False), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    uid = 1000 if os.geteuid() == 0 else os.getuid()
    assert (seen["uid"], seen["euid"], seen["gid"]) == (uid, uid, 1000 if os.geteuid() == 0 else os.getgid())
    assert seen["CapEff"] == seen["CapPrm"] == seen["CapAmb"] == 0, "a non-root process holds no capability"
    allowed = DOCKER_DEFAULT_MASK | sum(1 << CAP_BITS[name] for name in extra_caps)
    assert seen["CapBnd"] & ~allowed == 0, f"bounding set {seen['CapBnd']:#x} exceeds {allowed:#x}"
    for name in extra_caps:
        assert seen["CapBnd"] & (1 << CAP_BITS[name]), f"{name} was asked for"
    assert seen["seccomp"] == "2", "Docker's default seccomp filter applies"
    assert seen["repo_write"] == 30 and seen["run_write"] == "ok"  # EROFS on the checkout
    by_point = {mount["point"]: mount for mount in seen["mounts"]}
    assert by_point[str(REPO)]["options"].split(",")[0] == "ro"
    assert by_point[str(run_dir)]["options"].split(",")[0] == "rw"
    host_writable = {m["point"] for m in seen["mounts"]
                     if m["options"].split(",")[0] == "rw" and m["fstype"] not in _CONTAINER_FS}
    assert host_writable <= {str(run_dir), "/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}, host_writable
