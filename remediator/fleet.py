"""The runbook's Escalation section at fleet scale: several hosts critical at once.

A sliding window of critical hosts lives in Redis. When the rules see a storm they ask for a cluster
network check and a provider status check (once per storm), page once per storm when data loss is
imminent, and pause selfplay on exactly the affected hosts; each host resumes when it recovers, and the
page is resolved when the storm is over. While the provider or the network is down, the rules hold the
per-host ladders instead of hammering hosts.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import redis

from remediator import keys, store
from remediator.exceptions import CoordinatorError
from remediator.paging import open_incident, resolve_incident

log = logging.getLogger("remediator.fleet")

FLEET = "_fleet"  # audit trail name of fleet events; not a valid host id, so never a host's
FLEET_LOCK_TTL = 30  # seconds one fleet evaluation may hold the fleet lock (and others wait for it)
PROVIDER_CHECK_MAX_AGE = 10.0  # seconds a provider status reading is reused


def _fleet(conn: Any) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in conn.hgetall(keys.FLEET).items()}


def fleet_facts(ctx: Any, refresh: bool = True) -> dict[str, Any]:
    conn = ctx.conn
    window = ctx.rules.fleet.window_minutes * 60
    fleet = _fleet(conn)
    # A provider outage is re-checked while it lasts, so held ladders resume when it clears.
    stale = time.time() - float(fleet.get("provider_checked_at") or 0) > PROVIDER_CHECK_MAX_AGE
    if refresh and fleet.get("provider_ok") == "0" and stale:
        _check_provider(ctx)
        fleet = _fleet(conn)
    at_risk = 0
    unrecoverable = 0
    critical = conn.zrangebyscore(keys.FLEET_CRITICAL, time.time() - window, "+inf")
    # One round trip for all critical hosts: this runs at every phase of every ladder.
    reader = conn.pipeline(transaction=False)
    for host in critical:
        reader.hget(keys.HOST.format(host.decode()), "facts")
    for raw in reader.execute() if critical else []:
        host_facts = json.loads(raw) if raw else {}
        at_risk += int(host_facts.get("unsynced_games") or 0)
        unrecoverable += host_facts.get("data_recoverable") is False
    return {
        "unsynced_games_at_risk": at_risk,
        "unrecoverable_hosts": unrecoverable,
        "critical_hosts": len(critical),
        "storm_active": fleet.get("storm") == "1",
        "cluster_network_ok": fleet.get("network_ok") != "0",
        "provider_status_ok": fleet.get("provider_ok") != "0",
        "paused_hosts": conn.scard(keys.PAUSED),
    }


def _check_provider(ctx: Any) -> bool:
    from remediator.providers import provider_statuses

    statuses = provider_statuses(ctx.settings)
    ok = all(v is not False for v in statuses.values())
    ctx.conn.hset(
        keys.FLEET,
        mapping={
            "provider_ok": "1" if ok else "0",
            "provider_checked_at": f"{time.time():.3f}",
            "provider_statuses": json.dumps(statuses),
        },
    )
    store.append_audit(ctx.conn, FLEET, "provider-check", "ok" if ok else "outage", statuses=statuses)
    return ok


def _check_network(ctx: Any) -> bool:
    """Runbook Escalation 1: probe the coordinator, every host's SSH port and the configured endpoints."""
    from dataclasses import asdict

    from remediator.netcheck import check_cluster_network

    try:
        hosts = {h: asdict(r) for h, r in ctx.coordinator.hosts().items()}
    except CoordinatorError:
        hosts = {}  # the coordinator's own endpoint is still probed, and counts as down
    result = check_cluster_network(ctx.settings, hosts, timeout=min(5.0, ctx.settings.ssh_connect_timeout))
    ctx.conn.hset(
        keys.FLEET,
        mapping={
            "network_ok": "1" if result.ok else "0",
            "network_checked_at": f"{time.time():.3f}",
            "network_detail": json.dumps({"reachable": result.reachable, "total": result.total}),
        },
    )
    store.append_audit(
        ctx.conn,
        FLEET,
        "network-check",
        "ok" if result.ok else "down",
        reachable=result.reachable,
        total=result.total,
    )
    return result.ok


def after_diagnosis(ctx: Any, host_id: str, facts: dict[str, Any]) -> None:
    """Record the host in (or out of) the critical window, then evaluate the fleet."""
    if facts.get("coordinator_state") == "healthy" and not facts.get("host_retired"):
        ctx.conn.zrem(keys.FLEET_CRITICAL, host_id)
    else:
        ctx.conn.zadd(keys.FLEET_CRITICAL, {host_id: time.time()})
    if facts.get("cloud_state") == "unknown":
        _check_provider(ctx)
    evaluate(ctx)


