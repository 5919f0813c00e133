"""Loading rules files: the shipped default, and broken files refused with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from remediator.exceptions import RulesError, RulesMeaningError, RulesSchemaError, RulesSyntaxError
from remediator.rules import AllOf, Comparison, default_rules_path, load_rules, parse_rules
from remediator.rules.types import LadderLimit, LadderPolicy, PageAction

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TEXT = (REPO / "rules" / "default.yaml").read_text(encoding="utf-8")


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first occurrence of ``needle`` in ``text``."""
    index = text.index(needle)
    return text.count("\n", 0, index) + 1


def broken(old: str, new: str) -> str:
    """The shipped default with one edit; the edit must apply."""
    assert old in DEFAULT_TEXT
    return DEFAULT_TEXT.replace(old, new, 1)


def test_shipped_default_loads_into_typed_records() -> None:
    rules = load_rules()
    assert Path(rules.source).resolve() == (REPO / "rules" / "default.yaml").resolve()
    assert rules.ladder == LadderPolicy(
        attempts_per_step=2,
        verify_wait_seconds=5.0,
        verify_timeout_seconds=120.0,
        recheck_interval_seconds=30.0,
        unreachable_escalate_after_minutes=30.0,
        deadline_minutes=60.0,
        max_ladders_per_host=LadderLimit(count=3, window_minutes=60.0),
    )
    assert (rules.fleet.window_minutes, rules.fleet.storm_threshold) == (10.0, 3)
    assert rules.retirement.automatic is False
    assert rules.retirement.when == AllOf(
        (Comparison("data_recoverable", "eq", False), Comparison("checklist_complete", "eq", True))
    )
    assert [rule.name for rule in rules.rules] == [
        "storm-checks",
        "page-on-imminent-loss",
        "hold-during-provider-outage",
        "page-still-critical",
        "page-on-escalation",
        "resume-selfplay-on-recovery",
    ]
    assert {rule.name: rule.scope for rule in rules.rules}["storm-checks"] == "fleet"
    assert {rule.name: rule.scope for rule in rules.rules}["page-still-critical"] == "host"


def test_default_path_and_the_repository_file_hold_the_same_rules() -> None:
    packaged, checkout = load_rules(default_rules_path()), load_rules(REPO / "rules" / "default.yaml")
    assert (packaged.rules, packaged.ladder, packaged.retirement) == (
        checkout.rules,
        checkout.ladder,
        checkout.retirement,
    )


def test_alerts_decide_ladder_and_fleet() -> None:
    rules = load_rules()
    assert rules.starts_ladder("CriticalSyncHosts")
    assert not rules.starts_ladder("ClusterHealthCritical")
    assert rules.feeds_fleet("ClusterHealthCritical")
    assert rules.feeds_fleet("ClusterHealthDegraded")
    assert not rules.feeds_fleet("CriticalSyncHosts")  # its hosts reach the fleet view through their ladders
    assert not rules.starts_ladder("HighRecoveryFailureRate")
    assert not rules.feeds_fleet("HighRecoveryFailureRate")


