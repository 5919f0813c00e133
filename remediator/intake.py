"""Turning accepted alerts into stored work: one ladder per host, never two, never half-written.

Everything one payload asks for is checked and written by one Lua script (``INTAKE_LUA``), which Redis
runs atomically: 100 concurrent identical deliveries produce exactly one ladder per host, and a Redis
failure leaves nothing behind (the receiver then answers 503 and Alertmanager retries).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from remediator import defaults, keys, store
from remediator.intake_lua import (  # the script and its verdicts, read as intake.*
    ACCEPTED,
    ALREADY_ACTIVE,
    ATTACHED,
    CANCEL_WITHDRAWN,
    HELD,
    INTAKE_LUA,
    MONITORING,
)

DISCOVERY = "_discovery"  # not a valid host id, so it can never collide with one
log = logging.getLogger("remediator.intake")

LADDER_JOB = "workers.jobs.run_ladder"
DISCOVERY_JOB = "workers.jobs.discover"
PREFETCH_JOB = "workers.jobs.prefetch_diagnoses"
PREFETCH_MIN_HOSTS = 16  # ladders one intake starts from which their first diagnoses are prefetched
PREFETCH_CHUNK = 64  # hosts one prefetch job diagnoses
PREFETCH_TIMEOUT = 900  # seconds: a chunk, PREFETCH_THREADS at a time, each bounded by its SSH timeouts
DISCOVERY_GUARD_TTL = 600  # seconds a pending discovery blocks another one
ACTIVE_TTL = 7 * 86400  # seconds: last-resort expiry; ladders clear their key when they end
MAX_WATCH_RETRIES = 20  # optimistic-transaction retries under contention (requeue)
LADDER_STARTS_KEEP = 7 * 86400  # seconds of ladder start times kept per host

_INTAKE_SCRIPT: Any = None


@dataclass(frozen=True)
class LadderRequest:
    """A request to remediate one host (or, with host_id None, to discover the critical hosts)."""

    host_id: str | None
    reason: str
    fingerprint: str = ""
    alertname: str = ""
    dry_run: bool = False
    force: bool = False  # a human asked: start even when the host's incident is held or monitored
    relapse: bool = False  # the coordinator reports a monitored (healed) host critical again
    gentle: bool = False  # a warning (rules alerts.prevent): diagnosis and non-invasive steps only


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
    sightings: Mapping[str, float] | None = None,
    sightings_keep: float = 86400.0,
    retry_after: float | None = None,
) -> IntakeResult:
    """Enqueue a ladder for each request whose host needs one, atomically, under the host's incident.

    A host with a ladder queued or running gets none (the alert attaches to its incident); a host whose
    incident is held for a human or monitored after a healthy ladder gets none either, unless a human
    asked (``force``) or, for a held one, ``retry_after`` seconds have passed since it was held.
    ``sightings`` (host id -> time seen critical) are added to the fleet window in the same script,
    so they are stored with the ladders or not at all; sightings older than ``sightings_keep``
    seconds are dropped."""
    from remediator.incidents import HISTORY_KEEP, INCIDENT_TTL, new_incident_id

    requests = list(requests)
    sightings = dict(sightings or {})
    if not requests and not sightings:
        return IntakeResult()
    limit = limit or LadderLimit()
    queue = Queue(queue_name, connection=conn)
    now = time.time()
    unique: list[tuple[LadderRequest, str]] = []
    duplicates: set[int] = set()
    seen: set[str] = set()
    for index, req in enumerate(requests):
        name = req.host_id or DISCOVERY
        if name in seen:
            duplicates.add(index)
            continue
        seen.add(name)
        unique.append((req, new_ladder_id()))

    enqueued_at = datetime.fromtimestamp(now, UTC)
    script_keys = [keys.HOSTS, queue.key, Queue.redis_queues_keys, keys.FLEET_CRITICAL, keys.OPEN_INCIDENTS]
    records: list[Any] = []
    field_names: list[str] = []
    for req, ladder_id in unique:
        name = req.host_id or DISCOVERY
        script_keys += [
            keys.ACTIVE.format(name),
            keys.LADDER_STARTS.format(name),
            keys.CANCEL.format(name),
            keys.HOST.format(name),
            keys.AUDIT.format(name),
            Job.key_for(ladder_id),
            keys.HOST_INCIDENT.format(name),
            keys.HOST_INCIDENTS.format(name),
        ]
        job = _flat(_job_fields(queue, req, ladder_id, enqueued_at))
        head = [name, ladder_id]
        if req.host_id is None:
            records += ["d", *head, "", "", "0", req.reason, len(job), *job]
            continue
        state = _host_fields(req, ladder_id, now)
        # Every host's state has the same fields (one call, same keywords): the names go once.
        field_names = field_names or list(state)
        audit = store.encode_audit(_audit_entry(req, ladder_id))
        force = "1" if req.force else "2" if req.relapse else "3" if req.gentle else "0"
        records += ["h", *head, audit, new_incident_id(), force, req.reason, len(job), *state.values(), *job]
    args: list[Any] = [
        repr(now),
        repr(now - limit.window_seconds),
        limit.count,
        repr(now - LADDER_STARTS_KEEP),
        defaults.AUDIT_MAX_ENTRIES,
        ACTIVE_TTL,
        DISCOVERY_GUARD_TTL,
        repr(now - sightings_keep),
        len(unique),
        2 * len(sightings),
        len(field_names),
        keys.INCIDENT.format(""),
        INCIDENT_TTL,
        -1 if retry_after is None else repr(float(retry_after)),
        HISTORY_KEEP,
    ]
    for host_id, seen_at in sightings.items():
        args += [repr(seen_at), host_id]
    args += field_names
    args += records

    replies = _intake_script(conn)(keys=script_keys, args=args, client=conn)

    result = IntakeResult()
    verdicts = iter(zip(unique, replies, strict=True))
    for index, req in enumerate(requests):
        entry = {"host_id": req.host_id, "fingerprint": req.fingerprint, "alertname": req.alertname}
        if index in duplicates:
            result.skipped.append({**entry, "reason": "duplicate in this payload"})
            continue
        (_, ladder_id), (code, raw) = next(verdicts)
        detail = raw.decode() if isinstance(raw, bytes) else str(raw)
        if code == ACCEPTED:
            accepted = {**entry, "job_id": ladder_id, "ladder_id": ladder_id}
            if req.host_id is not None:
                accepted["incident_id"] = detail
            result.accepted.append(accepted)
        elif code in (ALREADY_ACTIVE, CANCEL_WITHDRAWN):
            # ladder_id says which ladder holds the host, so callers need not read it out of reason.
            what = "discovery already queued" if req.host_id is None else "already remediating"
            if code == CANCEL_WITHDRAWN:
                what = "cancel withdrawn (the alert fires again): still remediating"
            result.skipped.append({**entry, "ladder_id": detail, "reason": f"{what} {detail}"})
        elif code == ATTACHED:
            result.skipped.append(
                {
                    **entry,
                    "incident_id": detail,
                    "reason": f"attached: a warning starts nothing while incident {detail} is open",
                }
            )
        elif code in (HELD, MONITORING):
            why = (
                "held: the ladder ended without healing the host; waiting for a human "
                "(remediator remediate, or the alert resolving)"
                if code == HELD
                else "monitoring: the host was healed; the incident closes when the alert resolves"
            )
            result.skipped.append({**entry, "incident_id": detail, "reason": f"{why} (incident {detail})"})
        else:
            result.skipped.append(
                {
                    **entry,
                    "reason": (
                        f"ladder limit reached: {int(detail)} ladders in the last "
                        f"{limit.window_seconds / 60:g} min (rules ladder.max_ladders_per_host)"
                    ),
                }
            )
    queue_prefetch(queue, [(a["host_id"], a["ladder_id"]) for a in result.accepted if a["host_id"]])
    return result


def queue_prefetch(queue: Queue, ladders: list[tuple[str, str]]) -> None:
    """For a storm (``PREFETCH_MIN_HOSTS`` new ladders or more): jobs at the front of the queue that
    diagnose the hosts many at a time before their ladders do (workers/prefetch.py). An optimisation:
    when they cannot be queued, every ladder diagnoses its own host, as it would anyway."""
    if len(ladders) < PREFETCH_MIN_HOSTS:
        return
    chunks = [ladders[i : i + PREFETCH_CHUNK] for i in range(0, len(ladders), PREFETCH_CHUNK)]
    # At the front each, the last first: the first chunk ends up first, as its ladders are queued.
    jobs = [
        Queue.prepare_data(
            PREFETCH_JOB,
            args=([list(ladder) for ladder in chunk],),
            job_id=uuid.uuid4().hex,  # the shape of every other job id of the product's
            timeout=PREFETCH_TIMEOUT,
            result_ttl=defaults.JOB_RESULT_TTL,
            description=f"prefetch the first diagnoses of {len(chunk)} hosts",
            at_front=True,
        )
        for chunk in reversed(chunks)
    ]
    try:
        queue.enqueue_many(jobs)
    except redis.RedisError as exc:
        log.warning(
            "prefetch of %d diagnoses not queued (%s): each ladder diagnoses its host", len(ladders), exc
        )


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


def _intake_script(conn: redis.Redis) -> Any:
    global _INTAKE_SCRIPT
    if _INTAKE_SCRIPT is None:
        _INTAKE_SCRIPT = conn.register_script(INTAKE_LUA)
    return _INTAKE_SCRIPT


def _job_fields(queue: Queue, req: LadderRequest, ladder_id: str, enqueued_at: datetime) -> dict[str, Any]:
    """The hash of the ladder's first RQ job, as ``Queue.enqueue`` would store it.

    ``Job.create`` with rq's default serializer, plus what the queue stamps on a job it enqueues
    (origin, enqueued_at, the Redis version). ``Queue.create_job`` would give the same hash at twice
    the CPU (it checks the serializer against a typing Protocol per job). tests/test_intake.py
    compares the hash with one rq enqueued itself, so an rq upgrade that changes it fails there."""
    args: tuple[str, ...]
    if req.host_id is None:
        func, args, kwargs = DISCOVERY_JOB, (ladder_id,), {"dry_run": req.dry_run}
        description = f"discover critical hosts ({req.alertname or 'manual'})"
    else:
        func, args, kwargs = LADDER_JOB, (req.host_id, ladder_id), None
        description = f"remediate {req.host_id}"
    job = Job.create(
        func,
        args=args,
        kwargs=kwargs,
        connection=queue.connection,
        id=ladder_id,
        timeout=defaults.JOB_TIMEOUT,
        result_ttl=defaults.JOB_RESULT_TTL,
        description=description,
        status=JobStatus.QUEUED,
        origin=queue.name,
    )
    job.enqueued_at = enqueued_at
    job.redis_server_version = queue.get_redis_server_version()
    return job.to_dict()


def _flat(mapping: Mapping[str, Any]) -> list[Any]:
    """HSET's field, value, field, value... (None values left out, as rq leaves them out)."""
    out: list[Any] = []
    for name, value in mapping.items():
        if value is not None:
            out += [name, value]
    return out


