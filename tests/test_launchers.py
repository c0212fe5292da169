"""The Launcher interface and its registry: one launcher per engine, a new engine is one class and one
registry entry, and each launcher says which mechanisms it can vary and how."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchlib import arms
from benchlib.arms import (BUILTIN_ARMS, CannotVary, HostFacts, LaunchSpec, Launcher, Mechanism, arm_from_spec,
                           launcher_for, registry)
from benchlib.errors import ParamsError
from conftest import REPO


@pytest.fixture
def spec(tmp_path: Path) -> LaunchSpec:
    run_dir = tmp_path / "run"
    return LaunchSpec(argv=["python3", "-c", "print('hello')"], repo_dir=REPO, run_dir=run_dir,
                      workdir=run_dir / "inv-1", env={"BENCHLIB_ARM": "x"})


def test_every_builtin_arm_has_its_launcher_and_kinds_follow_the_registry():
    assert {name: launcher_for(arm).engine for name, arm in BUILTIN_ARMS.items()} == {
        "native": "host", "container": "docker", "container-nvidia": "docker", "podman": "podman",
        "apptainer": "apptainer", "isolated": "runc", "rootfs": "chroot"}
    assert {kind: arms.engines_of_kind(kind) for kind in arms.ARM_KINDS} == {
        "native": ("host",), "container": ("docker", "podman", "apptainer"), "isolated": ("runc",),
        "rootfs": ("chroot",)}
    assert {e: (l.userland, l.kind) for e, l in arms.launchers().items()} == {
        "host": ("host", "native"), "docker": ("image", "container"), "podman": ("image", "container"),
        "apptainer": ("image", "container"), "runc": ("host", "isolated"), "chroot": ("image", "rootfs")}
    with pytest.raises(KeyError, match="no launcher for engine 'slurm'"):
        launcher_for("slurm")


class NiceLauncher(Launcher):
    """A test engine: the host's python under ``nice -n 5`` (a native arm with a lower CPU priority)."""

    engine = "nice"
    kind = "native"
    userland = "host"
    takes_flags = False

    def argv(self, arm, spec, host):
        return ["nice", "-n", "5", *spec.argv]

    def child_env(self, arm, spec):
        return {**os.environ, **spec.env}

    def preflight(self, arm, repo_dir, run_dir, host):
        return {"engine": self.engine}


def test_a_new_engine_is_one_class_and_one_registry_entry(spec: LaunchSpec):
    with pytest.raises(ParamsError, match="engine' must be one of host for a native arm, not 'nice'"):
        arm_from_spec({"name": "niced", "kind": "native", "engine": "nice"}, "suite.yaml", ("arms", 1))
    registry.register(NiceLauncher())
    try:
        arm = arm_from_spec({"name": "niced", "kind": "native", "engine": "nice"}, "suite.yaml", ("arms", 1))
        argv = arms.launch_argv(arm, spec, host_has_gpu=False)
        assert argv[:3] == ["nice", "-n", "5"] and argv[3:] == spec.argv
        done = subprocess.run(argv, capture_output=True, text=True, env=launcher_for(arm).child_env(arm, spec))
        assert done.stdout.strip() == "hello"
        assert arms.preflight(arm, REPO, spec.run_dir, False) == {"engine": "nice"}
        assert launcher_for(arm).python(arm) == sys.executable
        assert launcher_for(arm).raised_privileges(["--privileged"]) == []
    finally:
        registry._LAUNCHERS.pop("nice")


def _flags(arm) -> list[str]:
    return list(arm.run_flags)


