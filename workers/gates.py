"""What a mutating step must pass before it runs, in order: a fleet-wide fault the rules hold ladders
for, a freeze or maintenance hold, a human's approval, the blast-radius budget.

Each gate answers None (go on) or what the ladder does instead: ``Wait`` (a scheduled re-check; no
worker is held), ``Refuse`` (the step is not run: the ladder climbs past it) or ``Escalate`` (hand
the host to a human now). Diagnosis, the audit and pages are never gated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from remediator import controls
from remediator.paging import PageKind, page
from workers import fleet
from workers.steps.base import LadderRun


@dataclass(frozen=True)
class Wait:
    why: str
    status: str  # the host's status while it waits: held, frozen, awaiting_approval
    audit: tuple[str, str] | None = None  # (outcome, detail) to record, once per reason


@dataclass(frozen=True)
class Refuse:
    why: str


@dataclass(frozen=True)
class Escalate:
    why: str


Decision = Wait | Refuse | Escalate | None


def check(lad: LadderRun, step: str, attempt: int) -> Decision:
    """The first gate that stops ``step`` (attempt ``attempt``), or None when it may run now."""
    for gate in (fleet_hold, frozen, approval):
        decision = gate(lad, step)
        if decision is not None:
            return decision
    return budget(lad, step, attempt)


def fleet_hold(lad: LadderRun, step: str) -> Decision:
    """Runbook Escalation: while a provider or the network is down, the rules hold every ladder."""
    facts = {**lad.facts, **fleet.fleet_facts(lad.ctx)}
    decision = lad.ctx.rules.decide(facts)
    if not decision.hold_ladders:
        return None
    why = "fleet-wide fault (provider outage or network): holding"
    return Wait(why, "held", ("held", why))


def frozen(lad: LadderRun, step: str) -> Decision:
    """A freeze (the fleet's or this host's) or a firing maintenance alert holds every mutating step."""
    conn = lad.ctx.conn
    item = controls.frozen(conn, lad.host_id)
    if item is not None:
        scope = "the fleet" if item.scope == controls.FLEET else f"host {item.scope}"
        why = f"frozen ({scope}) by {item.who}: {item.reason}"
        return Wait(why, "frozen", ("frozen", why))
    maintenance = controls.holds(conn, lad.host_id)
    if maintenance:
        why = f"held while {', '.join(maintenance)} fires"
        return Wait(why, "frozen", ("frozen", why))
    return None


def approval(lad: LadderRun, step: str) -> Decision:
    """A step the rules name waits for a human yes; a no refuses it; no answer in time escalates."""
    rules = lad.ctx.rules
    if not rules.needs_approval(step, lad.facts):
        return None
    conn = lad.ctx.conn
    request, new = controls.ask(conn, lad.host_id, lad.ladder_id, step)
    if request.state == "approved":
        return None
    if request.state == "denied":
        return Refuse(f"{step} denied by {request.who}: {request.reason}")
    timeout = rules.approval.timeout_minutes * 60
    if time.time() - request.asked_at >= timeout:
        return Escalate(f"no answer to the approval of {step} within {rules.approval.timeout_minutes:g} min")
    if new:
        ask_human(lad, step)
    why = f"awaiting approval of {step}: remediator approve {lad.host_id} [--deny] --reason TEXT"
    return Wait(why, "awaiting_approval", ("awaiting-approval", why) if new else None)


def ask_human(lad: LadderRun, step: str) -> None:
    """Page with what the step would do and how to answer (the incident's one page)."""
    host = lad.host_id
    result = fleet.page_host(
        lad.ctx,
        host,
        lad.incident_id or lad.ladder_id,
        summary=f"RingRift remediation asks approval to {step} {host}",
        severity="critical",
        targets=None,
        details={
            "step": step,
            "facts": lad.facts,
            "approve": f"remediator approve {host} --reason TEXT",
            "deny": f"remediator approve {host} --deny --reason TEXT",
            "api": f'POST /api/v1/hosts/{host}/approve {{"approve": true|false, "reason": TEXT}}',
            "timeout_minutes": lad.ctx.rules.approval.timeout_minutes,
        },
        rule="(approval)",
        host_state=f"awaiting approval of {step}",
    )
    lad.audit("approval", "requested", f"approval of {step} asked of a human", page=result.as_dict())


def budget(lad: LadderRun, step: str, attempt: int) -> Decision:
    """Spend the blast-radius budget; the action that would exceed a limit trips a fleet-wide freeze."""
    limits = lad.ctx.rules.budget
    if not limits:
        return None
    conn = lad.ctx.conn
    member = f"{lad.ladder_id}:{lad.state.rung}:{step}:{attempt}"
    tripped = controls.spend(conn, limits, step=step, host_id=lad.host_id, member=member)
    if tripped is None:
        return None
    item = controls.frozen(conn)
    why = f"frozen: budget limit {tripped.name!r} exceeded ({controls.describe(tripped)})"
    if item is not None and item.source == "budget":
        page_budget(lad, item)
    return Wait(why, "frozen", ("frozen", why))


def page_budget(lad: LadderRun, item: controls.Freeze) -> None:
    """One page per budget trip (its dedup key is the freeze's), resolved when a human unfreezes."""

    page(
        lad.ctx.conn,
        lad.ctx.settings,
        lad.ctx.rules,
        dedup_key=controls.freeze_page_key(item),
        kind=PageKind.FREEZE,
        summary=f"RingRift remediation froze itself: {item.reason}; unfreeze with `remediator unfreeze`",
        severity="critical",
        hosts={lad.host_id: "held by the budget"},
        details={"reason": item.reason, "unfreeze": "remediator unfreeze"},
        rule="(budget)",
    )
