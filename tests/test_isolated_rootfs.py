"""The isolated (runc, host userland) and rootfs (chroot into an exported image) arms.

Unit tests build the OCI config and the launch plans without running anything. The tests marked
``runc`` run for real: a small suite (matmul, one CPU case) on native, isolated, isolated with
``--cpus=1``, rootfs and container, interleaved, two invocations each, then the fingerprints and
the report's decomposition (isolation, stack, interaction) are checked; and single commands through
each launcher (seccomp, read-only root, loopback network, timeouts).

Policy (as for the Docker tests): outside CI a real test SKIPS, saying why, when it cannot run here
(not root, no runc, no Docker to export the image); with ``CI=true`` it FAILS instead. The rootfs
is exported from benchlib:latest into ``.ci/cache/rootfs/benchlib-latest`` (git-ignored) and
exported again only when the image's ID changes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from docker_fixtures import IN_CI, _unavailable, docker_engine, docker_image  # noqa: F401  (fixtures)

from benchlib import arms
from benchlib import load_envs
from benchlib.arms import BUILTIN_ARMS, LaunchSpec, arm_from_spec, chroot, parse_run_flags, parse_size
from benchlib.arms import runc as runc_arm
from benchlib.errors import BenchlibError, PreflightError
from benchlib.manifest import Manifest

REPO = Path(__file__).resolve().parent.parent
ROOTFS_CACHE = REPO / ".ci" / "cache" / "rootfs" / "benchlib-latest"
#: Docker's default capability set as a CapEff mask (CHOWN ... AUDIT_WRITE, 14 bits).
DOCKER_CAP_EFF = "00000000a80425fb"


# ------------------------------------------------------------------------------------------- unit


def _arm(**fields):
    fields.setdefault("name", "iso")
    fields.setdefault("extends", "isolated")
    return arm_from_spec(fields)


def _config(arm, tmp_path: Path, cgroups: bool = True, gpus: bool = False) -> dict:
    run = tmp_path / "out" / "run"
    return runc_arm.bundle_config(arm, ["python", "-V"], {"PYTHONPATH": "/repo", "HOME": "/tmp"}, Path("/repo"), run,
                             run / "inv-1", gpus, cgroups, "cid")


def test_flags_parse_docker_syntax():
    flags = parse_run_flags(_arm(flags=["--cpus=1.5", "--cpuset-cpus", "0-1", "-m", "8g", "--shm-size=1g",
                                            "--security-opt", "seccomp=/x.json", "--pids-limit=100"]))
    assert (flags.cpus, flags.cpuset_cpus, flags.memory, flags.shm_size) == (1.5, "0-1", 8 << 30, 1 << 30)
    assert flags.seccomp == "/x.json" and flags.pids_limit == 100 and flags.has_cgroup_limits
    nvidia = parse_run_flags(_arm(preset="nvidia"))  # --ipc=host --ulimit memlock=-1 --ulimit stack=...
    assert nvidia.ipc_host and nvidia.ulimits == {"memlock": (-1, -1), "stack": (67108864, 67108864)}
    assert not parse_run_flags(_arm()).has_cgroup_limits
    assert parse_size("64m") == 64 << 20 and parse_size("512MiB") == 512 << 20


@pytest.mark.parametrize("flags, text", [(["--privileged"], "--privileged"), (["--cpus=x"], "--cpus=x"),
                                         (["--ulimit", "bogus=1"], "--ulimit=bogus=1"), (["--cpus"], "needs a value")])
def test_bad_flags_are_refused_in_one_sentence(flags, text):
    with pytest.raises(PreflightError, match="arm 'iso'") as caught:
        parse_run_flags(_arm(flags=flags))
    assert text in str(caught.value)


def test_rootfs_arm_refuses_isolation_flags():
    with pytest.raises(PreflightError, match="arm 'rf'.*no isolation.*--cpus"):
        parse_run_flags(arm_from_spec({"name": "rf", "extends": "rootfs", "flags": ["--cpus=2"]}))
    arm = arm_from_spec({"name": "rf", "extends": "rootfs", "preset": "nvidia", "flags": ["--cpuset-cpus=0"]})
    assert parse_run_flags(arm).cpuset_cpus == "0"


def test_bundle_is_a_default_docker_container_over_the_host_root(tmp_path):
    config = _config(_arm(), tmp_path)
    assert config["root"] == {"path": "rootfs", "readonly": True}
    process, linux = config["process"], config["linux"]
    assert process["capabilities"]["bounding"] == list(runc_arm.DOCKER_DEFAULT_CAPS) and len(runc_arm.DOCKER_DEFAULT_CAPS) == 14
    assert process["noNewPrivileges"] is True and process["terminal"] is False
    assert process["user"]["uid"] == os.getuid() and process["cwd"].endswith("inv-1")
    assert "HOME=/tmp" in process["env"] and "rlimits" not in process  # the invoker's rlimits are inherited
    assert {ns["type"] for ns in linux["namespaces"]} == {"pid", "network", "ipc", "uts", "mount", "cgroup"}
    assert {"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"} <= set(linux["maskedPaths"])
    assert {"/proc/sys", "/proc/bus", "/proc/sysrq-trigger"} <= set(linux["readonlyPaths"])
    assert "seccomp" not in linux and linux["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    mounts = {m["destination"]: m for m in config["mounts"]}
    assert "size=67108864" in mounts["/dev/shm"]["options"] and mounts["/dev/shm"]["type"] == "tmpfs"
    assert mounts["/tmp"]["type"] == "tmpfs" and mounts["/dev"]["type"] == "tmpfs"
    order = [m["destination"] for m in config["mounts"]]
    run = str(tmp_path / "out" / "run")
    assert mounts["/repo"]["options"] == ["rbind", "ro"] and mounts[run]["options"] == ["rbind", "rw"]
    assert order.index("/tmp") < order.index("/repo") < order.index(run)  # a run dir under /tmp stays visible


def test_bundle_limits_shm_and_host_namespaces(tmp_path):
    arm = _arm(flags=["--cpus=1", "--cpuset-cpus=0", "--memory=1g", "--shm-size=32m"])
    resources = _config(arm, tmp_path)["linux"]["resources"]
    assert resources["cpu"] == {"quota": 100000, "period": 100000, "cpus": "0"}
    assert resources["memory"] == {"limit": 1 << 30}
    mounts = {m["destination"]: m for m in _config(arm, tmp_path)["mounts"]}
    assert "size=33554432" in mounts["/dev/shm"]["options"]
    with pytest.raises(PreflightError, match="arm 'iso'.*cgroup limits"):
        _config(arm, tmp_path, cgroups=False)
    host = _config(_arm(flags=["--ipc=host", "--network=host", "--cap-drop=NET_RAW", "--cap-add=SYS_NICE"]),
                   tmp_path, cgroups=False)
    assert {ns["type"] for ns in host["linux"]["namespaces"]} == {"pid", "uts", "mount", "cgroup"}
    assert host["linux"]["resources"] == {}  # no cgroup of its own: runc runs with --rootless true
    caps = host["process"]["capabilities"]["bounding"]
    assert "CAP_NET_RAW" not in caps and "CAP_SYS_NICE" in caps
    assert {m["destination"]: m["type"] for m in host["mounts"]}["/dev/shm"] == "bind"


def test_gpu_device_nodes_get_device_rules(tmp_path, monkeypatch):
    monkeypatch.setattr(runc_arm, "nvidia_device_nodes", lambda: [Path("/dev/null")])  # any character device
    config = _config(_arm(), tmp_path, gpus=True)
    (device,) = config["linux"]["devices"]
    assert (device["path"], device["type"], device["major"], device["minor"]) == ("/dev/null", "c", 1, 3)
    rules = config["linux"]["resources"]["devices"]
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in rules


def test_docker_seccomp_profile_is_converted():
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["chown"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_CHOWN"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_KILL"]}},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}],
             "comment": "x"},
        ],
    }
    out = runc_arm.seccomp_to_oci(profile, runc_arm.DOCKER_DEFAULT_CAPS)
    names = [rule["names"] for rule in out["syscalls"]]
    assert ["read", "write"] in names and ["chown"] in names and ["ptrace"] in names
    assert ["mount"] not in names and ["personality"] not in names
    assert out["defaultErrnoRet"] == 1 and all("includes" not in r and "comment" not in r for r in out["syscalls"])
    if os.uname().machine == "x86_64":
        assert out["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    oci_form = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["syslog"], "action": "SCMP_ACT_ERRNO"}]}
    assert runc_arm.seccomp_to_oci(oci_form, []) == oci_form


def test_isolated_launch_argv_carries_the_bundle(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCHLIB_RUNC", sys.executable)  # any executable will do to build the argv
    spec = LaunchSpec(argv=["python", "-m", "papermill"], repo_dir=REPO, run_dir=tmp_path, workdir=tmp_path / "w",
                      env={"BENCHLIB_ARM": "isolated"})
    argv = arms.launch_argv(BUILTIN_ARMS["isolated"], spec, host_has_gpu=False)
    assert argv[0] == sys.executable and argv[1].endswith("_oci_launch.py")
    plan = json.loads(argv[2])
    assert plan["id"] == arms.container_name(spec) and plan["bundle"].endswith(plan["id"])
    assert plan["state_root"].startswith("/run/benchlib-runc")
    assert plan["config"]["process"]["args"] == ["python", "-m", "papermill"]
    assert "BENCHLIB_ARM=isolated" in plan["config"]["process"]["env"]


def _fake_export(directory: Path, **record) -> Path:
    directory.mkdir(parents=True)
    base = {"image": "img:1", "image_id": "sha256:abc", "image_digest": "sha256:abc", "entrypoint": ["/entry.sh"],
            "env": ["PATH=/opt/venv/bin:/usr/bin", "HOME=/home/x", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1"]}
    (directory / chroot.IMAGE_RECORD).write_text(json.dumps({**base, **record}))
    return directory


def test_rootfs_plan_uses_the_image_environment_and_entrypoint(tmp_path, monkeypatch):
    rootfs = _fake_export(tmp_path / "rootfs")
    monkeypatch.setattr(chroot, "driver_libraries", lambda: {"libcuda.so.1": "/usr/lib/libcuda.so.580.1"})
    monkeypatch.setattr(chroot, "driver_binaries", lambda: {"nvidia-smi": "/usr/bin/nvidia-smi"})
    arm = arm_from_spec({"name": "rf", "extends": "rootfs", "image": str(rootfs), "gpus": "all"})
    spec = LaunchSpec(argv=["python3", "-V"], repo_dir=REPO, run_dir=tmp_path / "run", workdir=tmp_path / "run" / "w",
                      env={"PYTHONPATH": str(REPO)})
    argv = arms.launch_argv(arm, spec, host_has_gpu=True)
    assert argv[1].endswith("_chroot_launch.py")
    plan = json.loads(argv[2])
    assert plan["rootfs"] == str(rootfs) and plan["argv"] == ["/entry.sh", "python3", "-V"]
    env = plan["env"]
    assert env["PATH"].split(":")[:2] == ["/usr/local/nvidia/bin", "/opt/venv/bin"]
    assert env["LD_LIBRARY_PATH"] == "/usr/local/nvidia/lib64" and env["TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"] == "1"
    assert env["BENCHLIB_IMAGE"] == str(rootfs) and env["BENCHLIB_IMAGE_DIGEST"] == "sha256:abc"
    binds = [(b["target"], b["readonly"]) for b in plan["binds"]]
    assert binds[:4] == [("/dev", False), ("/proc", False), ("/sys", False), ("/tmp", False)]
    assert binds.index((str(REPO), True)) < binds.index((str(tmp_path / "run"), False))
    assert plan["driver"]["libs"] == {"libcuda.so.1": "/usr/lib/libcuda.so.580.1"}
    assert arms.image_digest("chroot", str(rootfs)) == "sha256:abc"


def test_rootfs_preflight_refuses_missing_or_foreign_folders(tmp_path):
    missing = arm_from_spec({"name": "rf", "extends": "rootfs", "image": str(tmp_path / "nope")})
    with pytest.raises(PreflightError, match=r"arm 'rf'.*does not exist.*benchlib image export"):
        arms.preflight(missing, REPO, tmp_path / "out", False)
    (tmp_path / "plain").mkdir()
    plain = arm_from_spec({"name": "rf", "extends": "rootfs", "image": str(tmp_path / "plain")})
    with pytest.raises(PreflightError, match=r"not an exported image.*benchlib image export"):
        arms.preflight(plain, REPO, tmp_path / "out", False)


def test_chroot_launcher_resolves_symlinks_inside_the_root(tmp_path):
    sys.path.insert(0, str(REPO / "benchlib" / "arms"))
    try:
        import _chroot_launch
    finally:
        sys.path.pop(0)
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "escape").symlink_to("/etc")
    assert _chroot_launch.resolve_in_root(str(root), "/lib/x") == str(root / "usr" / "lib" / "x")
    assert _chroot_launch.resolve_in_root(str(root), "/escape/passwd") == str(root / "etc" / "passwd")
    assert _chroot_launch.resolve_in_root(str(root), "/../../etc") == str(root / "etc")


def test_export_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("mine")
    if not shutil.which("docker"):
        pytest.skip("docker is not installed")
    with pytest.raises(BenchlibError, match="not empty and holds no earlier export"):
        chroot.export_image("benchlib:latest", tmp_path / "x")
    assert (tmp_path / "x" / "file").read_text() == "mine"


def test_cli_refuses_isolated_without_runc(tmp_path):
    from conftest import run_cli

    done = run_cli("run", "--suite", "smoke", "--arms", "native,isolated", "--out", str(tmp_path), "--no-progress",
                   env={"BENCHLIB_RUNC": "/nonexistent/runc"}, timeout=120)
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("error: arm 'isolated': BENCHLIB_RUNC=/nonexistent/runc is not an executable runc")
    assert "apt-get install runc" in message and message.count(". ") == 0  # one sentence
    assert not list(tmp_path.glob("*/manifest.json"))  # refused before anything was written


# ------------------------------------------------------------------------------------------- real


@pytest.fixture(scope="session")
def runc_ready() -> str:
    """Root and a runc binary: what the isolated arm needs."""
    if os.geteuid() != 0:
        _unavailable("the isolated arm needs root (runc); run the tests as root (CI does).")
    runc = runc_arm.runc_binary()
    if runc is None:
        _unavailable("runc is not installed; `apt-get install runc` (it comes with docker.io).")
    return runc


@pytest.fixture(scope="session")
def exported_rootfs(docker_image: str) -> Path:  # noqa: F811
    """benchlib:latest exported into .ci/cache/rootfs/benchlib-latest, again when the image changed."""
    if os.geteuid() != 0:
        _unavailable("exporting and entering the rootfs for the tests needs root; run the tests as root (CI does).")
    image_id = json.loads(subprocess.run(["docker", "image", "inspect", docker_image], capture_output=True, text=True,
                                         timeout=60, check=True).stdout)[0]["Id"]
    record = chroot.read_rootfs_record(ROOTFS_CACHE)
    if record is None or record.get("image_id") != image_id:
        force = record is not None
        if not force and ROOTFS_CACHE.exists():
            shutil.rmtree(ROOTFS_CACHE)  # an interrupted export (no record yet)
        chroot.export_image(docker_image, ROOTFS_CACHE, force=force)
    return ROOTFS_CACHE


def _run_direct(arm, tmp_path: Path, code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    python = sys.executable if arm.kind == "isolated" else "python3"
    spec = LaunchSpec(argv=[python, "-c", code], repo_dir=REPO, run_dir=run, workdir=run,
                      env={"PYTHONPATH": str(REPO)}, name=f"benchlib-test-{uuid.uuid4().hex[:8]}")
    return subprocess.run(arms.launch_argv(arm, spec, host_has_gpu=False), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


_INSIDE = r"""
import json, os, socket
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
facts = {k: status[k].strip() for k in ("Seccomp", "CapEff", "NoNewPrivs")}
try:
    open("/usr/benchlib-should-not-exist", "w")
    facts["root_writable"] = True
