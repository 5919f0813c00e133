"""The sweeper (workers/sweeper.py): which ladders it resumes, against a real Redis."""

from __future__ import annotations

import time

from helpers import make_settings
from ops_helpers import QUEUE, start_ladder
from rq import Queue

from remediator import keys, store
from workers.context import Context
from workers.ladder import Ladder
from workers.sweeper import LATE_GRACE, sweep


def test_a_ladder_whose_job_waits_in_the_queue_is_left_alone(redis_url, redis_conn):
    start_ladder(redis_conn, "h1")
    assert sweep(redis_conn, make_settings(redis_url)) == []


def test_a_job_popped_by_a_worker_that_never_started_it_is_resumed_once_and_the_stale_one_acts_not(
    redis_url, redis_conn
):
    # A worker moved the job out of the queue (rq's BLMOVE to its intermediate list) and then lost
    # Redis (a failover) before it marked the job started: RQ still calls it queued, but no worker
    # will ever run it.
    ladder_id = start_ladder(redis_conn, "h1")
    queue = Queue(QUEUE, connection=redis_conn)
    assert redis_conn.lmove(queue.key, queue.intermediate_queue_key) == ladder_id.encode()
    settings = make_settings(redis_url)
    # Not at first sight: a worker marks the job it popped started a few milliseconds later.
    assert sweep(redis_conn, settings) == []
    first_seen = queue.intermediate_queue.get_first_seen_key(ladder_id)
    redis_conn.set(first_seen, time.time() - LATE_GRACE - 1)  # ... but it has been stuck a while
    redis_conn.delete(keys.SWEEP_LOCK)
    assert sweep(redis_conn, settings) == ["h1"]
    (resumed,) = queue.job_ids
    assert resumed != ladder_id and store.get_host(redis_conn, "h1")["job_id"] == resumed
    assert store.get_audit(redis_conn, "h1")[-1]["detail"].endswith(
        "popped but never started: resuming the ladder"
    )
    # The slow worker, if it was only slow, finds its job stale and leaves the ladder to the new one.
    stale = Ladder(Context(settings, redis_conn, ladder_id), "h1", ladder_id).advance()
    assert stale.startswith("stale job")
    redis_conn.delete(keys.SWEEP_LOCK)
    assert sweep(redis_conn, settings) == []  # the new job is in the queue: nothing more to resume
