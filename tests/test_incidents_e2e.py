"""Incidents end to end: real Alertmanager (or the receiver in process) -> real workers -> simulated
cluster over SSH, with a PagerDuty Events v2 stand-in counting what reached it.

What an on-call engineer dreads, pinned: a page storm from re-sent alerts, repeated actions on a host
after its ladder ended, data imported twice, a storm that never ends, a stale verdict holding ladders.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import require_binary
from e2e import FAST_RULES, am_alert, deployed, kill_worker, ladders_started, make_stack
from helpers import WEBHOOK_TOKEN, alert, wait_for
from pager_standin import PagerDutyStandIn

from remediator import incidents, keys, paging, store
from remediator.incidents import IncidentState
from remediator.ports import free_ports
from remediator.sim.alertmanager import AlertmanagerProcess
from workers.fleet import FLEET

# How long the escalated host's alert keeps being re-sent; 600 (ten minutes) is the figure,
# run by hand: INCIDENT_RESEND_SECONDS=600 pytest tests/test_incidents_e2e.py -k re_sent
RESEND_SECONDS = float(os.environ.get("INCIDENT_RESEND_SECONDS", "45"))


@pytest.fixture
def pagerduty():
    with PagerDutyStandIn() as standin:
        yield standin


def selfplay_calls(sim, kind: str) -> Counter:
    return Counter(h for c in sim.calls if c["call"] == kind and c["status"] == 200 for h in c["host_ids"])


def fleet_events(stack) -> list[tuple[str, str]]:
    return [(e["step"], e["outcome"]) for e in store.get_audit(stack.conn, FLEET)]


def ssh_logins(sim, host_id: str) -> int:
    """Sessions the host's sshd accepted (its log line for each successful public-key login)."""
    log = sim.host(host_id).paths.sshd_log
    return log.read_text(errors="replace").count("Accepted publickey") if log.exists() else 0


def notifications(receiver) -> int:
    return len(receiver.webhook_codes())


def alertmanager(tmp, receiver, **timings) -> AlertmanagerProcess:
    require_binary("prometheus-alertmanager")
    options = {"group_wait": "0s", "group_interval": "1s", "repeat_interval": "2s", **timings}
    return AlertmanagerProcess(tmp / "am", receiver.webhook_url, bearer_token=WEBHOOK_TOKEN, **options)


def test_an_eight_host_storm_re_sent_for_ten_rounds_is_one_page_one_import_each_and_resolves_whole(
    make_sim_cluster, redis_url, tmp_path, monkeypatch, pagerduty
):
    sim = make_sim_cluster(hosts=10)
    affected, healthy = sim.host_ids[:8], sim.host_ids[8:]
    for h in affected:
        sim.agent_dies_after_restart(h)
        sim.make_critical(h)
    with deployed(sim, redis_url, tmp_path, monkeypatch, workers=2, **pagerduty.env()) as (stack, receiver):
        with alertmanager(tmp_path, receiver) as am:
            am.post_alerts([am_alert(h) for h in affected])
            for h in affected:
                state = stack.wait_finished(h, timeout=300)
                assert state["outcome"] == "recovered", (h, stack.steps(h))
            restarts = {h: sim.counts(h)["agent_restarts"] for h in affected}
            logins = {h: ssh_logins(sim, h) for h in affected}
            seen = notifications(receiver)
            wait_for(lambda: notifications(receiver) >= seen + 10, timeout=90, what="ten more re-sends")
            # One problem, one page: the storm's, however many hosts escalated and alerts were re-sent.
            triggers = pagerduty.triggers_by_key()
            assert len(triggers) == 1 and sum(triggers.values()) == 1, triggers
            [storm_key] = triggers
            assert storm_key.startswith("remediator/storm/")
            assert set(paging.get(stack.conn, storm_key).hosts) == set(affected)
            assert selfplay_calls(sim, "pause-selfplay") == Counter(affected)
            for h in affected:
                assert sim.counts(h)["imports"] == 1, h
                assert ladders_started(stack.conn, h) == 1, h
                assert sim.counts(h)["agent_restarts"] == restarts[h], f"{h} restarted after its ladder"
                assert ssh_logins(sim, h) == logins[h], f"SSH to {h} after its ladder ended"
                incident = incidents.current(stack.conn, h)
                assert incident.state == IncidentState.HELD and incident.alerts >= 10
                assert incident.paged and incident.page == storm_key
            for h in healthy:
                assert stack.host(h) == {} and sim.counts(h)["pauses"] == 0
            # The alerts resolve: every incident closes, selfplay resumes, the storm and its page end.
            ids = {h: incidents.current_id(stack.conn, h) for h in affected}
            am.post_alerts([am_alert(h, resolved=True) for h in affected])
            wait_for(lambda: ("storm", "ended") in fleet_events(stack), timeout=90, what="the storm to end")
        for h in affected:
            incident = incidents.get(stack.conn, ids[h])
            assert incident.state == IncidentState.RESOLVED and incident.closed_by == "alert", h
            wait_for(
                lambda i=ids[h]: incidents.get(stack.conn, i).cleanup == "done", timeout=30, what="cleanup"
            )
        assert selfplay_calls(sim, "resume-selfplay") == Counter(affected)
        assert [e["dedup_key"] for e in pagerduty.events("resolve")] == [storm_key]
        assert sum(pagerduty.triggers_by_key().values()) == 1
        assert stack.conn.scard(keys.PAUSED) == 0 and incidents.open_incidents(stack.conn) == {}


