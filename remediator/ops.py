"""What the operator surface (API, status page, CLI) reads and does, shared so the three agree.

Reads are plain Redis reads of the state the receiver and the ladder write; the one action here,
``remediate_host``, goes through ``intake.start_ladders`` like an alert does, so it is deduped the same way.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis

from remediator import advice, controls, disclosure, incidents, keys, paging, store
from remediator.connections import text
from remediator.defaults import CONDITIONAL_STEPS, LADDER_STEPS
from remediator.intake import LadderLimit, LadderRequest, queue_cleanup, start_ladders

# The ladder as the status page draws it, in the runbook's order of preference.
PROGRESS_TAIL = 200  # newest audit entries read per host for the hosts list's progress

_FLOAT_FIELDS = {"started_at", "updated_at", "finished_at", "next_check_at", "heartbeat", "verify_started_at"}
_INT_FIELDS = {"attempt", "rung", "pos", "fence"}
_BOOL_FIELDS = {"dry_run"}
# A host's state as the API answers it: the fields any reader may see and two only a holder of the read
# token sees (what a step reported, what the ladder waits for).
SUMMARY_FIELDS = (*disclosure.STATE_FIELDS, "outcome_detail", "waiting_for")

# What an audit outcome says about the step it names, for the progress bar.
_OUTCOME_MARK = {
    "done": "ok",
    "verify-ok": "ok",
    "ran": "ran",
    "planned": "planned",
    "failed": "failed",
    "verify-failed": "failed",
    "declined": "skipped",
    "held": "current",
    "resumed": "current",
}


def _typed(name: str, value: Any) -> Any:
    """A host hash value as JSON wants it: timestamps as floats, counters as ints, flags as bools."""
    if not isinstance(value, str):
        return value
    if value == "":
        return None
    try:
        if name in _FLOAT_FIELDS:
            return float(value)
        if name in _INT_FIELDS:
            return int(value)
    except ValueError:
        return value
    if name in _BOOL_FIELDS:
        return value == "1"
    return value


def _text(value: bytes | None) -> str:
    return value.decode() if value else ""


def format_ts(value: Any) -> str:
    """Unix seconds as a UTC time a person reads; '-' when unset."""
    if value in (None, ""):
        return "-"
    try:
        return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(value)


def typed_state(host_id: str, state: dict[str, Any]) -> dict[str, Any]:
    out = {name: _typed(name, value) for name, value in state.items()}
    out["host_id"] = host_id
    return out


def host_summary(state: dict[str, Any]) -> dict[str, Any]:
    """The fields of a host's state that a list of hosts shows."""
    typed = typed_state(state["host_id"], state)
    return {name: typed.get(name) for name in SUMMARY_FIELDS}


def list_host_summaries(conn: redis.Redis, limit: int = 1000) -> list[dict[str, Any]]:
    """Hosts in or after remediation, most recently updated first."""
    return [host_summary(state) for state in store.list_hosts(conn, limit=limit)]


def list_hosts_with_progress(conn: redis.Redis, limit: int = 1000) -> list[dict[str, Any]]:
    """Host summaries, each with its ``progress`` along the ladder.

    The page refreshes every few seconds and an audit trail keeps up to AUDIT_MAX_ENTRIES: only the
    newest PROGRESS_TAIL entries are read (one round trip for all hosts), where the current ladder
    is; a host whose ladder began before them has its whole trail read."""
    states = store.list_hosts(conn, limit=limit)
    pipe = conn.pipeline(transaction=False)
    for state in states:
        pipe.lrange(keys.AUDIT.format(state["host_id"]), -PROGRESS_TAIL, -1)
    out = []
    for state, raw in zip(states, pipe.execute(), strict=True):
        typed = typed_state(state["host_id"], state)
        audit = [json.loads(item) for item in raw]
        if len(raw) == PROGRESS_TAIL and not _has_ladder_start(typed, audit):
            audit = store.get_audit(conn, state["host_id"])
        out.append({**host_summary(state), "progress": ladder_progress(typed, audit)})
    return out


def _has_ladder_start(state: dict[str, Any], audit: list[dict[str, Any]]) -> bool:
    """Whether the entries hold the intake entry that began the host's current ladder."""
    ladder_id = state.get("ladder_id")
    return any(e.get("step") == "intake" and e.get("job_id") == ladder_id for e in audit)


