"""workers/plan.py, table-driven: what diagnosis found -> the rungs of the runbook's escalation.

Each row is one branch of ``plan_for`` (runbook Resolution 1-6 and its Prevention), named after what
the host looks like; the gentle, retry and signature helpers follow.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from workers.plan import gentle, plan_for, signature, unchanged_steps, without
from workers.steps import STEPS

CRIT = {"coordinator_state": "critical"}
FULL_TAIL = [["recover_data", "escalate"], ["escalate"]]

PLANS: list[tuple[str, dict[str, Any], list[list[str]]]] = [
    ("healthy, agent running: nothing", {"coordinator_state": "healthy", "agent_running": True}, []),
    ("healthy, agent state unknown: nothing", {"coordinator_state": "healthy"}, []),
    (
        "healthy but unreachable: nothing (the probe's business, not a ladder's)",
        {"coordinator_state": "healthy", "ssh_reachable": False, "agent_running": False},
        [],
    ),
    (
        "healthy, reachable, agent dead: restart before it goes critical",
        {"coordinator_state": "healthy", "ssh_reachable": True, "agent_running": False},
        [["restart_agent", "force_sync"]],
    ),
    (
        "healthy but retired: the full ladder (a retired host is not healthy)",
        {"coordinator_state": "healthy", "host_retired": True, "ssh_reachable": True, "agent_running": True},
        [["unretire"], ["force_sync"], ["restart_agent", "force_sync"], *FULL_TAIL],
    ),
    (
        "coordinator did not answer: wait for it, then escalate",
        {"coordinator_state": "unknown", "ssh_reachable": True},
        [["wait_reachable"], ["escalate"]],
    ),
    (
        "unreachable, instance terminated: retire (the rules decide), then escalate",
        {**CRIT, "ssh_reachable": False, "cloud_state": "terminated"},
        [["retire"], ["escalate"]],
    ),
    *[
        (
            f"unreachable, instance {state}: wait, never retire",
            {**CRIT, "ssh_reachable": False, "cloud_state": state},
            [["wait_reachable"], ["escalate"]],
        )
        for state in ("running", "stopped", "unknown", "not_asked")
    ],
    (
        "reachable, agent dead: restart first",
        {**CRIT, "ssh_reachable": True, "agent_running": False},
        [["restart_agent", "force_sync"], *FULL_TAIL],
    ),
    (
        "reachable, agent running (wedged): force a sync first",
        {**CRIT, "ssh_reachable": True, "agent_running": True},
        [["force_sync"], ["restart_agent", "force_sync"], *FULL_TAIL],
    ),
    (
        "reachable, agent state unknown: treated as running, force a sync first",
        {**CRIT, "ssh_reachable": True},
        [["force_sync"], ["restart_agent", "force_sync"], *FULL_TAIL],
    ),
    (
        "reachable, retired, agent dead: unretire, then restart",
        {**CRIT, "ssh_reachable": True, "host_retired": True, "agent_running": False},
        [["unretire"], ["restart_agent", "force_sync"], *FULL_TAIL],
    ),
    (
        "lagging (not yet critical) and reachable: the full ladder",
        {"coordinator_state": "lagging", "ssh_reachable": True, "agent_running": True},
        [["force_sync"], ["restart_agent", "force_sync"], *FULL_TAIL],
    ),
]


@pytest.mark.parametrize(("facts", "rungs"), [row[1:] for row in PLANS], ids=[row[0] for row in PLANS])
def test_plan_for(facts: dict[str, Any], rungs: list[list[str]]) -> None:
    assert plan_for(facts) == rungs


def test_every_planned_step_is_registered_and_every_registered_step_can_be_planned() -> None:
    planned = {step for _, facts, rungs in PLANS for rung in plan_for(facts) for step in rung}
    assert planned == set(STEPS)


def test_a_plan_never_retires_a_host_that_may_still_be_reached() -> None:
    for _, facts, _rungs in PLANS:
        if any("retire" in rung for rung in plan_for(facts)):
            assert facts.get("ssh_reachable") is False and facts.get("cloud_state") == "terminated"


def _rules(restart_agent: bool) -> Any:
    return SimpleNamespace(prevention=SimpleNamespace(restart_agent=restart_agent))


@pytest.mark.parametrize(
    ("restart_allowed", "expected"),
    [(True, [["force_sync"], ["restart_agent", "force_sync"]]), (False, [["force_sync"]])],
    ids=["restart-allowed", "force-sync-only"],
)
def test_gentle_keeps_only_non_invasive_steps_once_each(
    restart_allowed: bool, expected: list[list[str]]
) -> None:
    full = plan_for({**CRIT, "ssh_reachable": True, "agent_running": True, "host_retired": True})
    assert gentle(full, _rules(restart_allowed)) == expected


def test_gentle_of_an_unreachable_or_terminated_plan_is_empty() -> None:
    for facts in (
        {**CRIT, "ssh_reachable": False},
        {**CRIT, "ssh_reachable": False, "cloud_state": "terminated"},
    ):
        assert gentle(plan_for(facts), _rules(True)) == []


def test_signature_is_the_steps_declared_preconditions() -> None:
    facts = {**CRIT, "ssh_reachable": True, "agent_running": False, "unrelated": 1}
    for step, module in STEPS.items():
        assert signature(step, facts) == {name: facts.get(name) for name in module.PRECONDITIONS}
        assert "unrelated" not in signature(step, facts)


def test_a_retry_drops_only_steps_that_failed_under_the_same_preconditions() -> None:
    facts = {**CRIT, "ssh_reachable": True, "agent_running": True}
    plan = plan_for(facts)
    tried = {
        "force_sync": {"signature": signature("force_sync", facts)},  # same facts: not repeated
        "restart_agent": {"signature": signature("restart_agent", {**facts, "agent_running": False})},
    }
    skip = unchanged_steps(plan, facts, tried)
    assert skip == ["force_sync", "force_sync"]  # both rungs that hold it
    assert "restart_agent" not in skip  # its preconditions changed: it may help now


def test_without_drops_steps_and_the_rungs_they_empty() -> None:
    plan = [["force_sync"], ["restart_agent", "force_sync"], ["recover_data", "escalate"], ["escalate"]]
    assert without(plan, ["force_sync"]) == [["restart_agent"], ["recover_data", "escalate"], ["escalate"]]
    assert without(plan, []) == plan
