"""`remediator rules check` and `remediator rules test`, run through click's CliRunner."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner

from remediator.rules.cli import rules

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "rules" / "default.yaml"
DEFAULT_TEST = REPO / "rules" / "tests" / "default_test.yaml"


def copy_shipped(tmp_path: Path) -> Path:
    """rules/default.yaml and rules/tests/default_test.yaml copied under tmp_path; the test file's path."""
    (tmp_path / "tests").mkdir()
    shutil.copy(DEFAULT, tmp_path / "default.yaml")
    shutil.copy(DEFAULT_TEST, tmp_path / "tests" / "default_test.yaml")
    return tmp_path / "tests" / "default_test.yaml"


def test_check_passes_the_shipped_rules() -> None:
    result = CliRunner().invoke(rules, ["check", str(DEFAULT)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{DEFAULT}: SUCCESS: 6 rules found\n"


def test_check_fails_a_broken_file_naming_line_and_key_and_still_checks_the_others(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        DEFAULT.read_text().replace("{fact: storm_active, eq: true}", "{fact: storm_actve, eq: true}", 1)
    )
    text = bad.read_text()
    line = text[: text.index("storm_actve")].count("\n") + 1
    result = CliRunner().invoke(rules, ["check", str(bad), str(DEFAULT)])
    assert result.exit_code == 1
    assert f"{bad}: FAILED:\n{bad}:{line}: rules[0].when.fact: unknown fact 'storm_actve'" in result.stderr
    assert f"{DEFAULT}: SUCCESS: 6 rules found" in result.stdout


def test_test_passes_the_shipped_rule_tests() -> None:
    result = CliRunner().invoke(rules, ["test", str(DEFAULT_TEST)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{DEFAULT_TEST}: SUCCESS: ")
    assert "tests passed" in result.stdout


def test_shipped_rule_tests_cover_every_shipped_rule() -> None:
    import yaml

    from remediator.rules import load_rules

    tests = yaml.safe_load(DEFAULT_TEST.read_text())["tests"]
    named = {
        name for test in tests for name in test["expect"].get("matched", []) + test["expect"].get("pages", [])
    }
    assert named == {rule.name for rule in load_rules().rules}


def test_test_fails_with_a_diff_naming_the_field_when_an_expectation_changes(tmp_path: Path) -> None:
    test_file = copy_shipped(tmp_path)
    text = test_file.read_text()
    old = "expect: {matched: [hold-during-provider-outage], hold_ladders: true, page: false}"
    assert old in text
    test_file.write_text(text.replace(old, old.replace("hold_ladders: true", "hold_ladders: false")))
    result = CliRunner().invoke(rules, ["test", str(test_file)])
    assert result.exit_code == 1
    assert f"{test_file}: FAILED: 1 of " in result.stderr
    assert "test 'a provider outage holds the ladders' against" in result.stderr
    assert "    hold_ladders: expected false, got true\n" in result.stderr


def test_test_diff_lists_missing_and_unexpected_rules(tmp_path: Path) -> None:
    test_file = copy_shipped(tmp_path)
    text = test_file.read_text()
    old = "expect: {matched: [storm-checks], check_network: true"
    test_file.write_text(text.replace(old, "expect: {matched: [page-on-escalation], check_network: true", 1))
    result = CliRunner().invoke(rules, ["test", str(test_file)])
    assert result.exit_code == 1
    assert (
        "matched: expected [page-on-escalation], got [storm-checks]"
        " (missing: [page-on-escalation], unexpected: [storm-checks])" in result.stderr
    )


def test_test_refuses_an_unknown_fact_in_a_test(tmp_path: Path) -> None:
    test_file = copy_shipped(tmp_path)
    text = test_file.read_text().replace("facts: {ladder_outcome: failed}", "facts: {ladder_outcom: failed}")
    test_file.write_text(text)
    line = text[: text.index("ladder_outcom: failed")].count("\n") + 1
    result = CliRunner().invoke(rules, ["test", str(test_file)])
    assert result.exit_code == 1
    assert f"{test_file}:{line}: tests[" in result.stderr
    assert "].facts.ladder_outcom: unknown fact 'ladder_outcom'" in result.stderr


def test_test_fails_when_the_rules_file_it_names_is_broken(tmp_path: Path) -> None:
    test_file = copy_shipped(tmp_path)
    rules_file = tmp_path / "default.yaml"
    rules_file.write_text(rules_file.read_text().replace("attempts_per_step: 2", "attempts_per_step: 0"))
    result = CliRunner().invoke(rules, ["test", str(test_file)])
    assert result.exit_code == 1
    assert f"{test_file}: FAILED:\n" in result.stderr
    assert "ladder.attempts_per_step: must be >= 1, not 0" in result.stderr


def test_test_runs_every_test_against_a_file_with_automatic_retirement(tmp_path: Path) -> None:
    auto = tmp_path / "auto.yaml"
    auto.write_text(DEFAULT.read_text().replace("  automatic: false", "  automatic: true", 1))
    tests = tmp_path / "auto_test.yaml"
    tests.write_text(
        "rule_files: [auto.yaml]\n"
        "tests:\n"
        "  - name: terminated with the checklist done may retire\n"
        "    facts: {data_recoverable: false, checklist_complete: true}\n"
        "    expect: {may_retire: true}\n"
        "  - name: checklist not done may not\n"
        "    facts: {data_recoverable: false, checklist_complete: false}\n"
        "    expect: {may_retire: false}\n"
    )
    result = CliRunner().invoke(rules, ["test", str(tests)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{tests}: SUCCESS: 2 tests passed\n"
