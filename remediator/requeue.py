"""Manual re-queue of ladder jobs that failed, honouring the host lock: never a second ladder for a host.

A failed ``workers.jobs.run_ladder(host_id, ladder_id)`` job is handled by what Redis says of its host:

- the host's active ladder is that ladder, no worker holds the host lock and the ladder's current job is
  not live: a fresh job resumes the same ladder (the host hash and the audit are updated in the same
  MULTI, as the sweeper does);
- the ladder's current job is live (queued, started, scheduled): nothing to do;
- the host lock is held: busy, retry once the worker is done (or its lock has expired);
- another ladder is active on the host: refused;
- no ladder is active (it ended): a new one is started through ``intake.start_ladders`` (deduped).

A failed ``workers.jobs.discover`` job starts a new discovery unless one is already queued.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from remediator import keys, store
from remediator.connections import text
from remediator.hosts import is_valid_host_id
from remediator.intake import (
    DISCOVERY,
    DISCOVERY_JOB,
    LADDER_JOB,
    MAX_WATCH_RETRIES,
    LadderLimit,
    LadderRequest,
    job_status,
    queue_ladder_job,
    start_ladders,
)

LIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}

# What each outcome means to an HTTP client (the CLI exits 1 on the 4xx ones).
HTTP_CODES = {"resumed": 202, "started": 202, "unchanged": 200, "busy": 409, "refused": 409, "not-found": 404}


@dataclass(frozen=True)
class Requeued:
    """What a re-queue of one job did. ``action``: resumed, started, unchanged, busy, refused, not-found."""

    job_id: str
    action: str
    detail: str
    host_id: str | None = None
    ladder_id: str | None = None
    new_job_id: str | None = None

    @property
    def ok(self) -> bool:
        return HTTP_CODES[self.action] < 400

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "action": self.action,
            "detail": self.detail,
            "host_id": self.host_id,
            "ladder_id": self.ladder_id,
            "new_job_id": self.new_job_id,
        }


@dataclass(frozen=True)
class LadderTarget:
    """The ladder a job advances: a host's (``host_id``, ``ladder_id``), or a discovery (host_id None)."""

    host_id: str | None  # None: a discovery job
    ladder_id: str
    dry_run: bool = False


def ladder_of(job: Job) -> LadderTarget | None:
    """The ladder a job belongs to, or None when it is not one of the remediator's ladder jobs."""
    args, kwargs = tuple(job.args or ()), dict(job.kwargs or {})
    if (
        job.func_name == LADDER_JOB
        and len(args) == 2
        and is_valid_host_id(args[0])
        and isinstance(args[1], str)
    ):
        return LadderTarget(args[0], args[1])
    if job.func_name == DISCOVERY_JOB and len(args) == 1 and isinstance(args[0], str):
        return LadderTarget(None, args[0], bool(kwargs.get("dry_run")))
    return None


def requeue_job(
    conn: redis.Redis,
    queue_name: str,
    job_id: str,
    *,
    who: str,
    limit: LadderLimit,
    default_dry_run: bool = False,
) -> Requeued:
    """Re-queue job ``job_id`` by the rules of this module; ``who`` is recorded in the audit."""
    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return Requeued(job_id, "not-found", f"no job {job_id} in Redis (it may have expired)")
    target = ladder_of(job)
    if target is None:
        return Requeued(job_id, "refused", f"job {job_id} ({job.func_name}) is not a remediator ladder job")
    asked = _Requeue(conn, Queue(queue_name, connection=conn), job, who, limit, default_dry_run)
    if target.host_id is None:
        return _requeue_discovery(asked, target)
    return _requeue_ladder(asked, target)


@dataclass(frozen=True)
class _Requeue:
    """One job's re-queue as asked: the failed job and its queue, who asks, and the limit and default
    dry run a new ladder started in its place gets."""

    conn: redis.Redis
    queue: Queue
    job: Job
    who: str
    limit: LadderLimit
    default_dry_run: bool

    def start(self, req: LadderRequest) -> Requeued:
        """Start a new ladder in the failed job's place, deduped like an alert."""
        job, host = self.job, req.host_id
        result = start_ladders(self.conn, self.queue.name, [req], self.limit)
        if result.accepted:
            FailedJobRegistry(queue=self.queue).remove(job)
            ladder_id = result.accepted[0]["ladder_id"]
            what = f"new ladder {ladder_id} for {host}" if host else f"new discovery {ladder_id}"
            return Requeued(
                job.id,
                "started",
                f"{what} started (the ladder of job {job.id} had ended)",
                host,
                ladder_id,
                ladder_id,
            )
        reason, other = result.skipped[0]["reason"], result.skipped[0].get("ladder_id")
        if other and host:
            return Requeued(
                job.id, "refused", f"host {host} is already being remediated by ladder {other}", host, other
            )
        if other:
            return Requeued(job.id, "unchanged", f"discovery {other} is already queued", None, other, other)
        return Requeued(job.id, "refused", f"{host or 'discovery'}: {reason}", host)


