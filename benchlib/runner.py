"""The runner: a suite becomes a plan of invocations, each one fresh papermill execution, interleaved.

Every invocation runs ``python -m papermill notebooks/<bench>.ipynb .../executed.ipynb -f
.../params.yaml -k python3`` launched through its arm (:mod:`benchlib.engines`): natively on the
host, or inside a container with the repository mounted read-only and the run directory writable.
Arms are preflighted before anything is written; the manifest is rewritten after every
invocation, so ``--resume`` can pick up where an interrupted run stopped. What an invocation wrote
(papermill's notebook and log above all) is redacted (:mod:`benchlib.redact`) before it is
checksummed, and so is every message the runner prints.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from . import __version__, _atomic, engines, paths, redact
from .arms import Arm, arm_from_spec, raised_privileges, select_arms
from .bench import ENV_FILE, RESULTS_FILE, TELEMETRY_FILE
from .device import host_gpu_count, host_gpu_names
from .errors import BenchlibError, PreflightError
from .manifest import COMPLETE, FAILED, PENDING, RUNNING, Invocation, Manifest
from .suites import Suite, load_suite, plan

EXECUTED_NOTEBOOK, PARAMS_FILE, LOG_FILE = "executed.ipynb", "params.yaml", "papermill.log"
CHECKSUMMED = (EXECUTED_NOTEBOOK, RESULTS_FILE, TELEMETRY_FILE, ENV_FILE, PARAMS_FILE)


@dataclass
class RunOptions:
    suite: str
    arms: list[str] | None = None  # names; None: the suite's arms
    invocations: int | None = None  # None: the suite's count
    out: Path = field(default_factory=paths.default_outputs)
    resume: Path | None = None  # an existing run directory to complete
    skip_unavailable: bool = False  # drop arms that fail preflight (saying why) instead of stopping
    progress: bool = True


@dataclass
class RunOutcome:
    run_dir: Path
    manifest: Manifest

    @property
    def ok(self) -> bool:
        return self.manifest.status == COMPLETE


def default_suite() -> str:
    """``quick`` on a machine with a GPU, ``smoke`` without."""
    return "quick" if host_gpu_count() > 0 else "smoke"


def run_suite(options: RunOptions, log=print) -> RunOutcome:
    log = _redacting(log)
    if options.resume is not None:
        return _resume(Path(options.resume), options, log)
    suite = load_suite(options.suite)
    arms = select_arms(suite.arms, options.arms, f"--arms (suite {suite.name})")
    has_gpu = host_gpu_count() > 0
    out_dir = Path(options.out).resolve()
    ready, skipped = _preflight_all(arms, out_dir, has_gpu, options.skip_unavailable, log)
    invocations = plan(suite, [arm for arm, _ in ready], options.invocations or suite.invocations)
    run_dir = _new_run_dir(out_dir, suite.name)
    manifest = Manifest(
        run_id=run_dir.name,
        suite=suite.name,
        created_at=_now(),
        arms=[{**arm.to_dict(), "preflight": facts} for arm, facts in ready],
        invocations=invocations,
        host=_host_facts(has_gpu),
        benchlib={"version": __version__, "commit": _git_commit()},
        skipped_arms=skipped,
    )
    manifest.save(run_dir)
    return _execute(run_dir, manifest, suite, [arm for arm, _ in ready], options, log)


def _resume(run_dir: Path, options: RunOptions, log) -> RunOutcome:
    run_dir = run_dir.resolve()
    manifest = Manifest.load(run_dir)
    suite = load_suite(manifest.suite)
    arms = [arm_from_spec(_unredacted({k: v for k, v in spec.items() if k in Arm.__dataclass_fields__}), "manifest")
            for spec in manifest.arms]
    _preflight_all(arms, run_dir.parent, host_gpu_count() > 0, False, log)
    for invocation in manifest.invocations:
        if invocation.status != COMPLETE:
            invocation.status = PENDING
    manifest.status = RUNNING
    manifest.save(run_dir)
    remaining = sum(1 for inv in manifest.invocations if inv.status != COMPLETE)
    log(f"resuming {run_dir}: {remaining} of {len(manifest.invocations)} invocations left")
    return _execute(run_dir, manifest, suite, arms, options, log)


def _redacting(log):
    return lambda message: log(redact.redact_text(str(message)))


def _unredacted(spec: dict) -> dict:
    """An arm record from a manifest with the values redacted from its ``env`` taken from the
    environment again (the manifest never holds them)."""
    env = dict(spec.get("env") or {})
    for key, value in env.items():
        if redact.REDACTED in str(value):
            if key not in os.environ:
                raise BenchlibError(f"arm {spec.get('name')!r} needs {key}, which the manifest does not keep; "
                                    f"set {key} in the environment and resume again.")
            env[key] = os.environ[key]
    return {**spec, "env": env} if env else spec


def _preflight_all(arms: list[Arm], out_dir: Path, has_gpu: bool, skip_unavailable: bool, log):
    ready, skipped = [], []
    for arm in arms:
        for warning in raised_privileges(arm.run_flags, arm.kind):
            log(f"warning: arm {arm.name} runs with raised privileges, as its flags ask: {warning}")
        try:
            ready.append((arm, engines.preflight(arm, paths.repo_root(), out_dir, has_gpu)))
        except PreflightError as exc:
            if not skip_unavailable:
                raise
            skipped.append({"arm": arm.name, "why": str(exc)})
            log(f"skipping arm {arm.name}: {exc}")
    if not ready:
        raise PreflightError("no arm passed its preflight check; see the messages above.")
    return ready, skipped


def _execute(run_dir: Path, manifest: Manifest, suite: Suite, arms: list[Arm], options: RunOptions, log) -> RunOutcome:
    arms_by_name = {arm.name: arm for arm in arms}
    arm_envs = {arm.name: _arm_env(arm) for arm in arms}  # once per run: the digest lookup runs the engine
    for arm_env in arm_envs.values():
        redact.add_secrets_from(arm_env)  # an arm's own secrets are not in this process's environment
    todo = [inv for inv in manifest.invocations if inv.status != COMPLETE]
    position = max((inv.ran_as for inv in manifest.invocations if inv.ran_as is not None), default=-1) + 1
    bar = tqdm(total=len(todo), desc=f"{manifest.run_id}", unit="inv", disable=not options.progress,
               file=sys.stderr, dynamic_ncols=True)
    try:
        for index, invocation in enumerate(todo):
            bar.set_postfix_str(invocation.label, refresh=True)
            invocation.ran_as = position
            position += 1
            _run_one(run_dir, manifest, invocation, arms_by_name[invocation.arm], arm_envs[invocation.arm],
                     suite.timeout_s)
            bar.update(1)
            if invocation.status == FAILED:
                bar.write(f"failed: {invocation.label}: {invocation.error}")
            if suite.cooldown_s and index < len(todo) - 1:
                time.sleep(suite.cooldown_s)  # a deliberate pause between invocations, not a measurement
    except KeyboardInterrupt:
        manifest.status = "interrupted"
        manifest.save(run_dir)
        log(f"interrupted; resume with: benchlib run --resume {run_dir}")
        raise
    finally:
        bar.close()
    counts = manifest.counts()
    manifest.status = COMPLETE if counts.get(COMPLETE, 0) == len(manifest.invocations) else "partial"
    manifest.save(run_dir)
    return RunOutcome(run_dir, manifest)


def _run_one(run_dir: Path, manifest: Manifest, invocation: Invocation, arm: Arm, arm_env: dict[str, str],
             timeout_s: float) -> None:
    inv_dir = run_dir / invocation.rel_dir
    if inv_dir.exists():  # left by an interrupted attempt: start clean
        shutil.rmtree(inv_dir)
    inv_dir.mkdir(parents=True)
    params = {**invocation.params, "output_dir": str(inv_dir), "run_id": manifest.run_id,
              "arm": arm.name, "invocation": invocation.invocation}
    _atomic.write_text(inv_dir / PARAMS_FILE, yaml.safe_dump(params, sort_keys=False))
    engines.prepare_run_dir(run_dir, arm)  # the container's UID must be able to write here
    python = sys.executable if arm.kind in ("native", "isolated") else "python3"
    argv = [python, "-m", "papermill", str(paths.notebook_for(invocation.benchmark)),
            str(inv_dir / EXECUTED_NOTEBOOK), "-f", str(inv_dir / PARAMS_FILE), "-k", "python3",
            "--cwd", str(inv_dir), "--no-progress-bar", "--log-output"]
    spec = engines.LaunchSpec(argv=argv, repo_dir=paths.repo_root(), run_dir=run_dir, workdir=inv_dir,
                              env=arm_env)
    command = engines.launch_argv(arm, spec, host_gpu_count() > 0)

    invocation.status, invocation.started_at, invocation.error = RUNNING, _now(), None
    manifest.save(run_dir)
    began = time.perf_counter()
    # A native invocation inherits this process's environment; other arms get only spec.env,
    # passed by their engine, so the host's environment stays out of them.
    env = {**os.environ, **spec.env} if arm.kind == "native" else None
    error = _launch(command, env, inv_dir / LOG_FILE, timeout_s)
    if error and error.startswith("timed out"):
        engines.stop(arm, spec)  # killing the engine's client leaves its container running
    invocation.duration_s = round(time.perf_counter() - began, 3)
    invocation.ended_at = _now()
    redact.redact_tree(inv_dir)  # papermill's notebook and log hold whatever the kernel printed
    error = redact.redact_text(error) if error else error
    if error is None and not (inv_dir / RESULTS_FILE).is_file():
        error = f"the notebook finished without writing {RESULTS_FILE}; see {inv_dir / LOG_FILE}"
    invocation.status = FAILED if error else COMPLETE
    invocation.error = error
    invocation.files = {name: _atomic.sha256_of(inv_dir / name) for name in CHECKSUMMED if (inv_dir / name).is_file()}
    manifest.save(run_dir)


def _arm_env(arm: Arm) -> dict[str, str]:
    """What every arm's notebook sees: who launched it (read back by the fingerprint), and the code."""
    env = {
        "BENCHLIB_ARM": arm.name,
        "BENCHLIB_ARM_KIND": arm.kind,
        "BENCHLIB_ENGINE": arm.engine,
        "BENCHLIB_RUN_FLAGS": json.dumps(list(arm.run_flags)),
        "PYTHONPATH": engines.python_path(arm, paths.repo_root()),
        "PYTHONUNBUFFERED": "1",
        "BENCHLIB_REPO": str(paths.repo_root()),
    }
    if arm.image:
        env["BENCHLIB_IMAGE"] = arm.image
        digest = engines.image_digest(arm.engine, arm.image)
        if digest:
            env["BENCHLIB_IMAGE_DIGEST"] = digest
    env.update(arm.env)
    return env


