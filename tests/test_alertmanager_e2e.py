"""End to end through a real Alertmanager: alerts go to its /api/v2/alerts, never to the receiver.

Alertmanager (Debian's prometheus-alertmanager) delivers to ``remediator serve`` (gunicorn) with the
webhook token as ``http_config.authorization``; ``remediator worker`` processes run the ladder against
the simulated cluster over real SSH. What is pinned: a firing alert heals the host, a resolved one stops
the ladder, an HA pair delivering the same group makes one ladder, and neither Redis nor the receiver
going away while Alertmanager delivers loses or duplicates anything (a 503 or a refused connection is
retried by Alertmanager).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import requests
from conftest import require_binary
from e2e import FAST_RULES, Receiver, Stack, am_alert, deployed, ladders_started, prom_value
from helpers import WEBHOOK_TOKEN, wait_for

from remediator.embedded_redis import EmbeddedRedis
from remediator.sim.alertmanager import AlertmanagerProcess

H = "host-01"
H2 = "host-02"
AM_TIMINGS = {"group_wait": "0s", "group_interval": "1s", "repeat_interval": "1h"}


@pytest.fixture(autouse=True)
def _alertmanager_installed() -> None:
    require_binary("prometheus-alertmanager")


def alertmanager(tmp: Path, receiver: Receiver, name: str = "am", **options: object) -> AlertmanagerProcess:
    return AlertmanagerProcess(
        tmp / name, receiver.webhook_url, bearer_token=WEBHOOK_TOKEN, **{**AM_TIMINGS, **options}
    )


def am_failed_requests(am: AlertmanagerProcess) -> float:
    """Webhook requests Alertmanager saw fail (each attempt of its retry loop counts)."""
    text = requests.get(am.url + "/metrics", timeout=5).text
    return prom_value(text, "alertmanager_notification_requests_failed_total", integration="webhook")


def am_notifications(am: AlertmanagerProcess) -> float:
    """Webhook notifications Alertmanager delivered successfully."""
    text = requests.get(am.url + "/metrics", timeout=5).text
    sent = prom_value(text, "alertmanager_notifications_total", integration="webhook")
    return sent - prom_value(text, "alertmanager_notifications_failed_total", integration="webhook")


def intake_entries(stack: Stack, host_id: str) -> list[dict]:
    return [e for e in stack.audit(host_id) if e["step"] == "intake"]


def said(receiver: Receiver, message: str) -> int:
    """How many of the receiver's log lines start with ``message``."""
    return sum(1 for e in receiver.lines() if str(e.get("msg", "")).startswith(message))


def healthy_with_one_ladder(stack: Stack, host_id: str) -> None:
    """The host's ladder finished healthy, it was the only ladder, and the agent was restarted once."""
    state = stack.wait_finished(host_id, timeout=90)
    assert state["outcome"] == "healthy", stack.steps(host_id)
    assert ladders_started(stack.conn, host_id) == 1
    assert len(intake_entries(stack, host_id)) == 1
    assert stack.sim.counts(host_id)["agent_restarts"] == 1
    assert stack.sim.state(host_id) == "healthy"


def test_firing_alert_through_alertmanager_runs_the_ladder_to_a_healthy_host(
    sim_cluster, redis_url, tmp_path, monkeypatch
):
    sim = sim_cluster
    sim.kill_agent(H)
    sim.make_critical(H)
    with deployed(sim, redis_url, tmp_path, monkeypatch) as (stack, receiver):
        with alertmanager(tmp_path, receiver) as am:
            am.post_alerts([am_alert(H)])
            [held] = am.alerts()
            healthy_with_one_ladder(stack, H)
        # The ladder was started by Alertmanager's delivery of that very alert, authenticated.
        assert intake_entries(stack, H)[0]["fingerprint"] == held["fingerprint"]
        assert receiver.webhook_codes() == [202]
        assert ("restart_agent", "verify-ok") in stack.steps(H)


def test_resolved_alert_through_alertmanager_stops_the_waiting_ladder(
    sim_cluster, redis_url, tmp_path, monkeypatch
):
    sim = sim_cluster
    sim.kill_agent(H)  # the host is down: the ladder waits for it to come back
    sim.make_unreachable(H)
    sim.make_critical(H)
    # Escalating an unreachable host takes minutes here, so the ladder is still waiting when the
    # resolved notification lands and only the resolve can end it.
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        FAST_RULES.read_text().replace(
            "unreachable_escalate_after_minutes: 0.1", "unreachable_escalate_after_minutes: 5"
        )
    )
    with deployed(sim, redis_url, tmp_path, monkeypatch, REMEDIATOR_RULES_FILE=str(rules)) as (
        stack,
        receiver,
    ):
        with alertmanager(tmp_path, receiver, send_resolved=True) as am:
            am.post_alerts([am_alert(H)])
            wait_for(lambda: ("wait_reachable", "ran") in stack.steps(H), timeout=60, what="the wait step")
            assert stack.host(H)["status"] != "finished"
            am.post_alerts([am_alert(H, resolved=True)])
            state = stack.wait_finished(H, timeout=60)
            assert am.alerts() == []  # Alertmanager holds it as resolved, no longer active
        assert state["outcome"] == "stopped", stack.steps(H)
        steps = stack.steps(H)
        # The stop closed the host's incident (its cleanup job may have added its own entry since).
        assert steps[steps.index(("ladder", "stopped")) + 1] == ("incident", "resolved"), steps
        assert receiver.webhook_codes() == [202, 202]  # the firing, then the resolved notification
        assert ladders_started(stack.conn, H) == 1
        assert sim.counts(H)["retires"] == 0


