"""Pages: one per incident, delivered at most once as a trigger, counted only when a pager took it.

A page is a record in Redis (``remediator:page:<dedup key>``) before it is sent, so a worker killed
while delivering leaves it ``pending`` and the next caller delivers it under the same dedup key. Only
one caller delivers a page at a time (a short ``SET NX`` delivery lock); the others are told it is
being delivered. A page is ``delivered`` only once a pager answered 2xx: that is what the audit, the
incident and the checklist call "paged".

- A host incident's page has the incident's dedup key, so its ladders, time-based pages and re-sent
  alerts all name the same page; a second request for a delivered page sends nothing new (an update
  at most every ``paging.update_interval_minutes`` when its content changed).
- While a storm is open, host escalations fold into the storm's page (its hosts and their state are
  updated, no new trigger per host).
- Past ``paging.max_triggers_per_hour`` new pages fleet-wide, further pages fold into one summary page.
- ``resolve`` sends the resolve (PagerDuty ``resolve``, Alertmanager ``endsAt``, webhook ``resolved``)
  when the incident closes; a page that never reached a pager has nothing to resolve.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

import redis

from remediator import keys, metrics
from remediator.clients import clients_for
from remediator.clients.pagers import EVERY_PAGER_FAILED, UNDELIVERABLE, deliver, delivered
from remediator.clients.pagers.base import Page
from remediator.config import Settings
from remediator.connections import text

log = logging.getLogger("remediator.paging")

PAGE_TTL = 30 * 86400  # seconds a page record is kept after its last change
DELIVERY_LOCK_TTL = 60  # seconds one delivery may hold a page (pager timeouts and retries fit in it)
# Seconds a resolve waits for another caller's hold on the page: the cleanups of a storm's incidents,
# closing together on several workers, each take their host off the same storm page.
RESOLVE_LOCK_WAIT = 10.0
TRIGGER_WINDOW = 3600.0  # seconds of the page budget (paging.max_triggers_per_hour)
SOURCE = "ringrift-remediator"
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}  # a page's severity only goes up


class PageState(StrEnum):
    PENDING = "pending"  # recorded, not yet taken by a pager (or the worker died delivering it)
    DELIVERED = "delivered"  # a pager answered 2xx
    FAILED = "failed"  # every configured pager failed: delivered again on the next request
    UNDELIVERABLE = "undeliverable"  # no pager configured: on record in the log only
    FOLDED = "folded"  # over the page budget: carried by a summary page
    RESOLVED = "resolved"


class PageKind(StrEnum):
    HOST = "host"
    STORM = "storm"
    SUMMARY = "summary"
    FREEZE = "freeze"  # the remediator froze itself (a budget limit tripped): resolved at unfreeze


@dataclass
class PageRecord:
    dedup_key: str
    kind: PageKind
    summary: str
    severity: str
    state: PageState
    created_at: float
    targets: list[str] | None = None
    hosts: dict[str, str] = field(default_factory=dict)  # host id -> its state, as the page tells it
    details: dict[str, Any] = field(default_factory=dict)
    rule: str = ""
    delivered_at: float | None = None
    last_sent_at: float | None = None
    attempts: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)
    dirty: bool = False
    folded_into: str | None = None
    resolved_at: float | None = None

    @classmethod
    def from_hash(cls, raw: Mapping[bytes | str, bytes | str]) -> PageRecord:
        data = {text(k): text(v) for k, v in raw.items()}
        return cls(
            dedup_key=data["dedup_key"],
            kind=PageKind(data.get("kind", "host")),
            summary=data.get("summary", ""),
            severity=data.get("severity", "critical"),
            state=PageState(data.get("state", "pending")),
            created_at=float(data.get("created_at") or 0),
            targets=json.loads(data.get("targets") or "null"),
            hosts=json.loads(data.get("hosts") or "{}"),
            details=json.loads(data.get("details") or "{}"),
            rule=data.get("rule", ""),
            delivered_at=_float(data.get("delivered_at")),
            last_sent_at=_float(data.get("last_sent_at")),
            attempts=int(data.get("attempts") or 0),
            outcomes=json.loads(data.get("outcomes") or "{}"),
            dirty=data.get("dirty") == "1",
            folded_into=data.get("folded_into") or None,
            resolved_at=_float(data.get("resolved_at")),
        )

    @property
    def paged(self) -> bool:
        """Whether a human was reached: a pager took this page (or the summary it was folded into)."""
        return self.state in (PageState.DELIVERED, PageState.RESOLVED) and self.delivered_at is not None

    def as_page(self) -> Page:
        details = {**self.details}
        if len(self.hosts) > 1 or self.kind != PageKind.HOST:
            details["host_states"] = dict(sorted(self.hosts.items()))
        return Page(
            dedup_key=self.dedup_key,
            summary=self.summary,
            severity=self.severity,
            source=SOURCE,
            details=details,
            hosts=tuple(sorted(self.hosts)),
        )

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["kind"], out["state"] = self.kind.value, self.state.value
        out["paged"] = self.paged
        return out


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


@dataclass(frozen=True)
class PageResult:
    """What one page request did. ``paged``: a pager has taken this page (now or before)."""

    dedup_key: str
    paged: bool
    state: str
    sent: str = ""  # "trigger", "update" or "" (nothing was sent by this call)
    reason: str = ""
    outcomes: dict[str, str] = field(default_factory=dict)
    folded_into: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"dedup_key": self.dedup_key, "paged": self.paged, "state": self.state}
        for name in ("sent", "reason", "folded_into"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        if self.outcomes:
            out["outcomes"] = self.outcomes
        return out


def get(conn: redis.Redis, dedup_key: str) -> PageRecord | None:
    raw = conn.hgetall(keys.PAGE.format(dedup_key))
    return PageRecord.from_hash(raw) if raw.get(b"dedup_key") else None


def open_pages(conn: redis.Redis) -> list[PageRecord]:
    """Pages delivered and not yet resolved at their pagers (what a human is looking at)."""
    records = [get(conn, text(k)) for k in sorted(conn.smembers(keys.PAGES))]
    return [r for r in records if r is not None]


def _count_pages(conn: redis.Redis, outcomes: dict[str, str], action: str) -> None:
    for pager, outcome in outcomes.items():
        if pager == UNDELIVERABLE:  # deliver()'s summary entry, not a pager: counted once, as such
            metrics.count(conn, "remediator_pages", pager="none", action=action, result="undeliverable")
        else:
            metrics.count(conn, "remediator_pages", pager=pager, action=action, result=outcome.split(":")[0])


def _save(conn: redis.Redis, dedup_key: str, **fields: Any) -> None:
    key = keys.PAGE.format(dedup_key)
    conn.hset(key, mapping=_encoded(fields))  # type: ignore[arg-type]  # redis-py's Mapping[FieldT, ...] takes no dict[str, str]
    conn.expire(key, PAGE_TTL)


def _encoded(fields: Mapping[str, Any]) -> dict[str, str]:
    """A page hash's fields as stored: JSON for dicts and lists, 1/0 for flags, None left out."""
    mapping: dict[str, str] = {}
    for name, value in fields.items():
        if isinstance(value, dict | list) or (value is None and name == "targets"):
            mapping[name] = json.dumps(value, sort_keys=True, default=str)
        elif isinstance(value, bool):
            mapping[name] = "1" if value else "0"
        elif isinstance(value, Enum):
            mapping[name] = value.value
        elif value is not None:
            mapping[name] = str(value)
    return mapping


