"""The exported report in a real headless Chromium, offline: every figure renders, nothing errs,
no planted script runs. Driven over the DevTools protocol (websocket-client), no mocks.

The screenshot goes to test-artifacts/report.png (git-ignored) for a person to look at.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from benchlib.report import FIGURES
from conftest import REPO
from test_report import Built, built_gpu_like, one_arm, two_arm  # noqa: F401  (fixtures)
from test_safety import PAYLOAD_ARM, PAYLOAD_ENV, Hostile, built_hostile

websocket = pytest.importorskip("websocket")  # websocket-client, in the dev extra

pytestmark = [pytest.mark.browser, pytest.mark.notebook, pytest.mark.slow]

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: plotly figures drawn: a .js-plotly-plot element with its SVG inside
RENDERED_JS = "Array.from(document.querySelectorAll('.js-plotly-plot')).filter(p => p.querySelector('.main-svg')).length"


def _chromium() -> str:
    found = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("no Chromium on PATH (chromium, chromium-browser, google-chrome); set CHROMIUM to its path")
    pytest.skip("no Chromium on PATH (chromium, chromium-browser, google-chrome); set CHROMIUM to its path")


class Page:
    """One Chromium tab over the DevTools protocol: commands in order, events collected."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.events: list[dict[str, Any]] = []
        self._next_id = 0

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        self.ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._on_event(message)

    def _on_event(self, message: dict[str, Any]) -> None:
        self.events.append(message)
        if message.get("method") == "Page.javascriptDialogOpening":  # an alert() must not block the page
            self.ws.send(json.dumps({"id": 0, "method": "Page.handleJavaScriptDialog", "params": {"accept": True}}))

    def pump(self, seconds: float) -> None:
        """Collect events for a while."""
        deadline = time.monotonic() + seconds
        self.ws.settimeout(0.2)
        try:
            while time.monotonic() < deadline:
                try:
                    self._on_event(json.loads(self.ws.recv()))
                except websocket.WebSocketTimeoutException:
                    continue
        finally:
            self.ws.settimeout(60)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """Evaluate until the value is truthy and the same twice in a row."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value and value == last:
                return value
            last = value
            self.pump(0.5)
        return last

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions, error log entries and failed loads seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(f"exception: {details.get('exception', {}).get('description', details.get('text'))}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"log: {params['entry']['text']} {params['entry'].get('url', '')}")
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                found.append(f"load failed: {params.get('errorText')}")
        return found

    def dialogs(self) -> list[str]:
        return [e["params"].get("message", "") for e in self.events if e.get("method") == "Page.javascriptDialogOpening"]

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading in 60 s")
            self.pump(0.5)

    def screenshot(self, path: Path, width: int = 1280) -> None:
        """The whole page as a PNG."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.pump(1.5)  # responsive plots re-lay themselves out
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture(scope="module")
def browser() -> Iterator[str]:
    """A headless Chromium with DevTools on a free port; yields the port's base URL."""
    binary = _chromium()
    profile = Path(tempfile.mkdtemp(prefix="benchlib-chromium-"))
    process = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "--window-size=1280,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{binary} did not start its DevTools endpoint (exit code {process.poll()})")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port_file.read_text().split()[0]}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(profile, ignore_errors=True)


def _new_page(base: str) -> Page:
    request = urllib.request.Request(f"{base}/json/new?about:blank", method="PUT")
    with urllib.request.urlopen(request, timeout=30) as response:
        target = json.load(response)
    page = Page(target["webSocketDebuggerUrl"])
    for domain in ("Page", "Runtime", "Log", "Network"):
        page.send(f"{domain}.enable")
    page.send("Network.emulateNetworkConditions", offline=True, latency=0, downloadThroughput=-1, uploadThroughput=-1)
    return page


def _open_report(base: str, built: Built) -> Page:
    page = _new_page(base)
    page.open(built.report.html.resolve().as_uri())
    return page


