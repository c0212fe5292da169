"""The analysis of a run and its published report (docs/architecture.md, "Data flow", last two steps).

:func:`analyse` loads a run, checks it, compares every arm with the baseline (benchlib.stats),
diffs the fingerprints (benchlib.envdiff) and derives energy per unit of work and the fraction of
the hardware ceiling; the :class:`Analysis` it returns holds the tables, the headline in words and
the figures (benchlib.figures). ``notebooks/analysis.ipynb`` is a thin page over it.

:func:`build_report` runs that notebook with papermill, exports it with nbconvert (no code, no
prompts, plotly.js embedded once so the page works offline) to ``docs/reports/<run_id>.html``,
regenerates ``docs/index.html`` from ``docs/reports/index.json``, and writes ``summary.csv``,
``summary.json`` and ``comparison_report.md`` into the run directory. Problems with the run (one
arm, a missing baseline, failed or missing invocations, cases in one arm only) do not stop it:
they are listed at the top of the report and in :attr:`Report.problems`.
"""
from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import _atomic, ceilings, envdiff, figures, formats, paths, schema, stats
from .arms import raised_privileges
from .layout import INDEX_HTML, INDEX_JSON, MARKDOWN, REPORTS_DIR, RESULTS_FILE, SUMMARY_CSV, SUMMARY_JSON, find_runs, report_name
from .errors import BenchlibError
from .layout import MANIFEST_FILE
from .manifest import COMPLETE, FAILED, Invocation, Manifest
from .redact import redact_obj, redact_text
from .results import load_envs, load_manifest, load_telemetry

NOTEBOOK = "analysis.ipynb"
FIGURES = ("forest", "decomposition", "distributions", "telemetry", "energy", "ceilings")
THROTTLED_SHARE = 0.05  # above this share of throttled samples, the report says so
MAX_LISTED = 10  # problems of one kind listed one by one; the rest are counted
NAMED_CASES = 3  # cases named per verdict in the headline; the rest are counted
#: work unit -> (scale, unit of energy per work) for energy per unit of work.
ENERGY_UNITS = {"FLOP": (1e12, "J/TFLOP"), "B": (1e9, "J/GB"), "token": (1.0, "J/token")}

# Selectors carry .jp-RenderedHTMLCommon too, to outrank the lab theme's right-aligned table cells.
_CSS = """
table.benchlib-facts th, table.benchlib-facts td,
.jp-RenderedHTMLCommon table.benchlib-facts th, .jp-RenderedHTMLCommon table.benchlib-facts td {
  text-align: left; padding: 2px 14px 2px 0; border: none; background: none; }
div.benchlib-problems { border-left: 4px solid #d62728; background: #fdf1f1; padding: 8px 14px; margin: 10px 0; }
div.benchlib-verdict { border-left: 4px solid #1f77b4; background: #f2f7fc; padding: 8px 14px; margin: 8px 0;
  font-size: 1.05em; line-height: 1.5; }
div.benchlib-scroll { overflow-x: auto; max-width: 100%; }
table.benchlib-table { border-collapse: collapse; font-size: 0.92em; margin: 6px 0; }
table.benchlib-table th, table.benchlib-table td,
.jp-RenderedHTMLCommon table.benchlib-table th, .jp-RenderedHTMLCommon table.benchlib-table td {
  border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; overflow-wrap: break-word; }
table.benchlib-table td:first-child { overflow-wrap: anywhere; min-width: 12em; max-width: 24em; }
table.benchlib-table th, .jp-RenderedHTMLCommon table.benchlib-table th { background: #f4f4f4; }
p.benchlib-note { color: #555; }
"""
_TEMPLATE_NAME = "benchlib_report.html.j2"
# The lab template without require.js, MathJax and Mermaid (they load from a CDN, and the report
# needs none of them: plotly.js is embedded by the first figure), and with markdown cells rendered
# as text rather than inside an input area.
_TEMPLATE = """{%- extends 'index.html.j2' -%}
{% from 'cell_id_anchor.j2' import cell_id_anchor %}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block markdowncell scoped %}
<div {{ cell_id_anchor(cell) }} class="jp-Cell jp-MarkdownCell jp-Notebook-cell">
<div class="jp-RenderedHTMLCommon jp-RenderedMarkdown jp-MarkdownOutput" data-mime-type="text/markdown">
{{ cell.source | markdown2html | strip_files_prefix }}
</div>
</div>
{%- endblock markdowncell %}
"""


@dataclass
class Report:
    """What :func:`build_report` produced."""

    html: Path
    problems: list[str]
    comparable: bool  # at least one case has results in the baseline and another arm
    summary_csv: Path
    summary_json: Path
    markdown: Path


@dataclass(frozen=True)
class Html:
    """HTML a notebook cell shows as such."""

    text: str

    def _repr_html_(self) -> str:
        return self.text


