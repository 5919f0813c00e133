"""Operator controls in Redis: freezes and windows, maintenance holds, the budget, approvals; the rules."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from remediator import controls, keys
from remediator.exceptions import RulesError
from remediator.rules import parse_rules
from remediator.rules.types import BudgetLimit

DEFAULT = (Path(__file__).resolve().parent.parent / "rules" / "default.yaml").read_text()


def test_a_fleet_freeze_stops_every_host_and_a_host_freeze_only_its_host(redis_conn):
    controls.freeze(redis_conn, reason="disk swap", who="cli (root)", host_id="h1")
    assert controls.frozen(redis_conn, "h1").reason == "disk swap"
    assert controls.frozen(redis_conn, "h2") is None
    controls.freeze(redis_conn, reason="provider incident", who="api (10.0.0.1)")
    assert controls.frozen(redis_conn, "h2").reason == "provider incident"
    assert controls.frozen(redis_conn, "h1").scope == controls.FLEET  # the fleet's first
    assert controls.unfreeze(redis_conn, who="cli").reason == "provider incident"
    assert controls.frozen(redis_conn, "h2") is None and controls.frozen(redis_conn, "h1") is not None
    audit = [(e["outcome"], e["reason"]) for e in redis_conn_audit(redis_conn)]
    assert audit == [("set", "disk swap"), ("set", "provider incident"), ("lifted", "provider incident")]


def redis_conn_audit(conn):
    from remediator import store

    return store.get_audit(conn, controls.CONTROLS)


def test_a_maintenance_window_holds_only_between_its_start_and_its_end(redis_conn):
    now = time.time()
    controls.freeze(redis_conn, reason="window", who="cli", starts_at=now + 60, ends_at=now + 120)
    assert controls.frozen(redis_conn, "h1") is None  # not yet
    [scheduled] = controls.freezes(redis_conn)
    assert scheduled.active(now + 90) and not scheduled.active(now + 121) and not scheduled.active(now + 30)
    controls.freeze(redis_conn, reason="past", who="cli", host_id="h1", ends_at=now - 1)
    assert [f.scope for f in controls.freezes(redis_conn)] == [controls.FLEET]  # the lapsed one is dropped
    assert redis_conn.hget(keys.FREEZES, "h1") is None


def test_a_hold_alert_holds_its_host_or_the_fleet_until_it_resolves(redis_conn):
    controls.hold_alert(redis_conn, "RingRiftMaintenance", "h1", firing=True)
    assert (
        controls.holds(redis_conn, "h1") == ["RingRiftMaintenance (h1)"]
        and controls.holds(redis_conn, "h2") == []
    )
    controls.hold_alert(redis_conn, "RingRiftMaintenance", None, firing=True)
    assert controls.holds(redis_conn, "h2") == ["RingRiftMaintenance"]
    controls.hold_alert(redis_conn, "RingRiftMaintenance", None, firing=False)
    controls.hold_alert(redis_conn, "RingRiftMaintenance", "h1", firing=False)
    assert controls.holds(redis_conn, "h1") == []


def spend(conn, limits, step, host, n):
    return controls.spend(conn, limits, step=step, host_id=host, member=f"ladder-{n}:{step}:1")


def test_a_rate_limit_allows_its_max_then_trips_a_freeze_that_names_it(redis_conn):
    limits = (BudgetLimit("restarts", step="restart_agent", max=2, per_minutes=10),)
    assert spend(redis_conn, limits, "restart_agent", "h1", 1) is None
    assert spend(redis_conn, limits, "force_sync", "h1", 1) is None  # another step: not counted
    assert spend(redis_conn, limits, "restart_agent", "h2", 2) is None
    assert spend(redis_conn, limits, "restart_agent", "h2", 2) is None  # the same attempt counts once
    tripped = spend(redis_conn, limits, "restart_agent", "h3", 3)
    assert tripped is not None and tripped.name == "restarts"
    item = controls.frozen(redis_conn, "h9")
    assert (
        item.source == "budget"
        and item.reason == "budget limit 'restarts' exceeded: restart_agent at most 2 per 10 min"
    )
    # A human unfreezes: that limit is not enforced again within its window.
    controls.unfreeze(redis_conn, who="cli")
    assert [spend(redis_conn, limits, "restart_agent", f"h{n}", n) for n in (3, 4, 5)] == [None] * 3
    assert controls.frozen(redis_conn) is None


def test_a_concurrency_limit_counts_running_steps_and_release_frees_a_slot(redis_conn):
    limits = (BudgetLimit("recoveries", step="recover_data", concurrent=1),)
    assert spend(redis_conn, limits, "recover_data", "h1", 1) is None
    assert spend(redis_conn, limits, "recover_data", "h2", 2).name == "recoveries"
    controls.unfreeze(redis_conn, who="cli")
    redis_conn.delete(keys.BUDGET_ACK.format("recoveries"))
    controls.release(redis_conn, limits, step="recover_data", member="ladder-1:recover_data:1")
    assert spend(redis_conn, limits, "recover_data", "h2", 2) is None


def test_a_distinct_hosts_limit_counts_hosts_not_actions(redis_conn):
    limits = (BudgetLimit("hosts", distinct_hosts=2, per_minutes=60),)
    for n, host in enumerate(("h1", "h1", "h2", "h2", "h1"), start=1):
        assert spend(redis_conn, limits, "force_sync", host, n) is None
    assert spend(redis_conn, limits, "restart_agent", "h3", 9).name == "hosts"


def test_an_approval_is_asked_once_per_ladder_step_and_answered_once(redis_conn):
    request, new = controls.ask(redis_conn, "h1", "l1", "retire")
    assert new and request.state == "pending"
    assert controls.ask(redis_conn, "h1", "l1", "retire") == (request, False)
    answered = controls.decide(redis_conn, "h1", approve=False, who="cli (root)", reason="the disk is back")
    assert answered.state == "denied" and answered.who == "cli (root)"
    assert controls.decide(redis_conn, "h1", approve=True, who="x", reason="y") is None  # nothing pending
    assert controls.ask(redis_conn, "h1", "l2", "retire")[1]  # a new ladder asks anew
    controls.forget_approval(redis_conn, "h1", "l2")
    assert controls.approval(redis_conn, "h1") is None


def test_the_rules_take_a_budget_approval_silences_and_hold_alerts():
    rules = parse_rules(DEFAULT)
    assert rules.holds("RingRiftMaintenance") and rules.approval.steps == {"retire"}
    assert not rules.needs_approval("recover_data", {"unsynced_bytes": 10**12})
    # retire is gated only where it could retire: with automatic retirement off it only documents and
    # declines, and waiting for a yes would only delay the page.
    assert not rules.needs_approval("retire", {})
    assert parse_rules(DEFAULT.replace("automatic: false", "automatic: true")).needs_approval("retire", {})
    assert {limit.name for limit in rules.budget} == {"restarts", "retires", "recoveries-at-once"}
    over = parse_rules(DEFAULT.replace("recover_data_over_bytes: null", "recover_data_over_bytes: 1000"))
    assert over.needs_approval("recover_data", {"unsynced_bytes": 1001})
    assert not over.needs_approval("recover_data", {"unsynced_bytes": 1000})


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "{name: restarts, step: restart_agent, max: 100, per_minutes: 10}",
            "{name: restarts, max: 1}",
            "budget",
        ),
        (
            "{name: restarts, step: restart_agent, max: 100, per_minutes: 10}",
            "{name: retires, step: restart_agent, max: 1, per_minutes: 1}",
            "duplicate limit name 'retires'",
        ),
        ("steps: [retire]", "steps: [diagnose]", "approval"),
        ("hold: [RingRiftMaintenance]", "hold: [CriticalSyncHosts]", "list it once"),
    ],
)
def test_the_loader_refuses_a_broken_operator_block_naming_it(old, new, message):
    assert old in DEFAULT
    with pytest.raises(RulesError) as err:
        parse_rules(DEFAULT.replace(old, new))
    assert message in str(err.value)