def host_detail(
    conn: redis.Redis, host_id: str, *, audit_limit: int | None = None, audit_offset: int = 0
) -> dict[str, Any] | None:
    """A host's full state, its progress along the ladder and its audit trail; None if never seen.

    With ``audit_limit``, ``audit`` holds one page of the trail: up to that many entries, oldest first,
    before the newest ``audit_offset`` ones; progress is read from the trail's tail, as for the list."""
    state = store.get_host(conn, host_id)
    total = conn.llen(keys.AUDIT.format(host_id))
    if not state and not total:
        return None
    typed = typed_state(host_id, state)
    if audit_limit is None:
        audit = store.get_audit(conn, host_id)
        tail = audit
    else:
        audit = store.get_audit(conn, host_id, -(audit_offset + audit_limit), -(audit_offset + 1))
        tail = store.get_audit(conn, host_id, -PROGRESS_TAIL, -1)
        if len(tail) == PROGRESS_TAIL and not _has_ladder_start(typed, tail):
            tail = store.get_audit(conn, host_id)
    return {
        "host_id": host_id,
        "state": typed,
        "progress": ladder_progress(typed, tail),
        "incident": incident_detail(conn, host_id),
        "incidents": [i.as_dict() for i in incidents.history(conn, host_id)],
        "audit": audit,
        "audit_total": total,
        "advice": advice.for_host(typed),
    }


def incident_detail(conn: redis.Redis, host_id: str) -> dict[str, Any] | None:
    """The host's open incident (else its latest), with its ladders and the pages hung off it."""
    incident = incidents.current(conn, host_id) or next(iter(incidents.history(conn, host_id, 1)), None)
    if incident is None:
        return None
    out = incident.as_dict()
    out["page_records"] = [
        record.as_dict() for key in incident.pages if (record := paging.get(conn, key)) is not None
    ]
    return out


