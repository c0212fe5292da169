"""The run layout: what a run directory holds and where (docs/architecture.md, "Data flow").

Every module that reads or writes a run takes its file names and folder scheme from here::

    <out>/<run_id>/                                  run_id = <UTC yyyymmdd-HHMMSS>-<suite>[-n]
        manifest.json                                MANIFEST_FILE
        summary.csv, summary.json, comparison_report.md   written by `benchlib report`
        <arm>/<benchmark>/<case>/inv-<k>/            invocation_dir(...)
            executed.ipynb, params.yaml, papermill.log    the runner's
            results.parquet, telemetry.parquet, env.json  the notebook's (benchlib.bench)

and the published reports: ``docs/reports/<run_id>.html`` listed in ``docs/reports/index.json``,
rendered as ``docs/index.html``.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

__all__ = [
    "CHECKSUMMED", "ENV_FILE", "EXECUTED_NOTEBOOK", "INDEX_HTML", "INDEX_JSON", "LOG_FILE", "MANIFEST_FILE",
    "MARKDOWN", "PARAMS_FILE", "REPORTS_DIR", "RESULTS_FILE", "SHARDS_DIR", "SUMMARY_CSV", "SUMMARY_JSON", "TELEMETRY_FILE",
    "find_runs", "invocation_dir", "new_run_dir", "report_name",
]

MANIFEST_FILE = "manifest.json"
#: A run on a cluster: <run>/nodes/<node>-gpu<k>/ holds each shard (benchlib.cluster.layout).
SHARDS_DIR = "nodes"
#: What the notebook writes into its invocation folder (results last: its presence means the set is whole).
RESULTS_FILE, TELEMETRY_FILE, ENV_FILE = "results.parquet", "telemetry.parquet", "env.json"
#: What the runner writes into an invocation folder around the notebook.
EXECUTED_NOTEBOOK, PARAMS_FILE, LOG_FILE = "executed.ipynb", "params.yaml", "papermill.log"
#: The files of an invocation the manifest checksums (a resume re-checks them).
CHECKSUMMED = (EXECUTED_NOTEBOOK, RESULTS_FILE, TELEMETRY_FILE, ENV_FILE, PARAMS_FILE)
#: What `benchlib report` writes beside the run.
SUMMARY_CSV, SUMMARY_JSON, MARKDOWN = "summary.csv", "summary.json", "comparison_report.md"
#: Under the docs folder: the published reports and their index.
REPORTS_DIR, INDEX_JSON, INDEX_HTML = "reports", "index.json", "index.html"


def invocation_dir(arm: str, benchmark: str, case: str, invocation: int) -> str:
    """An invocation's folder relative to its run: ``<arm>/<benchmark>/<case>/inv-<k>``."""
    return f"{arm}/{benchmark}/{case}/inv-{invocation}"


def new_run_dir(out_dir: Path, suite_name: str) -> Path:
    """Create and return a fresh run folder ``<out_dir>/<UTC stamp>-<suite>`` (``-2``, ``-3``... when taken)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    candidate, n = Path(out_dir) / f"{stamp}-{suite_name}", 2
    while candidate.exists():
        candidate, n = Path(out_dir) / f"{stamp}-{suite_name}-{n}", n + 1
    candidate.mkdir(parents=True)
    return candidate


def find_runs(folder: Path) -> list[Path]:
    """The run directories directly under ``folder`` (those with a manifest), oldest name first."""
    return sorted(path.parent for path in Path(folder).glob(f"*/{MANIFEST_FILE}"))


def report_name(run_id: str) -> str:
    """The file name of a run's published report: ``<run_id>.html`` with unsafe characters replaced."""
    return (re.sub(r"[^A-Za-z0-9._-]", "_", run_id) or "run") + ".html"
