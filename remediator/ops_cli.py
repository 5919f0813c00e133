"""``remediator status``, ``remediate`` and ``requeue``: the API's reads and manual control, from a shell.

They talk to Redis directly (``REDIS_URL``) through the same functions as ``/api/v1``, so the answers
are the same; ``--json`` prints exactly what the API returns.
"""

from __future__ import annotations

import getpass
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click
import redis
from rich.console import Console
from rich.table import Table
from rich.text import Text

from remediator import disclosure, ops
from remediator.config import Settings
from remediator.connections import redis_from_settings
from remediator.defaults import AUDIT_MAX_ENTRIES
from remediator.exceptions import ConfigError, RulesError
from remediator.hosts import is_valid_host_id
from remediator.requeue import Requeued, requeue_failed, requeue_job

PLAIN_WIDTH = 160  # columns for tables when stdout is not a terminal
MARKS = {"ok": "✓", "ran": "~", "failed": "✗", "skipped": "-", "planned": "·", "current": "▶", "idle": " "}


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _connect(settings: Settings) -> redis.Redis:
    try:
        conn = redis_from_settings(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if conn is None:
        raise click.ClickException(
            "REDIS_URL is not set: point it (or REDIS_SENTINELS and REDIS_SENTINEL_MASTER) at the "
            "remediator's Redis"
        )
    return conn


def _rules(settings: Settings) -> Any:
    from remediator.rules import load_rules

    try:
        return load_rules(settings.rules_file)
    except RulesError as exc:
        raise click.ClickException(f"REMEDIATOR_RULES_FILE: {exc}") from exc


@contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise click.ClickException(
            f"Redis is unavailable ({type(exc).__name__}): check REDIS_URL (and REDIS_SENTINELS)"
        ) from exc


def _who() -> str:
    try:
        return f"cli ({getpass.getuser()})"
    except (KeyError, OSError):
        return "cli"


def _console() -> Console:
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=PLAIN_WIDTH)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _when(value: Any) -> Text:
    return Text(ops.format_ts(value))


def _ladder_text(progress: list[dict[str, Any]]) -> Text:
    return Text(" ".join(f"{MARKS.get(p['mark'], '?')}{p['step']}" for p in progress if p["mark"] != "idle"))


def _text(value: Any) -> Text:
    return Text("-" if value in (None, "") else str(value))


def _hosts_table(conn: redis.Redis) -> Table:
    table = Table(title="hosts in remediation", title_justify="left")
    for column in ("host", "status", "step", "attempt", "outcome", "ladder", "progress", "updated"):
        table.add_column(column, overflow="fold")
    for host in ops.list_hosts_with_progress(conn):
        table.add_row(
            _text(host["host_id"]),
            _text(host["status"]),
            _text(host["step"]),
            _text(host["attempt"]),
            _text(host["outcome"]),
            _text(host["ladder_id"]),
            _ladder_text(host["progress"]),
            _when(host["updated_at"]),
        )
    return table


def _timeline(detail: dict[str, Any]) -> list[Any]:
    state = detail["state"]
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    for label, value in (
        ("host", detail["host_id"]),
        ("status", state.get("status")),
        ("step", state.get("step")),
        ("attempt", state.get("attempt")),
        ("outcome", state.get("outcome")),
        ("detail", state.get("outcome_detail")),
        ("ladder", state.get("ladder_id")),
        ("job", state.get("job_id")),
    ):
        head.add_row(label, _text(value))
    head.add_row("progress", _ladder_text(detail["progress"]))
    incident = detail.get("incident")
    if incident:
        pages = ", ".join(f"{p['dedup_key']} ({p['state']})" for p in incident.get("page_records", []))
        head.add_row("incident", Text(f"{incident['id']} {incident['state']}"))
        head.add_row(
            "ladders",
            Text(
                " > ".join(f"{ref['kind']}:{ref.get('outcome') or 'running'}" for ref in incident["ladders"])
                or "-"
            ),
        )
        head.add_row("pages", _text(pages))
        if incident.get("closed_by"):
            head.add_row("closed", Text(f"by {incident['closed_by']}: {incident.get('close_reason')}"))
    table = Table(title="timeline", title_justify="left")
    for column in ("time", "step", "outcome", "detail", "evidence"):
        table.add_column(column, overflow="fold")
    for entry in detail["audit"]:
        evidence = {k: v for k, v in entry.items() if k not in ("ts", "step", "outcome", "detail")}
        table.add_row(
            _when(entry.get("ts")),
            _text(entry.get("step")),
            _text(entry.get("outcome")),
            _text(entry.get("detail")),
            Text(json.dumps(evidence, sort_keys=True, default=str)),
        )
    return [head, table]


