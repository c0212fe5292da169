"""Rendering and export of a run's analysis: the summaries beside the run (summary.csv, versioned
summary.json, comparison_report.md), the analysis notebook run with papermill and exported with
nbconvert to one offline HTML page, and the index of published reports (docs/index.html).

Problems with the run do not stop it: they are listed at the top of the report and in
:attr:`Report.problems`.
"""
from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from . import _atomic, formats, paths
from .analysis import Analysis, analyse
from .comparisons import OUTCOME_TITLES, OUTCOMES
from .errors import BenchlibError
from .layout import INDEX_HTML, INDEX_JSON, MARKDOWN, REPORTS_DIR, SUMMARY_CSV, SUMMARY_JSON, report_name
from .redact import redact_obj, redact_text

__all__ = ["NOTEBOOK", "Report", "build_report", "publish_index"]

NOTEBOOK = "analysis.ipynb"

_TEMPLATE_NAME = "benchlib_report.html.j2"


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


def _json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records", force_ascii=False))


def _write_summaries(analysis: Analysis) -> tuple[Path, Path, Path]:
    """summary.csv, summary.json and comparison_report.md in the run directory."""
    run_dir = analysis.run_dir
    csv = _atomic.write_text(run_dir / SUMMARY_CSV, redact_text(analysis.comparison.to_csv(index=False)))
    record = {
        "run_id": analysis.run_id, "suite": analysis.manifest.suite, "created_at": analysis.manifest.created_at,
        "arms": analysis.arms, "baseline": analysis.baseline, "margin": analysis.margin,
        "comparable": analysis.comparable, "problems": analysis.problems, "answer": analysis.answer_line(),
        "headline": analysis.headline(),
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
    if not analysis.lines.empty:
        parts += ["## Comparisons", "", "`±`: the spread between invocations; `[a, b]`: the 95 % confidence "
                  "interval of the ratio. summary.csv and summary.json keep every number in full.", ""]
        for outcome in OUTCOMES:
            lines = analysis.lines[analysis.lines["outcome"] == outcome]
            if not lines.empty:
                parts += [f"### {_md_cell(OUTCOME_TITLES[outcome])} ({len(lines)})", "",
                          *(f"- {_md_cell(line)}" for line in lines["line"]), ""]
    if analysis.arms:
        parts += ["## System and software", "", _md_table(analysis.system_frame()), ""]
    env = analysis.env_frame()
    if not env.empty:
        parts += ["## What differs between the arms", "", _md_table(env), ""]
    if not analysis.decomposition.empty:
        parts += ["## Isolation, software stack and their interaction", "",
                  *(f"{_md_cell(note)}\n" for note in analysis.decomposition_notes()),
                  _md_table(analysis.decomposition_frame()), ""]
    return "\n".join(parts) + "\n"


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


_HEADING = re.compile(r'<h2 id="([^"]+)"[^>]*>(.*?)</h2>', re.S)


def _with_navigation(page: str) -> str:
    """The exported page with a navigation line under its title: a link back to the index of reports
    (``../index.html`` from docs/reports/) and a table of contents linking each section's heading
    (nbconvert gives every heading an id); the answer stays the first thing under it."""
    links = []
    for anchor, inner in _HEADING.findall(page):
        text = html.unescape(re.sub(r"<[^>]+>", "", inner)).replace("¶", "").strip()
        links.append(f'<a href="#{anchor}">{html.escape(text)}</a>')  # the id as the page has it, escaped there
    nav = ('<nav class="benchlib-nav" aria-label="contents" style="font-size:0.9em;margin:2px 0 6px 0;'
           'line-height:1.6"><a href="../index.html">← all reports</a>'
           + (" · <strong>Contents:</strong> " + " · ".join(links) if links else "") + "</nav>")
    title = page.find("</h1>")
    if title == -1:
        body = re.search(r"<body[^>]*>", page)
        return page[:body.end()] + nav + page[body.end():] if body else nav + page
    close = page.find("</div>", page.find("</div>", title) + 1)  # after the title's cell
    at = close + len("</div>") if close != -1 else title + len("</h1>")
    return page[:at] + nav + page[at:]


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
        page = _with_navigation(_export(_execute(run_dir.resolve(), Path(workdir)),
                                        f"benchlib report {analysis.run_id}"))
    target = _atomic.write_text(docs / REPORTS_DIR / report_name(analysis.run_id),
                                redact_text(page, html_safe=True))
    publish_index(docs, _index_entry(analysis, target.relative_to(docs).as_posix()))
    return Report(html=target, problems=analysis.problems, comparable=analysis.comparable,
                  summary_csv=csv, summary_json=summary, markdown=markdown)


def _index_entry(analysis: Analysis, href: str) -> dict[str, Any]:
    gpus = analysis.manifest.host.get("gpus") or []
    return {
        "run_id": analysis.run_id, "date": analysis.manifest.created_at, "href": href,
        "gpu": ", ".join(map(str, gpus)) or "none (CPU only)", "arms": analysis.arms,
        "verdict": analysis.answer_line(), "problems": len(analysis.problems), "comparable": analysis.comparable,
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


#: The kinds of arm, one line each, for the index page (docs/architecture.md, "Arms").
ARM_KINDS: tuple[tuple[str, str], ...] = (
    ("native", "the workload on the host itself, no container: the usual baseline."),
    ("container", "the same workload in the image, through its engine (docker, podman, apptainer, enroot): "
                  "what a user of the container gets."),
    ("isolated", "the host's own files under a container's isolation (runc: namespaces, cgroups, a 64 MiB "
                 "/dev/shm): the isolation's cost alone."),
    ("rootfs", "the image's exported files (its torch, CUDA, libraries) entered with chroot, no isolation: "
               "the software stack's cost alone."),
)


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
    arms = "".join(f"<li><strong>{html.escape(name)}</strong>: {html.escape(text)}</li>" for name, text in ARM_KINDS)
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
<p>Does the container cost performance, how sure are we, and why? One report per run, newest first.
How it is measured: <a href="methodology.md">the methodology</a>; how to run it: <a href="../README.md">the README</a>.</p>
<p>The arms a run compares:</p>
<ul>{arms}</ul>
<table><thead><tr><th>date</th><th>run</th><th>GPU</th><th>arms (baseline first)</th><th>verdict</th><th>problems</th></tr></thead>
<tbody>{rows}</tbody></table>
</body></html>
"""

