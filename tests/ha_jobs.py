"""Job functions for tests/test_connections.py, run by real ``remediator worker`` processes."""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from remediator.connections import is_sentinel_backed


def connection_kinds() -> dict[str, Any]:
    """What the running job talks to Redis through: its RQ connection and a ladder's Context."""
    from workers.context import Context

    job = get_current_job()
    assert job is not None
    return {
        "job": is_sentinel_backed(job.connection),
        "context": is_sentinel_backed(Context.current().conn),
        "db": job.connection.connection_pool.connection_kwargs.get("db"),
    }
