"""``/api/v1``: the audit and state API, and manual control (remediate, requeue).

Reads without an ``Authorization`` header answer a summary (``remediator.disclosure``): where each host
stands, nothing a host, the coordinator or the configuration said. The full state and the audit's
evidence need ``Authorization: Bearer`` with the read token (``REMEDIATOR_READ_TOKEN``) or the admin
token; other credentials are refused (401) rather than quietly answered with the summary, so that a
misconfigured client learns of it. Writes need ``Authorization: Bearer <REMEDIATOR_ADMIN_TOKEN>``.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import redis
from flask import Blueprint, Response, request

from remediator import disclosure, metrics, ops, outcomes
from remediator.defaults import AUDIT_MAX_ENTRIES, AUDIT_PAGE_ENTRIES
from remediator.extensions import get_redis, get_rules, get_settings
from remediator.hosts import is_valid_host_id
from remediator.requeue import HTTP_CODES, requeue_failed, requeue_job
from remediator.web.auth import check_any, check_authorization

bp = Blueprint("api", __name__, url_prefix="/api/v1")
log = logging.getLogger("remediator.api")

JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
HOST_ID_RULE = "host_id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
REASON_RULE = f"reason must be a non-empty string of at most {ops.MAX_REASON} characters"
# The same answer for every unknown host: echoing the id back let the secret redactor confirm a guessed
# secret (GET /api/v1/hosts/<admin token> answered "no state for host [REDACTED]").
UNKNOWN_HOST = "no state for this host: the remediator has never worked on it"


Answer = tuple[dict[str, Any], int, dict[str, str]]  # body, status code, headers


def error(code: int, message: str, **extra: Any) -> Answer:
    headers = {"WWW-Authenticate": 'Bearer realm="remediator-admin"'} if code == 401 else {}
    return {"error": message, **extra}, code, headers


def admin_error() -> Answer | None:
    """A 401 answer unless the request carries the admin token as a bearer token."""
    if check_authorization(
        request.headers.get("Authorization"), get_settings().admin_token, allow_basic=False
    ):
        return None
    return error(
        401, "missing or wrong admin credentials: send 'Authorization: Bearer <REMEDIATOR_ADMIN_TOKEN>'"
    )


def read_view() -> str | None:
    """``detail`` for the read or admin bearer token, ``summary`` with no Authorization header, None for
    other credentials (answer 401)."""
    header = request.headers.get("Authorization", "")
    if not header.strip():
        return disclosure.SUMMARY
    settings = get_settings()
    if check_any(header, (settings.read_token, settings.admin_token), allow_basic=False):
        return disclosure.DETAIL
    return None


def read_error() -> Answer:
    return (
        {
            "error": "wrong credentials for reading: send 'Authorization: Bearer <REMEDIATOR_READ_TOKEN>' "
            "(or the admin token) for the full state, or no Authorization header for the summary"
        },
        401,
        {"WWW-Authenticate": 'Bearer realm="remediator-read"'},
    )


_PAGE_NUMBER = re.compile(r"0|[1-9][0-9]{0,6}")  # canonical: no sign, space or leading zero


def page_argument(name: str, default: int, lowest: int, highest: int) -> int | None:
    """The query argument ``name`` as an integer in [lowest, highest] (``default`` when absent); None
    when it is anything else."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not _PAGE_NUMBER.fullmatch(raw) or not lowest <= int(raw) <= highest:
        return None
    return int(raw)


def _who() -> str:
    return f"api ({request.remote_addr or 'unknown'})"


def _json_object() -> dict[str, Any] | None:
    """The request body as a JSON object; {} when empty; None when it is not a JSON object."""
    if not request.get_data(cache=True):
        return {}
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # nested deeper than the JSON decoder can follow
        return None
    return body if isinstance(body, dict) else None


def _admin_body(
    example: str, host_id: str | None = None, *, empty_ok: bool = True
) -> tuple[dict[str, Any] | None, Answer | None]:
    """An admin write's JSON body ({} when empty), or None and the answer refusing the request, checked
    in this order: 401 without the admin token, 422 when the path's ``host_id`` (if any) is malformed, 400
    when the body is not a JSON object (the message shows ``example``, and says whether it may be empty)."""
    if denied := admin_error():
        return None, denied
    if host_id is not None and not is_valid_host_id(host_id):
        return None, error(422, HOST_ID_RULE, field="host_id")
    body = _json_object()
    if body is None:
        rule = f"body must be a JSON object such as {example}" + (", or empty" if empty_ok else "")
        return None, error(400, rule, field="(body)")
    return body, None


