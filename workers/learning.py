"""Learning from outcomes: which rung of the ladder heals which failure signature.

A **signature** is what chose the plan: the coordinator unknown, the host unreachable (terminated or
not), retired, the agent dead, running but not syncing (wedged) or unknown, the disk full. Each finished
ladder adds its rungs' results to ``remediator.outcomes`` (``record``, at the ladder's end).

With the rules' ``learning.enabled`` the plan may put first, among its **leading non-destructive rungs**
(made of force_sync and restart_agent only), the one that healed this signature most often
(``order``, in the ladder's diagnose phase). What it never does: skip diagnosis (it runs after it),
reach a destructive step sooner (only that prefix is reordered; every later rung keeps its place), or
act on few samples (each of those rungs must have been tried by ``learning.min_samples`` ladders).
Every decision is audited with the numbers behind it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from remediator import metrics, outcomes, store
from remediator.states import HEALED_OUTCOMES, Outcome
from workers.state import LadderState
from workers.steps.base import LadderRun

log = logging.getLogger("remediator.learning")

NON_DESTRUCTIVE = frozenset({"force_sync", "restart_agent"})  # what learning may put in another order
HEALED = HEALED_OUTCOMES  # ladder outcomes that mean the host syncs again
NOT_COUNTED = frozenset(
    {Outcome.STOPPED, Outcome.DRY_RUN}
)  # nobody learns from a ladder cut short or not acting
AUDIT_TAIL = 300  # newest audit entries read at a ladder's end to find when each rung began


def signature(facts: dict[str, Any]) -> str:
    """The failure signature of a diagnosis, e.g. ``agent-dead``, ``retired+agent-wedged``."""
    if facts.get("coordinator_state") == "unknown":
        return "coordinator-unknown"
    if not facts.get("ssh_reachable"):
        return "unreachable+terminated" if facts.get("cloud_state") == "terminated" else "unreachable"
    parts = ["retired"] if facts.get("host_retired") else []
    agent = facts.get("agent_running")
    parts.append("agent-dead" if agent is False else "agent-wedged" if agent is True else "agent-unknown")
    if facts.get("disk_full"):
        parts.append("disk-full")
    return "+".join(parts)


def _prefix(plan: list[list[str]]) -> int:
    """How many leading rungs are made of non-destructive steps only."""
    count = 0
    for rung in plan:
        if not rung or not set(rung) <= NON_DESTRUCTIVE:
            break
        count += 1
    return count


def _shown(step: str, row: dict[str, Any] | None) -> str:
    row = row or {"healed": 0, "tried": 0}
    return f"{step}: {row['healed']}/{row['tried']} healed"


def order(lad: LadderRun, plan: list[list[str]], facts: dict[str, Any]) -> list[list[str]]:
    """The plan with its leading non-destructive rungs ordered by observed success (rules permitting)."""
    policy = lad.ctx.rules.learning
    n = _prefix(plan)
    if not policy.enabled or n < 2:
        return plan
    sig = signature(facts)
    rows = outcomes.table(lad.ctx.conn).get(sig, {})
    leads = [rung[0] for rung in plan[:n]]
    few = [step for step in leads if (rows.get(step) or {}).get("tried", 0) < policy.min_samples]
    numbers = ", ".join(_shown(step, rows.get(step)) for step in leads)
    if few:
        lad.audit(
            "learning",
            "kept",
            f"runbook order: {', '.join(few)} tried by fewer than {policy.min_samples} ladders of {sig} "
            f"({numbers})",
            signature=sig,
        )
        return plan
    ranked = sorted(range(n), key=lambda i: (-rows[leads[i]]["healed"] / rows[leads[i]]["tried"], i))
    best = rows[leads[ranked[0]]]
    if ranked == list(range(n)):
        lad.audit(
            "learning", "kept", f"runbook order is the best observed for {sig} ({numbers})", signature=sig
        )
        return plan
    lad.audit(
        "learning",
        "reordered",
        f"chose {leads[ranked[0]]} first: {best['healed']}/{best['tried']} healed {sig} ({numbers})",
        signature=sig,
        runbook_order=leads,
        order=[leads[i] for i in ranked],
    )
    return [plan[i] for i in ranked] + plan[n:]


def record(conn: redis.Redis, host_id: str, ladder_id: str, state: LadderState, outcome: str) -> None:
    """At a ladder's end: count each rung it entered, and the one that healed the host. Never raises:
    the ladder has ended by then, and statistics must not turn that into a failed job."""
    try:
        _record(conn, host_id, ladder_id, state, outcome)
    except (redis.RedisError, ValueError, TypeError, KeyError) as exc:
        log.warning("outcome of ladder %s not counted: %s", ladder_id, exc)


def _record(conn: redis.Redis, host_id: str, ladder_id: str, state: LadderState, outcome: str) -> None:
    plan = state.plan
    if outcome in NOT_COUNTED or state.dry_run or not plan:
        return
    rung = min(state.rung, len(plan) - 1)
    began: dict[str, float] = {}  # lead step -> when it first ran, since the ladder's last diagnosis
    for entry in store.get_audit(conn, host_id, -AUDIT_TAIL, -1):
        if entry.get("ladder_id") != ladder_id:
            continue
        if entry.get("step") == "diagnose" and entry.get("outcome") == "done":
            began.clear()  # a new plan: rungs count from here
        elif entry.get("outcome") in ("ran", "failed", "resumed"):
            began.setdefault(entry["step"], float(entry.get("ts") or time.time()))
    sig = signature(state.facts)
    now = time.time()
    for index, steps in enumerate(plan[: rung + 1]):
        lead = steps[0]
        if lead not in began:
            continue  # never ran (escalation only, or the ladder ended before it)
        healed = outcome in HEALED and index == rung
        seconds = now - began[lead] if healed else None
        outcomes.add(conn, sig, lead, healed, seconds)
        metrics.count(
            conn,
            "remediator_rung_outcomes",
            signature=sig,
            step=lead,
            result="healed" if healed else "not_healed",
        )
        if seconds is not None:
            metrics.observe(conn, "remediator_time_to_healthy_seconds", seconds, signature=sig, step=lead)
