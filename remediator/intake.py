"""Turning accepted alerts into stored work: one ladder per host, never two, never half-written.

Everything one payload asks for is checked and written by one Lua script (``INTAKE_LUA``), which Redis
runs atomically: 100 concurrent identical deliveries produce exactly one ladder per host, and a Redis
failure leaves nothing behind (the receiver then answers 503 and Alertmanager retries).
"""

from __future__ import annotations

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

DISCOVERY = "_discovery"  # not a valid host id, so it can never collide with one
LADDER_JOB = "workers.jobs.run_ladder"
DISCOVERY_JOB = "workers.jobs.discover"
DISCOVERY_GUARD_TTL = 600  # seconds a pending discovery blocks another one
ACTIVE_TTL = 7 * 86400  # seconds: last-resort expiry; ladders clear their key when they end
MAX_WATCH_RETRIES = 20  # optimistic-transaction retries under contention (cancel_ladder)
LADDER_STARTS_KEEP = 7 * 86400  # seconds of ladder start times kept per host

# The verdicts of INTAKE_LUA, one per distinct host (or discovery) of a payload.
ACCEPTED, ALREADY_ACTIVE, LIMIT_REACHED = 0, 1, 2

# One script checks and writes every ladder of a payload. Redis runs a script atomically, so
# concurrent deliveries of one alert cannot both start a ladder for its host, and the whole payload
# costs one round trip and one reply however many alerts it holds (with WATCH/MULTI/EXEC it took
# three round trips and two replies per command). The job is written the way rq's own atomic
# enqueue writes it (rq.scripts.UNIQUE_ENQUEUE_SCRIPT: the job hash, then RPUSH on the queue), plus
# the queue's entry in rq:queues that Queue.enqueue_many adds.
#
# Nothing is half-written: every check runs before the first write, and the first write is a SET or
# ZADD, which Redis refuses when it is out of memory, failing the script before it changed anything
# (a script without flags is checked for memory only at its first write; later writes then go
# through so that it stays atomic). Unpacks are bounded: Lua's unpack stops at about 8,000 values.
INTAKE_LUA = """
-- KEYS[1] hosts index, KEYS[2] rq queue, KEYS[3] rq:queues, KEYS[4] fleet critical sightings,
-- then 6 per request: active, ladder starts, cancel, host state, audit trail, job hash.
-- ARGV[1] now, [2] limit window start, [3] limit count, [4] starts kept from, [5] audit length,
-- [6] active ttl, [7] discovery ttl, [8] sightings kept from, [9] requests, [10] sighting values,
-- [11] host state field names; then the sightings (score, host id, ...), the host state field
-- names, and per request: kind ('h' host, 'd' discovery), name, ladder id, audit entry, number of
-- job hash values, the host state values (kind 'h' only), the job hash's field, value, ...
local n, nsight, nfields = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local names = 12 + nsight
local at = names + nfields
local limit = tonumber(ARGV[3])
local verdicts, writes = {}, {}
for i = 1, n do
  local k = 4 + (i - 1) * 6
  local kind, nj = ARGV[at], tonumber(ARGV[at + 4])
  local host = at + 5
  local job = host + (kind == 'h' and nfields or 0)
  local w = {k, kind, ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], host, job, nj}
  at = job + nj
  local active = redis.call('GET', KEYS[k + 1])
  if active then
    verdicts[i] = {1, active}
  else
    local recent = 0
    if kind == 'h' then recent = redis.call('ZCOUNT', KEYS[k + 2], ARGV[2], '+inf') end
    if kind == 'h' and recent >= limit then
      verdicts[i] = {2, tostring(recent)}
    else
      verdicts[i] = {0, ''}
      writes[#writes + 1] = w
    end
  end
end
local hosts, ladders, audit_max = {}, {}, tonumber(ARGV[5])
for _, w in ipairs(writes) do
  local k, kind, name, ladder, audit, host, job, nj = unpack(w)
  if kind == 'd' then
    redis.call('SET', KEYS[k + 1], ladder, 'EX', ARGV[7])
  else
    redis.call('SET', KEYS[k + 1], ladder, 'EX', ARGV[6])
    redis.call('DEL', KEYS[k + 3], KEYS[k + 4])
    redis.call('ZADD', KEYS[k + 2], ARGV[1], ladder)
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 2], '-inf', ARGV[4])
    local state = {}
    for f = 0, nfields - 1 do
      state[2 * f + 1] = ARGV[names + f]
      state[2 * f + 2] = ARGV[host + f]
    end
    redis.call('HSET', KEYS[k + 4], unpack(state))
    if redis.call('RPUSH', KEYS[k + 5], audit) > audit_max then
      redis.call('LTRIM', KEYS[k + 5], -audit_max, -1)
    end
    hosts[#hosts + 1] = ARGV[1]
    hosts[#hosts + 1] = name
  end
  redis.call('HSET', KEYS[k + 6], unpack(ARGV, job, job + nj - 1))
  ladders[#ladders + 1] = ladder
end
for s = 1, #hosts, 1000 do
  redis.call('ZADD', KEYS[1], unpack(hosts, s, math.min(s + 999, #hosts)))
end
for s = 1, #ladders, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(ladders, s, math.min(s + 999, #ladders)))
end
if #ladders > 0 then redis.call('SADD', KEYS[3], KEYS[2]) end
for s = 12, 11 + nsight, 1000 do
  redis.call('ZADD', KEYS[4], unpack(ARGV, s, math.min(s + 999, 11 + nsight)))
end
if nsight > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[8]) end
return verdicts
"""
_INTAKE_SCRIPT: Any = None


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
    sightings: Mapping[str, float] | None = None,
    sightings_keep: float = 86400.0,
) -> IntakeResult:
    """Enqueue a ladder for each request whose host has none queued or running, atomically.

    ``sightings`` (host id -> time seen critical) are added to the fleet window in the same script,
    so they are stored with the ladders or not at all; sightings older than ``sightings_keep``
    seconds are dropped."""
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
    script_keys = [keys.HOSTS, queue.key, Queue.redis_queues_keys, keys.FLEET_CRITICAL]
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
        ]
        job = _flat(_job_fields(queue, req, ladder_id, enqueued_at))
        if req.host_id is None:
            records += ["d", name, ladder_id, "", len(job), *job]
            continue
        state = _host_fields(req, ladder_id, now)
        # Every host's state has the same fields (one call, same keywords): the names go once.
        field_names = field_names or list(state)
        audit = store.encode_audit(_audit_entry(req, ladder_id))
        records += ["h", name, ladder_id, audit, len(job), *state.values(), *job]
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
        (_, ladder_id), (code, detail) = next(verdicts)
        if code == ACCEPTED:
            result.accepted.append({**entry, "job_id": ladder_id, "ladder_id": ladder_id})
        elif code == ALREADY_ACTIVE:
            # ladder_id says which ladder holds the host, so callers need not read it out of reason.
            what = "discovery already queued" if req.host_id is None else "already remediating"
            other = detail.decode()
            result.skipped.append({**entry, "ladder_id": other, "reason": f"{what} {other}"})
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
    return result


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
