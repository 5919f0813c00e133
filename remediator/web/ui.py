"""``/ui``: the status page (server-rendered, no external assets) and its admin forms.

What every visitor sees is a summary (``remediator.disclosure``): where each host stands on the ladder and
its timeline's steps and outcomes. A host's full state and the timeline's evidence are shown by
``POST /ui/hosts/<id>/details`` to whoever types the read token (or the admin token) into the form of
``GET /ui/hosts/<id>/details``; neither page refreshes itself, so a half-typed token is never lost.

The admin forms live on ``/ui/admin``, which does not refresh itself. The admin token is typed into a
password field and posted to ``/ui/remediate`` or ``/ui/requeue``, which check it like the API does; it
is never put in a URL or a page. Knowing it is also what stops a cross-site form post from acting.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import jinja2
import redis
from flask import Blueprint, Response, render_template, request, url_for
from rq.exceptions import NoSuchJobError
from rq.job import Job

from remediator import disclosure, keys, ops, outcomes
from remediator.defaults import AUDIT_MAX_ENTRIES, AUDIT_PAGE_ENTRIES
from remediator.extensions import get_redis, get_rules, get_settings
from remediator.hosts import is_valid_host_id
from remediator.requeue import HTTP_CODES, failed_job_ids, ladder_of, requeue_failed, requeue_job
from remediator.web.api import JOB_ID
from remediator.web.auth import check_any, check_authorization

bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates")
log = logging.getLogger("remediator.ui")

REFRESH = 5  # seconds between the status page's own reloads
FAILED_SHOWN = 50  # failed jobs listed on the status page
HOSTS_SHOWN = 200  # hosts listed on the status page, most recently updated first
PAGES = -(-AUDIT_MAX_ENTRIES // AUDIT_PAGE_ENTRIES)  # pages of AUDIT_PAGE_ENTRIES a host's timeline spans
_PAGE_NUMBER = re.compile(r"[1-9][0-9]{0,2}")  # canonical: no sign, space or leading zero
_AUDIT_KEYS = {"ts", "step", "outcome", "detail"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@bp.app_template_filter("ts")
def format_ts(value: Any) -> str:
    """``ops.format_ts``, with a field the state lacks (a jinja Undefined) shown as '-'."""
    return "-" if isinstance(value, jinja2.Undefined) else ops.format_ts(value)


@bp.app_template_filter("ago")
def format_ago(value: Any) -> str:
    if value in (None, ""):
        return "-"
    seconds = max(0, int(time.time() - float(value)))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


@bp.app_template_filter("evidence")
def audit_evidence(entry: dict[str, Any]) -> dict[str, Any]:
    """An audit entry's evidence: everything but the columns the timeline shows."""
    return {k: v for k, v in entry.items() if k not in _AUDIT_KEYS}


@bp.app_context_processor
def freeze_banner() -> dict[str, Any]:
    """Every page says when the automation is frozen, and by whom (outside Redis errors: none)."""
    try:
        return {"freeze": ops.freeze_status(get_redis())}
    except redis.RedisError:
        return {"freeze": None}


def _page(template: str, code: int = 200, **context: Any) -> Response:
    html = render_template(template, now=time.time(), **context)
    return Response(html, status=code, mimetype="text/html", headers=SECURITY_HEADERS)


def _message(code: int, title: str, *lines: str, back: str | None = None) -> Response:
    return _page("message.html", code, title=title, lines=lines, back=back, refresh=None)


@bp.errorhandler(redis.RedisError)
def redis_unavailable(exc: redis.RedisError) -> Response:
    log.error("redis error in %s: %s", request.endpoint, type(exc).__name__)
    return _message(503, "Redis is unavailable", "The state cannot be read right now; retry shortly.")


def _failed_jobs(conn: redis.Redis) -> list[dict[str, Any]]:
    out = []
    for job_id in failed_job_ids(conn, get_settings().queue)[-FAILED_SHOWN:]:
        try:
            job = Job.fetch(job_id, connection=conn)
        except NoSuchJobError:
            continue
        target = ladder_of(job)
        # Not the job's description: it holds the alert's reason, text from outside (see disclosure).
        out.append({"job_id": job_id, "host_id": target.host_id if target else None})
    return out


@bp.get("")
def index() -> Response:
    conn = get_redis()
    rules = get_rules()
    hosts = [disclosure.summary_state(h) for h in ops.list_hosts_with_progress(conn, limit=HOSTS_SHOWN)]
    fleet = disclosure.summary_fleet(
        ops.fleet_summary(conn, rules.fleet.window_minutes, rules.fleet.storm_threshold)
    )
    learned = outcomes.as_rows(outcomes.table(conn))  # our own vocabulary and counts: every reader
    return _page(
        "index.html",
        hosts=hosts,
        fleet=fleet,
        failed=_failed_jobs(conn),
        learned=learned,
        learning=rules.learning,
        refresh=REFRESH,
    )


def _invalid_host() -> Response:
    return _message(422, "Invalid host id", "A host id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$.")


