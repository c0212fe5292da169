"""The analysis of a run (docs/architecture.md, "Data flow", last two steps): :func:`analyse` loads a run
(benchlib.results), checks it, compares every arm with the baseline (benchlib.stats), diffs the
fingerprints (benchlib.envdiff) and derives energy per unit of work and the fraction of the hardware
ceiling (benchlib.numbers); the :class:`Analysis` it returns holds the tables, the problems and
headline in words (benchlib.wording) and the figures (benchlib.figures). ``notebooks/analysis.ipynb``
is a thin page over it; benchlib.render exports it.
"""
from __future__ import annotations

import html
import shlex
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import comparisons, envdiff, envtable, figures, schema, stats
from .arms import flag_privileges, launcher_for
from .checks import Finding
from .checks.baseline import CHECK as NOT_BARE_METAL, bare_metal_findings
from .checks.clocks import clock_fractions, stuck_clock_findings
from .checks.memory import memory_by_arm, memory_findings
from .figures import CSS, Html
from .findings import check_problems, context_findings, higher_is_better, performance_rows
from .layout import RESULTS_FILE
from .manifest import COMPLETE, FAILED, Invocation, Manifest
from .numbers import ceiling_fractions, energy_per_work, ok_rows, slower_rows
from .throttling import throttle_reasons
from .results import default_run_dir, load_envs, load_manifest, load_telemetry, read_results
from .wording import (DECOMPOSITION_TITLES, DOMINATED_SHARE, FASTER_BAND, group_answer, image_mismatch,
                      missing_effects, named, overhead_text, p_text, ratio_text, throttle_note,
                      throttle_reasons_of, untested)

__all__ = ["FIGURES", "Analysis", "analyse", "decomposition_roles", "role_of"]

FIGURES = ("forest", "decomposition", "distributions", "telemetry", "energy", "ceilings")


THROTTLED_SHARE = 0.05  # above this share of throttled samples, the report says so


MAX_LISTED = 10  # problems of one kind listed one by one; the rest are counted



def _arm_problems(manifest: Manifest, arms: list[str], baseline: str | None, requested: str | None,
                  results: pd.DataFrame) -> list[str]:
    problems = [f"arm {item['arm']} was skipped: {item['why']}" for item in manifest.skipped_arms]
    problems += _privilege_problems(manifest)
    if requested is not None and requested not in arms:
        problems.append(f"the baseline {requested!r} is not an arm of this run (arms: {', '.join(arms)}); "
                        f"{baseline} is used instead.")
    if len(arms) < 2:
        problems.append(f"this run has one arm ({', '.join(arms) or 'none'}): there is nothing to compare it with; "
                        "run with two arms or more, e.g. --arms native,container.")
    with_results = set(ok_rows(results)["arm"])
    for arm in arms:
        if arm not in with_results:
            role = "the baseline arm" if arm == baseline else "arm"
            problems.append(f"{role} {arm} has no successful results: it cannot be compared.")
    return problems


def _privilege_problems(manifest: Manifest) -> list[str]:
    """Arms that ran with raised privileges (their flags asked) or as root inside a container."""
    problems = []
    for spec in manifest.arms:
        raised = _raised(spec)
        if raised:
            problems.append(f"arm {spec.get('name')} ran with raised privileges, as its flags ask: "
                            f"{'; '.join(raised)}. Its numbers describe that container, not a default one.")
        probe = (spec.get("preflight") or {}).get("probe") or {}
        if _launcher_of(spec) is not None and _launcher_of(spec).drops_root and probe.get("uid") == 0:
            problems.append(f"arm {spec.get('name')} ran as root inside its container (UID 0): unset "
                            "BENCHLIB_CONTAINER_USER, or set it to a non-root UID:GID.")
    return problems


def _launcher_of(spec: dict[str, Any]):
    """The launcher of a manifest's arm record, or None for an engine this benchlib does not know."""
    try:
        return launcher_for(str(spec.get("engine")))
    except KeyError:
        return None


def _raised(spec: dict[str, Any]) -> list[str]:
    """The raised privileges of a manifest's arm record (by its launcher; every flag of an unknown engine)."""
    launcher = _launcher_of(spec)
    flags = spec.get("run_flags") or []
    return launcher.raised_privileges(flags) if launcher is not None else flag_privileges(flags)


def _invocation_problems(manifest: Manifest, missing: list[Invocation], run_dir: Path) -> list[str]:
    lines = [f"invocation {inv.label} failed: {inv.error or 'no reason recorded'}"
             for inv in manifest.invocations if inv.status == FAILED]
    lines += [f"invocation {inv.label} did not run to the end (status {inv.status}); complete the run with "
              f"`benchlib run --resume {run_dir}`." for inv in manifest.invocations if inv.status not in (COMPLETE, FAILED)]
    lines += [f"invocation {inv.label} is marked complete but its {RESULTS_FILE} is missing." for inv in missing]
    if len(lines) > MAX_LISTED:
        lines = lines[:MAX_LISTED] + [f"… and {len(lines) - MAX_LISTED} more invocations that failed or are missing."]
    return lines


