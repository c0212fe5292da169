"""The runner: a suite becomes a plan of invocations, each one fresh papermill execution, interleaved.

Every invocation runs ``python -m papermill notebooks/<bench>.ipynb .../executed.ipynb -f
.../params.yaml -k python3`` launched through its arm's launcher (:mod:`benchlib.arms`): natively on the
host, or inside a container with the repository mounted read-only and the run directory writable.
Arms are preflighted before anything is written; then the run takes this host's GPUs (one run
per GPU, :mod:`benchlib.gpulock`) for as long as it runs. The manifest is rewritten after every
invocation, so ``--resume`` can pick up where an interrupted run stopped. What an invocation wrote
(papermill's notebook and log above all) is redacted (:mod:`benchlib.redact`) before it is
checksummed, and so is every message the runner prints.

Sequential runs (``--until conclusive``, or the suite's ``until``): the plan is the minimum rounds;
after them and after every added round :func:`benchlib.sequential_run.next_round` asks the planner
which cases get another interleaved round (every arm of the case) and appends those invocations, until
every case has stopped (decided, budget, cap, cannot converge, failed, context only). The manifest
records the design (``sequential``) and per case the invocations run and why it stopped (``cases``);
a resume continues with that design.

Faults. A failed invocation (the kernel died, the suite's ``timeout_s`` ran out, a case failed
inside the notebook, e.g. out of memory) is recorded as ``failed`` with its reason in the
manifest's ``error`` and the suite goes on; :func:`describe` lists the failures and the CLI exits 1.
SIGINT (Ctrl-C) and SIGTERM stop the run cleanly: the running invocation's processes are killed
and its container removed (:mod:`benchlib._process`, :func:`benchlib.arms.stop`), the invocation
goes back to ``pending`` with a note, and the manifest says ``interrupted``.

Resume. ``--resume`` runs again every invocation that is not ``complete`` (failed ones included),
in a fresh folder. A run killed at any point, SIGKILL included, resumes: the manifest is only ever
replaced atomically, so it is the last state saved, and an invocation is ``complete`` only once its
files are written and checksummed. Before running anything a resume kills processes and removes
containers the killed run left, deletes leftover temporary files, and checks every complete
invocation's files against the manifest's checksums: one whose files are missing or changed is run
again, with a note saying why (rather than refusing: the run stays completable without hand edits).
Two runners never write one run directory at once (a lock on it); a dead or zombie writer never blocks
a resume (:func:`benchlib._process.hold_exclusively`).
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

import pandas as pd
import yaml
from tqdm.auto import tqdm

from . import __version__, _atomic, _process, gpulock, layout, paths, redact, schema, sequential_run
from .arms import (Arm, LaunchSpec, arm_from_spec, launch_argv, launcher_for, prepare_run_dir, preflight,
                   select_arms, stop)
from .device import host_gpu_count, host_gpu_names
from .errors import BenchlibError, ParamsError, PreflightError
from .manifest import COMPLETE, FAILED, INTERRUPTED, PARTIAL, PENDING, RUNNING, Invocation, Manifest
from .layout import CHECKSUMMED, EXECUTED_NOTEBOOK, LOG_FILE, PARAMS_FILE, RESULTS_FILE
from .sequential_options import SequentialOptions, check_budget_covers_minimum
from .suites import Suite, load_suite, plan


__all__ = ["RunOptions", "RunOutcome", "default_suite", "describe", "manifest_arms", "run_suite"]

@dataclass
class RunOptions:
    suite: str
    arms: list[str | Arm] | None = None  # names (or arms, from code: a diagnosis's ablation arms); None: the suite's
    invocations: int | None = None  # None: the suite's count
    out: Path = field(default_factory=paths.default_outputs)
    resume: Path | None = None  # an existing run directory to complete
    skip_unavailable: bool = False  # drop arms that fail preflight (saying why) instead of stopping
    progress: bool = True
    gpu_lock: str = "wait"  # another run holds this host's GPU: wait, refuse or off (benchlib.gpulock)
    lock_timeout_s: float | None = None  # with wait: give up after this many seconds (None: no limit)
    sequential: SequentialOptions | None = None  # --until conclusive (overrides the suite's); None: the suite's
    command: str | None = None  # the command line that started the run (benchlib.cli), kept in the manifest


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
    """Run (or resume) a suite. SIGINT/SIGTERM stop it cleanly and raise :class:`_process.Interrupted`."""
    log = _redacting(log)
    with _process.interrupt_on_signals():
        if options.resume is not None:
            return _resume(Path(options.resume), options, log)
        return _start(options, log)


def _start(options: RunOptions, log) -> RunOutcome:
    suite = load_suite(options.suite)
    arms = select_arms(suite.arms, options.arms, f"--arms (suite {suite.name})")
    has_gpu = host_gpu_count() > 0
    out_dir = Path(options.out).resolve()
    sequential = _sequential_design(options, suite, len(arms))
    ready, skipped = _preflight_all(arms, out_dir, has_gpu, options.skip_unavailable, log)
    if sequential and len(ready) < 2:
        raise PreflightError(f"only arm {ready[0][0].name} passed its preflight check, and a sequential run compares "
                             "arms; make another arm available (see the messages above) or run without --until.")
    count = sequential["min_invocations"] if sequential else options.invocations or suite.invocations
    invocations = plan(suite, [arm for arm, _ in ready], count)
    host, commit = _host_facts(has_gpu), _git_commit()
    with _device_lock(options, f"suite {suite.name} (starting)", log) as lock:
        run_dir = layout.new_run_dir(out_dir, suite.name)
        lock.name_run(run_dir.name)
        with _process.hold_exclusively(run_dir, "run directory"):
            manifest = Manifest(
                run_id=run_dir.name,
                suite=suite.name,
                created_at=_now(),
                arms=[{**arm.to_dict(), "preflight": facts} for arm, facts in ready],
                invocations=invocations,
                host=host,
                benchlib={"version": __version__, "commit": commit, "command": options.command},
                skipped_arms=skipped,
                suite_file=str(suite.path.resolve()),
                sequential=sequential,
            )
            try:
                manifest.save(run_dir)
            except BaseException:  # interrupted before the run existed: leave no folder without a manifest
                shutil.rmtree(run_dir, ignore_errors=True)
                raise
            return _execute(run_dir, manifest, suite, [arm for arm, _ in ready], options, log)


def _resume(run_dir: Path, options: RunOptions, log) -> RunOutcome:
    run_dir = run_dir.resolve()
    with _process.hold_exclusively(run_dir, "run directory"):
        manifest = Manifest.load(run_dir)
        suite = _suite_of(manifest)
        arms = manifest_arms(manifest)
        _preflight_all(arms, run_dir.parent, host_gpu_count() > 0, False, log)
        with _device_lock(options, run_dir.name, log):
            _clear_leftovers(run_dir, manifest, {arm.name: arm for arm in arms}, log)
            _recheck_complete(run_dir, manifest, log)
            for invocation in manifest.invocations:
                if invocation.status != COMPLETE:
                    invocation.status = PENDING
            manifest.status = RUNNING
            manifest.save(run_dir)
            remaining = sum(1 for inv in manifest.invocations if inv.status != COMPLETE)
            log(f"resuming {run_dir}: {remaining} of {len(manifest.invocations)} invocations left")
            return _execute(run_dir, manifest, suite, arms, options, log)


def _sequential_design(options: RunOptions, suite: Suite, arms: int) -> dict | None:
    """The sequential design of a new run (the command line's over the suite's), checked before anything runs."""
    chosen = options.sequential or suite.sequential
    if chosen is None:
        return None
    where = "--until" if options.sequential else f"{suite.source}: key 'until'"
    if options.invocations is not None:
        raise ParamsError(f"--invocations sets a fixed design, and {where} a sequential one; give one of them "
                          f"(the sequential minimum is {chosen.min_invocations} invocations, --max-invocations its cap).")
    if arms < 2:
        raise ParamsError(f"{where} compares arms, and this run has one; give at least two arms (--arms or the "
                          "suite's arms).")
    if chosen.budget_s is not None:
        source = "--budget" if options.sequential else f"{suite.source}: key 'budget'"
        check_budget_covers_minimum(chosen.budget_s, [case.estimate_s for case in suite.cases], arms,
                                    chosen.min_invocations, source)
    return sequential_run.design_record(chosen)


def _device_lock(options: RunOptions, run: str, log) -> gpulock.DeviceLock:
    """This host's GPUs (or its CPU) for the whole run; released when the run ends or the process dies."""
    return gpulock.DeviceLock(options.gpu_lock, options.lock_timeout_s, run=run, log=log)