def _host_fields(req: LadderRequest, ladder_id: str, now: float) -> dict[str, str]:
    return store.host_fields(
        now,
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
        gentle=req.gentle,
    )


def _audit_entry(req: LadderRequest, ladder_id: str) -> dict[str, Any]:
    return store.audit_entry(
        "intake",
        "queued",
        req.reason,
        job_id=ladder_id,
        fingerprint=req.fingerprint or None,
        dry_run=req.dry_run or None,
    )


CLEANUP_JOB = "workers.jobs.finish_incident"
CLEANUP_JOB_TIMEOUT = 600  # seconds: resume calls, page resolves and a fleet evaluation


def queue_cleanup(conn: redis.Redis, queue_name: str, incident_id: str) -> str:
    """Queue the recovery bookkeeping of a closed incident (one job per incident, whoever asks)."""
    job_id = f"cleanup-{incident_id}"
    job = fetch_job(conn, job_id)
    if job is not None and job.get_status() in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.STARTED):
        return job_id
    Queue(queue_name, connection=conn).enqueue_call(
        CLEANUP_JOB,
        args=(incident_id,),
        job_id=job_id,
        timeout=CLEANUP_JOB_TIMEOUT,
        result_ttl=defaults.JOB_RESULT_TTL,
        description=f"finish incident {incident_id}",
    )
    return job_id


def resolve_host(
    conn: redis.Redis, queue_name: str, host_id: str, fingerprint: str = "", *, warning: bool = False
) -> dict[str, Any]:
    """A resolved alert: the running ladder stops at its next step boundary (and its end closes the
    incident), or the open incident closes now and its recovery bookkeeping is queued."""
    from remediator.incidents import resolve_alert

    closed = resolve_alert(conn, host_id, fingerprint, warning=warning)
    answer: dict[str, Any] = {"host_id": host_id, "fingerprint": fingerprint}
    if closed.cancel_requested:
        return {
            **answer,
            "ladder_id": closed.ladder,
            "incident_id": closed.incident,
            "action": "stop at next step",
        }
    if closed.incident is None:
        return {**answer, "reason": "nothing open for this host"}
    queue_cleanup(conn, queue_name, closed.incident)
    return {**answer, "incident_id": closed.incident, "action": "incident closed"}
