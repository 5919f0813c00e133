"""A warm shutdown runs the job in hand or hands it back: it never drops a job it popped.

rq raised StopRequested from its signal handler wherever the worker was when no work horse ran yet,
which could be just after its dequeue had moved a job out of the queue: the job was left in no queue
and unstarted until the sweeper resumed its ladder, 10 s or more later (seen in test_upgrade_e2e's
rolling upgrade). Each script runs a real RemediatorWorker in its own interpreter (signals reach a
process's main thread) against the test Redis.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def run(script: str) -> list:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_sigterm_just_after_the_dequeue_hands_the_job_back_to_the_front_of_the_queue(
    redis_url: str,
) -> None:
    """The SIGTERM lands the moment the dequeue returned a job (the worker signals itself there): the
    worker stops without running it, and the job is first in its queue again, queued, and out of rq's
    list of popped jobs -- the next worker takes it at once."""
    out = run(f"""
        import json, os, signal, redis
        from rq import Queue
        from remediator.config import Settings
        from workers.rq_worker import RemediatorWorker

        class SignalledOnDequeue(RemediatorWorker):
            def reorder_queues(self, reference_queue):
                os.kill(os.getpid(), signal.SIGTERM)  # the stop arrives with the popped job
                super().reorder_queues(reference_queue)

        conn = redis.Redis.from_url({redis_url!r})
        queue = Queue("stop-after-dequeue", connection=conn)
        first = queue.enqueue("os.getpid")
        second = queue.enqueue("os.getpid")
        worker = SignalledOnDequeue([queue], connection=conn, settings=Settings(redis_url={redis_url!r}))
        worker.work(burst=False)
        first.refresh()
        print(json.dumps([
            queue.get_job_ids(),
            [first.id, second.id],
            first.get_status().value,
            [i.decode() for i in conn.lrange(queue.intermediate_queue_key, 0, -1)],
            worker.stop_signalled,
        ]))
    """)
    in_queue, enqueued, status, popped, stop_signalled = out
    assert in_queue == enqueued  # back at the front, ahead of the job queued after it
    assert status == "queued"
    assert popped == []
    assert stop_signalled


def test_a_sigterm_to_an_idle_worker_stops_it_and_takes_no_job(redis_url: str) -> None:
    """An idle worker told to stop leaves its wait at the next look around and exits; a job queued
    after the stop stays in the queue for another worker."""
    out = run(f"""
        import json, os, signal, threading, time, redis
        from rq import Queue
        from remediator.config import Settings
        from workers.rq_worker import RemediatorWorker

        conn = redis.Redis.from_url({redis_url!r})
        queue = Queue("stop-while-idle", connection=conn)
        queue.empty()
        worker = RemediatorWorker([queue], connection=conn, settings=Settings(redis_url={redis_url!r}))

        def later():
            time.sleep(1.5)  # the worker is in its idle wait by now
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            queue.enqueue("os.getpid")  # after the stop: not for this worker

        threading.Thread(target=later, daemon=True).start()
        worker.work(burst=False)
        time.sleep(0.3)
        print(json.dumps([queue.count, conn.llen(queue.intermediate_queue_key)]))
    """)
    assert out == [1, 0]  # exited (the script ended), the job left queued, none held
