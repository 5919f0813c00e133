"""The pagers against local servers speaking their protocols, and the real Alertmanager."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_binary
from helpers import wait_for
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from remediator.clients.pagers import (
    PAGERS,
    UNDELIVERABLE,
    AlertmanagerPager,
    Page,
    PagerDutyPager,
    RetryPolicy,
    WebhookPager,
    deliver,
    delivered,
    pagers_from_settings,
)
from remediator.config import Settings
from remediator.exceptions import PagerError
from remediator.sim.alertmanager import AlertmanagerProcess

ROUTING_KEY = "R0UT1NGKEYsecret0123456789abcdef"
FAST = RetryPolicy(attempts=3, backoff=0.0, timeout=5.0)
PAGE = Page(
    dedup_key="fleet-storm-2024-05-01T10:00",
    summary="8 hosts critical: unsynced games at risk",
    severity="critical",
    source="ringrift-remediator",
    details={"unsynced_games": 1234, "checklist": {"rsync attempted": True}},
    hosts=("gpu-1", "gpu-2"),
)


def posted_json(server: HTTPServer) -> list[object]:
    return [json.loads(request.get_data()) for request, _ in server.log]


# -- Page ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("severity", "page-me"), ("dedup_key", ""), ("summary", ""), ("details", {"when": object()})],
)
def test_page_refuses_invalid_fields(field: str, value: object) -> None:
    fields = {"dedup_key": "k", "summary": "s", "severity": "info", "source": "r", field: value}
    with pytest.raises(ValueError, match=field):
        Page(**fields)  # type: ignore[arg-type]


# -- PagerDuty Events v2 ------------------------------------------------------------------------------


def test_pagerduty_trigger_posts_events_v2_body(server: HTTPServer) -> None:
    server.expect_request("/v2/enqueue", method="POST").respond_with_json(
        {"status": "success", "message": "Event processed", "dedup_key": PAGE.dedup_key}, status=202
    )
    PagerDutyPager(server.url_for("/v2/enqueue"), ROUTING_KEY, retry=FAST).trigger(PAGE)

    [body] = posted_json(server)
    assert body == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": PAGE.dedup_key,
        "payload": {
            "summary": PAGE.summary,
            "source": "ringrift-remediator",
            "severity": "critical",
            "custom_details": {
                "unsynced_games": 1234,
                "checklist": {"rsync attempted": True},
                "hosts": ["gpu-1", "gpu-2"],
            },
        },
        "client": "ringrift-remediator",
    }
    assert server.log[0][0].headers["Content-Type"] == "application/json"


def test_pagerduty_resolve_reuses_the_dedup_key(server: HTTPServer) -> None:
    server.expect_request("/v2/enqueue", method="POST").respond_with_json({"status": "success"}, status=202)
    pager = PagerDutyPager(server.url_for("/v2/enqueue"), ROUTING_KEY, retry=FAST)
    pager.trigger(PAGE)
    pager.resolve(PAGE)

    trigger, resolve = posted_json(server)
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": PAGE.dedup_key}
    assert trigger["dedup_key"] == resolve["dedup_key"]  # type: ignore[index]


@pytest.mark.parametrize("status", [500, 503, 429])
def test_pagerduty_retries_5xx_and_429_then_succeeds(server: HTTPServer, status: int) -> None:
    server.expect_ordered_request("/v2/enqueue", method="POST").respond_with_data("busy", status=status)
    server.expect_ordered_request("/v2/enqueue", method="POST").respond_with_json({"status": "success"}, 202)
    PagerDutyPager(server.url_for("/v2/enqueue"), ROUTING_KEY, retry=FAST).trigger(PAGE)
    server.check_assertions()
    assert len(server.log) == 2


def test_pagerduty_persistent_4xx_raises_without_the_routing_key(
    server: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # A server that echoes the key back in its error must not get it into our message.
    server.expect_request("/v2/enqueue").respond_with_json(
        {
            "status": "invalid event",
            "message": "Event object is invalid",
            "errors": [f"bad key {ROUTING_KEY}"],
        },
        status=400,
    )
    pager = PagerDutyPager(server.url_for("/v2/enqueue"), ROUTING_KEY, retry=FAST)
    with pytest.raises(PagerError) as caught:
        pager.trigger(PAGE)

    message = str(caught.value)
    assert "pagerduty" in message and "HTTP 400" in message and "Event object is invalid" in message
    assert ROUTING_KEY not in message
    assert ROUTING_KEY not in repr(pager) and ROUTING_KEY not in caplog.text
    assert len(server.log) == 1  # a 4xx is not retried


def test_pagerduty_gives_up_after_the_configured_attempts(server: HTTPServer) -> None:
    server.expect_request("/v2/enqueue").respond_with_data("down", status=502)
    with pytest.raises(PagerError, match="HTTP 502"):
        PagerDutyPager(server.url_for("/v2/enqueue"), ROUTING_KEY, retry=FAST).trigger(PAGE)
    assert len(server.log) == FAST.attempts


def test_pagerduty_unreachable_names_no_url_path_or_key(closed_url: str) -> None:
    url = closed_url + "/v2/enqueue"
    with pytest.raises(PagerError) as caught:
        PagerDutyPager(url, ROUTING_KEY, retry=FAST).trigger(PAGE)
    assert "could not be reached after 3 attempt(s)" in str(caught.value)
    assert ROUTING_KEY not in str(caught.value) and "/v2/enqueue" not in str(caught.value)


# -- generic webhook ----------------------------------------------------------------------------------


def test_webhook_posts_slack_text_and_structured_fields(server: HTTPServer) -> None:
    server.expect_request("/hooks/T000/B000/XXXX", method="POST").respond_with_data("ok")
    pager = WebhookPager(server.url_for("/hooks/T000/B000/XXXX"), retry=FAST)
    pager.trigger(PAGE)
    pager.resolve(PAGE)

    trigger, resolve = posted_json(server)
    assert trigger["text"].startswith("[CRITICAL] 8 hosts critical")  # type: ignore[index]
    assert "Hosts: gpu-1, gpu-2" in trigger["text"]  # type: ignore[index]
    assert {k: v for k, v in trigger.items() if k != "text"} == {  # type: ignore[union-attr]
        "event_action": "trigger",
        "status": "firing",
        "dedup_key": PAGE.dedup_key,
        "summary": PAGE.summary,
        "severity": "critical",
        "source": "ringrift-remediator",
        "hosts": ["gpu-1", "gpu-2"],
        "details": PAGE.details,
    }
    assert resolve["status"] == "resolved" and resolve["event_action"] == "resolve"  # type: ignore[index]
    assert resolve["text"].startswith("RESOLVED: 8 hosts critical")  # type: ignore[index]


def test_webhook_failure_is_a_failed_outcome_naming_only_the_host(server: HTTPServer) -> None:
    server.expect_request("/hooks/T000/B000/SECRETPATH").respond_with_data("invalid_token", status=403)
    pager = WebhookPager(server.url_for("/hooks/T000/B000/SECRETPATH"), retry=FAST)

    outcomes = deliver(PAGE, {"webhook": pager}, ["webhook"])

    assert outcomes["webhook"].startswith("failed: webhook: HTTP 403 from 127.0.0.1:")
    assert "SECRETPATH" not in outcomes["webhook"]
    assert outcomes[UNDELIVERABLE] == "every configured pager failed"


# -- deliver and the registry --------------------------------------------------------------------------


def test_deliver_with_nothing_configured_is_undeliverable_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    outcomes = deliver(PAGE, pagers_from_settings(Settings()), ["pagerduty", "webhook"])

    assert outcomes == {
        "pagerduty": "not configured",
        "webhook": "not configured",
        UNDELIVERABLE: "no pager configured",
    }
    assert not delivered(outcomes)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert PAGE.dedup_key in record.getMessage() and PAGE.summary in record.getMessage()


def test_deliver_with_no_targets_and_no_pagers_is_undeliverable(caplog: pytest.LogCaptureFixture) -> None:
    assert deliver(PAGE, {}) == {UNDELIVERABLE: "no pager configured"}
    assert any(r.levelno == logging.ERROR and PAGE.dedup_key in r.getMessage() for r in caplog.records)


def test_deliver_sends_to_every_configured_pager_and_reports_each(server: HTTPServer) -> None:
    server.expect_request("/pd").respond_with_json({"status": "success"}, status=202)
    server.expect_request("/hook").respond_with_data("down", status=500)
    settings = Settings(
        pagerduty_routing_key=ROUTING_KEY,
        pagerduty_url=server.url_for("/pd"),
        page_webhook_url=server.url_for("/hook"),
    )
    pagers = pagers_from_settings(settings, retry=FAST)
    assert set(pagers) == {"pagerduty", "webhook"}

    outcomes = deliver(PAGE, pagers, None, action="resolve")

    assert outcomes["pagerduty"] == "sent"
    assert outcomes["webhook"].startswith("failed: webhook: HTTP 500")
    assert UNDELIVERABLE not in outcomes and delivered(outcomes)


def test_pagers_from_settings_builds_only_configured_pagers() -> None:
    assert pagers_from_settings(Settings()) == {}
    pagers = pagers_from_settings(Settings(alertmanager_url="http://127.0.0.1:9093"))
    assert list(pagers) == ["alertmanager"] and isinstance(pagers["alertmanager"], PAGERS["alertmanager"])


def test_deliver_refuses_an_unknown_action() -> None:
    with pytest.raises(ValueError, match="acknowledge"):
        deliver(PAGE, {}, action="acknowledge")


# -- Alertmanager post-back, against the real Alertmanager ----------------------------------------------


@pytest.fixture
def alertmanager(tmp_path: Path, server: HTTPServer) -> Iterator[AlertmanagerProcess]:
    require_binary("prometheus-alertmanager")
    server.expect_request("/notify", method="POST").respond_with_data("ok")
    with AlertmanagerProcess(tmp_path / "am", server.url_for("/notify"), bearer_token="am-token") as am:
        yield am


def notifications(server: HTTPServer, status: str) -> list[dict]:
    found = []
    for request, _ in server.log:
        body = json.loads(request.get_data())
        found += [a for a in body["alerts"] if a["status"] == status]
    return found


def test_alertmanager_pager_raises_a_remediation_escalation_then_ends_it(
    alertmanager: AlertmanagerProcess, server: HTTPServer
) -> None:
    page = Page(
        "host-gpu-7-stuck", "gpu-7 still critical after 30 min", "error", "remediator", {}, ("gpu-7",)
    )
    pager = AlertmanagerPager(alertmanager.url, generator_url="http://remediator.test/ui", retry=FAST)

    pager.trigger(page)

    [alert] = alertmanager.alerts()
    assert alert["labels"] == {
        "alertname": "RemediationEscalation",
        "severity": "error",
        "dedup_key": "host-gpu-7-stuck",
        "host_id": "gpu-7",
    }
    assert alert["annotations"]["summary"] == "gpu-7 still critical after 30 min"
    assert alert["status"]["state"] == "active" and alert["generatorURL"] == "http://remediator.test/ui"
    [firing] = wait_for(lambda: notifications(server, "firing"))  # type: ignore[misc]
    assert firing["labels"]["alertname"] == "RemediationEscalation"

    pager.resolve(page)

    assert alertmanager.alerts(active=True) == []
    [resolved] = wait_for(lambda: notifications(server, "resolved"))  # type: ignore[misc]
    assert resolved["labels"]["dedup_key"] == "host-gpu-7-stuck"


def test_alertmanager_pager_labels_no_host_for_a_fleet_page() -> None:
    assert "host_id" not in AlertmanagerPager.labels(PAGE)


def test_alertmanager_pager_failure_is_a_pager_error(server: HTTPServer) -> None:
    server.expect_request("/api/v2/alerts").respond_with_data("bad", status=400)
    with pytest.raises(PagerError, match="alertmanager: HTTP 400"):
        AlertmanagerPager(server.url_for(""), retry=FAST).trigger(PAGE)


def test_pager_reprs_hold_no_secret() -> None:
    pager = PagerDutyPager("http://127.0.0.1:1/v2/enqueue", ROUTING_KEY)
    assert ROUTING_KEY not in repr(pager) and "127.0.0.1:1" in repr(pager)
    assert "SECRETPATH" not in repr(WebhookPager("https://hooks.example/T/B/SECRETPATH"))


def test_request_honours_retry_after(server: HTTPServer) -> None:
    def limited(request: Request) -> Response:
        return Response("slow down", status=429, headers={"Retry-After": "0"})

    server.expect_ordered_request("/pd").respond_with_handler(limited)
    server.expect_ordered_request("/pd").respond_with_json({}, status=202)
    PagerDutyPager(server.url_for("/pd"), ROUTING_KEY, retry=RetryPolicy(backoff=60, timeout=5)).trigger(PAGE)
    assert len(server.log) == 2


def test_a_page_no_pager_took_stays_unclaimed_so_the_next_call_pages_again_under_the_same_key(
    server: HTTPServer, redis_url: str, redis_conn
) -> None:
    from helpers import make_settings

    from remediator import paging
    from remediator.rules import load_rules

    settings = make_settings(redis_url, page_webhook_url=server.url_for("/page"))
    rules = load_rules()
    fields = {"dedup_key": "remediator/h1/inc-1", "summary": "s", "severity": "critical"}
    server.expect_oneshot_request("/page", method="POST").respond_with_data("down", status=503)
    server.expect_oneshot_request("/page", method="POST").respond_with_data("down", status=503)
    server.expect_oneshot_request("/page", method="POST").respond_with_data("down", status=503)
    failed = paging.page(redis_conn, settings, rules, **fields)
    assert failed.paged is False and failed.reason == "every configured pager failed"
    assert paging.get(redis_conn, "remediator/h1/inc-1").state == paging.PageState.FAILED
    server.expect_request("/page", method="POST").respond_with_json({"ok": True})
    sent = paging.page(redis_conn, settings, rules, **fields)
    assert sent.paged is True and sent.sent == "trigger" and sent.outcomes["webhook"] == "sent"
    again = paging.page(redis_conn, settings, rules, **fields)
    assert again.paged is True and again.sent == "" and again.reason == "already delivered"
    assert len(server.log) == 4
    assert [json.loads(r.get_data())["dedup_key"] for r, _ in server.log] == ["remediator/h1/inc-1"] * 4