def _case_problems(results: pd.DataFrame, arms: list[str]) -> list[str]:
    """Cases that failed or were skipped inside a notebook, and cases some arms lack."""
    problems = []
    bad = results[results["status"].ne(schema.STATUS_OK).to_numpy(dtype=bool, na_value=True)]
    for (arm, benchmark, case, status, note), part in bad.groupby(["arm", "benchmark", "case", "status", "note"],
                                                                 sort=False, dropna=False):
        invocations = ", ".join(map(str, sorted(part["invocation"].unique())))
        problems.append(f"{benchmark} {case} {status} in arm {arm} (invocation {invocations}): {note}")
    present = ok_rows(results).groupby(["benchmark", "case"], sort=False)["arm"].agg(set)
    if len(arms) > 1:
        for (benchmark, case), have in present.items():
            lacking = [arm for arm in arms if arm not in have]
            if lacking and have:
                problems.append(f"{benchmark} {case} has results in {', '.join(a for a in arms if a in have)} only, "
                                f"not in {', '.join(lacking)}: it is not compared there.")
    return problems


def _stat_problems(comparison: pd.DataFrame) -> list[str]:
    problems = []
    too_few = comparison[comparison["verdict_code"].eq("too_few")]
    if not too_few.empty:
        problems.append(f"{len(too_few)} comparison(s) have fewer than {stats.MIN_INVOCATIONS} invocations in an arm, "
                        f"so no confidence interval: run with --invocations {stats.MIN_INVOCATIONS} or more.")
    for column, who in (("throttled_share_arm", "arm"), ("throttled_share_base", "baseline")):
        if column not in comparison.columns:
            continue
        hot = comparison[comparison[column].astype(float) > THROTTLED_SHARE].drop_duplicates(["benchmark", "case", who])
        reasons = f"throttle_reasons_{'arm' if who == 'arm' else 'base'}"
        for row in hot.itertuples(index=False):
            why = getattr(row, reasons, "") if reasons in comparison.columns else ""
            problems.append(f"{100 * getattr(row, column):.0f} % of the samples of {getattr(row, who)} in "
                            f"{row.benchmark} {row.case} ran while the GPU was throttled"
                            + (f" (by {why})" if isinstance(why, str) and why else "")
                            + "; the comparison tables also show the verdict without them.")
    return problems


