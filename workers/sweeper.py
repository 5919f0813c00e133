"""Resumes ladders whose worker died: a ladder not finished, not locked, whose job is neither queued
(in the queue) nor running nor due soon gets a fresh job. A job RQ still calls "started" counts as
dead once it has run longer than the lock TTL without its host lock: a live worker holds and renews
the lock for the whole of an advance, and RQ itself would only notice the dead worker after the job
timeout.
Runs as a thread in every ``remediator worker`` command (once per command, whatever its --processes);
one sweep at a time across the fleet (SET NX). A Redis failure (an outage, a failover) fails one pass;
the next pass, an interval later, tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC

import redis
from rq import Queue
from rq.job import Job, JobStatus

from remediator import incidents, keys, silences, store
from remediator.clients import clients_for
from remediator.config import Settings
from remediator.connections import text
from remediator.exceptions import LockNotAcquired
from remediator.incidents import IncidentState, end_ladder
from remediator.intake import fetch_job, queue_cleanup, queue_ladder_job
from remediator.locks import HostLock
from workers.context import Context
from workers.fleet import page_host
from workers.monitor import monitor

log = logging.getLogger("remediator.sweeper")

SWEEP_INTERVAL = 5.0  # seconds between sweeps
LATE_GRACE = 10.0  # seconds a scheduled check may be late before the sweeper re-enqueues it
MAX_RESUMES = 6  # resumes of a ladder without a job of it finishing before it is given up
MAX_BACKOFF = 300.0  # seconds between two resumes of a ladder whose jobs keep dying
HOSTS_KEEP = 30 * 86400  # seconds a host stays in the hosts index after its last update
SILENCE_SWEEP_INTERVAL = 60  # seconds between two looks at Alertmanager for silences left behind
STOP_TIMEOUT = 10.0  # seconds a stopping worker waits for the sweep in hand


def _abandoned(job: Job, lock_ttl: float, now: float) -> bool:
    """A started job whose host lock is gone (checked by the caller) and that started over a lock TTL ago."""
    started = job.started_at
    if started is None:
        return False
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    return now - started.timestamp() > lock_ttl


def _popped_and_stuck(conn: redis.Redis, queue: Queue, job_id: str, now: float) -> bool:
    """Whether a job RQ calls queued was popped by a worker that never started it (Redis failed in
    between: it stays queued, in no queue) and has been so for LATE_GRACE. A worker moves a job out
    of the queue, then marks it started, a few milliseconds later; the first sighting out of the
    queue is kept where RQ's own cleanup of its intermediate list keeps it."""
    if conn.lpos(queue.key, job_id) is not None:
        return False
    popped = queue.intermediate_queue
    popped.set_first_seen(job_id)
    first_seen = popped.get_first_seen(job_id)
    return first_seen is not None and now - first_seen.timestamp() > LATE_GRACE


def _lost(status: JobStatus | None) -> str:
    if status is None:
        return "lost"
    return "popped but never started" if status == JobStatus.QUEUED else status.value