# Each case: what is broken, the edit to the shipped file, text starting on the line at fault, the key
# path, and words of the message.
BROKEN_FILES = [
    (
        "misspelt fact",
        ("{fact: coordinator_state, eq: critical}", "{fact: coordinator_stat, eq: critical}"),
        "{fact: coordinator_stat,",
        "rules[3].when.all[1].fact",
        "unknown fact 'coordinator_stat' (did you mean 'coordinator_state'?",
    ),
    (
        "string compared with gt on a number fact",
        ("{fact: minutes_in_ladder, gte: 30}", '{fact: minutes_in_ladder, gte: "x"}'),
        'gte: "x"',
        "rules[3].when.all[0].gte",
        "must be a number, not a string ('x')",
    ),
    (
        "unknown key in a section",
        ("  storm_threshold: 3", "  storm_threshold: 3\n  storm_treshold: 3"),
        "storm_treshold",
        "fleet.storm_treshold",
        "unknown key 'storm_treshold'",
    ),
    (
        "zero attempts per step",
        ("attempts_per_step: 2", "attempts_per_step: 0"),
        "attempts_per_step: 0",
        "ladder.attempts_per_step",
        "must be >= 1, not 0",
    ),
    (
        "gte and lt contradict inside one all",
        (
            "- {fact: minutes_in_ladder, gte: 30}",
            "- {fact: minutes_in_ladder, gte: 30}\n        - {fact: minutes_in_ladder, lt: 10}",
        ),
        "all:\n        - {fact: minutes_in_ladder, gte: 30}",
        "rules[3].when.all",
        "can never hold: minutes_in_ladder cannot be gte 30 and lt 10 at once",
    ),
    (
        "duplicate rule name",
        ("name: page-on-escalation", "name: storm-checks"),
        "name: storm-checks\n    description: The ladder",
        "rules[4].name",
        "duplicate rule name 'storm-checks' (first used on line",
    ),
    (
        "unknown pager target",
        ("to: [pagerduty, webhook, alertmanager]", "to: [pagerduty, slack]"),
        "to: [pagerduty, slack]",
        "rules[1].then.page.to[1]",
        "'slack' is not one of: pagerduty, webhook, alertmanager",
    ),
    (
        "unknown ladder outcome",
        ("in: [escalated, failed]", "in: [escalated, gave_up]"),
        "in: [escalated, gave_up]",
        "rules[4].when.in",
        "'gave_up' is not a known ladder_outcome",
    ),
    (
        "verify timeout shorter than verify wait",
        ("verify_timeout_seconds: 120", "verify_timeout_seconds: 2"),
        "verify_timeout_seconds: 2",
        "ladder.verify_timeout_seconds",
        "shorter than verify_wait_seconds",
    ),
    (
        "in with a scalar instead of a list",
        ("in: [escalated, failed]", "in: escalated"),
        "in: escalated",
        "rules[4].when.in",
        "must be a list, not a string ('escalated')",
    ),
    (
        "negative minutes",
        ("{fact: minutes_in_ladder, gte: 30}", "{fact: minutes_in_ladder, gte: -5}"),
        "gte: -5",
        "rules[3].when.all[0].gte",
        "minutes_in_ladder is never negative",
    ),
    (
        "storm threshold of one host",
        ("storm_threshold: 3 ", "storm_threshold: 1 "),
        "storm_threshold: 1",
        "fleet.storm_threshold",
        "must be >= 2, not 1",
    ),
    (
        "duplicate key",
        ("  storm_threshold: 3", "  storm_threshold: 3\n  storm_threshold: 4"),
        "storm_threshold: 4",
        "fleet.storm_threshold",
        "duplicate key (first given on line",
    ),
    (
        "gt on a bool fact",
        ("when: {fact: storm_active, eq: true}", "when: {fact: storm_active, gt: 1}"),
        "when: {fact: storm_active, gt: 1}",
        "rules[0].when.gt",
        "gt does not apply to storm_active (a bool fact); use eq, ne",
    ),
    (
        "condition that is not a comparison",
        ("when: {fact: storm_active, eq: true}", "when: {storm_active: true}"),
        "when: {storm_active: true}",
        "rules[0].when.storm_active",
        "unknown key 'storm_active' (allowed: fact, all, any, not)",
    ),
    (
        "comparison with two operators",
        ("when: {fact: storm_active, eq: true}", "when: {fact: storm_active, eq: true, ne: false}"),
        "when: {fact: storm_active, eq: true, ne: false}",
        "rules[0].when",
        "exactly one OP of eq, ne, gt, gte, lt, lte, in",
    ),
    (
        "unreachable escalation after the deadline",
        ("unreachable_escalate_after_minutes: 30", "unreachable_escalate_after_minutes: 90"),
        "unreachable_escalate_after_minutes: 90",
        "ladder.unreachable_escalate_after_minutes",
        "is after deadline_minutes (60): it could never fire",
    ),
    (
        "retirement without the checklist",
        ("      - {fact: checklist_complete, eq: true}", "      - {fact: host_retired, eq: false}"),
        "  when:  ",
        "retirement.when",
        "must require {fact: checklist_complete, eq: true} at its top level",
    ),
    (
        "placeholder in a page summary",
        ('summary: "A RingRift host is', 'summary: "{host_id} is'),
        'summary: "{host_id} is',
        "rules[3].then.page.summary",
        "is literal text",
    ),
    (
        "key YAML reads as a boolean",
        ("  automatic: false", "  on: false"),
        "  on: false",
        "retirement",
        "key 'on' is not read as a string by YAML; put it in quotes",
    ),
    (
        "alert in both lists",
        ("fleet_only: [ClusterHealthCritical,", "fleet_only: [CriticalSyncHosts, ClusterHealthCritical,"),
        "fleet_only: [CriticalSyncHosts",
        "alerts.fleet_only[0]",
        "'CriticalSyncHosts' is also in start_ladder",
    ),
    (
        "flag set to false",
        ("hold_ladders: true", "hold_ladders: false"),
        "hold_ladders: false",
        "rules[2].then.hold_ladders",
        "false is not allowed",
    ),
]


@pytest.mark.parametrize(
    ("edit", "at", "key", "words"),
    [case[1:] for case in BROKEN_FILES],
    ids=[case[0] for case in BROKEN_FILES],
)
def test_broken_rules_file_is_refused_naming_line_and_key(
    tmp_path: Path, edit: tuple[str, str], at: str, key: str, words: str
) -> None:
    text = broken(*edit)
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    line = line_of(text, at)
    expected_prefix = f"{path}:{line}: {key}: "
    messages = str(caught.value).splitlines()
    assert any(message.startswith(expected_prefix) and words in message for message in messages), messages