def _record(
    conn: redis.Redis,
    dedup_key: str,
    kind: PageKind,
    summary: str,
    severity: str,
    targets: tuple[str, ...] | None,
    hosts: dict[str, str],
    details: dict[str, Any],
    rule: str,
) -> PageRecord:
    """Create the page record, or merge these hosts and details into the existing one."""
    key = keys.PAGE.format(dedup_key)
    if conn.hsetnx(key, "dedup_key", dedup_key):
        _save(
            conn,
            dedup_key,
            kind=kind,
            summary=summary,
            severity=severity,
            state=PageState.PENDING,
            created_at=f"{time.time():.3f}",
            targets=list(targets) if targets else None,
            hosts=hosts,
            details=details,
            rule=rule,
        )
    else:
        record = get(conn, dedup_key)
        assert record is not None
        changed: dict[str, Any] = {}
        merged = {**record.hosts, **hosts}
        if merged != record.hosts:
            changed["hosts"] = merged
        if kind == PageKind.HOST and summary != record.summary:
            # The incident moved on (still critical -> escalated): the same page says so, no new one.
            changed["summary"] = summary
        if SEVERITY_RANK.get(severity, 0) > SEVERITY_RANK.get(record.severity, 0):
            changed["severity"] = severity
        if changed:
            _save(conn, dedup_key, dirty=True, **changed)
        if details and details != record.details:
            _save(conn, dedup_key, details={**record.details, **details})
    record = get(conn, dedup_key)
    assert record is not None
    return record


