"""Cloud providers: the real vastai SDK and the Lambda REST client against local servers speaking
their APIs, and the statuspage.io provider-status check."""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from remediator.clients.pagers import RetryPolicy
from remediator.clients.providers import (
    CloudState,
    InstanceState,
    LambdaProvider,
    VastProvider,
    instance_state,
    provider_status_ok,
    provider_statuses,
    providers_from_settings,
)
from remediator.config import Settings
from remediator.exceptions import ProviderError

VAST_KEY = "vast-k3y-0f1e2d3c4b5a69788796a5b4"
LAMBDA_KEY = "secret_lambda-k3y_5a6b7c8d9e0f"
FAST = RetryPolicy(attempts=2, backoff=0.0, timeout=5.0)

# What the SDK's show_instances needs in every row besides the state fields (it computes from them).
ROW_BASE = {"start_date": 1714550400.0, "extra_env": [["RINGRIFT", "1"]], "ssh_host": "127.0.0.1"}


def vast_row(instance_id: int, actual_status: str | None, cur_state: str = "running") -> dict[str, Any]:
    return {**ROW_BASE, "id": instance_id, "actual_status": actual_status, "cur_state": cur_state}


def serve_vast(server: HTTPServer, rows: list[dict[str, Any]], page_size: int = 25) -> None:
    """Answer GET /api/v1/instances/ as Vast does: pages of rows, ``next_token`` until the last one."""

    def handler(request: Request) -> Response:
        if request.headers.get("Authorization") != f"Bearer {VAST_KEY}":
            return Response(
                json.dumps({"error": "unauthorized"}), status=401, content_type="application/json"
            )
        start = int(request.args.get("after_token") or 0)
        limit = int(request.args.get("limit") or page_size)
        page = rows[start : start + min(limit, page_size)]
        more = start + len(page) < len(rows)
        body = {
            "instances": page,
            "next_token": str(start + len(page)) if more else None,
            "total_instances": len(rows),
        }
        return Response(json.dumps(body), content_type="application/json")

    server.expect_request("/api/v1/instances/", method="GET").respond_with_handler(handler)


# -- Vast.ai, through the real SDK ------------------------------------------------------------------------


def test_vast_states_are_mapped_from_actual_status(server: HTTPServer) -> None:
    serve_vast(
        server,
        [
            vast_row(101, "running"),
            vast_row(102, "stopped", "stopped"),
            vast_row(103, "exited"),
            vast_row(104, "loading"),
            vast_row(105, "offline"),
            vast_row(106, None, "stopped"),
            vast_row(107, "something-new"),
        ],
    )
    vast = VastProvider(server.url_for(""), VAST_KEY, retry=1)

    states = vast.instance_states(["101", "102", "103", "104", "105", "106", "107", "999"])

    assert states == {
        "101": CloudState.RUNNING,
        "102": CloudState.STOPPED,
        "103": CloudState.STOPPED,
        "104": CloudState.RUNNING,
        "105": CloudState.UNKNOWN,
        "106": CloudState.STOPPED,
        "107": CloudState.UNKNOWN,
        "999": CloudState.TERMINATED,
    }


def test_vast_sdk_request_is_show_instances_with_bearer_key(server: HTTPServer) -> None:
    serve_vast(server, [vast_row(7, "running")])
    assert VastProvider(server.url_for(""), VAST_KEY, retry=1).instance_state("7") is CloudState.RUNNING

    [(request, _)] = server.log
    assert request.path == "/api/v1/instances/"
    assert request.headers["Authorization"] == f"Bearer {VAST_KEY}"
    assert request.headers["User-Agent"].startswith("vastai-sdk/")
    assert json.loads(request.args["select_filters"]) == {}
    assert json.loads(request.args["order_by"]) == [{"col": "id", "dir": "asc"}]
    assert request.args["limit"] == "25"


