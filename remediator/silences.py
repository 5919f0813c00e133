"""Alertmanager silences while the remediator acts on a host (opt-in: the rules' ``silences``).

While a ladder runs mutating steps on a host (restarting its agent, copying its data), the host's
*other* alerts (an agent-down or disk alert the restart itself causes) would page people for what the
remediator is doing. A silence through Alertmanager's ``POST /api/v2/silences`` matches the host's
``host_id`` and excludes, by a negative regex match on ``alertname``, every alert that starts a ladder:
a silenced alert sends no ``resolved``, and the remediator must see its own trigger resolve.

The silence's own ``endsAt`` is a safety net (the rules' ``duration_minutes``); it is expired as soon as
the ladder ends (``DELETE /api/v2/silence/<id>``), and the sweeper expires any left behind by a worker
that died. Every silence created is tracked in Redis (``remediator:silences``) until it is expired.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import requests

from remediator import keys
from remediator.connections import text
from remediator.hosts import is_valid_host_id

log = logging.getLogger("remediator.silences")

TIMEOUT = 5.0  # seconds for one call to Alertmanager
CREATED_BY = "ringrift-remediator"


@dataclass(frozen=True)
class Silence:
    silence_id: str
    host_id: str
    ladder_id: str
    ends_at: float


class AlertmanagerSilences:
    """The two calls of Alertmanager's v2 API the remediator makes."""

    def __init__(self, url: str, session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self.session = session or requests.Session()

    def create(self, matchers: list[dict[str, Any]], ends_at: datetime, comment: str) -> str:
        body = {
            "matchers": matchers,
            "startsAt": _rfc3339(datetime.now(UTC)),
            "endsAt": _rfc3339(ends_at),
            "createdBy": CREATED_BY,
            "comment": comment,
        }
        resp = self.session.post(f"{self.url}/api/v2/silences", json=body, timeout=TIMEOUT)
        resp.raise_for_status()
        silence_id = resp.json().get("silenceID")
        if not isinstance(silence_id, str) or not silence_id:
            raise ValueError("Alertmanager answered without a silenceID")
        return silence_id

    def active(self) -> list[dict[str, Any]]:
        """The remediator's own silences that are still in force."""
        resp = self.session.get(f"{self.url}/api/v2/silences", timeout=TIMEOUT)
        resp.raise_for_status()
        return [
            s
            for s in resp.json()
            if s.get("createdBy") == CREATED_BY
            and (s.get("status") or {}).get("state") in ("active", "pending")
        ]

    def expire(self, silence_id: str) -> None:
        resp = self.session.delete(f"{self.url}/api/v2/silence/{silence_id}", timeout=TIMEOUT)
        if resp.status_code != 404:  # already expired or gone: nothing left to do
            resp.raise_for_status()


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def matchers(host_id: str, trigger_alerts: frozenset[str]) -> list[dict[str, Any]]:
    """The host's alerts, except the ones that start ladders (never silenced)."""
    triggers = "|".join(re.escape(name) for name in sorted(trigger_alerts))
    return [
        {"name": "host_id", "value": host_id, "isRegex": False, "isEqual": True},
        {"name": "alertname", "value": triggers, "isRegex": True, "isEqual": False},
    ]


_LADDER = re.compile(r"\(ladder ([0-9a-f]{32})\)")


def tracked(conn: redis.Redis) -> list[Silence]:
    return [Silence(**json.loads(raw)) for raw in conn.hvals(keys.SILENCES)]


def ensure(
    conn: redis.Redis, client: AlertmanagerSilences, rules: Any, host_id: str, ladder_id: str
) -> str | None:
    """The silence of this ladder's host, created if it has none yet; None when it could not be made
    (the ladder acts anyway: a silence only spares people noise)."""
    for silence in tracked(conn):
        if silence.ladder_id == ladder_id and silence.ends_at > time.time():
            return silence.silence_id
    ends_at = datetime.now(UTC) + timedelta(minutes=rules.silences.duration_minutes)
    try:
        silence_id = client.create(
            matchers(host_id, rules.start_ladder),
            ends_at,
            f"ringrift-remediator is remediating {host_id} (ladder {ladder_id}); expired when it ends",
        )
    except (requests.RequestException, ValueError) as exc:
        log.warning("could not silence the other alerts of %s: %s", host_id, type(exc).__name__)
        return None
    record = Silence(silence_id, host_id, ladder_id, ends_at.timestamp())
    conn.hset(keys.SILENCES, silence_id, json.dumps(record.__dict__))
    return silence_id


def expire(
    conn: redis.Redis,
    client: AlertmanagerSilences,
    *,
    ladder_id: str | None = None,
    stale: bool = False,
    untracked: bool = False,
) -> list[str]:
    """Expire the silences of a ladder (or, with ``stale``, those whose ladder no longer runs);
    returns the ids expired. One that could not be expired stays tracked and is tried again."""
    done = []
    if stale and untracked:
        done += _expire_untracked(conn, client)
    for silence in tracked(conn):
        if ladder_id is not None and silence.ladder_id != ladder_id:
            continue
        if stale:
            active = conn.get(keys.ACTIVE.format(silence.host_id))
            if active is not None and text(active) == silence.ladder_id:
                continue
        try:
            client.expire(silence.silence_id)
        except requests.RequestException as exc:
            if silence.ends_at > time.time():
                log.warning("could not expire silence %s: %s", silence.silence_id, type(exc).__name__)
                continue
        conn.hdel(keys.SILENCES, silence.silence_id)
        done.append(silence.silence_id)
    return done


def _expire_untracked(conn: redis.Redis, client: AlertmanagerSilences) -> list[str]:
    """Silences the remediator made in Alertmanager that Redis does not know of (a worker killed between
    creating one and recording it) and whose ladder no longer runs: expired, never left to run out."""
    known = {s.silence_id for s in tracked(conn)}
    done: list[str] = []
    try:
        found = client.active()
    except (requests.RequestException, ValueError):
        return done
    for silence in found:
        match = _LADDER.search(silence.get("comment") or "")
        if silence.get("id") in known or match is None:
            continue
        host = next((m.get("value") for m in silence.get("matchers", []) if m.get("name") == "host_id"), None)
        active = conn.get(keys.ACTIVE.format(host)) if is_valid_host_id(host) else None
        if active is not None and text(active) == match.group(1):
            continue
        try:
            client.expire(silence["id"])
            done.append(silence["id"])
        except requests.RequestException:
            continue
    return done
