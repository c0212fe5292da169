"""Secrets never reach what benchlib writes (issue #8, part 5): one redaction, used by every writer.

What is a secret:

* **by name**: a key or environment variable whose words (split at ``_``, ``-``, ``.`` and camelCase)
  name one: PASSWORD, SECRET, CREDENTIALS, COOKIE, AUTH, APIKEY... anywhere, or TOKEN, KEY, PASS,
  PAT, DSN, JWT as the last word (``HF_TOKEN``, ``MY_API_KEY``; ``AWS_ACCESS_KEY_ID`` too). Counts,
  paths and record fields are not: ``max_tokens``, ``output_tokens``, ``tokens_per_s``,
  ``HF_TOKEN_PATH``, a bare ``key``, ``sort_key``;
* **by value**: the values of such variables in this process's environment (and of secret-named
  entries registered with :func:`add_secrets_from`, e.g. an arm's ``env``), plus secrets embedded in
  any variable's value (``DATABASE_URL=postgres://u:PASSWORD@h/db``, ``Bearer TOKEN``). A value
  shorter than :data:`MIN_SECRET_CHARS`, all digits, or a word like ``true`` is not scrubbed by
  value, so it cannot wreck the text around it. Each value is also found JSON-, HTML-, URL- and
  Python-repr-escaped, as it appears in a notebook, a page or a log;
* **by pattern**: credentials in URLs (``scheme://user:pass@``), ``NAME=value`` and
  ``"NAME": "value"`` where NAME names a secret, ``Authorization:`` headers and bearer tokens, and
  well-known token formats (``hf_``, ``ghp_``, ``github_pat_``, ``sk-``, ``AKIA``, ``xox?-``,
  ``glpat-``, ``nvapi-``, ``AIza``, JWTs).

Writers call :func:`redact_text` (a page, a log, a CSV), :func:`redact_obj` (JSON records: keys named
like secrets lose their value), :func:`redact_frame` (the string columns of a table) or
:func:`redact_file` / :func:`redact_tree` (what a subprocess wrote: papermill's notebook and log).
The environment fingerprint uses :func:`redact`, which also hides bare high-entropy runs of 32+
characters (that heuristic would corrupt base64 images in a notebook, so only env.json gets it).
"""
from __future__ import annotations

import functools
import html
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import quote, quote_plus

import pandas as pd

from . import _atomic

__all__ = [
    "MIN_SECRET_CHARS", "REDACTED", "REDACTED_HTML", "add_secrets_from", "redact", "redact_file",
    "redact_frame", "redact_obj", "redact_text", "redact_tree", "secret_name", "secret_values"
]

REDACTED = "<redacted>"
REDACTED_HTML = html.escape(REDACTED)
#: Values shorter than this are never scrubbed by value (they would match everywhere).
MIN_SECRET_CHARS = 6
_HARMLESS_VALUES = frozenset({"true", "false", "none", "null", "unset", "disabled", "enabled", "default"})

# --------------------------------------------------------------------------- names

