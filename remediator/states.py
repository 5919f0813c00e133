"""The vocabulary of an incident: the states it moves through and the outcomes its ladders end with.

Shared by the workers (which end ladders), the incidents (which move on from them), the rules (which
may match on an outcome) and the learning statistics; strings in Redis, the API and the audit trail,
``StrEnum`` in the code (as rq's ``JobStatus``).
"""

from __future__ import annotations

from enum import StrEnum


class IncidentState(StrEnum):
    OPEN = "open"
    REMEDIATING = "remediating"
    HELD = "held"
    MONITORING = "monitoring"
    RESOLVED = "resolved"


class Outcome(StrEnum):
    """A ladder's end, as the host hash, the audit trail and the API show it."""

    HEALTHY = "healthy"  # the host syncs again (or was healthy to begin with)
    RECOVERED = "recovered"  # its unsynced games were copied off and imported; a human takes over
    ESCALATED = "escalated"  # a human has been paged
    RETIRED = "retired"  # the host was retired, its loss documented
    STOPPED = "stopped"  # the alert resolved or a human closed the incident
    FAILED = "failed"  # the ladder could not act (unknown host, exhausted without a page)
    PREVENTED = "prevented"  # a warning's ladder healed the host before it went critical
    PREVENTION_FAILED = "prevention-failed"  # a warning's ladder could not help; the critical one may
    DRY_RUN = "dry-run"  # the plan was recorded; nothing was changed


HEALED_OUTCOMES = frozenset({Outcome.HEALTHY, Outcome.PREVENTED})  # the host syncs again
# After these the host waits for a human: re-sends start nothing.
HOLDING_OUTCOMES = frozenset({Outcome.ESCALATED, Outcome.FAILED, Outcome.RECOVERED, Outcome.RETIRED})


def state_after(outcome: str, *, global_dry_run: bool) -> IncidentState:
    """Where an incident goes when one of its ladders ends with ``outcome``.

    A one-off dry run (a human's ``remediate --dry-run``) leaves the incident open, so a real alert
    still acts; in a dry-run deployment a dry-run ladder holds it like an escalation (re-sends would
    otherwise diagnose the host again and again)."""
    if outcome == Outcome.STOPPED:
        return IncidentState.RESOLVED
    if outcome in HEALED_OUTCOMES:
        return IncidentState.MONITORING
    if outcome in HOLDING_OUTCOMES or (outcome == Outcome.DRY_RUN and global_dry_run):
        return IncidentState.HELD
    return IncidentState.OPEN