@dataclass
class Analysis:
    """A run, compared: tables, the headline in words and the figures. Built by :func:`analyse`."""

    run_dir: Path
    manifest: Manifest
    arms: list[str]  # baseline first
    baseline: str | None
    margin: float
    results: pd.DataFrame
    telemetry: pd.DataFrame
    comparison: pd.DataFrame  # stats.compare (or compare_with_without_throttled) of every metric
    env_diff: pd.DataFrame
    problems: list[str]
    hardware: list[Finding] = field(default_factory=list)  # benchlib.checks' findings (also in problems)
    envs: dict[tuple, dict[str, Any]] = field(default_factory=dict)  # results.load_envs: the fingerprints
    _plotlyjs_sent: bool = field(default=False, init=False, repr=False)

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    @property
    def comparable(self) -> bool:
        """At least one case has results in the baseline and in another arm."""
        counts = self.comparison[["n_inv_arm", "n_inv_base"]].astype(float)
        return bool(((counts["n_inv_arm"] > 0) & (counts["n_inv_base"] > 0)).any())

    @property
    def performance(self) -> pd.DataFrame:
        """Comparison rows of performance metrics (benchlib.metricspec roles): the overhead questions."""
        return performance_rows(self.comparison)

    @property
    def devices(self) -> list[str]:
        return sorted(set(self.results["device"].dropna().astype(str)) - {"unknown"})

    @cached_property
    def energy(self) -> pd.DataFrame:
        return energy_per_work(self.results, self.telemetry)

    @cached_property
    def ceilings(self) -> pd.DataFrame:
        return ceiling_fractions(self.results)

    @cached_property
    def roles(self) -> dict[str, str]:
        """Arm of each role of the decomposition (native, isolated, rootfs, container) this run has."""
        return decomposition_roles(self.manifest.arms, self.baseline)

    @cached_property
    def decomposition(self) -> pd.DataFrame:
        """stats.decompose of the times and rates, by the arms in :attr:`roles`; empty without a native
        arm, or without an isolated or rootfs arm (the total alone is the forest plot's container row)."""
        if "native" not in self.roles or not {"isolated", "rootfs"} & set(self.roles):
            return pd.DataFrame(columns=stats.DECOMPOSE_COLUMNS)
        performance = performance_rows(self.results)
        return stats.decompose(performance, **self.roles, higher_is_better=higher_is_better(performance))

    # ----------------------------------------------------------------- words

    def headline(self) -> list[str]:
        """One plain-words paragraph per arm compared with the baseline."""
        if self.baseline is None or len(self.arms) < 2:
            return ["Nothing to compare: this run has one arm. The tables below describe it alone."]
        return [self._arm_headline(arm) for arm in self.arms[1:]]

    def _arm_headline(self, arm: str) -> str:
        """``arm vs baseline: no overhead beyond 2 % in k of n cases; overhead in …; faster in …;
        inconclusive in …. Likely cause: …``, naming at most NAMED_CASES cases per verdict."""
        rows = self.performance[self.performance["arm"] == arm]
        opening = f"{arm} vs {self.baseline}:"
        if rows.empty:
            return f"{opening} no case has results in both arms, so nothing could be compared."
        codes = rows["verdict_code"]
        parts = [f"no overhead beyond {100 * self.margin:g} % in {int(codes.eq('equivalent').sum())} of {len(rows)} cases"]
        worse = rows[codes.eq("overhead") & (rows["overhead"] > 0)].sort_values("overhead", ascending=False)
        if not worse.empty:
            parts.append(f"overhead in {len(worse)}: " + named(worse, lambda r: f"{r.verdict} — {r.band}"))
        faster = rows[codes.eq("overhead") & (rows["overhead"] < 0)].sort_values("overhead")
        if not faster.empty:
            parts.append(f"faster in {len(faster)} ({FASTER_BAND}): " + named(faster, lambda r: r.verdict))
        unsure = rows[codes.eq("inconclusive")]
        if not unsure.empty:
            parts.append(f"inconclusive in {len(unsure)}: "
                         + named(unsure, lambda r: r.verdict.removeprefix("inconclusive: ")))
        too_few = int(codes.eq("too_few").sum())
        if too_few:
            parts.append(f"{too_few} with too few invocations for a confidence interval")
        return f"{opening} {'; '.join(parts)}.{self._cause_sentence(arm, codes)}"

    def _cause_sentence(self, arm: str, codes: pd.Series) -> str:
        """Why, when not every case is equivalent: for each slower or failed case, what differs and acts on
        it (:meth:`case_cause`); otherwise the known differences between the fingerprints."""
        if codes.eq("equivalent").all():
            return ""
        gaps = self._gaps(arm, self.performance[self.performance["arm"] == arm], self.failures(arm))
        if gaps:
            return " " + " ".join(filter(None, (self.case_cause(arm, benchmark, case) for benchmark, case in gaps)))
        causes = envdiff.likely_causes(self.env_diff, arm, str(self.baseline))
        if not causes:
            return " No known mechanism differs between the two fingerprints; see the environment differences."
        lead = "Likely cause" if codes.eq("overhead").any() else "Known differences"
        return f" {lead}: {'; '.join(causes)}; see the environment differences."

    def failures(self, arm: str) -> dict[str, dict[str, str]]:
        """benchmark -> case -> why, for the cases that have no successful result in ``arm`` but did run
        (failed or skipped inside the notebook, or an invocation that failed) while the baseline has results."""
        results = self.results
        ok = results["status"].eq(schema.STATUS_OK).to_numpy(dtype=bool, na_value=False)
        good = set(map(tuple, results.loc[ok, ["arm", "benchmark", "case"]].to_numpy().tolist()))
        out: dict[str, dict[str, str]] = {}
        tried = [(str(row.benchmark), str(row.case), str(row.note).split("; ")[0]
                  if isinstance(row.note, str) and row.note else str(row.status))
                 for row in results.loc[~ok & results["arm"].eq(arm).to_numpy()].drop_duplicates(["benchmark", "case"])
                 .itertuples()]
        tried += [(inv.benchmark, inv.case, (inv.error or "the invocation failed").removeprefix("the case failed: ")
                   .split("; ")[0]) for inv in self.manifest.invocations if inv.arm == arm and inv.status == FAILED]
        for benchmark, case, why in tried:
            if (arm, benchmark, case) in good or (self.baseline, benchmark, case) not in good:
                continue
            out.setdefault(benchmark, {}).setdefault(case, why[:160])
        return out

    def _gaps(self, arm: str, rows: pd.DataFrame, failures: dict[str, dict[str, str]]) -> list[tuple[str, str]]:
        """(benchmark, case) of each group's worst gap in ``arm``: its first failed case, else its most
        slowed case beyond the margin; and its most sped-up case (a TF32 override's speed-up has a cause too)."""
        worst = {benchmark: next(iter(cases)) for benchmark, cases in failures.items()}
        for row in slower_rows(rows).itertuples(index=False):
            worst.setdefault(str(row.benchmark), str(row.case))
        best: dict[str, str] = {}
        for row in rows[rows["verdict_code"].eq("overhead") & (rows["overhead"] < 0)].sort_values("overhead").itertuples():
            best.setdefault(str(row.benchmark), str(row.case))
        pairs = [*worst.items(), *best.items()]
        return list(dict.fromkeys(pairs))

    @cached_property
    def diagnosis(self) -> dict[str, Any] | None:
        """The newest diagnosis by experiment of this run (``benchlib diagnose``), or None."""
        from .diagnosis.experiment import latest

        return latest(self.run_dir)

    def case_cause(self, arm: str, benchmark: str, case: str) -> str:
        """Why one case may be slower or fail in ``arm``: measured shares where a diagnosis by experiment
        covered the case (benchlib.diagnosis.experiment); otherwise, without an experiment, the differing
        mechanisms that act on what the case is sensitive to (benchlib.diagnosis.blame); the others are
        named as not acting on it, so a /dev/shm difference is never blamed for a GPU matrix product."""
        from .diagnosis.blame import blame, sensitivity_in
        from .diagnosis.experiment import case_sentence
        from .diagnosis.mechanisms import fingerprint_pairs

        record = self.diagnosis
        if record is not None and record.get("baseline") == self.baseline:
            for diagnosed in record.get("cases", []):
                if (diagnosed["arm"], diagnosed["benchmark"], diagnosed["case"]) == (arm, benchmark, case):
                    return case_sentence(diagnosed, str(self.baseline), diagnosed.get("invocations"))

        found = fingerprint_pairs(self.envs, str(self.baseline), [arm], benchmark=benchmark, case=case).get(arm)
        sensitivity = sensitivity_in(self.results, benchmark, case)
        if found is None or sensitivity is None:
            return ""
        verdict = blame(found, sensitivity)
        likely, _ = verdict.sentences(str(self.baseline), arm)
        label = figures.case_label(benchmark, case)
        if likely:
            return f"Why {label}: {likely}."
        kinds = " and ".join(sorted(verdict.classes)) or "it"
        acting = [f"{difference.title}: {why}" for difference, why in verdict.also_differs if why.startswith("acts on")]
        listed = "; ".join(acting[:2]) + (f"; and {len(acting) - 2} more" if len(acting) > 2 else "")
        return (f"Why {label}: nothing that differs between the arms acts on {kinds}"
                + (f" ({listed})" if listed else "") + ", so throttling, noise or an untested mechanism remain: "
                "an experiment that changes one difference at a time would tell.")

    def missing_telemetry(self) -> str:
        """A sentence when no GPU telemetry was recorded (no NVML, or a CPU-only run), saying why if the
        fingerprints do; "" when there is telemetry."""
        if not self.telemetry.empty:
            return ""
        statuses = [str((env.get("telemetry") or {}).get("status", "")) for env in self.envs.values()
                    if isinstance(env.get("telemetry"), dict)]
        reasons = sorted({status for status in statuses if status and status != "ok"})
        why = f" ({'; '.join(reasons[:2])})" if reasons else ""
        return (f"No GPU telemetry was recorded{why}: whether the GPU was throttled or held its clocks could not "
                "be checked, so no verdict here is corrected for throttling; install the NVIDIA driver's NVML "
                "(pynvml) where the run runs to get it.")

    def answer_parts(self) -> dict[str, Any]:
        """The answer in sentences: per compared arm, one sentence per workload group (fails / slower by
        X % [CI] / faster / same / not sure), how sure, the likely cause and the context that differs;
        then what was not tested that could matter, each with the command that would test it."""
        arms = []
        for arm in (self.arms[1:] if self.baseline is not None else []):
            rows = self.performance[self.performance["arm"] == arm]
            failures = self.failures(arm)
            groups = {b: group_answer(b, rows[rows["benchmark"] == b], failures.get(b, {}), self.margin)
                      for b in dict.fromkeys([*rows["benchmark"], *failures])}  # benchmark -> (outcome, sentence)
            invocations = pd.concat([rows["n_inv_arm"], rows["n_inv_base"]]).astype(float)
            low, high = (int(invocations.min()), int(invocations.max())) if len(invocations) else (0, 0)
            sure = (f"How sure: each figure is a ratio of medians with its 95 % confidence interval (hierarchical "
                    f"bootstrap over {low if low == high else f'{low}-{high}'} invocations per arm); "
                    f"\"the same\" means the whole interval lies within ±{100 * self.margin:g} %.") if len(invocations) else ""
            cause = " ".join(self.case_cause(arm, benchmark, case) for benchmark, case in self._gaps(arm, rows, failures))
            context = context_findings(self.results, str(self.baseline)) if not self.results.empty else pd.DataFrame()
            differs = sorted(set(context[context["arm"] == arm]["text"])) if not context.empty else []
            arms.append({"arm": arm, "baseline": self.baseline, "groups": groups, "sure": sure, "cause": cause,
                         "context": differs})
        shares = [c for c in ("throttled_share_arm", "throttled_share_base") if c in self.performance.columns]
        performance = self.performance
        dominated = (performance[(performance[shares].astype(float) > DOMINATED_SHARE).any(axis=1)]
                     .drop_duplicates(["benchmark", "case"]) if shares else performance.iloc[0:0])
        not_bare = any(finding.check == NOT_BARE_METAL for finding in self.hardware)
        return {"arms": arms, "stops": self.stops(),
                "untested": untested(self.roles, self.manifest.suite, self.arms, not_bare, dominated)}

    def stops(self) -> list[str]:
        """A sequential run's cases: how many invocations each arm ran and why the case stopped (decided,
        budget, cap, failed), from the manifest; [] for a fixed design."""
        if not self.manifest.sequential:
            return []
        out = []
        for case in self.manifest.cases:
            counts = case.get("invocations") or {}
            ran = ", ".join(f"{arm} {count}" for arm, count in counts.items())
            detail = f": {case['detail']}" if case.get("detail") else ""
            out.append(f"{figures.case_label(str(case.get('benchmark')), str(case.get('case')))}: "
                       f"{case.get('state', 'open')} after {ran or 'no'} invocations{detail}")
        return out

    def answer(self) -> Html:
        """The first screen: the answer per arm and workload group, what was not tested, the problems."""
        parts = self.answer_parts()
        blocks = []
        if not parts["arms"]:
            blocks.append("<p>Nothing to compare: this run has one arm, so it cannot say what a container costs.</p>")
        for item in parts["arms"]:
            groups = "".join(f"<li class='benchlib-{outcome.replace(' ', '-')}'><strong>{html.escape(outcome)}</strong> — "
                             f"{html.escape(text)}</li>" for outcome, text in item["groups"].values())
            extra = [item["sure"], item["cause"]]
            if item["context"]:
                extra.append("Context that differs (not overhead): " + "; ".join(item["context"][:4])
                             + (f"; and {len(item['context']) - 4} more" if len(item["context"]) > 4 else "") + ".")
            notes = "".join(f"<p class='benchlib-note'>{html.escape(text)}</p>" for text in extra if text)
            blocks.append(f"<p><strong>Does {html.escape(item['arm'])} cost performance against "
                          f"{html.escape(str(item['baseline']))}?</strong></p><ul>{groups}</ul>{notes}")
        throttled = self.throttled_frame()
        if not throttled.empty:
            blocks.append("<p><strong>Throttled GPU:</strong> most samples of these comparisons ran while the GPU "
                          "was throttled; the verdict with all samples and without the throttled ones:</p>"
                          + figures.html_table(throttled))
        if self.missing_telemetry():
            blocks.append(f"<p class='benchlib-note'><strong>Missing:</strong> {html.escape(self.missing_telemetry())}</p>")
        if parts["stops"]:
            design = self.manifest.sequential or {}
            items = "".join(f"<li>{html.escape(text)}</li>" for text in parts["stops"])
            blocks.append(f"<p><strong>Sequential run</strong> ({html.escape(str(design.get('method', '')))}, margin "
                          f"±{100 * float(design.get('margin') or self.margin):g} %): per case, the invocations run "
                          f"and why it stopped:</p><ul>{items}</ul>")
        if parts["untested"]:
            items = "".join(f"<li>{html.escape(text)} <code>{html.escape(command)}</code></li>"
                            for text, command in parts["untested"])
            blocks.append(f"<p><strong>Not tested, and could matter:</strong></p><ul>{items}</ul>")
        return Html(f"<style>{CSS}</style><div class='benchlib-answer'>{''.join(blocks)}</div>{self._problems_html()}")

    def answer_line(self) -> str:
        """The answer in one line, per compared arm: which workload groups fail, are slower (by how much at
        most), faster, the same or not sure; ``benchlib run --report`` ends with it."""
        if self.baseline is None or len(self.arms) < 2:
            return "one arm ran, so nothing was compared."
        lines = []
        for item in self.answer_parts()["arms"]:
            rows = self.performance[self.performance["arm"] == item["arm"]]
            worst = slower_rows(rows).groupby("benchmark")["overhead"].max()
            named: dict[str, list[str]] = {}
            for benchmark, (outcome, _) in item["groups"].items():
                label = f"{benchmark} (up to +{100 * worst[benchmark]:.1f} %)" if benchmark in worst.index else benchmark
                named.setdefault(outcome, []).append(label)
            words = "; ".join(f"{outcome}: {', '.join(named[outcome])}"
                              for outcome in ("fails", "slower", "faster", "same", "not sure") if outcome in named)
            lines.append(f"{item['arm']} vs {item['baseline']}: {words or 'nothing measured in both'}.")
        return " ".join(lines)

    # ----------------------------------------------------------------- tables

    @cached_property
    def lines(self) -> pd.DataFrame:
        """Every performance comparison and failed case as read (benchlib.comparisons.comparison_lines):
        outcome, values with their spread between invocations, the change with its interval, p."""
        failures = {arm: self.failures(arm) for arm in self.arms[1:]} if self.baseline is not None else {}
        return comparisons.comparison_lines(self.performance, performance_rows(self.results), self.margin, failures)

    def summary_frame(self) -> pd.DataFrame:
        """The comparisons as people read them, one row per comparison or failed case, in outcome order
        (slower, faster, same, open, failed): :data:`benchlib.comparisons.LINE_COLUMNS`, ``line`` the
        compare_to style line. :meth:`summary_table` shows them a table per outcome and benchmark."""
        return self.lines

    def throttled_frame(self) -> pd.DataFrame:
        """The comparisons dominated by throttling (over DOMINATED_SHARE of an arm's samples), the verdict
        with all samples and without the throttled ones side by side, with the throttle's reasons."""
        shares = [c for c in ("throttled_share_arm", "throttled_share_base") if c in self.performance.columns]
        if not shares:
            return pd.DataFrame()
        rows = self.performance[(self.performance[shares].astype(float) > DOMINATED_SHARE).any(axis=1)]
        return pd.DataFrame([{
            "case": figures.case_label(row.benchmark, row.case, row.metric), "arm": row.arm,
            "throttled samples": f"{100 * float(row.throttled_share_arm or 0):.0f} % {row.arm}, "
                                 f"{100 * float(row.throttled_share_base or 0):.0f} % {row.baseline}",
            "why throttled": throttle_reasons_of(row) or "not reported",
            "with all samples": str(row.verdict), "without the throttled samples": str(row.verdict_unthrottled),
        } for row in rows.itertuples(index=False)])

    # ----------------------------------------------------------------- notebook display

    def figure(self, name: str) -> go.Figure:
        """One of :data:`FIGURES`."""
        builders: dict[str, Callable[[], go.Figure]] = {
            "forest": lambda: figures.forest(self.performance, self.margin),
            "distributions": lambda: figures.distributions(
                performance_rows(ok_rows(self.results)), self.arms),
            "telemetry": lambda: figures.telemetry(self.telemetry, self.arms),
            "energy": lambda: figures.energy(self.energy, self.arms),
            "ceilings": lambda: figures.ceilings(self.ceilings, self.arms, self.devices),
            "decomposition": lambda: figures.decomposition(self.decomposition),
        }
        if name not in builders:
            raise ValueError(f"unknown figure {name!r}; figures are {', '.join(FIGURES)}")
        return builders[name]()

    def show(self, name: str) -> Html:
        """A figure as HTML for a notebook cell; the first one shown embeds plotly.js."""
        fragment = figures.to_html(self.figure(name), include_plotlyjs=not self._plotlyjs_sent)
        self._plotlyjs_sent = True
        return Html(fragment)

    def overview(self) -> Html:
        """The run in a few facts (its problems are on the first screen, under :meth:`answer`)."""
        counts = self.manifest.counts()
        gpus = self.manifest.host.get("gpus") or []
        facts = [
            ("run", self.run_id), ("suite", self.manifest.suite), ("created", self.manifest.created_at),
            ("GPU", ", ".join(map(str, gpus)) or "none (CPU only)"),
            ("devices measured", ", ".join(self.devices) or "none"),
            ("arms", ", ".join(_arm_description(spec) for spec in self.manifest.arms)),
            ("baseline", self.baseline or "none"),
            ("invocations", ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"),
            ("equivalence margin", f"±{100 * self.margin:g} %"),
        ]
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
        return Html(f"<style>{CSS}</style><table class='benchlib-facts'>{rows}</table>")

    def command(self) -> tuple[str, bool]:
        """(the command that made the run, whether the manifest recorded it): the recorded one, else the
        equivalent ``benchlib run --suite ... --arms ... --invocations N`` from the manifest."""
        recorded = self.manifest.benchlib.get("command")
        if recorded:
            return str(recorded), True
        counts = [inv.invocation for inv in self.manifest.invocations]
        suite_file = Path(self.manifest.suite_file) if self.manifest.suite_file else None
        bundled = suite_file is None or suite_file.parent.name == "suites"  # params/suites/NAME.yaml: by name
        parts = ["benchlib", "run", "--suite", self.manifest.suite if bundled else str(suite_file),
                 "--arms", ",".join(str(spec.get("name")) for spec in self.manifest.arms)]
        if self.manifest.sequential:
            parts += ["--until", "conclusive"]
        elif counts:
            parts += ["--invocations", str(max(counts))]
        return shlex.join(parts), False

    def provenance(self) -> list[tuple[str, str]]:
        """(fact, value) for the footer: the command, the commit and version of benchlib that ran it, and
        the versions (torch, CUDA, driver, Python) each arm ran with."""
        command, recorded = self.command()
        facts = [("command", command if recorded else f"not recorded in the manifest; the equivalent: {command}"),
                 ("benchlib", f"{self.manifest.benchlib.get('version', 'unknown')}, commit "
                              f"{self.manifest.benchlib.get('commit') or 'not recorded'}"),
                 ("run", f"{self.run_id}, started {self.manifest.created_at}")]
        system = self.system_frame().set_index("")
        for title in ("torch", "CUDA (driver API / torch's runtime)", "NVIDIA driver", "Python"):
            if title in system.index:
                values = dict(system.loc[title])
                same = len(set(values.values())) == 1
                text = (next(iter(values.values())) + " (every arm)" if same and values
                        else "; ".join(f"{arm}: {value}" for arm, value in values.items()))
                facts.append((title, text))
        return facts

    def footer(self) -> Html:
        """How the run was made, to reproduce it: :meth:`provenance`, with a link back to the index."""
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td><code>{html.escape(v)}</code></td></tr>" if k == "command"
                       else f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in self.provenance())
        return Html(f"<style>{CSS}</style><table class='benchlib-facts benchlib-footer'>{rows}</table>"
                    "<p class='benchlib-note'><a href='../index.html'>All reports</a></p>")

    def _problems_html(self) -> str:
        if not self.problems:
            return ""
        items = "".join(f"<li>{html.escape(problem)}</li>" for problem in self.problems)
        return f"<div class='benchlib-problems'><strong>Problems with this run</strong><ul>{items}</ul></div>"

    def verdict(self) -> Html:
        paragraphs = "".join(f"<p>{html.escape(text)}</p>" for text in self.headline())
        return Html(f"<div class='benchlib-verdict'>{paragraphs}</div>")

    def env_table(self) -> Html:
        """The fingerprint differences in one table, known mechanisms first, with the effect (isolation,
        stack, container) each belongs to."""
        if len(self.arms) < 2:
            return Html("<p class='benchlib-note'>One arm: there is no other fingerprint to compare with.</p>")
        if self.env_diff.empty:
            return Html("<p class='benchlib-note'>The arms' fingerprints do not differ (noise keys such as "
                        "timestamps, pids and free memory are ignored).</p>")
        frame = self.env_frame()
        if frame.empty:
            return Html("<p class='benchlib-note'>The arms' fingerprints differ only in their namespace ids: "
                        "each container has its own namespaces.</p>")
        return Html(figures.html_table(frame))

    def env_frame(self) -> pd.DataFrame:
        """The one environment table (benchlib.envtable.env_frame): known mechanisms first, the effect each
        difference belongs to, values as read."""
        kinds = {str(spec.get("name")): str(spec.get("kind", "")) for spec in self.manifest.arms}
        return envtable.env_frame(self.env_diff, self.arms, self.baseline, kinds)

    def system_frame(self) -> pd.DataFrame:
        """GPU, driver, CUDA, torch, Python, CPU, OS, container engine and image per arm."""
        return envtable.system_frame(self.envs, self.manifest.arms, self.arms)

    def system_table(self) -> Html:
        """The system and software of each arm, from its fingerprints and the manifest."""
        if not self.arms:
            return Html("<p class='benchlib-note'>No arm ran: no system to describe.</p>")
        note = ("" if self.envs else "<p class='benchlib-note'>No fingerprint (env.json) was recorded: only the "
                "manifest's facts are shown.</p>")
        return Html(note + figures.html_table(self.system_frame()))

    def decomposition_frame(self) -> pd.DataFrame:
        """The decomposition as people read it: one row per case and metric, effects as overhead."""
        rows = []
        for (benchmark, case, metric), part in self.decomposition.groupby(stats.CASE_KEYS, sort=False):
            by_effect = {row.effect: row for row in part.itertuples(index=False)}
            record = {"case": f"{benchmark} {case}", "metric": metric}
            for effect, title in DECOMPOSITION_TITLES.items():
                record[title] = overhead_text(by_effect[effect]) if effect in by_effect else "—"
            rows.append({**record, "reading": part["reading"].iloc[0]})
        return pd.DataFrame(rows)

    def decomposition_notes(self) -> list[str]:
        """Which arms the decomposition uses, what it cannot compute and why, in sentences."""
        if "native" not in self.roles:
            return ["No decomposition: it needs a native arm (the host) to divide by."]
        used = ", ".join(f"{role} = {arm}" for role, arm in self.roles.items())
        others = [spec["name"] for spec in self.manifest.arms
                  if role_of(spec) in self.roles and spec["name"] not in self.roles.values()]
        notes = [f"Arms: {used}" + (f" (not used here: {', '.join(others)})." if others else ".")]
        lacking = (missing_effects(self.roles), image_mismatch(self.manifest.arms, self.roles))
        return notes + [note for note in lacking if note]

    def decomposition_table(self) -> Html:
        notes = "".join(f"<p class='benchlib-note'>{html.escape(note)}</p>" for note in self.decomposition_notes())
        if self.decomposition.empty:
            return Html(notes)
        return Html(notes + figures.html_table(self.decomposition_frame()))

    def summary_table(self) -> Html:
        """The comparisons grouped by outcome (slower, faster, the same, open, failed), a table per
        benchmark with its case parameters as columns (benchlib.comparisons)."""
        if self.lines.empty:
            return Html("<p class='benchlib-note'>No comparison: see the problems at the top.</p>")
        blocks, seen = [], set()
        for outcome, benchmark, part in comparisons.grouped(self.lines):
            if outcome not in seen:
                seen.add(outcome)
                count = int(self.lines["outcome"].eq(outcome).sum())
                title = comparisons.OUTCOME_TITLES[outcome]
                blocks.append(f"<p class='benchlib-outcome benchlib-{outcome}'><strong>{html.escape(title)}</strong> "
                              f"({count})</p>")
            blocks.append(f"<p class='benchlib-caption'>{html.escape(benchmark)}</p>"
                          + figures.html_table(comparisons.table_of(part), "benchlib-table benchlib-compare"))
        return Html(f"<style>{CSS}{comparisons.CSS}</style>" + "".join(blocks))


