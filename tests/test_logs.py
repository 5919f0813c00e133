"""Structured logs and the Redactor: a secret is caught in every form serialization gives it."""

from __future__ import annotations

import io
import json
import logging

import markupsafe
import pytest
from helpers import ADMIN_TOKEN, alert, bearer, make_settings, payload

from remediator import create_app
from remediator.logs import REDACTED, JsonFormatter, Redactor, encoded_forms

# Secrets as a person may really set them: a quote, a backslash, non-ASCII, a control character.
AWKWARD = [
    'pa"ss-7f3a9c1e',
    "back\\slash-5b2d4f60",
    "grüße-señor-密码-b84f2d6c",
    "emoji-😀-c19e07a53",
    "tab\there-0c9a77d3",
    "<admin>&'key'-91c2e8f4",
]


def _log_line(secret: str, message: str) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(Redactor([secret])))
    logger = logging.getLogger(f"test_logs.{abs(hash(secret))}")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning(message, extra={"detail": {"said": message}})
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


@pytest.mark.parametrize("secret", AWKWARD)
def test_json_log_line_redacts_a_secret_that_json_escapes(secret: str) -> None:
    line = _log_line(secret, f"token {secret} refused")
    entry = json.loads(line)
    assert secret not in entry["msg"] and secret not in json.dumps(entry["detail"], ensure_ascii=False)
    assert entry["msg"] == f"token {REDACTED} refused"
    assert not any(form in line for form in encoded_forms(secret))


@pytest.mark.parametrize("secret", AWKWARD)
def test_redactor_catches_json_html_and_double_json_forms(secret: str) -> None:
    redact = Redactor([secret])
    texts = [
        json.dumps({"k": f"a {secret} b"}),
        json.dumps({"k": f"a {secret} b"}, ensure_ascii=False),
        json.dumps({"log": json.dumps({"k": secret})}),  # a JSON line carried inside another
        str(markupsafe.escape(f"<td>{secret}</td>")),
    ]
    for text in texts:
        cleaned = redact(text)
        assert REDACTED in cleaned and not any(form in cleaned for form in encoded_forms(secret)), text


@pytest.mark.parametrize("secret", AWKWARD)
def test_answer_redacts_a_json_escaped_secret_echoed_back(redis_url: str, secret: str) -> None:
    app = create_app({"SETTINGS": make_settings(redis_url, coordinator_admin_key=secret), "TESTING": True})
    # A sender echoes the secret in an alertname, which the answer names in a "skipped" entry.
    resp = app.test_client().post(
        "/webhook/alertmanager",
        data=json.dumps(payload([alert("h1", alertname=f"x-{secret}")])),
        content_type="application/json",
        headers=bearer(),
    )
    assert resp.status_code == 202
    text = resp.get_data(as_text=True)
    assert REDACTED in text and secret not in json.dumps(resp.get_json(), ensure_ascii=False)
    assert ADMIN_TOKEN not in text
