"""The ladder's plan: which rungs of the runbook's escalation to climb for what diagnosis found.

``plan_for`` reads top to bottom as the runbook's Resolution section; a retry ladder of an incident
drops the steps that already failed in it under the same facts (``unchanged_steps``).
"""

from __future__ import annotations

from typing import Any

from workers.steps import STEPS

# The last rung of every plan: hand the host to a human. The ladder goes there by itself too (its
# deadline, a rule, the coordinator gone too long), so it names it through here.
ESCALATE = "escalate"


def plan_for(facts: dict[str, Any]) -> list[list[str]]:
    """The rungs of the ladder for what diagnosis found, cheapest first; each rung is tried in turn."""
    if facts.get("coordinator_state") == "healthy" and not facts.get("host_retired"):
        if facts.get("ssh_reachable") and facts.get("agent_running") is False:
            # Healthy for now, but nothing syncs: restart the agent before the host goes critical
            # (runbook Prevention 3 and 4; the fleet probe finds such hosts).
            return [["restart_agent", "force_sync"]]
        return []
    if facts.get("coordinator_state") == "unknown":
        # The coordinator did not answer: the host's state is unknown, not "unreachable". Wait for the
        # coordinator and diagnose afresh (wait_reachable re-asks it), escalating after the same limit.
        return [["wait_reachable"], ["escalate"]]
    if not facts.get("ssh_reachable"):
        if facts.get("cloud_state") == "terminated":
            return [["retire"], ["escalate"]]
        return [["wait_reachable"], ["escalate"]]
    rungs: list[list[str]] = []
    if facts.get("host_retired"):
        rungs.append(["unretire"])
    if facts.get("agent_running") is False:
        rungs.append(["restart_agent", "force_sync"])
    else:
        rungs += [["force_sync"], ["restart_agent", "force_sync"]]
    rungs += [["recover_data", "escalate"], ["escalate"]]
    return rungs


GENTLE_STEPS = frozenset({"force_sync", "restart_agent"})  # what a prevention ladder may run at most


def gentle(plan: list[list[str]], rules: Any) -> list[list[str]]:
    """A prevention ladder's plan: only force_sync, and restart_agent where the rules allow it; never
    recovery, unretire, retire, waiting for a host, or escalation (a page)."""
    allowed = set(GENTLE_STEPS) if rules.prevention.restart_agent else {"force_sync"}
    rungs = [[step for step in rung if step in allowed] for rung in plan]
    return [rung for i, rung in enumerate(rungs) if rung and rung not in rungs[:i]]


def signature(step: str, facts: dict[str, Any]) -> dict[str, Any]:
    """The facts a step was tried under (its declared PRECONDITIONS)."""
    return {name: facts.get(name) for name in STEPS[step].PRECONDITIONS}


def unchanged_steps(
    plan: list[list[str]], facts: dict[str, Any], tried: dict[str, dict[str, Any]]
) -> list[str]:
    """Steps of the plan that already failed in this incident under the same facts."""
    return [
        step
        for rung in plan
        for step in rung
        if step in tried
        and STEPS[step].PRECONDITIONS
        and tried[step].get("signature") == signature(step, facts)
    ]


def without(plan: list[list[str]], skip: list[str]) -> list[list[str]]:
    rungs = [[step for step in rung if step not in skip] for rung in plan]
    return [rung for rung in rungs if rung]