def host_recovered(ctx: Any, host_id: str) -> None:
    """A ladder ended healthy: leave the window, resume selfplay if we paused it, maybe end the storm."""
    conn = ctx.conn
    conn.zrem(keys.FLEET_CRITICAL, host_id)
    paused = bool(conn.sismember(keys.PAUSED, host_id))
    facts = {"host_id": host_id, "coordinator_state": "healthy", "selfplay_paused": paused}
    if paused and ctx.rules.decide(facts).resume_selfplay and not ctx.dry_run:
        try:
            ctx.coordinator.resume_selfplay([host_id], "remediator: host recovered")
            conn.srem(keys.PAUSED, host_id)
            store.append_audit(conn, FLEET, "resume-selfplay", "done", hosts=[host_id])
        except CoordinatorError as exc:
            log.error("could not resume selfplay on %s: %s", host_id, exc)
    evaluate(ctx)


def evaluate(ctx: Any) -> dict[str, Any]:
    """One fleet evaluation at a time. Waiting for the lock (never skipping) matters: the evaluation
    that sees the last host recover is the one that ends the storm and resolves its page."""
    lock = ctx.conn.lock(keys.FLEET_LOCK, timeout=FLEET_LOCK_TTL, blocking_timeout=FLEET_LOCK_TTL)
    if not lock.acquire():
        log.error("fleet lock held for over %ss; fleet evaluation skipped", FLEET_LOCK_TTL)
        return {"skipped": "fleet lock not acquired"}
    try:
        return _evaluate(ctx)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("fleet lock expired during an evaluation")


def _evaluate(ctx: Any) -> dict[str, Any]:
    conn = ctx.conn
    rules = ctx.rules
    facts = fleet_facts(ctx, refresh=False)
    fleet = _fleet(conn)
    storm = facts["critical_hosts"] >= rules.fleet.storm_threshold
    done: dict[str, Any] = {"critical_hosts": facts["critical_hosts"], "storm": storm}
    if storm and fleet.get("storm") != "1":
        storm_id = uuid.uuid4().hex[:12]
        conn.hset(
            keys.FLEET, mapping={"storm": "1", "storm_id": storm_id, "storm_started_at": f"{time.time():.3f}"}
        )
        log.warning("storm %s: %d hosts critical within the window", storm_id, facts["critical_hosts"])
        store.append_audit(
            conn, FLEET, "storm", "started", storm_id=storm_id, critical_hosts=facts["critical_hosts"]
        )
        fleet = _fleet(conn)
    storm_id = fleet.get("storm_id", "")
    facts["storm_active"] = storm or fleet.get("storm") == "1"
    decision = rules.decide(facts)
    if decision.check_network and fleet.get("network_checked_for") != storm_id:
        conn.hset(keys.FLEET, "network_checked_for", storm_id)
        done["network_ok"] = _check_network(ctx)
    if decision.check_provider and fleet.get("provider_checked_for") != storm_id:
        conn.hset(keys.FLEET, "provider_checked_for", storm_id)
        done["provider_ok"] = _check_provider(ctx)
    facts = {**fleet_facts(ctx, refresh=False), "storm_active": facts["storm_active"]}
    decision = rules.decide(facts)
    window = rules.fleet.window_minutes * 60
    affected = sorted(
        h.decode() for h in conn.zrangebyscore(keys.FLEET_CRITICAL, time.time() - window, "+inf")
    )
    if facts["storm_active"] and storm_id:
        # One page per storm: the first fleet-wide page the rules decide on (host pages are the ladders').
        for page in [p for p in decision.pages if p.scope == "fleet"][:1]:
            done["page"] = open_incident(
                conn,
                ctx.settings,
                dedup_key=f"remediator/storm/{storm_id}",
                severity=page.severity,
                summary=f"{page.summary}: {len(affected)} hosts critical",
                targets=page.to or None,
                hosts=tuple(affected),
                details={"facts": facts, "hosts": affected},
                rule=page.rule,
            )
            if "outcomes" in done["page"]:  # a page was tried (not an incident already open)
                store.append_audit(
                    conn,
                    FLEET,
                    "page",
                    "sent" if done["page"]["paged"] else "failed",
                    page.summary,
                    storm_id=storm_id,
                    hosts=affected,
                    outcomes=done["page"]["outcomes"],
                )
        if decision.pause_selfplay and not ctx.dry_run:
            new = [h for h in affected if not conn.sismember(keys.PAUSED, h)]
            if new:
                try:
                    ctx.coordinator.pause_selfplay(new, f"remediator: storm {storm_id}")
                    conn.sadd(keys.PAUSED, *new)
                    done["paused"] = new
                    store.append_audit(conn, FLEET, "pause-selfplay", "done", storm_id=storm_id, hosts=new)
                except CoordinatorError as exc:
                    log.error("could not pause selfplay on %s: %s", new, exc)
    if not storm and fleet.get("storm") == "1" and not conn.scard(keys.PAUSED):
        conn.hset(keys.FLEET, mapping={"storm": "0", "storm_ended_at": f"{time.time():.3f}"})
        done["resolved"] = resolve_incident(conn, ctx.settings, f"remediator/storm/{storm_id}")
        store.append_audit(conn, FLEET, "storm", "ended", storm_id=storm_id, page=done["resolved"])
    return done