#: Words that name a secret wherever they stand in a name.
_SECRET_WORDS = frozenset({
    "password", "passwd", "passphrase", "secret", "secrets", "credential", "credentials", "creds", "cookie",
    "cookies", "auth", "authorization", "apikey", "accesskey", "secretkey", "privatekey", "authtoken",
    "accesstoken", "refreshtoken", "apitoken", "bearer",
})
#: Words that name a secret as the last word of a name (``HF_TOKEN``, but not ``HF_TOKEN_PATH``).
_SECRET_LAST_WORDS = frozenset({"token", "key", "pass", "pat", "dsn", "jwt"})
#: ...except KEY and PASS alone or after one of these (a record's ``key``, ``sort_key``, ``bypass``).
_PLAIN_KEY_WORDS = frozenset({"sort", "cache", "group", "primary", "foreign", "join", "partition", "dict", "lookup",
                              "hash", "index", "case", "row", "column", "metric", "env", "config", "map", "by", "first",
                              "single", "multi"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _words(name: str) -> list[str]:
    return [word.lower() for word in re.split(r"[^A-Za-z0-9]+", _CAMEL.sub("_", name)) if word]


def _has_secret_word(words: list[str]) -> bool:
    return any(word in _SECRET_WORDS or word.endswith(("password", "passwd", "secret")) for word in words)


def secret_name(name: str) -> bool:
    """Whether a key or variable name names a secret (see the module docstring)."""
    words = _words(name)
    if not words:
        return False
    if _has_secret_word(words):
        return True
    if words[-1] in _SECRET_LAST_WORDS:
        return words[-1] not in ("key", "pass") or (len(words) > 1 and words[-2] not in _PLAIN_KEY_WORDS)
    return any(word == "key" and following == "id" for word, following in zip(words, words[1:]))


# --------------------------------------------------------------------------- patterns

# (the password may already be replaced by value: the whole user:password goes)
_URL_CREDENTIALS = re.compile(
    r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@:<>\"'`]+:(?:<redacted>|&lt;redacted&gt;|[^/\s@<>\"'`])*@")
# NAME=value (env style, --flag=value, ?query=value); not a JS property (a.b=c) nor ==
_ASSIGNMENT = re.compile(r"(?<![\w.$])(-{0,2}[A-Za-z_][A-Za-z0-9_-]*)=(?!=)([^\s,;&<>\"'`)\]}]+)")
# "NAME": "value" / 'NAME': 'value' / "NAME"="value"
_QUOTED_PAIR = re.compile(r"([\"'])([A-Za-z_][A-Za-z0-9_.-]*)\1(\s*[:=]\s*)([\"'])((?:\\.|(?!\4)[^\\\n])*)\4")
_HEADER = re.compile(r"(?i)\b((?:proxy-)?authorization|x-api-key|x-auth-token|api-key)(\"?'?\s*[:=]\s*[\"']?)"
                     r"(?:(bearer|basic|token|digest)\s+)?(<redacted>|&lt;redacted&gt;|[^\s\"',;<>]+)")
_BEARER = re.compile(r"(?i)\b(bearer)\s+([A-Za-z0-9._~+/=-]{8,})")
_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])(?:hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|glpat-[A-Za-z0-9_-]{20,}|nvapi-[A-Za-z0-9_-]{20,}|AIza[0-9A-Za-z_-]{35}|npm_[A-Za-z0-9]{36}"
    r"|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+)"
)
_BLOB = re.compile(r"[A-Za-z0-9+=_-]{32,}")
_HEX_ID = re.compile(r"(?:MIG-)?(?:GPU-)?[0-9a-fA-F-]+")  # GPU/MIG UUIDs, digests, container ids


#: Word pairs that name a secret in any case (``api_key``, ``accessToken``).
_SECRET_PAIRS = frozenset({("api", "key"), ("api", "token"), ("access", "token"), ("access", "key"),
                           ("auth", "token"), ("private", "key"), ("secret", "key"), ("refresh", "token")})


@functools.lru_cache(maxsize=4096)
def _secret_name_in_text(name: str) -> bool:
    """:func:`secret_name`, stricter for a ``name=value`` found in free text: the name is an
    environment variable (``HF_TOKEN``), holds a word that names a secret anywhere
    (``password``), or a pair such as ``api_key``. Minified code is full of ``jwt=f()`` and
    ``"metaKey":"ctrlKey"``, which a lowercase last-word match would mangle."""
    bare = name.lstrip("-")
    if not secret_name(bare):
        return False
    words = _words(bare)
    if bare.isupper() or _has_secret_word(words):
        return True
    return any(pair in _SECRET_PAIRS for pair in zip(words, words[1:]))


def _redact_patterns(text: str, replacement: str) -> str:
    lowered = text.lower()
    if "://" in text:
        text = _URL_CREDENTIALS.sub(lambda m: f"{m[1]}{replacement}@", text)
    if any(word in lowered for word in ("authoriz", "api-key", "auth-token")):
        text = _HEADER.sub(lambda m: f"{m[1]}{m[2]}{m[3] + ' ' if m[3] else ''}{replacement}", text)
    if "bearer" in lowered:
        text = _BEARER.sub(lambda m: f"{m[1]} {replacement}", text)

    def assignment(m: re.Match) -> str:
        return f"{m[1]}={replacement}" if _secret_name_in_text(m[1]) and m[2] != replacement else m[0]

    def quoted_pair(m: re.Match) -> str:
        hide = _secret_name_in_text(m[2]) and m[5]
        return f"{m[1]}{m[2]}{m[1]}{m[3]}{m[4]}{replacement}{m[4]}" if hide else m[0]

    text = _ASSIGNMENT.sub(assignment, text)
    text = _QUOTED_PAIR.sub(quoted_pair, text)
    return _TOKEN.sub(replacement, text)


