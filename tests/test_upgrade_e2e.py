"""A rolling upgrade, end to end: workers SIGTERMed mid-ladder, the receiver restarted under load.

Twenty hosts (ten agents dead, ten wedged until a restart: their ladders wait between steps and
climb from force_sync to restart_agent) are remediated by ``remediator worker --processes 2`` and a
single ``remediator worker`` while Alertmanager keeps delivering to ``remediator serve``. Every old
worker gets SIGTERM (as Kubernetes sends it) with ladders in every phase, and new workers start; then
the receiver is restarted while Alertmanager delivers new alerts and re-sends the old ones. What is
pinned: the old workers finish the job in hand and exit 0 (no ladder is cut off or resumed by the
sweeper), every ladder finishes once, on the new workers, and no alert is lost.
"""

from __future__ import annotations

import signal
import time

import pytest
from conftest import require_binary
from e2e import Stack, am_alert, deployed, ladders_started, steady_rules
from helpers import wait_for
from rq import Worker

from remediator.sim.alertmanager import AlertmanagerProcess

HOSTS = 20
STOP_TIMEOUT = 60  # seconds an old worker may take to finish its job and exit
# Each restart lingers a second, so that SIGTERM finds workers in the middle of a job.
SLOW_RESTART = "sleep 1 && systemctl restart ringrift-sync-agent"


@pytest.fixture(autouse=True)
def _alertmanager_installed() -> None:
    require_binary("prometheus-alertmanager")


def busy_workers(stack: Stack) -> int:
    return sum(1 for w in Worker.all(connection=stack.conn) if w.get_state() == "busy")


def finished_after_sigterm(log: str) -> int:
    """Jobs a worker's log shows finished after it was told to stop."""
    _, _, after = log.partition("warm shut down requested")
    return after.count("Job OK")


def cut_off(stack: Stack, host: str) -> list[dict]:
    """The sweeper's audit entries for the host: each says a job of its ladder was cut off (or lost)
    and resumed, rather than finished by its worker."""
    return [e for e in stack.audit(host) if e["step"] == "sweeper"]


def test_workers_sigtermed_mid_ladder_and_receiver_restarted_lose_and_repeat_nothing(
    make_sim_cluster, redis_url, tmp_path, monkeypatch
):
    sim = make_sim_cluster(hosts=HOSTS)
    dead, wedged = sim.host_ids[: HOSTS // 2], sim.host_ids[HOSTS // 2 :]
    for host in dead:
        sim.kill_agent(host)
    for host in wedged:
        sim.wedge_agent(host, until_restart=True)
    for host in sim.host_ids:
        sim.make_critical(host)
    first, second = sim.host_ids[::2], sim.host_ids[1::2]  # each half has dead and wedged hosts
    with (
        deployed(
            sim,
            redis_url,
            tmp_path,
            monkeypatch,
            workers=0,
            REMEDIATOR_RULES_FILE=steady_rules(tmp_path),
            REMEDIATOR_AGENT_RESTART_COMMAND=SLOW_RESTART,
        ) as (stack, receiver),
        AlertmanagerProcess(
            tmp_path / "am",
            receiver.webhook_url,
            bearer_token=stack.env["REMEDIATOR_WEBHOOK_TOKEN"],
            group_by=("alertname", "host_id"),
            repeat_interval="2s",  # re-sends all along: load on the receiver while it restarts
        ) as am,
    ):
        old = [stack.start_worker("--processes", "2"), stack.start_worker()]
        am.post_alerts([am_alert(h) for h in first])
        # Mid-ladder everywhere: every first-half ladder started, some agents restarted, none finished.
        wait_for(
            lambda: (
                all(ladders_started(stack.conn, h) for h in first)
                and sum(sim.counts(h)["agent_restarts"] for h in first) >= 2
            ),
            timeout=60,
            what="the first ladders under way",
        )
        in_flight = [h for h in first if stack.host(h).get("status") != "finished"]
        wait_for(lambda: busy_workers(stack) >= 2, timeout=30, what="two workers in the middle of a job")

        # 1. Rolling upgrade of the workers: SIGTERM to every old one, new ones started beside them.
        for proc in old:
            proc.send_signal(signal.SIGTERM)
        stack.start_worker("--processes", "3")
        stopped_in = time.monotonic()
        exits = [proc.wait(timeout=STOP_TIMEOUT) for proc in old]
        stopped_in = time.monotonic() - stopped_in

        # 2. Rolling restart of the receiver while Alertmanager delivers the second half.
        am.post_alerts([am_alert(h) for h in second])
        receiver.stop()
        time.sleep(2)  # down long enough for Alertmanager's deliveries to be refused and retried
        receiver.start()

        states = {h: stack.wait_finished(h, timeout=150) for h in sim.host_ids}
        for host, state in states.items():
            steps = stack.steps(host)
            assert state["outcome"] == "healthy", (host, steps)
            assert ladders_started(stack.conn, host) == 1, (host, steps)  # no alert lost, none doubled
            assert sim.counts(host)["agent_restarts"] == 1, (host, steps)
            assert sim.state(host) == "healthy", host
            assert cut_off(stack, host) == [], (host, steps)
        codes = receiver.webhook_codes()
        worker_logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(len(old))]

    assert len(in_flight) == len(first), f"only {in_flight} were mid-ladder at the SIGTERM"
    assert exits == [0, 0], exits
    assert stopped_in < STOP_TIMEOUT
    assert all("warm shut down requested" in log for log in worker_logs)
    assert sum(finished_after_sigterm(log) for log in worker_logs) >= 1  # a job in hand was finished
    assert set(codes) == {202}, codes  # refused connections while it was down; never an error answer