@bp.errorhandler(redis.RedisError)
def redis_unavailable(exc: redis.RedisError) -> Any:
    log.error("redis error in %s: %s", request.endpoint, type(exc).__name__)
    return error(503, "Redis is unavailable; retry later", retry=True)


@bp.after_request
def count(response: Response) -> Response:
    metrics.API_REQUESTS.labels(endpoint=request.endpoint or "unknown", code=str(response.status_code)).inc()
    return response


@bp.get("/hosts")
def hosts() -> Any:
    view = read_view()
    if view is None:
        return read_error()
    summaries = ops.list_host_summaries(get_redis())
    if view == disclosure.SUMMARY:
        summaries = [disclosure.summary_state(h) for h in summaries]
    return {"view": view, "hosts": summaries}


@bp.get("/hosts/<host_id>")
def host(host_id: str) -> Any:
    if not is_valid_host_id(host_id):
        return error(422, HOST_ID_RULE, field="host_id")
    view = read_view()
    if view is None:
        return read_error()
    limit = page_argument("limit", AUDIT_PAGE_ENTRIES, 1, AUDIT_MAX_ENTRIES)
    if limit is None:
        return error(400, f"limit must be an integer from 1 to {AUDIT_MAX_ENTRIES}", field="limit")
    offset = page_argument("offset", 0, 0, AUDIT_MAX_ENTRIES)
    if offset is None:
        return error(400, f"offset must be an integer from 0 to {AUDIT_MAX_ENTRIES}", field="offset")
    detail = ops.host_detail(get_redis(), host_id, audit_limit=limit, audit_offset=offset)
    if detail is None:
        return error(404, UNKNOWN_HOST)
    detail.update(view=view, audit_offset=offset, audit_limit=limit)
    return detail if view == disclosure.DETAIL else disclosure.summary_detail(detail)


@bp.get("/fleet")
def fleet() -> Any:
    view = read_view()
    if view is None:
        return read_error()
    rules = get_rules()
    summary = ops.fleet_summary(get_redis(), rules.fleet.window_minutes, rules.fleet.storm_threshold)
    return {**summary, "view": view} if view == disclosure.DETAIL else disclosure.summary_fleet(summary)


@bp.get("/stats")
def stats() -> Any:
    """Per failure signature, how often each rung healed the host and how fast (remediator.outcomes)."""
    view = read_view()
    if view is None:
        return read_error()
    policy = get_rules().learning
    rows = outcomes.as_rows(outcomes.table(get_redis()))
    return {
        "view": view,
        "learning": {"enabled": policy.enabled, "min_samples": policy.min_samples},
        "steps": rows,
    }


@bp.post("/hosts/<host_id>/remediate")
def remediate(host_id: str) -> Any:
    body, refused = _admin_body('{"dry_run": true}', host_id)
    if body is None:
        return refused
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        return error(400, "dry_run must be true or false", field="dry_run")
    settings = get_settings()
    result = ops.remediate_host(
        get_redis(),
        settings.queue,
        host_id,
        dry_run=dry_run or settings.dry_run,
        who=_who(),
        limit=ops.ladder_limit(get_rules()),
    )
    if not result.accepted:
        return error(409, result.detail, host_id=host_id, ladder_id=result.ladder_id)
    return result.as_dict(), 202


@bp.post("/hosts/<host_id>/incident/close")
def close_incident(host_id: str) -> Any:
    body, refused = _admin_body('{"reason": "fixed by hand"}', host_id)
    if body is None:
        return refused
    reason = _reason(body, "closed by a human")
    if reason is None:
        return error(400, REASON_RULE, field="reason")
    result = ops.close_incident(get_redis(), get_settings().queue, host_id, who=_who(), reason=reason)
    if result is None:
        return error(404, "no open incident for this host")
    return result, 200


@bp.post("/jobs/<job_id>/requeue")
def requeue(job_id: str) -> Any:
    if denied := admin_error():
        return denied
    if not JOB_ID.fullmatch(job_id):
        return error(422, "job_id must match ^[A-Za-z0-9_-]{1,128}$", field="job_id")
    settings = get_settings()
    result = requeue_job(
        get_redis(),
        settings.queue,
        job_id,
        who=_who(),
        limit=ops.ladder_limit(get_rules()),
        default_dry_run=settings.dry_run,
    )
    code = HTTP_CODES[result.action]
    if code >= 400:
        return error(code, result.detail, **{k: v for k, v in result.as_dict().items() if k != "detail"})
    return result.as_dict(), code


