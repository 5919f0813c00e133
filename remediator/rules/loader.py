"""Loading a rules file: YAML (safe_load, with lines) → JSON Schema → typed records → meaning checks.

Every finding names the file, the line and the key path; all findings of a phase are reported at
once so an operator fixes a file in one go (``remediator rules check``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from remediator.exceptions import RulesMeaningError, RulesSchemaError, RulesSyntaxError
from remediator.rules.facts import FACTS, FactSpec, Scope, fits, type_name
from remediator.rules.ruleset import RuleSet
from remediator.rules.schema import DEFAULT_RULES_FILE, schema_problems, shipped
from remediator.rules.source import Document, KeyPath, Problem, read_document
from remediator.rules.types import (
    OPERATORS,
    PAGER_TARGETS,
    Action,
    AllOf,
    AnyOf,
    ApprovalPolicy,
    BudgetLimit,
    Comparison,
    Condition,
    FleetPolicy,
    IncidentPolicy,
    LadderLimit,
    LadderPolicy,
    LearningPolicy,
    Not,
    PageAction,
    PagingPolicy,
    PreventionPolicy,
    ProbePolicy,
    RetirementPolicy,
    Rule,
    SilencePolicy,
)

ORDERING = ("gt", "gte", "lt", "lte")
# What retirement.when must require at its top level: the runbook retires only an unrecoverable host,
# and only once the Data Recovery Checklist is complete.
RETIREMENT_REQUIRES: tuple[tuple[str, bool], ...] = (
    ("data_recoverable", False),
    ("checklist_complete", True),
)


def default_rules_path() -> Path:
    """The shipped rules file (``rules/default.yaml`` in a checkout, packaged in a wheel)."""
    return Path(str(shipped(DEFAULT_RULES_FILE)))


def load_rules(path: str | Path | None = None) -> RuleSet:
    """Load and check the rules file at ``path`` (None: the shipped default); RulesError names the line."""
    source = str(path) if path is not None else str(default_rules_path())
    return build_rules(read_document(source))


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Load and check rules given as YAML text; ``source`` is the name errors carry."""
    return build_rules(read_document(source, text))


def build_rules(document: Document) -> RuleSet:
    """Turn a parsed document into a RuleSet, or raise RulesSchemaError / RulesMeaningError."""
    if document.data is None:
        raise RulesSyntaxError([document.problem((), "the file is empty")])
    problems = schema_problems(document)
    if problems:
        raise RulesSchemaError(problems)
    builder = _Builder(document)
    ruleset = builder.ruleset()
    if builder.problems:
        raise RulesMeaningError(sorted(builder.problems, key=lambda problem: (problem.line, problem.key)))
    return ruleset


