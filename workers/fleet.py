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
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, cast

import redis

from remediator import controls, incidents, keys, store
from remediator.connections import text
from remediator.exceptions import CoordinatorError, CoordinatorUnavailable, Frozen
from remediator.paging import PageKind, PageResult, page, resolve
from workers.context import Context

log = logging.getLogger("remediator.fleet")

FLEET = "_fleet"  # audit trail name of fleet events; not a valid host id, so never a host's
FLEET_LOCK_TTL = 60  # seconds one fleet evaluation may hold the fleet lock (probes and pages included)
FLEET_LOCK_WAIT = 5.0  # seconds a ladder waits for another's evaluation before leaving it to that one
# Seconds an evaluation's holder goes on running again for others' marks: askers keep coming all
# through a storm, and the holder's own ladder job must not become the fleet's evaluator for minutes.
FLEET_RERUN_BUDGET = 2.0
PROVIDER_CHECK_MAX_AGE = 10.0  # seconds a failed provider status reading is reused before a re-check
NETWORK_CHECK_MAX_AGE = 10.0  # seconds a failed network check is reused before a re-check
VERDICTS = (
    "network_ok",
    "network_checked_at",
    "network_detail",
    "network_checked_for",
    "provider_ok",
    "provider_checked_at",
    "provider_statuses",
    "provider_checked_for",
)


def storm_page_key(storm_id: str) -> str:
    return f"remediator/storm/{storm_id}"


def _fleet(conn: redis.Redis) -> dict[str, str]:
    return {text(k): text(v) for k, v in conn.hgetall(keys.FLEET).items()}


def fleet_facts(ctx: Context, refresh: bool = True) -> dict[str, Any]:
    conn = ctx.conn
    window = ctx.rules.fleet.window_minutes * 60
    fleet = _fleet(conn)
    # A failed verdict is re-checked while it lasts (it holds every ladder), so held ladders resume
    # when the outage clears; one failed probe must not hold ladders for the rest of the storm.
    now = time.time()
    provider_age = now - float(fleet.get("provider_checked_at") or 0)
    if refresh and fleet.get("provider_ok") == "0" and provider_age > PROVIDER_CHECK_MAX_AGE:
        _check_provider(ctx)
        fleet = _fleet(conn)
    network_age = now - float(fleet.get("network_checked_at") or 0)
    if refresh and fleet.get("network_ok") == "0" and network_age > NETWORK_CHECK_MAX_AGE:
        _check_network(ctx)
        fleet = _fleet(conn)
    # Summed in Redis: this runs at every phase of every ladder, over every host in the window.
    host_key = keys.HOST.split("{0}")
    critical, at_risk, unrecoverable = _risk_sum(conn)(
        keys=[keys.FLEET_CRITICAL, keys.FLEET_RISK], args=[time.time() - window, *host_key], client=conn
    )
    return {
        "unsynced_games_at_risk": int(at_risk),
        "unrecoverable_hosts": int(unrecoverable),
        "critical_hosts": int(critical),
        "storm_active": fleet.get("storm") == "1",
        "cluster_network_ok": fleet.get("network_ok") != "0",
        "provider_status_ok": fleet.get("provider_ok") != "0",
        "paused_hosts": conn.scard(keys.PAUSED),
    }


# KEYS: the critical window, the risk hash. ARGV: the window's start, HOST's key before and after the
# host id. Returns {hosts in the window, unsynced games on them, hosts whose data is not recoverable}.
# A host's risk is "<games> <0|1>" (after_diagnosis); one without (written by an older version) is
# read from its facts, as it always was.
RISK_SUM_LUA = """
local hosts = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
local games, unrecoverable = 0, 0
for _, h in ipairs(hosts) do
  local risk = redis.call('HGET', KEYS[2], h)
  if risk then
    local g, u = string.match(risk, '^(%d+) ([01])$')
    games = games + (tonumber(g) or 0)
    unrecoverable = unrecoverable + (tonumber(u) or 0)
  else
    local raw = redis.call('HGET', ARGV[2] .. h .. ARGV[3], 'facts')
    local ok, facts = pcall(cjson.decode, raw or '{}')
    if ok and type(facts) == 'table' then
      if type(facts.unsynced_games) == 'number' then games = games + math.floor(facts.unsynced_games) end
      if facts.data_recoverable == false then unrecoverable = unrecoverable + 1 end
    end
  end
end
return {#hosts, games, unrecoverable}
"""
_risk_script: Any = None


