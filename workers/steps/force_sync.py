"""Runbook Option 1: force a sync through the coordinator; verified when last_sync advances."""

from __future__ import annotations

import time

from remediator.exceptions import CoordinatorError
from workers.steps.base import LadderRun, StepOutcome, Verdict

MUTATES = True


def run(lad: LadderRun) -> StepOutcome:
    record = lad.ctx.coordinator.host(lad.host_id)
    baseline = record.last_sync if record else None
    lad.remember(force_sync_baseline=baseline, force_sync_at=time.time())
    if lad.dry_run:
        return StepOutcome("ran", "would POST /sync/hosts/<host>/sync {force: true}", {"last_sync": baseline})
    lad.ctx.coordinator.force_sync(lad.host_id)
    return StepOutcome("ran", "sync requested", {"last_sync_before": baseline})


def verify(lad: LadderRun) -> Verdict:
    scratch = lad.scratch
    baseline = scratch.get("force_sync_baseline") or 0.0
    try:
        record = lad.ctx.coordinator.host(lad.host_id)
    except CoordinatorError as exc:
        return Verdict("pending", f"coordinator unavailable: {exc}")
    if record is None:
        return Verdict("failed", "host no longer known to the coordinator")
    evidence = {"last_sync_before": baseline, "last_sync": record.last_sync, "state": record.state}
    if record.last_sync and record.last_sync > baseline and record.state != "critical" and not record.retired:
        return Verdict("ok", "last_sync advanced and the host left critical", evidence, final="healthy")
    return Verdict("pending", "last_sync has not advanced yet", evidence)
