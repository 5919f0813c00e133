"""``POST /webhook/alertmanager``: validate, authenticate, resolve hosts, dedupe, store, answer."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

import redis
from flask import Blueprint, make_response, request

from remediator import controls, keys, metrics
from remediator.connections import confirm_replicated
from remediator.extensions import get_redis, get_rules, get_settings
from remediator.intake import LadderRequest, resolve_host, start_ladders
from remediator.ops import ladder_limit, retry_after
from remediator.web.auth import check_authorization
from remediator.web.payload import Alert, HostIdError, PayloadError, parse_payload

bp = Blueprint("receiver", __name__)
log = logging.getLogger("remediator.receiver")

FLEET_WINDOW_KEEP = 86400  # seconds of critical-host sightings kept in the fleet window


def _answer(code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    metrics.WEBHOOK_REQUESTS.labels(code=str(code)).inc()
    return body, code, headers or {}


def _error(code: int, error: str, field: str | None = None, **extra: Any) -> Any:
    body: dict[str, Any] = {"error": error}
    if field:
        body["field"] = field
    body.update(extra)
    headers = {"WWW-Authenticate": 'Bearer realm="remediator"'} if code == 401 else None
    return _answer(code, body, headers)


@bp.post("/webhook/alertmanager")
def alertmanager() -> Any:
    settings = get_settings()
    if not check_authorization(request.headers.get("Authorization"), settings.webhook_token):
        return _error(
            401,
            "missing or wrong credentials: send 'Authorization: Bearer <token>' "
            "(http_config.authorization) or basic auth with the token as password",
        )
    too_large = f"body larger than {settings.max_body_bytes} bytes (REMEDIATOR_MAX_BODY_BYTES)"
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        return _error(413, too_large)
    data = _read_body(settings.max_body_bytes)
    if data is None:
        return _error(413, too_large)
    if not request.is_json:
        return _error(415, "Content-Type must be application/json", field="Content-Type")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the decoder can follow
        body = None
    if body is None:
        return _error(400, "body is not valid JSON", field="(body)")
    try:
        alerts = parse_payload(body)
    except PayloadError as exc:
        return _error(400, exc.message, field=exc.field)
    except HostIdError as exc:
        return _error(
            422, "host_id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$; nothing was accepted", field=exc.field
        )
    try:
        answer = _store(alerts)
    except redis.RedisError as exc:
        log.error("could not store alerts: %s", type(exc).__name__)
        return _error(503, "work could not be stored (Redis unavailable); retry later", retry=True)
    counts = Counter(
        (item.get("status", "firing"), outcome) for bucket, outcome in _OUTCOMES for item in answer[bucket]
    )
    for (status, outcome), count in counts.items():
        metrics.ALERTS.labels(status=status, outcome=outcome).inc(count)
    response = make_response(*_answer(202, answer))
    # One line per alert, written once the answer is sent: the alerts are already stored, and a
    # 1,000-alert payload's answer need not wait for a thousand log lines (about 40 ms).
    response.call_on_close(lambda: _log_outcomes(answer))
    return response


def _read_body(limit: int) -> bytes | None:
    """The request body, or None when it is larger than ``limit`` bytes; at most ``limit`` + 1 are read.

    A chunked body has no Content-Length to refuse up front. Werkzeug's own limit on such a stream ends
    the read at the limit without an error, which cut the body and answered 400; reading one byte more
    than allowed tells "exactly the limit" from "too large". A server that terminates the input itself
    (gunicorn, for chunked bodies too) says so with ``wsgi.input_terminated``; otherwise only what
    Content-Length announces is read (werkzeug's ``request.stream``), never an unbounded socket."""
    terminated = request.environ.get("wsgi.input_terminated")
    stream = request.input_stream if terminated else request.stream
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(64 * 1024, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return None if size > limit else b"".join(chunks)


_OUTCOMES = (
    ("accepted", "accepted"),
    ("skipped", "skipped"),
    ("resolved", "cancelled"),
    ("recorded", "fleet"),
)


def _log_outcomes(answer: dict[str, Any]) -> None:
    for item in answer["accepted"]:
        log.info(
            "ladder queued",
            extra={
                "host_id": item["host_id"],
                "job_id": item["job_id"],
                "fingerprint": item["fingerprint"],
                "alertname": item.get("alertname"),
            },
        )
    for item in answer["skipped"]:
        log.info(
            "alert skipped: %s",
            item["reason"],
            extra={"host_id": item["host_id"], "fingerprint": item["fingerprint"]},
        )


def _store(alerts: list[Alert]) -> dict[str, Any]:
    """Store what the alerts ask for; raise RedisError (→ 503) if any of it could not be stored."""
    conn = get_redis()
    rules = get_rules()
    settings = get_settings()
    requests_: list[LadderRequest] = []
    skipped: list[dict[str, Any]] = []
    resolved: list[dict[str, Any]] = []
    recorded: list[dict[str, Any]] = []
    critical_seen: dict[str, float] = {}
    now = time.time()
    for alert in alerts:
        entry = {
            "host_id": alert.host_id,
            "fingerprint": alert.fingerprint,
            "alertname": alert.alertname,
            "status": alert.status,
        }
        if rules.holds(alert.alertname):
            # A maintenance alert: while it fires, every mutating step (of its host, or of the fleet
            # without a host_id) waits; its resolved notification lifts the hold.
            controls.hold_alert(conn, alert.alertname, alert.host_id, alert.status == "firing")
            recorded.append({**entry, "action": "hold" if alert.status == "firing" else "hold lifted"})
            continue
        if rules.feeds_fleet(alert.alertname):
            recorded.append(entry)
            continue
        warning = rules.prevents(alert.alertname)
        if warning and alert.host_id is None:
            skipped.append(
                {**entry, "reason": "a warning of alerts.prevent must carry its host's host_id label"}
            )
            continue
        if not warning and not rules.starts_ladder(alert.alertname):
            skipped.append(
                {
                    **entry,
                    "reason": f"alertname {alert.alertname!r} does not start a ladder "
                    "(rules alerts.start_ladder)",
                }
            )
            continue
        if alert.status == "resolved":
            if alert.host_id is None:
                skipped.append({**entry, "reason": "resolved cluster-level alert: nothing to cancel"})
            else:
                answer = resolve_host(conn, settings.queue, alert.host_id, alert.fingerprint, warning=warning)
                resolved.append({**entry, **answer})
            continue
        if alert.host_id is not None and not warning:  # a warning is not a critical host
            critical_seen[alert.host_id] = now
        requests_.append(
            LadderRequest(
                host_id=alert.host_id,
                fingerprint=alert.fingerprint,
                alertname=alert.alertname,
                reason=f"{alert.alertname} firing" + ("" if alert.host_id else ": discover critical hosts"),
                dry_run=settings.dry_run,
                gentle=warning,
            )
        )
    if recorded:
        fleet = {f"alert:{a['alertname']}": f"{a['status']} {now:.3f}" for a in recorded}
        conn.hset(keys.FLEET, mapping=fleet)  # type: ignore[arg-type]  # redis-py's Mapping[FieldT, ...] takes no dict[str, str]

    limit = ladder_limit(rules)
    # The sightings go into the intake's script: a worker that runs one of these ladders sees them.
    result = start_ladders(
        conn,
        settings.queue,
        requests_,
        limit,
        sightings=critical_seen,
        sightings_keep=FLEET_WINDOW_KEEP,
        retry_after=retry_after(rules),
    )
    for item in result.accepted + result.skipped:
        item["status"] = "firing"  # only firing alerts ask for a ladder
    if settings.redis_sentinels:
        # Under Sentinel, "stored" means on a replica too: a failover must not lose an accepted alert.
        confirm_replicated(conn)
    return {
        "status": "accepted",
        "accepted": result.accepted,
        "skipped": skipped + result.skipped,
        "resolved": resolved,
        "recorded": recorded,
    }
