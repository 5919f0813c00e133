"""Hand over to a human: page (once per incident) with what was tried, found and recovered."""

from __future__ import annotations

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
    results = []
    pages = [p for p in decision.pages if p.scope == "host"]
    for page in pages:
        results.append(
            open_incident(
                lad.ctx.conn,
                lad.ctx.settings,
                dedup_key=f"remediator/{lad.host_id}/{lad.ladder_id}",
                summary=f"{page.summary}: {lad.host_id}: {reason}",
                severity=page.severity,
                targets=page.to or None,
                hosts=(lad.host_id,),
                details=details,
                rule=page.rule,
            )
        )
        break  # one page per ladder incident, whatever number of rules matched
    if not pages:
        # The rules chose no page for an escalation: still put it on record, never drop it silently.
        results.append(
            open_incident(
                lad.ctx.conn,
                lad.ctx.settings,
                dedup_key=f"remediator/{lad.host_id}/{lad.ladder_id}",
                summary=f"remediation escalated: {lad.host_id}: {reason}",
                severity="critical",
                targets=None,
                hosts=(lad.host_id,),
                details=details,
                rule="(no rule matched)",
            )
        )
    return StepOutcome(
        "ran", f"escalated to a human: {reason}", {"rules_matched": list(decision.matched), "pages": results}
    )


def verify(lad: LadderRun) -> Verdict:
    final = "recovered" if lad.scratch.get("recovered_games") else "escalated"
    return Verdict("ok", "a human has been paged", final=final)