# --------------------------------------------------------------------------- loading


def default_run_dir() -> Path:
    """The bundled sample (``outputs/sample/``, or the latest run in it) if present, else the latest
    run under ``outputs/``."""
    outputs = paths.default_outputs()
    sample = outputs / "sample"
    if (sample / MANIFEST_FILE).is_file():
        return sample
    for folder in (sample, outputs):
        runs = sorted(find_runs(folder), key=lambda p: p.stat().st_mtime)
        if runs:
            return runs[-1]
    raise BenchlibError(f"no run under {outputs}: run `benchlib run` first, or pass run_dir.")


def _read_results(run_dir: Path, manifest: Manifest) -> tuple[pd.DataFrame, list[Invocation]]:
    """Results of every complete invocation that has them, and the complete ones that do not."""
    complete = [inv for inv in manifest.invocations if inv.status == COMPLETE]
    missing = [inv for inv in complete if not (run_dir / inv.rel_dir / RESULTS_FILE).is_file()]
    frames = [formats.read_parquet(run_dir / inv.rel_dir / RESULTS_FILE, "results") for inv in complete if inv not in missing]
    frames = [frame for frame in frames if not frame.empty]
    results = schema.conform(pd.concat(frames, ignore_index=True)) if frames else schema.empty_results()
    return results, missing


def is_performance(unit: object) -> bool:
    """A time in seconds (what samples are timed in) or a rate: what overhead is about. Correctness
    metrics (rel_error) and diagnostics (counts, bytes, throttled microseconds) are not."""
    return isinstance(unit, str) and (unit == "s" or unit.endswith("/s"))


def _ok(results: pd.DataFrame) -> pd.DataFrame:
    ok = results["status"].eq(schema.STATUS_OK).to_numpy(dtype=bool, na_value=False)
    return results.loc[ok & np.isfinite(results["value"].to_numpy(dtype=float, na_value=np.nan))]


# --------------------------------------------------------------------------- derived tables


def energy_per_work(results: pd.DataFrame, telemetry: pd.DataFrame) -> pd.DataFrame:
    """GPU energy per unit of work, per invocation of each timed case with work.

    The window of an invocation's case is [first sample start, last sample end]; its energy is the
    energy counter's increase over it (interpolated between reads), or where the counter's reads
    do not bracket the window, the mean power of the polls inside it (the nearest one when none
    is) times its length; summed over GPUs. Columns: benchmark, case, metric, arm, invocation,
    value (energy per unit of work), unit, energy_j, work. Empty without telemetry; NaN for an
    invocation whose telemetry has neither energy nor power readings.
    """
    columns = ["benchmark", "case", "metric", "arm", "invocation", "value", "unit", "energy_j", "work"]
    ok = _ok(results)
    timed = ok[(ok["unit"] == "s") & ok["work"].notna() & (ok["work"] > 0)]
    if telemetry.empty or timed.empty:
        return pd.DataFrame(columns=columns)
    keys = ["arm", "benchmark", "case", "invocation"]
    windows = timed.groupby([*keys, "metric"], sort=False).agg(
        start=("start_ns", "min"), end=("end_ns", "max"), work=("work", "sum"), work_unit=("work_unit", "first"),
    ).reset_index()
    polls = {key: part.sort_values("timestamp_ns") for key, part in telemetry.groupby(keys, sort=False)}
    rows = []
    for window in windows.itertuples(index=False):
        part = polls.get((window.arm, window.benchmark, window.case, window.invocation))
        joules = np.nan if part is None else _window_energy(part, window.start, window.end)
        scale, unit = ENERGY_UNITS.get(str(window.work_unit), (1.0, f"J/{window.work_unit}"))
        rows.append({"benchmark": window.benchmark, "case": window.case, "metric": window.metric, "arm": window.arm,
                     "invocation": window.invocation, "value": joules / window.work * scale, "unit": unit,
                     "energy_j": joules, "work": window.work})
    return pd.DataFrame(rows, columns=columns)


def _window_energy(polls: pd.DataFrame, start: int, end: int) -> float:
    """Joules spent by all GPUs in [start, end] (ns), from the polls of one invocation (sorted by time)."""
    joules = [_gpu_energy(gpu, start, end) for _, gpu in polls.groupby("gpu_index")]
    finite = [j for j in joules if np.isfinite(j)]
    return float(sum(finite)) if finite else np.nan


