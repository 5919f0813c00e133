"""One list of the ladder's step names: the step registry, the rules' ``ladder_step`` fact and the
status page all take theirs from ``remediator.defaults.LADDER_STEPS``."""

from __future__ import annotations

from pathlib import Path

from remediator.defaults import LADDER_STEPS
from remediator.rules import FACTS, parse_rules
from workers.steps import STEPS

DEFAULT_TEXT = (Path(__file__).resolve().parent.parent / "rules" / "default.yaml").read_text(encoding="utf-8")


def test_every_registered_step_is_named_and_every_named_step_runs() -> None:
    # diagnose is the ladder's own first phase (workers/diagnose.py), not a registered step module.
    assert set(STEPS) == set(LADDER_STEPS) - {"diagnose"}


def test_a_rule_may_name_every_step_the_ladder_can_be_in() -> None:
    assert FACTS["ladder_step"].values == (*LADDER_STEPS, "none")
    # wait_reachable is a step a ladder sits in while a host is down: a rule may test for it.
    rules = parse_rules(
        DEFAULT_TEXT.replace(
            "when: {fact: storm_active, eq: true}", "when: {fact: ladder_step, eq: wait_reachable}", 1
        )
    )
    assert "storm-checks" in rules.decide({"ladder_step": "wait_reachable"}).matched
