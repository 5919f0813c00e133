"""Exactly one page per incident, however many hosts, workers and re-sent alerts ask for it."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from remediator import keys, metrics
from remediator.config import Settings
from remediator.pagers import EVERY_PAGER_FAILED, UNDELIVERABLE, deliver, delivered, pagers_from_settings
from remediator.pagers.base import Page

log = logging.getLogger("remediator.paging")

INCIDENT_TTL = 7 * 86400  # seconds an open incident is remembered


def _count_pages(conn: redis.Redis, outcomes: dict[str, str], action: str) -> None:
    for pager, outcome in outcomes.items():
        if pager == UNDELIVERABLE:  # deliver()'s summary entry, not a pager: counted once, as such
            metrics.count(conn, "remediator_pages", pager="none", action=action, result="undeliverable")
        else:
            metrics.count(conn, "remediator_pages", pager=pager, action=action, result=outcome.split(":")[0])


def open_incident(
    conn: redis.Redis,
    settings: Settings,
    *,
    dedup_key: str,
    summary: str,
    severity: str,
    targets: tuple[str, ...] | None,
    hosts: tuple[str, ...] = (),
    details: dict[str, Any] | None = None,
    rule: str = "",
) -> dict[str, Any]:
    """Trigger a page unless this incident is already open; returns what happened (for the audit)."""
    key = keys.INCIDENT.format(dedup_key)
    record = {
        "dedup_key": dedup_key,
        "summary": summary,
        "severity": severity,
        "rule": rule,
        "hosts": json.dumps(list(hosts)),
        "opened_at": f"{time.time():.3f}",
        "targets": json.dumps(list(targets) if targets else None),
    }
    # HSETNX on a marker field claims the incident atomically: only the first caller pages.
    if not conn.hsetnx(key, "dedup_key", dedup_key):
        return {"dedup_key": dedup_key, "paged": False, "reason": "incident already open"}
    conn.hset(key, mapping=record)
    conn.expire(key, INCIDENT_TTL)
    conn.sadd(keys.INCIDENTS, dedup_key)
    page = Page(
        dedup_key=dedup_key,
        summary=summary,
        severity=severity,
        source="ringrift-remediator",
        details=details or {},
        hosts=hosts,
    )
    outcomes = deliver(page, pagers_from_settings(settings), list(targets) if targets else None)
    _count_pages(conn, outcomes, "trigger")
    if outcomes.get(UNDELIVERABLE) == EVERY_PAGER_FAILED:
        # Nobody was woken: give the claim back, so that the next caller (a retried escalation, the
        # fleet's next evaluation) pages again instead of finding the incident "already open".
        conn.delete(key)
        conn.srem(keys.INCIDENTS, dedup_key)
        return {"dedup_key": dedup_key, "paged": False, "reason": EVERY_PAGER_FAILED, "outcomes": outcomes}
    conn.hset(key, "outcomes", json.dumps(outcomes))
    # With no pager configured the page is on record (logged at ERROR) and there is nothing to retry.
    return {"dedup_key": dedup_key, "paged": delivered(outcomes), "outcomes": outcomes}


def resolve_incident(conn: redis.Redis, settings: Settings, dedup_key: str) -> dict[str, Any]:
    """Resolve an open incident once; a second call finds nothing open."""
    key = keys.INCIDENT.format(dedup_key)
    if not conn.srem(keys.INCIDENTS, dedup_key):
        return {"dedup_key": dedup_key, "resolved": False, "reason": "no open incident"}
    raw = {k.decode(): v.decode() for k, v in conn.hgetall(key).items()}
    conn.delete(key)
    page = Page(
        dedup_key=dedup_key,
        summary=raw.get("summary") or dedup_key,
        severity=raw.get("severity") or "critical",
        source="ringrift-remediator",
        hosts=tuple(json.loads(raw.get("hosts") or "[]")),
    )
    targets = json.loads(raw.get("targets") or "null")
    outcomes = deliver(page, pagers_from_settings(settings), targets, action="resolve")
    _count_pages(conn, outcomes, "resolve")
    return {"dedup_key": dedup_key, "resolved": True, "outcomes": outcomes}


def open_incidents(conn: redis.Redis) -> list[dict[str, Any]]:
    out = []
    for dedup_key in sorted(k.decode() for k in conn.smembers(keys.INCIDENTS)):
        raw = {k.decode(): v.decode() for k, v in conn.hgetall(keys.INCIDENT.format(dedup_key)).items()}
        if raw:
            out.append(raw)
    return out
