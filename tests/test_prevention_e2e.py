"""Prevention end to end: a SyncLagWarning (rules alerts.prevent) starts a gentle ladder before the host
is critical — diagnosis and non-invasive steps only — and the critical alert, if it comes, goes on in
the same incident from what was tried."""

from __future__ import annotations

import json

from e2e import ladders_started, make_stack
from helpers import alert

from remediator import incidents, paging

WARNING = "SyncLagWarning"


def pages_sent(server) -> list[dict]:
    return [json.loads(r.get_data()) for r, _ in server.log]


def test_a_warning_for_a_dead_agent_restarts_it_and_nothing_else(
    sim_cluster, redis_url, tmp_path, monkeypatch
):
    sim = sim_cluster
    h = sim.host_ids[0]
    sim.kill_agent(h)
    sim.make_lagging(h)
    stack = make_stack(sim, redis_url, tmp_path, monkeypatch)
    stack.start_worker()
    try:
        stack.post([alert(h, alertname=WARNING)])
        state = stack.wait_finished(h, timeout=60)
        assert state["outcome"] == "prevented", stack.steps(h)
        steps = {step for step, _ in stack.steps(h)}
        assert steps <= {"intake", "diagnose", "restart_agent", "force_sync", "ladder"}, steps
        assert sim.counts(h)["agent_restarts"] == 1 and sim.state(h) == "healthy"
        assert sim.counts(h)["imports"] == 0 and sim.counts(h)["pauses"] == 0
        incident = incidents.current(stack.conn, h)
        assert incident.state == incidents.IncidentState.MONITORING and incident.ladders[0].kind == "prevent"
        text = stack.app.test_client().get("/metrics").get_data(as_text=True)
        assert 'remediator_ladders_total{outcome="prevented"} 1.0' in text
    finally:
        stack.stop()


def test_a_warning_that_cannot_prevent_recovers_nothing_pages_nobody_then_critical_goes_on(
    sim_cluster, redis_url, tmp_path, monkeypatch, server
):
    sim = sim_cluster
    h = sim.host_ids[0]
    server.expect_request("/page", method="POST").respond_with_json({"ok": True})
    sim.agent_dies_after_restart(h)
    sim.make_lagging(h)
    stack = make_stack(
        sim, redis_url, tmp_path, monkeypatch, REMEDIATOR_PAGE_WEBHOOK_URL=server.url_for("/page")
    )
    stack.start_worker()
    try:
        first = stack.post([alert(h, alertname=WARNING)])["accepted"][0]
        state = stack.wait_finished(h, timeout=90)
        assert state["outcome"] == "prevention-failed", stack.steps(h)
        restarts = sim.counts(h)["agent_restarts"]
        assert restarts == 2  # the rules' attempts_per_step
        assert (
            sim.counts(h)["imports"] == 0 and pages_sent(server) == [] and paging.open_pages(stack.conn) == []
        )
        assert ("recover_data", "ran") not in stack.steps(h)
        # Re-sent warnings start nothing more.
        again = stack.post([alert(h, alertname=WARNING)])
        assert again["accepted"] == [] and again["skipped"][0]["reason"].startswith("attached")
        # The host goes critical: the same incident's ladder goes on to recovery, the failed restarts
        # not repeated (same facts), and only now a human is paged.
        sim.make_critical(h)
        critical = stack.post([alert(h)])["accepted"][0]
        assert critical["incident_id"] == first["incident_id"]
        state = stack.wait_finished(h, timeout=120)
        assert state["outcome"] == "recovered", stack.steps(h)
        assert sim.counts(h)["agent_restarts"] == restarts  # not repeated beyond the rules' attempts
        assert sim.counts(h)["imports"] == 1
        diagnosis = [e for e in stack.audit(h) if e["step"] == "diagnose"][-1]
        assert "restart_agent" in diagnosis["skipped_unchanged"]
        assert len({p["dedup_key"] for p in pages_sent(server)}) == 1
        assert ladders_started(stack.conn, h) == 2
        assert [r.kind for r in incidents.current(stack.conn, h).ladders] == ["prevent", "retry"]
    finally:
        stack.stop()


def test_a_critical_alert_during_a_prevention_ladder_upgrades_it_in_place(
    sim_cluster, redis_url, tmp_path, monkeypatch
):
    sim = sim_cluster
    h = sim.host_ids[0]
    sim.agent_dies_after_restart(h)
    sim.make_critical(h)
    stack = make_stack(sim, redis_url, tmp_path, monkeypatch)
    stack.start_worker()
    try:
        stack.post([alert(h, alertname=WARNING)])
        stack.post([alert(h)])  # critical while the gentle ladder runs: the same ladder, now full
        state = stack.wait_finished(h, timeout=120)
        assert state["outcome"] == "recovered", stack.steps(h)
        assert ladders_started(stack.conn, h) == 1
        assert ("ladder", "upgraded") in stack.steps(h) or ("recover_data", "ran") in stack.steps(h)
        assert sim.counts(h)["imports"] == 1
    finally:
        stack.stop()


def test_a_resolved_warning_never_stops_a_critical_ladder(sim_cluster, redis_url, tmp_path, monkeypatch):
    sim = sim_cluster
    h = sim.host_ids[0]
    sim.kill_agent(h)
    sim.make_unreachable(h)  # the ladder waits for the host: long enough to be resolved during
    sim.make_critical(h)
    stack = make_stack(sim, redis_url, tmp_path, monkeypatch)
    stack.start_worker()
    try:
        stack.post([alert(h)])
        answer = stack.post([alert(h, alertname=WARNING, status="resolved")])
        assert answer["resolved"][0]["reason"] == "nothing open for this host"
        assert stack.wait_finished(h, timeout=60)["outcome"] == "escalated"  # not "stopped"
    finally:
        stack.stop()