def _gpu_energy(gpu: pd.DataFrame, start: int, end: int) -> float:
    """One GPU's joules in [start, end]: the energy counter interpolated at both ends when its reads
    bracket the window, else mean power × length (the polls inside, or the one nearest its middle)."""
    stamps = gpu["timestamp_ns"].to_numpy(dtype=np.int64)
    # relative to the window's start: epoch nanoseconds as float64 would round to 256 ns
    t, length = (stamps - start).astype(float), float(end - start)
    counter = gpu["energy_mj"].to_numpy(dtype=float, na_value=np.nan)
    read = np.isfinite(counter)
    if read.sum() >= 2 and t[read][0] <= 0 and length <= t[read][-1]:
        return float(np.interp(length, t[read], counter[read]) - np.interp(0.0, t[read], counter[read])) / 1e3
    power = gpu["power_w"].to_numpy(dtype=float, na_value=np.nan)
    valid = np.isfinite(power)
    if not valid.any():
        return np.nan
    inside = valid & (t >= 0) & (t <= length)
    watts = power[inside].mean() if inside.any() else power[valid][np.argmin(np.abs(t[valid] - length / 2))]
    return float(watts) * length / 1e9


def ceiling_fractions(results: pd.DataFrame) -> pd.DataFrame:
    """Median rate per case and arm as a fraction of the hardware ceiling, where one is known.

    The ceiling is the one measured in the run when ``benchlib.ceilings.measured_ceilings`` exists
    and has one for the device (best matmul per dtype for FLOP/s, best copy for B/s: the ceiling
    some arm reached), else the datasheet peak (``ceilings.spec_for``, by the case's dtype for
    FLOP/s, memory bandwidth for B/s). Columns: benchmark, case, metric, arm, device, rate,
    rate_unit, ceiling, source, fraction (NaN where no ceiling is known).
    """
    columns = ["benchmark", "case", "metric", "arm", "device", "rate", "rate_unit", "ceiling", "source", "fraction"]
    ok = _ok(results)
    timed = ok[(ok["unit"] == "s") & ok["work"].notna() & (ok["work"] > 0)]
    if timed.empty:
        return pd.DataFrame(columns=columns)
    summary = stats.summarise(timed)
    first = timed.drop_duplicates(stats.ARM_KEYS)[[*stats.ARM_KEYS, "work", "work_unit", "device", "params"]]
    frame = summary[[*stats.ARM_KEYS, "median"]].merge(first, on=stats.ARM_KEYS)
    measure: Callable[[pd.DataFrame], dict[str, dict]] | None = getattr(ceilings, "measured_ceilings", None)
    measured = measure(results) if measure else {}
    rows = []
    for row in frame.itertuples(index=False):
        rate_unit = f"{row.work_unit}/s"
        dtype = str(json.loads(row.params or "{}").get("dtype", ""))
        ceiling, source = _ceiling(str(row.device), rate_unit, dtype, measured)
        rate = row.work / row.median
        rows.append({"benchmark": row.benchmark, "case": row.case, "metric": row.metric, "arm": row.arm,
                     "device": row.device, "rate": rate, "rate_unit": rate_unit, "ceiling": ceiling,
                     "source": source, "fraction": rate / ceiling if ceiling else np.nan})
    return pd.DataFrame(rows, columns=columns)


def _ceiling(device: str, rate_unit: str, dtype: str, measured: dict[str, dict]) -> tuple[float | None, str | None]:
    """(ceiling in rate_unit, where it comes from) for one device, or (None, None)."""
    best_matmul = measured.get("matmul_tflops", {}).get(device, {}).get(dtype)
    best_copy = measured.get("copy_gbs", {}).get(device)
    spec = ceilings.spec_for(device)
    if rate_unit == "FLOP/s":
        if best_matmul:
            return best_matmul * 1e12, f"best {dtype} matmul measured in this run"
        if spec and dtype in spec.tflops:
            return spec.tflops[dtype] * 1e12, spec.source
    if rate_unit == "B/s":
        if best_copy:
            return best_copy * 1e9, "best copy measured in this run"
        if spec:
            return spec.mem_bw_gbs * 1e9, spec.source
    return None, None


# --------------------------------------------------------------------------- problems


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
    with_results = set(_ok(results)["arm"])
    for arm in arms:
        if arm not in with_results:
            role = "the baseline arm" if arm == baseline else "arm"
            problems.append(f"{role} {arm} has no successful results: it cannot be compared.")
    return problems


def _privilege_problems(manifest: Manifest) -> list[str]:
    """Arms that ran with raised privileges (their flags asked) or as root inside a container."""
    problems = []
    for spec in manifest.arms:
        raised = raised_privileges(spec.get("run_flags") or [], str(spec.get("kind")))
        if raised:
            problems.append(f"arm {spec.get('name')} ran with raised privileges, as its flags ask: "
                            f"{'; '.join(raised)}. Its numbers describe that container, not a default one.")
        probe = (spec.get("preflight") or {}).get("probe") or {}
        if spec.get("kind") == "container" and probe.get("uid") == 0:
            problems.append(f"arm {spec.get('name')} ran as root inside its container (UID 0): unset "
                            "BENCHLIB_CONTAINER_USER, or set it to a non-root UID:GID.")
    return problems


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
    present = _ok(results).groupby(["benchmark", "case"], sort=False)["arm"].agg(set)
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
        for row in hot.itertuples(index=False):
            problems.append(f"{100 * getattr(row, column):.0f} % of the samples of {getattr(row, who)} in "
                            f"{row.benchmark} {row.case} ran while the GPU was throttled; the summary table "
                            "also shows the verdict without them.")
    return problems