def _unknown_host() -> Response:
    # The same page for every unknown host: an echoed id let the secret redactor confirm a guess.
    return _message(404, "Unknown host", "The remediator has no state for this host.")


def _page_number(raw: str | None) -> int | None:
    """A timeline page number from 1 to PAGES (1 when absent), or None."""
    if raw is None or raw == "":
        return 1
    if not _PAGE_NUMBER.fullmatch(raw) or not 1 <= int(raw) <= PAGES:
        return None
    return int(raw)


def _invalid_page() -> Response:
    return _message(400, "Invalid page", f"The timeline page must be a number from 1 to {PAGES}.")


def _host_detail(host_id: str, page: int) -> dict[str, Any] | None:
    """The host with one page of its timeline (page 1: the newest AUDIT_PAGE_ENTRIES entries)."""
    offset = (page - 1) * AUDIT_PAGE_ENTRIES
    detail = ops.host_detail(get_redis(), host_id, audit_limit=AUDIT_PAGE_ENTRIES, audit_offset=offset)
    if detail is not None:
        detail.update(audit_offset=offset, audit_limit=AUDIT_PAGE_ENTRIES)
    return detail


def _host_page(detail: dict[str, Any], view: str, page: int, code: int = 200) -> Response:
    # A host can have an audit and no state (a resolved alert for a host never remediated): every
    # field the page shows is then None, not missing.
    detail["state"] = {name: None for name in ops.SUMMARY_FIELDS} | detail["state"]
    pages = max(1, -(-detail["audit_total"] // AUDIT_PAGE_ENTRIES))
    return _page(
        "host.html",
        code,
        detail=detail,
        view=view,
        page=page,
        pages=pages,
        refresh=REFRESH if view == disclosure.SUMMARY else None,
    )


@bp.get("/hosts/<host_id>")
def host(host_id: str) -> Response:
    """A host's summary: its place on the ladder and its timeline's steps, refreshed every REFRESH s."""
    if not is_valid_host_id(host_id):
        return _invalid_host()
    page = _page_number(request.args.get("page"))
    if page is None:
        return _invalid_page()
    detail = _host_detail(host_id, page)
    if detail is None:
        return _unknown_host()
    return _host_page(disclosure.summary_detail(detail), disclosure.SUMMARY, page)


@bp.get("/hosts/<host_id>/details")
def host_details_form(host_id: str) -> Response:
    """The form asking for the read token, on a page that does not refresh."""
    if not is_valid_host_id(host_id):
        return _invalid_host()
    page = _page_number(request.args.get("page"))
    if page is None:
        return _invalid_page()
    if not get_redis().exists(keys.HOST.format(host_id), keys.AUDIT.format(host_id)):
        return _unknown_host()
    return _page("details.html", host_id=host_id, page=page, pages=PAGES, refresh=None)


@bp.post("/hosts/<host_id>/details")
def host_details(host_id: str) -> Response:
    """A host's full state and one page of its timeline with evidence, for the read or admin token."""
    if not is_valid_host_id(host_id):
        return _invalid_host()
    settings = get_settings()
    token = f"Bearer {request.form.get('token', '')}"
    if not check_any(token, (settings.read_token, settings.admin_token), allow_basic=False):
        return _message(
            401,
            "Not authorized",
            "The read token is missing or wrong (REMEDIATOR_READ_TOKEN; the admin token reads too).",
        )
    page = _page_number(request.form.get("page"))
    if page is None:
        return _invalid_page()
    detail = _host_detail(host_id, page)
    if detail is None:
        return _unknown_host()
    return _host_page(detail, disclosure.DETAIL, page)


@bp.get("/admin")
def admin() -> Response:
    """The admin forms, on a page that does not refresh (a half-typed token would be lost)."""
    host_id = request.args.get("host_id", "")
    return _page("admin.html", host_id=host_id if _known_host(host_id) else "", refresh=None)


def _known_host(host_id: str) -> bool:
    """Whether the remediator has state or an audit for ``host_id`` (only those prefill the forms).

    Any other value is not echoed into the page: the secret redactor would have confirmed a guessed
    secret put in ?host_id= to anyone, without a token."""
    if not is_valid_host_id(host_id):
        return False
    try:
        return get_redis().exists(keys.HOST.format(host_id), keys.AUDIT.format(host_id)) > 0
    except redis.RedisError:  # the forms still load; they will say Redis is down when used
        return False


def _authorized() -> bool:
    token = request.form.get("token", "")
    return check_authorization(f"Bearer {token}", get_settings().admin_token, allow_basic=False)


def _denied() -> Response:
    return _message(401, "Not authorized", "The admin token is missing or wrong (REMEDIATOR_ADMIN_TOKEN).")


@bp.post("/remediate")
def remediate() -> Response:
    if not _authorized():
        return _denied()
    host_id = request.form.get("host_id", "")
    if not is_valid_host_id(host_id):
        return _message(422, "Invalid host id", "A host id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$.")
    dry_run = request.form.getlist("dry_run")
    if dry_run not in ([], ["1"]):
        # Only the checkbox's one "1" means a dry run; "true", "yes" or a repeated field must not quietly
        # start a real run (or pick one of several answers).
        return _message(422, "Invalid dry_run", 'dry_run must be "1" (a dry run) or absent (a real run).')
    settings = get_settings()
    result = ops.remediate_host(
        get_redis(),
        settings.queue,
        host_id,
        dry_run=dry_run == ["1"] or settings.dry_run,
        who=f"ui ({request.remote_addr or 'unknown'})",
        limit=ops.ladder_limit(get_rules()),
    )
    back = url_for("ui.host", host_id=host_id)
    if not result.accepted:
        return _message(409, "Not started", result.detail, back=back)
    what = "dry-run ladder" if result.dry_run else "ladder"
    return _message(202, "Remediation queued", f"{what} {result.ladder_id} queued for {host_id}.", back=back)


@bp.post("/requeue")
def requeue() -> Response:
    if not _authorized():
        return _denied()
    settings = get_settings()
    conn = get_redis()
    who = f"ui ({request.remote_addr or 'unknown'})"
    limit = ops.ladder_limit(get_rules())
    job_id = request.form.get("job_id", "").strip()
    host_id = request.form.get("host_id", "").strip() or None
    if host_id is not None and not is_valid_host_id(host_id):
        return _message(422, "Invalid host id", "A host id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$.")
    if job_id and not JOB_ID.fullmatch(job_id):
        return _message(422, "Invalid job id", "A job id must match ^[A-Za-z0-9_-]{1,128}$.")
    if job_id:
        results = [
            requeue_job(conn, settings.queue, job_id, who=who, limit=limit, default_dry_run=settings.dry_run)
        ]
    else:
        results = requeue_failed(
            conn, settings.queue, who=who, limit=limit, host_id=host_id, default_dry_run=settings.dry_run
        )
    if not results:
        return _message(
            200, "Nothing to requeue", "There are no failed jobs" + (f" of {host_id}." if host_id else ".")
        )
    code = max(HTTP_CODES[r.action] for r in results)
    lines = [f"{r.job_id}: {r.action}: {r.detail}" for r in results]
    back = url_for("ui.host", host_id=host_id) if host_id else None
    return _message(code, "Requeue", *lines, back=back)


@bp.post("/freeze")
def freeze() -> Response:
    if not _authorized():
        return _denied()
    reason = request.form.get("reason", "")
    if not ops.valid_reason(reason):
        return _message(422, "Invalid reason", f"Give a reason of 1 to {ops.MAX_REASON} characters.")
    host_id = request.form.get("host_id", "") or None
    if host_id is not None and not is_valid_host_id(host_id):
        return _message(422, "Invalid host id", "A host id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$.")
    hours = request.form.get("hours", "")
    duration = None
    if hours:
        if not hours.isdigit() or not 1 <= int(hours) <= ops.MAX_FREEZE_SECONDS // 3600:
            return _message(422, "Invalid duration", "Hours must be a whole number from 1 to 720.")
        duration = int(hours) * 3600.0
    item = ops.set_freeze(
        get_redis(), reason=reason, who=_ui_who(), host_id=host_id, duration_seconds=duration
    )
    scope = "The fleet" if host_id is None else f"Host {host_id}"
    until = f" until {ops.format_ts(item.ends_at)}" if item.ends_at else " until unfrozen"
    return _message(
        200, "Frozen", f"{scope} is frozen{until}: mutating steps wait, diagnosis and pages go on."
    )


@bp.post("/unfreeze")
def unfreeze() -> Response:
    if not _authorized():
        return _denied()
    host_id = request.form.get("host_id", "") or None
    if host_id is not None and not is_valid_host_id(host_id):
        return _message(422, "Invalid host id", "A host id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$.")
    item = ops.lift_freeze(get_redis(), get_settings(), who=_ui_who(), host_id=host_id)
    if item is None:
        return _message(404, "Not frozen", "There is no freeze of that scope.")
    return _message(200, "Unfrozen", "Held ladders go on at their next re-check.")


@bp.post("/approve")
def approve() -> Response:
    if not _authorized():
        return _denied()
    host_id = request.form.get("host_id", "")
    if not is_valid_host_id(host_id):
        return _message(422, "Invalid host id", "A host id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$.")
    answer = request.form.get("answer", "")
    if answer not in ("approve", "deny"):
        return _message(422, "Invalid answer", 'The answer must be "approve" or "deny".')
    reason = request.form.get("reason", "")
    if not ops.valid_reason(reason):
        return _message(422, "Invalid reason", f"Give a reason of 1 to {ops.MAX_REASON} characters.")
    answered = ops.approve(get_redis(), host_id, approve=answer == "approve", who=_ui_who(), reason=reason)
    back = url_for("ui.host", host_id=host_id)
    if answered is None:
        return _message(404, "Nothing to answer", "No approval is pending for this host.", back=back)
    return _message(200, "Answered", f"{answered.step} {answered.state}.", back=back)


def _ui_who() -> str:
    return f"ui ({request.remote_addr or 'unknown'})"