def _suite_of(manifest: Manifest) -> Suite:
    """The run's suite: its file where it still is (a suite given by path), else the suite of that name."""
    if manifest.suite_file and Path(manifest.suite_file).is_file():
        return load_suite(manifest.suite_file)
    try:
        return load_suite(manifest.suite)
    except ParamsError:
        if not manifest.suite_file:
            raise
        raise ParamsError(f"the run's suite file {manifest.suite_file} is gone; put it back to resume the run "
                          "(--resume takes timeout_s and cooldown_s from it).") from None


def _clear_leftovers(run_dir: Path, manifest: Manifest, arms_by_name: dict[str, Arm], log) -> None:
    """What a killed runner may have left: processes still running, containers, temporary files."""
    killed = _process.kill_marked(run_dir)
    for invocation in manifest.invocations:
        arm = arms_by_name.get(invocation.arm)
        if invocation.status == RUNNING and arm is not None:
            stop(arm, _launch_spec(run_dir, invocation, arm, {}))
    removed = _atomic.remove_temp_files(run_dir)
    if killed or removed:
        log(f"cleared what the interrupted run left: {killed} processes killed, {len(removed)} temporary files removed")


def _recheck_complete(run_dir: Path, manifest: Manifest, log) -> None:
    """A complete invocation whose files are missing or no longer match their checksums runs again."""
    for invocation in manifest.invocations:
        if invocation.status != COMPLETE:
            continue
        problem = invocation.file_problem(run_dir, required=(RESULTS_FILE,))
        if problem:
            invocation.status = PENDING
            invocation.notes.append(f"{_now()} resume: {problem}; run again")
            log(f"{invocation.label}: {problem}; it runs again")