def _launch(command: list[str], env: dict[str, str] | None, log_path: Path, timeout_s: float) -> str | None:
    """Run one invocation; return None on success or one line saying why it failed."""
    with open(log_path, "wb") as log:
        try:
            completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout_s:.0f} s (suite key timeout_s); see {log_path}"
        except FileNotFoundError as exc:
            return f"could not start {command[0]!r}: {exc.strerror}"
    if completed.returncode == 0:
        return None
    return f"exit code {completed.returncode}: {_error_line(log_path)}"


def _error_line(log_path: Path) -> str:
    """The most telling line of a failed invocation's log."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    for marker in ("DeadKernelError", "PapermillExecutionError", "Error:", "Error", "error"):
        for line in reversed(lines):
            if marker in line:
                return line[:400]
    return lines[-1][:400] if lines else f"no output; see {log_path}"


def _new_run_dir(out_dir: Path, suite_name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    candidate, n = out_dir / f"{stamp}-{suite_name}", 2
    while candidate.exists():
        candidate, n = out_dir / f"{stamp}-{suite_name}-{n}", n + 1
    candidate.mkdir(parents=True)
    return candidate


def _host_facts(has_gpu: bool) -> dict[str, object]:
    import platform

    return {"hostname": platform.node(), "python": sys.version.split()[0], "has_gpu": has_gpu,
            "gpus": host_gpu_names()}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(paths.repo_root()), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def describe(outcome: RunOutcome) -> str:
    counts = outcome.manifest.counts()
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"run {outcome.manifest.run_id}: {parts}; results in {outcome.run_dir}"

