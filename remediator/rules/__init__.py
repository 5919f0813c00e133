"""The rules engine: which alerts start a ladder, its limits, when to page, pause or hold, and retirement.

Load with ``load_rules(path)`` (None: the shipped ``rules/default.yaml``), or keep a file's current
rules with ``RulesWatcher(path).current()``. See docs/rules.md for the file format and the facts. The
condition language is exported here; the typed records of a loaded file live in ``rules.types``.
"""

from remediator.rules.conditions import evaluate
from remediator.rules.facts import FACTS, FactSpec
from remediator.rules.loader import default_rules_path, load_rules, parse_rules
from remediator.rules.ruleset import Decision, RuleSet
from remediator.rules.types import AllOf, AnyOf, Comparison, Condition, Not
from remediator.rules.watcher import RulesWatcher

__all__ = [
    "FACTS",
    "AllOf",
    "AnyOf",
    "Comparison",
    "Condition",
    "Decision",
    "FactSpec",
    "Not",
    "RuleSet",
    "RulesWatcher",
    "default_rules_path",
    "evaluate",
    "load_rules",
    "parse_rules",
]
