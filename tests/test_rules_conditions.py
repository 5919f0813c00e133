"""Conditions and decisions: every operator, all/any/not, missing facts, and what the rules decide."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from remediator.rules import AllOf, AnyOf, Comparison, Not, evaluate, load_rules, parse_rules

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TEXT = (REPO / "rules" / "default.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("op", "value", "fact_value", "holds"),
    [
        ("eq", 3, 3, True),
        ("eq", 3, 4, False),
        ("ne", 3, 4, True),
        ("ne", 3, 3, False),
        ("gt", 3, 4, True),
        ("gt", 3, 3, False),
        ("gte", 3, 3, True),
        ("gte", 3, 2, False),
        ("lt", 3, 2, True),
        ("lt", 3, 3, False),
        ("lte", 3, 3, True),
        ("lte", 3, 4, False),
        ("in", (1, 3), 3, True),
        ("in", (1, 3), 2, False),
    ],
)
def test_each_operator_compares_the_fact_with_the_value(
    op: str, value: object, fact_value: int, holds: bool
) -> None:
    assert evaluate(Comparison("unsynced_games", op, value), {"unsynced_games": fact_value}) is holds


def test_string_and_bool_facts_compare_by_equality_and_membership() -> None:
    facts = {"cloud_state": "terminated", "ssh_reachable": False}
    assert evaluate(Comparison("cloud_state", "eq", "terminated"), facts)
    assert evaluate(Comparison("cloud_state", "in", ("stopped", "terminated")), facts)
    assert not evaluate(Comparison("cloud_state", "ne", "terminated"), facts)
    assert evaluate(Comparison("ssh_reachable", "eq", False), facts)
    assert not evaluate(Comparison("ssh_reachable", "eq", True), facts)


def test_all_any_not_combine_conditions() -> None:
    yes, no = Comparison("disk_full", "eq", True), Comparison("disk_full", "eq", False)
    facts = {"disk_full": True}
    assert evaluate(AllOf((yes, yes)), facts)
    assert not evaluate(AllOf((yes, no)), facts)
    assert evaluate(AnyOf((no, yes)), facts)
    assert not evaluate(AnyOf((no, no)), facts)
    assert evaluate(Not(no), facts)
    assert not evaluate(Not(yes), facts)
    assert evaluate(AllOf((Not(no), AnyOf((no, Not(Not(yes)))))), facts)


@pytest.mark.parametrize("op", ["eq", "ne", "gt", "gte", "lt", "lte"])
def test_a_missing_fact_makes_every_comparison_false(op: str) -> None:
    assert not evaluate(Comparison("unsynced_games", op, 0), {})
    assert not evaluate(Comparison("unsynced_games", op, 0), {"unsynced_games": None})
    assert not evaluate(Comparison("unsynced_games", "in", (0, 1)), {})


def test_not_of_a_missing_fact_holds() -> None:
    assert evaluate(Not(Comparison("ssh_reachable", "eq", True)), {})


def test_a_fact_of_the_wrong_type_compares_false_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="remediator.rules"):
        assert not evaluate(Comparison("unsynced_games", "gt", 0), {"unsynced_games": "12"})
        assert not evaluate(Comparison("ssh_reachable", "eq", True), {"ssh_reachable": 1})
        assert not evaluate(Comparison("unsynced_games", "eq", 1), {"unsynced_games": True})
    assert "unsynced_games='12' is not of type int" in caplog.text


def test_a_float_fact_accepts_integers() -> None:
    assert evaluate(Comparison("minutes_in_ladder", "gte", 30), {"minutes_in_ladder": 30})
    assert evaluate(Comparison("minutes_in_ladder", "gte", 30), {"minutes_in_ladder": 30.5})


def test_conditions_from_yaml_evaluate_like_built_ones() -> None:
    rules = parse_rules(
        DEFAULT_TEXT.replace(
            "when: {fact: storm_active, eq: true}",
            "when: {any: [{not: {fact: agent_running, eq: true}}, {all: [{fact: attempts, gte: 2},"
            " {fact: ladder_step, in: [force_sync, restart_agent]}]}]}",
            1,
        )
    )
    assert "storm-checks" in rules.decide({"agent_running": False}).matched
    assert (
        "storm-checks"
        in rules.decide({"agent_running": True, "attempts": 2, "ladder_step": "force_sync"}).matched
    )
    assert "storm-checks" not in rules.decide({"agent_running": True, "attempts": 1}).matched


def test_storm_decides_checks_page_and_pause() -> None:
    decision = load_rules().decide({"storm_active": True, "critical_hosts": 8, "unsynced_games_at_risk": 40})
    assert decision.matched == ("storm-checks", "page-on-imminent-loss")
    assert [(page.rule, page.severity, page.scope) for page in decision.pages] == [
        ("page-on-imminent-loss", "critical", "fleet")
    ]
    assert decision.check_network and decision.check_provider and decision.pause_selfplay
    assert not (decision.hold_ladders or decision.resume_selfplay)


def test_provider_outage_holds_ladders() -> None:
    decision = load_rules().decide({"provider_status_ok": False})
    assert decision.matched == ("hold-during-provider-outage",)
    assert decision.hold_ladders and not decision.pages


def test_still_critical_after_thirty_minutes_pages_per_host() -> None:
    rules = load_rules()
    assert not rules.decide({"coordinator_state": "critical", "minutes_in_ladder": 29.9}).pages
    decision = rules.decide({"coordinator_state": "critical", "minutes_in_ladder": 30, "host_id": "h1"})
    assert [(page.rule, page.severity, page.scope) for page in decision.pages] == [
        ("page-still-critical", "error", "host")
    ]


def test_healthy_facts_decide_nothing() -> None:
    decision = load_rules().decide(
        {
            "coordinator_state": "healthy",
            "critical_hosts": 0,
            "storm_active": False,
            "provider_status_ok": True,
        }
    )
    assert decision.matched == () and decision.pages == ()
    assert not any(
        (
            decision.pause_selfplay,
            decision.resume_selfplay,
            decision.hold_ladders,
            decision.check_network,
            decision.check_provider,
        )
    )


def test_automatic_retirement_is_off_by_default_even_with_the_checklist_complete() -> None:
    rules = load_rules()
    assert not rules.may_retire(
        {"data_recoverable": False, "checklist_complete": True, "cloud_state": "terminated"}
    )


def test_automatic_retirement_when_enabled_needs_its_condition() -> None:
    rules = parse_rules(DEFAULT_TEXT.replace("  automatic: false", "  automatic: true", 1))
    assert rules.retirement.automatic
    assert rules.may_retire({"data_recoverable": False, "checklist_complete": True})
    assert not rules.may_retire({"data_recoverable": False, "checklist_complete": False})
    assert not rules.may_retire({"data_recoverable": True, "checklist_complete": True})
    assert not rules.may_retire({"checklist_complete": True})  # recoverability unknown
