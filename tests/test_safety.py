"""Safety under bad input (issue #8, parts 5 and 6), end to end: real CLI, papermill, nbconvert, Docker.

One hostile run is built once per session (and shared with tests/test_browser.py): three native arms,
one invocation each of a tiny matmul, run and reported by the real CLI with

* seven kinds of secret planted in the environment of ``benchlib run`` and ``benchlib report``, and
  one in an arm's own ``env``;
* an IPython startup file (through ``IPYTHONDIR``) that prints the whole environment after every cell
  of every kernel, the benchmark's and the analysis notebook's: what a careless workload does;
* markup in an arm's name, its run flags and its environment, and in the error of a failing arm.

Then every file under the run and docs folders, and everything the CLI printed, is searched for the
secrets (raw and trivially encoded), and the published pages for injected elements.
"""
from __future__ import annotations

import base64
import functools
import html
import json
import os
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, quote_plus

import pandas as pd
import pytest
import yaml

from benchlib.manifest import Manifest
from benchlib.redact import REDACTED
from benchlib.report import analyse
from conftest import run_cli
from docker_fixtures import docker_engine, docker_image  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

#: name -> value planted in the environment of `benchlib run` and `benchlib report`
PLANTED_ENV = {
    "HF_TOKEN": "hf_SafetyTestTokenValue0123456789abcd",
    "GITHUB_TOKEN": "ghp_SafetyTestGithub0123456789abcdefEF",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSAFETYTESTKEY",
    "DATABASE_URL": "postgres://dbuser:Pl4nted-Db-Pass@db.example:5432/app",
    "MY_API_KEY": "planted-my-api-key-31337",
    "SMTP_PASSWORD": "s3cr3t-smtp-passw0rd",
    "UPSTREAM_HEADERS": "Authorization: Bearer PlantedBearer.Token-0451xyz",
}
ARM_SECRET = "armsecret-Zx81Qw-payload"
#: what must never be written: the secret part of each planted value
SECRETS = [PLANTED_ENV["HF_TOKEN"], PLANTED_ENV["GITHUB_TOKEN"], PLANTED_ENV["AWS_SECRET_ACCESS_KEY"],
           "Pl4nted-Db-Pass", PLANTED_ENV["MY_API_KEY"], PLANTED_ENV["SMTP_PASSWORD"], "PlantedBearer.Token-0451xyz",
           ARM_SECRET]

PAYLOAD_ARM = '"><svg onload=alert(11)>'
PAYLOAD_FLAGS = ["--label=<img src=x onerror=alert(12)>", "[x](javascript:alert(13))"]
PAYLOAD_ENV = {"NCCL_PAYLOAD": "<script>alert(14)</script>", "OMP_LINK": "javascript:alert(15)",
               "ARM_API_KEY": ARM_SECRET}
FAILURE = "planted failure <img src=x onerror=alert(16)> [x](javascript:alert(17))"
PAYLOAD_MARKUP = ("<svg onload=alert(11)>", "<img src=x onerror=alert(12)>", "<script>alert(14)</script>",
                  "<img src=x onerror=alert(16)>")
TINY_PARAMS = {"n": 64, "dtype": "fp32", "warmup": 1, "min_samples": 5, "max_samples": 10, "max_time_s": 1.0}

# Runs in every IPython kernel started with IPYTHONDIR pointing here.
STARTUP = f'''
import json as _json, os as _os

def _benchlib_safety_leak(*_args):
    print("LEAK-ENV", _json.dumps(dict(_os.environ)))
    print("LEAK-REPR", dict(_os.environ))

get_ipython().events.register("post_run_cell", _benchlib_safety_leak)

if _os.environ.get("BENCHLIB_TEST_FAIL"):  # the case fails inside the notebook; its note says why
    import dataclasses as _dataclasses
    from benchlib import workloads as _workloads

    def _planted_failure(*_args, **_kwargs):
        raise RuntimeError({FAILURE!r} + " while using " + _os.environ.get("HF_TOKEN", ""))

    _workloads.registry()["matmul"] = _dataclasses.replace(_workloads.get_workload("matmul"), run=_planted_failure)
'''


@dataclass(frozen=True)
class Hostile:
    run_dir: Path
    docs: Path
    printed: str  # everything `benchlib run` and `benchlib report` printed


def _hostile_env(root: Path) -> dict[str, str]:
    startup = root / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-leak.py").write_text(STARTUP)
    return {**PLANTED_ENV, "IPYTHONDIR": str(root / "ipython")}


def _write_suite(root: Path, arms: list) -> Path:
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    suite = {"description": "hostile <script>alert(10)</script>", "invocations": 1, "arms": arms,
             "benchmarks": [{"benchmark": "matmul", "params": str(root / "tiny.yaml")}]}
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


