"""Hand over to a human: page (once per incident) with what was tried, found and recovered."""

from __future__ import annotations

from remediator.pagers import EVERY_PAGER_FAILED
from remediator.paging import open_incident
from workers.steps.base import LadderRun, StepOutcome, Verdict
from workers.steps.retire import checklist

MUTATES = False


def run(lad: LadderRun) -> StepOutcome:
    scratch = lad.scratch
    reason = scratch.get("escalation_reason") or "the ladder could not restore sync"
    facts = {
        **lad.facts,
        "ladder_step": "escalate",
        "ladder_outcome": "escalated",
        "recovered_games": scratch.get("recovered_games", 0),
        "checklist_complete": bool(scratch.get("checklist_complete")),
    }
    decision = lad.ctx.rules.decide(facts)
    details = {
        "reason": reason,
        "tried": scratch.get("tried", []),
        "facts": lad.facts,
        "checklist": checklist(lad),
        "recovered_games": scratch.get("recovered_games"),
        "ladder_id": lad.ladder_id,
    }
    if lad.dry_run:
        return StepOutcome("ran", f"would page: {reason}", {"rules_matched": list(decision.matched)})
    # One page per ladder incident, whatever number of rules matched. When the rules chose none, the
    # escalation is still put on record and sent to every configured pager: never dropped silently.
    page = next((p for p in decision.pages if p.scope == "host"), None)
    result = open_incident(
        lad.ctx.conn,
        lad.ctx.settings,
        dedup_key=f"remediator/{lad.host_id}/{lad.ladder_id}",
        summary=f"{page.summary if page else 'remediation escalated'}: {lad.host_id}: {reason}",
        severity=page.severity if page else "critical",
        targets=(page.to or None) if page else None,
        hosts=(lad.host_id,),
        details=details,
        rule=page.rule if page else "(no rule matched)",
    )
    evidence = {"rules_matched": list(decision.matched), "pages": [result]}
    if result.get("reason") == EVERY_PAGER_FAILED:
        # Not "escalated": nobody was woken. The step is tried again (attempts_per_step), and the
        # incident was released so each attempt pages anew.
        return StepOutcome("failed", f"could not reach a human ({EVERY_PAGER_FAILED}): {reason}", evidence)
    lad.remember(paged=bool(result.get("paged")))
    return StepOutcome("ran", f"escalated to a human: {reason}", evidence)


def verify(lad: LadderRun) -> Verdict:
    final = "recovered" if lad.scratch.get("recovered_games") else "escalated"
    if lad.scratch.get("paged") is False:
        return Verdict(
            "ok", "no pager is configured: the escalation is on record in the log only", final=final
        )
    return Verdict("ok", "a human has been paged", final=final)
