"""Hand over to a human: page (once per incident) with what was tried, found and recovered.

"Paged" means a pager answered 2xx: a page no pager took fails the step (it is tried again), and a
worker killed while delivering leaves the page pending, which verification delivers under the same
dedup key. While a storm is open, the host is added to the storm's page instead of a page of its own.
"""

from __future__ import annotations

from remediator import paging
from remediator.paging import PageState
from remediator.states import Outcome
from workers.fleet import page_host
from workers.steps.base import Check, LadderRun, StepOutcome, StepResult, Verdict, VerifyWait
from workers.steps.retire import checklist

MUTATES = False
SINGLE_ATTEMPT = False
VERIFY_WAIT: VerifyWait = "none"
# A page another worker is delivering (or one killed while delivering it held) is waited for until
# its delivery lock expires, then delivered again.
VERIFY_TIMEOUT: float | None = 2 * paging.DELIVERY_LOCK_TTL
PRECONDITIONS: tuple[str, ...] = ()


def _reason(lad: LadderRun) -> str:
    return lad.scratch.get("escalation_reason") or "the ladder could not restore sync"


def _page(lad: LadderRun) -> paging.PageResult:
    scratch = lad.scratch
    reason = _reason(lad)
    facts = {
        **lad.facts,
        "ladder_step": "escalate",
        "ladder_outcome": "escalated",
        "recovered_games": scratch.get("recovered_games", 0),
        "checklist_complete": bool(scratch.get("checklist_complete")),
    }
    decision = lad.ctx.rules.decide(facts)
    # One page per incident, whatever number of rules matched. When the rules chose none, the
    # escalation is still put on record and sent to every configured pager: never dropped silently.
    page = next((p for p in decision.pages if p.scope == "host"), None)
    lad.remember(rules_matched=list(decision.matched))
    return page_host(
        lad.ctx,
        lad.host_id,
        lad.incident_id or lad.ladder_id,
        summary=f"{page.summary if page else 'remediation escalated'}: {lad.host_id}: {reason}",
        severity=page.severity if page else "critical",
        targets=(page.to or None) if page else None,
        details={
            "reason": reason,
            "tried": scratch.get("tried", []),
            "facts": lad.facts,
            "checklist": checklist(lad),
            "recovered_games": scratch.get("recovered_games"),
            "ladder_id": lad.ladder_id,
            "incident_id": lad.incident_id,
        },
        rule=page.rule if page else "(no rule matched)",
        host_state=f"escalated: {reason}",
    )


def run(lad: LadderRun) -> StepOutcome:
    reason = _reason(lad)
    if lad.dry_run:
        decision = lad.ctx.rules.decide({**lad.facts, "ladder_outcome": "escalated"})
        return StepOutcome(StepResult.RAN, f"would page: {reason}", {"rules_matched": list(decision.matched)})
    result = _page(lad)
    lad.remember(page=result.dedup_key, paged=result.paged)
    evidence = {"rules_matched": lad.scratch.get("rules_matched"), "pages": [result.as_dict()]}
    if result.paged:
        return StepOutcome(StepResult.RAN, f"escalated to a human (paged): {reason}", evidence)
    if result.state == PageState.UNDELIVERABLE:
        return StepOutcome(
            StepResult.RAN,
            f"escalated; no pager is configured, on record in the log only: {reason}",
            evidence,
        )
    if result.reason == "being delivered":
        return StepOutcome(StepResult.RAN, f"escalating: the page is being delivered: {reason}", evidence)
    # Not "escalated": nobody was woken. The step is tried again (attempts_per_step) under the same
    # dedup key, and a later step's page does not find it "already open".
    return StepOutcome(StepResult.FAILED, f"could not reach a human ({result.reason}): {reason}", evidence)


def verify(lad: LadderRun) -> Verdict:
    final = Outcome.RECOVERED if lad.scratch.get("recovered_games") else Outcome.ESCALATED
    if lad.dry_run:
        return Verdict(Check.OK, "dry run: nobody was paged", final=final)
    key = lad.scratch.get("page")
    record = paging.get(lad.ctx.conn, key) if key else None
    if record is None or not (record.paged or record.state == PageState.UNDELIVERABLE):
        # Killed while delivering, or delivered by another caller meanwhile: deliver under the same key.
        result = _page(lad)
        lad.remember(page=result.dedup_key, paged=result.paged)
        if result.reason == "being delivered":
            return Verdict(Check.PENDING, "the page is being delivered", {"page": result.as_dict()})
        if not result.paged and result.state != PageState.UNDELIVERABLE:
            return Verdict(
                Check.FAILED, f"could not reach a human ({result.reason})", {"page": result.as_dict()}
            )
        record = paging.get(lad.ctx.conn, result.dedup_key)
    if record is not None and record.state == PageState.UNDELIVERABLE:
        return Verdict(
            Check.OK, "no pager is configured: the escalation is on record in the log only", final=final
        )
    return Verdict(Check.OK, "a human has been paged", {"page": key}, final=final)