def test_docker_expresses_each_mechanism_as_one_flag_and_changes_nothing_else():
    base = arm_from_spec({"name": "ngc", "extends": "container", "preset": "nvidia",
                          "flags": ["--shm-size=64m", "--cpus=4", "--cpuset-cpus", "0-3", "--security-opt",
                                    "seccomp=/p.json", "--security-opt", "label=disable"], "env": {"A": "1"}})
    docker = launcher_for(base)
    assert set(docker.mechanisms) == set(Mechanism)
    shm = docker.vary(base, Mechanism.SHM_SIZE, 16 << 30)
    assert shm.name == "ngc+shm_size" and shm.image == base.image and shm.env == base.env
    assert _flags(shm) == ["--ipc=host", "--ulimit=memlock=-1", "--ulimit=stack=67108864", "--cpus=4",
                           "--cpuset-cpus=0-3", "--security-opt=seccomp=/p.json", "--security-opt=label=disable",
                           f"--shm-size={16 << 30}"]
    assert "--ipc=host" not in _flags(docker.vary(base, Mechanism.IPC_HOST, False))
    assert "--cpus=4" not in _flags(docker.vary(base, Mechanism.CPU_QUOTA, None))
    assert "--cpuset-cpus=2,3" in _flags(docker.vary(base, Mechanism.CPUSET, "2,3"))
    seccomp = _flags(docker.vary(base, Mechanism.SECCOMP, "unconfined"))
    assert "--security-opt=seccomp=unconfined" in seccomp and "--security-opt=label=disable" in seccomp
    assert "--security-opt=seccomp=/p.json" not in seccomp
    memlock = _flags(docker.vary(base, Mechanism.MEMLOCK, None, name="no-memlock"))
    assert "--ulimit=stack=67108864" in memlock and not any("memlock" in flag for flag in memlock)
    env = docker.vary(base, Mechanism.ENV, {"A": None, "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "0"})
    assert dict(env.env) == {"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "0"} and env.run_flags == base.run_flags


def test_a_varied_isolated_arm_is_a_bundle_with_that_one_change(tmp_path: Path):
    from benchlib.arms import runc

    base = BUILTIN_ARMS["isolated"]
    varied = launcher_for(base).vary(base, Mechanism.SHM_SIZE, 1 << 30)
    run = tmp_path / "run"
    configs = [runc.bundle_config(arm, ["true"], {}, REPO, run, run, False, True, "cid") for arm in (base, varied)]
    shm = [next(m for m in config["mounts"] if m["destination"] == "/dev/shm") for config in configs]
    assert "size=67108864" in shm[0]["options"] and f"size={1 << 30}" in shm[1]["options"]
    assert [m for m in configs[0]["mounts"] if m["destination"] != "/dev/shm"] == \
           [m for m in configs[1]["mounts"] if m["destination"] != "/dev/shm"]
    assert arms.parse_run_flags(launcher_for(base).vary(base, Mechanism.CPUSET, "0")).cpuset_cpus == "0"


def test_launchers_say_what_they_cannot_vary():
    with pytest.raises(CannotVary) as caught:
        launcher_for("apptainer").vary(BUILTIN_ARMS["apptainer"], Mechanism.SHM_SIZE, 1 << 30)
    assert str(caught.value) == ("arm 'apptainer': a apptainer arm cannot vary shm_size (it can vary env); compare "
                                 "with an arm of another engine to measure it.")
    with pytest.raises(CannotVary, match="a chroot arm cannot vary seccomp"):
        launcher_for("chroot").vary(BUILTIN_ARMS["rootfs"], Mechanism.SECCOMP, "unconfined")
    native = launcher_for("host").vary(BUILTIN_ARMS["native"], Mechanism.ENV, {"OMP_NUM_THREADS": "1"})
    assert dict(native.env) == {"OMP_NUM_THREADS": "1"} and native.name == "native+env"
    rootfs = launcher_for("chroot").vary(BUILTIN_ARMS["rootfs"], Mechanism.CPUSET, "0-1")
    assert arms.parse_run_flags(rootfs).cpuset_cpus == "0-1"


def test_what_an_arm_asks_for_is_read_by_its_launcher():
    nvidia = arms.parse_run_flags(BUILTIN_ARMS["container-nvidia"])
    assert nvidia.ipc_host and nvidia.ulimits["memlock"] == (-1, -1) and nvidia.shm_size == 64 << 20
    odd = arm_from_spec({"name": "odd", "extends": "container", "flags": ["--gpus=all", "--shm-size=2g"]})
    assert arms.parse_run_flags(odd).shm_size == 2 << 30  # flags of the engine's own are skipped, not refused
    assert arms.parse_run_flags(BUILTIN_ARMS["native"]).shm_size == 64 << 20  # a native arm's flags launch nothing


#: Where a module may look at an arm's kind or engine: the arms package (the registry and its launchers),
#: and the fingerprint, which records the engine it detects.
_ALLOWED = {"fingerprint.py"}
_BRANCH = re.compile(r"""(\.kind|\.engine|\.get\(["'](kind|engine)["']\)|\[["'](kind|engine)["']\])\s*(==|!=|in\b|not in\b)""")


def test_no_module_outside_the_registry_branches_on_an_arms_kind_or_engine():
    offending = []
    for path in sorted((REPO / "benchlib").rglob("*.py")):
        relative = path.relative_to(REPO / "benchlib")
        if relative.parts[0] == "arms" or relative.name in _ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _BRANCH.search(line):
                offending.append(f"benchlib/{relative}:{number}: {line.strip()}")
    assert offending == []


def test_host_facts_reach_the_gpu_flags(spec: LaunchSpec, monkeypatch):
    monkeypatch.delenv("BENCHLIB_CONTAINER_USER", raising=False)
    docker = launcher_for("docker")
    arm = BUILTIN_ARMS["container"]
    assert "--gpus" in docker.argv(arm, spec, HostFacts(has_gpu=True, cdi=False))
    assert "nvidia.com/gpu=all" in docker.argv(arm, spec, HostFacts(has_gpu=True, cdi=True))
    assert not {"--gpus", "--device"} & set(docker.argv(arm, spec, HostFacts(has_gpu=False)))
    assert json.dumps(docker.mechanisms[Mechanism.SHM_SIZE]) == '"--shm-size=BYTES"'
