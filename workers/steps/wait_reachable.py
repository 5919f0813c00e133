"""Unreachable host whose instance is not known to be gone: never retire; re-check on a schedule, then
escalate. "Not known to be gone" includes an instance whose state is unknown because the provider's
answer was unusable: what the provider failed to say is carried into the step's detail and evidence,
and so into the escalation's reason and page.

Also the wait of a ladder whose diagnosis got no host record because the coordinator did not answer
(5xx, timeouts): the host's state is unknown, not "unreachable", so it is re-checked the same way and
diagnosed afresh once the coordinator answers again.
"""

from __future__ import annotations

import time

from remediator.exceptions import CoordinatorError, SSHError
from workers.diagnose import answered
from workers.steps.base import Check, LadderRun, StepOutcome, StepResult, Verdict, VerifyWait

MUTATES = False
SINGLE_ATTEMPT = True
VERIFY_WAIT: VerifyWait = "recheck"
VERIFY_TIMEOUT: float | None = float("inf")
PRECONDITIONS: tuple[str, ...] = ()


def run(lad: LadderRun) -> StepOutcome:
    since = lad.scratch.get("unreachable_since") or time.time()
    lad.remember(unreachable_since=since)
    if lad.record is None:
        return StepOutcome(
            StepResult.RAN,
            "coordinator unavailable during diagnosis: waiting to diagnose again",
            {"coordinator_error": (lad.diagnosis.get("sources") or {}).get("coordinator")},
        )
    return StepOutcome(
        StepResult.RAN,
        f"host unreachable and {_instance(lad)}: waiting for it to come back",
        {
            "ssh_error": lad.diagnosis.get("ssh_error"),
            "cloud_state": lad.facts.get("cloud_state"),
            "cloud_detail": lad.diagnosis.get("cloud_detail"),
        },
    )


def _instance(lad: LadderRun) -> str:
    """What diagnosis learnt of the host's instance, in words (with the reason when it learnt nothing)."""
    state = lad.facts.get("cloud_state") or "not_asked"
    detail = lad.diagnosis.get("cloud_detail") or ""
    if state == "running":
        return "its instance runs"
    if state == "unknown":
        return f"its instance state is unknown ({detail})" if detail else "its instance state is unknown"
    if state == "not_asked":
        return "its instance state was not asked"
    return f"its instance is {state}"


def verify(lad: LadderRun) -> Verdict:
    paced = _paced(lad)
    if paced is not None:
        return paced
    record = lad.record
    if record is None:
        try:
            lad.ctx.coordinator.host(lad.host_id)
        except CoordinatorError as exc:
            return _still_waiting(lad, "coordinator", {"coordinator_error": str(exc)})
        return _back(lad, "coordinator", "coordinator answers again: diagnosing afresh")
    try:
        with lad.ctx.clients.ssh(record) as session:
            echo = session.run("echo OK", timeout=lad.ctx.settings.ssh_connect_timeout)
    except SSHError as exc:
        evidence: dict[str, object] = {"ssh_error": str(exc)}
        if lad.facts.get("cloud_state") == "unknown":
            evidence["cloud_detail"] = lad.diagnosis.get("cloud_detail")
        return _still_waiting(lad, "host", evidence, also=f"; {_instance(lad)}")
    if not answered(echo):  # the test diagnosis applies, or the two would send each other back and forth
        return _still_waiting(
            lad, "host", {"ssh_error": f"echo OK: exit {echo.exit_status}, no OK"}, also=f"; {_instance(lad)}"
        )
    return _back(lad, "host", "host reachable again: diagnosing afresh")


def _paced(lad: LadderRun) -> Verdict | None:
    """At most one re-check per recheck interval. After a re-diagnosis that finds the host unreachable
    again, this step's attempt is already claimed and the ladder comes straight here: without this, a
    host that answers the re-check but not the diagnosis is checked in a tight loop."""
    last = lad.scratch.get("rechecked_at")
    if last is not None and time.time() - float(last) < lad.ctx.rules.ladder.recheck_interval_seconds:
        return Verdict(Check.PENDING, "re-checked less than a recheck interval ago; re-check scheduled")
    lad.remember(rechecked_at=time.time())
    return None


def _back(lad: LadderRun, what: str, detail: str) -> Verdict:
    """Reachable again: diagnose afresh -- unless no diagnosis has reached it for longer than the rules'
    limit (a host that answers one check and drops again before the next diagnosis, over and over)."""
    waited = time.time() - (lad.scratch.get("unreachable_since") or time.time())
    if waited >= lad.ctx.rules.ladder.unreachable_escalate_after_minutes * 60:
        return Verdict(
            Check.FAILED,
            f"{what} answers a re-check, but no diagnosis has reached it for {waited / 60:.1f} min",
            {"waited_seconds": round(waited, 1)},
        )
    return Verdict(Check.OK, detail, rediagnose=True)


def _still_waiting(lad: LadderRun, what: str, evidence: dict[str, object], also: str = "") -> Verdict:
    """Pending until the rules' unreachable limit has passed, then failed (the ladder escalates, and
    the failed verdict's detail, ``also`` included, becomes the escalation's reason)."""
    waited = time.time() - (lad.scratch.get("unreachable_since") or time.time())
    limit = lad.ctx.rules.ladder.unreachable_escalate_after_minutes * 60
    evidence = {**evidence, "waited_seconds": round(waited, 1)}
    if waited >= limit:
        return Verdict(Check.FAILED, f"{what} still unreachable after {waited / 60:.1f} min{also}", evidence)
    return Verdict(Check.PENDING, f"{what} still unreachable{also}; re-check scheduled", evidence)
