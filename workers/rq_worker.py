"""rq's Worker and scheduler, made to ride out a Redis outage or a Sentinel failover.

rq's own worker retries only its blocking dequeue: a Redis error anywhere else (a heartbeat while a
job runs, the maintenance pass, the suspension check) ends its work loop, and its scheduler process
dies at the first error and is restarted only at the next maintenance pass. Here:

- while a job runs, a failed heartbeat is logged and tried again at the next one: the work horse
  goes on with its job (the ladder holds its own host lock and fails its job when it cannot write);
- a failure to record a finished job's end is logged: the ladder's state is in its host's hash, and
  the sweeper resumes a ladder whose job was left "started";
- the scheduler waits and tries again instead of dying, and builds its connection from the settings
  (``remediator.connections``), so it follows the Sentinel master like everything else.
- a stop request (warm shutdown) never drops a job the worker has just popped: it runs it or hands
  it back to the front of the queue.

What still ends the work loop (a dequeue timeout, a failure while registering) is taken up by
``workers.runner.work_until_stopped``, which waits for Redis and starts the loop again.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from multiprocessing import get_context
from multiprocessing.process import BaseProcess
from typing import Any

import redis
from rq import Queue, Worker
from rq import scheduler as rq_scheduler
from rq.exceptions import StopRequested
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.utils import now
from rq.worker import WorkerStatus

from remediator.config import Settings
from remediator.connections import redis_from_settings

log = logging.getLogger("remediator.worker")

REDIS_WAIT_INITIAL = 0.2  # seconds before the first retry after a Redis failure
REDIS_WAIT_MAX = 5.0  # seconds between two retries at most (rq's own default is 60)
# Seconds an idle worker blocks on the queue before it looks around (heartbeat, maintenance, the
# scheduler, a stop request). rq's is its TTL less 15 s (405 s): a worker that started while another's
# scheduler held the queue's lock (a rolling upgrade) took that long to take the scheduler over once it
# was freed; and an idle worker told to stop stops at its next look around (``request_stop``).
DEQUEUE_TIMEOUT = 1
SCHEDULER_TAKEOVER_INTERVAL = 5.0  # seconds between two tries to take a freed scheduler lock


class RemediatorScheduler(RQScheduler):
    """rq's scheduler (one per queue across the fleet, by lock), waiting out Redis failures."""

    _connection: redis.Redis | None  # type: ignore[assignment]  # rq's untyped __init__ leaves it typed None

    def __init__(self, *args: Any, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        super().__init__(*args, **kwargs)

    @property
    def connection(self) -> redis.Redis:
        # rq rebuilds the connection from a copy of the worker's pool settings; this builds it the
        # way every other client is built (after the fork, in the scheduler's own process).
        if self._connection is None:
            self._connection = redis_from_settings(self.settings)
        assert self._connection is not None  # the worker that started it had a Redis from the same settings
        return self._connection

    def start(self) -> BaseProcess:
        """rq's ``start``, with SIGTERM and SIGINT blocked across the fork: the scheduler process is
        born with the worker's handlers (the runner's, which only note the signal), and a SIGTERM in
        its first moments -- a pod stopped as it starts, or a process-group kill -- was swallowed
        there; the scheduler ran on and the worker's stop waited for it for ever. Blocked, the signal
        waits until the scheduler's own handlers are in place (``_run_scheduler``)."""
        stopping = {signal.SIGTERM, signal.SIGINT}
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
        try:
            self._status = self.Status.STARTED
            self._connection = None  # built again in the scheduler's own process
            process = get_context("fork").Process(target=_run_scheduler, args=(self, mask), name="Scheduler")
            self._process = process  # type: ignore[assignment]  # rq's untyped __init__ leaves it typed None
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return process

    def work(self) -> None:
        self._install_signal_handlers()
        born = False
        delay = REDIS_WAIT_INITIAL
        while not self._stop_requested:
            try:
                if not born:
                    self.register_birth()
                    born = True
                if self.should_reacquire_locks:
                    self.acquire_locks()
                self.heartbeat()
                self.enqueue_scheduled_jobs()
                pause, delay = self.interval, REDIS_WAIT_INITIAL
            except redis.RedisError as exc:
                self.log.warning("scheduler: Redis unavailable (%s); retrying in %.1fs", describe(exc), delay)
                pause, delay = delay, min(delay * 2, REDIS_WAIT_MAX)
            time.sleep(pause)  # the scheduler's own process, as rq's loop does: no job waits on it
        try:
            self.stop()
        except redis.RedisError as exc:
            self.log.warning("scheduler: could not release its locks (%s); they expire", describe(exc))


def _run_scheduler(scheduler: RemediatorScheduler, mask: set[signal.Signals]) -> None:
    """The scheduler process: its own stop handlers first, then the signals the fork held back."""
    scheduler._install_signal_handlers()
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    rq_scheduler.run(scheduler)


class RemediatorWorker(Worker):
    """rq's forking Worker that keeps its job and its loop through Redis failures."""

    max_connection_wait_time = REDIS_WAIT_MAX

    def __init__(self, *args: Any, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        self.stop_signalled = False
        # Whether a stop signal came before rq put its handlers in place (set by the runner): rq
        # registers the worker and starts its scheduler first, and a SIGTERM in that window only
        # reached the runner's handler, so the worker went on to block in its dequeue.
        self.stopped_early: Callable[[], bool] = lambda: False
        self._takes_over_scheduler = False
        self._next_takeover = 0.0
        self._waiting_for_job = False  # in rq's idle wait, no job popped yet
        super().__init__(*args, **kwargs)

    @property
    def dequeue_timeout(self) -> int:
        return DEQUEUE_TIMEOUT

    # -- stopping ------------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        if self.stopped_early():
            self.log.info("Worker %s: stop requested while starting; stopping", self.name)
            self.stop_signalled = True
            self._stop_requested = True  # rq's loop checks it before its first dequeue

    def request_stop(self, signum: int, frame: Any) -> None:
        """Warm shutdown: the job in hand finishes, then the worker exits; a second signal is rq's cold
        shutdown.

        rq's handler raises StopRequested wherever the worker is when no work horse runs yet, and that
        can be just after its dequeue popped a job: the job, moved out of the queue and never started,
        was in no queue until the sweeper resumed its ladder (seen in a rolling upgrade). Here the
        handler only notes the stop. The idle wait ends at its next look around (``heartbeat``, at most
        DEQUEUE_TIMEOUT later), and a job popped meanwhile goes back to the front of the queue
        (``execute_job``): a job is either run or handed back, never dropped between the two."""
        self.stop_signalled = True
        self._shutdown_requested_date = now()  # rq's cold shutdown ignores a second signal within 1 s of it
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)
        self.handle_warm_shutdown_request()
        self._stop_requested = True
        if self.get_state() == WorkerStatus.BUSY:
            self.set_shutdown_requested_date()
        if self.scheduler:
            self.stop_scheduler()

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        self._waiting_for_job = True
        try:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        finally:
            self._waiting_for_job = False

    def reorder_queues(self, reference_queue: Queue) -> None:
        self._waiting_for_job = False  # rq calls this as soon as its dequeue returned a job: one is in hand
        super().reorder_queues(reference_queue)

    def _hand_back(self, job: Job, queue: Queue) -> None:
        """Put a popped job that this stopping worker will not run back at the front of its queue,
        where it was, and out of rq's list of popped jobs, in one transaction."""
        try:
            with self.connection.pipeline() as pipe:
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
                pipe.lpush(queue.key, job.id)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning(
                "job %s: could not hand it back to the queue (%s); the sweeper resumes its ladder",
                job.id,
                describe(exc),
            )
            return
        log.info("Worker %s: stopping; job %s handed back to the queue unstarted", self.name, job.id)

    def set_shutdown_requested_date(self) -> None:
        # Runs in the signal handler: a Redis error here must not land in the middle of a job's wait.
        self._ride_out("record the shutdown request", super().set_shutdown_requested_date)

    def teardown(self) -> None:
        if self.is_horse:
            super().teardown()
            return
        if self.scheduler:
            self.stop_scheduler()
        self._ride_out("register its death", self.register_death)
        self._ride_out("unsubscribe", self.unsubscribe)

    # -- Redis failures while a job runs --------------------------------------------------------------
    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        if self._stop_requested and self._waiting_for_job:
            raise StopRequested  # the idle wait's look around, before its next pop: no job in hand
        self._ride_out("send its heartbeat", super().heartbeat, timeout)
        self._ride_out("take the scheduler over", self._take_over_scheduler)

    def _take_over_scheduler(self) -> None:
        """Start this worker's scheduler once no other holds the queue's lock (rq tries only in its
        maintenance pass), so that scheduled ladder checks keep their time across a rolling upgrade."""
        if self.is_horse or not self._takes_over_scheduler or self.scheduler is None or self._stop_requested:
            return
        process = self.scheduler._process
        if (process is not None and process.is_alive()) or time.monotonic() < self._next_takeover:
            return
        self._next_takeover = time.monotonic() + SCHEDULER_TAKEOVER_INTERVAL
        self.scheduler.acquire_locks(auto_start=True)

    def maintain_heartbeats(self, job: Job) -> None:
        self._ride_out(f"send job {job.id}'s heartbeat", super().maintain_heartbeats, job)

    def set_current_job_working_time(self, current_job_working_time: float, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().set_current_job_working_time(current_job_working_time, pipeline)
            return
        self._ride_out(
            "record the job's working time", super().set_current_job_working_time, current_job_working_time
        )

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self._stop_requested:
            self._hand_back(job, queue)  # popped as the stop came: the next worker runs it
            return
        self._warm_up()
        try:
            super().execute_job(job, queue)
        except redis.RedisError as exc:
            if self.horse_pid:
                self.wait_for_horse()  # never start another job while this one's horse runs
                self._horse_pid = 0
            log.warning(
                "job %s: Redis failed around it (%s); the sweeper resumes its ladder",
                job.id,
                describe(exc),
            )

    def _warm_up(self) -> None:
        """Load (or re-check) the rules and the SSH keys here, before rq forks the job's work horse:
        the horse inherits them parsed. Left to the horse, every job parsed the rules YAML and built
        the JSON schema validator again (a third of a ladder job's CPU time in a storm), and every SSH
        connection parsed known_hosts (a host key built per host in the fleet)."""
        from remediator.clients.ssh import load_keys
        from workers.context import rules_for

        try:
            rules_for(self.settings)
        except Exception as exc:  # the job meets the same error and fails with it, where it is seen
            log.warning("rules could not be loaded before the job: %s", describe(exc))
        load_keys(self.settings)

    # -- Redis failures between jobs -----------------------------------------------------------------
    def check_for_suspension(self, burst: bool) -> None:
        # A failure here is met again by the dequeue, which waits and retries.
        self._ride_out("check for suspension", super().check_for_suspension, burst)

    def run_maintenance_tasks(self) -> None:
        self._ride_out("run its maintenance", super().run_maintenance_tasks)

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = "",
        log_format: str = "",
    ) -> None:
        """rq's ``_start_scheduler`` with this module's scheduler."""
        from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT

        self.scheduler = RemediatorScheduler(
            self.queues,
            connection=self.connection,
            settings=self.settings,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format or DEFAULT_LOGGING_DATE_FORMAT,
            log_format=log_format or DEFAULT_LOGGING_FORMAT,
            serializer=self.serializer,
        )
        self._takes_over_scheduler = not burst
        self.scheduler.acquire_locks()
        if not self.scheduler.acquired_locks:
            return  # another worker's scheduler has the queue; heartbeats try again
        if burst:
            try:
                self.scheduler.register_birth()
                self.scheduler.enqueue_scheduled_jobs()
            finally:
                self.scheduler.release_locks()
                self.scheduler.register_death()
        else:
            self.scheduler.start()

    def _ride_out(self, what: str, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except redis.RedisError as exc:
            log.warning("worker %s could not %s: Redis unavailable (%s)", self.name, what, describe(exc))
            return None


def describe(exc: BaseException) -> str:
    """An exception as a log line shows it: its type, and its message when it has one."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