@functools.cache
def built_hostile(base: Path) -> Hostile:
    root = base / "hostile"
    root.mkdir(parents=True, exist_ok=True)
    env = _hostile_env(root)
    suite = _write_suite(root, [
        "native",
        {"name": PAYLOAD_ARM, "kind": "native", "flags": PAYLOAD_FLAGS, "env": PAYLOAD_ENV},
        {"name": "broken", "kind": "native", "env": {"BENCHLIB_TEST_FAIL": "1"}},
    ])
    ran = run_cli("run", "--suite", str(suite), "--out", str(root / "outputs"), "--no-progress", env=env)
    (run_dir,) = [path.parent for path in (root / "outputs").glob("*/manifest.json")]
    assert ran.returncode == 1, ran.stdout + ran.stderr  # the 'broken' arm's case fails by design
    reported = run_cli("report", str(run_dir), "--docs", str(root / "docs"), env=env)
    assert reported.returncode == 0, reported.stdout + reported.stderr
    return Hostile(run_dir, root / "docs", ran.stdout + ran.stderr + reported.stdout + reported.stderr)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    return built_hostile(tmp_path_factory.getbasetemp())


def _encodings(secret: str) -> set[str]:
    """The secret as it could be written: as is, and trivially encoded."""
    return {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1], html.escape(secret),
            base64.b64encode(secret.encode()).decode().rstrip("=")}


def _leaks(data: bytes | str, where: str) -> list[str]:
    raw = data.encode() if isinstance(data, str) else data
    return [f"{where}: {secret}" for secret in SECRETS for form in _encodings(secret) if form.encode() in raw]


def _files(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file())


def _parquet_leaks(path: Path) -> list[str]:
    frame = pd.read_parquet(path)
    cells = [str(v) for column in frame.columns for v in frame[column].dropna().unique()]
    return _leaks("\n".join(cells), f"{path} (cells)")


def _all_leaks(*roots: Path) -> list[str]:
    found = []
    for path in _files(*roots):
        found += _leaks(path.read_bytes(), str(path))
        if path.suffix == ".parquet":
            found += _parquet_leaks(path)
    return found