def _redacting(log):
    return lambda message: log(redact.redact_text(str(message)))


def manifest_arms(manifest: Manifest) -> list[Arm]:
    """The arms of a run as they ran, from its manifest, with the secrets it does not keep taken from
    the environment again (BenchlibError naming the variable when one is not set)."""
    return [arm_from_spec(_unredacted({k: v for k, v in spec.items() if k in Arm.__dataclass_fields__}), "manifest")
            for spec in manifest.arms]


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
        for warning in launcher_for(arm).raised_privileges(arm.run_flags):
            log(f"warning: arm {arm.name} runs with raised privileges, as its flags ask: {warning}")
        try:
            ready.append((arm, preflight(arm, paths.repo_root(), out_dir, has_gpu)))
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
    cache = sequential_run.ResultsCache(run_dir) if manifest.sequential else None
    try:
        first = True
        while True:
            for invocation in todo:
                if suite.cooldown_s and not first:
                    time.sleep(suite.cooldown_s)  # a deliberate pause between invocations, not a measurement
                first = False
                bar.set_postfix_str(invocation.label, refresh=True)
                invocation.ran_as = position
                position += 1
                _run_one(run_dir, manifest, invocation, arms_by_name[invocation.arm], arm_envs[invocation.arm],
                         suite.timeout_s)
                bar.update(1)
                if invocation.status == FAILED:
                    bar.write(f"failed: {invocation.label}: {invocation.error}", file=sys.stderr)
            # a sequential run: after each round, the planner says which cases get another one (none: done)
            if cache is None:
                break
            todo = sequential_run.next_round(manifest, cache, suite.seed, suite.shuffle_arms)
            manifest.save(run_dir)
            if not todo:
                break
            bar.total += len(todo)
            bar.refresh()
    except BaseException as exc:  # a signal (see run_suite) or an error: record it, say how to go on
        manifest.status = INTERRUPTED
        manifest.save(run_dir)
        log(f"{_stopped_by(exc)}; resume with: benchlib run --resume {run_dir}")
        raise
    finally:
        bar.close()
    counts = manifest.counts()
    manifest.status = COMPLETE if counts.get(COMPLETE, 0) == len(manifest.invocations) else PARTIAL
    manifest.save(run_dir)
    return RunOutcome(run_dir, manifest)


