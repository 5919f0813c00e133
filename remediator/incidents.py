"""Host incidents: one host's problem, from its first firing alert to its resolution.

An incident opens with the first firing alert (or discovery, or a human's ``remediate``) for a host
that has none open, and everything else hangs off it: the ladders run for the host, their outcomes,
the page sent and whether it was delivered, and who or what closed it. Its states::

    remediating --ladder ends healthy--> monitoring --healthy for healthy_for_minutes--> resolved
         |  ^                               |
         |  +--- remediate / requeue / relapse / retry_after ---+
         +--ladder ends escalated, failed, recovered, retired--> held --alert resolves / human--> resolved

``open`` is an incident with no ladder and nothing to wait for (the ladder limit refused one). Re-sent
alerts attach to the open incident: while it is ``held`` or ``monitoring`` they start nothing and run
nothing on the host. Closing it (a resolved alert, ``remediator incident close``, or the coordinator
reporting the host healthy for the rules' ``healthy_for_minutes``) queues the recovery bookkeeping
(``workers.jobs.finish_incident``): leave the fleet window, resume selfplay the remediator paused,
resolve the incident's pages, end the storm when it was the last host.

Every transition is one Lua script, so the receiver, the ladder and the sweeper never see half of one.
Keys computed inside the scripts (``remediator:incident:<id>``) keep this to one Redis instance or a
Sentinel-managed master, never Redis Cluster (docs/deploy.md).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from remediator import keys, metrics, store
from remediator.connections import text
from remediator.incidents_lua import CLOSE_LUA, END_LUA, RESOLVE_LUA
from remediator.states import (  # noqa: F401 -- the incident's vocabulary, read as incidents.*
    HEALED_OUTCOMES,
    HOLDING_OUTCOMES,
    IncidentState,
    Outcome,
    state_after,
)

INCIDENT_TTL = 30 * 86400  # seconds an incident (open or closed) is kept after its last change
HISTORY_KEEP = 20  # incident ids kept per host
CLEANUP_DUE = 60.0  # seconds after which the sweeper re-queues a closed incident's unfinished cleanup


def new_incident_id() -> str:
    return "inc-" + secrets.token_hex(6)


def page_key(host_id: str, incident_id: str) -> str:
    """The dedup key of a host incident's page: stable across its ladders and re-sent alerts."""
    return f"remediator/{host_id}/{incident_id}"


@dataclass
class LadderRef:
    """One ladder run in an incident."""

    ladder_id: str
    started_at: float
    kind: str = "first"  # first, retry, manual, relapse
    reason: str = ""
    outcome: str | None = None
    detail: str | None = None
    finished_at: float | None = None


@dataclass
class Incident:
    id: str
    host_id: str
    state: IncidentState
    opened_at: float
    opened_by: str = ""
    alerts: int = 0
    last_alert_at: float | None = None
    ladder_id: str | None = None
    held_since: float | None = None
    held_reason: str | None = None
    healthy_since: float | None = None
    page: str | None = None  # the page a human was (or is being) told of it under
    pages: list[str] = field(default_factory=list)  # every page it was part of (host, storm, summary)
    paged: bool = False  # a pager took one of its pages
    rsync_ok: float | None = None  # when an rsync of the host's data last succeeded in it
    closed_at: float | None = None
    closed_by: str | None = None
    close_reason: str | None = None
    cleanup: str | None = None
    ladders: list[LadderRef] = field(default_factory=list)
    tried: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def is_open(self) -> bool:
        return self.state != IncidentState.RESOLVED

    @classmethod
    def from_hash(cls, raw: Mapping[bytes | str, bytes | str]) -> Incident:
        data = {text(k): text(v) for k, v in raw.items()}
        ladders = [
            LadderRef(**json.loads(value)) for name, value in data.items() if name.startswith("ladder:")
        ]
        ladders.sort(key=lambda ref: ref.started_at)
        tried = {name[6:]: json.loads(value) for name, value in data.items() if name.startswith("tried:")}
        return cls(
            id=data["id"],
            host_id=data.get("host_id", ""),
            state=IncidentState(data.get("state", "open")),
            opened_at=float(data.get("opened_at") or 0),
            opened_by=data.get("opened_by", ""),
            alerts=int(data.get("alerts") or 0),
            last_alert_at=_float(data.get("last_alert_at")),
            ladder_id=data.get("ladder_id") or None,
            held_since=_float(data.get("held_since")),
            held_reason=data.get("held_reason") or None,
            healthy_since=_float(data.get("healthy_since")),
            page=data.get("page") or None,
            pages=sorted(name[5:] for name in data if name.startswith("page:")),
            paged=data.get("paged") == "1",
            rsync_ok=_float(data.get("rsync_ok")),
            closed_at=_float(data.get("closed_at")),
            closed_by=data.get("closed_by") or None,
            close_reason=data.get("close_reason") or None,
            cleanup=data.get("cleanup") or None,
            ladders=ladders,
            tried=tried,
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name not in ("ladders", "tried", "state")
        }
        out["state"] = self.state.value
        out["ladders"] = [ref.__dict__ for ref in self.ladders]
        out["tried"] = self.tried
        return out


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def get(conn: redis.Redis, incident_id: str) -> Incident | None:
    raw = conn.hgetall(keys.INCIDENT.format(incident_id))
    return Incident.from_hash(raw) if raw.get(b"id") else None


