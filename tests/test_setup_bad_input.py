"""Bad input on a fresh machine, for real: what the setup scripts say, and what `make run` and
`make test` do then.

* **No root and no Docker**: the scripts run as `nobody` (setpriv) with a PATH without docker.
* **Docker without permission**: as `nobody` against this machine's engine (its socket is
  root:docker 0660).
* **No network to the package mirrors**: as root in an empty network namespace (unshare -n,
  loopback up), apt pointed at deb.debian.org with its lists in a scratch folder (APT_CONFIG), so
  nothing on this machine changes; PATH has neither docker nor runc. `make run` must still write the
  native-only report and end with the answer naming both skipped arms and why.
* **A disk too full for the image**: base-image.sh with TMPDIR on a 20 MB tmpfs.

Each is one sentence naming the fix; `make test` with CI=true fails with it before pytest starts
instead of letting tests skip. These tests need root (setpriv, unshare, mount): they skip
otherwise, and CI runs as root.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import REPO
from docker_fixtures import docker_engine  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user and to unshare")

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
VENV = Path(sys.executable).parent.parent
#: what "no Docker" takes away (the engine, its runtime and their helpers)
CONTAINER_TOOLS = {"docker", "dockerd", "docker-init", "docker-proxy", "containerd", "containerd-shim",
                   "containerd-shim-runc-v2", "ctr", "runc"}


def _path_without(names: set[str], where: Path) -> str:
    """A PATH of one folder with a link to every command on this PATH except ``names``."""
    where.mkdir(parents=True, exist_ok=True)
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or not os.path.isdir(folder) or folder.startswith("/root"):
            continue
        for entry in os.scandir(folder):
            link = where / entry.name
            if entry.name in names or link.exists() or not os.access(entry.path, os.X_OK):
                continue
            link.symlink_to(entry.path)
    return str(where)


@pytest.fixture
def scratch():
    """A folder every user can read and write (pytest's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="benchlib-badinput-", dir="/var/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def copy(scratch: Path) -> Path:
    """What the two commands use of the checkout, where `nobody` can read it (a checkout under /root
    is private to root). The venv stays the one running these tests (VENV=, make -o its stamp)."""
    repo = scratch / "repo"
    repo.mkdir()
    # .ci/cache holds what earlier tests built (an exported image rootfs of 2 GB, with device nodes and
    # absolute links): the two commands rebuild it when they need it, so it is not copied
    skip = shutil.ignore_patterns("cache", "__pycache__")
    for name in ("Makefile", "pyproject.toml", ".ci", "benchlib", "notebooks", "params"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, repo / name, ignore=skip, symlinks=True)
        else:
            shutil.copy(REPO / name, repo / name)
    return repo


def _make(target: str, *variables: str) -> list[str]:
    return ["make", "--no-print-directory", "-o", f"{VENV}/.installed", f"VENV={VENV}", target, *variables]


def _run(argv: list[str], env: dict[str, str], cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _nobody_env(scratch: Path, path: str) -> dict[str, str]:
    return {"PATH": path, "HOME": str(scratch), "LANG": "C.UTF-8", "TMPDIR": str(scratch)}


def test_no_root_and_no_docker(scratch: Path, copy: Path) -> None:
    path = _path_without(CONTAINER_TOOLS, scratch / "bin")
    env = _nobody_env(scratch, path)
    sentence = ("docker-setup: Docker is not installed and installing it needs root: run 'sudo apt-get install "
                "-y docker.io runc' (or this script as root), or leave the container arm out.")

    setup = _run([*NOBODY, "bash", ".ci/docker-setup.sh"], env, cwd=copy)
    assert setup.returncode == 1 and setup.stderr.strip().splitlines()[-1] == sentence, setup.stderr

    # make run's image step says it and goes on: the runner then skips the container arm.
    ensure = _run([*NOBODY, "bash", ".ci/ensure-image.sh"], env, cwd=copy)
    assert ensure.returncode == 0, ensure.stderr
    assert sentence in ensure.stderr and "note: the container arm will be skipped" in ensure.stderr


def test_make_test_in_ci_fails_with_the_sentences_before_pytest(scratch: Path, copy: Path) -> None:
    """CI=true: no skipping; every unmet need is one sentence, and pytest never starts."""
    path = _path_without(CONTAINER_TOOLS, scratch / "bin")
    env = {**_nobody_env(scratch, path), "CI": "true"}
    done = _run([*NOBODY, *_make("test")], env, cwd=copy)
    assert done.returncode != 0
    assert "make test: CI=true, so no test may skip, and" in done.stderr
    assert "  docker-setup: Docker is not installed and installing it needs root" in done.stderr
    assert ("  make test: the isolated and rootfs tests need root (runc, chroot): run 'sudo make test' to "
            "include them.") in done.stderr
    if not any(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")):
        assert ("  setup-browser: the report's browser test needs chromium, which are not installed, and installing "
                "them needs root: run 'sudo apt-get install -y chromium'") in done.stderr
    assert "test session starts" not in done.stdout  # pytest did not run

    # Outside CI the same machine runs the tests, which skip with their reasons.
    relaxed = _run([*NOBODY, "bash", ".ci/test-prereqs.sh"], {**env, "CI": ""}, cwd=copy)
    assert relaxed.returncode == 0, relaxed.stderr
    assert "make test: the tests that need the following will skip, each saying why:" in relaxed.stdout


def test_docker_without_permission(scratch: Path, copy: Path, docker_engine: str) -> None:  # noqa: F811
    socket = Path("/var/run/docker.sock")
    if not socket.is_socket() or socket.stat().st_mode & stat.S_IWOTH:
        pytest.skip("this engine's socket is not at /var/run/docker.sock or is writable by everyone")
    env = _nobody_env(scratch, "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    sentence = ("docker-setup: user nobody may not use the Docker engine (permission denied on its socket): add the "
                "user to the docker group ('sudo usermod -aG docker nobody', then log in again) or run as root.")
    setup = _run([*NOBODY, "bash", ".ci/docker-setup.sh"], env, cwd=copy)
    assert setup.returncode == 1 and setup.stderr.strip().splitlines()[-1] == sentence, setup.stderr
    ensure = _run([*NOBODY, "bash", ".ci/ensure-image.sh"], env, cwd=copy)
    assert ensure.returncode == 0 and sentence in ensure.stderr, ensure.stderr


#: brings the loopback up (SIOCSIFFLAGS, IFF_UP | IFF_RUNNING), then runs argv[1:]: Jupyter kernels talk over it
_LOOPBACK_UP = ("import fcntl, os, socket, struct, sys; "
                "fcntl.ioctl(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), 0x8914, "
                "struct.pack('16sH14s', b'lo', 0x41, bytes(14))); os.execvp(sys.argv[1], sys.argv[1:])")


def _offline(argv: list[str]) -> list[str]:
    """``argv`` in a new, empty network namespace with only the loopback up."""
    return ["unshare", "--net", sys.executable, "-c", _LOOPBACK_UP, *argv]


def _apt_config(scratch: Path) -> Path:
    """apt as on a stock Debian 12 (deb.debian.org), with its lists and lock in ``scratch``."""
    for folder in ("lists/partial", "parts", "cache/archives/partial"):
        (scratch / "apt" / folder).mkdir(parents=True)
    sources = scratch / "apt" / "sources.list"
    sources.write_text("deb http://deb.debian.org/debian bookworm main\n")
    config = scratch / "apt" / "apt.conf"
    config.write_text(f'Dir::Etc::sourcelist "{sources}";\nDir::Etc::sourceparts "{scratch / "apt" / "parts"}";\n'
                      f'Dir::State::Lists "{scratch / "apt" / "lists"}";\nDir::Cache "{scratch / "apt" / "cache"}";\n')
    return config


@pytest.mark.slow
@pytest.mark.notebook
def test_no_network_make_run_still_answers_natively(scratch: Path, copy: Path) -> None:
    if not (shutil.which("unshare") and shutil.which("apt-get")):
        pytest.skip("needs unshare and apt-get")
    repo = copy
    suite = scratch / "tiny.yaml"
    suite.write_text("description: one case\ninvocations: 1\narms: [native]\n"
                     "benchmarks:\n  - {benchmark: cpu_bound, params: smoke}\n")
    path = _path_without(CONTAINER_TOOLS, scratch / "bin")
    env = {"PATH": f"{VENV}/bin:{path}", "HOME": str(scratch), "LANG": "C.UTF-8", "TMPDIR": str(scratch),
           "APT_CONFIG": str(_apt_config(scratch)), "BENCHLIB_REPO": str(repo),
           "BENCHLIB_LOCK_DIR": str(scratch / "locks"), "APT_LOCK_TIMEOUT_S": "5"}
    done = _run(_offline(_make("run", f"SUITE={suite}", "ARMS=native,container,isolated")), env, cwd=repo)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    # The image step: no network, said in one sentence, and the run goes on.
    assert "docker-setup: apt-get update failed (" in done.stderr
    assert "this machine cannot reach its Debian/Ubuntu mirrors; check the network or proxy" in done.stderr
    assert "note: the container arm will be skipped" in done.stderr
    # The runner skips both arms, saying why, and the answer is the last line.
    lines = done.stdout.strip().splitlines()
    report = Path(next(line for line in lines if line.startswith("report: ")).removeprefix("report: "))
    assert report.is_file() and report.is_relative_to(repo / "docs" / "reports")
    answer = lines[-1]
    assert answer.startswith("answer: container vs native: not measured; arm 'container': `docker` is not on PATH;")
    assert "isolated vs native: not measured; arm 'isolated': `runc` is not on PATH; install runc" in answer
    manifest = json.loads(next((repo / "outputs").glob("*/manifest.json")).read_text())
    assert [arm["name"] for arm in manifest["arms"]] == ["native"]
    assert {item["arm"] for item in manifest["skipped_arms"]} == {"container", "isolated"}
    assert [inv["status"] for inv in manifest["invocations"]] == ["complete"]
    assert not list((scratch / "apt" / "lists").glob("*_Packages"))  # nothing downloaded


def test_no_network_apt_sentence(scratch: Path) -> None:
    """The sentence alone, for a package this machine lacks (nothing is installed: there is no network)."""
    if not (shutil.which("unshare") and shutil.which("apt-get")):
        pytest.skip("needs unshare and apt-get")
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(scratch), "APT_CONFIG": str(_apt_config(scratch)),
           "APT_LOCK_TIMEOUT_S": "5", "LANG": "C.UTF-8"}
    script = 'who=check; . .ci/lib.sh; need_tools "the check" benchlib-no-such-command:hello'
    done = _run(_offline(["bash", "-c", script]), env)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("check: apt-get update failed (") and last.endswith(
        "): this machine cannot reach its Debian/Ubuntu mirrors; check the network or proxy (apt's "
        "Acquire::http::Proxy, /etc/apt/sources.list) and retry, or install hello by hand."), last
    assert "deb.debian.org" in last  # the telling line of apt's output, not its summary
    assert not list(scratch.glob("benchlib-apt.*"))  # its log is not left behind


def test_disk_too_full_for_the_image(scratch: Path, docker_engine: str) -> None:  # noqa: F811
    """A 20 MB TMPDIR: base-image.sh refuses before debootstrap, in one sentence, leaving nothing."""
    small = scratch / "small"
    small.mkdir()
    script = (f'mount -t tmpfs -o size=20m tmpfs "{small}" && TMPDIR="{small}" '
              f'bash .ci/base-image.sh benchlib-test-no-space:never; rc=$?; echo "left: $(ls -A "{small}")"; exit $rc')
    done = _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                {**os.environ, "FORCE": "1"})
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("base-image: only ") and f"MB are free on the disk holding {small}/benchlib-base." in last
    assert last.endswith("and debootstrap of bookworm needs about 1500 MB: free space there or point TMPDIR at a "
                         "larger disk, then retry."), last
    assert done.stdout.strip().splitlines()[-1] == "left:"  # its work folder is removed
    assert subprocess.run(["docker", "image", "inspect", "benchlib-test-no-space:never-stage0"],
                          capture_output=True).returncode != 0


def test_progress_lines_for_a_quiet_command(scratch: Path) -> None:
    """with_progress: a line every PROGRESS_EVERY_S with the elapsed time and the command's last
    line; its exit code is the command's."""
    script = ('who=check; . .ci/lib.sh; PROGRESS_EVERY_S=1 with_progress "quiet step" "$TMPDIR/log" '
              'sh -c "echo first; sleep 3; echo second; sleep 1; exit 3"; echo "rc=$?"')
    done = _run(["bash", "-c", script], {"PATH": os.environ["PATH"], "TMPDIR": str(scratch)})
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "rc=3"
    progress = lines[:-1]
    assert len(progress) >= 2 and all(line.startswith("check: quiet step: ") for line in progress)
    assert "... first" in progress[0]
    assert (scratch / "log").read_text() == "first\nsecond\n"