def _launch_spec(run_dir: Path, invocation: Invocation, arm: Arm, arm_env: dict[str, str]) -> LaunchSpec:
    """The papermill command of one invocation (its container name derives from its folder)."""
    inv_dir = run_dir / invocation.rel_dir
    argv = [launcher_for(arm).python(arm), "-m", "papermill", str(paths.notebook_for(invocation.benchmark)),
            str(inv_dir / EXECUTED_NOTEBOOK), "-f", str(inv_dir / PARAMS_FILE), "-k", "python3",
            "--cwd", str(inv_dir), "--no-progress-bar", "--log-output"]
    return LaunchSpec(argv=argv, repo_dir=paths.repo_root(), run_dir=run_dir, workdir=inv_dir, env=arm_env)


def _run_one(run_dir: Path, manifest: Manifest, invocation: Invocation, arm: Arm, arm_env: dict[str, str],
             timeout_s: float) -> None:
    inv_dir = run_dir / invocation.rel_dir
    spec = _launch_spec(run_dir, invocation, arm, arm_env)
    try:
        if inv_dir.exists():  # left by an interrupted attempt: start clean
            shutil.rmtree(inv_dir)
        inv_dir.mkdir(parents=True)
        params = {**invocation.params, "output_dir": str(inv_dir), "run_id": manifest.run_id,
                  "arm": arm.name, "invocation": invocation.invocation}
        _atomic.write_text(inv_dir / PARAMS_FILE, yaml.safe_dump(params, sort_keys=False))
        prepare_run_dir(run_dir, arm)  # the container's UID must be able to write here
        command = launch_argv(arm, spec, host_gpu_count() > 0)

        invocation.status, invocation.started_at, invocation.error = RUNNING, _now(), None
        manifest.save(run_dir)
        began = time.perf_counter()
        error = _launch(command, _child_env(arm, spec), inv_dir / LOG_FILE, timeout_s)
        if error and error.startswith("timed out"):
            stop(arm, spec)  # killing the engine's client leaves its container running
        invocation.duration_s = round(time.perf_counter() - began, 3)
        invocation.ended_at = _now()
        redact.redact_tree(inv_dir)  # papermill's notebook and log hold whatever the kernel printed
        error = redact.redact_text(error) if error else error
        error = error or _results_error(inv_dir)
        invocation.status = FAILED if error else COMPLETE
        invocation.error = error
        invocation.files = {name: _atomic.sha256_of(inv_dir / name) for name in CHECKSUMMED
                            if (inv_dir / name).is_file()}
        manifest.save(run_dir)
    except BaseException as exc:  # stopped half-way: nothing of this attempt is kept
        stop(arm, spec)
        shutil.rmtree(inv_dir, ignore_errors=True)
        invocation.status, invocation.error, invocation.files = PENDING, None, {}
        invocation.notes.append(f"{_now()} {_stopped_by(exc)}; discarded, runs again on --resume")
        manifest.save(run_dir)
        raise