# --------------------------------------------------------------------------- values

_EXTRA_VALUES: set[str] = set()


def _worth_scrubbing(value: str) -> bool:
    value = value.strip()
    return (len(value) >= MIN_SECRET_CHARS and value.lower() not in _HARMLESS_VALUES
            and not re.fullmatch(r"[\d.,:+-]+", value) and value != REDACTED)


def _embedded_secrets(value: str) -> set[str]:
    """Secrets inside any value: URL passwords, header and bearer tokens, NAME=secret, known formats."""
    found = set()
    for match in re.finditer(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s@:]+:([^/\s@]+)@", value):
        found.add(match[1])
    found.update(match[4] for match in _HEADER.finditer(value))
    found.update(match[2] for match in _BEARER.finditer(value))
    found.update(match[2] for match in _ASSIGNMENT.finditer(value) if _secret_name_in_text(match[1]))
    found.update(match[0] for match in _TOKEN.finditer(value))
    return found


def secret_values(mapping: Mapping[str, str]) -> set[str]:
    """The secret values of an environment-like mapping (see the module docstring)."""
    values: set[str] = set()
    for name, value in mapping.items():
        if not isinstance(value, str):
            continue
        if secret_name(str(name)):
            values.add(value.strip())
        values |= _embedded_secrets(value)
    return {value for value in values if _worth_scrubbing(value)}


def add_secrets_from(mapping: Mapping[str, str]) -> None:
    """Scrub, from now on in this process, the secret values of ``mapping`` too (an arm's ``env``)."""
    _EXTRA_VALUES.update(secret_values(mapping))


def _variants(value: str) -> set[str]:
    """How a value appears written out: as is, and JSON-, HTML-, URL- and repr-escaped."""
    dumped = json.dumps(value)[1:-1]
    plotly_json = dumped.replace("<", "\\u003c").replace(">", "\\u003e").replace("/", "\\u002f")
    return {value, dumped, json.dumps(value, ensure_ascii=False)[1:-1], plotly_json, html.escape(value),
            html.escape(value, quote=False), html.escape(dumped), quote(value, safe=""), quote_plus(value),
            repr(value)[1:-1]}


@functools.lru_cache(maxsize=8)
def _all_variants(values: frozenset[str]) -> tuple[str, ...]:
    found = {variant for value in values for variant in _variants(value) if len(variant) >= MIN_SECRET_CHARS}
    return tuple(sorted(found, key=len, reverse=True))


def _known_values() -> frozenset[str]:
    return _values_of(tuple(os.environ.items()), frozenset(_EXTRA_VALUES))


@functools.lru_cache(maxsize=8)
def _values_of(environ: tuple[tuple[str, str], ...], extra: frozenset[str]) -> frozenset[str]:
    return frozenset(secret_values(dict(environ)) | extra)


def _redact_values(text: str, replacement: str, variants: tuple[str, ...] | None = None) -> str:
    present = [variant for variant in (_all_variants(_known_values()) if variants is None else variants)
               if variant in text]
    if not present:
        return text
    return re.sub("|".join(map(re.escape, present)), replacement, text)


# --------------------------------------------------------------------------- what writers call


def redact_text(text: str, *, html_safe: bool = False, _variants: tuple[str, ...] | None = None) -> str:
    """``text`` with every secret replaced by ``<redacted>`` (``&lt;redacted&gt;`` when ``html_safe``,
    for a page or markdown, where a bare ``<redacted>`` would be a tag)."""
    replacement = REDACTED_HTML if html_safe else REDACTED
    return _redact_patterns(_redact_values(text, replacement, _variants), replacement)


