"""RQ job functions: top-level and context-free (everything comes from the environment and Redis)."""

from __future__ import annotations

import logging
from typing import Any

from remediator.exceptions import CoordinatorError
from remediator.intake import LadderRequest, start_ladders
from remediator.ops import ladder_limit
from workers.context import Context
from workers.ladder import Ladder

log = logging.getLogger("remediator.worker")


def run_ladder(host_id: str, ladder_id: str) -> str:
    """Advance host ``host_id``'s ladder ``ladder_id`` as far as it can go without waiting."""
    ctx = Context.current()
    result = Ladder(ctx, host_id, ladder_id).advance()
    log.info(
        "ladder advanced: %s",
        result,
        extra={"host_id": host_id, "ladder_id": ladder_id, "job_id": ctx.job_id},
    )
    return result


def discover(ladder_id: str, dry_run: bool = False) -> dict[str, Any]:
    """Runbook Diagnosis 1: ask the coordinator which hosts are critical; start one ladder each."""
    from remediator import keys
    from remediator.intake import DISCOVERY

    ctx = Context.current()
    try:
        try:
            hosts = ctx.coordinator.hosts()
        except CoordinatorError as exc:
            log.error("discovery %s: coordinator unavailable: %s", ladder_id, exc)
            raise
        critical = sorted(h for h, r in hosts.items() if r.state == "critical")
        result = start_ladders(
            ctx.conn,
            ctx.settings.queue,
            [
                LadderRequest(
                    host_id=h,
                    reason=f"discovered critical by {ladder_id}",
                    alertname="CriticalSyncHosts",
                    dry_run=dry_run or ctx.dry_run,
                )
                for h in critical
            ],
            ladder_limit(ctx.rules),
        )
        return {"critical": critical, "accepted": result.accepted, "skipped": result.skipped}
    finally:
        ctx.conn.delete(keys.ACTIVE.format(DISCOVERY))