@bp.post("/jobs/requeue-failed")
def requeue_all_failed() -> Any:
    body, refused = _admin_body('{"host_id": "h1"}')
    if body is None:
        return refused
    host_id = body.get("host_id")
    # Present means "only this host": null is refused, never read as "every host".
    if "host_id" in body and not is_valid_host_id(host_id):
        return error(422, HOST_ID_RULE, field="host_id")
    settings = get_settings()
    results = requeue_failed(
        get_redis(),
        settings.queue,
        who=_who(),
        limit=ops.ladder_limit(get_rules()),
        host_id=host_id,
        default_dry_run=settings.dry_run,
    )
    counts: dict[str, int] = {}
    for result in results:
        counts[result.action] = counts.get(result.action, 0) + 1
    return {"results": [r.as_dict() for r in results], "counts": counts}, 200


# -- operator controls -----------------------------------------------------------------------------------


def _reason(body: dict[str, Any], default: str | None = None) -> str | None:
    reason = body.get("reason", default)
    return reason if ops.valid_reason(reason) else None


def _instant(value: Any) -> float | None:
    """Unix seconds (the CLI turns RFC 3339 times into them); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return float(value)


@bp.get("/freeze")
def freeze_status() -> Any:
    view = read_view()
    if view is None:
        return read_error()
    status = ops.freeze_status(get_redis())
    if view != disclosure.DETAIL:  # who froze it names an operator's address: readers with a token only
        status["freezes"] = [{k: v for k, v in f.items() if k != "who"} for f in status["freezes"]]
    return status


@bp.post("/freeze")
def freeze() -> Any:
    body, refused = _admin_body('{"reason": "maintenance"}', empty_ok=False)
    if body is None:
        return refused
    reason = _reason(body)
    if reason is None:
        return error(400, REASON_RULE, field="reason")
    host_id = body.get("host_id")
    if "host_id" in body and not is_valid_host_id(host_id):
        return error(422, HOST_ID_RULE, field="host_id")
    window: dict[str, float | None] = {}
    for name in ("starts_at", "ends_at"):
        if name in body:
            window[name] = _instant(body[name])
            if window[name] is None:
                return error(400, f"{name} must be a number of unix seconds", field=name)
    duration = body.get("duration_seconds")
    if "duration_seconds" in body and (
        duration is None
        or isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not 0 < duration <= ops.MAX_FREEZE_SECONDS
    ):
        return error(
            400,
            f"duration_seconds must be a number in (0, {ops.MAX_FREEZE_SECONDS}]",
            field="duration_seconds",
        )
    if "duration_seconds" in body and "ends_at" in body:
        return error(400, "give duration_seconds or ends_at, not both", field="duration_seconds")
    starts, ends = window.get("starts_at"), window.get("ends_at")
    if ends is not None and (ends <= time.time() or (starts is not None and ends <= starts)):
        return error(
            409,
            "the window is over before it starts: ends_at must be in the future and after starts_at",
            field="ends_at",
        )
    item = ops.set_freeze(
        get_redis(),
        reason=reason,
        who=_who(),
        host_id=host_id,
        duration_seconds=duration,
        starts_at=starts,
        ends_at=ends,
    )
    return item.as_dict(), 201


@bp.delete("/freeze")
def unfreeze() -> Any:
    if denied := admin_error():
        return denied
    host_id = request.args.get("host_id")
    if host_id is not None and not is_valid_host_id(host_id):
        return error(422, HOST_ID_RULE, field="host_id")
    item = ops.lift_freeze(get_redis(), get_settings(), who=_who(), host_id=host_id)
    if item is None:
        return error(404, "no freeze of this scope")
    return {**item.as_dict(), "lifted": True}, 200


@bp.post("/hosts/<host_id>/approve")
def approve(host_id: str) -> Any:
    body, refused = _admin_body('{"approve": true, "reason": "..."}', host_id, empty_ok=False)
    if body is None:
        return refused
    if not isinstance(body.get("approve"), bool):
        return error(400, "approve must be true or false", field="approve")
    reason = _reason(body)
    if reason is None:
        return error(400, REASON_RULE, field="reason")
    answered = ops.approve(get_redis(), host_id, approve=body["approve"], who=_who(), reason=reason)
    if answered is None:
        return error(404, "no approval is pending for this host")
    return {
        "host_id": host_id,
        "step": answered.step,
        "ladder_id": answered.ladder_id,
        "state": answered.state,
        "who": answered.who,
        "reason": answered.reason,
    }, 200