def test_every_figure_renders_offline_without_errors_and_the_page_is_screenshotted(browser: str, two_arm: Built):
    page = _open_report(browser, two_arm)
    html = two_arm.report.html.read_text()
    produced = html.count('class="plotly-graph-div"')
    assert produced == len(FIGURES)  # forest, decomposition, distributions, telemetry, energy, ceilings
    assert page.wait_for(RENDERED_JS) == produced
    page.pump(1.0)
    assert page.errors() == []
    assert page.dialogs() == []
    # the planted environment value is shown as text, not run
    assert "<script>alert(1)</script>" in page.evaluate("document.body.innerText")
    page.screenshot(ARTIFACTS / "report.png")
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000


def test_a_one_arm_report_with_markup_in_its_arm_name_runs_nothing(browser: str, one_arm: Built):
    page = _open_report(browser, one_arm)
    assert page.wait_for(RENDERED_JS) == one_arm.report.html.read_text().count('class="plotly-graph-div"')
    page.pump(1.0)
    assert page.errors() == []
    assert page.dialogs() == []
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    index = _new_page(browser)
    index.open((one_arm.docs / "index.html").resolve().as_uri())
    index.pump(0.5)
    assert index.dialogs() == [] and index.errors() == []
    assert "onerror=alert(1)" in index.evaluate("document.body.innerText")


def test_the_telemetry_report_renders_its_series(browser: str, tmp_path_factory: pytest.TempPathFactory):
    built = built_gpu_like(tmp_path_factory.getbasetemp())
    page = _open_report(browser, built)
    assert page.wait_for(RENDERED_JS) == len(FIGURES)
    page.pump(1.0)
    assert page.errors() == [] and page.dialogs() == []
    # the telemetry figure drew its lines: 3 panels x 12 invocations, one segment each
    segments = page.evaluate(
        "(() => { const plot = Array.from(document.querySelectorAll('.js-plotly-plot')).find("
        "p => (p.querySelector('.gtitle') || {}).textContent?.startsWith('GPU telemetry'));"
        " return plot ? plot.querySelectorAll('.scatterlayer .trace .js-line').length : -1; })()")
    assert segments == 36
    page.screenshot(ARTIFACTS / "report-telemetry.png")


#: elements a payload would have made: event handlers, the payloads' images, javascript: links
INJECTED_JS = ("document.querySelectorAll('[onload], [onerror], [onclick], [onmouseover], img[src=\"x\"], "
               "a[href^=\"javascript:\" i], iframe, object, embed').length")


def test_the_hostile_report_and_index_run_no_payload(browser: str, tmp_path_factory: pytest.TempPathFactory):
    """Markup in an arm's name, flags and env and in a failure note (tests/test_safety.py) is text in the
    DOM: no dialog opens, no handler or injected element exists, and the payloads read as written."""
    hostile: Hostile = built_hostile(tmp_path_factory.getbasetemp())
    report = next((hostile.docs / "reports").glob("*.html"))
    page = _new_page(browser)
    page.open(report.resolve().as_uri())
    assert page.wait_for(RENDERED_JS) == report.read_text().count('class="plotly-graph-div"')
    page.pump(1.0)
    assert page.dialogs() == [] and page.errors() == []
    assert page.evaluate(INJECTED_JS) == 0
    text = page.evaluate("document.body.innerText")
    assert PAYLOAD_ARM in text and PAYLOAD_ENV["NCCL_PAYLOAD"] in text and "[x](javascript:alert(17))" in text
    # the figures' legends and labels show the arm name as text too
    labels = page.evaluate(
        "Array.from(document.querySelectorAll('.js-plotly-plot .legendtext')).map(e => e.textContent)")
    assert PAYLOAD_ARM in labels
    index = _new_page(browser)
    index.open((hostile.docs / "index.html").resolve().as_uri())
    index.pump(0.5)
    assert index.dialogs() == [] and index.errors() == [] and index.evaluate(INJECTED_JS) == 0
    assert PAYLOAD_ARM in index.evaluate("document.body.innerText")
