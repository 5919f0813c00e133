"""Runbook Option 4: unretire a host that is reachable again, then let it re-sync."""

from __future__ import annotations

from workers.steps import force_sync
from workers.steps.base import LadderRun, StepOutcome, StepResult, Verdict, VerifyWait

MUTATES = True
SINGLE_ATTEMPT = False
VERIFY_WAIT: VerifyWait = "verify"
VERIFY_TIMEOUT: float | None = None
PRECONDITIONS: tuple[str, ...] = ("host_retired", "ssh_reachable")


def run(lad: LadderRun) -> StepOutcome:
    if lad.dry_run:
        return StepOutcome(StepResult.RAN, "would POST /admin/unretire, then force a sync")
    lad.guard()
    lad.ctx.coordinator.unretire(lad.host_id)
    outcome = force_sync.run(lad)
    return StepOutcome(StepResult.RAN, "unretired; sync requested", outcome.evidence)


def verify(lad: LadderRun) -> Verdict:
    return force_sync.verify(lad)