def redact_obj(obj: Any, *, blobs: bool = False, _variants: tuple[str, ...] | None = None) -> Any:
    """A copy of JSON-like ``obj``: a value under a key that names a secret becomes ``<redacted>``
    (None and booleans stay), every string goes through :func:`redact_text`; with ``blobs``, bare
    high-entropy runs too (see :func:`redact`). The environment's secrets are read once per call,
    not once per string (a merged cluster manifest holds tens of thousands)."""
    variants = _all_variants(_known_values()) if _variants is None else _variants
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            name = redact_text(key, _variants=variants) if isinstance(key, str) else key
            hide = isinstance(key, str) and secret_name(key) and value is not None and not isinstance(value, bool)
            out[name] = REDACTED if hide else redact_obj(value, blobs=blobs, _variants=variants)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact_obj(value, blobs=blobs, _variants=variants) for value in obj]
    if isinstance(obj, str):
        text = redact_text(obj, _variants=variants)
        return _BLOB.sub(lambda m: REDACTED if _looks_random(m[0]) else m[0], text) if blobs else text
    return obj


def redact(obj: Any) -> Any:
    """The environment fingerprint's redaction: :func:`redact_obj` plus bare runs of 32+ base64-ish
    characters mixing upper case, lower case and digits; hex ids (GPU/MIG UUIDs, ``sha256:``
    digests, container ids) are kept."""
    return redact_obj(obj, blobs=True)


def _looks_random(run: str) -> bool:
    if _HEX_ID.fullmatch(run):
        return False
    return any(c.isupper() for c in run) and any(c.islower() for c in run) and any(c.isdigit() for c in run)


def redact_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its string cells redacted, dtypes kept (the same frame when nothing changes)."""
    changed = {}
    for column in frame.columns:
        series = frame[column]
        if not (pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)):
            continue
        texts = {value for value in series.dropna().unique() if isinstance(value, str)}
        mapping = {text: redact_text(text) for text in texts}
        mapping = {text: clean for text, clean in mapping.items() if clean != text}
        if mapping:
            changed[column] = series.map(
                lambda value: mapping.get(value, value) if isinstance(value, str) else value).astype(series.dtype)
    return frame.assign(**changed) if changed else frame


_HTML_SUFFIXES = (".html", ".htm", ".md")
_TEXT_SUFFIXES = (".log", ".txt", ".yaml", ".yml", ".csv", ".tsv", ".out", ".err")


def redact_file(path: Path) -> bool:
    """Redact a file in place (atomically); True when it changed. Parquet tables, JSON and notebooks
    are redacted as data, pages and markdown as HTML-safe text, other text as text; binary files of
    other kinds are left alone."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _redact_parquet(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return False
    if suffix in (".json", ".ipynb"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            clean = redact_text(text)
        else:
            clean_data = redact_obj(data)
            clean = text if clean_data == data else _dump_like(clean_data, suffix)
    elif suffix in _HTML_SUFFIXES or suffix in _TEXT_SUFFIXES or not suffix:
        clean = redact_text(text, html_safe=suffix in _HTML_SUFFIXES)
    else:
        clean = redact_text(text)
    if clean == text:
        return False
    _atomic.write_text(path, clean)
    return True


def _redact_parquet(path: Path) -> bool:
    """Redact a parquet file's string columns, keeping its schema exactly (dtypes, pandas metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    changed = False
    for index, column in enumerate(table.schema):
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        values = table.column(index).to_pylist()
        cleaned = {text: redact_text(text) for text in set(values) if isinstance(text, str)}
        if all(clean == text for text, clean in cleaned.items()):
            continue
        array = pa.array([cleaned.get(v, v) if isinstance(v, str) else v for v in values], type=column.type)
        table = table.set_column(index, column, array)
        changed = True
    if changed:
        _atomic.write_arrow_parquet(path, table)
    return changed


def _dump_like(data: Any, suffix: str) -> str:
    """JSON as nbformat writes a notebook (indent 1, sorted keys) or as benchlib writes JSON."""
    if suffix == ".ipynb":
        return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def redact_tree(root: Path, names: Iterable[str] | None = None) -> list[Path]:
    """Redact every file under ``root`` (or only those named); the files that changed."""
    root = Path(root)
    wanted = set(names) if names is not None else None
    changed = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        if wanted is not None and path.name not in wanted:
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            continue  # another writer's temporary file
        if redact_file(path):
            changed.append(path)
    return changed