def _stream_text(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "".join("".join(out.get("text", "")) if isinstance(out.get("text"), list) else out.get("text", "")
                   for cell in cells for out in cell.get("outputs", []))


# --------------------------------------------------------------------------- part 5: secrets


def test_no_planted_secret_is_written_or_printed_anywhere(hostile: Hostile):
    files = _files(hostile.run_dir, hostile.docs)
    kinds = {p.name for p in files}
    # what is searched: every kind of file a run and a report write
    assert {"manifest.json", "executed.ipynb", "papermill.log", "env.json", "params.yaml", "results.parquet",
            "telemetry.parquet", "summary.csv", "summary.json", "comparison_report.md", "index.html",
            "index.json"} <= kinds
    assert any(p.suffix == ".html" and p.parent.name == "reports" for p in files)
    assert _all_leaks(hostile.run_dir, hostile.docs) == []
    assert _leaks(hostile.printed, "CLI output") == []


def test_the_leaks_happened_and_only_the_secrets_were_scrubbed(hostile: Hostile):
    """The startup file did dump the environment into the notebooks and the log; the dump survives
    with the secrets, and only them, replaced."""
    manifest = Manifest.load(hostile.run_dir)
    native = next(inv for inv in manifest.invocations if inv.arm == "native")
    folder = hostile.run_dir / native.rel_dir
    dump = next(line for line in _stream_text(folder / "executed.ipynb").splitlines() if line.startswith("LEAK-ENV"))
    seen = json.loads(dump.removeprefix("LEAK-ENV "))
    for name in ("HF_TOKEN", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "MY_API_KEY", "SMTP_PASSWORD"):
        assert seen[name] == REDACTED
    assert seen["DATABASE_URL"] == f"postgres://{REDACTED}@db.example:5432/app"
    assert seen["UPSTREAM_HEADERS"] == f"Authorization: Bearer {REDACTED}"
    assert seen["BENCHLIB_ARM"] == "native" and seen["IPYTHONDIR"].endswith("ipython")  # the rest is intact
    assert "LEAK-ENV" in (folder / "papermill.log").read_text()
    assert "LEAK-ENV" in next((hostile.docs / "reports").glob("*.html")).read_text()  # the analysis kernel's too


def test_the_manifest_hides_secret_values_and_keeps_the_rest(hostile: Hostile):
    manifest = Manifest.load(hostile.run_dir)
    arms = {arm["name"]: arm for arm in manifest.arms}
    assert arms[PAYLOAD_ARM]["env"] == {**PAYLOAD_ENV, "ARM_API_KEY": REDACTED}
    assert all(inv.params["max_samples"] == 10 for inv in manifest.invocations)
    results = pd.read_parquet(next((hostile.run_dir / "broken").rglob("results.parquet")))
    (note,) = results.loc[results["status"] == "failed", "note"]
    assert note == f"failed: RuntimeError: {FAILURE} while using {REDACTED}"


# --------------------------------------------------------------------------- part 6: markup


class _Elements(HTMLParser):
    """Every element of a page with its attributes, and the text of every script."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def _injected(page: str) -> list[str]:
    """Elements or scripts that the payloads would have made, had they not been escaped. (Inside a
    figure's script the payloads are JSON string data, with ``<`` as ``\\u003c`` or ``&lt;``: they
    may be there, but never as raw markup.)"""
    parsed = _Elements()
    parsed.feed(page)
    found = [f"<{tag} {attrs}>" for tag, attrs in parsed.elements
             if any(name.startswith("on") for name in attrs) or attrs.get("src") == "x"
             or str(attrs.get("href", "")).strip().lower().startswith("javascript:")]
    found += [f"script {script.strip()[:40]!r}" for script in parsed.scripts
              if re.fullmatch(r"\s*alert\(\d+\)\s*", script)
              or any(markup in script for markup in PAYLOAD_MARKUP)]
    return found


def test_the_report_shows_every_payload_as_text_and_injects_nothing(hostile: Hostile):
    page = next((hostile.docs / "reports").glob("*.html")).read_text()
    assert _injected(page) == []
    # each payload reached the page, escaped: the arm name, its flags and env (facts, env diff), the failure
    for shown in (PAYLOAD_ARM, *PAYLOAD_FLAGS, PAYLOAD_ENV["NCCL_PAYLOAD"], PAYLOAD_ENV["OMP_LINK"], FAILURE):
        assert html.escape(shown, quote=False) in page or html.escape(shown) in page, shown
    index = (hostile.docs / "index.html").read_text()
    assert _injected(index) == [] and html.escape(PAYLOAD_ARM) in index


def test_the_markdown_report_escapes_markup_and_links(hostile: Hostile):
    markdown = (hostile.run_dir / "comparison_report.md").read_text()
    assert "<img" not in markdown and "<svg" not in markdown and "<script" not in markdown
    assert "[x](javascript:" not in markdown
    assert "\\[x\\](javascript:alert(17))" in markdown  # the failure, shown literally


def test_an_arm_name_cannot_leave_the_run_folder(tmp_path: Path):
    suite = _write_suite(tmp_path, ["native", {"name": "..", "kind": "native"}])
    done = run_cli("run", "--suite", str(suite), "--out", str(tmp_path / "outputs"), "--no-progress")
    assert done.returncode == 2 and "arm '..'" in done.stderr and "names a folder of the run" in done.stderr
    assert not (tmp_path / "outputs").exists()


# --------------------------------------------------------------------------- the container arm


@pytest.mark.docker
def test_a_container_arm_writes_no_secret_and_its_raised_privileges_are_reported(tmp_path: Path,
                                                                               docker_image: str):  # noqa: F811
    env = _hostile_env(tmp_path)
    suite = _write_suite(tmp_path, ["native", {"name": "boxed", "extends": "container", "image": docker_image,
                                               "flags": ["--cap-add=SYS_NICE"], "env": {"ARM_API_KEY": ARM_SECRET}}])
    done = run_cli("run", "--suite", str(suite), "--out", str(tmp_path / "outputs"), "--no-progress", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = [path.parent for path in (tmp_path / "outputs").glob("*/manifest.json")]
    assert _all_leaks(run_dir) == [] and _leaks(done.stdout + done.stderr, "CLI output") == []
    assert Manifest.load(run_dir).arms[1]["env"] == {"ARM_API_KEY": REDACTED}
    assert "warning: arm boxed runs with raised privileges" in done.stderr and "--cap-add SYS_NICE" in done.stderr
    analysis = analyse(run_dir)
    (problem,) = [p for p in analysis.problems if "raised privileges" in p]
    assert problem.startswith("arm boxed ran with raised privileges") and "--cap-add SYS_NICE" in problem
    assert "RAISED PRIVILEGES" in analysis.overview().text


def test_resume_takes_a_redacted_arm_secret_from_the_environment_again(tmp_path: Path):
    run_dir = tmp_path / "outputs" / "20260101-000000-smoke"
    run_dir.mkdir(parents=True)
    arms = [{"name": "native", "kind": "native"},
            {"name": "keyed", "kind": "native", "env": {"ARM_API_KEY": ARM_SECRET, "OMP_NUM_THREADS": "1"}}]
    Manifest(run_id=run_dir.name, suite="smoke", created_at="2026-01-01T00:00:00+00:00", arms=arms,
             invocations=[]).save(run_dir)
    saved = json.loads((run_dir / "manifest.json").read_text())
    assert saved["arms"][1]["env"] == {"ARM_API_KEY": REDACTED, "OMP_NUM_THREADS": "1"}
    assert "ARM_API_KEY" not in os.environ
    refused = run_cli("run", "--resume", str(run_dir), "--no-progress")
    assert refused.returncode == 2
    assert "error: arm 'keyed' needs ARM_API_KEY" in refused.stderr and "set ARM_API_KEY" in refused.stderr
    resumed = run_cli("run", "--resume", str(run_dir), "--no-progress", env={"ARM_API_KEY": ARM_SECRET})
    assert resumed.returncode == 0, resumed.stderr
    assert ARM_SECRET not in (run_dir / "manifest.json").read_text() + resumed.stdout + resumed.stderr
