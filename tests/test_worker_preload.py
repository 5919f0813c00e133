"""The worker imports everything its threads would import lazily before RQ forks a work horse.

A fork while another thread holds a module's import lock (the sweeper's first ``clients_for`` imports
providers, netcheck, pagers, ...) leaves the work horse a half-imported module whose lock nobody
releases: its job blocks forever on that import (seen in test_ladder_e2e's worker-kill test).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


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