def _risk_sum(conn: redis.Redis) -> Any:
    global _risk_script
    if _risk_script is None:
        _risk_script = conn.register_script(RISK_SUM_LUA)
    return _risk_script


def _risk(facts: dict[str, Any]) -> str:
    """A host's share of the fleet facts, as RISK_SUM_LUA reads it."""
    return f"{max(0, int(facts.get('unsynced_games') or 0))} {int(facts.get('data_recoverable') is False)}"


def _check_provider(ctx: Context) -> bool:
    statuses = ctx.clients.provider_statuses()
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


def _check_network(ctx: Context) -> bool:
    """Runbook Escalation 1: probe the coordinator, every host's SSH port and the configured endpoints."""
    try:
        hosts = {h: asdict(r) for h, r in ctx.coordinator.hosts().items()}
    except CoordinatorError:
        hosts = {}  # the coordinator's own endpoint is still probed, and counts as down
    result = ctx.clients.network(hosts)
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
    return bool(result.ok)


def after_diagnosis(ctx: Context, host_id: str, facts: dict[str, Any], *, dry_run: bool = False) -> None:
    """Record the host in (or out of) the critical window, then evaluate the fleet."""
    if facts.get("coordinator_state") == "healthy" and not facts.get("host_retired"):
        ctx.conn.zrem(keys.FLEET_CRITICAL, host_id)
    else:
        ctx.conn.hset(keys.FLEET_RISK, host_id, _risk(facts))
        ctx.conn.zadd(keys.FLEET_CRITICAL, {host_id: time.time()})
    if facts.get("cloud_state") == "unknown":
        _check_provider(ctx)
    evaluate(ctx, dry_run=dry_run)


def resume_host(ctx: Context, host_id: str, why: str) -> bool:
    """Resume selfplay on a host the remediator paused; True when nothing is left paused by us.

    Raises CoordinatorError when the coordinator did not take the resume, Frozen while the fleet is
    frozen (the caller retries either way)."""
    conn = ctx.conn
    if not conn.sismember(keys.PAUSED, host_id):
        return True
    if controls.frozen(conn) is not None:
        raise Frozen("the fleet is frozen: selfplay resumes once it is unfrozen")
    answer = ctx.coordinator.resume_selfplay([host_id], f"remediator: {why}")
    if not (isinstance(answer, dict) and host_id in (answer.get("resumed") or [])):
        # A 2xx that does not say so (a proxy's catch-all) may have resumed nothing: forgetting the
        # pause now would leave the host paused for good. Kept, and tried again.
        raise CoordinatorError(
            f"the coordinator did not confirm the resume of {host_id}: {str(answer)[:100]}"
        )
    conn.srem(keys.PAUSED, host_id)
    # The host's own trail: a storm of 1,000 hosts made 1,000 fleet entries, pushing the storm's start
    # out of the fleet trail (which keeps its last entries only).
    store.append_audit(conn, host_id, "resume-selfplay", "done", why)
    return True


def host_recovered(ctx: Context, host_id: str) -> None:
    """A ladder ended healthy: leave the window, resume selfplay if we paused it, maybe end the storm."""
    conn = ctx.conn
    conn.zrem(keys.FLEET_CRITICAL, host_id)
    paused = bool(conn.sismember(keys.PAUSED, host_id))
    facts = {"host_id": host_id, "coordinator_state": "healthy", "selfplay_paused": paused}
    if paused and ctx.rules.decide(facts).resume_selfplay:
        try:
            resume_host(ctx, host_id, "host recovered")
        except (CoordinatorError, Frozen) as exc:
            log.error("could not resume selfplay on %s: %s", host_id, exc)
    evaluate(ctx)


def host_closed(ctx: Context, host_id: str) -> None:
    """A host's incident closed (its alert resolved, a human closed it, or it stayed healthy): it leaves
    the window and selfplay the remediator paused there resumes. Raises CoordinatorError when the
    resume was not taken, so the cleanup is tried again."""
    ctx.conn.zrem(keys.FLEET_CRITICAL, host_id)
    resume_host(ctx, host_id, "incident closed")


