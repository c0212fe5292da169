"""The trial run every launcher's preflight ends with, and one verdict on what it saw.

The probe script runs through the arm exactly as an invocation would be launched: can it write the
run directory, read the checkout, import what the notebooks need, and see a GPU? Each launcher words
the fixes (:class:`ProbeAdvice`); the checks are the same for all.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PreflightError
from ._base import PROBE_TIMEOUT_S, HostFacts, LaunchSpec, first_error_line, run_quiet, wants_gpus
from ._model import Arm

if TYPE_CHECKING:
    from ._base import Launcher

PREFLIGHT_MARK = "BENCHLIB-PREFLIGHT "

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


@dataclass(frozen=True)
class ProbeAdvice:
    """A launcher's words for what its trial run can find wrong: templates filled with ``uid``,
    ``run_dir``, ``error`` and ``modules``. ``inside`` names where the probe ran ("inside the container")."""

    inside: str
    unwritable: str
    unreadable: str
    missing: str
    no_torch: str
    no_gpu: str
    no_report: str


def run_probe(launcher: Launcher, arm: Arm, repo_dir: Path, run_dir: Path, host: HostFacts,
              advice: ProbeAdvice) -> dict[str, Any]:
    """Run the probe through the arm in a scratch folder under ``run_dir``; ``{"probe": facts}`` or
    PreflightError (the launcher's :meth:`explain_failed_probe` words a failed start)."""
    where = f"arm {arm.name!r}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        scratch = run_dir / f".preflight-{arm.name}-{uuid.uuid4().hex[:8]}"
        scratch.mkdir()
    except OSError as exc:
        raise PreflightError(f"{where}: cannot create {run_dir} ({exc.strerror}); choose a writable --out.") from None
    try:
        launcher.prepare_run_dir(arm, scratch)
        name = f"benchlib-preflight-{uuid.uuid4().hex[:12]}"

        def attempt(with_arm_flags: bool) -> subprocess.CompletedProcess:
            probe_arm = arm if with_arm_flags else replace(arm, preset="defaults", flags=())
            spec = LaunchSpec(argv=[launcher.python(arm), "-c", _PROBE, str(scratch / "probe"), str(repo_dir)],
                              repo_dir=repo_dir, run_dir=scratch, workdir=scratch,
                              env={"PYTHONPATH": launcher.python_path(arm, repo_dir), "BENCHLIB_REPO": str(repo_dir)},
                              name=name)
            try:
                return run_quiet(launcher.argv(probe_arm, spec, host), PROBE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                launcher.stop(probe_arm, spec)
                raise PreflightError(f"{where}: a trial container did not finish within {PROBE_TIMEOUT_S} s; "
                                     f"check {launcher.stuck_hint} and the engine's health, then retry.") from None

        began = time.perf_counter()
        done = attempt(with_arm_flags=True)
        elapsed = time.perf_counter() - began
        if done.returncode != 0:
            launcher.explain_failed_probe(arm, done, attempt)
        facts = _parse(arm, done, advice)
        facts["probe_s"] = round(elapsed, 3)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    judge(arm, facts, run_dir, host, advice)
    return {"probe": facts}


def _parse(arm: Arm, done: subprocess.CompletedProcess, advice: ProbeAdvice) -> dict[str, Any]:
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(PREFLIGHT_MARK):
            try:
                return json.loads(line[len(PREFLIGHT_MARK):])
            except json.JSONDecodeError:
                break
    error = first_error_line(done.stderr or done.stdout)
    raise PreflightError(f"arm {arm.name!r}: " + advice.no_report.format(error=error))


def judge(arm: Arm, facts: dict[str, Any], run_dir: Path, host: HostFacts, advice: ProbeAdvice) -> None:
    """The trial run's verdict: the run directory writable, the checkout readable, the modules and
    torch importable, a GPU visible where the host has one and the arm wants it."""
    where = f"arm {arm.name!r}: "
    if not facts.get("run_dir_writable"):
        raise PreflightError(where + advice.unwritable.format(uid=facts.get("uid"), run_dir=run_dir,
                                                              error=facts.get("write_error")))
    if not facts.get("repo_readable"):
        raise PreflightError(where + advice.unreadable)
    if facts.get("missing_modules"):
        raise PreflightError(where + advice.missing.format(modules=", ".join(facts["missing_modules"])))
    if "torch_error" in facts:
        raise PreflightError(where + advice.no_torch.format(error=facts["torch_error"]))
    if host.has_gpu and wants_gpus(arm, host):
        seen = max(len(facts.get("nvidia_smi_gpus") or []), int(facts.get("torch_gpu_count") or 0))
        if seen == 0:
            raise PreflightError(where + advice.no_gpu)
