"""Ladder state and the audit trail, kept in Redis so any worker can resume any ladder.

Everything written here is bounded (``defaults.EVIDENCE_*``, ``AUDIT_ENTRY_MAX_BYTES``,
``HOST_FIELD_MAX_BYTES``): evidence is what a host, the coordinator or a command said, and a hostile or
broken host must not make the audit, the API or the status page arbitrarily large. The bound is applied
here, where every entry and every state field is encoded, so no caller can bypass it; entries stored
before the bound existed are cut when read.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any, cast

import redis
from redis.client import Pipeline

from remediator import keys
from remediator.connections import text
from remediator.defaults import (
    AUDIT_ENTRY_MAX_BYTES,
    AUDIT_MAX_ENTRIES,
    EVIDENCE_LIST_MAX_ITEMS,
    EVIDENCE_MAX_DEPTH,
    EVIDENCE_STRING_MAX_BYTES,
    HOST_FIELD_MAX_BYTES,
    HOST_KEYS_TTL,
)

# Host hash fields holding JSON rather than plain strings.
_JSON_FIELDS = {"facts", "plan", "checklist", "evidence", "limits"}
TRUNCATED = "…[truncated {} bytes]"
KEY_MAX_BYTES = 128  # bytes of one object key in evidence
# Tighter bounds tried, in turn, when an entry or a field is still too large after the usual ones:
# (bytes per string, items per list or object).
_SHRINK = ((EVIDENCE_STRING_MAX_BYTES, EVIDENCE_LIST_MAX_ITEMS), (256, 8))
_ENTRY_FIELDS = ("ts", "step", "outcome", "detail", "ladder_id", "job_id")  # kept whatever the size
_BIG_INT = 10**18


def cut(text: str, limit: int = EVIDENCE_STRING_MAX_BYTES) -> str:
    """``text`` if it fits in ``limit`` UTF-8 bytes, else its start and ``…[truncated N bytes]``."""
    if len(text) * 4 <= limit:  # fits even at four bytes a character: nothing to measure
        return text
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    keep = max(0, limit - len(TRUNCATED.format(len(raw)).encode()))
    return raw[:keep].decode("utf-8", "ignore") + TRUNCATED.format(len(raw) - keep)


def bound(
    value: Any,
    strings: int = EVIDENCE_STRING_MAX_BYTES,
    items: int = EVIDENCE_LIST_MAX_ITEMS,
    depth: int = EVIDENCE_MAX_DEPTH,
) -> Any:
    """``value`` as JSON-ready data with every string, list, object and nesting level cut to the bounds.

    A list keeps its newest (last) ``items`` items after a marker saying how many were left out (a log
    tail's newest lines are the ones that matter); an object keeps its first ``items`` keys and a
    ``"…"`` key saying how many were left out; anything nested deeper than ``depth`` becomes a marker."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if -_BIG_INT < value < _BIG_INT else cut(str(value), strings)
    if isinstance(value, str):
        return cut(value, strings)
    if isinstance(value, dict | list | tuple | set | frozenset) and depth <= 0:
        return f"…[truncated: nested deeper than {EVIDENCE_MAX_DEPTH} levels]"
    if isinstance(value, dict):
        out = {
            cut(str(k), KEY_MAX_BYTES): bound(v, strings, items, depth - 1)
            for k, v in itertools.islice(value.items(), items)
        }
        if len(value) > items:
            out["…"] = f"[truncated {len(value) - items} keys]"
        return out
    if isinstance(value, list | tuple | set | frozenset):
        seq = list(value)
        kept = [bound(v, strings, items, depth - 1) for v in seq[-items:]] if items else []
        if len(seq) > items:
            kept.insert(0, f"…[truncated {len(seq) - items} items]")
        return kept
    return cut(str(value), strings)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _fit_entry(entry: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The entry bounded so that its JSON is at most AUDIT_ENTRY_MAX_BYTES, and that JSON."""
    size = 0
    for strings, items in _SHRINK:
        bounded = bound(entry, strings, items)
        text = _dumps(bounded)
        if len(text) <= AUDIT_ENTRY_MAX_BYTES:
            return bounded, text
        size = max(size, len(text))
    # Still too large (a great many keys or deep nesting): the entry's own fields, evidence left out.
    kept = {k: bound(entry[k], 128, 8) for k in _ENTRY_FIELDS if k in entry}
    kept["truncated"] = f"evidence of over {size} bytes left out (limit {AUDIT_ENTRY_MAX_BYTES} bytes)"
    return kept, _dumps(kept)


def _fit_field(value: Any) -> str:
    """A JSON host state field, bounded so that it is at most HOST_FIELD_MAX_BYTES."""
    size = 0
    for strings, items in _SHRINK:
        text = _dumps(bound(value, strings, items))
        if len(text) <= HOST_FIELD_MAX_BYTES:
            return text
        size = max(size, len(text))
    marker = TRUNCATED.format(size)
    return _dumps({"…": marker} if isinstance(value, dict) else [marker])


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict | list | tuple):
        return _fit_field(value)
    return "" if value is None else cut(str(value))


def _decode(name: str, raw: str) -> Any:
    if name in _JSON_FIELDS and raw:
        value = json.loads(raw)
        return value if len(raw) <= HOST_FIELD_MAX_BYTES else json.loads(_fit_field(value))
    return raw if len(raw) <= HOST_FIELD_MAX_BYTES else cut(raw)


def host_fields(now: float, **fields: Any) -> dict[str, str]:
    """The host state hash fields ``update_host`` writes, encoded and bounded, stamped ``updated_at``."""
    mapping = {name: _encode(value) for name, value in fields.items()}
    mapping["updated_at"] = f"{now:.3f}"
    return mapping


def update_host(conn: redis.Redis | Pipeline, host_id: str, **fields: Any) -> None:
    """Set fields of the host's state hash (and bump it in the hosts index)."""
    now = time.time()
    conn.hset(keys.HOST.format(host_id), mapping=host_fields(now, **fields))  # type: ignore[arg-type]  # redis-py's Mapping[FieldT, ...] takes no dict[str, str]
    conn.expire(keys.HOST.format(host_id), HOST_KEYS_TTL)
    conn.zadd(keys.HOSTS, {host_id: now})


def audit_entry(step: str, outcome: str, detail: str = "", /, **evidence: Any) -> dict[str, Any]:
    """One audit trail entry as ``append_audit`` stores it: evidence set to None left out, the rest
    bounded (at most AUDIT_ENTRY_MAX_BYTES once encoded).

    The parameters are positional-only, so evidence may carry any key (a diagnosis summary has host_id)."""
    entry = {k: v for k, v in evidence.items() if v is not None}
    entry.update(ts=round(time.time(), 3), step=step, outcome=outcome)  # evidence never replaces these
    if detail:
        entry["detail"] = detail
    return _fit_entry(entry)[0]


def encode_audit(entry: dict[str, Any]) -> str:
    """The entry as stored: JSON of at most AUDIT_ENTRY_MAX_BYTES, whatever the caller built."""
    return _fit_entry(entry)[1]


def append_audit(
    conn: redis.Redis | Pipeline, host_id: str, step: str, outcome: str, detail: str = "", /, **evidence: Any
) -> dict[str, Any]:
    """Append one entry to the host's audit trail; returns the entry. Never pass a secret here.

    The parameters are positional-only, so evidence may carry any key: a diagnosis summary has host_id,
    which as a keyword made the call fail and the ladder of a host unknown to the coordinator crash."""
    entry = audit_entry(step, outcome, detail, **evidence)  # bounded: its JSON fits
    key = keys.AUDIT.format(host_id)
    conn.rpush(key, _dumps(entry))
    conn.ltrim(key, -AUDIT_MAX_ENTRIES, -1)
    conn.expire(key, HOST_KEYS_TTL)
    return entry


def get_host(conn: redis.Redis, host_id: str) -> dict[str, Any]:
    raw = conn.hgetall(keys.HOST.format(host_id))
    return {text(k): _decode(text(k), text(v)) for k, v in raw.items()}


def decode_audit(raw: bytes | str) -> dict[str, Any]:
    """One stored entry; one stored before entries were bounded is cut as ``append_audit`` would."""
    entry = json.loads(raw)
    return entry if len(raw) <= AUDIT_ENTRY_MAX_BYTES else _fit_entry(entry)[0]


def get_audit(conn: redis.Redis, host_id: str, start: int = 0, end: int = -1) -> list[dict[str, Any]]:
    """The host's audit entries ``start``..``end`` (LRANGE indexes, inclusive), oldest first."""
    return [decode_audit(item) for item in conn.lrange(keys.AUDIT.format(host_id), start, end)]


def list_hosts(conn: redis.Redis, limit: int = 1000) -> list[dict[str, Any]]:
    """Hosts the remediator has state for, most recently updated first."""
    # redis-py types a range as maybe with scores.
    ids = [h.decode() for h in cast("list[bytes]", conn.zrevrange(keys.HOSTS, 0, limit - 1))]
    pipe = conn.pipeline(transaction=False)
    for host_id in ids:
        pipe.hgetall(keys.HOST.format(host_id))
    out = []
    for host_id, raw in zip(ids, pipe.execute(), strict=True):
        state = {k.decode(): _decode(k.decode(), v.decode()) for k, v in raw.items()}
        state["host_id"] = host_id
        out.append(state)
    return out
