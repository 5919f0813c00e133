"""The rules engine: which alerts start a ladder, its limits, when to page, pause or hold, and retirement.

Load with ``load_rules(path)`` (None: the shipped ``rules/default.yaml``), or keep a file's current
rules with ``RulesWatcher(path).current()``. See docs/rules.md for the file format and the facts.
"""

from remediator.rules.conditions import evaluate
from remediator.rules.facts import FACTS, FactSpec
from remediator.rules.loader import default_rules_path, load_rules, parse_rules
from remediator.rules.ruleset import Decision, RuleSet
from remediator.rules.types import (
    Action,
    AllOf,
    AnyOf,
    Comparison,
    Condition,
    FleetPolicy,
    IncidentPolicy,
    LadderLimit,
    LadderPolicy,
    Not,
    PageAction,
    PagingPolicy,
    RetirementPolicy,
    Rule,
)
from remediator.rules.watcher import RulesWatcher

__all__ = [
    "FACTS",
    "Action",
    "AllOf",
    "AnyOf",
    "Comparison",
    "Condition",
    "Decision",
    "FactSpec",
    "FleetPolicy",
    "IncidentPolicy",
    "LadderLimit",
    "LadderPolicy",
    "Not",
    "PageAction",
    "PagingPolicy",
    "RetirementPolicy",
    "Rule",
    "RuleSet",
    "RulesWatcher",
    "default_rules_path",
    "evaluate",
    "load_rules",
    "parse_rules",
]
