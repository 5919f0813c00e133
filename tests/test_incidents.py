"""Host incidents in Redis: what opens one, what a re-send does in each state, what closes one."""

from __future__ import annotations

import time

import pytest
import redis
from rq import Queue

from remediator import incidents, keys
from remediator.incidents import IncidentState
from remediator.intake import LadderLimit, LadderRequest, resolve_host, start_ladders
from workers.plan import unchanged_steps, without

Q = "remediator"


def start(conn, host="h1", **kw):
    retry_after = kw.pop("retry_after", None)
    limit = kw.pop("limit", None)
    return start_ladders(
        conn, Q, [LadderRequest(host, kw.pop("reason", "alert"), **kw)], limit, retry_after=retry_after
    )


def end(conn, host: str, outcome: str, *, global_dry_run: bool = False) -> incidents.Ended:
    """End the host's active ladder the way a worker holding its lock does."""
    ladder = conn.get(keys.ACTIVE.format(host)).decode()
    conn.set(keys.LOCK.format(host), "token")
    try:
        return incidents.end_ladder(
            conn,
            host,
            ladder,
            "token",
            outcome,
            "test",
            {"status": "finished", "outcome": outcome},
            incidents.state_after(outcome, global_dry_run=global_dry_run),
            {"step": "ladder", "outcome": outcome},
        )
    finally:
        conn.delete(keys.LOCK.format(host))


def test_the_first_alert_opens_an_incident_and_its_ladder_hangs_off_it(redis_conn):
    accepted = start(redis_conn).accepted[0]
    incident = incidents.current(redis_conn, "h1")
    assert incident is not None and incident.id == accepted["incident_id"]
    assert incident.state == IncidentState.REMEDIATING and incident.alerts == 1
    assert [r.ladder_id for r in incident.ladders] == [accepted["ladder_id"]]
    assert incident.ladders[0].kind == "first"
    assert redis_conn.hget(keys.HOST.format("h1"), "incident_id").decode() == incident.id
    assert incidents.open_incidents(redis_conn) == {"h1": incident.id}


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        ("escalated", "held"),
        ("failed", "held"),
        ("recovered", "held"),
        ("retired", "held"),
        ("healthy", "monitoring"),
    ],
)
def test_after_a_ladder_ends_re_sends_attach_and_start_nothing(redis_conn, outcome, state):
    first = start(redis_conn).accepted[0]
    ended = end(redis_conn, "h1", outcome)
    assert ended.ok and ended.state == state
    jobs_before = Queue(Q, connection=redis_conn).count
    for _ in range(10):
        again = start(redis_conn)
        assert again.accepted == []
        assert again.skipped[0]["incident_id"] == first["incident_id"]
        assert again.skipped[0]["reason"].startswith(state)
    assert Queue(Q, connection=redis_conn).count == jobs_before  # no ladder job was queued
    incident = incidents.get(redis_conn, first["incident_id"])
    assert incident.state == state and incident.alerts == 11 and len(incident.ladders) == 1
    assert incident.ladders[0].outcome == outcome


def test_a_human_remediate_starts_a_new_ladder_in_the_held_incident(redis_conn):
    first = start(redis_conn).accepted[0]
    end(redis_conn, "h1", "escalated")
    manual = start(redis_conn, force=True, reason="manual remediate by cli").accepted[0]
    assert manual["incident_id"] == first["incident_id"]
    incident = incidents.current(redis_conn, "h1")
    assert incident.state == IncidentState.REMEDIATING
    assert [r.kind for r in incident.ladders] == ["first", "manual"]


def test_a_held_host_is_retried_by_a_re_send_only_after_retry_after(redis_conn):
    first = start(redis_conn).accepted[0]
    end(redis_conn, "h1", "failed")
    assert start(redis_conn, retry_after=60).accepted == []
    redis_conn.hset(keys.INCIDENT.format(first["incident_id"]), "held_since", f"{time.time() - 61:.3f}")
    retry = start(redis_conn, retry_after=60).accepted[0]
    assert retry["incident_id"] == first["incident_id"]
    assert [r.kind for r in incidents.current(redis_conn, "h1").ladders] == ["first", "retry"]


def test_a_relapse_of_a_monitored_host_starts_a_ladder_in_the_same_incident(redis_conn):
    first = start(redis_conn).accepted[0]
    end(redis_conn, "h1", "healthy")
    relapse = start(redis_conn, relapse=True).accepted[0]
    assert relapse["incident_id"] == first["incident_id"]
    assert incidents.current(redis_conn, "h1").ladders[-1].kind == "relapse"