def page(
    conn: redis.Redis,
    settings: Settings,
    rules: Any,
    *,
    dedup_key: str,
    summary: str,
    severity: str,
    kind: PageKind = PageKind.HOST,
    targets: tuple[str, ...] | None = None,
    hosts: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
    rule: str = "",
) -> PageResult:
    """Make sure a human hears about ``dedup_key``: trigger it once, fold it, or update it."""
    record = _record(conn, dedup_key, kind, summary, severity, targets, hosts or {}, details or {}, rule)
    if record.state == PageState.RESOLVED:
        return PageResult(dedup_key, record.paged, record.state.value, reason="already resolved")
    if record.state == PageState.FOLDED and record.folded_into:
        inner = page(
            conn,
            settings,
            rules,
            dedup_key=record.folded_into,
            summary=_summary_text(),
            severity="critical",
            kind=PageKind.SUMMARY,
            hosts={h: f"{s} ({dedup_key})" for h, s in record.hosts.items()},
        )
        return PageResult(
            dedup_key,
            inner.paged,
            record.state.value,
            inner.sent,
            inner.reason,
            inner.outcomes,
            record.folded_into,
        )
    if record.state == PageState.DELIVERED:
        return _maybe_update(conn, settings, rules, record)
    if record.delivered_at is None and kind != PageKind.SUMMARY and _over_budget(conn, rules):
        return _fold(conn, settings, rules, record)
    return _send(conn, settings, record, "trigger")


def _over_budget(conn: redis.Redis, rules: Any) -> bool:
    recent = conn.zcount(keys.PAGE_TRIGGERS, time.time() - TRIGGER_WINDOW, "+inf")
    return int(recent) >= rules.paging.max_triggers_per_hour


def _summary_text() -> str:
    return "RingRift remediation: more pages than the hourly page budget; these incidents need a human"


def _fold(conn: redis.Redis, settings: Settings, rules: Any, record: PageRecord) -> PageResult:
    """Over the page budget: carry this page in the one open summary page instead of a new trigger."""
    current = conn.hget(keys.FLEET, "summary_page")
    summary_key = text(current) if current else ""
    open_summary = get(conn, summary_key) if summary_key else None
    if open_summary is None or open_summary.state == PageState.RESOLVED:
        summary_key = f"remediator/summary/{secrets.token_hex(6)}"
        conn.hset(keys.FLEET, "summary_page", summary_key)
    _save(conn, record.dedup_key, state=PageState.FOLDED, folded_into=summary_key)
    conn.sadd(keys.PAGES, record.dedup_key)
    log.warning(
        "page %s folded into summary %s (paging.max_triggers_per_hour)", record.dedup_key, summary_key
    )
    return page(
        conn,
        settings,
        rules,
        dedup_key=record.dedup_key,
        summary=record.summary,
        severity=record.severity,
        kind=record.kind,
        hosts=record.hosts,
    )


