"""A loaded rules file (``RuleSet``) and what it decides for a set of facts (``Decision``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from remediator.rules import types
from remediator.rules.conditions import evaluate


@dataclass(frozen=True)
class Decision(types.Switches):
    """What the rules decided for one set of facts: the union of every matching rule's ``then``."""

    matched: tuple[str, ...] = ()
    pages: tuple[types.PageAction, ...] = ()
    pause_selfplay: bool = False
    resume_selfplay: bool = False


@dataclass(frozen=True)
class RuleSet:
    """A loaded, checked rules file and the questions the receiver, ladder and fleet view ask it."""

    source: str
    start_ladder: frozenset[str]
    fleet_only: frozenset[str]
    ladder: types.LadderPolicy
    fleet: types.FleetPolicy
    retirement: types.RetirementPolicy
    rules: tuple[types.Rule, ...]
    incident: types.IncidentPolicy = field(default_factory=types.IncidentPolicy)
    paging: types.PagingPolicy = field(default_factory=types.PagingPolicy)
    hold_alerts: frozenset[str] = frozenset()
    prevent_alerts: frozenset[str] = frozenset()
    prevention: types.PreventionPolicy = field(default_factory=types.PreventionPolicy)
    budget: tuple[types.BudgetLimit, ...] = ()
    approval: types.ApprovalPolicy = field(default_factory=types.ApprovalPolicy)
    silences: types.SilencePolicy = field(default_factory=types.SilencePolicy)
    probe: types.ProbePolicy = field(default_factory=types.ProbePolicy)
    learning: types.LearningPolicy = field(default_factory=types.LearningPolicy)

    def starts_ladder(self, alertname: str) -> bool:
        """Whether this alertname starts a per-host ladder."""
        return alertname in self.start_ladder

    def feeds_fleet(self, alertname: str) -> bool:
        """Whether this alertname only feeds the fleet view (``alerts.fleet_only``): it starts no ladder."""
        return alertname in self.fleet_only

    def prevents(self, alertname: str) -> bool:
        """Whether this alertname is a warning that starts a gentle ladder (``alerts.prevent``)."""
        return alertname in self.prevent_alerts

    def holds(self, alertname: str) -> bool:
        """Whether this alertname holds mutating steps while it fires (``alerts.hold``: maintenance)."""
        return alertname in self.hold_alerts

    def needs_approval(self, step: str, facts: Mapping[str, Any]) -> bool:
        """Whether ``step`` waits for a human yes, for a host with these facts."""
        if step == "retire" and not self.retirement.automatic:
            return False  # the step only documents and declines: nothing irreversible to approve
        if step in self.approval.steps:
            return True
        limit = self.approval.recover_data_over_bytes
        return step == "recover_data" and limit is not None and int(facts.get("unsynced_bytes") or 0) > limit

    def may_retire(self, facts: Mapping[str, Any]) -> bool:
        """Whether the ladder may retire the host by itself: retirement is automatic and `when` holds."""
        return self.retirement.automatic and evaluate(self.retirement.when, facts)

    def decide(self, facts: Mapping[str, Any]) -> Decision:
        """Evaluate every rule against ``facts`` and merge the actions of those that hold, in file order."""
        matched = [rule for rule in self.rules if evaluate(rule.when, facts)]
        actions = [rule.then for rule in matched]
        return Decision(
            matched=tuple(rule.name for rule in matched),
            pages=tuple(action.page for action in actions if action.page is not None),
            pause_selfplay=any(action.pause_selfplay for action in actions),
            resume_selfplay=any(action.resume_selfplay for action in actions),
            hold_ladders=any(action.hold_ladders for action in actions),
            check_network=any(action.check_network for action in actions),
            check_provider=any(action.check_provider for action in actions),
        )