def _host_arg(host: str) -> str:
    if not is_valid_host_id(host):
        raise click.BadParameter("must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", param_hint="HOST")
    return host


@click.command()
@click.argument("host", required=False)
@click.option(
    "--json", "as_json", is_flag=True, help="print what GET /api/v1/hosts[/HOST] returns to the read token"
)
def status(host: str | None, as_json: bool) -> None:
    """Hosts in or after remediation, or HOST's state and audit timeline."""
    settings = _settings()
    conn = _connect(settings)
    with _redis_errors():
        if host is None:
            if as_json:
                _echo_json({"view": disclosure.DETAIL, "hosts": ops.list_host_summaries(conn)})
                return
            _console().print(_hosts_table(conn))
            return
        # The whole trail (AUDIT_MAX_ENTRIES): what GET /api/v1/hosts/HOST?limit=1000 answers.
        detail = ops.host_detail(conn, _host_arg(host), audit_limit=AUDIT_MAX_ENTRIES)
        if detail is None:
            raise click.ClickException(f"no state for host {host}: the remediator has never worked on it")
        detail.update(view=disclosure.DETAIL, audit_offset=0, audit_limit=AUDIT_MAX_ENTRIES)
        if as_json:
            _echo_json(detail)
            return
        console = _console()
        for part in _timeline(detail):
            console.print(part)


@click.command()
@click.argument("host")
@click.option("--dry-run", is_flag=True, help="diagnose and record the plan; change nothing")
def remediate(host: str, dry_run: bool) -> None:
    """Start a ladder for HOST now, unless one is already queued or running."""
    settings = _settings()
    conn = _connect(settings)
    host = _host_arg(host)
    with _redis_errors():
        result = ops.remediate_host(
            conn,
            settings.queue,
            host,
            dry_run=dry_run or settings.dry_run,
            who=_who(),
            limit=ops.ladder_limit(_rules(settings)),
        )
    if not result.accepted:
        if result.ladder_id:
            raise click.ClickException(
                f"host {host} is already being remediated by ladder {result.ladder_id}"
            )
        raise click.ClickException(f"host {host}: {result.detail}")
    what = "dry-run ladder" if result.dry_run else "ladder"
    click.echo(f"{what} {result.ladder_id} queued for {host}")


@click.command()
@click.argument("job_id", required=False)
@click.option("--failed", "all_failed", is_flag=True, help="every job in RQ's failed-job registry")
@click.option("--host", "host", default=None, help="the failed jobs of HOST")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
def requeue(job_id: str | None, all_failed: bool, host: str | None, as_json: bool) -> None:
    """Re-queue JOB_ID, every failed job (--failed) or HOST's failed jobs (--host), never a second ladder.

    A failed job of a host's active ladder resumes that ladder with a fresh job; when its ladder has ended,
    a new one starts; when another ladder owns the host, nothing happens and the command exits 1.
    """
    if sum((job_id is not None, all_failed, host is not None)) != 1:
        raise click.UsageError("give exactly one of JOB_ID, --failed or --host HOST")
    settings = _settings()
    conn = _connect(settings)
    limit = ops.ladder_limit(_rules(settings))
    who = _who()
    with _redis_errors():
        if job_id is not None:
            results = [
                requeue_job(
                    conn, settings.queue, job_id, who=who, limit=limit, default_dry_run=settings.dry_run
                )
            ]
        else:
            results = requeue_failed(
                conn,
                settings.queue,
                who=who,
                limit=limit,
                host_id=_host_arg(host) if host else None,
                default_dry_run=settings.dry_run,
            )
    _report(results, as_json, empty=f"no failed jobs{f' of {host}' if host else ''}")


def _report(results: list[Requeued], as_json: bool, empty: str) -> None:
    if as_json:
        _echo_json({"results": [r.as_dict() for r in results]})
    elif not results:
        click.echo(empty)
    for result in results if not as_json else ():
        click.echo(f"{result.job_id}: {result.action}: {result.detail}", err=not result.ok)
    if not all(r.ok for r in results):
        raise SystemExit(1)


@click.group()
def incident() -> None:
    """Host incidents: one host's problem from its first alert to its resolution."""


