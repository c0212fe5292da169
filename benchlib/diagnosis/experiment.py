"""``benchlib diagnose``: run the ablation arms of a run's gaps and measure the share each closes
(docs/architecture.md, "Diagnosis", "The experiment"; docs/methodology.md, "Diagnosis by ablation").

:func:`diagnose` plans the experiment (:mod:`.plan`), writes a suite of the gap cases only (their exact
params, one file per case) under ``<run>/diagnosis/suites/``, runs it with the ordinary runner into
``<run>/diagnosis/<stamp>-diagnose/`` (the baseline, the arms with gaps and every ablation arm,
interleaved; resumable like any run; an ablation arm that fails its preflight is skipped and said
so), then computes per gap the share of it each ablation closes (:func:`.shares.gap_shares`; for an
arm that fails, the fraction of each ablation's invocations that ran) and writes ``diagnosis.json``
(versioned, format ``diagnosis``) beside that run. :func:`latest` finds the newest record of a run;
the report's per-case "why" (:meth:`benchlib.analysis.Analysis.case_cause`) then states measured
shares, and :func:`case_sentence` is those words.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from .. import _atomic, formats
from ..errors import BenchlibError
from ..figures import case_label
from ..manifest import COMPLETE, Manifest
from ..sequential_options import SequentialOptions
from ..stats import MIN_INVOCATIONS
from .plan import DEFAULT_MAX_ABLATIONS, AblationPlan, Gap, PlannedAblation, plan_ablations
from .shares import Ablation, combination_to_try, failure_shares, gap_shares

__all__ = ["DIAGNOSIS_DIR", "DIAGNOSIS_FILE", "DiagnoseOptions", "NothingToDiagnose", "case_sentence", "diagnose",
           "latest", "measure", "record_lines"]

#: Where a run keeps its diagnoses: ``<run>/diagnosis/`` (suites/ and one run folder per diagnosis).
DIAGNOSIS_DIR = "diagnosis"
#: The record of one diagnosis, in its run folder.
DIAGNOSIS_FILE = "diagnosis.json"


@dataclass
class DiagnoseOptions:
    arms: list[str] | None = None  # the arms with gaps to diagnose; None: every arm but the baseline
    invocations: int | None = None  # per arm and case; None: as many as the run gave the gap cases (at least 3)
    max_ablations: int = DEFAULT_MAX_ABLATIONS  # per arm with a gap
    both_sides: bool = False  # also the reverse of each environment ablation (the arm's values natively)
    sequential: SequentialOptions | None = None  # --until conclusive for the experiment's run
    gpu_lock: str = "wait"
    lock_timeout_s: float | None = None
    progress: bool = True
    seed: int = 0


class NothingToDiagnose(BenchlibError):
    """The run has no gap: every comparison is within the margin or undecided (one sentence says which)."""


# ------------------------------------------------------------------------------------- running it


def diagnose(run_dir: str | Path, options: DiagnoseOptions | None = None, log: Callable[[str], Any] = print
             ) -> dict[str, Any]:
    """Plan, run and measure the diagnosis of ``run_dir``'s gaps; the record written to
    ``diagnosis.json`` (see the module docstring). NothingToDiagnose when no case has a gap."""
    from ..analysis import analyse
    from ..runner import RunOptions, manifest_arms, run_suite

    options = options or DiagnoseOptions()
    run_dir = Path(run_dir).resolve()
    analysis = analyse(run_dir)
    if options.arms:
        unknown = [arm for arm in options.arms if arm not in analysis.arms[1:]]
        if unknown:
            raise BenchlibError(f"--arms names {', '.join(unknown)}, not a compared arm of {run_dir.name} (its arms: "
                                f"{', '.join(analysis.arms)}; the first is the baseline).")
    plan = plan_ablations(analysis, manifest_arms(analysis.manifest), options.arms, options.max_ablations,
                          options.both_sides)
    if not plan.gaps:
        raise NothingToDiagnose(_nothing(analysis, options.arms))
    for item in plan.not_tried:
        log(f"not tried for {item.gap_arm}: {item.title}: {item.why}")
    if not plan.ablations:
        raise NothingToDiagnose(f"{run_dir.name} has {len(plan.gaps)} case(s) with a gap, but no difference between "
                                "the arms can be aligned by an ablation arm (see the lines above); compare with an "
                                "arm that differs in one thing to tell.")
    invocations = None if options.sequential else options.invocations or _invocations_of(analysis.manifest, plan)
    unfinished = _unfinished(run_dir, plan)
    common = {"progress": options.progress, "gpu_lock": options.gpu_lock, "lock_timeout_s": options.lock_timeout_s}
    started = time.monotonic()
    try:
        if unfinished is not None:  # the same experiment, interrupted: finish it rather than start again
            log(f"resuming the diagnosis {unfinished.name} of {run_dir.name} (the same ablation arms)")
            outcome = run_suite(RunOptions(suite="", resume=unfinished, **common), log=log)
        else:
            suite_file = _write_suite(run_dir, analysis.manifest, plan, invocations or MIN_INVOCATIONS)
            log(f"diagnosing {len(plan.gaps)} gap(s) of {run_dir.name} with {len(plan.ablations)} ablation arm(s): "
                + ", ".join(ablation.arm.name for ablation in plan.ablations))
            outcome = run_suite(RunOptions(suite=str(suite_file), arms=plan.arms, invocations=invocations,
                                           out=run_dir / DIAGNOSIS_DIR, skip_unavailable=True,
                                           sequential=options.sequential, **common), log=log)
    except BaseException:
        log(f"to finish this diagnosis, run benchlib diagnose {run_dir} again: it resumes the same experiment.")
        raise
    record = measure(outcome.run_dir, plan, analysis.manifest, time.monotonic() - started, options.seed)
    record = _redacted(record)
    _atomic.write_json(outcome.run_dir / DIAGNOSIS_FILE, formats.stamped("diagnosis", record))
    return record


def _redacted(record: Any) -> Any:
    """The record with every string passed through benchlib.redact (an arm's secrets never reach the file)."""
    from ..redact import redact_text

    if isinstance(record, dict):
        return {key: _redacted(value) for key, value in record.items()}
    if isinstance(record, list):
        return [_redacted(value) for value in record]
    return redact_text(record) if isinstance(record, str) else record


def _unfinished(run_dir: Path, plan: AblationPlan) -> Path | None:
    """The newest diagnosis run of ``run_dir`` that has no record yet and ran the same arms and cases
    as ``plan`` (it was interrupted), or None."""
    from ..layout import find_runs
    from ..results import load_manifest

    for candidate in reversed(find_runs(run_dir / DIAGNOSIS_DIR)):
        if (candidate / DIAGNOSIS_FILE).is_file():
            return None
        manifest = load_manifest(candidate)
        skipped = {item["arm"] for item in manifest.skipped_arms}
        ran = {str(spec["name"]) for spec in manifest.arms} | skipped
        cases = {(inv.benchmark, inv.case) for inv in manifest.invocations}
        compared = {plan.baseline.name, *(arm.name for arm in plan.gap_arms)}
        if ran == {arm.name for arm in plan.arms} and cases == set(plan.cases) and not compared & skipped:
            return candidate
        return None
    return None


def _nothing(analysis: Any, arms: list[str] | None) -> str:
    rows = analysis.performance[analysis.performance["arm"].isin(arms or analysis.arms[1:])]
    undecided = int(rows["verdict_code"].isin(["inconclusive", "too_few"]).sum())
    tail = (f"; {undecided} comparison(s) are undecided: decide them first (benchlib run --resume with more "
            "invocations, or a run with --until conclusive)" if undecided else "")
    return f"no case of {analysis.run_id} differs beyond the margin, nor fails in one arm only: nothing to diagnose{tail}."


def _invocations_of(manifest: Manifest, plan: AblationPlan) -> int:
    """The most invocations the run gave one gap case in one arm, at least MIN_INVOCATIONS."""
    cases = set(plan.cases)
    counts: dict[tuple, int] = {}
    for inv in manifest.invocations:
        if (inv.benchmark, inv.case) in cases and inv.status == COMPLETE:
            key = (inv.arm, inv.benchmark, inv.case)
            counts[key] = counts.get(key, 0) + 1
    return max([MIN_INVOCATIONS, *counts.values()])


def _write_suite(run_dir: Path, manifest: Manifest, plan: AblationPlan, invocations: int) -> Path:
    """The experiment's suite: the gap cases with their exact params (one file each), the run's timeout,
    cool-down, seed and arm shuffling; the arms are handed to the runner (they hold secrets, a file must not)."""
    from ..suites import load_suite

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder = run_dir / DIAGNOSIS_DIR / "suites" / stamp
    folder.mkdir(parents=True, exist_ok=True)
    values = {(inv.benchmark, inv.case): inv.params for inv in manifest.invocations}
    entries = []
    for index, (benchmark, case) in enumerate(plan.cases):
        params_file = folder / f"{index:02d}-{benchmark}.yaml"
        _atomic.write_text(params_file, f"# {benchmark} {case}, as run in {run_dir.name}\n"
                           + yaml.safe_dump(dict(values[benchmark, case]), sort_keys=False))
        entries.append({"benchmark": benchmark, "params": params_file.name})
    try:
        original = load_suite(manifest.suite_file or manifest.suite)
        settings = {"cooldown_s": original.cooldown_s, "seed": original.seed, "timeout_s": original.timeout_s}
    except BenchlibError:  # the suite file moved: the defaults
        settings = {}
    settings["shuffle_arms"] = True  # no ablation arm always runs in the same place of a round (drift, warm caches)
    suite = {"description": f"diagnosis of {run_dir.name}: the gap cases, the baseline, the arms with gaps and one "
                            "ablation arm per differing mechanism",
             "invocations": invocations, "benchmarks": entries, **settings}
    path = folder / "diagnose.yaml"
    _atomic.write_text(path, yaml.safe_dump(suite, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------- measuring it


def _samples(results: Any, arm: str, benchmark: str, case: str, metric: str) -> list[np.ndarray]:
    rows = results[(results["arm"] == arm) & (results["benchmark"] == benchmark) & (results["case"] == case)
                   & (results["metric"] == metric)]
    return [part["value"].to_numpy(dtype=float) for _, part in rows.groupby("invocation", sort=True)]


def _ran(manifest: Manifest, results: Any, arm: str, benchmark: str, case: str) -> tuple[int, int]:
    """(invocations whose case produced results, invocations that were due) of one arm and case."""
    due = [inv for inv in manifest.invocations if (inv.arm, inv.benchmark, inv.case) == (arm, benchmark, case)]
    rows = results[(results["arm"] == arm) & (results["benchmark"] == benchmark) & (results["case"] == case)]
    return len(set(rows["invocation"])), len(due)


def _number(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def measure(diagnosis_dir: Path, plan: AblationPlan, original: Manifest, wall_s: float, seed: int = 0
            ) -> dict[str, Any]:
    """The record of a finished experiment run (see the module docstring)."""
    from ..numbers import ok_rows
    from ..results import load_manifest, load_run
    from ..sequential_run import spent_seconds

    manifest = load_manifest(diagnosis_dir)
    results = ok_rows(load_run(diagnosis_dir))
    skipped = {item["arm"]: item["why"] for item in manifest.skipped_arms}
    for name in (plan.baseline.name, *(arm.name for arm in plan.gap_arms)):
        if name in skipped:
            raise BenchlibError(f"arm {name} could not run for the diagnosis ({skipped[name]}); fix that and run "
                                f"benchlib diagnose {diagnosis_dir.parent.parent} again.")
    not_tried = [vars(item) for item in plan.not_tried]
    not_tried += [{"gap_arm": a.gap_arm, "mechanism": a.mechanisms[0], "title": a.title,
                   "why": f"its ablation arm {a.arm.name} could not run: {skipped[a.arm.name]}"}
                  for a in plan.ablations if a.arm.name in skipped]
    ran = [a for a in plan.ablations if a.arm.name not in skipped]
    cases = [_case_record(gap, [a for a in ran if a.gap_arm == gap.arm], plan.baseline.name, manifest, results, seed)
             for gap in plan.gaps]
    compared = {plan.baseline.name, *(arm.name for arm in plan.gap_arms)}
    comparison_s = sum(inv.duration_s or 0.0 for inv in original.invocations
                       if inv.arm in compared and (inv.benchmark, inv.case) in set(plan.cases))
    return {"run_id": original.run_id, "diagnosis_run": manifest.run_id, "baseline": plan.baseline.name,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "invocations": max((inv.invocation for inv in manifest.invocations), default=0),
            "wall_s": round(wall_s, 1), "invocation_s": round(spent_seconds(manifest), 1),
            "comparison_s": round(comparison_s, 1),
            "ablations": [{"arm": a.arm.name, "gap_arm": a.gap_arm, "side": a.side, "mechanisms": list(a.mechanisms),
                           "title": a.title, "what": a.what, "fix": a.fix, "flags": list(a.arm.run_flags),
                           "env": sorted(a.arm.env)} for a in ran],
            "cases": cases, "not_tried": not_tried}


def _case_record(gap: Gap, ablations: list[PlannedAblation], baseline: str, manifest: Manifest, results: Any,
                 seed: int) -> dict[str, Any]:
    by_label = {ablation.arm.name: ablation for ablation in ablations}
    record: dict[str, Any] = {"arm": gap.arm, "benchmark": gap.benchmark, "case": gap.case, "outcome": gap.outcome,
                              "metric": gap.metric, "found": {"ratio": gap.ratio, "ci_low": gap.ci_low,
                                                              "ci_high": gap.ci_high, "why": gap.why}}
    if gap.outcome == "fails":
        base_ran, base_due = _ran(manifest, results, baseline, gap.benchmark, gap.case)
        arm_ran, arm_due = _ran(manifest, results, gap.arm, gap.benchmark, gap.case)
        counts = {}
        for name, ablation in by_label.items():
            ran, due = _ran(manifest, results, name, gap.benchmark, gap.case)
            # an ablation of the arm closes the gap when it runs; one of the baseline reproduces it when it fails
            counts[name] = (ran, due) if ablation.side == "arm" else (due - ran, due)
        table = failure_shares(counts)
        record["gap"] = {"baseline_ran": base_ran, "baseline_due": base_due, "arm_ran": arm_ran, "arm_due": arm_due,
                         "conclusive": base_ran == base_due > 0 and arm_ran == 0}
        record["shares"] = [_share_row(by_label[row["mechanisms"]], row) for row in table.to_dict("records")]
        record["residual"], record["interactions"], record["try_together"] = None, [], None
        return record
    metric = str(gap.metric)
    samples = {name: _samples(results, name, gap.benchmark, gap.case, metric) for name in (baseline, gap.arm, *by_label)}
    by_key = {(ablation.mechanisms, ablation.side): ablation for ablation in ablations}
    shares = gap_shares(samples[baseline], samples[gap.arm],
                        [Ablation(ablation.mechanisms, ablation.side, samples[name]) for name, ablation in by_label.items()],
                        seed=seed)
    record["gap"] = {"ratio": _number(shares.gap.value), "ci_low": _number(shares.gap.low),
                     "ci_high": _number(shares.gap.high), "conclusive": shares.conclusive,
                     "n_inv_base": len(samples[baseline]), "n_inv_arm": len(samples[gap.arm])}
    record["shares"] = [_share_row(by_key[tuple(row["mechanisms"]), row["side"]], row)
                        for row in shares.shares.to_dict("records")]
    record["residual"] = (None if shares.residual is None else
                          {"share": _number(shares.residual.value), "ci_low": _number(shares.residual.low),
                           "ci_high": _number(shares.residual.high)})
    record["interactions"] = []
    together = combination_to_try(shares)
    titles = {mechanism: ablation.title for ablation in ablations for mechanism in ablation.mechanisms}
    record["try_together"] = [titles.get(name, name) for name in together] if together else None
    return record


def _share_row(ablation: PlannedAblation, row: dict[str, Any]) -> dict[str, Any]:
    """One ablation's line of a case: what it aligned, how, the fix, and its share with the interval."""
    share = row.get("share", row.get("fraction"))
    return {"arm": ablation.arm.name, "mechanisms": list(ablation.mechanisms), "title": ablation.title,
            "side": ablation.side, "what": ablation.what, "fix": ablation.fix,
            "n_inv": int(row.get("n_inv", row.get("total", 0)) or 0), "ratio": _number(row.get("ratio")),
            "share": _number(share), "ci_low": _number(row.get("ci_low")), "ci_high": _number(row.get("ci_high")),
            "verdict": str(row.get("verdict")), "rank": int(row.get("rank", 0) or 0)}


# ------------------------------------------------------------------------------------- reading it


def latest(run_dir: str | Path) -> dict[str, Any] | None:
    """The diagnoses of ``run_dir`` as one record (None without any): the newest's fields, and per
    (arm, benchmark, case) the newest diagnosis of it against the same baseline, so diagnosing another
    arm later keeps the first arm's shares."""
    found = sorted(Path(run_dir, DIAGNOSIS_DIR).glob(f"*/{DIAGNOSIS_FILE}"))
    if not found:
        return None
    records = [formats.read_json(path, "diagnosis") for path in found]
    merged = dict(records[-1])
    cases: dict[tuple, dict] = {}
    for record in records:
        if record.get("baseline") != merged.get("baseline"):
            continue
        for case in record.get("cases", []):
            cases[case["arm"], case["benchmark"], case["case"]] = {**case, "invocations": record.get("invocations")}
    merged["cases"] = list(cases.values())
    return merged


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.0f} %"


def _interval(row: dict[str, Any]) -> str:
    if row.get("ci_low") is None or row.get("ci_high") is None:
        return ""
    return f" [{_pct(row['ci_low'])}, {_pct(row['ci_high'])}]"


def _ratio(gap: dict[str, Any]) -> str:
    """``1.52 [1.31, 1.77]``: a ratio with its interval, as far as it is known."""
    if gap.get("ratio") is None:
        return "unknown"
    interval = "" if gap.get("ci_low") is None or gap.get("ci_high") is None else \
        f" [{gap['ci_low']:.3g}, {gap['ci_high']:.3g}]"
    return f"{gap['ratio']:.3g}{interval}"


def case_sentence(case: dict[str, Any], baseline: str, invocations: int | None = None) -> str:
    """A diagnosed case in words: the gap as re-measured, each cause with its share and the fix, what
    was ruled out, what no cause explains, and what to try when nothing alone closes it."""
    label = case_label(case["benchmark"], case["case"])
    gap = case.get("gap") or {}
    measured = f"measured by ablation, {invocations} invocations per arm" if invocations else "measured by ablation"
    if case["outcome"] == "fails":
        if not gap.get("conclusive"):
            if gap.get("baseline_ran") != gap.get("baseline_due"):
                why = (f"{baseline} itself failed in {gap['baseline_due'] - gap['baseline_ran']} of "
                       f"{gap.get('baseline_due')} invocations")
            else:
                why = (f"{case['arm']} failed in only {gap['arm_due'] - gap['arm_ran']} of {gap.get('arm_due')} "
                       "invocations (an intermittent failure needs more invocations)")
            return f"Why {label} ({measured}): during the diagnosis {why}, so no ablation can be credited."
        lead = f"{case['arm']} fails where {baseline} runs"
        causes = [row for row in case["shares"] if row["verdict"] == "cause"]
        said = [(f"with {row['what']} it ran in {_pct(row['share'])}{_interval(row)} of its invocations "
                 f"(fix: {row['fix']})") if row["side"] == "arm" else
                (f"giving {baseline} {row['what']} made it fail in {_pct(row['share'])}{_interval(row)} of its "
                 f"invocations") for row in causes]
    else:
        if not gap.get("n_inv_base") or not gap.get("n_inv_arm"):
            return (f"Why {label} ({measured}): {baseline if not gap.get('n_inv_base') else case['arm']} has no results "
                    "in the diagnosis, so no share is computed; see the diagnosis run's problems.")
        if not gap.get("conclusive"):
            return (f"Why {label} ({measured}): the gap did not show again beside the ablation arms "
                    f"({case['arm']} / {baseline} = {_ratio(gap)}), so no share is computed; run the diagnosis with "
                    "more invocations.")
        lead = f"{case['arm']} / {baseline} = {_ratio(gap)} ({case['metric']})"
        causes = [row for row in case["shares"] if row["verdict"] == "cause"]
        faster = case["outcome"] == "faster"
        said = [f"{'aligning' if row['side'] == 'arm' else 'giving ' + baseline} {row['title']} "
                f"({row['what']}) {'closes' if row['side'] == 'arm' else 'reproduces'} {_pct(row['share'])}"
                f"{_interval(row)} of the {'speed-up' if faster else 'gap'} "
                + ("(the arm's setting of it is what makes it faster: give the baseline the same to have it there)"
                   if faster else f"(fix: {row['fix']})") for row in causes]
    ruled = [f"{row['title']} ({_pct(row['share'])}{_interval(row)})" for row in case["shares"]
             if row["verdict"] == "ruled out"]
    unclear = [f"{row['title']} ({_pct(row['share'])}{_interval(row)})" for row in case["shares"]
               if row["verdict"] in ("unclear", "partly", "too few")]
    parts = [f"Why {label} ({measured}): {lead}"]
    parts.append("; ".join(said) if said else "no single ablation tried accounts for it")
    if ruled:
        parts.append("ruled out: " + ", ".join(ruled))
    if unclear:
        parts.append("unclear: " + ", ".join(unclear))
    residual = case.get("residual")
    if residual and residual.get("share") is not None and said:
        parts.append(f"unexplained: {_pct(residual['share'])}{_interval(residual)}")
    beyond = [row for row in case["shares"] if row.get("share") is not None and row["share"] > 1.05]
    if beyond and said:
        parts.append("a share above 100 % (and a negative remainder) means that ablation arm came out "
                     f"{'slower' if case['outcome'] == 'faster' else 'faster'} than {baseline} within the noise")
    if case.get("try_together"):
        parts.append("no mechanism alone closes it: align " + " and ".join(case["try_together"])
                     + " together to test an interaction")
    return "; ".join(parts) + "."


def record_lines(record: dict[str, Any]) -> list[str]:
    """The whole diagnosis in lines: one per case, then what was not tried, then the time it took."""
    lines = [case_sentence(case, record["baseline"], case.get("invocations", record.get("invocations")))
             for case in record["cases"]]
    lines += [f"Not tried for {item['gap_arm']}: {item['title']}: {item['why'].rstrip('.')}."
              for item in record["not_tried"]]
    ratio = record["invocation_s"] / record["comparison_s"] if record.get("comparison_s") else None
    lines.append(f"The diagnosis took {record['invocation_s']:.0f} s of invocations (the baseline, the arm(s) and "
                 f"{len(record['ablations'])} ablation arm(s))"
                 + (f": {ratio:.1f}x the {record['comparison_s']:.0f} s the comparison of these cases took" if ratio
                    else "") + f" ({record['wall_s']:.0f} s of wall time in the last command).")
    return lines