def evaluate(ctx: Context, *, dry_run: bool = False, wait: float = FLEET_LOCK_WAIT) -> dict[str, Any]:
    """One fleet evaluation at a time, and none wasted: a caller that finds one under way leaves a
    "pending" mark and goes on, and the evaluation's holder runs again when it finds the mark after
    its run (a run that begins after the mark was left sees everything the caller wrote before it).
    In a storm every diagnosis asks for an evaluation: with callers waiting in line for the lock, 16
    work processes advanced their ladders no faster than 4.

    A caller does wait, up to ``wait`` seconds, for an evaluation that is running the storm's network
    and provider checks, or may be about to (enough hosts critical, no storm open yet: the ladder must
    not act on a host before their verdict can hold it), or a dry-run one (which acts on nothing, so
    it cannot stand in for this one). The incident monitor evaluates on every pass as well, so the
    evaluation that ends a storm never depends on one ladder's timing, and a worker killed holding the
    lock holds nothing back for longer than the lock's TTL. A holder runs again for marks for at most
    FLEET_RERUN_BUDGET seconds.

    ``dry_run``: the storm is still tracked (the remediator's own view), but nothing is paged, paused or
    resolved."""
    dry_run = dry_run or ctx.dry_run
    conn = ctx.conn
    lock = conn.lock(keys.FLEET_LOCK, timeout=FLEET_LOCK_TTL, blocking_timeout=wait)
    if not dry_run:
        conn.set(keys.FLEET_PENDING, "1", ex=FLEET_LOCK_TTL)
    got = lock.acquire(blocking=False)
    if not got and (dry_run or _checks_may_be_under_way(ctx)):
        got = lock.acquire()  # up to ``wait`` seconds
    if not got:
        log.debug("a fleet evaluation is under way; it runs again for this one")
        return {"skipped": "left to the fleet evaluation under way"}
    done: dict[str, Any] = {}
    budget = time.monotonic() + FLEET_RERUN_BUDGET
    while True:
        try:
            if dry_run:
                conn.set(keys.FLEET_WAIT, "dry run", ex=FLEET_LOCK_TTL)
            else:
                conn.delete(keys.FLEET_PENDING)  # before reading: what is asked from now on runs again
            done = _evaluate(ctx, dry_run=dry_run, ours=lock.owned)
        finally:
            try:
                conn.delete(keys.FLEET_WAIT)
                lock.release()
            except redis.exceptions.LockError:
                log.warning("fleet lock expired during an evaluation")
        # Past the budget, a mark left stays for the next asker (it finds the lock free) or the monitor.
        if dry_run or time.monotonic() > budget or not conn.exists(keys.FLEET_PENDING):
            return done
        if not lock.acquire(blocking=False):
            return done


def _checks_may_be_under_way(ctx: Context) -> bool:
    """Whether the evaluation under way runs a storm's checks, or may be about to (enough hosts
    critical in the window and no storm open yet): an asker then waits for their verdict. Read as one
    snapshot; the holder marks FLEET_WAIT before it opens a storm, so "open" is never seen without
    the mark while its checks are still to run."""
    conn = ctx.conn
    since = time.time() - ctx.rules.fleet.window_minutes * 60
    pipe = conn.pipeline(transaction=True)
    pipe.get(keys.FLEET_WAIT)
    pipe.hget(keys.FLEET, "storm")
    pipe.zcount(keys.FLEET_CRITICAL, since, "+inf")
    waiting_for, storm, critical = pipe.execute()
    return waiting_for is not None or (storm != b"1" and int(critical) >= ctx.rules.fleet.storm_threshold)