except OSError:
    facts["root_writable"] = False
open("run/written", "w").write("ok")
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen()
facts["interfaces"] = sorted(os.listdir("/sys/class/net"))
facts["keys"] = open("/proc/keys").read()
facts["pid"] = os.getpid()
print("FACTS " + json.dumps(facts))
"""


def _facts(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    line = [line for line in done.stdout.splitlines() if line.startswith("FACTS ")][-1]
    return json.loads(line[6:])


@pytest.mark.runc
def test_isolated_container_is_locked_down(runc_ready, tmp_path):
    profile = tmp_path / "seccomp.json"  # Docker's format: archMap and includes
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []}],
        "syscalls": [{"names": ["syslog"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                     {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}}]}))
    arm = _arm(flags=["--security-opt", f"seccomp={profile}"])
    code = _INSIDE.replace('"run/written"', repr(str(tmp_path / "run" / "written")))
    facts = _facts(_run_direct(arm, tmp_path, code))
    assert facts["Seccomp"] == "2" and facts["NoNewPrivs"] == "1"
    assert facts["CapEff"] == (DOCKER_CAP_EFF if os.geteuid() == 0 else "0000000000000000")
    assert facts["root_writable"] is False and (tmp_path / "run" / "written").read_text() == "ok"
    assert facts["interfaces"] == ["lo"] and facts["keys"] == "" and facts["pid"] < 50
    assert not list(Path("/run/benchlib-runc/bundles").glob("benchlib-test-*"))  # bundle removed
    plain = _facts(_run_direct(_arm(), tmp_path, code))
    assert plain["Seccomp"] == "0"  # no profile given: no filter (Docker would apply its default)


@pytest.mark.runc
def test_isolated_timeout_is_cleaned_up_by_stop(runc_ready, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    arm = _arm()
    spec = LaunchSpec(argv=["sleep", "300"], repo_dir=REPO, run_dir=run, workdir=run,
                      name=f"benchlib-test-{uuid.uuid4().hex[:8]}")
    launcher = subprocess.Popen(arms.launch_argv(arm, spec, False), stdin=subprocess.DEVNULL)
    state = Path("/run/benchlib-runc/state") / spec.name
    deadline = time.monotonic() + 60
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state.exists(), "the container never started"
    launcher.kill()  # what subprocess.run's timeout does to the runner's child
    launcher.wait()
    arms.stop(arm, spec)
    assert not state.exists()
    assert not (Path("/run/benchlib-runc/bundles") / spec.name).exists()


@pytest.mark.runc
def test_rootfs_runs_the_image_python_with_the_host_devices(exported_rootfs, tmp_path):
    arm = arm_from_spec({"name": "rf", "extends": "rootfs", "image": str(exported_rootfs)})
    code = ("import sys, os, json; print('FACTS ' + json.dumps({'exe': sys.executable, "
            "'identity': json.load(open('/etc/benchlib/image.json')), 'null': os.path.exists('/dev/null'), "
            "'pid': os.getpid(), 'repo_ro': not os.access(%r, os.W_OK)}))" % str(REPO))
    facts = _facts(_run_direct(arm, tmp_path, code))
    assert facts["exe"] == "/opt/venv/bin/python3" and facts["identity"]["project_version"]
    assert facts["null"] and facts["pid"] > 1 and facts["repo_ro"]


def _single_case_params(tmp_path: Path) -> Path:
    params = yaml.safe_load((REPO / "params" / "matmul" / "smoke.yaml").read_text())
    params["dtype"] = "fp32"
    path = tmp_path / "matmul-one.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="module")
def four_arm_run(tmp_path_factory, runc_ready, exported_rootfs, docker_image) -> Path:  # noqa: F811
    from conftest import run_cli

    tmp = tmp_path_factory.mktemp("isolated-rootfs")
    arms: list = ["native", "isolated", {"name": "rootfs", "extends": "rootfs", "image": str(exported_rootfs)},
                  {"name": "container", "extends": "container", "image": docker_image}]
    if runc_arm.cgroup_support()["writable"]:
        arms.insert(2, {"name": "isolated-cpu1", "extends": "isolated", "flags": ["--cpus=1"]})
    suite = tmp / "isolation.yaml"
    suite.write_text(yaml.safe_dump({
        "description": "isolated and rootfs arms, one CPU matmul case", "invocations": 2, "arms": arms,
        "benchmarks": [{"benchmark": "matmul", "params": str(_single_case_params(tmp))}]}))
    out = tmp / "outputs"
    began = time.monotonic()
    done = run_cli("run", "--suite", str(suite), "--out", str(out), "--no-progress", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-5000:]
    print(f"four-arm run: {time.monotonic() - began:.0f} s")
    (run_dir,) = [path.parent for path in out.glob("*/manifest.json")]
    return run_dir


@pytest.mark.runc
@pytest.mark.notebook
def test_every_invocation_of_every_arm_completes_interleaved(four_arm_run):
    manifest = Manifest.load(four_arm_run)
    assert manifest.status == "complete", [inv.error for inv in manifest.invocations if inv.error]
    arms = [arm["name"] for arm in manifest.arms]
    order = [inv.arm for inv in sorted(manifest.invocations, key=lambda inv: inv.ran_as)]
    assert order == arms * 2
    preflight = {arm["name"]: arm["preflight"] for arm in manifest.arms}
    assert preflight["isolated"]["engine"] == "runc" and preflight["isolated"]["probe"]["missing_modules"] == []
    assert preflight["rootfs"]["image_id"] and "no driver libraries" in str(preflight["rootfs"]["driver_libraries"])


def _envs(run_dir: Path) -> dict[str, list[dict]]:
    by_arm: dict[str, list[dict]] = {}
    for (arm, *_), env in load_envs(run_dir).items():
        by_arm.setdefault(arm, []).append(env)
    return by_arm


@pytest.mark.runc
@pytest.mark.notebook
def test_isolated_fingerprint_shows_the_isolation(four_arm_run):
    envs = _envs(four_arm_run)
    native_pid1 = {env["process"]["pid1_name"] for env in envs["native"]}
    for env in envs["isolated"]:
        assert env["process"]["pid1_name"] not in native_pid1  # pid 1 is not the host's
        assert env["process"]["pid1_name"].startswith("python")  # it is papermill, pid 1 of the namespace
        assert env["container"]["detected"] and env["container"]["engine"] == "runc"
        assert env["shm"]["size_bytes"] == 64 * 1024 * 1024
        assert env["security"]["cap_eff"] == DOCKER_CAP_EFF and env["security"]["no_new_privs"] == 1
        assert env["python"]["executable"] == envs["native"][0]["python"]["executable"]  # the host's python
        assert env["arm"]["kind"] == "isolated" and env["arm"]["engine"] == "runc"
    for env in envs["native"]:
        assert env["shm"]["size_bytes"] != 64 * 1024 * 1024


@pytest.mark.runc
@pytest.mark.notebook
def test_cpu_limit_shows_in_the_fingerprint(four_arm_run):
    envs = _envs(four_arm_run)
    if "isolated-cpu1" not in envs:
        if IN_CI:
            pytest.fail(f"CI=true but cgroups cannot be created here: {runc_arm.cgroup_support()['why']}", pytrace=False)
        pytest.skip(f"cgroups cannot be created here: {runc_arm.cgroup_support()['why']}")
    for env in envs["isolated-cpu1"]:
        assert env["cgroup"]["cpu_max"] == "100000 100000" and env["cgroup"]["cpu_quota_cores"] == 1.0
    for env in envs["isolated"]:
        assert env["cgroup"]["cpu_quota_cores"] is None


@pytest.mark.runc
@pytest.mark.notebook
def test_rootfs_fingerprint_shows_the_image_stack(four_arm_run, exported_rootfs):
    envs = _envs(four_arm_run)
    record = chroot.read_rootfs_record(exported_rootfs)
    for env in envs["rootfs"]:
        assert env["python"]["executable"] == "/opt/venv/bin/python3"
        assert env["container"]["image_identity"]["project_version"]  # /etc/benchlib/image.json of the image
        assert env["arm"]["image"] == str(exported_rootfs) and env["arm"]["image_digest"] == record["image_digest"]
        assert env["shm"]["size_bytes"] == envs["native"][0]["shm"]["size_bytes"]  # no isolation: the host's
        assert env["mounts"]["root_fstype"] is not None


@pytest.mark.runc
@pytest.mark.docker
@pytest.mark.notebook
def test_the_report_splits_the_container_overhead_into_isolation_and_stack(four_arm_run, tmp_path):
    from benchlib.report import analyse, build_report

    report = build_report(four_arm_run, docs_dir=tmp_path / "docs")
    page = report.html.read_text()
    section = page[page.index('<h2 id="Isolation-or-software-stack'):page.index('<h2 id="Samples-per-case"')]
    for column in ("isolation effect [95 % CI]", "stack effect [95 % CI]", "interaction [95 % CI]", "total [95 % CI]"):
        assert column in section
    assert "Arms: native = native, isolated = isolated, rootfs = rootfs, container = container" in section
    assert "too few invocations for confidence intervals" in section  # two invocations an arm
    assert "split into isolation, software stack and their interaction" in section  # the figure
    # one environment table, each difference with the effect it belongs to
    env = page[page.index('id="What-differs-between-the-arms"'):page.index('id="Comparisons"')]
    assert "python.executable" in env and "/opt/venv/bin/python3" in env  # the image's userland
    assert "shm.size_bytes" in env and "64 MiB" in env  # the container's /dev/shm, in human units
    frame = analyse(four_arm_run).env_frame().set_index("key")
    assert "stack" in frame.loc["python.executable", "effect"]
    assert "isolation" not in frame.loc["python.executable", "effect"]  # same userland
    assert "isolation" in frame.loc["shm.size_bytes", "effect"] and frame.loc["shm.size_bytes", "isolated"] == "64 MiB"
    summary = json.loads(report.summary_json.read_text())
    assert summary["decomposition_arms"] == {"native": "native", "isolated": "isolated", "rootfs": "rootfs",
                                             "container": "container"}
    assert [row["effect"] for row in summary["decomposition"]] == ["isolation", "stack", "interaction", "total"]
    assert "## Isolation, software stack and their interaction" in report.markdown.read_text()