def _arm_description(spec: dict[str, Any]) -> str:
    """``name (kind, engine, image, flags)`` from a manifest arm record."""
    details = [spec.get("kind"), spec.get("engine"), spec.get("image"), " ".join(spec.get("run_flags") or [])]
    env = spec.get("env") or {}
    details += [f"{k}={v}" for k, v in env.items()]
    if _raised(spec):
        details.append("RAISED PRIVILEGES: see the problems")
    return f"{spec.get('name')} ({', '.join(str(d) for d in details if d)})"


def role_of(spec: dict[str, Any]) -> str | None:
    """The decomposition role of a manifest's arm record: its kind (docs/architecture.md, "Arms")."""
    kind = spec.get("kind")
    return str(kind) if kind in stats.ROLES else None


def decomposition_roles(arms: list[dict[str, Any]], baseline: str | None) -> dict[str, str]:
    """Role -> arm name from the manifest's arms: per kind, the baseline if it is of that kind, else
    the suite's first arm of it."""
    roles: dict[str, str] = {}
    for spec in arms:
        role = role_of(spec)
        if role is not None and (role not in roles or spec.get("name") == baseline):
            roles[role] = str(spec.get("name"))
    return {role: roles[role] for role in stats.ROLES if role in roles}


#: The equivalence margin of a fixed-design run's report ("no overhead beyond 2 %").
REPORT_MARGIN = 0.02


