"""The worker's background loops (the sweeper with the incident monitor, and the fleet probe) in a
process of their own, started with ``spawn``.

rq forks a work horse for every job. A fork copies only the forking thread: any lock another thread
of the parent held at that moment (the rules watcher's, a logging handler's, an import's, a Redis
pool's) stays held for ever in the child, whose job then hangs. With the loops in their own process
the RQ worker process has no thread of ours when it forks. ``spawn`` (not fork) starts the loops'
process from a fresh interpreter, so it inherits no lock either.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from remediator.config import Settings

if TYPE_CHECKING:
    import redis

log = logging.getLogger("remediator.worker")

PARENT_CHECK_INTERVAL = 1.0  # seconds between two looks at whether the worker process is still there
STOP_TIMEOUT = 15.0  # seconds the loops get to finish the pass in hand when the worker stops


def run_loops(settings: Settings, parent: int) -> None:
    """The background process: sweeper, monitor and probe until SIGTERM, or until the worker is gone."""
    from remediator.logs import configure_logging
    from workers.probe import Prober
    from workers.sweeper import Sweeper

    configure_logging(settings.log_level, settings.secrets())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when its loops stop
    sweeper = Sweeper(_connect(settings), settings)
    prober = Prober(_connect(settings), settings)  # the fleet probe, if the rules enable it
    sweeper.start()
    prober.start()
    while not stop.wait(PARENT_CHECK_INTERVAL):
        if os.getppid() != parent:  # the worker was killed (SIGKILL leaves no chance to stop us)
            break
    sweeper.stop()
    prober.stop()


def _connect(settings: Settings) -> redis.Redis:
    from remediator.connections import redis_from_settings

    conn = redis_from_settings(settings)
    assert conn is not None  # the worker that started the loops connected with the same settings
    return conn


def start(settings: Settings) -> BaseProcess:
    """Start the loops' process; returns it (``stop`` it when the worker stops)."""
    context = multiprocessing.get_context("spawn")
    process = context.Process(
        target=run_loops, args=(settings, os.getpid()), name="remediator-background", daemon=True
    )
    process.start()
    return process


def stop(process: BaseProcess | None) -> None:
    if process is None or not process.is_alive():
        return
    process.terminate()  # SIGTERM: the loops finish the pass in hand
    process.join(STOP_TIMEOUT)
    if process.is_alive():
        log.warning("background loops did not stop within %ss; killing them", STOP_TIMEOUT)
        process.kill()
        process.join()