def _ladder_entries(state: dict[str, Any], audit: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ladder_id = state.get("ladder_id")
    if not ladder_id:
        return []
    return [e for e in audit if ladder_id in (e.get("ladder_id"), e.get("job_id"))]


def ladder_progress(state: dict[str, Any], audit: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where the current ladder stands on each step: ok, ran, failed, skipped, planned, current or idle."""
    entries = _ladder_entries(state, audit)
    plan_steps = {step for rung in (state.get("plan") or []) for step in rung}
    running = state.get("status") not in (None, "finished")
    current = state.get("step") if running else None
    out = []
    for step in LADDER_STEPS:
        seen = [e for e in entries if e.get("step") == step]
        if step in CONDITIONAL_STEPS and not seen and step not in plan_steps and step != current:
            continue
        mark = "idle"
        if seen:
            mark = _OUTCOME_MARK.get(seen[-1].get("outcome", ""), "ran")
        elif step in plan_steps:
            mark = "planned"
        if step == current:
            mark = "current"
        out.append(
            {
                "step": step,
                "mark": mark,
                "in_plan": step in plan_steps or step == "diagnose",
                "entries": len(seen),
                "last_outcome": seen[-1].get("outcome") if seen else None,
            }
        )
    return out


def fleet_summary(conn: redis.Redis, window_minutes: float, storm_threshold: int) -> dict[str, Any]:
    """The fleet view from Redis: critical hosts in the window, storm, paused hosts, open pages."""
    now = time.time()
    window = window_minutes * 60
    # redis-py cannot tell from withscores=True that each member comes with its score.
    critical = cast(
        "list[tuple[bytes, float]]",
        conn.zrangebyscore(keys.FLEET_CRITICAL, now - window, "+inf", withscores=True),
    )
    fleet = {text(k): text(v) for k, v in conn.hgetall(keys.FLEET).items()}
    pages = [
        {
            "dedup_key": record.dedup_key,
            "kind": record.kind.value,
            "summary": record.summary,
            "severity": record.severity,
            "state": record.state.value,
            "rule": record.rule,
            "hosts": sorted(record.hosts),
            "host_states": record.hosts,
            "opened_at": record.created_at,
            "delivered_at": record.delivered_at,
        }
        for record in paging.open_pages(conn)
    ]
    open_ = incidents.open_incidents(conn)
    pipe = conn.pipeline(transaction=False)
    for incident_id in open_.values():
        pipe.hmget(keys.INCIDENT.format(incident_id), "state", "opened_at")
    states = pipe.execute() if open_ else []
    host_incidents = [
        {
            "host_id": host,
            "incident_id": incident_id,
            "state": _text(state),
            "opened_at": _typed("started_at", _text(at)),
        }
        for (host, incident_id), (state, at) in zip(open_.items(), states, strict=True)
    ]
    return {
        "window_minutes": window_minutes,
        "storm_threshold": storm_threshold,
        "critical_hosts": [{"host_id": h.decode(), "last_seen_at": round(score, 3)} for h, score in critical],
        "storm_active": fleet.get("storm") == "1",
        "storm_id": fleet.get("storm_id") or None,
        "storm_started_at": _typed("started_at", fleet.get("storm_started_at", "")),
        "cluster_network_ok": fleet.get("network_ok") != "0",
        "provider_status_ok": fleet.get("provider_ok") != "0",
        "paused_hosts": sorted(text(h) for h in conn.smembers(keys.PAUSED)),
        "open_pages": pages,
        "open_incidents": sorted(host_incidents, key=lambda i: i["host_id"]),
    }


def ladder_limit(rules: Any) -> LadderLimit:
    """The per-host ladder limit the rules set (``ladder.max_ladders_per_host``)."""
    policy = rules.ladder.max_ladders_per_host
    return LadderLimit(count=policy.count, window_seconds=policy.window_minutes * 60)


def retry_after(rules: Any) -> float | None:
    """Seconds after which a held host's re-sent alert may retry (``incident.retry_after_minutes``)."""
    minutes = rules.incident.retry_after_minutes
    return None if minutes is None else minutes * 60


@dataclass(frozen=True)
class RemediateResult:
    """What a manual remediate did: ``accepted`` with the new ladder, or why not."""

    host_id: str
    accepted: bool
    ladder_id: str | None
    detail: str
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "host_id": self.host_id,
            "accepted": self.accepted,
            "ladder_id": self.ladder_id,
            "job_id": self.ladder_id,
            "detail": self.detail,
            "dry_run": self.dry_run,
        }


def remediate_host(
    conn: redis.Redis, queue_name: str, host_id: str, *, dry_run: bool, who: str, limit: LadderLimit
) -> RemediateResult:
    """Start a ladder for ``host_id`` unless one is queued or running (deduped like an alert)."""
    req = LadderRequest(
        host_id=host_id, reason=f"manual remediate by {who}", alertname="manual", dry_run=dry_run, force=True
    )
    result = start_ladders(conn, queue_name, [req], limit)
    if result.accepted:
        ladder_id = result.accepted[0]["ladder_id"]
        return RemediateResult(host_id, True, ladder_id, f"ladder {ladder_id} queued", dry_run)
    skipped = result.skipped[0]
    return RemediateResult(host_id, False, skipped.get("ladder_id"), skipped["reason"], dry_run)


def close_incident(
    conn: redis.Redis, queue_name: str, host_id: str, *, who: str, reason: str
) -> dict[str, Any] | None:
    """A human closes the host's open incident: a running ladder stops at its next step boundary, the
    recovery bookkeeping (resume selfplay, resolve pages) is queued. None when nothing is open."""
    closed = incidents.close(conn, host_id, by=who, reason=reason)
    if closed.incident is None:
        return None
    queue_cleanup(conn, queue_name, closed.incident)
    return {
        "host_id": host_id,
        "incident_id": closed.incident,
        "state": incidents.IncidentState.RESOLVED.value,
        "closed_by": who,
        "reason": reason,
        "ladder_stopping": closed.ladder,
    }


# -- operator controls: freeze, approval ------------------------------------------------------------------

MAX_REASON = 500  # characters of a reason given with a freeze, an unfreeze or an approval


def valid_reason(reason: object) -> bool:
    """A reason a person gave: 1 to MAX_REASON characters, not only blanks (space, tab, newline) —
    exactly the API's documented pattern, so the spec and the check never disagree."""
    return (
        isinstance(reason, str) and 0 < len(reason) <= MAX_REASON and any(c not in " \t\r\n" for c in reason)
    )


MAX_FREEZE_SECONDS = 30 * 86400  # the longest freeze or maintenance window one command sets


def freeze_status(conn: redis.Redis) -> dict[str, Any]:
    """What holds the automation now: freezes (in force or scheduled) and firing maintenance alerts."""
    items = controls.freezes(conn)
    fleet = next((f for f in items if f.scope == controls.FLEET and f.active()), None)
    return {
        "frozen": fleet is not None,
        "reason": fleet.reason if fleet else None,
        "freezes": [f.as_dict() for f in items],
        "holds": controls.holds_all(conn),
    }


def set_freeze(
    conn: redis.Redis,
    *,
    reason: str,
    who: str,
    host_id: str | None = None,
    duration_seconds: float | None = None,
    starts_at: float | None = None,
    ends_at: float | None = None,
) -> controls.Freeze:
    """Freeze the fleet or one host: now (until unfrozen, or for ``duration_seconds``) or in a window."""
    if duration_seconds is not None:
        ends_at = (starts_at or time.time()) + duration_seconds
    return controls.freeze(
        conn, reason=reason, who=who, host_id=host_id, starts_at=starts_at, ends_at=ends_at
    )


def lift_freeze(
    conn: redis.Redis, settings: Any, *, who: str, host_id: str | None = None
) -> controls.Freeze | None:
    """Unfreeze; a freeze the budget tripped also has its page resolved."""
    from remediator.paging import resolve

    item = controls.unfreeze(conn, who=who, host_id=host_id)
    if item is not None and item.source == "budget":
        resolve(conn, settings, controls.freeze_page_key(item))
    return item


def approve(
    conn: redis.Redis, host_id: str, *, approve: bool, who: str, reason: str
) -> controls.Approval | None:
    """Answer the host's pending approval request; None when none is pending."""
    return controls.decide(conn, host_id, approve=approve, who=who, reason=reason)