@incident.command("close")
@click.argument("host")
@click.option("--reason", default="closed by a human", show_default=True, help="recorded in the audit")
def incident_close(host: str, reason: str) -> None:
    """Close HOST's open incident: its ladder stops, selfplay resumes, its pages are resolved."""
    settings = _settings()
    conn = _connect(settings)
    host = _host_arg(host)
    with _redis_errors():
        result = ops.close_incident(conn, settings.queue, host, who=_who(), reason=reason)
    if result is None:
        raise click.ClickException(f"host {host} has no open incident")
    stopping = (
        f"; ladder {result['ladder_stopping']} stops at its next step" if result["ladder_stopping"] else ""
    )
    click.echo(f"incident {result['incident_id']} of {host} closed{stopping}")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90s', '30m', '4h', '2d' -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise click.BadParameter("a duration such as 90s, 30m, 4h or 2d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_time(text: str) -> float:
    """An RFC 3339 time ('2026-12-01T02:00:00Z'), or '+DURATION' from now -> unix seconds."""
    if text.startswith("+"):
        return time.time() + parse_duration(text[1:])
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("an RFC 3339 time (2026-12-01T02:00:00Z) or +DURATION (+2h)") from None
    if moment.tzinfo is None:
        raise click.BadParameter("give the time zone (Z or +hh:mm)")
    return moment.timestamp()


@click.command()
@click.option("--reason", required=True, help="why (recorded in the audit, shown on the status page)")
@click.option("--for", "for_", default=None, help="lift it by itself after this long (90s, 30m, 4h, 2d)")
@click.option("--host", "host", default=None, help="freeze only HOST (default: the whole fleet)")
@click.option("--from", "from_", default=None, help="a maintenance window: from this time (RFC 3339 or +2h)")
@click.option("--until", "until", default=None, help="... until this time (RFC 3339 or +6h)")
def freeze(reason: str, for_: str | None, host: str | None, from_: str | None, until: str | None) -> None:
    """Stop every mutating step (fleet-wide, or on HOST): diagnosis, audit and pages go on."""
    if for_ and until:
        raise click.UsageError("give --for or --until, not both")
    starts = parse_time(from_) if from_ else None
    ends = parse_time(until) if until else None
    if ends is not None and (ends <= time.time() or (starts is not None and ends <= starts)):
        raise click.UsageError("--until must be in the future and after --from")
    settings = _settings()
    conn = _connect(settings)
    with _redis_errors():
        item = ops.set_freeze(
            conn,
            reason=reason,
            who=_who(),
            host_id=_host_arg(host) if host else None,
            duration_seconds=parse_duration(for_) if for_ else None,
            starts_at=starts,
            ends_at=ends,
        )
    scope = "fleet" if item.scope == "*" else f"host {item.scope}"
    window = ""
    if item.starts_at:
        window += f" from {ops.format_ts(item.starts_at)}"
    if item.ends_at:
        window += f" until {ops.format_ts(item.ends_at)}"
    click.echo(f"{scope} frozen{window}: {reason}")


@click.command()
@click.option("--host", "host", default=None, help="lift HOST's freeze (default: the fleet's)")
def unfreeze(host: str | None) -> None:
    """Lift the fleet's (or HOST's) freeze: held ladders go on at their next re-check."""
    settings = _settings()
    conn = _connect(settings)
    with _redis_errors():
        item = ops.lift_freeze(conn, settings, who=_who(), host_id=_host_arg(host) if host else None)
    if item is None:
        raise click.ClickException(f"{'host ' + host if host else 'the fleet'} is not frozen")
    click.echo(f"{'fleet' if item.scope == '*' else 'host ' + item.scope} unfrozen (was: {item.reason})")


@click.command()
@click.argument("host")
@click.option("--deny", is_flag=True, help="refuse the step (the ladder escalates to a human)")
@click.option("--reason", required=True, help="why (recorded in the audit)")
def approve(host: str, deny: bool, reason: str) -> None:
    """Answer HOST's pending approval request (a step the rules keep for a human yes)."""
    settings = _settings()
    conn = _connect(settings)
    with _redis_errors():
        answered = ops.approve(conn, _host_arg(host), approve=not deny, who=_who(), reason=reason)
    if answered is None:
        raise click.ClickException(f"no approval is pending for host {host}")
    click.echo(f"{answered.step} of {host} {answered.state} by {answered.who}: {reason}")


COMMANDS = (status, remediate, requeue, incident, freeze, unfreeze, approve)
