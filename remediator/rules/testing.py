"""Rule unit tests (``remediator rules test``): given facts, the rules must decide what the test expects.

A test file names the rules files it tests (relative to itself) and lists tests::

    rule_files: [../default.yaml]
    tests:
      - name: a storm pages once and pauses selfplay
        facts: {storm_active: true, unsynced_games_at_risk: 40}
        expect: {matched: [storm-checks, page-on-imminent-loss], page: true, pause_selfplay: true}

Only the fields under ``expect`` are checked. Every test runs against every rules file.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from remediator.exceptions import RuleTestFileError
from remediator.rules.facts import FACTS
from remediator.rules.loader import bad_value, load_rules
from remediator.rules.ruleset import RuleSet
from remediator.rules.schema import schema_problems
from remediator.rules.source import Document, Problem, read_document

FLAGS = ("pause_selfplay", "resume_selfplay", "hold_ladders", "check_network", "check_provider")
ALERT_CHECKS = ("starts_ladder", "feeds_fleet")  # asked of facts.alertname

_RULE_NAMES = {"type": "array", "uniqueItems": True, "items": {"type": "string"}}
_BOOLEAN = {"type": "boolean"}
TEST_FILE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "description": "a rule unit-test file",
    "type": "object",
    "additionalProperties": False,
    "required": ["rule_files", "tests"],
    "properties": {
        "rule_files": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        "tests": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "facts", "expect"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "facts": {"type": "object"},
                    "expect": {
                        "type": "object",
                        "additionalProperties": False,
                        "minProperties": 1,
                        "description": "expect lists at least one field to check",
                        "properties": {
                            "matched": _RULE_NAMES,
                            "pages": _RULE_NAMES,
                            "page": _BOOLEAN,
                            "may_retire": _BOOLEAN,
                            **{flag: _BOOLEAN for flag in (*FLAGS, *ALERT_CHECKS)},
                        },
                    },
                },
            },
        },
    },
}


@dataclass(frozen=True)
class RuleTestFailure:
    """One test that failed against one rules file, with a line per field that differs."""

    name: str
    line: int
    rule_file: str
    diffs: tuple[str, ...]


@dataclass(frozen=True)
class RuleTestReport:
    """The outcome of one test file: how many (test, rules file) runs passed, and the failures."""

    path: str
    rule_files: tuple[str, ...]
    passed: int
    failures: tuple[RuleTestFailure, ...]

    @property
    def ok(self) -> bool:
        return not self.failures


@functools.cache
def _test_file_validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(TEST_FILE_SCHEMA)


def run_rule_tests(path: str | Path) -> RuleTestReport:
    """Run the tests in ``path``; raise RulesError when the test file or a rules file it names is invalid."""
    document = read_document(str(path))
    if document.data is None:
        raise RuleTestFileError([document.problem((), "the file is empty")])
    problems = schema_problems(document, _test_file_validator())
    if problems:
        raise RuleTestFileError(problems)
    problems = _fact_problems(document)
    if problems:
        raise RuleTestFileError(problems)
    here = Path(path).parent
    rule_files = tuple(str(here / name) for name in document.data["rule_files"])
    rulesets = [load_rules(rule_file) for rule_file in rule_files]
    passed, failures = 0, []
    for ruleset in rulesets:
        for index, test in enumerate(document.data["tests"]):
            diffs = _compare(ruleset, test["facts"], test["expect"])
            if diffs:
                line = document.line_of(("tests", index))
                failures.append(RuleTestFailure(test["name"], line, ruleset.source, tuple(diffs)))
            else:
                passed += 1
    return RuleTestReport(str(path), rule_files, passed, tuple(failures))


def _fact_problems(document: Document) -> list[Problem]:
    """Facts a test gives must be facts of the vocabulary, with values of their type; names unique."""
    problems = []
    seen: dict[str, int] = {}
    for index, test in enumerate(document.data["tests"]):
        line = document.line_of(("tests", index))
        if test["name"] in seen:
            message = f"duplicate test name {test['name']!r} (first used on line {seen[test['name']]})"
            problems.append(document.problem(("tests", index, "name"), message))
        seen.setdefault(test["name"], line)
        for fact, value in test["facts"].items():
            path = ("tests", index, "facts", fact)
            spec = FACTS.get(fact)
            if spec is None:
                problems.append(document.problem(path, f"unknown fact {fact!r} (known: {', '.join(FACTS)})"))
            elif value is not None and (wrong := bad_value(fact, spec, value)):
                problems.append(document.problem(path, wrong))
        if any(check in test["expect"] for check in ALERT_CHECKS) and "alertname" not in test["facts"]:
            message = (
                "starts_ladder and feeds_fleet are asked of facts.alertname, which this test does not give"
            )
            problems.append(document.problem(("tests", index, "expect"), message))
    return problems


def _compare(ruleset: RuleSet, facts: Mapping[str, Any], expect: Mapping[str, Any]) -> list[str]:
    """A line per expected field the rules got wrong."""
    decision = ruleset.decide(facts)
    got: dict[str, Any] = {
        "matched": list(decision.matched),
        "pages": [page.rule for page in decision.pages],
        "page": bool(decision.pages),
        "may_retire": ruleset.may_retire(facts),
        **{flag: getattr(decision, flag) for flag in FLAGS},
    }
    if "alertname" in facts:
        got["starts_ladder"] = ruleset.starts_ladder(facts["alertname"])
        got["feeds_fleet"] = ruleset.feeds_fleet(facts["alertname"])
    known = {rule.name for rule in ruleset.rules}
    diffs = []
    for field, wanted in expect.items():
        actual = got[field]
        if isinstance(wanted, list):
            unknown = [name for name in wanted if name not in known]
            if unknown:
                diffs.append(f"{field}: no rule named {', '.join(unknown)} in {ruleset.source}")
            elif sorted(wanted) != sorted(actual):
                missing = [name for name in wanted if name not in actual]
                extra = [name for name in actual if name not in wanted]
                diffs.append(
                    f"{field}: expected {_show(wanted)}, got {_show(actual)}"
                    f" (missing: {_show(missing)}, unexpected: {_show(extra)})"
                )
        elif wanted != actual:
            diffs.append(f"{field}: expected {_show(wanted)}, got {_show(actual)}")
    return diffs


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    return repr(value)
