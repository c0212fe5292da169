"""``benchlib`` command line: run, diagnose, list, env, report, status, collect, image."""
from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

from . import paths
from .errors import BenchlibError


__all__ = ["build_parser", "main"]

def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import RunOptions, default_suite, describe, run_suite

    suite = default_suite() if args.suite == "auto" else args.suite
    arms = [name.strip() for name in args.arms.split(",") if name.strip()] if args.arms else None
    resume = _resolve_resume(args.resume, Path(args.out)) if args.resume else None
    if args.invocations is not None and args.invocations < 1:
        raise BenchlibError(f"--invocations must be at least 1, not {args.invocations}.")
    if args.lock_timeout is not None and not args.lock_timeout > 0:
        raise BenchlibError(f"--lock-timeout must be a positive number of seconds, not {args.lock_timeout:g}.")
    options = RunOptions(suite=suite, arms=arms, invocations=args.invocations, out=Path(args.out),
                         resume=resume, skip_unavailable=args.skip_unavailable, progress=not args.no_progress,
                         gpu_lock=args.gpu_lock, lock_timeout_s=args.lock_timeout,
                         sequential=_sequential_flags(args), command=_command_line(args))
    if resume is None:  # a resume names its run's suite itself
        print(f"suite {suite}" + (f", arms {args.arms}" if args.arms else ""), file=sys.stderr)
    diagnosis = _diagnose_options(args, sequential=None) if args.diagnose else None  # bad input: before the run
    outcome = run_suite(options, log=lambda message: print(message, file=sys.stderr))
    print(describe(outcome))  # with one line per failed invocation
    if diagnosis is not None:
        _diagnose(outcome.run_dir, diagnosis)
    if args.report:
        _report_and_answer(outcome.run_dir, outcome.manifest.skipped_arms)
    return 0 if outcome.ok else 1


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed (``benchlib run --suite quick --arms native,isolated``), for the manifest
    and the report's footer."""
    return shlex.join(["benchlib", *getattr(args, "argv", [])])


def _report_and_answer(run_dir: Path, skipped_arms: list[dict[str, str]]) -> None:
    """Build the run's report, then print its path and the one-line answer."""
    from .report import build_report

    report = build_report(run_dir)
    print(f"report: {report.html}")
    print(_answer(report.summary_json, skipped_arms))


def _diagnose_options(args: argparse.Namespace, sequential):
    """The diagnosis options of ``diagnose`` or ``run --diagnose``, checked (one sentence each)."""
    from .diagnosis.experiment import DiagnoseOptions
    from .stats import MIN_INVOCATIONS

    arms = [name.strip() for name in args.diagnose_arms.split(",") if name.strip()] if args.diagnose_arms else None
    if args.ablation_invocations is not None and args.ablation_invocations < MIN_INVOCATIONS:
        raise BenchlibError(f"--ablation-invocations must be at least {MIN_INVOCATIONS} (a share needs a 95 % "
                            f"interval on each side), not {args.ablation_invocations}.")
    if args.max_ablations < 1:
        raise BenchlibError(f"--max-ablations must be at least 1, not {args.max_ablations}.")
    if sequential is not None and args.ablation_invocations is not None:
        raise BenchlibError("--ablation-invocations sets a fixed design and --until a sequential one; give one of them.")
    return DiagnoseOptions(arms=arms, invocations=args.ablation_invocations, max_ablations=args.max_ablations,
                           both_sides=args.both_sides, sequential=sequential, gpu_lock=args.gpu_lock,
                           lock_timeout_s=args.lock_timeout, progress=not args.no_progress)


def _diagnose(run_dir: Path, options) -> bool:
    """Run the diagnosis of ``run_dir`` and print it; False when there was nothing to diagnose (said why)."""
    from .diagnosis.experiment import NothingToDiagnose, diagnose, record_lines
    from .redact import redact_text

    try:
        record = diagnose(run_dir, options, log=lambda message: print(message, file=sys.stderr))
    except NothingToDiagnose as exc:
        print(f"diagnosis: {redact_text(str(exc))}")
        return False
    for line in record_lines(record):
        print(redact_text(line))
    return True