def test_vast_follows_next_token_across_pages(server: HTTPServer) -> None:
    serve_vast(server, [vast_row(i, "running") for i in range(1, 60)] + [vast_row(60, "exited")])
    vast = VastProvider(server.url_for(""), VAST_KEY, retry=1)

    assert vast.instance_state("60") is CloudState.STOPPED
    assert [r.args.get("after_token") for r, _ in server.log] == [None, "25", "50"]


def test_vast_missing_instance_is_terminated(server: HTTPServer) -> None:
    serve_vast(server, [vast_row(1, "running")])
    providers = {"vast": VastProvider(server.url_for(""), VAST_KEY, retry=1)}
    result = instance_state(providers, "vast", "31337")
    assert result == InstanceState(CloudState.TERMINATED, "vast reports instance 31337 terminated")


def test_vast_503_is_unknown_with_the_reason_and_no_key(
    server: HTTPServer, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    server.expect_request("/api/v1/instances/").respond_with_data("maintenance", status=503)
    providers = {"vast": VastProvider(server.url_for(""), VAST_KEY, retry=2)}

    result = instance_state(providers, "vast", "101")

    assert result.state is CloudState.UNKNOWN
    assert "HTTP 503" in result.reason and "127.0.0.1" in result.reason
    assert len(server.log) == 2  # the SDK retried the 503 once
    captured = capsys.readouterr()
    for text in (result.reason, caplog.text, captured.out, captured.err, repr(providers)):
        assert VAST_KEY not in text


def test_vast_401_raises_provider_error_without_the_key(server: HTTPServer) -> None:
    serve_vast(server, [])
    with pytest.raises(ProviderError) as caught:
        VastProvider(server.url_for(""), "wrong-" + VAST_KEY, retry=1).instance_state("1")
    assert "HTTP 401" in str(caught.value) and VAST_KEY not in str(caught.value)
    assert VAST_KEY not in "".join(__import__("traceback").format_exception(caught.value))


def test_vast_unreachable_is_unknown(closed_url: str) -> None:
    url = closed_url
    result = instance_state({"vast": VastProvider(url, VAST_KEY, retry=1)}, "vast", "1")
    assert result.state is CloudState.UNKNOWN and "unreachable" in result.reason


def test_vast_sdk_contacts_only_the_given_server_and_writes_nothing_to_home(
    server: HTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o500)  # as on a read-only root filesystem
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("VAST_URL", "http://vast.invalid")  # the SDK's own default must not win
    serve_vast(server, [vast_row(5, "running")])
    events: list[tuple[str, tuple[Any, ...]]] = []
    AUDIT.append(events)
    try:
        state = VastProvider(server.url_for(""), VAST_KEY, retry=1).instance_state("5")
    finally:
        AUDIT.remove(events)

    assert state is CloudState.RUNNING
    connects = {args[1] for name, args in events if name == "socket.connect"}
    assert connects == {("127.0.0.1", server.port)}
    opened_in_home = [
        args[0] for name, args in events if name == "open" and str(args[0]).startswith(str(home))
    ]
    assert opened_in_home == []


# -- an answer that is not a well-formed success never says "terminated" ------------------------------


def vast_answer(server: HTTPServer, body: Any, status: int = 200) -> None:
    """Answer every Vast listing with ``body`` (JSON unless it is bytes) and ``status``."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    server.expect_request("/api/v1/instances/").respond_with_data(
        data, status=status, content_type="application/json"
    )


def assert_unusable(result: InstanceState) -> None:
    assert result.state is CloudState.UNKNOWN, result
    assert "provider answer unusable" in result.reason and "127.0.0.1" in result.reason


@pytest.mark.parametrize(
    "body",
    [
        {"success": False},
        {"success": False, "error": "auth_error", "msg": "Invalid user key", "instances": []},
        {},
        {"instances": None},
        {"instances": "101"},
        {"instances": {"101": {"actual_status": "running"}}},
        {"instances": [7, 8]},
        {"instances": [{"actual_status": "running"}]},
        [],
        "maintenance",
    ],
    ids=[
        "success-false",
        "success-false-with-empty-list",
        "no-instances-key",
        "instances-null",
        "instances-string",
        "instances-object",
        "rows-not-objects",
        "row-without-id",
        "json-list",
        "json-string",
    ],
)
def test_vast_answer_not_a_well_formed_success_is_unknown_never_terminated(
    server: HTTPServer, body: Any
) -> None:
    vast_answer(server, body)
    result = instance_state({"vast": VastProvider(server.url_for(""), VAST_KEY, retry=1)}, "vast", "101")
    assert_unusable(result)


def test_vast_success_false_reason_carries_the_providers_words_without_the_key(server: HTTPServer) -> None:
    vast_answer(server, {"success": False, "error": "server_error", "msg": f"db down, key {VAST_KEY}"})
    result = instance_state({"vast": VastProvider(server.url_for(""), VAST_KEY, retry=1)}, "vast", "101")
    assert_unusable(result)
    assert "success=False" in result.reason and "server_error" in result.reason
    assert VAST_KEY not in result.reason


def test_vast_answer_that_is_not_json_is_unknown(server: HTTPServer) -> None:
    vast_answer(server, b"<html>502 Bad Gateway</html>")
    assert_unusable(
        instance_state({"vast": VastProvider(server.url_for(""), VAST_KEY, retry=1)}, "vast", "1")
    )


def test_vast_timeout_is_unknown(server: HTTPServer) -> None:
    def slow(request: Request) -> Response:
        threading.Event().wait(1.5)  # the test server's own handler, not a worker
        return Response(json.dumps({"instances": []}), content_type="application/json")

    server.expect_request("/api/v1/instances/").respond_with_handler(slow)
    vast = VastProvider(server.url_for(""), VAST_KEY, retry=1, timeout=0.3)
    result = instance_state({"vast": vast}, "vast", "1")
    assert_unusable(result)
    assert "Timeout" in result.reason


def test_vast_refused_connection_is_unknown_and_says_the_answer_was_unusable(closed_url: str) -> None:
    result = instance_state({"vast": VastProvider(closed_url, VAST_KEY, retry=1)}, "vast", "1")
    assert_unusable(result)


def test_vast_later_page_failing_makes_every_state_unknown(server: HTTPServer) -> None:
    def handler(request: Request) -> Response:
        if request.args.get("after_token"):
            return Response(json.dumps({"success": False}), content_type="application/json")
        body = {"instances": [vast_row(i, "running") for i in range(1, 26)], "next_token": "25"}
        return Response(json.dumps(body), content_type="application/json")

    server.expect_request("/api/v1/instances/").respond_with_handler(handler)
    providers = {"vast": VastProvider(server.url_for(""), VAST_KEY, retry=1)}
    assert_unusable(instance_state(providers, "vast", "30"))  # it would have been on the second page
    assert_unusable(instance_state(providers, "vast", "3"))  # the listing as a whole is not trusted


def test_vast_listing_shorter_than_it_announced_is_unknown(server: HTTPServer) -> None:
    vast_answer(server, {"instances": [vast_row(1, "running")], "next_token": None, "total_instances": 40})
    assert_unusable(
        instance_state({"vast": VastProvider(server.url_for(""), VAST_KEY, retry=1)}, "vast", "9")
    )


def test_vast_well_formed_empty_listing_still_means_terminated(server: HTTPServer) -> None:
    vast_answer(server, {"success": True, "instances": [], "next_token": None, "total_instances": 0})
    result = instance_state({"vast": VastProvider(server.url_for(""), VAST_KEY, retry=1)}, "vast", "9")
    assert result == InstanceState(CloudState.TERMINATED, "vast reports instance 9 terminated")


# Audit hooks cannot be removed, so one hook feeds whichever lists a test has put here.
AUDIT: list[list[tuple[str, tuple[Any, ...]]]] = []


def _audit(name: str, args: tuple[Any, ...]) -> None:
    if AUDIT and name in ("socket.connect", "open"):
        for events in AUDIT:
            events.append((name, args))


sys.addaudithook(_audit)


# -- Lambda Cloud ----------------------------------------------------------------------------------------


def serve_lambda(server: HTTPServer, instances: list[dict[str, Any]]) -> None:
    server.expect_request(
        "/api/v1/instances", method="GET", headers={"Authorization": f"Bearer {LAMBDA_KEY}"}
    ).respond_with_json({"data": instances})


def test_lambda_states_are_mapped(server: HTTPServer) -> None:
    serve_lambda(
        server,
        [
            {"id": "0920582c7ff041399e34823a0be62549", "status": "active"},
            {"id": "b2", "status": "booting"},
            {"id": "u3", "status": "unhealthy"},
            {"id": "t4", "status": "terminated"},
            {"id": "p5", "status": "preempted"},
        ],
    )
    lam = LambdaProvider(server.url_for("/"), LAMBDA_KEY, retry=FAST)

    states = lam.instance_states(["0920582c7ff041399e34823a0be62549", "b2", "u3", "t4", "p5", "gone"])

    assert states == {
        "0920582c7ff041399e34823a0be62549": CloudState.RUNNING,
        "b2": CloudState.RUNNING,
        "u3": CloudState.UNKNOWN,
        "t4": CloudState.TERMINATED,
        "p5": CloudState.TERMINATED,
        "gone": CloudState.TERMINATED,
    }


def test_lambda_url_may_already_end_in_api_v1(server: HTTPServer) -> None:
    serve_lambda(server, [{"id": "a", "status": "active"}])
    assert (
        LambdaProvider(server.url_for("/api/v1"), LAMBDA_KEY, retry=FAST).instance_state("a")
        is CloudState.RUNNING
    )


def test_lambda_5xx_is_retried_then_unknown_without_the_key(
    server: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.expect_request("/api/v1/instances").respond_with_data("oops", status=500)
    providers = {"lambda": LambdaProvider(server.url_for(""), LAMBDA_KEY, retry=FAST)}

    result = instance_state(providers, "lambda", "a")

    assert result.state is CloudState.UNKNOWN and "HTTP 500" in result.reason
    assert len(server.log) == FAST.attempts
    assert LAMBDA_KEY not in result.reason + caplog.text + repr(providers)


def test_lambda_retry_recovers_from_one_503(server: HTTPServer) -> None:
    server.expect_ordered_request("/api/v1/instances").respond_with_data("busy", status=503)
    server.expect_ordered_request("/api/v1/instances").respond_with_json(
        {"data": [{"id": "a", "status": "active"}]}
    )
    assert (
        LambdaProvider(server.url_for(""), LAMBDA_KEY, retry=FAST).instance_state("a") is CloudState.RUNNING
    )


def test_lambda_bad_answer_is_a_provider_error(server: HTTPServer) -> None:
    server.expect_request("/api/v1/instances").respond_with_json({"error": {"code": "global/unknown"}})
    with pytest.raises(ProviderError, match="answered an error: 'global/unknown'"):
        LambdaProvider(server.url_for(""), LAMBDA_KEY, retry=FAST).instance_state("a")


@pytest.mark.parametrize(
    "body",
    [
        {"data": [], "error": {"code": "global/unknown", "message": "Unknown error"}},
        {"data": [{"id": "a", "status": "active"}, "garbage"]},
        {"data": [{"status": "active"}]},
        {"data": None},
        {"data": {"a": {"status": "active"}}},
        [],
    ],
    ids=["error-beside-data", "row-not-object", "row-without-id", "data-null", "data-object", "json-list"],
)
def test_lambda_answer_not_a_well_formed_success_is_unknown_never_terminated(
    server: HTTPServer, body: Any
) -> None:
    server.expect_request("/api/v1/instances").respond_with_json(body)
    providers = {"lambda": LambdaProvider(server.url_for(""), LAMBDA_KEY, retry=FAST)}
    assert_unusable(instance_state(providers, "lambda", "b"))


def test_lambda_non_2xx_answer_is_unknown(server: HTTPServer) -> None:
    server.expect_request("/api/v1/instances").respond_with_json({"data": []}, status=304)
    providers = {"lambda": LambdaProvider(server.url_for(""), LAMBDA_KEY, retry=FAST)}
    result = instance_state(providers, "lambda", "b")
    assert_unusable(result)
    assert "HTTP 304" in result.reason


def test_a_listing_whose_rows_carry_no_state_cannot_say_an_instance_is_terminated(server: HTTPServer) -> None:
    """Rows without their state fields (an API change, a broken proxy) make the listing unreadable: an
    instance missing from it is unknown, not terminated (found by the property test, I8)."""
    server.expect_request("/api/v1/instances").respond_with_json({"data": [{"id": "a"}]})
    lambda_ = {"lambda": LambdaProvider(server.url_for(""), LAMBDA_KEY, retry=FAST)}
    result = instance_state(lambda_, "lambda", "gone")
    assert result.state is CloudState.UNKNOWN and "without status" in result.reason
    server.clear()
    serve_vast(server, [{**vast_row(1, None, cur_state=""), "actual_status": None}])
    vast = {"vast": VastProvider(server.url_for(""), VAST_KEY, retry=1)}
    result = instance_state(vast, "vast", "31337")
    assert result.state is CloudState.UNKNOWN and "without actual_status or cur_state" in result.reason


# -- configuration and not_asked -------------------------------------------------------------------------


def test_unconfigured_provider_is_not_asked() -> None:
    providers = providers_from_settings(Settings(vast_url="http://127.0.0.1:1"))  # URL without a key
    assert providers == {}
    assert instance_state(providers, "vast", "1").state is CloudState.NOT_ASKED
    assert instance_state(providers, "lambda", "1").state is CloudState.NOT_ASKED
    assert instance_state(providers, None, None).state is CloudState.NOT_ASKED


def test_providers_from_settings_builds_both_when_configured() -> None:
    settings = Settings(
        vast_url="http://127.0.0.1:1",
        vast_api_key=VAST_KEY,
        lambda_url="http://127.0.0.1:2",
        lambda_api_key=LAMBDA_KEY,
    )
    providers = providers_from_settings(settings)
    assert isinstance(providers["vast"], VastProvider) and isinstance(providers["lambda"], LambdaProvider)
    assert VAST_KEY not in repr(providers) and LAMBDA_KEY not in repr(providers)


def test_cloud_state_values_are_the_rules_vocabulary() -> None:
    assert [s.value for s in CloudState] == ["running", "stopped", "terminated", "unknown", "not_asked"]
    assert CloudState.RUNNING == "running"


# -- provider status pages ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("indicator", "ok"), [("none", True), ("minor", True), ("major", False), ("critical", False)]
)
def test_provider_status_indicator(server: HTTPServer, indicator: str, ok: bool) -> None:
    server.expect_request("/api/v2/status.json").respond_with_json(
        {"page": {"name": "Vast.ai"}, "status": {"indicator": indicator, "description": "..."}}
    )
    assert provider_status_ok(server.url_for("/api/v2/status.json"), retry=FAST) is ok


def test_provider_status_unreachable_is_not_ok(closed_url: str) -> None:
    url = closed_url + "/api/v2/status.json"
    assert provider_status_ok(url, retry=FAST) is False


def test_provider_status_unreadable_answer_is_not_ok(server: HTTPServer) -> None:
    server.expect_request("/status").respond_with_data("<html>maintenance</html>")
    assert provider_status_ok(server.url_for("/status"), retry=FAST) is False


def test_provider_status_unset_is_none(server: HTTPServer) -> None:
    server.expect_request("/s").respond_with_json({"status": {"indicator": "major"}})
    settings = Settings(lambda_status_url=server.url_for("/s"))
    assert provider_status_ok(None) is None
    assert provider_statuses(settings, retry=FAST) == {"vast": None, "lambda": False}
