"""Runbook Option 1: force a sync through the coordinator; verified when last_sync advances."""

from __future__ import annotations

import time

from remediator.exceptions import CoordinatorError, CoordinatorUnavailable
from remediator.states import Outcome
from workers.steps.base import Check, LadderRun, StepOutcome, StepResult, Verdict, VerifyWait

MUTATES = True
SINGLE_ATTEMPT = False
VERIFY_WAIT: VerifyWait = "verify"
VERIFY_TIMEOUT: float | None = None
PRECONDITIONS: tuple[str, ...] = ("coordinator_state", "host_retired", "ssh_reachable", "agent_running")


def run(lad: LadderRun) -> StepOutcome:
    try:
        record = lad.ctx.coordinator.host(lad.host_id)
    except CoordinatorUnavailable as exc:
        # The coordinator is down, not the host: nothing to climb over. Verification re-checks on a
        # schedule (the agent syncs by itself once the coordinator is back); if it does not, the next
        # attempt requests the sync again.
        lad.remember(force_sync_baseline=lad.diagnosis.get("last_sync"), force_sync_at=time.time())
        return _coordinator_down(exc)
    baseline = record.last_sync if record else None
    lad.remember(force_sync_baseline=baseline, force_sync_at=time.time())
    if lad.dry_run:
        return StepOutcome(
            StepResult.RAN, "would POST /sync/hosts/<host>/sync {force: true}", {"last_sync": baseline}
        )
    lad.guard()
    try:
        lad.ctx.coordinator.force_sync(lad.host_id)
    except CoordinatorUnavailable as exc:
        return _coordinator_down(exc)
    return StepOutcome(StepResult.RAN, "sync requested", {"last_sync_before": baseline})


def _coordinator_down(exc: CoordinatorUnavailable) -> StepOutcome:
    return StepOutcome(
        StepResult.RAN,
        "coordinator unavailable: sync not requested; re-checking until the verify timeout",
        {"coordinator_error": str(exc), "sync_requested": False},
    )


def verify(lad: LadderRun) -> Verdict:
    scratch = lad.scratch
    baseline = scratch.get("force_sync_baseline") or 0.0
    try:
        record = lad.ctx.coordinator.host(lad.host_id)
    except CoordinatorError as exc:
        return Verdict(Check.PENDING, f"coordinator unavailable: {exc}")
    if record is None:
        return Verdict(Check.FAILED, "host no longer known to the coordinator")
    evidence = {"last_sync_before": baseline, "last_sync": record.last_sync, "state": record.state}
    if record.last_sync and record.last_sync > baseline and record.state != "critical" and not record.retired:
        return Verdict(
            Check.OK, "last_sync advanced and the host left critical", evidence, final=Outcome.HEALTHY
        )
    return Verdict(Check.PENDING, "last_sync has not advanced yet", evidence)