def _cmd_diagnose(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / "manifest.json").is_file():
        raise BenchlibError(f"{run_dir} is not a run folder (it has no manifest.json); name one under outputs/.")
    _diagnose(run_dir, _diagnose_options(args, _sequential_flags(args)))
    if args.report:
        _report_and_answer(run_dir, [])
    return 0


def _diagnosis_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The options of a diagnosis, shared by ``diagnose`` and ``run --diagnose``."""
    parser.add_argument(f"--{prefix}arms" if prefix else "--arms", dest="diagnose_arms", metavar="ARMS",
                        help="comma-separated arms whose gaps to diagnose (default: every arm but the baseline)")
    parser.add_argument("--ablation-invocations", type=int, metavar="N",
                        help="invocations per arm and case of the experiment (default: as many as the run gave the "
                             "gap cases, at least 3)")
    parser.add_argument("--max-ablations", type=int, default=4, metavar="K",
                        help="ablation arms per arm with a gap (default 4: with the arm and the baseline, 3x the "
                             "comparison's arms); mechanisms that can act on the case go first")
    parser.add_argument("--both-sides", action="store_true",
                        help="also apply each differing environment variable's arm value to the baseline (the "
                             "reverse ablation), not only where the arm's side cannot be changed")


def _answer(summary_json: Path, skipped_arms: list[dict[str, str]]) -> str:
    """The run's answer in one line: the report summary's answer (each compared arm's workload groups by
    outcome; an older summary: its headline), then each arm the preflight skipped and why
    (``container vs native: not measured; arm ...``)."""
    import json

    from .redact import redact_text

    summary = json.loads(summary_json.read_text())
    baseline = summary.get("baseline") or (summary.get("arms") or ["native"])[0]
    compared = len(summary.get("arms") or []) > 1
    parts = ([summary["answer"]] if summary.get("answer") else list(summary.get("headline") or [])) if compared else []
    parts += [f"{item['arm']} vs {baseline}: not measured; {item['why']}" for item in skipped_arms]
    return redact_text("answer: " + (" ".join(parts) if parts else "one arm ran, so nothing was compared."))


def _sequential_flags(args: argparse.Namespace):
    """--until, --budget, --max-invocations validated together (None when --until is not given)."""
    from .errors import ParamsError
    from .sequential_options import sequential_options

    given = [flag for flag, value in (("--until", args.until), ("--budget", args.budget),
                                      ("--max-invocations", args.max_invocations)) if value is not None]
    if given and getattr(args, "resume", None):
        raise ParamsError(f"{given[0]} cannot change a run being resumed: --resume continues with the design its "
                          "manifest records; leave the flag out.")
    if args.until is None:
        if given:
            raise ParamsError(f"{given[0]} applies to a sequential run only; add --until conclusive or leave it out.")
        return None
    return sequential_options(args.until, args.budget, args.max_invocations)


def _resolve_resume(value: str, out_dir: Path) -> Path:
    if value != "latest":
        return Path(value)
    from .layout import find_runs

    runs = find_runs(out_dir)
    if not runs:
        raise BenchlibError(f"--resume: no run to resume under {out_dir}.")
    return runs[-1]


def _cmd_list(args: argparse.Namespace) -> int:
    from .suites import Suite, load_suite, suite_names
    from .workloads import registry

    def minutes(seconds: float) -> str:
        return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"

    def estimate(suite: Suite) -> str:
        """``~12 min per arm (24 min for 2 arms)``, from the suite entries' ``estimate_s``."""
        per_arm = suite.estimated_seconds(1)
        if per_arm is None:
            unknown = sorted({case.benchmark for case in suite.cases if case.estimate_s is None})
            return f"duration unknown (no estimate_s for {', '.join(unknown)})"
        arms = len(suite.arms)
        return f"~{minutes(per_arm)} per arm" + (f" ({minutes(suite.estimated_seconds(arms))} for {arms} arms)"
                                                  if arms > 1 else "")

    print("suites (params/suites/):")
    for name in suite_names():
        try:
            suite = load_suite(name)
        except BenchlibError as exc:
            print(f"  {name:<10} INVALID: {exc}")
            continue
        benches = sorted({case.benchmark for case in suite.cases})
        arms = ",".join(arm.name for arm in suite.arms)
        print(f"  {name:<10} {len(suite.cases)} cases x {suite.invocations} invocations, arms {arms}; "
              f"{estimate(suite)}; {', '.join(benches)} — {suite.description}")
    width = max(map(len, registry()), default=10)
    for heading, for_tests in (("benchmarks (notebooks/, params/<benchmark>/):", False),
                               ("for tests only (fault injection, in no suite):", True)):
        print(heading)
        for name, workload in sorted(registry().items()):
            if workload.for_tests == for_tests:
                files = sorted(path.stem for path in (paths.params_dir() / name).glob("*.yaml"))
                print(f"  {name:<{width}} {workload.description}; params: {', '.join(files)}")
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    from .fingerprint import capture, to_json

    print(to_json(capture()))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .redact import redact_text
    from .report import build_report

    report = build_report(Path(args.run_dir), docs_dir=Path(args.docs) if args.docs else None)
    for problem in report.problems:
        print(f"note: {redact_text(problem)}", file=sys.stderr)
    print(f"report: {report.html}")
    return 0 if report.comparable else 1