def analyse(run_dir: str | Path | None = None, margin: float | None = None, baseline: str | None = None) -> Analysis:
    """Load, check and compare a run (default: :func:`default_run_dir`); see the module docstring.
    ``margin``: None takes a sequential run's own margin (its manifest), else :data:`REPORT_MARGIN`."""
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir()
    manifest = load_manifest(run_dir)
    if margin is None:
        margin = float((manifest.sequential or {}).get("margin") or REPORT_MARGIN)
    planned = [str(spec["name"]) for spec in manifest.arms]
    chosen = baseline if baseline in planned else (planned[0] if planned else None)
    arms = ([chosen] if chosen else []) + [arm for arm in planned if arm != chosen]
    results, missing = read_results(run_dir, manifest)
    telemetry = load_telemetry(run_dir).assign(run_id=manifest.run_id)  # the folder may have been renamed
    comparison = _compare(results, telemetry, chosen, margin)
    envs = load_envs(run_dir)
    hardware = _hardware_findings(manifest, results, telemetry, envs, chosen)
    problems = ([_finding_text(finding) for finding in hardware]
                + _arm_problems(manifest, arms, chosen, baseline, results)
                + _invocation_problems(manifest, missing, run_dir)
                + _case_problems(results, arms) + _check_problems(results) + _stat_problems(comparison))
    return Analysis(run_dir=run_dir, manifest=manifest, arms=arms, baseline=chosen, margin=margin, results=results,
                    telemetry=telemetry, comparison=comparison, env_diff=envdiff.env_diff(envs, arms),
                    problems=problems, hardware=hardware, envs=envs)