def current_id(conn: redis.Redis, host_id: str) -> str | None:
    raw = conn.get(keys.HOST_INCIDENT.format(host_id))
    return text(raw) if raw else None


def current(conn: redis.Redis, host_id: str) -> Incident | None:
    """The host's open incident, or None."""
    incident_id = current_id(conn, host_id)
    return get(conn, incident_id) if incident_id else None


def history(conn: redis.Redis, host_id: str, limit: int = 10) -> list[Incident]:
    """The host's most recent incidents (open or closed), newest first."""
    ids = [text(i) for i in conn.lrange(keys.HOST_INCIDENTS.format(host_id), -limit, -1)]
    pipe = conn.pipeline(transaction=False)
    for incident_id in ids:
        pipe.hgetall(keys.INCIDENT.format(incident_id))
    found = [Incident.from_hash(raw) for raw in pipe.execute() if raw.get(b"id")] if ids else []
    return list(reversed(found))


def open_incidents(conn: redis.Redis) -> dict[str, str]:
    """Host id -> open incident id, for every host with an open incident."""
    return {text(k): text(v) for k, v in conn.hgetall(keys.OPEN_INCIDENTS).items()}


def update(conn: redis.Redis | Any, incident_id: str, **fields: Any) -> None:
    """Set fields of an incident (JSON for dicts and lists); refreshes its expiry."""
    key = keys.INCIDENT.format(incident_id)
    mapping = {
        name: json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)
        for name, value in fields.items()
        if value is not None
    }
    if mapping:
        conn.hset(key, mapping=mapping)  # type: ignore[arg-type]  # redis-py's Mapping[FieldT, ...] takes no dict[str, str]
    conn.expire(key, INCIDENT_TTL)


def add_page(conn: redis.Redis, incident_id: str, dedup_key: str, *, paged: bool) -> None:
    """Hang a page off the incident; ``paged`` only once a pager took it (never set back to false)."""
    fields: dict[str, Any] = {"page": dedup_key, f"page:{dedup_key}": "1"}
    if paged:
        fields["paged"] = "1"
    update(conn, incident_id, **fields)


def record_tried(conn: redis.Redis, incident_id: str, step: str, **entry: Any) -> None:
    """Remember that ``step`` did not fix the host in this incident, and under which facts."""
    update(conn, incident_id, **{f"tried:{step}": {"at": round(time.time(), 3), **entry}})


# -- scripts (remediator/incidents_lua.py) --------------------------------------------------------------

_scripts: dict[str, Any] = {}


def _script(conn: redis.Redis, source: str) -> Any:
    script = _scripts.get(source)
    if script is None:
        script = _scripts[source] = conn.register_script(source)
    return script


def _host_keys(host_id: str) -> list[str]:
    return [
        keys.HOST_INCIDENT.format(host_id),
        keys.OPEN_INCIDENTS,
        keys.CLEANUP,
        keys.AUDIT.format(host_id),
        keys.ACTIVE.format(host_id),
        keys.CANCEL.format(host_id),
        keys.HOST.format(host_id),
        keys.FLEET_CRITICAL,
    ]


def _prefix() -> str:
    return keys.INCIDENT.format("")


def _run_host_script(conn: redis.Redis, source: str, host_id: str, *args: Any) -> Any:
    """Run a script that closes a host's incident (RESOLVE_LUA, CLOSE_LUA) on the host's keys: its
    ARGV are the host, now, the incident key prefix, the incident TTL and the audit cap, then ``args``."""
    return _script(conn, source)(
        keys=_host_keys(host_id),
        args=[host_id, f"{time.time():.3f}", _prefix(), INCIDENT_TTL, store.AUDIT_MAX_ENTRIES, *args],
        client=conn,
    )