def _job_of(run_dir: Path, job_id: str | None):
    """What Slurm says now of the run's job (``--job`` or the one submission.json names), or None."""
    from .cluster import shards, slurmctl

    job_id = job_id or shards.read_submission(run_dir).get("job_id")
    return slurmctl.job_info(job_id) if job_id else None


def _cmd_status(args: argparse.Namespace) -> int:
    from .cluster import shards

    run_dir = Path(args.run_dir)
    print(shards.fleet_state(run_dir, _job_of(run_dir, args.job)).describe())
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from .cluster import shards

    run_dir = Path(args.run_dir)
    collected = shards.collect(run_dir, _job_of(run_dir, args.job))
    print(collected.state.describe())
    print(f"merged {len(collected.manifest.invocations)} invocations into {run_dir / 'manifest.json'} "
          f"({collected.manifest.status})")
    return 0 if collected.complete else 1


def _cmd_image_build(args: argparse.Namespace) -> int:
    from .arms import build_image

    build_args = dict(item.split("=", 1) for item in args.build_arg)
    build_image(tag=args.tag, base_image=args.base_image, build_args=build_args, engine=args.engine,
                repo_dir=paths.repo_root())
    print(f"built {args.tag}")
    return 0


def _cmd_image_export(args: argparse.Namespace) -> int:
    from .arms import export_image

    record = export_image(args.image, Path(args.dir), engine=args.engine, force=args.force,
                          log=lambda message: print(message, file=sys.stderr))
    print(f"exported {args.image} ({record['image_id']}) into {Path(args.dir).resolve()}; use it as the "
          "`image` of a rootfs arm")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchlib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a suite of benchmarks across arms, interleaved")
    run.add_argument("--suite", default="auto", help="suite name or YAML path; auto: quick with a GPU, smoke without. A suite entry's params is "
                          "a file stem under params/<benchmark>/ or a .yaml path (absolute or relative to the suite); "
                          "every file is validated before anything runs (exit 2, nothing written)")
    run.add_argument("--arms", help="comma-separated arm names (baseline first); default: the suite's arms")
    run.add_argument("--invocations", type=int, help="invocations per case and arm; default: the suite's")
    run.add_argument("--until", metavar="GOAL",
                     help="conclusive: after the minimum (3 invocations per arm and case), add interleaved rounds to the "
                          "cases still open until every performance metric is decided, or the budget or cap is reached "
                          "(default: the fixed design of --invocations)")
    run.add_argument("--budget", metavar="DURATION",
                     help="with --until: seconds of invocations the run may spend, e.g. 15m, 1h30m, 900")
    run.add_argument("--max-invocations", metavar="N",
                     help="with --until: the cap on invocations per arm and case (default 20)")
    run.add_argument("--out", default=str(paths.default_outputs()), help="outputs directory (default: outputs/)")
    run.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                     help="complete an interrupted run (default: the latest under --out)")
    run.add_argument("--skip-unavailable", action="store_true",
                     help="drop arms that fail their preflight check (saying why) instead of stopping")
    run.add_argument("--gpu-lock", choices=["wait", "refuse", "off"], default="wait",
                     help="one run per GPU: when another run holds this host's GPU (its CPU without one), wait "
                          "for it (default; says what it waits for on stderr), refuse at once (exit 2), or off "
                          "(no lock). Locks are files in $BENCHLIB_LOCK_DIR (default /tmp/benchlib-locks); "
                          "$BENCHLIB_GPU_IDS replaces the GPU UUIDs")
    run.add_argument("--lock-timeout", type=float, metavar="SECONDS",
                     help="with --gpu-lock wait: give up (exit 2) after waiting this long (default: no limit)")
    run.add_argument("--report", action="store_true", help="build the HTML report when the run ends")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--diagnose", action="store_true",
                     help="when the run ends, diagnose its gaps by experiment (benchlib diagnose), before the report")
    _diagnosis_options(run, prefix="diagnose-")
    run.set_defaults(handler=_cmd_run)

    diagnose = commands.add_parser(
        "diagnose", help="find which difference between the arms causes each gap of a run, by experiment: one "
                         "ablation arm per differing mechanism, run interleaved, the share of the gap each closes")
    diagnose.add_argument("run_dir", help="a run folder, e.g. outputs/20261203-101500-quick")
    _diagnosis_options(diagnose)
    diagnose.add_argument("--until", metavar="GOAL", help="conclusive: the experiment adds rounds until decided")
    diagnose.add_argument("--budget", metavar="DURATION", help="with --until: seconds of invocations it may spend")
    diagnose.add_argument("--max-invocations", metavar="N", help="with --until: the cap per arm and case")
    diagnose.add_argument("--gpu-lock", choices=["wait", "refuse", "off"], default="wait",
                          help="as for benchlib run")
    diagnose.add_argument("--lock-timeout", type=float, metavar="SECONDS", help="as for benchlib run")
    diagnose.add_argument("--report", action="store_true", help="rebuild the run's report with the measured shares")
    diagnose.add_argument("--no-progress", action="store_true", help="no progress bar")
    diagnose.set_defaults(handler=_cmd_diagnose)

    commands.add_parser("list", help="show suites, benchmarks and params files").set_defaults(handler=_cmd_list)
    commands.add_parser("env", help="print this environment's fingerprint as JSON").set_defaults(handler=_cmd_env)

    report = commands.add_parser("report", help="analyse a run and export the HTML report")
    report.add_argument("run_dir")
    report.add_argument("--docs", help="docs directory to publish into (default: docs/)")
    report.set_defaults(handler=_cmd_report)

    status = commands.add_parser("status", help="progress of a run on a Slurm cluster: every slot, missing nodes and why")
    status.add_argument("run_dir")
    status.add_argument("--job", help="the Slurm job id to ask about (default: the one the run was submitted as)")
    status.set_defaults(handler=_cmd_status)
    collect = commands.add_parser("collect", help="merge a cluster run's shards into one manifest (exit 1 while "
                                                  "slots are missing or failed)")
    collect.add_argument("run_dir")
    collect.add_argument("--job", help="the Slurm job id to ask about (default: the one the run was submitted as)")
    collect.set_defaults(handler=_cmd_collect)

    image = commands.add_parser("image", help="container images").add_subparsers(dest="image_command", required=True)
    build = image.add_parser("build", help="build the project image from the Dockerfile")
    build.add_argument("--tag", default="benchlib:latest")
    build.add_argument("--base-image", help="BASE_IMAGE build arg (default: the Dockerfile's NGC PyTorch image)")
    build.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE")
    build.add_argument("--engine", default="docker", choices=["docker", "podman"])
    build.set_defaults(handler=_cmd_image_build)
    export = image.add_parser("export", help="unpack an image's filesystem into DIR for the rootfs arm")
    export.add_argument("image", help="image name or ID, e.g. benchlib:latest")
    export.add_argument("dir", help="an empty or new folder (it gets DIR/.benchlib-image.json)")
    export.add_argument("--engine", default="docker", choices=["docker", "podman"])
    export.add_argument("--force", action="store_true", help="replace an earlier export in DIR")
    export.set_defaults(handler=_cmd_image_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 done with failures (failed invocations, nothing comparable), 2 bad input,
    128 + the signal number when SIGINT (130) or SIGTERM (143) stopped it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.handler(args)
    except BenchlibError as exc:
        from .redact import redact_text

        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # the runner has already said how to resume
        return 128 + getattr(exc, "signum", signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