@pytest.mark.timeout(RESEND_SECONDS + 300)
def test_an_escalated_host_re_sent_for_a_long_time_is_one_ladder_one_page_one_import_and_no_ssh(
    sim_cluster, redis_url, tmp_path, monkeypatch, pagerduty
):
    sim = sim_cluster
    h = sim.host_ids[0]
    sim.agent_dies_after_restart(h)
    sim.make_critical(h)
    with (
        deployed(sim, redis_url, tmp_path, monkeypatch, **pagerduty.env()) as (stack, receiver),
        alertmanager(tmp_path, receiver, repeat_interval="1s") as am,
    ):
        am.post_alerts([am_alert(h)])
        state = stack.wait_finished(h, timeout=120)
        assert state["outcome"] == "recovered", stack.steps(h)
        logins, imports, seen = ssh_logins(sim, h), sim.counts(h)["imports"], notifications(receiver)
        deadline = time.monotonic() + RESEND_SECONDS
        while time.monotonic() < deadline:
            am.post_alerts([am_alert(h)])  # Prometheus re-posts a firing alert on every evaluation
            time.sleep(min(15.0, max(0.0, deadline - time.monotonic())))
        resends = notifications(receiver) - seen
        assert resends >= RESEND_SECONDS / 4, resends  # Alertmanager kept re-sending all along
        assert ladders_started(stack.conn, h) == 1
        assert sum(pagerduty.triggers_by_key().values()) == 1
        assert imports == 1 and sim.counts(h)["imports"] == 1
        assert ssh_logins(sim, h) == logins, "SSH commands ran on the host after its ladder ended"
        incident = incidents.current(stack.conn, h)
        assert incident.state == IncidentState.HELD and incident.alerts >= resends
        # A human takes over: a new ladder in the same incident, no new page.
        env = {**stack.env}
        run = subprocess.run(
            [sys.executable, "-m", "remediator", "remediate", h], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        wait_for(lambda: ladders_started(stack.conn, h) == 2, timeout=10, what="the manual ladder")
        again = incidents.current(stack.conn, h)
        assert again.id == incident.id and [r.kind for r in again.ladders] == ["first", "manual"]
        stack.wait_finished(h, timeout=120)
        assert len(pagerduty.triggers_by_key()) == 1  # still the incident's one page


def test_resolve_then_fire_again_is_a_new_incident_with_a_new_ladder(
    sim_cluster, redis_url, tmp_path, monkeypatch
):
    sim = sim_cluster
    h = sim.host_ids[0]
    sim.kill_agent(h)
    sim.make_unreachable(h)
    sim.make_critical(h)
    stack = make_stack(sim, redis_url, tmp_path, monkeypatch)
    stack.start_worker()
    try:
        first = stack.post([alert(h)])["accepted"][0]
        assert stack.wait_finished(h, timeout=60)["outcome"] == "escalated"
        assert stack.post([alert(h)])["skipped"][0]["reason"].startswith("held")
        resolved = stack.post([alert(h, status="resolved")])["resolved"][0]
        assert resolved["action"] == "incident closed" and resolved["incident_id"] == first["incident_id"]
        second = stack.post([alert(h)])["accepted"][0]
        assert second["incident_id"] != first["incident_id"] and second["ladder_id"] != first["ladder_id"]
        assert ladders_started(stack.conn, h) == 2
        assert incidents.get(stack.conn, first["incident_id"]).state == IncidentState.RESOLVED
        assert incidents.current(stack.conn, h).id == second["incident_id"]
    finally:
        stack.stop()


def test_a_worker_killed_while_delivering_a_page_delivers_it_once_under_the_same_key(
    sim_cluster, redis_url, tmp_path, monkeypatch, pagerduty
):
    sim = sim_cluster
    h = sim.host_ids[0]
    sim.kill_agent(h)
    sim.make_unreachable(h)  # escalates after the fast rules' unreachable limit
    sim.make_critical(h)
    stack = make_stack(sim, redis_url, tmp_path, monkeypatch, **pagerduty.env())
    worker = stack.start_worker()
    try:
        pagerduty.hold_next.set()
        stack.post([alert(h)])
        assert pagerduty.holding.wait(90), "the page never reached the pager"
        kill_worker(worker)  # killed with the trigger on the wire
        pagerduty.release.set()
        stack.start_worker()
        state = stack.wait_finished(h, timeout=180)
        assert state["outcome"] == "escalated", stack.steps(h)
        assert pagerduty.received == 2  # the cut delivery, then the one the resumed ladder made
        triggers = pagerduty.triggers_by_key()
        assert list(triggers.values()) == [1], triggers
        [key] = triggers
        incident = incidents.get(stack.conn, state["incident_id"])
        assert incident.paged and incident.page == key == incidents.page_key(h, incident.id)
        assert paging.get(stack.conn, key).state == paging.PageState.DELIVERED
        # The audit says paged exactly once, and only after the pager took it.
        paged = [e for e in stack.audit(h) if e["step"] == "escalate" and "paged" in e.get("detail", "")]
        assert len(paged) == 1 and paged[0]["outcome"] == "verify-ok", stack.steps(h)
    finally:
        stack.stop()


def test_a_failed_network_verdict_is_rechecked_and_forgotten_when_the_storm_ends(
    make_sim_cluster, redis_url, tmp_path, monkeypatch
):
    sim = make_sim_cluster(hosts=4)
    storm, late = sim.host_ids[:3], sim.host_ids[3]
    # Extra probe endpoints nobody listens on yet: the cluster network check fails until they answer.
    probes = free_ports("127.0.0.1", 6)  # outside the ephemeral range: still free when listened on later
    stack = make_stack(
        sim,
        redis_url,
        tmp_path,
        monkeypatch,
        REMEDIATOR_NETWORK_PROBES=",".join(f"127.0.0.1:{p}" for p in probes),
    )
    stack.start_worker()
    listeners: list[socket.socket] = []
    try:
        for h in storm:
            sim.kill_agent(h)
            sim.make_critical(h)
        stack.post([alert(h) for h in storm])
        for h in storm:
            wait_for(lambda h=h: ("restart_agent", "held") in stack.steps(h), timeout=60, what=f"{h} held")
        assert ("network-check", "down") in fleet_events(stack)
        # The network comes back: the held ladders find out by themselves and heal their hosts.
        for port in probes:
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(16)
            listeners.append(listener)
        for h in storm:
            assert stack.wait_finished(h, timeout=120)["outcome"] == "healthy", stack.steps(h)
        assert ("network-check", "ok") in fleet_events(stack)
        for h in storm:
            stack.post([alert(h, status="resolved")])
        wait_for(lambda: ("storm", "ended") in fleet_events(stack), timeout=60, what="the storm to end")
        assert stack.conn.hget(keys.FLEET, "network_ok") is None  # the verdict went with its storm
        # A new single-host problem afterwards is remediated at once, never held by the old verdict.
        sim.kill_agent(late)
        sim.make_critical(late)
        stack.post([alert(late)])
        assert stack.wait_finished(late, timeout=60)["outcome"] == "healthy", stack.steps(late)
        assert all(outcome != "held" for _, outcome in stack.steps(late))
    finally:
        for listener in listeners:
            listener.close()
        stack.stop()


def test_the_healthy_host_s_incident_closes_after_healthy_for_minutes_without_a_resolve(
    sim_cluster, redis_url, tmp_path, monkeypatch
):
    sim = sim_cluster
    h = sim.host_ids[0]
    sim.kill_agent(h)
    sim.make_critical(h)
    stack = make_stack(sim, redis_url, tmp_path, monkeypatch)  # fast rules: healthy_for_minutes 0.1
    stack.start_worker()
    try:
        first = stack.post([alert(h)])["accepted"][0]
        assert stack.wait_finished(h, timeout=60)["outcome"] == "healthy"
        assert stack.post([alert(h)])["skipped"][0]["reason"].startswith("monitoring")
        wait_for(
            lambda: incidents.get(stack.conn, first["incident_id"]).state == IncidentState.RESOLVED,
            timeout=60,
            what="the incident to close on the coordinator's healthy reports",
        )
        closed = incidents.get(stack.conn, first["incident_id"])
        assert closed.closed_by == "coordinator" and "healthy for" in closed.close_reason
        assert "healthy_for_minutes: 0.1" in FAST_RULES.read_text()
    finally:
        stack.stop()
