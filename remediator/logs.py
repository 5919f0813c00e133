"""Structured logs: one JSON object per line on stdout, secrets redacted at the logging layer."""

from __future__ import annotations

import contextvars
import html
import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import markupsafe

REDACTED = "[REDACTED]"
URL_PATH_MIN_CHARS = 8  # a secret URL's path is redacted on its own only from this length up

# Context carried into every log line of the current job or request (host_id, job_id, step, ...).
log_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "log_context", default=None
)

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def bind(**fields: Any) -> contextvars.Token:
    """Add fields to every log line until the returned token is reset."""
    return log_context.set({**(log_context.get() or {}), **{k: v for k, v in fields.items() if v}})


def encoded_forms(secret: str) -> set[str]:
    """The secret as written, and as JSON and HTML write it inside a string.

    Redaction runs on text already serialized (a JSON log line, an answer's body, a page), where a
    secret holding ``"``, ``\\``, a control or a non-ASCII character no longer appears as written:
    JSON escapes it (``ensure_ascii`` or not, and a JSON text inside a JSON string escapes it twice),
    HTML escapes ``"``, ``'``, ``&``, ``<`` and ``>`` (as Jinja/markupsafe and as ``html.escape`` do)."""
    forms = {secret}
    for _ in range(2):
        forms |= {
            json.dumps(form, ensure_ascii=ascii_only)[1:-1] for form in forms for ascii_only in (True, False)
        }
    forms |= {escaped for form in forms for escaped in (html.escape(form), str(markupsafe.escape(form)))}
    return forms


def url_parts(secret: str) -> set[str]:
    """The secret parts of a URL that is itself a secret (a Slack-style webhook): its path (with the
    query), which HTTP client logs write apart from the host (urllib3: ``"POST /services/T0/B0/xyz"``).
    Empty for anything else, and for a path too short to be the secret part."""
    parts = urlsplit(secret)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return set()
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return {p for p in (path, parts.path) if len(p) >= URL_PATH_MIN_CHARS}


class Redactor:
    """Replaces every configured secret value in a string, in each of its ``encoded_forms``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        values = {s for s in secrets if s and len(s) >= 4}
        values |= {part for s in values for part in url_parts(s)}
        # Longest first, so a secret containing another (or a form of it) is replaced whole.
        self.secrets = sorted({form for s in values for form in encoded_forms(s)}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


class JsonFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor(())

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(log_context.get() or {})
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self.redactor(json.dumps(entry, default=str))


def configure_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Route all logging (ours, rq's, gunicorn's error log) to JSON lines on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(Redactor(secrets)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("rq.worker", "rq.scheduler", "rq.job", "gunicorn.error", "werkzeug"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