def test_a_one_off_dry_run_leaves_the_incident_open_for_a_real_alert(redis_conn):
    start(redis_conn, dry_run=True, force=True)
    assert end(redis_conn, "h1", "dry-run").state == "open"
    assert start(redis_conn).accepted  # the real alert acts
    end(redis_conn, "h1", "dry-run", global_dry_run=True)
    assert incidents.current(redis_conn, "h1").state == IncidentState.HELD  # a dry-run deployment holds


def test_resolve_then_fire_again_is_a_new_incident_and_a_new_ladder(redis_conn):
    first = start(redis_conn).accepted[0]
    end(redis_conn, "h1", "escalated")
    answer = resolve_host(redis_conn, Q, "h1", "fp")
    assert answer["action"] == "incident closed" and answer["incident_id"] == first["incident_id"]
    closed = incidents.get(redis_conn, first["incident_id"])
    assert (
        closed.state == IncidentState.RESOLVED and closed.closed_by == "alert" and closed.cleanup == "pending"
    )
    assert incidents.current(redis_conn, "h1") is None
    assert redis_conn.zscore(keys.CLEANUP, first["incident_id"]) is not None
    assert Queue(Q, connection=redis_conn).fetch_job(f"cleanup-{first['incident_id']}") is not None
    again = start(redis_conn).accepted[0]
    assert again["incident_id"] != first["incident_id"] and again["ladder_id"] != first["ladder_id"]
    assert [i.id for i in incidents.history(redis_conn, "h1")] == [again["incident_id"], first["incident_id"]]


def test_a_resolve_during_a_ladder_asks_it_to_stop_and_its_end_closes_the_incident(redis_conn):
    first = start(redis_conn).accepted[0]
    answer = resolve_host(redis_conn, Q, "h1")
    assert answer["action"] == "stop at next step" and answer["ladder_id"] == first["ladder_id"]
    assert incidents.current(redis_conn, "h1").state == IncidentState.REMEDIATING
    ended = end(redis_conn, "h1", "stopped")
    assert ended.ok and ended.state == "resolved"
    assert incidents.get(redis_conn, first["incident_id"]).closed_by == "alert"


def test_a_firing_alert_while_a_stop_is_pending_withdraws_the_stop_and_the_ladder_goes_on(redis_conn):
    first = start(redis_conn).accepted[0]
    resolve_host(redis_conn, Q, "h1")
    again = start(redis_conn)
    assert again.accepted == [] and again.skipped[0]["reason"].startswith("cancel withdrawn")
    assert redis_conn.get(keys.CANCEL.format("h1")) is None
    # The ladder, finding no stop pending any more, is not allowed to end "stopped".
    ended = end(redis_conn, "h1", "stopped")
    assert not ended.ok and ended.withdrawn
    assert redis_conn.get(keys.ACTIVE.format("h1")).decode() == first["ladder_id"]


def test_a_worker_without_the_lock_cannot_end_the_ladder(redis_conn):
    start(redis_conn)
    ladder = redis_conn.get(keys.ACTIVE.format("h1")).decode()
    redis_conn.set(keys.LOCK.format("h1"), "someone-else")
    ended = incidents.end_ladder(
        redis_conn, "h1", ladder, "mine", "healthy", "", {}, IncidentState.MONITORING, {"step": "ladder"}
    )
    assert not ended.ok
    assert redis_conn.get(keys.ACTIVE.format("h1")).decode() == ladder
    assert incidents.current(redis_conn, "h1").state == IncidentState.REMEDIATING


def test_a_human_closes_the_incident_and_a_running_ladder_is_asked_to_stop(redis_conn):
    first = start(redis_conn).accepted[0]
    closed = incidents.close(redis_conn, "h1", by="cli (root)", reason="fixed by hand")
    assert closed.incident == first["incident_id"] and closed.ladder == first["ladder_id"]
    assert redis_conn.get(keys.CANCEL.format("h1")).decode() == first["ladder_id"]
    incident = incidents.get(redis_conn, first["incident_id"])
    assert incident.state == IncidentState.RESOLVED and incident.closed_by == "cli (root)"
    assert incident.close_reason == "fixed by hand"
    assert incidents.close(redis_conn, "h1", by="x", reason="y").incident is None  # nothing open now


def test_the_ladder_limit_backstop_still_records_the_problem_as_a_held_incident(redis_conn):
    limit = LadderLimit(count=1, window_seconds=3600)
    start(redis_conn, limit=limit)
    incidents.close(redis_conn, "h1", by="test", reason="closed")
    redis_conn.delete(keys.ACTIVE.format("h1"))
    refused = start(redis_conn, limit=limit)
    assert refused.accepted == [] and refused.skipped[0]["reason"].startswith("ladder limit reached")
    incident = incidents.current(redis_conn, "h1")
    assert incident.state == IncidentState.HELD and incident.held_reason == "ladder limit reached"


