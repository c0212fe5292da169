"""benchlib.redact: the one redaction every writer uses (fast unit tests on real files and frames)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchlib import redact
from benchlib.redact import REDACTED, redact_file, redact_frame, redact_obj, redact_text, secret_name

HF = "hf_UnitTestTokenValue0123456789abcdef"
BEARER = "UnitBearer.Token-0451xyz"
DB_PASSWORD = "Un1t-Db-Pass"


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.setenv("SERVICE_PASSWORD", "correct horse battery")
    monkeypatch.setenv("DATABASE_URL", f"postgres://app:{DB_PASSWORD}@db.internal:5432/app")
    monkeypatch.setenv("UPSTREAM_HEADERS", f"Authorization: Bearer {BEARER}")
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to scrub by value
    monkeypatch.setenv("SOME_KEY", "1234567")  # digits: never scrubbed by value (numbers would break)


@pytest.mark.parametrize("name", [
    "HF_TOKEN", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "MY_API_KEY",
    "OPENAI_APIKEY", "DB_PASSWORD", "db_password", "apiKey", "accessToken", "AuthHeader", "SENTRY_DSN", "GH_PAT",
    "GOOGLE_APPLICATION_CREDENTIALS", "session_cookie", "SSH_KEY", "secret_key", "token",
])
def test_secret_names(name: str):
    assert secret_name(name)


@pytest.mark.parametrize("name", [
    "max_tokens", "output_tokens", "input_tokens", "max_new_tokens", "tokens_per_s", "tokenizer", "pad_token_id",
    "HF_TOKEN_PATH", "TOKENIZERS_PARALLELISM", "PWD", "OLDPWD", "PATH", "KEY_PATH", "case_keys", "monkey",
    "author", "XDG_SESSION_ID", "nvml_session", "CUDA_VISIBLE_DEVICES", "key", "sort_key", "bypass",
])
def test_harmless_names(name: str):
    assert not secret_name(name)


def test_counts_of_tokens_are_kept_and_token_values_are_not():
    record = {"max_tokens": 128, "output_tokens": 32, "tokens_per_s": 455.0, "HF_TOKEN": "x",
              "nested": [{"api_key": 3}], "enabled_auth": False, "empty_token": None}
    assert redact_obj(record) == {"max_tokens": 128, "output_tokens": 32, "tokens_per_s": 455.0, "HF_TOKEN": REDACTED,
                                  "nested": [{"api_key": REDACTED}], "enabled_auth": False, "empty_token": None}


def test_values_from_the_environment_go_wherever_they_appear(planted: None):
    text = (f"token {HF} in a log; {DB_PASSWORD} alone; the password is correct horse battery; "
            f"json {json.dumps({'h': BEARER})}; url-quoted {HF}%2F; count 1234567 and abc stay")
    clean = redact_text(text)
    for secret in (HF, DB_PASSWORD, "correct horse battery", BEARER):
        assert secret not in clean
    assert "count 1234567 and abc stay" in clean and "token <redacted> in a log" in clean


def test_patterns_without_the_environment():
    text = ("git clone https://x-access-token:ghs_abcdefghijklmnopqrstuvwx@github.com/o/r.git; "
            "curl -H 'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl' "
            "MY_API_KEY=abc123def --password=hunter2 -e GITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz012345 "
            "AKIAIOSFODNN7EXAMPLE {'SECRET_ACCESS': 'wJalrXUtnFEMI'} https://api.example/x?api_key=zzz999&n=4")
    clean = redact_text(text)
    for leaked in ("ghs_abcdefghijklmnopqrstuvwx", "eyJhbGciOiJIUzI1NiJ9", "abc123def", "hunter2", "ghp_abcdefghij",
                   "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI", "zzz999"):
        assert leaked not in clean, leaked
    assert "https://<redacted>@github.com/o/r.git" in clean and "&n=4" in clean


def test_html_safe_replacement_is_not_a_tag(planted: None):
    page = f"<td>HF_TOKEN={HF}</td><td>postgres://app:{DB_PASSWORD}@db.internal</td>"
    assert redact_text(page, html_safe=True) == (
        "<td>HF_TOKEN=&lt;redacted&gt;</td><td>postgres://&lt;redacted&gt;@db.internal</td>")


def test_plotly_js_and_the_report_template_come_through_unchanged():
    """Minified code is full of ``jwt=f()``, ``pat=[...]`` and ``"metaKey":"ctrlKey"``."""
    import plotly
    from jupyter_core.paths import jupyter_path

    code = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text()
    assert redact_text(code, html_safe=True) == code
    templates = [p for folder in jupyter_path("nbconvert", "templates") for p in Path(folder).rglob("*")
                 if p.suffix in (".j2", ".css", ".js") and p.is_file()]
    assert templates, "nbconvert's templates are installed"
    for path in templates:
        text = path.read_text()
        assert redact_text(text, html_safe=True) == text, path


def test_frames_keep_their_numbers_and_types(planted: None):
    frame = pd.DataFrame({"value": [1.5, 2.5], "note": pd.Series([f"saw {HF}", None], dtype="string"),
                          "case": pd.Series(["n=64", "n=64"], dtype="string")})
    clean = redact_frame(frame)
    assert clean["note"].tolist() == ["saw <redacted>", pd.NA]
    assert clean.dtypes.equals(frame.dtypes) and clean["value"].tolist() == [1.5, 2.5]
    untouched = frame.drop(columns=["note"])
    assert redact_frame(untouched) is untouched


def test_files_are_redacted_in_place_by_kind(planted: None, tmp_path: Path):
    notebook = {"cells": [{"cell_type": "code", "outputs": [{"name": "stdout", "output_type": "stream",
                                                            "text": [f"HF_TOKEN={HF}\n"]}],
                           "metadata": {}, "source": "print(1)"}],
                "metadata": {"papermill": {"parameters": {"max_tokens": 8, "hf_token": HF}}},
                "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "executed.ipynb").write_text(json.dumps(notebook, indent=1))
    (tmp_path / "papermill.log").write_text(f"Executing\n{BEARER}\n")
    (tmp_path / "page.html").write_text(f"<p>{HF}</p>")
    table = pd.DataFrame({"note": pd.Series([f"x {DB_PASSWORD}", None], dtype="string"), "n": [1, 2]})
    table.to_parquet(tmp_path / "results.parquet")
    (tmp_path / "clean.txt").write_text("nothing to hide\n")
    changed = redact.redact_tree(tmp_path)
    assert sorted(p.name for p in changed) == ["executed.ipynb", "page.html", "papermill.log", "results.parquet"]
    cleaned = json.loads((tmp_path / "executed.ipynb").read_text())
    assert cleaned["cells"][0]["outputs"][0]["text"] == ["HF_TOKEN=<redacted>\n"]
    assert cleaned["metadata"]["papermill"]["parameters"] == {"max_tokens": 8, "hf_token": REDACTED}
    assert (tmp_path / "page.html").read_text() == "<p>&lt;redacted&gt;</p>"
    cleaned_table = pd.read_parquet(tmp_path / "results.parquet")
    assert cleaned_table["note"].tolist() == ["x <redacted>", pd.NA] and cleaned_table.dtypes.equals(table.dtypes)
    assert not redact_file(tmp_path / "clean.txt")


def test_an_arms_own_secrets_are_scrubbed_once_registered():
    value = "arm-only-secret-9f3b"
    assert value in redact_text(f"saw {value}")
    redact.add_secrets_from({"ARM_API_KEY": value, "OMP_NUM_THREADS": "1"})
    try:
        assert redact_text(f"saw {value}") == "saw <redacted>"
        assert redact_text("threads 1") == "threads 1"
    finally:
        redact._EXTRA_VALUES.discard(value)
