"""``remediator rules check|test``: validate rules files and run their unit tests, like ``promtool``."""

from __future__ import annotations

from collections.abc import Callable

import click

from remediator.exceptions import RulesError
from remediator.rules.loader import load_rules
from remediator.rules.testing import run_rule_tests


@click.group()
def rules() -> None:
    """Check rules files and run rule unit tests."""


@rules.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def check(files: tuple[str, ...]) -> None:
    """Validate each rules FILE: schema, then meaning. Exit 1 if any is invalid."""
    _for_each_file(files, _check_file)


@rules.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def test(files: tuple[str, ...]) -> None:
    """Run the rule unit tests in each test FILE. Exit 1 if any fails or is invalid."""
    _for_each_file(files, _test_file)


def _for_each_file(files: tuple[str, ...], run: Callable[[str], bool]) -> None:
    """``run`` each file (it answers whether the file passed; a RulesError fails it, with the error's
    findings); exit 1 once all have run if any failed."""
    failed = False
    for path in files:
        try:
            passed = run(path)
        except RulesError as error:
            passed = False
            click.echo(f"{path}: FAILED:", err=True)
            click.echo(str(error), err=True)
        failed = failed or not passed
    if failed:
        raise SystemExit(1)


def _check_file(path: str) -> bool:
    ruleset = load_rules(path)
    click.echo(f"{path}: SUCCESS: {len(ruleset.rules)} rules found")
    return True


def _test_file(path: str) -> bool:
    report = run_rule_tests(path)
    total = report.passed + len(report.failures)
    if report.ok:
        click.echo(f"{path}: SUCCESS: {total} tests passed")
        return True
    click.echo(f"{path}: FAILED: {len(report.failures)} of {total} tests failed", err=True)
    for failure in report.failures:
        where = f"{path}:{failure.line}: test {failure.name!r} against {failure.rule_file}"
        click.echo(f"  {where}:", err=True)
        for diff in failure.diffs:
            click.echo(f"    {diff}", err=True)
    return False