@dataclass(frozen=True)
class Closed:
    """What closing did: ``incident`` closed (None: nothing was open), ``ladder`` asked to stop."""

    incident: str | None
    ladder: str | None = None
    cancel_requested: bool = False


def resolve_alert(conn: redis.Redis, host_id: str, fingerprint: str = "", *, warning: bool = False) -> Closed:
    """A resolved alert: stop the running ladder (its end closes the incident), or close the incident.

    Nothing is written for a host with neither an incident nor a ladder: resolved alerts for hosts the
    remediator never saw must not create keys."""
    from remediator.intake import ACTIVE_TTL

    closed = store.encode_audit(
        store.audit_entry("incident", "resolved", "the alert resolved", fingerprint=fingerprint or None)
    )
    cancel = store.encode_audit(
        store.audit_entry("intake", "cancel-requested", "alert resolved", fingerprint=fingerprint or None)
    )
    code, ref = _run_host_script(
        conn, RESOLVE_LUA, host_id, closed, cancel, "alert resolved", ACTIVE_TTL, "1" if warning else "0"
    )
    ref = ref.decode() if isinstance(ref, bytes) else ref
    if code == 0:
        return Closed(None)
    if code == 1:
        return Closed(current_id(conn, host_id), ladder=ref, cancel_requested=True)
    return Closed(ref)


def close(conn: redis.Redis, host_id: str, *, by: str, reason: str, expected: str = "") -> Closed:
    """Close the host's open incident (a human, or the coordinator's healthy reports)."""
    from remediator.intake import ACTIVE_TTL

    entry = store.encode_audit(store.audit_entry("incident", "closed", reason, closed_by=by))
    code, inc, ladder = _run_host_script(conn, CLOSE_LUA, host_id, entry, by, reason, ACTIVE_TTL, expected)
    if code == 0:
        return Closed(None)
    ladder = ladder.decode() if ladder else ""
    return Closed(inc.decode(), ladder=ladder or None, cancel_requested=bool(ladder))


@dataclass(frozen=True)
class Ended:
    """What ending a ladder did: ``ok`` false when it was not this worker's to end."""

    ok: bool
    incident: str | None = None
    state: str | None = None
    withdrawn: bool = False


def end_ladder(
    conn: redis.Redis,
    host_id: str,
    ladder_id: str,
    lock_token: str,
    outcome: str,
    detail: str,
    host_fields: dict[str, str],
    next_state: IncidentState,
    audit: dict[str, Any],
) -> Ended:
    """End a ladder and move its incident on (monitoring, held, open or resolved), atomically."""
    now = time.time()
    entry = store.encode_audit(
        store.audit_entry(
            "incident", "resolved", "the alert resolved; the ladder stopped", ladder_id=ladder_id
        )
    )
    flat: list[str] = []
    for name, value in host_fields.items():
        flat += [name, value]
    code, inc, state = _script(conn, END_LUA)(
        keys=[
            keys.ACTIVE.format(host_id),
            keys.CANCEL.format(host_id),
            keys.LOCK.format(host_id),
            keys.HOST.format(host_id),
            keys.HOST_INCIDENT.format(host_id),
            keys.OPEN_INCIDENTS,
            keys.CLEANUP,
            keys.AUDIT.format(host_id),
            metrics.COUNTS,
            keys.FLEET_CRITICAL,
        ],
        args=[
            ladder_id,
            lock_token,
            outcome,
            f"{now:.3f}",
            _prefix(),
            INCIDENT_TTL,
            store.AUDIT_MAX_ENTRIES,
            entry,
            detail,
            len(host_fields),
            *flat,
            next_state.value,
            store.encode_audit(audit),
            metrics.field("remediator_ladders", {"outcome": outcome}),
        ],
        client=conn,
    )
    if code == -1:
        return Ended(False, withdrawn=True)
    if code == 0:
        return Ended(False)
    return Ended(True, inc.decode() or None, state.decode() or None)


def cleanup_due(conn: redis.Redis, older_than: float = CLEANUP_DUE) -> list[str]:
    """Closed incidents whose recovery bookkeeping has not finished ``older_than`` seconds after closing."""
    # redis-py types a range as maybe with scores.
    due = cast("list[bytes]", conn.zrangebyscore(keys.CLEANUP, "-inf", time.time() - older_than))
    return [i.decode() for i in due]


def cleanup_done(conn: redis.Redis, incident_id: str) -> None:
    with conn.pipeline() as pipe:
        pipe.zrem(keys.CLEANUP, incident_id)
        pipe.hset(keys.INCIDENT.format(incident_id), "cleanup", "done")
        pipe.expire(keys.INCIDENT.format(incident_id), INCIDENT_TTL)
        pipe.execute()