def _maybe_update(conn: redis.Redis, settings: Settings, rules: Any, record: PageRecord) -> PageResult:
    """A delivered page whose content changed is re-sent (same dedup key) at most once per interval."""
    interval = rules.paging.update_interval_minutes * 60
    due = record.dirty and time.time() - (record.last_sent_at or 0) >= interval
    if not due:
        return PageResult(record.dedup_key, True, record.state.value, reason="already delivered")
    return _send(conn, settings, record, "update")


def flush_updates(conn: redis.Redis, settings: Settings, rules: Any) -> list[str]:
    """Send the updates that came due for open pages (the sweeper calls this); returns their keys."""
    sent = []
    for record in open_pages(conn):
        due = record.state == PageState.DELIVERED and record.dirty
        if due and _maybe_update(conn, settings, rules, record).sent:
            sent.append(record.dedup_key)
    return sent


# A delivery's end, written only while the delivery is still this caller's (its lock) and the page was
# not resolved meanwhile: a worker that stalled past its lock must not mark as open a page that another
# has since delivered and resolved. KEYS: lock, page hash, open pages. ARGV: token, dedup key, then
# field, value pairs. 1 when written.
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], 'state') == 'resolved' then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def _send(conn: redis.Redis, settings: Settings, record: PageRecord, what: str) -> PageResult:
    lock = keys.PAGE_LOCK.format(record.dedup_key)
    token = secrets.token_hex(8)
    if not conn.set(lock, token, nx=True, ex=DELIVERY_LOCK_TTL):
        return PageResult(record.dedup_key, record.paged, record.state.value, reason="being delivered")
    try:
        # Re-read under the lock: another caller may have delivered it since.
        fresh = get(conn, record.dedup_key) or record
        if what == "trigger" and fresh.state == PageState.DELIVERED:
            return PageResult(record.dedup_key, True, fresh.state.value, reason="already delivered")
        _save(conn, record.dedup_key, attempts=fresh.attempts + 1, dirty=False)
        outcomes = deliver(
            fresh.as_page(),
            clients_for(settings).pagers(),
            fresh.targets,
            action="trigger",
            proceed=lambda: conn.get(lock) == token.encode(),
        )
        _count_pages(conn, outcomes, "trigger")
        now = time.time()
        if delivered(outcomes):
            fields: dict[str, Any] = {"state": PageState.DELIVERED, "last_sent_at": f"{now:.3f}"}
            fields["outcomes"] = outcomes
            if fresh.delivered_at is None:
                fields["delivered_at"] = f"{now:.3f}"
            if not _commit(conn, lock, token, record.dedup_key, fields):
                return _taken_over(record, outcomes)
            if fresh.delivered_at is None and fresh.kind != PageKind.SUMMARY:
                conn.zadd(keys.PAGE_TRIGGERS, {record.dedup_key: now})
                conn.zremrangebyscore(keys.PAGE_TRIGGERS, "-inf", now - TRIGGER_WINDOW)
            return PageResult(record.dedup_key, True, PageState.DELIVERED.value, what, outcomes=outcomes)
        if what == "update":
            if not _commit(conn, lock, token, record.dedup_key, {"dirty": True}):  # still delivered
                return _taken_over(record, outcomes)
            return PageResult(
                record.dedup_key, True, fresh.state.value, reason="update failed", outcomes=outcomes
            )
        failed = outcomes.get(UNDELIVERABLE) == EVERY_PAGER_FAILED
        state = PageState.FAILED if failed else PageState.UNDELIVERABLE
        if not _commit(conn, lock, token, record.dedup_key, {"state": state, "outcomes": outcomes}):
            return _taken_over(record, outcomes)
        return PageResult(
            record.dedup_key, False, state.value, reason=outcomes[UNDELIVERABLE], outcomes=outcomes
        )
    finally:
        conn.eval(_UNLOCK, 1, lock, token)


def _commit(conn: redis.Redis, lock: str, token: str, dedup_key: str, fields: dict[str, Any]) -> bool:
    """Write a delivery's end (see ``_COMMIT``); False when the delivery was no longer ours."""
    pairs = [item for name, value in _encoded(fields).items() for item in (name, value)]
    keys_ = [lock, keys.PAGE.format(dedup_key), keys.PAGES]
    done = conn.eval(_COMMIT, 3, *keys_, token, dedup_key, *pairs)
    if done:
        conn.expire(keys.PAGE.format(dedup_key), PAGE_TTL)
    return bool(done)


