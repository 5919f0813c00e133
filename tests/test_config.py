"""Settings from the environment: refused configurations name the variable at fault, never a secret;
what counts as a secret, and the _FILE forms."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from remediator.config import SECRET_VARS, Settings
from remediator.exceptions import ConfigError
from remediator.logs import REDACTED, JsonFormatter, Redactor

SHARED = "shared-token-6f1e2d3c4b5a"
HOOK = "https://hooks.slack.example/services/T0LEAK/B0LEAK/xoxb-5ac4c0ffee9d"


def test_webhook_token_equal_to_admin_token_is_refused_naming_both_variables_not_the_value():
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"REMEDIATOR_WEBHOOK_TOKEN": SHARED, "REMEDIATOR_ADMIN_TOKEN": SHARED})
    message = str(refused.value)
    assert "REMEDIATOR_WEBHOOK_TOKEN" in message and "REMEDIATOR_ADMIN_TOKEN" in message
    assert SHARED not in message


def test_equal_tokens_are_refused_in_their_file_form_too(tmp_path):
    (tmp_path / "webhook").write_text(SHARED + "\n")
    (tmp_path / "admin").write_text(SHARED)
    with pytest.raises(ConfigError, match="same token"):
        Settings.from_env(
            {
                "REMEDIATOR_WEBHOOK_TOKEN_FILE": str(tmp_path / "webhook"),
                "REMEDIATOR_ADMIN_TOKEN_FILE": str(tmp_path / "admin"),
            }
        )


def test_distinct_or_unset_tokens_are_accepted():
    assert Settings.from_env({"REMEDIATOR_WEBHOOK_TOKEN": "a-token-1", "REMEDIATOR_ADMIN_TOKEN": "a-token-2"})
    assert Settings.from_env({"REMEDIATOR_WEBHOOK_TOKEN": "a-token-1"}).admin_token is None
    assert Settings.from_env({}).webhook_token is None


def test_serve_refuses_to_start_with_the_webhook_token_as_admin_token():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REMEDIATOR_", "REDIS_URL"))}
    env.update(
        REMEDIATOR_WEBHOOK_TOKEN=SHARED, REMEDIATOR_ADMIN_TOKEN=SHARED, REDIS_URL="redis://127.0.0.1:9/0"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "remediator", "serve", "--bind", "127.0.0.1:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "REMEDIATOR_WEBHOOK_TOKEN and REMEDIATOR_ADMIN_TOKEN are the same token" in proc.stderr
    assert SHARED not in proc.stdout + proc.stderr


def test_read_token_equal_to_the_admin_or_webhook_token_is_refused():
    for other in ("REMEDIATOR_ADMIN_TOKEN", "REMEDIATOR_WEBHOOK_TOKEN"):
        with pytest.raises(ConfigError, match=f"{other} and REMEDIATOR_READ_TOKEN are the same token"):
            Settings.from_env({other: SHARED, "REMEDIATOR_READ_TOKEN": SHARED})


def test_read_token_is_read_from_its_file_form(tmp_path):
    (tmp_path / "read").write_text("rdt-from-a-file\n")
    settings = Settings.from_env({"REMEDIATOR_READ_TOKEN_FILE": str(tmp_path / "read")})
    assert settings.read_token == "rdt-from-a-file" and "rdt-from-a-file" in settings.secrets()
    assert "rdt-from-a-file" not in repr(settings)


def test_allowed_hosts_are_host_names_lowercased_without_a_trailing_dot():
    settings = Settings.from_env(
        {"REMEDIATOR_ALLOWED_HOSTS": " RR.remediation.svc. ,localhost,,[::1],10.0.0.5 "}
    )
    assert settings.allowed_hosts == ("rr.remediation.svc", "localhost", "[::1]", "10.0.0.5")
    assert Settings.from_env({}).allowed_hosts == ()


@pytest.mark.parametrize("entry", ["rr.svc:8080", "http://rr.svc", "rr svc", "*", "[::1]:8080"])
def test_an_allowed_hosts_entry_that_is_not_a_host_name_is_refused_naming_it(entry):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"REMEDIATOR_ALLOWED_HOSTS": f"localhost,{entry}"})
    assert "REMEDIATOR_ALLOWED_HOSTS" in str(refused.value) and repr(entry) in str(refused.value)


def test_page_webhook_url_is_a_secret_redacted_and_kept_out_of_repr() -> None:
    settings = Settings.from_env({"REMEDIATOR_PAGE_WEBHOOK_URL": HOOK})
    assert settings.page_webhook_url == HOOK
    assert "REMEDIATOR_PAGE_WEBHOOK_URL" in SECRET_VARS
    assert HOOK in settings.secrets()
    assert HOOK not in repr(settings)
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "posting to %s", (HOOK,), None)
    assert JsonFormatter(Redactor(settings.secrets())).format(record).count(REDACTED) == 1


def test_page_webhook_url_may_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "hook").write_text(HOOK + "\n")
    settings = Settings.from_env({"REMEDIATOR_PAGE_WEBHOOK_URL_FILE": str(tmp_path / "hook")})
    assert settings.page_webhook_url == HOOK and HOOK in settings.secrets()


@pytest.mark.parametrize("name", sorted(SECRET_VARS))
def test_every_secret_variable_is_a_secret_of_the_settings(name: str) -> None:
    value = f"value-of-{name.lower()}-7c1d"
    assert value in Settings.from_env({name: value}).secrets()


def test_page_webhook_url_path_is_redacted_where_a_client_logs_it_apart_from_the_host() -> None:
    redact = Redactor(Settings.from_env({"REMEDIATOR_PAGE_WEBHOOK_URL": HOOK}).secrets())
    line = 'https://hooks.slack.example:443 "POST /services/T0LEAK/B0LEAK/xoxb-5ac4c0ffee9d HTTP/1.1" 200 2'
    assert "xoxb-5ac4c0ffee9d" not in redact(line) and REDACTED in redact(line)
