"""The fleet probe (runbook Prevention 3) end to end: real workers probe the simulated hosts over real SSH,
the receiver exports what they found, a hanging host delays no other, and an agent found down gets a
gentle ladder when the rules ask for it."""

from __future__ import annotations

import time

import pytest
from e2e import FAST_RULES, ladders_started, make_stack, prom_value
from helpers import wait_for

from remediator import incidents, probe
from remediator.probe import HostProbe, ProbePass
from remediator.rules.loader import load_rules
from workers.probe import claim

CONNECT_TIMEOUT = 3.0  # seconds: make_stack's REMEDIATOR_SSH_CONNECT_TIMEOUT
INTERVAL = 5.0  # seconds between two passes in these tests
# Hosts that stay healthy for a minute without syncing: the probe, not the lag, finds the dead agent.
SLOW_LAG = {"hosts": 3, "lagging_after": 60.0, "critical_after": 120.0}


def probe_rules(tmp_path, start_prevention: bool = False):
    text = FAST_RULES.read_text() + (
        "\nprobe:\n"
        "  enabled: true\n"
        f"  interval_seconds: {INTERVAL}\n"
        "  concurrency: 4\n"
        "  command_timeout_seconds: 3\n"
        f"  start_prevention: {str(start_prevention).lower()}\n"
    )
    path = tmp_path / "probe-rules.yaml"
    path.write_text(text)
    load_rules(path)  # valid, or the test stops here naming the line
    return path


def metrics_text(stack) -> str:
    return stack.app.test_client().get("/metrics").get_data(as_text=True)


def passes_after(stack, t: float) -> dict | None:
    last = probe.last_pass(stack.conn)
    return last if last is not None and last["started_at"] > t else None


@pytest.mark.parametrize("sim_cluster", [SLOW_LAG], indirect=True)
def test_a_hanging_host_delays_no_other_and_a_dead_agent_is_found_within_one_interval(
    sim_cluster, redis_url, tmp_path, monkeypatch
):
    sim = sim_cluster
    hung, dead, fine = sim.host_ids
    sim.hang_host(hung)  # accepts TCP, never sends the SSH banner
    stack = make_stack(
        sim, redis_url, tmp_path, monkeypatch, REMEDIATOR_RULES_FILE=str(probe_rules(tmp_path))
    )
    stack.start_worker()
    try:
        first = wait_for(lambda: passes_after(stack, 0), timeout=30, what="the first probe pass")
        found = probe.findings(stack.conn)
        assert set(found) == set(sim.host_ids)
        assert found[hung].reachable is False and found[hung].agent_running is None  # undecided
        assert CONNECT_TIMEOUT - 0.5 <= found[hung].seconds <= CONNECT_TIMEOUT + 2
        for host in (dead, fine):
            assert found[host].reachable is True and found[host].agent_running is True
            # Checked while the hanging host held its own session: not after its timeout.
            assert found[host].at - first["started_at"] < CONNECT_TIMEOUT, found[host]
            assert found[host].seconds < CONNECT_TIMEOUT
        assert first["finished_at"] - first["started_at"] <= CONNECT_TIMEOUT + 2

        killed_at = time.time()
        sim.kill_agent(dead)
        seen = wait_for(
            lambda: (
                (p := passes_after(stack, killed_at))
                and probe.findings(stack.conn)[dead].agent_running is False
                and p
            ),
            timeout=INTERVAL + CONNECT_TIMEOUT + 10,
            what=f"a probe pass finding {dead}'s agent down",
        )
        # Found by the first pass that started after the kill: within one interval (plus the pass
        # itself, which the hanging host bounds, and the one-second look for a due pass).
        assert seen["finished_at"] - killed_at <= INTERVAL + 1 + CONNECT_TIMEOUT + 2
        assert sim.state(dead) == "healthy"  # before the lag could have told anyone

        text = metrics_text(stack)
        assert prom_value(text, "remediator_host_agent_running", host_id=dead) == 0.0
        assert prom_value(text, "remediator_host_agent_running", host_id=fine) == 1.0
        assert prom_value(text, "remediator_host_reachable", host_id=hung) == 0.0
        assert prom_value(text, "remediator_host_reachable", host_id=dead) == 1.0
        assert f'remediator_host_agent_running{{host_id="{hung}"}}' not in text  # unknown: no sample
        assert prom_value(text, "remediator_probe_last_run_timestamp_seconds") >= seen["finished_at"] - 0.01
        assert ladders_started(stack.conn, dead) == 0  # start_prevention is off
    finally:
        stack.stop()


@pytest.mark.parametrize("sim_cluster", [SLOW_LAG], indirect=True)
def test_an_agent_found_down_gets_one_gentle_ladder_that_restarts_it_before_any_alert(
    sim_cluster, redis_url, tmp_path, monkeypatch
):
    sim = sim_cluster
    host = sim.host_ids[1]
    sim.kill_agent(host)
    rules = probe_rules(tmp_path, start_prevention=True)
    stack = make_stack(sim, redis_url, tmp_path, monkeypatch, REMEDIATOR_RULES_FILE=str(rules))
    stack.start_worker()
    try:
        state = stack.wait_finished(host, timeout=60)
        assert state["outcome"] == "prevented", stack.steps(host)
        steps = {step for step, _ in stack.steps(host)}
        assert steps <= {"intake", "diagnose", "restart_agent", "force_sync", "ladder"}, steps
        assert sim.counts(host)["agent_restarts"] == 1 and sim.state(host) == "healthy"
        incident = incidents.current(stack.conn, host)
        assert incident.ladders[0].kind == "prevent"
        # Later passes find the agent running: no second ladder, and the other hosts never got one.
        healed_at = time.time()
        wait_for(lambda: passes_after(stack, healed_at), timeout=INTERVAL + 10, what="a later pass")
        assert probe.findings(stack.conn)[host].agent_running is True
        assert ladders_started(stack.conn, host) == 1
        assert [ladders_started(stack.conn, h) for h in sim.host_ids if h != host] == [0, 0]
    finally:
        stack.stop()


def test_one_pass_at_a_time_and_one_per_interval_across_workers(redis_conn):
    from helpers import make_settings

    settings = make_settings("")
    policy = load_rules().probe
    token = claim(redis_conn, settings, policy)
    assert token is not None
    assert claim(redis_conn, settings, policy) is None  # the pass runs: nobody else starts one
    redis_conn.delete("remediator:probe:lock")
    assert claim(redis_conn, settings, policy) is None  # it started less than an interval ago


def test_an_undecided_host_exports_no_sample_and_a_dropped_host_disappears(app, redis_conn):
    now = time.time()
    hosts = {
        "h1": HostProbe("h1", True, False, now, 0.1),
        "h2": HostProbe("h2", None, None, now, 0.0, error="no address"),
        "h3": HostProbe("h3", True, None, now, 3.0, error="agent check timed out"),
    }
    probe.save(redis_conn, ProbePass(now - 1, now, hosts))
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'remediator_host_agent_running{host_id="h1"} 0.0' in text
    assert 'remediator_host_reachable{host_id="h3"} 1.0' in text
    assert 'host_id="h2"' not in text
    assert 'remediator_host_agent_running{host_id="h3"}' not in text
    probe.save(redis_conn, ProbePass(now, now + 1, {"h1": hosts["h1"]}))
    assert set(probe.findings(redis_conn)) == {"h1"}
