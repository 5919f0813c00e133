"""``remediator worker --processes N``: N work processes under one command (rq's WorkerPool).

rq's pool forks its work processes and rebuilds each one's Redis client from a copy of its own pool's
settings, then runs its plain Worker. Here each process builds its client the remediator's way
(``remediator.connections``: Sentinel-aware) and runs ``work_until_stopped``, the same loop as a
single ``remediator worker``. The pool restarts a process that died; on SIGTERM or SIGINT it tells
every process to stop after its job in hand (rq's warm shutdown) and exits once all have.

One scheduler: every process asks for the queue's scheduler lock, one gets it. One sweeper: it runs in
the command's own process (``workers.runner.run_worker``), not in each work process.
"""

from __future__ import annotations

import logging
import signal
from multiprocessing import get_context
from multiprocessing.process import BaseProcess

import redis
from rq.worker_pool import WorkerPool

from remediator.config import Settings

log = logging.getLogger("remediator.worker")


class RemediatorWorkerPool(WorkerPool):
    def __init__(
        self, settings: Settings, connection: redis.Redis, processes: int, name_prefix: str | None = None
    ) -> None:
        from workers.rq_worker import RemediatorWorker

        self.settings = settings
        self.name_prefix = name_prefix
        super().__init__([settings.queue], connection, num_workers=processes, worker_class=RemediatorWorker)

    def get_worker_process(
        self, name: str, burst: bool, _sleep: float = 0, logging_level: str = "INFO"
    ) -> BaseProcess:
        if self.name_prefix:
            name = f"{self.name_prefix}-{name[:8]}"
        return get_context("fork").Process(
            target=work_process, args=(self.settings, name, burst), name=f"remediator worker {name}"
        )


def work_process(settings: Settings, name: str, burst: bool) -> None:
    """One work process of the pool: its own Redis client, then the work loop until told to stop."""
    # Forked from the pool, it inherited the pool's handlers (which signal every sibling): a signal
    # here stops this process alone, until the work loop installs rq's warm shutdown.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from workers.runner import work_until_stopped, worker_connection

    work_until_stopped(settings, worker_connection(settings), burst=burst, name=name)
