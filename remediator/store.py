"""Ladder state and the audit trail, kept in Redis so any worker can resume any ladder."""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from redis.client import Pipeline

from remediator import keys
from remediator.defaults import AUDIT_MAX_ENTRIES, HOST_KEYS_TTL

# Host hash fields holding JSON rather than plain strings.
_JSON_FIELDS = {"facts", "plan", "checklist", "evidence", "limits"}


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return "" if value is None else str(value)


def _decode(name: str, raw: str) -> Any:
    if name in _JSON_FIELDS and raw:
        return json.loads(raw)
    return raw


def host_fields(now: float, **fields: Any) -> dict[str, str]:
    """The host state hash fields ``update_host`` writes, encoded, stamped ``updated_at`` = ``now``."""
    mapping = {name: _encode(value) for name, value in fields.items()}
    mapping["updated_at"] = f"{now:.3f}"
    return mapping


def update_host(conn: redis.Redis | Pipeline, host_id: str, **fields: Any) -> None:
    """Set fields of the host's state hash (and bump it in the hosts index)."""
    now = time.time()
    conn.hset(keys.HOST.format(host_id), mapping=host_fields(now, **fields))
    conn.expire(keys.HOST.format(host_id), HOST_KEYS_TTL)
    conn.zadd(keys.HOSTS, {host_id: now})


def audit_entry(step: str, outcome: str, detail: str = "", **evidence: Any) -> dict[str, Any]:
    """One audit trail entry as ``append_audit`` stores it (evidence set to None is left out)."""
    entry: dict[str, Any] = {"ts": round(time.time(), 3), "step": step, "outcome": outcome}
    if detail:
        entry["detail"] = detail
    entry.update({k: v for k, v in evidence.items() if v is not None})
    return entry


def encode_audit(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, default=str)


def append_audit(
    conn: redis.Redis | Pipeline, host_id: str, step: str, outcome: str, detail: str = "", **evidence: Any
) -> dict[str, Any]:
    """Append one entry to the host's audit trail; returns the entry. Never pass a secret here."""
    entry = audit_entry(step, outcome, detail, **evidence)
    key = keys.AUDIT.format(host_id)
    conn.rpush(key, encode_audit(entry))
    conn.ltrim(key, -AUDIT_MAX_ENTRIES, -1)
    conn.expire(key, HOST_KEYS_TTL)
    return entry


def get_host(conn: redis.Redis, host_id: str) -> dict[str, Any]:
    raw = conn.hgetall(keys.HOST.format(host_id))
    return {k.decode(): _decode(k.decode(), v.decode()) for k, v in raw.items()}


def get_audit(conn: redis.Redis, host_id: str) -> list[dict[str, Any]]:
    return [json.loads(item) for item in conn.lrange(keys.AUDIT.format(host_id), 0, -1)]


def list_hosts(conn: redis.Redis, limit: int = 1000) -> list[dict[str, Any]]:
    """Hosts the remediator has state for, most recently updated first."""
    ids = [h.decode() for h in conn.zrevrange(keys.HOSTS, 0, limit - 1)]
    pipe = conn.pipeline(transaction=False)
    for host_id in ids:
        pipe.hgetall(keys.HOST.format(host_id))
    out = []
    for host_id, raw in zip(ids, pipe.execute(), strict=True):
        state = {k.decode(): _decode(k.decode(), v.decode()) for k, v in raw.items()}
        state["host_id"] = host_id
        out.append(state)
    return out