class _Builder:
    """Builds records from schema-valid data, collecting every meaning problem on the way."""

    def __init__(self, document: Document) -> None:
        self.document = document
        self.problems: list[Problem] = []

    def fail(self, path: KeyPath, message: str) -> None:
        self.problems.append(self.document.problem(path, message))

    def ruleset(self) -> RuleSet:
        data = self.document.data
        alerts = data["alerts"]
        acted_on = set(alerts["start_ladder"]) | set(alerts["fleet_only"])
        for name in sorted(set(alerts.get("prevent", ())) & (acted_on | set(alerts.get("hold", ())))):
            index = alerts["prevent"].index(name)
            self.fail(("alerts", "prevent", index), f"{name!r} is also in another alert list: list it once")
        for name in sorted(set(alerts.get("hold", ())) & acted_on):
            index = alerts["hold"].index(name)
            self.fail(
                ("alerts", "hold", index), f"{name!r} is also in start_ladder or fleet_only; list it once"
            )
        for name in sorted(set(alerts["start_ladder"]) & set(alerts["fleet_only"])):
            index = alerts["fleet_only"].index(name)
            self.fail(("alerts", "fleet_only", index), f"{name!r} is also in start_ladder; list it once")
        return RuleSet(
            source=self.document.source,
            start_ladder=frozenset(alerts["start_ladder"]),
            fleet_only=frozenset(alerts["fleet_only"]),
            ladder=self.ladder(data["ladder"]),
            fleet=FleetPolicy(
                window_minutes=float(data["fleet"]["window_minutes"]),
                storm_threshold=int(data["fleet"]["storm_threshold"]),
            ),
            retirement=self.retirement(data["retirement"]),
            rules=self.rules(data["rules"]),
            incident=_incident_policy(data.get("incident") or {}),
            paging=_paging_policy(data.get("paging") or {}),
            hold_alerts=frozenset(alerts.get("hold", ())),
            prevent_alerts=frozenset(alerts.get("prevent", ())),
            prevention=PreventionPolicy(
                restart_agent=bool((data.get("prevention") or {}).get("restart_agent", True))
            ),
            budget=self.budget(data.get("budget") or {"limits": []}),
            approval=_approval_policy(data.get("approval") or {}),
            silences=SilencePolicy(
                enabled=bool((data.get("silences") or {}).get("enabled", False)),
                duration_minutes=float((data.get("silences") or {}).get("duration_minutes", 60)),
            ),
            probe=_probe_policy(data.get("probe") or {}),
            learning=_learning_policy(data.get("learning") or {}),
        )

    def ladder(self, raw: Mapping[str, Any]) -> LadderPolicy:
        limit = raw["max_ladders_per_host"]
        policy = LadderPolicy(
            attempts_per_step=int(raw["attempts_per_step"]),
            verify_wait_seconds=float(raw["verify_wait_seconds"]),
            verify_timeout_seconds=float(raw["verify_timeout_seconds"]),
            recheck_interval_seconds=float(raw["recheck_interval_seconds"]),
            unreachable_escalate_after_minutes=float(raw["unreachable_escalate_after_minutes"]),
            deadline_minutes=float(raw["deadline_minutes"]),
            max_ladders_per_host=LadderLimit(int(limit["count"]), float(limit["window_minutes"])),
        )
        at = ("ladder",)
        if policy.verify_timeout_seconds < policy.verify_wait_seconds:
            self.fail(
                (*at, "verify_timeout_seconds"),
                f"{raw['verify_timeout_seconds']} is shorter than verify_wait_seconds "
                f"({raw['verify_wait_seconds']}): a step would time out before its first check",
            )
        if policy.verify_timeout_seconds > policy.deadline_minutes * 60:
            self.fail(
                (*at, "verify_timeout_seconds"),
                f"{raw['verify_timeout_seconds']} s is longer than the whole ladder "
                f"(deadline_minutes {raw['deadline_minutes']})",
            )
        if policy.unreachable_escalate_after_minutes > policy.deadline_minutes:
            self.fail(
                (*at, "unreachable_escalate_after_minutes"),
                f"{raw['unreachable_escalate_after_minutes']} is after deadline_minutes "
                f"({raw['deadline_minutes']}): it could never fire",
            )
        if policy.recheck_interval_seconds > policy.unreachable_escalate_after_minutes * 60:
            self.fail(
                (*at, "recheck_interval_seconds"),
                f"{raw['recheck_interval_seconds']} s is longer than unreachable_escalate_after_minutes "
                f"({raw['unreachable_escalate_after_minutes']}): an unreachable host would not be re-checked",
            )
        return policy

    def budget(self, raw: Mapping[str, Any]) -> tuple[BudgetLimit, ...]:
        limits: list[BudgetLimit] = []
        seen: set[str] = set()
        for index, item in enumerate(raw["limits"]):
            if item["name"] in seen:
                self.fail(("budget", "limits", index, "name"), f"duplicate limit name {item['name']!r}")
            seen.add(item["name"])
            limits.append(
                BudgetLimit(
                    name=item["name"],
                    step=item.get("step"),
                    max=item.get("max"),
                    per_minutes=float(item["per_minutes"]) if "per_minutes" in item else None,
                    concurrent=item.get("concurrent"),
                    distinct_hosts=item.get("distinct_hosts"),
                )
            )
        return tuple(limits)

    def retirement(self, raw: Mapping[str, Any]) -> RetirementPolicy:
        path: KeyPath = ("retirement", "when")
        when = self.condition(raw["when"], path)
        for fact, value in RETIREMENT_REQUIRES:
            if not _requires(when, fact, value):
                self.fail(
                    path,
                    f"must require {{fact: {fact}, eq: {str(value).lower()}}} at its top level (itself or "
                    "inside a top-level all): the runbook retires only an unrecoverable host, and only "
                    "after the Data Recovery Checklist",
                )
        return RetirementPolicy(automatic=bool(raw["automatic"]), when=when)

    def rules(self, raw: Sequence[Mapping[str, Any]]) -> tuple[Rule, ...]:
        rules: list[Rule] = []
        first_seen: dict[str, int] = {}
        for index, item in enumerate(raw):
            path: KeyPath = ("rules", index)
            name = item["name"]
            line = self.document.line_of(path)
            if name in first_seen:
                self.fail(
                    (*path, "name"), f"duplicate rule name {name!r} (first used on line {first_seen[name]})"
                )
            else:
                first_seen[name] = line
            when = self.condition(item["when"], (*path, "when"))
            scope = _scope_of(when)
            then = self.action(item["then"], (*path, "then"), name, scope)
            rules.append(Rule(name, when, then, item.get("description", ""), line, scope))
        return tuple(rules)

    def action(self, raw: Mapping[str, Any], path: KeyPath, rule: str, scope: Scope) -> Action:
        page = None
        if "page" in raw:
            summary = raw["page"]["summary"]
            if "{" in summary or "}" in summary:
                self.fail(
                    (*path, "page", "summary"),
                    "is literal text, and braces suggest a placeholder that is never filled in; "
                    "the pager adds the host id, facts and checklist to every page itself",
                )
            page = PageAction(
                severity=raw["page"]["severity"],
                summary=summary,
                to=tuple(raw["page"].get("to", PAGER_TARGETS)),
                rule=rule,
                scope=scope,
            )
        if "pause_selfplay" in raw and "resume_selfplay" in raw:
            self.fail((*path, "resume_selfplay"), "a rule cannot both pause and resume selfplay")
        return Action(
            page=page,
            pause_selfplay=raw.get("pause_selfplay"),
            resume_selfplay=raw.get("resume_selfplay"),
            hold_ladders=bool(raw.get("hold_ladders", False)),
            check_network=bool(raw.get("check_network", False)),
            check_provider=bool(raw.get("check_provider", False)),
        )

    def condition(self, raw: Mapping[str, Any], path: KeyPath) -> Condition:
        if "fact" in raw:
            return self.comparison(raw, path)
        if "not" in raw:
            return Not(self.condition(raw["not"], (*path, "not")))
        key = "all" if "all" in raw else "any"
        children = tuple(self.condition(child, (*path, key, i)) for i, child in enumerate(raw[key]))
        if key == "any":
            return AnyOf(children)
        self.check_satisfiable(children, (*path, "all"))
        return AllOf(children)

    def comparison(self, raw: Mapping[str, Any], path: KeyPath) -> Comparison:
        fact = raw["fact"]
        op = next(key for key in raw if key in OPERATORS)
        value = raw[op]
        comparison = Comparison(fact, op, tuple(value) if op == "in" else value)
        spec = FACTS.get(fact)
        if spec is None:
            self.fail((*path, "fact"), _unknown_fact(fact))
            return comparison
        allowed = ("eq", "ne") if spec.type is bool else ("eq", "ne", "in") if spec.type is str else OPERATORS
        if op not in allowed:
            self.fail(
                (*path, op),
                f"{op} does not apply to {fact} (a {type_name(spec)} fact); use {', '.join(allowed)}",
            )
            return comparison
        for item in value if op == "in" else [value]:
            message = bad_value(fact, spec, item)
            if message:
                self.fail((*path, op), message)
        return comparison

    def check_satisfiable(self, children: Sequence[Condition], path: KeyPath) -> None:
        """Refuse an ``all`` whose direct comparisons on one fact contradict each other."""
        by_fact: dict[str, list[Comparison]] = {}
        for child in children:
            if isinstance(child, Comparison) and child.fact in FACTS:
                by_fact.setdefault(child.fact, []).append(child)
        for fact, comparisons in by_fact.items():
            if len(comparisons) > 1 and not _satisfiable(FACTS[fact], comparisons):
                shown = " and ".join(f"{c.op} {_show(c.value)}" for c in comparisons)
                self.fail(path, f"can never hold: {fact} cannot be {shown} at once")


