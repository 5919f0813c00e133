"""Pages: one per incident, folded into the storm's page or a summary page, resolved at the pager once."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers import make_settings
from pytest_httpserver import HTTPServer

from remediator import keys, paging
from remediator.paging import PageKind, PageState
from remediator.rules import load_rules


@pytest.fixture
def pager(server: HTTPServer) -> HTTPServer:
    server.expect_request("/page", method="POST").respond_with_json({"ok": True})
    return server


def sent(server: HTTPServer) -> list[dict]:
    return [json.loads(r.get_data()) for r, _ in server.log]


def rules_with(**paging_policy):
    rules = load_rules()
    return dataclasses.replace(rules, paging=dataclasses.replace(rules.paging, **paging_policy))


def host_page(conn, settings, rules, host: str, summary: str = "needs a human", **kw):
    return paging.page(
        conn,
        settings,
        rules,
        dedup_key=f"remediator/{host}/inc-{host}",
        summary=summary,
        severity=kw.pop("severity", "critical"),
        hosts={host: "escalated"},
        **kw,
    )


def test_a_second_request_for_a_delivered_page_sends_nothing(redis_conn, redis_url, pager):
    settings = make_settings(redis_url, page_webhook_url=pager.url_for("/page"))
    rules = load_rules()
    first = host_page(redis_conn, settings, rules, "h1")
    assert first.paged and first.sent == "trigger"
    for _ in range(5):
        again = host_page(redis_conn, settings, rules, "h1")
        assert again.paged and again.sent == ""
    assert len(sent(pager)) == 1


def test_a_changed_page_is_updated_under_its_dedup_key_at_most_once_per_interval(
    redis_conn, redis_url, pager
):
    settings = make_settings(redis_url, page_webhook_url=pager.url_for("/page"))
    slow = rules_with(update_interval_minutes=60)
    host_page(redis_conn, settings, slow, "h1", summary="still critical", severity="error")
    host_page(redis_conn, settings, slow, "h1", summary="needs a human", severity="critical")
    assert len(sent(pager)) == 1  # the change is recorded, not sent yet
    record = paging.get(redis_conn, "remediator/h1/inc-h1")
    assert record.summary == "needs a human" and record.severity == "critical" and record.dirty
    fast = rules_with(update_interval_minutes=0.0001)
    assert paging.flush_updates(redis_conn, settings, fast) == ["remediator/h1/inc-h1"]
    bodies = sent(pager)
    assert [b["dedup_key"] for b in bodies] == ["remediator/h1/inc-h1"] * 2
    assert bodies[1]["summary"] == "needs a human" and bodies[1]["severity"] == "critical"
    assert paging.flush_updates(redis_conn, settings, fast) == []  # nothing changed since


def test_past_the_hourly_budget_pages_fold_into_one_summary_page(redis_conn, redis_url, pager):
    settings = make_settings(redis_url, page_webhook_url=pager.url_for("/page"))
    rules = rules_with(max_triggers_per_hour=2)
    results = [host_page(redis_conn, settings, rules, f"h{i}") for i in range(1, 6)]
    assert all(r.paged for r in results)  # a human heard of every one: two pages, then the summary
    bodies = sent(pager)
    keys_sent = [b["dedup_key"] for b in bodies]
    assert keys_sent[:2] == ["remediator/h1/inc-h1", "remediator/h2/inc-h2"]
    summary_keys = {k for k in keys_sent[2:]}
    assert len(summary_keys) == 1 and next(iter(summary_keys)).startswith("remediator/summary/")
    assert keys_sent.count(next(iter(summary_keys))) == 1  # one trigger for the summary, not one per page
    summary = paging.get(redis_conn, next(iter(summary_keys)))
    assert summary.kind == PageKind.SUMMARY and set(summary.hosts) == {"h3", "h4", "h5"}
    for i in (3, 4, 5):
        assert paging.get(redis_conn, f"remediator/h{i}/inc-h{i}").state == PageState.FOLDED
    # The summary resolves once every page folded into it has.
    for i in (3, 4):
        paging.resolve(redis_conn, settings, f"remediator/h{i}/inc-h{i}")
    assert paging.get(redis_conn, summary.dedup_key).state == PageState.DELIVERED
    paging.resolve(redis_conn, settings, "remediator/h5/inc-h5")
    assert paging.get(redis_conn, summary.dedup_key).state == PageState.RESOLVED
    assert [b["status"] for b in sent(pager) if b["dedup_key"] == summary.dedup_key] == ["firing", "resolved"]


def test_a_page_is_resolved_at_the_pager_once_and_a_never_delivered_one_sends_no_resolve(
    redis_conn, redis_url, server
):
    settings = make_settings(redis_url, page_webhook_url=server.url_for("/page"))
    rules = load_rules()
    server.expect_oneshot_request("/page").respond_with_data("down", status=503)
    server.expect_oneshot_request("/page").respond_with_data("down", status=503)
    server.expect_oneshot_request("/page").respond_with_data("down", status=503)
    failed = host_page(redis_conn, settings, rules, "h1")
    assert not failed.paged and failed.state == "failed"
    assert paging.resolve(redis_conn, settings, "remediator/h1/inc-h1")["resolved"] is True
    assert len(server.log) == 3  # the three failed triggers; no resolve for a page nobody got
    server.expect_request("/page").respond_with_json({"ok": True})
    host_page(redis_conn, settings, rules, "h2")
    assert paging.resolve(redis_conn, settings, "remediator/h2/inc-h2")["resolved"] is True
    assert paging.resolve(redis_conn, settings, "remediator/h2/inc-h2")["resolved"] is False
    assert [b["status"] for b in sent(server)[3:]] == ["firing", "resolved"]
    assert redis_conn.smembers(keys.PAGES) == set()


def test_a_storm_page_keeps_its_hosts_current_and_resolves_only_at_the_storm_s_end(
    redis_conn, redis_url, pager
):
    settings = make_settings(redis_url, page_webhook_url=pager.url_for("/page"))
    rules = load_rules()
    key = "remediator/storm/s1"
    for host in ("h1", "h2", "h3"):
        paging.page(
            redis_conn,
            settings,
            rules,
            dedup_key=key,
            kind=PageKind.STORM,
            summary="storm",
            severity="critical",
            hosts={host: "escalated"},
        )
    assert len(sent(pager)) == 1
    assert set(paging.get(redis_conn, key).hosts) == {"h1", "h2", "h3"}
    for host in ("h1", "h2", "h3"):
        assert paging.resolve(redis_conn, settings, key, host=host)["resolved"] is False
    assert paging.get(redis_conn, key).hosts == {"h1": "resolved", "h2": "resolved", "h3": "resolved"}
    assert paging.resolve(redis_conn, settings, key)["resolved"] is True  # the storm ended
    assert [b["status"] for b in sent(pager)] == ["firing", "resolved"]


def test_a_host_leaving_a_page_another_worker_is_resolving_waits_its_turn_instead_of_failing(
    redis_conn, redis_url, pager, monkeypatch
):
    """Eight incidents of a storm close at once and their cleanups, on two workers, each take their
    host off the storm page: one found the page lock held by the other and answered "retry", which
    failed its cleanup for two minutes of backoff. It waits for the lock now (a few seconds at most);
    a lock held longer (a delivery hanging on a pager) still answers retry."""
    import threading

    settings = make_settings(redis_url, page_webhook_url=pager.url_for("/page"))
    key = "remediator/storm/s1"
    for host in ("h1", "h2"):
        paging.page(
            redis_conn,
            settings,
            load_rules(),
            dedup_key=key,
            kind=PageKind.STORM,
            summary="storm",
            severity="critical",
            hosts={host: "escalated"},
        )
    lock = keys.PAGE_LOCK.format(key)
    redis_conn.set(lock, "the other worker", ex=60)
    threading.Timer(0.3, redis_conn.delete, args=(lock,)).start()  # the other worker finishes
    left = paging.resolve(redis_conn, settings, key, host="h1")
    assert "retry" not in left and paging.get(redis_conn, key).hosts["h1"] == "resolved", left

    monkeypatch.setattr(paging, "RESOLVE_LOCK_WAIT", 0.2)
    redis_conn.set(lock, "a delivery that hangs", ex=60)
    assert paging.resolve(redis_conn, settings, key, host="h2")["retry"] is True
