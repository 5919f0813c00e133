"""Watching open incidents between ladders: close the healed ones, notice relapses, send page updates.

One pass (from the sweeper, at most every ``recheck_interval_seconds``) asks the coordinator once for
every host and, for each host whose incident has no ladder running:

- healthy at the coordinator for the rules' ``incident.healthy_for_minutes`` → the incident closes
  (closed by "coordinator") and its recovery bookkeeping is queued;
- critical again while ``monitoring`` (a healed host relapsed) → a ladder starts in the same incident;
- no answer from the coordinator → nothing: unknown is never healthy.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from remediator import incidents, keys, paging
from remediator.clients import clients_for
from remediator.config import Settings
from remediator.exceptions import CoordinatorError
from remediator.incidents import IncidentState
from remediator.intake import LadderRequest, queue_cleanup, start_ladders
from remediator.ops import ladder_limit
from workers import fleet
from workers.context import Context, rules_for

log = logging.getLogger("remediator.monitor")

MIN_INTERVAL = 5.0  # seconds: the fastest the monitor asks the coordinator, whatever the rules say


def due(conn: redis.Redis, rules: Any) -> bool:
    """Claim this pass if the last one is at least one recheck interval old (one pass across workers)."""
    interval = max(MIN_INTERVAL, rules.ladder.recheck_interval_seconds)
    return bool(conn.set(keys.MONITOR_LOCK, f"{time.time():.3f}", nx=True, px=int(interval * 1000)))


def monitor(conn: redis.Redis, settings: Settings) -> dict[str, Any]:
    rules = rules_for(settings)
    done: dict[str, Any] = {"updates": paging.flush_updates(conn, settings, rules)}
    if not due(conn, rules):
        return done
    # The fleet is evaluated on every pass too: a storm ends (and its page resolves) even when the
    # evaluation of the ladder or cleanup that saw the last host recover was skipped.
    done["fleet"] = fleet.evaluate(Context(settings, conn), wait=0)
    open_ = incidents.open_incidents(conn)
    waiting = {h: i for h, i in open_.items() if not conn.exists(keys.ACTIVE.format(h))}
    if not waiting:
        return done
    try:
        records = clients_for(settings).coordinator.hosts()
    except CoordinatorError as exc:
        log.warning("incident monitor: coordinator unavailable (%s); nothing closes while unknown", exc)
        return done
    now = time.time()
    healthy_for = rules.incident.healthy_for_minutes * 60
    relapsed: list[str] = []
    for host, incident_id in waiting.items():
        incident = incidents.get(conn, incident_id)
        record = records.get(host)
        if incident is None or not incident.is_open or record is None:
            continue
        healthy = record.state == "healthy" and not record.retired
        if not healthy:
            if incident.healthy_since is not None:
                conn.hdel(keys.INCIDENT.format(incident_id), "healthy_since")
            if incident.state == IncidentState.MONITORING and record.state == "critical":
                relapsed.append(host)
            continue
        since = incident.healthy_since
        if since is None:
            incidents.update(conn, incident_id, healthy_since=f"{now:.3f}")
            since = now
        if now - since >= healthy_for:
            closed = incidents.close(
                conn,
                host,
                by="coordinator",
                reason=f"the coordinator reported the host healthy for {healthy_for / 60:g} min",
                expected=incident_id,
            )
            if closed.incident:
                queue_cleanup(conn, settings.queue, closed.incident)
                done.setdefault("closed", []).append(host)
    if relapsed:
        result = start_ladders(
            conn,
            settings.queue,
            [
                LadderRequest(
                    h,
                    "relapsed: the coordinator reports the host critical again",
                    relapse=True,
                    dry_run=settings.dry_run,
                )
                for h in relapsed
            ],
            ladder_limit(rules),
        )
        done["relapsed"] = [a["host_id"] for a in result.accepted]
    return done