def _requeue_ladder(asked: _Requeue, target: LadderTarget) -> Requeued:
    conn, queue, job, who = asked.conn, asked.queue, asked.job, asked.who
    host, ladder_id = target.host_id, target.ladder_id
    assert host is not None
    failed = FailedJobRegistry(queue=queue)
    active_key, host_key, lock_key = keys.ACTIVE.format(host), keys.HOST.format(host), keys.LOCK.format(host)
    for _ in range(MAX_WATCH_RETRIES):
        with conn.pipeline() as pipe:
            try:
                pipe.watch(active_key, host_key, lock_key)
                active = pipe.get(active_key)
                if active is None:
                    state_ladder, state_dry = pipe.hmget(host_key, "ladder_id", "dry_run")
                    dry_run = asked.default_dry_run or (
                        state_ladder == ladder_id.encode() and state_dry == b"1"
                    )
                    break
                active_id = text(active)
                if active_id != ladder_id:
                    return Requeued(
                        job.id,
                        "refused",
                        f"host {host} is already being remediated by ladder {active_id}",
                        host,
                        active_id,
                    )
                if pipe.exists(lock_key):
                    return Requeued(
                        job.id,
                        "busy",
                        f"host {host}'s lock is held: a worker is advancing ladder "
                        f"{ladder_id} (or a dead worker's lock has not expired yet, at most "
                        "REMEDIATOR_LOCK_TTL seconds); retry later",
                        host,
                        ladder_id,
                    )
                current = text(pipe.hget(host_key, "job_id") or b"")
                status = job_status(conn, current)
                if status in LIVE:
                    pipe.unwatch()
                    if current != job.id:
                        failed.remove(job)  # superseded by the live job: nothing left to re-queue
                    return Requeued(
                        job.id,
                        "unchanged",
                        f"ladder {ladder_id} of {host} already has {status.value} job {current}",
                        host,
                        ladder_id,
                        current,
                    )
                pipe.multi()
                new_id = queue_ladder_job(
                    pipe, queue, host, ladder_id, description=f"requeued by {who}", status="queued"
                )
                store.append_audit(
                    pipe,
                    host,
                    "requeue",
                    "requeued",
                    f"requeued by {who}: job {current or job.id} was {status or 'lost'}",
                    job_id=new_id,
                    ladder_id=ladder_id,
                    previous_job_id=current or job.id,
                )
                failed.remove(job, pipeline=pipe)
                if current and current != job.id:
                    failed.remove(current, pipeline=pipe)
                pipe.execute()
                return Requeued(
                    job.id,
                    "resumed",
                    f"ladder {ladder_id} of {host} resumed as job {new_id}",
                    host,
                    ladder_id,
                    new_id,
                )
            except redis.WatchError:
                continue
    else:
        raise redis.ConnectionError("too much contention on the host keys; try again")
    # No ladder is active: the failed job's ladder has ended. Start a new one, deduped like an alert.
    req = LadderRequest(
        host_id=host,
        reason=f"requeued by {who}: job {job.id} of ended ladder {ladder_id}",
        alertname="manual",
        dry_run=dry_run,
        force=True,
    )
    return asked.start(req)


def _requeue_discovery(asked: _Requeue, target: LadderTarget) -> Requeued:
    conn, job = asked.conn, asked.job
    failed = FailedJobRegistry(queue=asked.queue)
    guard = conn.get(keys.ACTIVE.format(DISCOVERY))
    if guard is not None:
        guard_id = text(guard)
        if guard_id != job.id or job_status(conn, guard_id) in LIVE:
            failed.remove(job)
            return Requeued(
                job.id, "unchanged", f"discovery {guard_id} is already queued", None, guard_id, guard_id
            )
        # The guard names this very job, which is no longer live: it is stale.
        conn.delete(keys.ACTIVE.format(DISCOVERY))
    req = LadderRequest(
        host_id=None,
        reason=f"requeued by {asked.who}: discovery {job.id}",
        alertname="manual",
        dry_run=target.dry_run or asked.default_dry_run,
    )
    return asked.start(req)


def failed_job_ids(conn: redis.Redis, queue_name: str) -> list[str]:
    """Ids in the queue's RQ failed-job registry, oldest failure first."""
    return FailedJobRegistry(queue_name, connection=conn).get_job_ids()


def _failed_of(conn: redis.Redis, queue_name: str, host_id: str | None) -> Iterator[str]:
    for job_id in failed_job_ids(conn, queue_name):
        if host_id is None:
            yield job_id
            continue
        try:
            target = ladder_of(Job.fetch(job_id, connection=conn))
        except NoSuchJobError:
            continue
        if target is not None and target.host_id == host_id:
            yield job_id


def requeue_failed(
    conn: redis.Redis,
    queue_name: str,
    *,
    who: str,
    limit: LadderLimit,
    host_id: str | None = None,
    default_dry_run: bool = False,
) -> list[Requeued]:
    """Re-queue every job of the failed-job registry (only ``host_id``'s, if given), one by one."""
    results = []
    for job_id in list(_failed_of(conn, queue_name, host_id)):
        result = requeue_job(conn, queue_name, job_id, who=who, limit=limit, default_dry_run=default_dry_run)
        if result.action == "not-found":
            FailedJobRegistry(queue_name, connection=conn).remove(job_id)
        results.append(result)
    return results
