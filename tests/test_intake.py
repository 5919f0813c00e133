"""Every job of a ladder, first or later, is queued the same way: same function, same timeout."""

from __future__ import annotations

from rq import Queue
from rq.job import Job, JobStatus

from remediator import defaults, keys
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
