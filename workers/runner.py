"""``remediator worker``: an RQ worker on the remediator's queue, with the scheduler and the sweeper."""

from __future__ import annotations

import logging
import os
import tempfile
import time

import redis
from rq import Queue, Worker

from remediator import defaults
from remediator.config import Settings
from remediator.exceptions import ConfigError
from remediator.logs import configure_logging

log = logging.getLogger("remediator.worker")
REDIS_WAIT_MAX_BACKOFF = 5.0  # seconds between two tries to reach Redis at startup


def preload_job_code() -> None:
    """Import what jobs use before RQ starts forking: every job runs in a fresh work horse forked from
    this process, which otherwise imports asyncssh, the ladder and the vastai SDK again for each job
    (about a second here; bench/bench_first_ssh.py measured it)."""
    import workers.jobs  # noqa: F401

    try:
        import vastai  # noqa: F401  (imported lazily by remediator.providers)
    except ImportError:
        pass


def wait_for_redis(conn: redis.Redis) -> None:
    """Block until Redis answers. RQ's Worker talks to Redis as it is built, so a worker started during
    a Redis outage (or before Redis in a pod rollout) would crash; it waits instead, saying so."""
    delay = 0.2
    while True:
        try:
            conn.ping()
            return
        except redis.ConnectionError as exc:
            log.warning("Redis unavailable (%s); retrying in %.1fs", type(exc).__name__, delay)
            time.sleep(delay)  # startup only: no job is held while waiting
            delay = min(delay * 2, REDIS_WAIT_MAX_BACKOFF)


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None) -> bool:
    """Work the queue until stopped (or, with ``burst``, until it is empty)."""
    if not settings.redis_url:
        raise ConfigError("REDIS_URL is not set; the worker needs Redis")
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="remediator-metrics-")
    configure_logging(settings.log_level, settings.secrets())
    preload_job_code()
    conn = redis.Redis.from_url(settings.redis_url)
    wait_for_redis(conn)
    queue = Queue(settings.queue, connection=conn)
    worker = Worker(
        [queue], connection=conn, name=name, maintenance_interval=defaults.WORKER_MAINTENANCE_INTERVAL
    )
    sweeper = None
    if not burst:
        from workers.sweeper import Sweeper

        sweeper = Sweeper(conn, settings)
        sweeper.start()
    try:
        return worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
    finally:
        if sweeper is not None:
            sweeper.stop()