def _evaluate(ctx: Context, *, dry_run: bool, ours: Callable[[], bool] = lambda: True) -> dict[str, Any]:
    """``ours``: whether this evaluation still holds the fleet lock. One that lost it (its worker froze
    past FLEET_LOCK_TTL while others evaluated) acts on nothing: what it saw may be stale by now."""
    conn = ctx.conn
    rules = ctx.rules
    facts = fleet_facts(ctx, refresh=False)
    storm = facts["critical_hosts"] >= rules.fleet.storm_threshold
    done: dict[str, Any] = {"critical_hosts": facts["critical_hosts"], "storm": storm}
    if storm and _fleet(conn).get("storm") != "1":
        conn.set(keys.FLEET_WAIT, "storm checks", ex=FLEET_LOCK_TTL)  # before the storm shows open
    storm_id = _open_storm(ctx, facts) if storm else _fleet(conn).get("storm_id", "")
    facts["storm_active"] = _fleet(conn).get("storm") == "1"
    if facts["storm_active"]:
        done.update(_storm_checks(ctx, facts, storm_id))
        facts = {**fleet_facts(ctx, refresh=False), "storm_active": True}
        affected = sorted(
            h.decode()
            for h in cast(
                "list[bytes]",
                conn.zrangebyscore(
                    keys.FLEET_CRITICAL, time.time() - rules.fleet.window_minutes * 60, "+inf"
                ),
            )
        )
        decision = rules.decide(facts)
        if not dry_run and ours():
            done.update(_storm_page(ctx, decision, facts, storm_id, affected))
            # Frozen: no coordinator writes; and only while the lock is ours (not stale).
            if decision.pause_selfplay and controls.frozen(conn) is None and ours():
                done.update(_pause(ctx, storm_id, affected))
    if not storm and facts["storm_active"] and not conn.scard(keys.PAUSED) and not dry_run and ours():
        done.update(_end_storm(ctx, storm_id))
    return done


def _open_storm(ctx: Context, facts: dict[str, Any]) -> str:
    """Runbook Escalation: several hosts critical at once. Returns the storm's id."""
    conn = ctx.conn
    fleet = _fleet(conn)
    if fleet.get("storm") == "1":
        return fleet.get("storm_id", "")
    storm_id = uuid.uuid4().hex[:12]
    conn.hset(
        keys.FLEET, mapping={"storm": "1", "storm_id": storm_id, "storm_started_at": f"{time.time():.3f}"}
    )
    log.warning("storm %s: %d hosts critical within the window", storm_id, facts["critical_hosts"])
    store.append_audit(
        conn, FLEET, "storm", "started", storm_id=storm_id, critical_hosts=facts["critical_hosts"]
    )
    return storm_id


def _storm_checks(ctx: Context, facts: dict[str, Any], storm_id: str) -> dict[str, Any]:
    """Runbook Escalation 1 and 2, once per storm: the cluster network and the cloud providers."""
    conn = ctx.conn
    fleet = _fleet(conn)
    decision = ctx.rules.decide(facts)
    done: dict[str, Any] = {}
    checks = (decision.check_network and fleet.get("network_checked_for") != storm_id) or (
        decision.check_provider and fleet.get("provider_checked_for") != storm_id
    )
    if checks:  # callers wait for their verdict (evaluate)
        conn.set(keys.FLEET_WAIT, "storm checks", ex=FLEET_LOCK_TTL)
    if decision.check_network and fleet.get("network_checked_for") != storm_id:
        conn.hset(keys.FLEET, "network_checked_for", storm_id)
        done["network_ok"] = _check_network(ctx)
    if decision.check_provider and fleet.get("provider_checked_for") != storm_id:
        conn.hset(keys.FLEET, "provider_checked_for", storm_id)
        done["provider_ok"] = _check_provider(ctx)
    return done


def _storm_page(
    ctx: Context, decision: Any, facts: dict[str, Any], storm_id: str, affected: list[str]
) -> dict[str, Any]:
    """Runbook Escalation 3: one page per storm (host pages are the ladders'); its hosts kept current."""
    conn = ctx.conn
    key = storm_page_key(storm_id)
    fleet_pages = [p for p in decision.pages if p.scope == "fleet"][:1]
    existing = conn.exists(keys.PAGE.format(key))
    if not fleet_pages and not existing:
        return {}
    rule = fleet_pages[0] if fleet_pages else None
    listed = _page_hosts(conn, key)
    result = page(
        conn,
        ctx.settings,
        ctx.rules,
        dedup_key=key,
        kind=PageKind.STORM,
        severity=rule.severity if rule else "critical",
        summary=f"{rule.summary if rule else 'Sync storm'} (storm {storm_id})",
        targets=(rule.to or None) if rule else None,
        hosts={h: "critical" for h in affected if h not in listed},
        details={"facts": facts},
        rule=rule.rule if rule else "",
    )
    if result.sent:
        store.append_audit(
            conn,
            FLEET,
            "page",
            "sent" if result.paged else "failed",
            result.sent,
            storm_id=storm_id,
            hosts=affected,
            page=result.as_dict(),
        )
    elif not result.paged:
        store.append_audit(
            conn, FLEET, "page", "failed", result.reason, storm_id=storm_id, page=result.as_dict()
        )
    return {"page": result.as_dict()}


