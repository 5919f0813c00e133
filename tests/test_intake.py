"""Every job of a ladder, first or later, is queued the same way: same function, same timeout."""

from __future__ import annotations

import time

import redis
from rq import Queue
from rq.job import Job, JobStatus

from remediator import defaults, intake, keys
from remediator.intake import LadderRequest, job_status, queue_ladder_job, start_ladders


def test_first_and_next_ladder_jobs_carry_the_ladder_job_timeout(redis_conn):
    accepted = start_ladders(redis_conn, "remediator", [LadderRequest("h1", "test")]).accepted[0]
    queue = Queue("remediator", connection=redis_conn)
    with redis_conn.pipeline() as pipe:
        now_id = queue_ladder_job(
            pipe, queue, "h1", accepted["ladder_id"], description="now", status="queued"
        )
        later_id = queue_ladder_job(
            pipe, queue, "h1", accepted["ladder_id"], description="later", delay=30, status="waiting"
        )
        pipe.execute()
    for job_id in (accepted["job_id"], now_id, later_id):
        job = Job.fetch(job_id, connection=redis_conn)
        # RQ's own default (180 s) would kill a long rsync of recover_data mid-copy.
        assert job.timeout == defaults.JOB_TIMEOUT
        assert job.func_name == "workers.jobs.run_ladder" and job.args == ("h1", accepted["ladder_id"])
    assert job_status(redis_conn, now_id) == JobStatus.QUEUED
    assert job_status(redis_conn, later_id) == JobStatus.SCHEDULED
    assert redis_conn.hget(keys.HOST.format("h1"), "job_id") == later_id.encode()


def test_job_status_of_a_missing_job_is_none(redis_conn):
    assert job_status(redis_conn, "no-such-job") is None
    assert job_status(redis_conn, None) is None


def test_first_job_is_stored_exactly_as_rq_enqueues_it(redis_conn, monkeypatch):
    # The intake script writes the job hash itself (one round trip for a whole payload): it must be
    # the hash rq's own enqueue writes, or workers would run something else. rq writes its twin into
    # another database of the same server with the same id; only the timestamps may differ.
    ids = iter(["ladder-1", "ladder-2"])
    monkeypatch.setattr(intake, "new_ladder_id", lambda: next(ids))
    start_ladders(redis_conn, "remediator", [LadderRequest("h1", "test"), LadderRequest(None, "find")])
    where = redis_conn.connection_pool.connection_kwargs
    twin = redis.Redis(host=where["host"], port=where["port"], db=1)
    twin.flushdb()
    try:
        queue = Queue("remediator", connection=twin)
        queue.enqueue_many(
            [
                Queue.prepare_data(
                    intake.LADDER_JOB,
                    args=("h1", "ladder-1"),
                    job_id="ladder-1",
                    timeout=defaults.JOB_TIMEOUT,
                    result_ttl=defaults.JOB_RESULT_TTL,
                    description="remediate h1",
                )
            ]
        )
        ours, theirs = redis_conn.hgetall("rq:job:ladder-1"), twin.hgetall("rq:job:ladder-1")
        for stamp in (b"created_at", b"enqueued_at"):
            assert ours.pop(stamp) and theirs.pop(stamp)
        assert ours == theirs
        assert redis_conn.lrange(queue.key, 0, -1)[0] == b"ladder-1"
        assert redis_conn.smembers("rq:queues") == twin.smembers("rq:queues") == {queue.key.encode()}
    finally:
        twin.flushdb()
        twin.close()
    job = Job.fetch("ladder-1", connection=redis_conn)
    assert job.get_status() == JobStatus.QUEUED and job.origin == "remediator"
    assert job.func_name == intake.LADDER_JOB and job.args == ("h1", "ladder-1")
    discovery = Job.fetch("ladder-2", connection=redis_conn)
    assert discovery.func_name == intake.DISCOVERY_JOB and discovery.kwargs == {"dry_run": False}


def test_ladder_limit_counts_starts_in_the_window_only(redis_conn):
    limit = intake.LadderLimit(count=2, window_seconds=600)
    starts = keys.LADDER_STARTS.format("h1")
    redis_conn.zadd(starts, {"long-ago": time.time() - 601})
    for _ in range(2):
        result = start_ladders(redis_conn, "remediator", [LadderRequest("h1", "test")], limit)
        assert len(result.accepted) == 1
        redis_conn.delete(keys.ACTIVE.format("h1"))  # the ladder ended
    result = start_ladders(
        redis_conn, "remediator", [LadderRequest("h1", "test"), LadderRequest("h2", "t")], limit
    )
    assert [a["host_id"] for a in result.accepted] == ["h2"]
    assert result.skipped == [
        {
            "host_id": "h1",
            "fingerprint": "",
            "alertname": "",
            "reason": "ladder limit reached: 2 ladders in the last 10 min "
            "(rules ladder.max_ladders_per_host)",
        }
    ]
    assert redis_conn.zcard(starts) == 3  # refused requests leave no start behind


def test_refused_and_duplicate_requests_write_nothing_but_the_incident_s_alert_count(redis_conn):
    accepted = start_ladders(redis_conn, "remediator", [LadderRequest("h1", "a")]).accepted[0]
    first, incident = accepted["ladder_id"], accepted["incident_id"]
    incident_key = keys.INCIDENT.format(incident).encode()
    before = {k: redis_conn.dump(k) for k in redis_conn.keys("*") if k != incident_key}
    again = start_ladders(redis_conn, "remediator", [LadderRequest("h1", "b"), LadderRequest("h1", "c")])
    assert again.accepted == []
    assert [s["reason"] for s in again.skipped] == [
        f"already remediating {first}",
        "duplicate in this payload",
    ]
    assert again.skipped[0]["ladder_id"] == first and "ladder_id" not in again.skipped[1]
    assert {k: redis_conn.dump(k) for k in redis_conn.keys("*") if k != incident_key} == before
    # The re-send attached to the open incident: counted once (the duplicate in the payload is not).
    assert redis_conn.hget(incident_key, "alerts") == b"2"


def test_sightings_are_stored_with_the_ladders_and_trimmed(redis_conn):
    now = time.time()
    seen = {f"host-{i:04d}": now for i in range(1500)}  # more values than one Lua unpack takes
    redis_conn.zadd(keys.FLEET_CRITICAL, {"stale": now - 100})
    start_ladders(redis_conn, "remediator", [], sightings=seen, sightings_keep=50)
    assert redis_conn.zcard(keys.FLEET_CRITICAL) == 1500
    assert redis_conn.zscore(keys.FLEET_CRITICAL, "stale") is None


def test_a_ladder_job_outlives_the_longest_step_s_own_timeouts():
    # recover_data runs rsync, the host's inventory, the local one and the import in one job: RQ must
    # not kill the job before those bounds, or a large recovery fails for the wrong reason.
    longest = defaults.RSYNC_TIMEOUT + defaults.IMPORT_TIMEOUT + 2 * defaults.SSH_COMMAND_TIMEOUT
    assert longest < defaults.JOB_TIMEOUT