def _taken_over(record: PageRecord, outcomes: dict[str, str]) -> PageResult:
    """This caller lost the page's delivery mid-way (it stalled past its lock, or the page was resolved
    meanwhile): what it sent is on record in the log; the page's state is the other caller's to write."""
    log.warning("page %s: delivery taken over before its end was written", record.dedup_key)
    return PageResult(
        record.dedup_key, delivered(outcomes), record.state.value, reason="taken over", outcomes=outcomes
    )


def resolve(
    conn: redis.Redis, settings: Settings, dedup_key: str, *, host: str | None = None
) -> dict[str, Any]:
    """Resolve a page at its pagers (once). With ``host``, only that host leaves a storm or summary
    page; the page itself is resolved when no host is left in it.

    Returns ``{"resolved": bool, ...}``; ``resolved`` False with ``retry`` True when a pager failed
    (the caller tries again later; the page stays open), also while another caller holds it for longer
    than RESOLVE_LOCK_WAIT: a resolve never crosses a delivery, so a page is never triggered again
    after it was resolved."""
    lock = keys.PAGE_LOCK.format(dedup_key)
    token = secrets.token_hex(8)
    deadline = time.monotonic() + RESOLVE_LOCK_WAIT
    while not conn.set(lock, token, nx=True, ex=DELIVERY_LOCK_TTL):
        if time.monotonic() > deadline:
            return {"dedup_key": dedup_key, "resolved": False, "retry": True, "reason": "being delivered"}
        time.sleep(0.05)
    try:
        return _resolve(conn, settings, dedup_key, host)
    finally:
        conn.eval(_UNLOCK, 1, lock, token)


def _resolve(conn: redis.Redis, settings: Settings, dedup_key: str, host: str | None) -> dict[str, Any]:
    record = get(conn, dedup_key)
    if record is None or record.state == PageState.RESOLVED:
        return {"dedup_key": dedup_key, "resolved": False, "reason": "no open page"}
    if host is not None and record.kind != PageKind.HOST:
        if host in record.hosts:
            record.hosts[host] = "resolved"
            _save(conn, dedup_key, hosts=record.hosts, dirty=True)
        if record.kind == PageKind.STORM or any(s != "resolved" for s in record.hosts.values()):
            return {"dedup_key": dedup_key, "resolved": False, "reason": f"{host} left the page"}
    if record.state == PageState.FOLDED and record.folded_into:
        _save(conn, dedup_key, state=PageState.RESOLVED, resolved_at=f"{time.time():.3f}")
        conn.srem(keys.PAGES, dedup_key)
        inner: dict[str, Any] = {}
        for h in record.hosts:
            inner = resolve(conn, settings, record.folded_into, host=h)
        return {"dedup_key": dedup_key, "resolved": True, "summary": inner}
    outcomes: dict[str, str] = {}
    # A pending page may have reached a pager before its worker died: resolving it is harmless.
    if record.state in (PageState.DELIVERED, PageState.PENDING):
        outcomes = deliver(record.as_page(), clients_for(settings).pagers(), record.targets, action="resolve")
        _count_pages(conn, outcomes, "resolve")
        if outcomes.get(UNDELIVERABLE) == EVERY_PAGER_FAILED and record.state == PageState.DELIVERED:
            _save(conn, dedup_key, resolve_failed_at=f"{time.time():.3f}")
            return {"dedup_key": dedup_key, "resolved": False, "retry": True, "outcomes": outcomes}
    _save(conn, dedup_key, state=PageState.RESOLVED, resolved_at=f"{time.time():.3f}")
    conn.srem(keys.PAGES, dedup_key)
    if record.kind == PageKind.SUMMARY and conn.hget(keys.FLEET, "summary_page") == dedup_key.encode():
        conn.hdel(keys.FLEET, "summary_page")
    return {"dedup_key": dedup_key, "resolved": True, "outcomes": outcomes}