def _child_env(arm: Arm, spec: LaunchSpec) -> dict[str, str]:
    """The launcher's environment (a native invocation inherits this process's; other arms get only
    spec.env, passed by their engine, so the host's environment stays out of them) with the invocation
    mark, so that a resumed run can find the processes a killed one left (_process.kill_marked)."""
    return {**launcher_for(arm).child_env(arm, spec), _process.MARK: str(spec.workdir)}


def _results_error(inv_dir: Path) -> str | None:
    """Why a notebook that exited 0 still failed: it wrote no results, or its case failed inside
    (run_benchmark records a failed case, e.g. out of memory, as a ``failed`` status row)."""
    results = inv_dir / RESULTS_FILE
    if not results.is_file():
        return f"the notebook finished without writing {RESULTS_FILE}; see {inv_dir / LOG_FILE}"
    rows = pd.read_parquet(results, columns=["status", "note"])
    failed = rows[rows["status"] == schema.STATUS_FAILED]
    if failed.empty:
        return None
    note = str(failed["note"].iloc[0])
    return f"the case failed: {note.removeprefix('failed: ')}"


def _stopped_by(exc: BaseException) -> str:
    if isinstance(exc, _process.Interrupted):
        return f"interrupted by {exc.name}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by SIGINT"
    return f"stopped by an error ({type(exc).__name__}: {exc})"


def _arm_env(arm: Arm) -> dict[str, str]:
    """What every arm's notebook sees: who launched it (read back by the fingerprint), and the code."""
    env = {
        "BENCHLIB_ARM": arm.name,
        "BENCHLIB_ARM_KIND": arm.kind,
        "BENCHLIB_ENGINE": arm.engine,
        "BENCHLIB_RUN_FLAGS": json.dumps(list(arm.run_flags)),
        "PYTHONPATH": launcher_for(arm).python_path(arm, paths.repo_root()),
        "PYTHONUNBUFFERED": "1",
        "BENCHLIB_REPO": str(paths.repo_root()),
    }
    if arm.image:
        env["BENCHLIB_IMAGE"] = arm.image
        digest = launcher_for(arm).image_identity(arm.image)
        if digest:
            env["BENCHLIB_IMAGE_DIGEST"] = digest
    env.update(arm.env)
    return env


def _launch(command: list[str], env: dict[str, str], log_path: Path, timeout_s: float) -> str | None:
    """Run one invocation; return None on success or one line saying why it failed. However this
    ends (time limit, signal, error), no process of the invocation outlives it."""
    with open(log_path, "wb") as log:
        try:
            child = _process.start(command, env, log)
        except FileNotFoundError as exc:
            return f"could not start {command[0]!r}: {exc.strerror}"
        try:
            returncode = child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _process.stop_tree(child)
            return f"timed out after {timeout_s:.0f} s (suite key timeout_s); see {log_path}"
        except BaseException:
            _process.stop_tree(child)
            raise
    if returncode == 0:
        return None
    return f"exit code {returncode}: {_error_line(log_path)}"


def _error_line(log_path: Path) -> str:
    """The most telling line of a failed invocation's log."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    for marker in ("DeadKernelError", "PapermillExecutionError", "Error:", "Error", "error"):
        for line in reversed(lines):
            if marker in line:
                return line[:400]
    return lines[-1][:400] if lines else f"no output; see {log_path}"


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
    """One line for the run, then one line per failed invocation saying why, and how to retry them."""
    counts = outcome.manifest.counts()
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines = [f"run {outcome.manifest.run_id}: {parts}; results in {outcome.run_dir}"]
    if outcome.manifest.sequential:
        lines.append("per case, why it stopped:")
        lines += sequential_run.describe_cases(outcome.manifest)
    failed = [inv for inv in outcome.manifest.invocations if inv.status == FAILED]
    if failed:
        lines.append(f"{len(failed)} of {len(outcome.manifest.invocations)} invocations failed:")
        lines += [f"  failed: {inv.label}: {inv.error}" for inv in failed]
        lines.append(f"run them again with: benchlib run --resume {outcome.run_dir}")
    return "\n".join(lines)