def _satisfiable(spec: FactSpec, comparisons: Sequence[Comparison]) -> bool:
    """Whether some value of the fact passes every comparison (ill-typed ones are reported elsewhere)."""
    if any(not all(fits(spec, v) for v in (c.value if c.op == "in" else (c.value,))) for c in comparisons):
        return True
    low, high = -math.inf, math.inf
    low_open = high_open = False
    candidates: set[Any] | None = None
    if spec.type is bool:
        candidates = {True, False}
    elif spec.values is not None:
        candidates = set(spec.values)
    excluded: set[Any] = set()
    for c in comparisons:
        if c.op == "eq":
            candidates = {c.value} if candidates is None else candidates & {c.value}
        elif c.op == "in":
            candidates = set(c.value) if candidates is None else candidates & set(c.value)
        elif c.op == "ne":
            excluded.add(c.value)
        elif c.op in ("gt", "gte") and (c.value > low or (c.value == low and c.op == "gt")):
            low, low_open = c.value, c.op == "gt"
        elif c.op in ("lt", "lte") and (c.value < high or (c.value == high and c.op == "lt")):
            high, high_open = c.value, c.op == "lt"
    if spec.type is int:  # no integer lies strictly between n and n+1
        if low_open:
            low, low_open = math.floor(low) + 1, False
        if high_open:
            high, high_open = math.ceil(high) - 1, False

    def in_bounds(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return True
        above = value > low or (value == low and not low_open)
        below = value < high or (value == high and not high_open)
        return above and below

    if candidates is not None:
        return any(in_bounds(value) and value not in excluded for value in candidates)
    return low < high or (low == high and not low_open and not high_open and low not in excluded)


def _incident_policy(raw: Mapping[str, Any]) -> IncidentPolicy:
    default = IncidentPolicy()
    retry = raw.get("retry_after_minutes", default.retry_after_minutes)
    return IncidentPolicy(
        retry_after_minutes=None if retry is None else float(retry),
        healthy_for_minutes=float(raw.get("healthy_for_minutes", default.healthy_for_minutes)),
    )


def _approval_policy(raw: Mapping[str, Any]) -> ApprovalPolicy:
    default = ApprovalPolicy()
    over = raw.get("recover_data_over_bytes", default.recover_data_over_bytes)
    return ApprovalPolicy(
        steps=frozenset(raw.get("steps", default.steps)),
        recover_data_over_bytes=None if over is None else int(over),
        timeout_minutes=float(raw.get("timeout_minutes", default.timeout_minutes)),
    )


def _probe_policy(raw: Mapping[str, Any]) -> ProbePolicy:
    default = ProbePolicy()
    return ProbePolicy(
        enabled=bool(raw.get("enabled", default.enabled)),
        interval_seconds=float(raw.get("interval_seconds", default.interval_seconds)),
        concurrency=int(raw.get("concurrency", default.concurrency)),
        command_timeout_seconds=float(raw.get("command_timeout_seconds", default.command_timeout_seconds)),
        start_prevention=bool(raw.get("start_prevention", default.start_prevention)),
    )


def _learning_policy(raw: Mapping[str, Any]) -> LearningPolicy:
    default = LearningPolicy()
    return LearningPolicy(
        enabled=bool(raw.get("enabled", default.enabled)),
        min_samples=int(raw.get("min_samples", default.min_samples)),
    )


def _paging_policy(raw: Mapping[str, Any]) -> PagingPolicy:
    default = PagingPolicy()
    return PagingPolicy(
        max_triggers_per_hour=int(raw.get("max_triggers_per_hour", default.max_triggers_per_hour)),
        update_interval_minutes=float(raw.get("update_interval_minutes", default.update_interval_minutes)),
    )


def _requires(condition: Condition, fact: str, value: bool) -> bool:
    """Whether ``condition`` is, or is an ``all`` directly containing, ``{fact: FACT, eq: VALUE}``."""
    parts = condition.conditions if isinstance(condition, AllOf) else (condition,)
    return any(
        isinstance(part, Comparison) and part.fact == fact and part.op == "eq" and part.value is value
        for part in parts
    )


def _scope_of(condition: Condition) -> Scope:
    """``fleet`` when the condition tests fleet facts only, else ``host``."""
    facts = [fact for fact in _facts_of(condition) if fact in FACTS]
    return "fleet" if all(FACTS[fact].scope == "fleet" for fact in facts) else "host"


def _facts_of(condition: Condition) -> list[str]:
    if isinstance(condition, Comparison):
        return [condition.fact]
    if isinstance(condition, Not):
        return _facts_of(condition.condition)
    return [fact for child in condition.conditions for fact in _facts_of(child)]


def _unknown_fact(fact: str) -> str:
    close = difflib.get_close_matches(fact, FACTS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown fact {fact!r} ({hint}known: {', '.join(FACTS)})"


def bad_value(fact: str, spec: FactSpec, value: Any) -> str | None:
    """Why ``value`` cannot be compared with the fact, or None."""
    if not fits(spec, value):
        return f"{_show(value)} is not a {type_name(spec)}, and {fact} is a {type_name(spec)} fact"
    if spec.values is not None and value not in spec.values:
        return f"{_show(value)} is not a known {fact} (known: {', '.join(spec.values)})"
    if spec.nonnegative and value < 0:
        return f"{fact} is never negative, so comparing it with {_show(value)} is meaningless"
    return None


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    return repr(value)
