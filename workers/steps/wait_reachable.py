"""Unreachable host whose instance still runs: never retire; re-check on a schedule, then escalate."""

from __future__ import annotations

import time

from remediator.exceptions import SSHError
from remediator.ssh import HostSession
from workers.steps.base import LadderRun, StepOutcome, Verdict

MUTATES = False


def run(lad: LadderRun) -> StepOutcome:
    since = lad.scratch.get("unreachable_since") or time.time()
    lad.remember(unreachable_since=since)
    return StepOutcome(
        "ran",
        "host unreachable but its instance runs: waiting for it to come back",
        {"ssh_error": lad.diagnosis.get("ssh_error"), "cloud_state": lad.facts.get("cloud_state")},
    )


def verify(lad: LadderRun) -> Verdict:
    record = lad.record
    if record is None:
        return Verdict("failed", "no host record")
    try:
        with HostSession(lad.ctx.settings, record) as session:
            session.run("echo OK", timeout=lad.ctx.settings.ssh_connect_timeout)
    except SSHError as exc:
        waited = time.time() - (lad.scratch.get("unreachable_since") or time.time())
        limit = lad.ctx.rules.ladder.unreachable_escalate_after_minutes * 60
        evidence = {"ssh_error": str(exc), "waited_seconds": round(waited, 1)}
        if waited >= limit:
            return Verdict("failed", f"still unreachable after {waited / 60:.1f} min", evidence)
        return Verdict("pending", "still unreachable; re-check scheduled", evidence)
    return Verdict("ok", "host reachable again: diagnosing afresh", final="rediagnose")