def page_host(
    ctx: Context,
    host_id: str,
    incident_id: str,
    *,
    summary: str,
    severity: str,
    targets: tuple[str, ...] | None,
    details: dict[str, Any],
    rule: str,
    host_state: str,
) -> PageResult:
    """Page a human about one host's incident: its one page, or, while a storm is open, the storm's
    page (the host and its state are added to it; no new trigger per host)."""
    conn = ctx.conn
    fleet = _fleet(conn)
    storm_id = fleet.get("storm_id", "") if fleet.get("storm") == "1" else ""
    if storm_id:  # the storm's page keeps its own summary and details
        key, kind = storm_page_key(storm_id), PageKind.STORM
        summary, page_details = f"Sync storm: RingRift hosts need a human (storm {storm_id})", None
    else:
        key, kind, page_details = incidents.page_key(host_id, incident_id), PageKind.HOST, details
    result = page(
        conn,
        ctx.settings,
        ctx.rules,
        dedup_key=key,
        kind=kind,
        severity=severity,
        summary=summary,
        targets=targets,
        hosts={host_id: host_state},
        details=page_details,
        rule=rule,
    )
    incidents.add_page(conn, incident_id, key, paged=result.paged)
    return result


def _page_hosts(conn: redis.Redis, key: str) -> dict[str, Any]:
    """The hosts page ``key`` already lists: read once per evaluation, not once per affected host
    (an evaluation runs after every diagnosis; per host, a 1,000-host storm made a million reads)."""
    raw = conn.hget(keys.PAGE.format(key), "hosts")
    return json.loads(raw) if raw is not None else {}


def _pause(ctx: Context, storm_id: str, affected: list[str]) -> dict[str, Any]:
    """Runbook Escalation 4: pause selfplay on exactly the affected hosts that are not paused yet."""
    conn = ctx.conn
    # Still in the window (a host whose incident closed since ``affected`` was read has left it), and
    # with an open incident: the incident's close is what resumes the host. A host seen critical with no
    # incident of its own (its alert re-fired while a human's close stops its ladder) is not paused.
    # This runs after every diagnosis of a storm: one command drops the hosts already paused (most
    # of them, once a storm is under way), one round trip checks the others.
    paused = conn.smismember(keys.PAUSED, affected) if affected else []
    unpaused = [h for h, is_paused in zip(affected, paused, strict=True) if not is_paused]
    reader = conn.pipeline(transaction=False)
    for h in unpaused:
        reader.zscore(keys.FLEET_CRITICAL, h)
        reader.exists(keys.HOST_INCIDENT.format(h))
    found = reader.execute() if unpaused else []
    new = [h for i, h in enumerate(unpaused) if found[2 * i] is not None and found[2 * i + 1]]
    if not new:
        return {}
    try:
        ctx.coordinator.pause_selfplay(new, f"remediator: storm {storm_id}")
    except CoordinatorUnavailable as exc:
        # 5xx, a timeout, a dropped connection: the pause may have been applied. Remembered as ours, so
        # that it is resumed with the host (resuming a host that was not paused changes nothing).
        conn.sadd(keys.PAUSED, *new)
        log.error("pause of selfplay on %s may not have been applied: %s", new, exc)
        return {"maybe_paused": new}
    except CoordinatorError as exc:
        log.error("could not pause selfplay on %s: %s", new, exc)
        return {}
    conn.sadd(keys.PAUSED, *new)
    store.append_audit(conn, FLEET, "pause-selfplay", "done", storm_id=storm_id, hosts=new)
    return {"paused": new}


def _end_storm(ctx: Context, storm_id: str) -> dict[str, Any]:
    """The last host left the storm: resolve its page and forget its network and provider verdicts."""
    conn = ctx.conn
    resolved = resolve(conn, ctx.settings, storm_page_key(storm_id))
    if resolved.get("retry"):
        return {"resolved": resolved}  # a pager failed: the storm stays open and the next evaluation retries
    conn.hset(keys.FLEET, mapping={"storm": "0", "storm_ended_at": f"{time.time():.3f}"})
    conn.hdel(keys.FLEET, *VERDICTS)
    store.append_audit(conn, FLEET, "storm", "ended", storm_id=storm_id, page=resolved)
    return {"resolved": resolved}