def test_each_phase_raises_its_named_exception(tmp_path: Path) -> None:
    with pytest.raises(RulesSyntaxError):
        parse_rules("version: [1\n")
    with pytest.raises(RulesSchemaError):
        parse_rules(broken("attempts_per_step: 2", "attempts_per_step: 0"))
    with pytest.raises(RulesMeaningError):
        parse_rules(broken("name: page-on-escalation", "name: storm-checks"))
    with pytest.raises(RulesSyntaxError, match="cannot read the file"):
        load_rules(tmp_path / "absent.yaml")
    with pytest.raises(RulesSyntaxError, match="the file is empty"):
        parse_rules("# only a comment\n")


def test_every_finding_is_reported_at_once() -> None:
    text = broken("storm_threshold: 3 ", "storm_threshold: 1 ")
    text = text.replace("attempts_per_step: 2", "attempts_per_step: 0")
    with pytest.raises(RulesSchemaError) as caught:
        parse_rules(text, "r.yaml")
    keys = [problem.key for problem in caught.value.problems]
    assert keys == ["ladder.attempts_per_step", "fleet.storm_threshold"]


def test_syntax_error_names_its_line() -> None:
    text = DEFAULT_TEXT.replace("version: 1 ", "version: [1 ", 1)
    with pytest.raises(RulesSyntaxError) as caught:
        parse_rules(text, "r.yaml")
    assert str(caught.value).startswith("r.yaml:")
    assert "not valid YAML" in str(caught.value)


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    with pytest.raises(RulesSyntaxError, match="larger than"):
        parse_rules("\n".join(lines) + "\n")


def test_integer_bounds_with_no_integer_between_contradict() -> None:
    with pytest.raises(RulesMeaningError, match="attempts cannot be gt 1 and lt 2"):
        parse_rules(
            broken(
                "when: {fact: storm_active, eq: true}",
                "when: {all: [{fact: attempts, gt: 1}, {fact: attempts, lt: 2}]}",
            )
        )
    # the same bounds on a float fact leave room
    parse_rules(
        broken(
            "when: {fact: storm_active, eq: true}",
            "when: {all: [{fact: minutes_critical, gt: 1}, {fact: minutes_critical, lt: 2}]}",
        )
    )


@pytest.mark.parametrize(
    "contradiction",
    [
        "[{fact: cloud_state, eq: running}, {fact: cloud_state, eq: stopped}]",
        "[{fact: storm_active, ne: true}, {fact: storm_active, ne: false}]",
        "[{fact: cloud_state, in: [running, stopped]}, {fact: cloud_state, ne: running},"
        " {fact: cloud_state, ne: stopped}]",
        "[{fact: unsynced_games, eq: 5}, {fact: unsynced_games, gt: 5}]",
        "[{fact: unsynced_games, gte: 5}, {fact: unsynced_games, lte: 5}, {fact: unsynced_games, ne: 5}]",
    ],
)
def test_contradictions_inside_all_are_refused(contradiction: str) -> None:
    with pytest.raises(RulesMeaningError, match="can never hold"):
        parse_rules(broken("when: {fact: storm_active, eq: true}", f"when: {{all: {contradiction}}}"))


def test_satisfiable_combinations_are_accepted() -> None:
    rules = parse_rules(
        broken(
            "when: {fact: storm_active, eq: true}",
            "when: {all: [{fact: unsynced_games, gte: 5}, {fact: unsynced_games, lte: 5},"
            " {fact: cloud_state, in: [running, stopped]}, {fact: cloud_state, ne: running}]}",
        )
    )
    assert rules.decide({"unsynced_games": 5, "cloud_state": "stopped"}).matched[0] == "storm-checks"


def test_page_without_to_goes_to_every_pager() -> None:
    rules = parse_rules(
        broken("        to: [pagerduty, webhook, alertmanager]            # every configured pager\n", "")
    )
    page = rules.decide({"storm_active": True, "unsynced_games_at_risk": 1}).pages[0]
    assert page == PageAction(
        severity="critical",
        summary="Sync storm: several RingRift hosts are critical at once and selfplay data is at risk",
        to=("pagerduty", "webhook", "alertmanager"),
        rule="page-on-imminent-loss",
        scope="fleet",
    )


def test_yaml_merge_keys_are_not_mistaken_for_duplicate_keys() -> None:
    text = broken(
        "      page:\n        severity: critical                                # PagerDuty severity",
        "      page: &storm_page\n        severity: critical",
    ).replace("        severity: error\n", "        <<: *storm_page\n", 1)
    pages = {rule.name: rule.then.page for rule in parse_rules(text).rules}
    assert pages["page-still-critical"] == PageAction(
        severity="critical",
        summary="A RingRift host is still critical 30 minutes into its remediation",
        to=("pagerduty", "webhook", "alertmanager"),
        rule="page-still-critical",
        scope="host",
    )
