"""``remediator worker``: RQ workers on the remediator's queue, with the scheduler and the sweeper.

One process by default; ``--processes N`` runs N work processes under one command (rq's WorkerPool),
with one sweeper in the command's own process. Either way SIGTERM (or SIGINT) is rq's warm shutdown:
each worker finishes the job in hand, then exits; a second signal cuts the job off (cold shutdown),
and the sweeper of a surviving or later worker resumes its ladder.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable
from typing import Any

import redis
from rq import Queue

from remediator import defaults
from remediator.config import Settings
from remediator.connections import redis_from_settings
from remediator.exceptions import ConfigError
from remediator.logs import configure_logging
from workers import background
from workers.rq_worker import REDIS_WAIT_MAX, RemediatorWorker, describe

log = logging.getLogger("remediator.worker")
REDIS_WAIT_MAX_BACKOFF = REDIS_WAIT_MAX  # seconds between two tries to reach Redis
# Imported before the first fork: the jobs' code, and every module a thread of this process (the
# sweeper, the incident monitor, the clients they build) would otherwise import lazily.
PRELOADED = (
    "workers.jobs",
    "workers.sweeper",
    "workers.context",
    "workers.gates",
    "workers.fleet",
    "remediator.clients",
    "remediator.clients.coordinator",
    "remediator.clients.netcheck",
    "remediator.clients.pagers",
    "remediator.clients.providers",
    "remediator.clients.ssh",
    "remediator.controls",
    "remediator.extensions",
    "remediator.incidents",
    "remediator.intake",
    "remediator.locks",
    "remediator.limits",
    "remediator.listings",
    "remediator.metrics",
    "remediator.ops",
    "remediator.paging",
    "remediator.rules",
    "remediator.silences",
)


def preload_job_code() -> None:
    """Import what jobs use before RQ starts forking: every job runs in a fresh work horse forked from
    this process, which otherwise imports asyncssh, the ladder and the vastai SDK again for each job
    (about a second here; bench/bench_first_ssh.py measured it).

    It is also what keeps a work horse from hanging for good: the sweeper thread imports lazily too
    (``remediator.clients.real_clients`` imports providers, netcheck, pagers and ssh on first use). A
    fork while that thread holds a module's import lock gives the child a half-imported module whose
    lock nobody will ever release, and the job blocks on its first import of it."""
    for module in PRELOADED:
        importlib.import_module(module)
    try:
        import vastai  # noqa: F401  (imported lazily by remediator.clients.providers)
    except ImportError:
        pass


def wait_for_redis(conn: redis.Redis, stopping: Callable[[], bool] = lambda: False) -> bool:
    """Block until Redis answers (True), or until ``stopping()`` says to give up (False).

    RQ's Worker talks to Redis as it is built, so a worker started during a Redis outage (or before
    Redis in a pod rollout, or while Sentinel has no master) would crash; it waits instead, saying so."""
    delay = 0.2
    while not stopping():
        try:
            conn.ping()
            return True
        except redis.RedisError as exc:
            log.warning("Redis unavailable (%s); retrying in %.1fs", describe(exc), delay)
            time.sleep(delay)  # no job is held while waiting
            delay = min(delay * 2, REDIS_WAIT_MAX_BACKOFF)
    return False


def worker_connection(settings: Settings) -> redis.Redis:
    """The worker's Redis client: rq sets its read timeout itself (above its blocking dequeue's)."""
    conn = redis_from_settings(settings, socket_timeout=None)
    if conn is None:
        raise ConfigError("REDIS_URL (or REDIS_SENTINELS) is not set; the worker needs Redis")
    return conn


def work_until_stopped(
    settings: Settings, conn: redis.Redis, *, burst: bool, name: str | None = None
) -> bool:
    """rq's work loop, started again after it ended on a Redis failure instead of a stop request.

    Returns whether any job was run (rq's answer), once a signal stopped the worker or, with
    ``burst``, once the queue was empty."""
    stop = {"signalled": False}

    def on_signal(_signum: int, _frame: Any) -> None:
        stop["signalled"] = True

    worked = False
    runs = 0
    while True:
        # Between two work loops (and while the next is built) a signal only stops this one.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if stop["signalled"] or not wait_for_redis(conn, lambda: stop["signalled"]):
            return worked
        runs += 1
        try:
            worker = RemediatorWorker(
                [Queue(settings.queue, connection=conn)],
                connection=conn,
                name=name if runs == 1 or name is None else f"{name}-{runs}",
                settings=settings,
                maintenance_interval=defaults.WORKER_MAINTENANCE_INTERVAL,
            )
        except redis.RedisError as exc:
            log.warning("could not register the worker (%s); trying again", describe(exc))
            continue
        worker.stopped_early = lambda: stop["signalled"]
        if stop["signalled"]:
            return worked
        try:
            worked = worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level) or worked
        except redis.RedisError as exc:
            log.warning("worker %s: Redis failed (%s)", worker.name, describe(exc))
        if burst or worker.stop_signalled:
            return worked
        log.warning("worker %s: its work loop ended on a Redis failure; starting it again", worker.name)


def run_worker(
    settings: Settings, *, burst: bool = False, name: str | None = None, processes: int = 1
) -> bool:
    """Work the queue until stopped (or, with ``burst``, until it is empty)."""
    if not settings.redis_configured:
        raise ConfigError("REDIS_URL (or REDIS_SENTINELS) is not set; the worker needs Redis")
    if processes < 1:
        raise ConfigError(f"--processes {processes}: give at least 1")
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="remediator-metrics-")
    configure_logging(settings.log_level, settings.secrets())
    preload_job_code()
    conn = worker_connection(settings)
    wait_for_redis(conn)
    # The sweeper, the incident monitor and the fleet probe run in a process of their own, so that
    # this one (which rq forks for every job) has no thread of ours to leave a lock held in a child.
    loops = None if burst else background.start(settings)
    try:
        if processes == 1:
            return work_until_stopped(settings, conn, burst=burst, name=name)
        from workers.pool import RemediatorWorkerPool

        pool = RemediatorWorkerPool(settings, conn, processes, name_prefix=name)
        pool.start(burst=burst, logging_level=settings.log_level)
        return True
    finally:
        background.stop(loops)