def test_a_retry_skips_the_steps_that_failed_in_the_incident_under_the_same_facts():
    plan = [["restart_agent", "force_sync"], ["recover_data", "escalate"], ["escalate"]]
    facts = {
        "ssh_reachable": True,
        "agent_running": False,
        "host_retired": False,
        "unsynced_games": 5,
        "unsynced_bytes": 10,
        "coordinator_state": "critical",
    }
    tried = {
        "restart_agent": {
            "signature": {"ssh_reachable": True, "agent_running": False, "host_retired": False}
        },
        "recover_data": {"signature": {"ssh_reachable": True, "unsynced_games": 5, "unsynced_bytes": 10}},
    }
    assert unchanged_steps(plan, facts, tried) == ["restart_agent", "recover_data"]
    assert without(plan, ["restart_agent", "recover_data"]) == [["force_sync"], ["escalate"], ["escalate"]]
    # New games on the host since: recovering them is worth another try.
    assert unchanged_steps(plan, {**facts, "unsynced_games": 9}, tried) == ["restart_agent"]


def test_a_closed_incident_takes_its_host_out_of_the_fleet_window_at_once(redis_conn):
    # Its cleanup runs later: until then a resolved host must not keep (or start) a storm.
    start_ladders(redis_conn, Q, [LadderRequest("h1", "alert")], sightings={"h1": time.time()})
    end(redis_conn, "h1", "escalated")
    assert redis_conn.zscore(keys.FLEET_CRITICAL, "h1") is not None
    resolve_host(redis_conn, Q, "h1")
    assert redis_conn.zscore(keys.FLEET_CRITICAL, "h1") is None


def test_incident_scripts_run_on_the_connection_they_are_given(redis_url):
    """The scripts are registered once per process; each call must still run on its caller's client (a
    killed worker's, another database's), not on the first client that ever registered them."""
    first = redis.Redis.from_url(redis_url)
    where = first.connection_pool.connection_kwargs
    other = redis.Redis(host=where["host"], port=where["port"], db=1)
    try:
        start(first)
        end(first, "h1", "escalated")  # registers END_LUA with ``first``
        start(other)
        ended = end(other, "h1", "healthy")
        assert ended.ok and ended.state == "monitoring"
        assert incidents.current(other, "h1").state == IncidentState.MONITORING
        assert incidents.current(first, "h1").state == IncidentState.HELD  # untouched
        assert resolve_host(other, Q, "h1")["action"] == "incident closed"
        assert incidents.current(first, "h1").state == IncidentState.HELD
    finally:
        other.flushdb()
        first.close()
        other.close()


def test_a_firing_alert_does_not_withdraw_the_stop_of_a_human_close(redis_conn):
    """A human closed the incident while its ladder ran: the ladder is asked to stop and the incident
    is closed at once. A re-sent firing alert must not take the stop back (that is for a resolved
    alert, whose incident stays open until the ladder stops): the ladder would go on under a closed
    incident, pausing selfplay and paging for a host nothing tracks any more."""
    first = start(redis_conn).accepted[0]
    incidents.close(redis_conn, "h1", by="cli (root)", reason="fixed by hand")
    again = start(redis_conn)
    assert again.accepted == [] and again.skipped[0]["reason"].startswith("already remediating")
    assert redis_conn.get(keys.CANCEL.format("h1")).decode() == first["ladder_id"]
    ended = end(redis_conn, "h1", "stopped")
    assert ended.ok and not ended.withdrawn
    assert incidents.get(redis_conn, first["incident_id"]).state == IncidentState.RESOLVED
    assert redis_conn.get(keys.ACTIVE.format("h1")) is None


def test_a_ladder_that_ends_after_a_human_closed_its_incident_has_its_end_on_the_incident(redis_conn):
    """The closed incident's record must not show its ladder as still running (the status page and
    the API list an incident's ladders with their outcomes)."""
    first = start(redis_conn).accepted[0]
    incidents.close(redis_conn, "h1", by="cli (root)", reason="fixed by hand")
    assert end(redis_conn, "h1", "stopped").ok
    ladder = incidents.get(redis_conn, first["incident_id"]).ladders[0]
    assert ladder.ladder_id == first["ladder_id"] and ladder.outcome == "stopped"
    assert ladder.finished_at is not None