# --------------------------------------------------------------------------- analysis


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
        """Comparison rows of times and rates (the overhead questions)."""
        return self.comparison[self.comparison["unit"].map(is_performance).astype(bool)]

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
        performance = self.results[self.results["unit"].map(is_performance).astype(bool)]
        return stats.decompose(performance, **self.roles)

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
            parts.append(f"overhead in {len(worse)}: " + _named(worse, lambda r: f"{r.verdict} — {r.band}"))
        faster = rows[codes.eq("overhead") & (rows["overhead"] < 0)].sort_values("overhead")
        if not faster.empty:
            parts.append(f"faster in {len(faster)} ({stats.FASTER_BAND}): " + _named(faster, lambda r: r.verdict))
        unsure = rows[codes.eq("inconclusive")]
        if not unsure.empty:
            parts.append(f"inconclusive in {len(unsure)}: "
                         + _named(unsure, lambda r: r.verdict.removeprefix("inconclusive: ")))
        too_few = int(codes.eq("too_few").sum())
        if too_few:
            parts.append(f"{too_few} with too few invocations for a confidence interval")
        return f"{opening} {'; '.join(parts)}.{self._cause_sentence(arm, codes)}"

    def _cause_sentence(self, arm: str, codes: pd.Series) -> str:
        """What differs in the fingerprints, when not every case is equivalent."""
        if codes.eq("equivalent").all():
            return ""
        causes = envdiff.likely_causes(self.env_diff, arm, str(self.baseline))
        if not causes:
            return " No known mechanism differs between the two fingerprints; see the environment differences."
        lead = "Likely cause" if codes.eq("overhead").any() else "Known differences"
        return f" {lead}: {'; '.join(causes)}; see the environment differences."

    def short_verdict(self) -> str:
        """One line per compared arm, for the index of reports."""
        if self.baseline is None or len(self.arms) < 2:
            return "one arm: nothing compared"
        lines = []
        for arm in self.arms[1:]:
            rows = self.performance[self.performance["arm"] == arm]
            codes = rows["verdict_code"]
            text = f"{arm} vs {self.baseline}: {int(codes.eq('equivalent').sum())}/{len(rows)} within ±{100 * self.margin:g} %"
            worse = rows[codes.eq("overhead") & (rows["overhead"] > 0)]
            if not worse.empty:
                text += f", overhead up to {100 * worse['overhead'].max():.0f} %"
            faster = codes.eq("overhead") & (rows["overhead"] < 0)
            if faster.any():
                text += f", faster in {int(faster.sum())}"
            if codes.eq("inconclusive").any():
                text += f", {int(codes.eq('inconclusive').sum())} inconclusive"
            lines.append(text)
        return "; ".join(lines)

    # ----------------------------------------------------------------- tables

    def summary_frame(self) -> pd.DataFrame:
        """The comparison as people read it: one row per case, metric and arm."""
        rows = []
        for row in self.comparison.itertuples(index=False):
            record = {
                "case": figures.case_label(row.benchmark, row.case, row.metric), "arm": row.arm,
                "invocations": f"{row.n_inv_arm} / {row.n_inv_base}",
                "baseline median": figures.format_value(row.median_base, str(row.unit)),
                "arm median": figures.format_value(row.median_arm, str(row.unit)),
                "ratio [95 % CI]": _ratio_text(row.ratio, row.ci_low, row.ci_high),
                "verdict": row.verdict, "band": row.band if isinstance(row.band, str) else "",
                "p TOST (Holm)": row.p_tost_holm, "p Welch (Holm)": row.p_welch_holm,
            }
            if "verdict_unthrottled" in self.comparison.columns:
                record["without throttled samples"] = row.verdict_unthrottled
            rows.append(record)
        return pd.DataFrame(rows)

    # ----------------------------------------------------------------- notebook display

    def figure(self, name: str) -> go.Figure:
        """One of :data:`FIGURES`."""
        builders: dict[str, Callable[[], go.Figure]] = {
            "forest": lambda: figures.forest(self.performance, self.margin),
            "distributions": lambda: figures.distributions(
                _ok(self.results)[lambda f: f["unit"].map(is_performance).astype(bool)], self.arms),
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
        """The run in a few facts, then its problems."""
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
        return Html(f"<style>{_CSS}</style><table class='benchlib-facts'>{rows}</table>{self._problems_html()}")

    def _problems_html(self) -> str:
        if not self.problems:
            return ""
        items = "".join(f"<li>{html.escape(problem)}</li>" for problem in self.problems)
        return f"<div class='benchlib-problems'><strong>Problems with this run</strong><ul>{items}</ul></div>"

    def verdict(self) -> Html:
        paragraphs = "".join(f"<p>{html.escape(text)}</p>" for text in self.headline())
        return Html(f"<div class='benchlib-verdict'>{paragraphs}</div>")

    def env_table(self) -> Html:
        """The fingerprint differences, known mechanisms first."""
        if len(self.arms) < 2:
            return Html("<p class='benchlib-note'>One arm: there is no other fingerprint to compare with.</p>")
        if self.env_diff.empty:
            return Html("<p class='benchlib-note'>The arms' fingerprints do not differ (noise keys such as "
                        "timestamps, pids and free memory are ignored).</p>")
        frame = self.env_diff.drop(columns=["differs"]).rename(
            columns={"mechanism": "known mechanism", "why": "why it matters", "varies_in": "varies within"})
        return Html(figures.html_table(frame.fillna("")))

    def decomposition_frame(self) -> pd.DataFrame:
        """The decomposition as people read it: one row per case and metric, effects as overhead."""
        rows = []
        for (benchmark, case, metric), part in self.decomposition.groupby(stats.CASE_KEYS, sort=False):
            by_effect = {row.effect: row for row in part.itertuples(index=False)}
            record = {"case": f"{benchmark} {case}", "metric": metric}
            for effect, title in DECOMPOSITION_TITLES.items():
                record[title] = _overhead_text(by_effect[effect]) if effect in by_effect else "—"
            rows.append({**record, "reading": part["reading"].iloc[0]})
        return pd.DataFrame(rows)

    def decomposition_notes(self) -> list[str]:
        """Which arms the decomposition uses, what it cannot compute and why, in sentences."""
        if "native" not in self.roles:
            return ["No decomposition: it needs a native arm (the host) to divide by."]
        used = ", ".join(f"{role} = {arm}" for role, arm in self.roles.items())
        others = [spec["name"] for spec in self.manifest.arms
                  if spec.get("kind") in self.roles and spec["name"] not in self.roles.values()]
        notes = [f"Arms: {used}" + (f" (not used here: {', '.join(others)})." if others else ".")]
        lacking = (_missing_effects(self.roles), _image_mismatch(self.manifest.arms, self.roles))
        return notes + [note for note in lacking if note]

    def decomposition_table(self) -> Html:
        notes = "".join(f"<p class='benchlib-note'>{html.escape(note)}</p>" for note in self.decomposition_notes())
        if self.decomposition.empty:
            return Html(notes)
        return Html(notes + figures.html_table(self.decomposition_frame()))

    def decomposition_env(self, effect: str) -> Html:
        """The fingerprint keys that differ between native and the arm of one effect ("isolation" or "stack")."""
        role = {"isolation": "isolated", "stack": "rootfs"}[effect]
        native, arm = self.roles.get("native"), self.roles.get(role)
        if native is None or arm is None:
            return Html(f"<p class='benchlib-note'>No {html.escape(role)} arm in this run: nothing to compare with native.</p>")
        diff = envdiff.between(self.env_diff, arm, native)
        if diff.empty:
            return Html(f"<p class='benchlib-note'>The fingerprints of {html.escape(native)} and {html.escape(arm)} "
                        "do not differ (noise keys such as timestamps and pids are ignored).</p>")
        repeated = diff["mechanism"].notna() & diff["mechanism"].duplicated()
        frame = diff.assign(why=diff["why"].mask(repeated, "")).rename(
            columns={"mechanism": "known mechanism", "why": "why it matters"})
        return Html(figures.html_table(frame.fillna("")))

    def summary_table(self) -> Html:
        if self.comparison.empty:
            return Html("<p class='benchlib-note'>No comparison: see the problems at the top.</p>")
        return Html(figures.html_table(self.summary_frame()))


def _named(rows: pd.DataFrame, describe: Callable[[Any], str]) -> str:
    """``case: description`` for the first NAMED_CASES rows, then how many more there are."""
    named = [f"{figures.case_label(r.benchmark, r.case, r.metric)}: {describe(r)}"
             for r in rows.head(NAMED_CASES).itertuples(index=False)]
    more = len(rows) - len(named)
    return "; ".join(named) + (f"; and {more} more (see the summary table)" if more else "")


def _ratio_text(ratio: float, low: float, high: float) -> str:
    """``1.163 [1.133, 1.307]``, ``1.163 (no CI)`` or ``—``."""
    if not np.isfinite(ratio):
        return "—"
    return f"{ratio:.3f} [{low:.3f}, {high:.3f}]" if np.isfinite(low) and np.isfinite(high) else f"{ratio:.3f} (no CI)"


#: effect of stats.decompose -> its column in the decomposition table.
DECOMPOSITION_TITLES = {
    "isolation": "isolation effect [95 % CI]", "stack": "stack effect [95 % CI]",
    "interaction": "interaction [95 % CI]", "total": "total [95 % CI]",
}
#: role -> how to add its arm to a run, for the sentence on what the decomposition lacks.
_ROLE_HINTS = {
    "native": "add native to --arms",
    "isolated": "add isolated to --arms",
    "rootfs": "export the container's image with `benchlib image export IMAGE DIR`, then add rootfs to --arms "
              "with BENCHLIB_ROOTFS=DIR",
    "container": "add container to --arms",
}


def decomposition_roles(arms: list[dict[str, Any]], baseline: str | None) -> dict[str, str]:
    """Role -> arm name from the manifest's arms: per kind, the baseline if it is of that kind, else
    the suite's first arm of it."""
    roles: dict[str, str] = {}
    for spec in arms:
        kind = spec.get("kind")
        if kind in stats.ROLES and (kind not in roles or spec.get("name") == baseline):
            roles[kind] = str(spec.get("name"))
    return {role: roles[role] for role in stats.ROLES if role in roles}


def _missing_effects(roles: dict[str, str]) -> str:
    """One sentence on the effects the run's arms cannot give, or ""."""
    missing = [effect for effect, sides in stats.EFFECTS.items() if not set(sum(sides, ())) <= set(roles)]
    if not missing:
        return ""
    lacking = [role for role in stats.ROLES if role not in roles]
    effects = ", ".join(DECOMPOSITION_TITLES[effect].removesuffix(" [95 % CI]") for effect in missing)
    arms = " or ".join([", ".join(lacking[:-1]), lacking[-1]] if len(lacking) > 1 else lacking)
    return (f"Not computed: {effects}, as this run has no {arms} arm "
            f"({'; '.join(_ROLE_HINTS[role] for role in lacking)}).")


def _image_mismatch(arms: list[dict[str, Any]], roles: dict[str, str]) -> str:
    """A sentence when the rootfs arm's image is not the container arm's (by image ID), or ""."""
    ids = {role: ((spec.get("preflight") or {}).get("image_id")) for spec in arms
           for role in ("rootfs", "container") if roles.get(role) == spec.get("name")}
    if len(ids) < 2 or not all(ids.values()) or ids["rootfs"] == ids["container"]:
        return ""
    return (f"The rootfs arm's image ({str(ids['rootfs'])[:19]}) is not the container arm's ({str(ids['container'])[:19]}): "
            "the stack effect is another image's, so the interaction mixes two software stacks.")


def _overhead_text(row: Any) -> str:
    """``+10.2 % [+7.6, +11.9]``, ``+10.2 % (no CI)`` or ``—`` for a row of stats.decompose."""
    if not np.isfinite(row.overhead):
        return "—"
    if not (np.isfinite(row.overhead_low) and np.isfinite(row.overhead_high)):
        return f"{100 * row.overhead:+.1f} % (no CI)"
    return f"{100 * row.overhead:+.1f} % [{100 * row.overhead_low:+.1f}, {100 * row.overhead_high:+.1f}]"


def _arm_description(spec: dict[str, Any]) -> str:
    """``name (kind, engine, image, flags)`` from a manifest arm record."""
    details = [spec.get("kind"), spec.get("engine"), spec.get("image"), " ".join(spec.get("run_flags") or [])]
    env = spec.get("env") or {}
    details += [f"{k}={v}" for k, v in env.items()]
    if raised_privileges(spec.get("run_flags") or [], str(spec.get("kind"))):
        details.append("RAISED PRIVILEGES: see the problems")
    return f"{spec.get('name')} ({', '.join(str(d) for d in details if d)})"


def analyse(run_dir: str | Path | None = None, margin: float = 0.02, baseline: str | None = None) -> Analysis:
    """Load, check and compare a run (default: :func:`default_run_dir`); see the module docstring."""
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir()
    manifest = load_manifest(run_dir)
    planned = [str(spec["name"]) for spec in manifest.arms]
    chosen = baseline if baseline in planned else (planned[0] if planned else None)
    arms = ([chosen] if chosen else []) + [arm for arm in planned if arm != chosen]
    results, missing = _read_results(run_dir, manifest)
    telemetry = load_telemetry(run_dir).assign(run_id=manifest.run_id)  # the folder may have been renamed
    comparison = _compare(results, telemetry, chosen, margin)
    problems = (_arm_problems(manifest, arms, chosen, baseline, results)
                + _invocation_problems(manifest, missing, run_dir)
                + _case_problems(results, arms) + _stat_problems(comparison))
    return Analysis(run_dir=run_dir, manifest=manifest, arms=arms, baseline=chosen, margin=margin, results=results,
                    telemetry=telemetry, comparison=comparison, env_diff=envdiff.env_diff(load_envs(run_dir), arms),
                    problems=problems)


def _compare(results: pd.DataFrame, telemetry: pd.DataFrame, baseline: str | None,
             margin: float) -> pd.DataFrame:
    """stats.compare against the baseline (with telemetry, also without throttled samples).

    Metrics the baseline has no successful sample of are left out: the run's problems already say why.
    """
    empty = pd.DataFrame(columns=stats.COMPARE_COLUMNS)
    if baseline is None:
        return empty
    frame = results if telemetry.empty else stats.mark_throttled(results, telemetry)
    method = stats.compare if telemetry.empty else stats.compare_with_without_throttled
    base_ok = _ok(frame)
    measured = set(map(tuple, base_ok.loc[base_ok["arm"] == baseline, ["benchmark", "metric"]].to_numpy().tolist()))
    keep = [key in measured for key in zip(frame["benchmark"], frame["metric"])]
    subset = frame[keep]
    if subset.empty:
        return empty
    with np.errstate(divide="ignore", invalid="ignore"):
        return method(subset, baseline=baseline, margin=margin)


# --------------------------------------------------------------------------- summaries beside the run


def _json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records", force_ascii=False))


def _write_summaries(analysis: Analysis) -> tuple[Path, Path, Path]:
    """summary.csv, summary.json and comparison_report.md in the run directory."""
    run_dir = analysis.run_dir
    csv = _atomic.write_text(run_dir / SUMMARY_CSV, redact_text(analysis.comparison.to_csv(index=False)))
    record = {
        "run_id": analysis.run_id, "suite": analysis.manifest.suite, "created_at": analysis.manifest.created_at,
        "arms": analysis.arms, "baseline": analysis.baseline, "margin": analysis.margin,
        "comparable": analysis.comparable, "problems": analysis.problems, "headline": analysis.headline(),
        "comparisons": _json_records(analysis.comparison), "env_diff": _json_records(analysis.env_diff),
        "decomposition_arms": analysis.roles, "decomposition": _json_records(analysis.decomposition),
    }
    summary = _atomic.write_json(run_dir / SUMMARY_JSON, redact_obj(formats.stamped("summary", record)))
    markdown = _atomic.write_text(run_dir / MARKDOWN, redact_text(_markdown(analysis), html_safe=True))
    return csv, summary, markdown


def _md_cell(value: Any) -> str:
    """Text for comparison_report.md, shown literally: markup escaped as HTML entities, and the
    characters of markdown links, code and tables (``[x](javascript:...)``) backslash-escaped."""
    if isinstance(value, (float, np.floating)):
        text = f"{value:.3g}" if np.isfinite(value) else "—"
    else:
        text = "—" if value is None else str(value)
    return re.sub(r"([\\`\[\]|])", r"\\\1", html.escape(text, quote=False)).replace("\n", " ")


def _md_table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(_md_cell(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in frame.itertuples(index=False, name=None)]
    return "\n".join([head, rule, *body])


def _markdown(analysis: Analysis) -> str:
    parts = [f"# Comparison report: {_md_cell(analysis.run_id)}", ""]
    if analysis.problems:
        parts += ["## Problems", "", *(f"- {_md_cell(p)}" for p in analysis.problems), ""]
    parts += ["## Verdict", "", *(f"{_md_cell(p)}\n" for p in analysis.headline())]
    if not analysis.comparison.empty:
        parts += ["## Comparisons", "", _md_table(analysis.summary_frame()), ""]
    if not analysis.env_diff.empty:
        parts += ["## What differs between the arms", "", _md_table(analysis.env_diff.drop(columns=["differs"])), ""]
    if not analysis.decomposition.empty:
        parts += ["## Isolation, software stack and their interaction", "",
                  *(f"{_md_cell(note)}\n" for note in analysis.decomposition_notes()),
                  _md_table(analysis.decomposition_frame()), ""]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- notebook and HTML


def _execute(run_dir: Path, workdir: Path) -> Any:
    """Run notebooks/analysis.ipynb on the run with papermill; the executed notebook node.

    papermill runs as a child process with this checkout on PYTHONPATH (as the runner launches
    benchmark notebooks), so the kernel imports this benchlib whether or not it is installed.
    """
    import nbformat

    out = workdir / NOTEBOOK
    argv = [sys.executable, "-m", "papermill", str(paths.notebooks_dir() / NOTEBOOK), str(out),
            "-p", "run_dir", str(run_dir), "-k", "python3", "--cwd", str(workdir), "--no-progress-bar"]
    root = str(paths.repo_root())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
           "BENCHLIB_REPO": root}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise BenchlibError(f"the analysis notebook failed on {run_dir}: {_notebook_error(out, done.stderr)}")
    return nbformat.read(out, as_version=4)


def _notebook_error(executed: Path, stderr: str) -> str:
    """The first error a papermill run recorded in its notebook, else the last line it printed."""
    import nbformat

    if executed.is_file():
        for cell in nbformat.read(executed, as_version=4).cells:
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    return f"{output['ename']}: {output['evalue']}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "papermill exited without saying why"


def _export(notebook: Any, title: str) -> str:
    """The executed notebook as one offline HTML page: outputs only, no stderr, no CDN scripts."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    notebook.metadata["title"] = title
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
    exporter = HTMLExporter(template_name="lab", template_file=_TEMPLATE_NAME,
                            extra_loaders=[DictLoader({_TEMPLATE_NAME: _TEMPLATE})],
                            exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(notebook)
    return body


def build_report(run_dir: str | Path, docs_dir: str | Path | None = None) -> Report:
    """Analyse a run, export its HTML report into ``docs_dir`` (default ``docs/``) and write the
    summaries beside the run; see the module docstring."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BenchlibError(f"run directory {run_dir} does not exist.")
    docs = Path(docs_dir) if docs_dir is not None else paths.repo_root() / "docs"
    analysis = analyse(run_dir)
    csv, summary, markdown = _write_summaries(analysis)
    with tempfile.TemporaryDirectory(prefix="benchlib-report-") as workdir:
        page = _export(_execute(run_dir.resolve(), Path(workdir)), f"benchlib report {analysis.run_id}")
    target = _atomic.write_text(docs / REPORTS_DIR / report_name(analysis.run_id),
                                redact_text(page, html_safe=True))
    publish_index(docs, _index_entry(analysis, target.relative_to(docs).as_posix()))
    return Report(html=target, problems=analysis.problems, comparable=analysis.comparable,
                  summary_csv=csv, summary_json=summary, markdown=markdown)


# --------------------------------------------------------------------------- index of reports


def _index_entry(analysis: Analysis, href: str) -> dict[str, Any]:
    gpus = analysis.manifest.host.get("gpus") or []
    return {
        "run_id": analysis.run_id, "date": analysis.manifest.created_at, "href": href,
        "gpu": ", ".join(map(str, gpus)) or "none (CPU only)", "arms": analysis.arms,
        "verdict": analysis.short_verdict(), "problems": len(analysis.problems), "comparable": analysis.comparable,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def publish_index(docs: Path, entry: dict[str, Any]) -> Path:
    """Add (or replace) ``entry`` in docs/reports/index.json, drop entries whose report is gone,
    regenerate docs/index.html from it and keep docs/.nojekyll; returns index.html's path."""
    path = docs / REPORTS_DIR / INDEX_JSON
    try:
        entries = json.loads(path.read_text()) if path.is_file() else []
    except json.JSONDecodeError as exc:
        raise BenchlibError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or delete it.") from None
    entries = [e for e in entries if e.get("run_id") != entry["run_id"] and (docs / str(e.get("href", ""))).is_file()]
    entries = sorted([*entries, entry], key=lambda e: str(e.get("date", "")), reverse=True)
    _atomic.write_json(path, redact_obj(entries))
    _atomic.write_text(docs / ".nojekyll", "")
    return _atomic.write_text(docs / INDEX_HTML, redact_text(_index_html(entries), html_safe=True))


def _index_html(entries: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        return f"<td>{html.escape(str(value))}</td>"

    rows = "".join(
        f"<tr>{cell(e.get('date', ''))}<td><a href=\"{html.escape(quote(str(e.get('href', ''))))}\">"
        f"{html.escape(str(e.get('run_id', '')))}</a></td>{cell(e.get('gpu', ''))}"
        f"{cell(', '.join(map(str, e.get('arms', []))))}{cell(e.get('verdict', ''))}"
        f"{cell(e.get('problems', 0))}</tr>"
        for e in entries
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>benchlib reports</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }} th, td {{ border-bottom: 1px solid #ddd; padding: 6px 8px;
text-align: left; vertical-align: top; }} th {{ background: #f4f4f4; }}
</style></head>
<body>
<h1>benchlib reports</h1>
<p>Does the container cost performance, how sure are we, and why? One report per run, newest first.</p>
<table><thead><tr><th>date</th><th>run</th><th>GPU</th><th>arms (baseline first)</th><th>verdict</th><th>problems</th></tr></thead>
<tbody>{rows}</tbody></table>
</body></html>
"""