def test_ha_alertmanager_pair_delivering_the_same_group_makes_one_ladder(
    sim_cluster, redis_url, tmp_path, monkeypatch
):
    sim = sim_cluster
    sim.kill_agent(H)
    sim.make_critical(H)
    # A pair whose gossip is slower than its flush: each instance delivers the group itself, as an HA
    # pair does when the notification log has not reached the peer in time (peer_timeout exceeded).
    cluster = {"peer_timeout": "0s", "gossip_interval": "10s", "pushpull_interval": "30s"}
    with deployed(sim, redis_url, tmp_path, monkeypatch) as (stack, receiver):
        with alertmanager(tmp_path, receiver, "am-a", cluster=True, **cluster) as first:
            assert first.cluster_address is not None
            with alertmanager(tmp_path, receiver, "am-b", peers=[first.cluster_address], **cluster) as second:
                wait_for(
                    lambda: (
                        len(requests.get(second.url + "/api/v2/status", timeout=5).json()["cluster"]["peers"])
                        == 2
                    ),
                    timeout=30,
                    what="the pair to see each other",
                )
                # Prometheus sends every alert to every Alertmanager of the pair.
                for am in (first, second):
                    am.post_alerts([am_alert(H)])
                codes = wait_for(
                    lambda: (c := receiver.webhook_codes()) and len(c) >= 2 and c,
                    timeout=30,
                    what="both instances to deliver",
                )
                healthy_with_one_ladder(stack, H)
                # Each instance delivered once itself: the two deliveries were not one instance's re-send.
                assert [am_notifications(am) for am in (first, second)] == [1, 1]
        assert codes == [202, 202]
        # One delivery started the ladder, the other was answered "already remediating".
        assert said(receiver, "ladder queued") == 1
        assert said(receiver, "alert skipped: already remediating") == 1
        metrics = requests.get(receiver.url + "/metrics", timeout=5).text
        assert prom_value(metrics, "remediator_alerts_total", status="firing", outcome="accepted") == 1
        assert prom_value(metrics, "remediator_alerts_total", status="firing", outcome="skipped") == 1
        assert receiver.webhook_codes() == [202, 202]


def test_redis_down_while_alertmanager_delivers_is_answered_503_retried_and_processed_once(
    sim_cluster, tmp_path, monkeypatch
):
    sim = sim_cluster
    # A Redis of this test's own, persisted, so stopping it touches nothing else.
    own = EmbeddedRedis(tmp_path / "redis", appendonly=True).start()
    try:
        sim.kill_agent(H)
        sim.make_critical(H)
        with (
            deployed(sim, own.url, tmp_path, monkeypatch) as (stack, receiver),
            alertmanager(tmp_path, receiver) as am,
        ):
            own.stop()
            am.post_alerts([am_alert(H)])
            # The receiver refuses work it cannot store, and Alertmanager keeps trying.
            wait_for(lambda: receiver.webhook_codes().count(503) >= 2, timeout=30, what="503s")
            assert am_failed_requests(am) >= 2
            own.start()  # the same port, its data back from the append-only file
            healthy_with_one_ladder(stack, H)
            codes = receiver.webhook_codes()
        assert codes[-1] == 202 and set(codes[:-1]) == {503}, codes
        assert "Traceback" not in receiver.log.read_text()
    finally:
        own.stop()


def blocked_transactions(conn) -> int:
    """Clients whose intake script CLIENT PAUSE WRITE holds (the receiver storing a delivery)."""
    return sum(1 for c in conn.client_list() if "b" in c["flags"] and c["cmd"] in ("evalsha", "eval"))


def test_receiver_restarted_while_alertmanager_delivers_loses_and_duplicates_nothing(
    sim_cluster, redis_url, tmp_path, monkeypatch
):
    sim = sim_cluster
    for host in (H, H2):
        sim.kill_agent(host)
        sim.make_critical(host)
    # No worker until the end: the only Redis clients are the receiver's, and H's ladder is still
    # queued when Alertmanager re-sends the group, so any second ladder would show.
    with deployed(sim, redis_url, tmp_path, monkeypatch, workers=0) as (stack, receiver):
        with alertmanager(tmp_path, receiver) as am:
            # 1. SIGTERM lands while a delivery is in the receiver's hands (its writes held by Redis).
            stack.conn.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
            try:
                am.post_alerts([am_alert(H)])
                wait_for(lambda: blocked_transactions(stack.conn), timeout=30, what="the delivery in hand")
                assert receiver.proc is not None
                receiver.proc.send_signal(signal.SIGTERM)
                # An idle worker leaves at once; the one holding the delivery was told to leave too.
                wait_for(
                    lambda: "Worker exiting" in receiver.log.read_text(), timeout=30, what="the workers told"
                )
            finally:
                stack.conn.execute_command("CLIENT", "UNPAUSE")
            receiver.stop()  # waits for gunicorn to finish the request in hand and exit
            assert receiver.webhook_codes() == [202]
            assert ladders_started(stack.conn, H) == 1
            # 2. The receiver is down: a second host joins the group, and Alertmanager re-sends the
            # whole group (both hosts) to a port nobody listens on, and retries.
            am.post_alerts([am_alert(H2)])
            wait_for(lambda: am_failed_requests(am) >= 2, timeout=30, what="refused deliveries")
            receiver.start()  # the same port
            wait_for(lambda: ladders_started(stack.conn, H2), timeout=30, what="the retried delivery")
            stack.start_worker()
            healthy_with_one_ladder(stack, H)
            healthy_with_one_ladder(stack, H2)
        # The retried delivery carried both hosts: H2 started, H answered "already remediating".
        assert receiver.webhook_codes() == [202, 202]
        assert said(receiver, "ladder queued") == 2
        assert said(receiver, "alert skipped: already remediating") == 1
