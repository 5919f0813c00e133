"""The worker imports everything its threads would import lazily before RQ forks a work horse.

A fork while another thread holds a module's import lock (the sweeper's first ``clients_for`` imports
providers, netcheck, pagers, ...) leaves the work horse a half-imported module whose lock nobody
releases: its job blocks forever on that import (seen in test_ladder_e2e's worker-kill test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path


def test_after_the_preload_the_sweeper_paths_import_nothing_new(redis_url: str) -> None:
    script = textwrap.dedent(f"""
        import json, sys
        from workers.runner import preload_job_code
        preload_job_code()
        before = set(sys.modules)
        import redis
        from remediator.clients import clients_for
        from remediator.config import Settings
        from workers.context import Context
        from workers.sweeper import sweep
        settings = Settings(redis_url={redis_url!r}, coordinator_url="http://127.0.0.1:9")
        clients = clients_for(settings)
        clients.providers(), clients.pagers()
        Context(settings, redis.Redis.from_url({redis_url!r})).rules
        sweep(redis.Redis.from_url({redis_url!r}), settings)
        print(json.dumps(sorted(m for m in set(sys.modules) - before
                                if m.startswith(("remediator", "workers", "asyncssh", "vastai")))))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_a_work_horse_inherits_the_rules_loaded_by_its_worker(redis_url: str) -> None:
    """The worker loads the rules before it forks each job's work horse: parsing the YAML and building
    the JSON schema validator in every horse was a third of a ladder job's CPU time in a storm. The
    job reports whether the rules were loaded in its process before it ran (a fresh interpreter, so
    nothing a test loaded before can answer for the worker)."""
    script = textwrap.dedent(f"""
        import json, redis
        from rq import Queue
        from remediator.config import Settings
        from workers.rq_worker import RemediatorWorker
        conn = redis.Redis.from_url({redis_url!r})
        queue = Queue("preload-rules", connection=conn)
        job = queue.enqueue("test_worker_preload.rules_loaded_before_the_job")
        settings = Settings(redis_url={redis_url!r})
        RemediatorWorker([queue], connection=conn, settings=settings).work(burst=True)
        job.refresh()
        print(json.dumps([job.get_status().value, job.return_value()]))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["finished", True]


def rules_loaded_before_the_job() -> bool:
    from remediator.config import Settings
    from remediator.rules import watcher
    from workers.context import rules_for

    loads: list[object] = []
    original = watcher.load_rules  # what a RulesWatcher loads with
    watcher.load_rules = lambda *args, **kwargs: loads.append(args) or original(*args, **kwargs)
    try:
        rules_for(Settings.from_env())
    finally:
        watcher.load_rules = original
    return not loads


def test_a_sigterm_in_the_scheduler_s_first_moments_stops_it(redis_url: str) -> None:
    """The scheduler process is forked from a worker whose SIGTERM handler only notes the signal (the
    runner's, before rq's are in place). A SIGTERM sent to it as soon as it is forked -- a process
    group killed as the worker starts -- was swallowed by that inherited handler: the scheduler ran
    on, and the worker's warm shutdown waited for it for ever (seen in test_serve). Here it stops."""
    script = textwrap.dedent(f"""
        import json, os, signal, redis
        from remediator.config import Settings
        from workers.rq_worker import RemediatorScheduler
        signal.signal(signal.SIGTERM, lambda *_: None)  # as the runner's: notes the signal, no more
        settings = Settings(redis_url={redis_url!r})
        conn = redis.Redis.from_url({redis_url!r})
        stopped = []
        for _ in range(5):
            scheduler = RemediatorScheduler(["first-moments"], connection=conn, settings=settings)
            process = scheduler.start()
            os.kill(process.pid, signal.SIGTERM)
            process.join(20)
            stopped.append(not process.is_alive())
            if process.is_alive():
                process.kill()
        print(json.dumps(stopped))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [True] * 5