def _hardware_findings(manifest: Manifest, results: pd.DataFrame, telemetry: pd.DataFrame,
                       envs: dict[tuple, dict[str, Any]], baseline: str | None) -> list[Finding]:
    """What benchlib.checks finds: a baseline that is not bare metal (first: it qualifies every
    verdict), a GPU clock stuck below its maximum under load in any arm, memory differences between arms."""
    kinds = {str(spec.get("name")): str(spec.get("kind", "native")) for spec in manifest.arms}
    found = bare_metal_findings(envs, baseline, kinds)
    if not telemetry.empty:
        found += stuck_clock_findings(clock_fractions(telemetry, envs))
    found += memory_findings(memory_by_arm(results, telemetry, envs), baseline)
    return found


def _finding_text(finding: Finding) -> str:
    hints = f" Look at: {'; '.join(finding.hints)}." if finding.severity == "problem" and finding.hints else ""
    return finding.message + hints


def _check_problems(results: pd.DataFrame) -> list[str]:
    """Correctness checks (benchlib.findings) that failed: a problem, never an overhead."""
    return [str(text) for text in check_problems(results)["text"]] if not results.empty else []


def _compare(results: pd.DataFrame, telemetry: pd.DataFrame, baseline: str | None,
             margin: float) -> pd.DataFrame:
    """stats.compare against the baseline (with telemetry, also without throttled samples).

    Only performance metrics are compared (benchlib.metricspec roles): a context metric (thread counts,
    sizes, totals) that differs is a finding (benchlib.findings.context_findings), a failed check a
    problem, never an overhead. Metrics the baseline has no successful sample of are left out: the run's
    problems already say why.
    """
    empty = pd.DataFrame(columns=stats.COMPARE_COLUMNS)
    if baseline is None:
        return empty
    results = performance_rows(results)
    frame = results if telemetry.empty else stats.mark_throttled(results, telemetry)
    method = stats.compare if telemetry.empty else stats.compare_with_without_throttled
    base_ok = ok_rows(frame)
    measured = set(map(tuple, base_ok.loc[base_ok["arm"] == baseline, ["benchmark", "metric"]].to_numpy().tolist()))
    keep = [key in measured for key in zip(frame["benchmark"], frame["metric"])]
    subset = frame[keep]
    if subset.empty:
        return empty
    with np.errstate(divide="ignore", invalid="ignore"):  # each metric's direction from its MetricSpec
        compared = method(subset, baseline=baseline, margin=margin, higher_is_better=higher_is_better(subset))
    return compared if telemetry.empty else _with_reasons(compared, telemetry)


def _with_reasons(comparison: pd.DataFrame, telemetry: pd.DataFrame) -> pd.DataFrame:
    """The comparison with why the GPU was throttled in the arm's and the baseline's samples
    (benchlib.throttling), columns throttle_reasons_arm and throttle_reasons_base ("" when not)."""
    reasons = throttle_reasons(telemetry)
    out = comparison.merge(reasons.rename(columns={"reasons": "throttle_reasons_arm"}),
                           on=["arm", "benchmark", "case"], how="left")
    out = out.merge(reasons.rename(columns={"arm": "baseline", "reasons": "throttle_reasons_base"}),
                    on=["baseline", "benchmark", "case"], how="left")
    return out.fillna({"throttle_reasons_arm": "", "throttle_reasons_base": ""})

