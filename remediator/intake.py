"""Turning accepted alerts into stored work: one ladder per host, never two, never half-written.

Everything one payload asks for is written in one MULTI/EXEC under WATCH of the hosts' active-ladder
keys, so 100 concurrent identical deliveries produce exactly one ladder per host, and a Redis failure
leaves nothing behind (the receiver then answers 503 and Alertmanager retries).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from remediator import defaults, keys, store

DISCOVERY = "_discovery"  # not a valid host id, so it can never collide with one
LADDER_JOB = "workers.jobs.run_ladder"
DISCOVERY_JOB = "workers.jobs.discover"
DISCOVERY_GUARD_TTL = 600  # seconds a pending discovery blocks another one
ACTIVE_TTL = 7 * 86400  # seconds: last-resort expiry; ladders clear their key when they end
MAX_WATCH_RETRIES = 20  # optimistic-transaction retries under contention


@dataclass(frozen=True)
class LadderRequest:
    """A request to remediate one host (or, with host_id None, to discover the critical hosts)."""

    host_id: str | None
    reason: str
    fingerprint: str = ""
    alertname: str = ""
    dry_run: bool = False


@dataclass
class IntakeResult:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class LadderLimit:
    """At most ``count`` ladders per host in ``window_seconds`` (from the rules)."""

    count: int = 3
    window_seconds: float = 3600.0


def new_ladder_id() -> str:
    return uuid.uuid4().hex


def start_ladders(
    conn: redis.Redis,
    queue_name: str,
    requests: Iterable[LadderRequest],
    limit: LadderLimit | None = None,
    *,
    also: Callable[[Any], None] | None = None,
) -> IntakeResult:
    """Enqueue a ladder for each request whose host has none queued or running, atomically.

    ``also(pipe)`` queues more writes into the same transaction (the receiver's fleet sightings), so
    they are stored with the ladders or not at all, and cost no round trip of their own."""
    requests = list(requests)
    if not requests:
        return IntakeResult()
    limit = limit or LadderLimit()
    queue = Queue(queue_name, connection=conn)
    names = sorted({r.host_id or DISCOVERY for r in requests})
    active_keys = [keys.ACTIVE.format(n) for n in names]
    start_keys = [keys.LADDER_STARTS.format(n) for n in names]
    for _ in range(MAX_WATCH_RETRIES):
        result = IntakeResult()
        with conn.pipeline() as pipe:
            try:
                pipe.watch(*active_keys, *start_keys)
                now = time.time()
                reader = conn.pipeline(transaction=False)
                reader.mget(active_keys)
                for key in start_keys:
                    reader.zcount(key, now - limit.window_seconds, "+inf")
                replies = reader.execute()
                active = dict(zip(names, replies[0], strict=True))
                recent = dict(zip(names, replies[1:], strict=True))
                pipe.multi()
                job_datas = []
                seen: set[str] = set()
                for req in requests:
                    name = req.host_id or DISCOVERY
                    entry = {"host_id": req.host_id, "fingerprint": req.fingerprint}
                    if name in seen:
                        result.skipped.append({**entry, "reason": "duplicate in this payload"})
                        continue
                    seen.add(name)
                    if active[name] is not None:
                        what = "discovery already queued" if req.host_id is None else "already remediating"
                        result.skipped.append({**entry, "reason": f"{what} {active[name].decode()}"})
                        continue
                    if req.host_id is not None and recent[name] >= limit.count:
                        result.skipped.append(
                            {
                                **entry,
                                "reason": (
                                    f"ladder limit reached: {recent[name]} ladders in the last "
                                    f"{limit.window_seconds / 60:g} min (rules ladder.max_ladders_per_host)"
                                ),
                            }
                        )
                        continue
                    ladder_id = new_ladder_id()
                    job_datas.append(_job_data(queue, req, ladder_id))
                    _record_start(pipe, req, ladder_id, now)
                    result.accepted.append({**entry, "job_id": ladder_id, "ladder_id": ladder_id})
                if job_datas:
                    queue.enqueue_many(job_datas, pipeline=pipe)
                if also is not None:
                    also(pipe)
                pipe.execute()
                return result
            except redis.WatchError:
                continue
    raise redis.ConnectionError("too much contention on the host keys; try again")


def queue_ladder_job(
    pipe: Any,
    queue: Queue,
    host_id: str,
    ladder_id: str,
    *,
    description: str,
    delay: float = 0.0,
    **state: Any,
) -> str:
    """Queue the next ``run_ladder`` job of a ladder (now, or ``delay`` seconds from now) and point
    the host's state at it, in one MULTI (the caller's, or opened here on a fresh pipeline); returns
    the new job id. The ladder, the sweeper and manual re-queue all go through here, so every ladder
    job has the same timeout."""
    if not pipe.explicit_transaction:
        # rq's enqueue_call opens MULTI itself and refuses once commands are buffered: open it first.
        pipe.multi()
    job_id = uuid.uuid4().hex
    when = datetime.now(UTC) + timedelta(seconds=delay)
    store.update_host(pipe, host_id, job_id=job_id, next_check_at=f"{when.timestamp():.3f}", **state)
    options = {
        "job_id": job_id,
        "pipeline": pipe,
        "result_ttl": defaults.JOB_RESULT_TTL,
        "description": f"remediate {host_id}: {description}",
    }
    if delay > 0:
        timeout = defaults.JOB_TIMEOUT
        queue.enqueue_at(when, LADDER_JOB, args=(host_id, ladder_id), job_timeout=timeout, **options)
    else:
        queue.enqueue_call(LADDER_JOB, args=(host_id, ladder_id), timeout=defaults.JOB_TIMEOUT, **options)
    return job_id


def fetch_job(conn: redis.Redis, job_id: str | None) -> Job | None:
    """The RQ job, or None when there is no such job (expired, deleted, never written)."""
    if not job_id:
        return None
    try:
        return Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return None


def job_status(conn: redis.Redis, job_id: str | None) -> JobStatus | None:
    """The RQ status of a job, or None when there is no such job."""
    job = fetch_job(conn, job_id)
    return job.get_status() if job else None


def _job_data(queue: Queue, req: LadderRequest, ladder_id: str) -> Any:
    if req.host_id is None:
        return Queue.prepare_data(
            DISCOVERY_JOB,
            args=(ladder_id,),
            kwargs={"dry_run": req.dry_run},
            job_id=ladder_id,
            timeout=defaults.JOB_TIMEOUT,
            result_ttl=defaults.JOB_RESULT_TTL,
            description=f"discover critical hosts ({req.alertname or 'manual'})",
        )
    return Queue.prepare_data(
        LADDER_JOB,
        args=(req.host_id, ladder_id),
        job_id=ladder_id,
        timeout=defaults.JOB_TIMEOUT,
        result_ttl=defaults.JOB_RESULT_TTL,
        description=f"remediate {req.host_id}",
    )


def _record_start(pipe: Any, req: LadderRequest, ladder_id: str, now: float) -> None:
    if req.host_id is None:
        pipe.set(keys.ACTIVE.format(DISCOVERY), ladder_id, ex=DISCOVERY_GUARD_TTL)
        return
    host = req.host_id
    pipe.set(keys.ACTIVE.format(host), ladder_id, ex=ACTIVE_TTL)
    pipe.delete(keys.CANCEL.format(host))
    pipe.zadd(keys.LADDER_STARTS.format(host), {ladder_id: now})
    pipe.zremrangebyscore(keys.LADDER_STARTS.format(host), "-inf", now - 7 * 86400)
    pipe.delete(keys.HOST.format(host))
    store.update_host(
        pipe,
        host,
        ladder_id=ladder_id,
        job_id=ladder_id,
        status="queued",
        step="diagnose",
        attempt=0,
        outcome="running",
        started_at=f"{now:.3f}",
        fingerprint=req.fingerprint,
        alertname=req.alertname,
        reason=req.reason,
        dry_run=req.dry_run,
    )
    store.append_audit(
        pipe,
        host,
        "intake",
        "queued",
        req.reason,
        job_id=ladder_id,
        fingerprint=req.fingerprint or None,
        dry_run=req.dry_run or None,
    )


def cancel_ladder(conn: redis.Redis, host_id: str, reason: str, fingerprint: str = "") -> dict[str, Any]:
    """Ask the host's running ladder to stop at its next step boundary (a resolved alert)."""
    active_key = keys.ACTIVE.format(host_id)
    with conn.pipeline() as pipe:
        for _ in range(MAX_WATCH_RETRIES):
            try:
                pipe.watch(active_key)
                ladder_id = pipe.get(active_key)
                pipe.multi()
                if ladder_id is None:
                    store.append_audit(
                        pipe,
                        host_id,
                        "intake",
                        "resolved",
                        f"{reason}; no ladder running",
                        fingerprint=fingerprint or None,
                    )
                    pipe.execute()
                    return {"host_id": host_id, "fingerprint": fingerprint, "reason": "no ladder running"}
                ladder_id = ladder_id.decode()
                pipe.set(keys.CANCEL.format(host_id), ladder_id, ex=ACTIVE_TTL)
                store.update_host(pipe, host_id, cancel_reason=reason)
                store.append_audit(
                    pipe,
                    host_id,
                    "intake",
                    "cancel-requested",
                    reason,
                    job_id=ladder_id,
                    fingerprint=fingerprint or None,
                )
                pipe.execute()
                return {
                    "host_id": host_id,
                    "fingerprint": fingerprint,
                    "ladder_id": ladder_id,
                    "action": "stop at next step",
                }
            except redis.WatchError:
                continue
    raise redis.ConnectionError("too much contention on the host keys; try again")