def sweep(conn: redis.Redis, settings: Settings) -> list[str]:
    """One pass; returns the hosts whose ladders were re-enqueued."""
    if not conn.set(keys.SWEEP_LOCK, "1", nx=True, ex=int(SWEEP_INTERVAL)):
        return []
    queue = Queue(settings.queue, connection=conn)
    resumed = []
    now = time.time()
    for state in store.list_hosts(conn, limit=10000):
        host = state["host_id"]
        if state.get("status") in (None, "", "finished"):
            continue
        ladder_id = state.get("ladder_id")
        active = conn.get(keys.ACTIVE.format(host))
        if not ladder_id or active is None or text(active) != ladder_id:
            continue
        if conn.exists(keys.LOCK.format(host)):
            continue  # a live worker holds it (a dead one's lock expires after REMEDIATOR_LOCK_TTL)
        job_id = state.get("job_id")
        job = fetch_job(conn, job_id)
        status = job.get_status() if job else None
        if job and status == JobStatus.QUEUED and not _popped_and_stuck(conn, queue, job.id, now):
            continue
        if job and status == JobStatus.STARTED and not _abandoned(job, settings.lock_ttl, now):
            continue
        if status == JobStatus.SCHEDULED and now < float(state.get("next_check_at") or 0) + LATE_GRACE:
            continue
        # A job that dies every time (a crash, a poison input, an OOM kill) is resumed with a growing
        # pause, and given up to a human after MAX_RESUMES: never every few seconds until the deadline.
        resumes = int(state.get("resumes") or 0)
        if now - float(state.get("resumed_at") or 0) < min(SWEEP_INTERVAL * 2**resumes, MAX_BACKOFF):
            continue
        if resumes >= MAX_RESUMES:
            give_up(conn, settings, host, ladder_id, f"its jobs died {resumes + 1} times in a row")
            continue
        with conn.pipeline() as pipe:
            try:
                pipe.watch(keys.HOST.format(host))
                if pipe.hget(keys.HOST.format(host), "job_id") != (job_id or "").encode():
                    continue
                pipe.multi()
                new_id = queue_ladder_job(
                    pipe,
                    queue,
                    host,
                    ladder_id,
                    description="resumed by sweeper",
                    status="queued",
                    resumes=resumes + 1,
                    resumed_at=f"{now:.3f}",
                )
                store.append_audit(
                    pipe,
                    host,
                    "sweeper",
                    "resumed",
                    f"job {job_id} was {_lost(status)}: resuming the ladder",
                    job_id=new_id,
                    ladder_id=ladder_id,
                )
                pipe.execute()
                resumed.append(host)
            except redis.WatchError:
                continue
    if resumed:
        log.warning("resumed ladders of %s", ", ".join(resumed))
    for incident_id in incidents.cleanup_due(conn):
        queue_cleanup(conn, settings.queue, incident_id)
    conn.zremrangebyscore(keys.HOSTS, "-inf", now - HOSTS_KEEP)
    client = clients_for(settings).silences()
    # Silences left behind by a worker that died mid-ladder: the tracked ones every pass, Alertmanager's
    # own list (a silence made but never recorded) at most once per SILENCE_SWEEP_INTERVAL.
    due = conn.set(keys.SILENCE_SWEEP_LOCK, "1", nx=True, ex=SILENCE_SWEEP_INTERVAL)
    if client is not None and (conn.hlen(keys.SILENCES) or due):
        silences.expire(conn, client, stale=True, untracked=bool(due))
    monitor(conn, settings)
    return resumed


def give_up(conn: redis.Redis, settings: Settings, host: str, ladder_id: str, why: str) -> None:
    """End a ladder that cannot run: failed, its incident held, a human paged."""

    lock = HostLock(conn, host, settings.lock_ttl, renew=False)
    try:
        lock.acquire()
    except LockNotAcquired:
        return  # a worker holds it after all: not abandoned
    try:
        detail = f"ladder given up: {why}"
        ended = end_ladder(
            conn,
            host,
            ladder_id,
            lock.token,
            "failed",
            detail,
            store.host_fields(
                time.time(), status="finished", outcome="failed", outcome_detail=detail, phase="done"
            ),
            IncidentState.HELD,
            store.audit_entry("ladder", "failed", detail, ladder_id=ladder_id),
        )
    finally:
        lock.release()
    log.error("host %s: %s", host, detail)
    if ended.ok and ended.incident:
        ctx = Context(settings, conn)
        page_host(
            ctx,
            host,
            ended.incident,
            summary=f"RingRift remediation needs a human: {host}: {detail}",
            severity="critical",
            targets=None,
            details={"reason": detail, "ladder_id": ladder_id},
            rule="(sweeper)",
            host_state=f"failed: {why}",
        )


class Sweeper(threading.Thread):
    def __init__(self, conn: redis.Redis, settings: Settings, interval: float = SWEEP_INTERVAL) -> None:
        super().__init__(name="ladder-sweeper", daemon=True)
        self.conn = conn
        self.settings = settings
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                sweep(self.conn, self.settings)
            except redis.RedisError as exc:
                log.warning("sweep failed: %s", exc)
            except Exception:
                # A bug in one pass (or a broken rules file) must not end the thread for good.
                log.exception("sweep failed")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop after the pass in hand, if any (waiting for it at most ``timeout`` seconds)."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)
