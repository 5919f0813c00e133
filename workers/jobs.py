"""RQ job functions: top-level and context-free (everything comes from the environment and Redis)."""

from __future__ import annotations

import logging
import time
from typing import Any

from remediator import incidents, keys, paging, store
from remediator.exceptions import CoordinatorError
from remediator.intake import DISCOVERY, LadderRequest, start_ladders
from remediator.ops import ladder_limit, retry_after
from workers import fleet, prefetch
from workers.context import Context
from workers.ladder import Ladder

log = logging.getLogger("remediator.worker")


def run_ladder(host_id: str, ladder_id: str) -> str:
    """Advance host ``host_id``'s ladder ``ladder_id`` as far as it can go without waiting."""
    ctx = Context.current()
    result = Ladder(ctx, host_id, ladder_id).advance()
    log.info(
        "ladder advanced: %s",
        result,
        extra={"host_id": host_id, "ladder_id": ladder_id, "job_id": ctx.job_id},
    )
    return result


def prefetch_diagnoses(ladders: list[list[str]]) -> dict[str, int]:
    """The first diagnoses of a storm's ladders ([host id, ladder id] each), many hosts at a time."""
    ctx = Context.current()
    done = prefetch.diagnose_many(ctx, [(host_id, ladder_id) for host_id, ladder_id in ladders])
    log.info("prefetched diagnoses: %s", done, extra={"job_id": ctx.job_id})
    return done


def discover(ladder_id: str, dry_run: bool = False) -> dict[str, Any]:
    """Runbook Diagnosis 1: ask the coordinator which hosts are critical; start one ladder each."""

    ctx = Context.current()
    try:
        try:
            hosts = ctx.coordinator.hosts()
        except CoordinatorError as exc:
            log.error("discovery %s: coordinator unavailable: %s", ladder_id, exc)
            raise
        critical = sorted(h for h, r in hosts.items() if r.state == "critical")
        result = start_ladders(
            ctx.conn,
            ctx.settings.queue,
            [
                LadderRequest(
                    host_id=h,
                    reason=f"discovered critical by {ladder_id}",
                    alertname="CriticalSyncHosts",
                    dry_run=dry_run or ctx.dry_run,
                )
                for h in critical
            ],
            ladder_limit(ctx.rules),
            retry_after=retry_after(ctx.rules),
        )
        return {"critical": critical, "accepted": result.accepted, "skipped": result.skipped}
    finally:
        ctx.conn.delete(keys.ACTIVE.format(DISCOVERY))


CLEANUP_MAX_BACKOFF = 3600.0  # seconds between two tries of a cleanup that keeps failing


def finish_incident(incident_id: str) -> dict[str, Any]:
    """The recovery bookkeeping of a closed incident: leave the fleet window, resume the selfplay the
    remediator paused on its host, resolve its pages, end the storm when it was the last host.

    Every part is idempotent; a part that fails (the coordinator or every pager down) fails the job and
    the sweeper tries again later, backing off, until all of it is done."""

    ctx = Context.current()
    conn = ctx.conn
    incident = incidents.get(conn, incident_id)
    if incident is None or incident.is_open or incident.cleanup == "done":
        if incident is None or not incident.is_open:
            conn.zrem(keys.CLEANUP, incident_id)  # expired, or already cleaned up
        return {"incident_id": incident_id, "done": "nothing to do"}
    host = incident.host_id
    done: dict[str, Any] = {"incident_id": incident_id, "host_id": host}
    try:
        if incidents.current_id(conn, host) is None and not ctx.dry_run:
            fleet.host_closed(ctx, host)  # a newer incident of the host keeps it in the window
            done["resumed"] = True
        for key in incident.pages:
            result = paging.resolve(conn, ctx.settings, key, host=host)
            done.setdefault("pages", {})[key] = result
            if result.get("retry"):
                raise CoordinatorError(f"page {key} could not be resolved at its pagers; retrying")
        done["fleet"] = fleet.evaluate(ctx)
    except Exception:
        attempts = int(conn.hincrby(keys.INCIDENT.format(incident_id), "cleanup_attempts", 1))
        backoff = min(30.0 * 2**attempts, CLEANUP_MAX_BACKOFF)
        conn.zadd(keys.CLEANUP, {incident_id: time.time() + backoff})
        log.exception(
            "cleanup of incident %s failed (attempt %d); retrying in about %gs",
            incident_id,
            attempts,
            backoff + incidents.CLEANUP_DUE,
        )
        raise
    incidents.cleanup_done(conn, incident_id)
    store.append_audit(conn, host, "incident", "cleaned-up", "recovery bookkeeping done", **done)
    log.info("incident %s of %s: cleanup done", incident_id, host)
    return done
