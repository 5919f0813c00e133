"""``remediator rules check|test``: validate rules files and run their unit tests, like ``promtool``."""

from __future__ import annotations

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
    failed = False
    for path in files:
        try:
            ruleset = load_rules(path)
        except RulesError as error:
            failed = True
            click.echo(f"{path}: FAILED:", err=True)
            click.echo(str(error), err=True)
            continue
        click.echo(f"{path}: SUCCESS: {len(ruleset.rules)} rules found")
    if failed:
        raise SystemExit(1)


@rules.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def test(files: tuple[str, ...]) -> None:
    """Run the rule unit tests in each test FILE. Exit 1 if any fails or is invalid."""
    failed = False
    for path in files:
        try:
            report = run_rule_tests(path)
        except RulesError as error:
            failed = True
            click.echo(f"{path}: FAILED:", err=True)
            click.echo(str(error), err=True)
            continue
        total = report.passed + len(report.failures)
        if report.ok:
            click.echo(f"{path}: SUCCESS: {total} tests passed")
            continue
        failed = True
        click.echo(f"{path}: FAILED: {len(report.failures)} of {total} tests failed", err=True)
        for failure in report.failures:
            where = f"{path}:{failure.line}: test {failure.name!r} against {failure.rule_file}"
            click.echo(f"  {where}:", err=True)
            for diff in failure.diffs:
                click.echo(f"    {diff}", err=True)
    if failed:
        raise SystemExit(1)
