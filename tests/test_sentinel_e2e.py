"""End to end under Redis Sentinel: the master is killed while ladders run and alerts keep arriving.

Everything is real and on loopback: a redis-server master and replica watched by three
``redis-server --sentinel`` (tests/redis_sentinel.py), Alertmanager delivering to ``remediator serve``
(gunicorn), ``remediator worker --processes 2`` running ladders against the simulated cluster over
SSH. What is pinned: while no master can be reached the receiver answers 503 (never 2xx, never 500)
and Alertmanager retries; the workers wait; after the promotion every alert is taken and every ladder
finishes exactly once, on the new master.
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from conftest import require_binary
from e2e import Receiver, am_alert, deployed, ladders_started, steady_rules
from helpers import alert as webhook_alert
from helpers import bearer, payload, wait_for
from redis_sentinel import SentinelCluster

from remediator.sim.alertmanager import AlertmanagerProcess

HOSTS = 10
MASTER_PASSWORD = "ha-master-3c9d1f"
SENTINEL_PASSWORD = "ha-sentinel-8e2b7a"
# Each restart lingers a second, so the ten ladders are still running when the master dies.
SLOW_RESTART = "sleep 1 && systemctl restart ringrift-sync-agent"


@pytest.fixture(autouse=True)
def _binaries() -> None:
    require_binary("redis-server")
    require_binary("prometheus-alertmanager")


def probe(receiver: Receiver, host_id: str) -> int:
    """One webhook delivery straight to the receiver (a re-send of an alert it has: never a new ladder)."""
    resp = requests.post(
        receiver.webhook_url,
        data=json.dumps(payload([webhook_alert(host_id)])),
        headers={**bearer(), "Content-Type": "application/json"},
        timeout=30,
    )
    return resp.status_code


def test_master_killed_while_ten_ladders_run_loses_and_duplicates_nothing(
    make_sim_cluster, tmp_path, monkeypatch
):
    sim = make_sim_cluster(hosts=HOSTS)
    for host in sim.host_ids:
        sim.kill_agent(host)
        sim.make_critical(host)
    with SentinelCluster(tmp_path / "redis", MASTER_PASSWORD, SENTINEL_PASSWORD) as redis_ha:
        env = redis_ha.env()
        with (
            deployed(
                sim,
                env.pop("REDIS_URL"),
                tmp_path,
                monkeypatch,
                workers=0,
                REMEDIATOR_AGENT_RESTART_COMMAND=SLOW_RESTART,
                REMEDIATOR_RULES_FILE=steady_rules(tmp_path),
                **env,
            ) as (stack, receiver),
            AlertmanagerProcess(
                tmp_path / "am",
                receiver.webhook_url,
                bearer_token=stack.env["REMEDIATOR_WEBHOOK_TOKEN"],
                group_by=("alertname", "host_id"),
                repeat_interval="3s",  # every host's alert is re-sent every few seconds, all along
            ) as am,
        ):
            workers = stack.start_worker("--processes", "2")
            am.post_alerts([am_alert(h) for h in sim.host_ids])
            # Kill the master once ladders are under way on every host, before any has finished.
            wait_for(
                lambda: (
                    all(ladders_started(stack.conn, h) for h in sim.host_ids)
                    and sum(sim.counts(h)["agent_restarts"] for h in sim.host_ids) >= 2
                ),
                timeout=60,
                what="ten ladders running, two agents restarted",
            )
            running = [h for h in sim.host_ids if stack.host(h).get("status") != "finished"]
            old = redis_ha.master()
            (old_address,) = redis_ha.master_addresses()
            old.kill()

            # While every sentinel still names the dead master, no master can be reached.
            masterless: list[int] = []
            while redis_ha.master_addresses() == {old_address}:
                code = probe(receiver, sim.host_ids[0])
                if redis_ha.master_addresses() == {old_address}:
                    masterless.append(code)
            new = redis_ha.wait_failover(old)
            promoted_at = time.monotonic()
            old.start()  # back, as Kubernetes would restart it: the sentinels make it a replica

            states = {h: stack.wait_finished(h, timeout=120) for h in sim.host_ids}
            finished_in = time.monotonic() - promoted_at
            redis_ha.wait_formed()
            # Under load the sentinels may fail over once more (back to the restarted node): legitimate
            # Sentinel behaviour the product must survive too. What must hold: one master, one replica.
            master = redis_ha.master()
            (replica,) = [n for n in (old, new) if n is not master]
            assert (redis_ha.node_role(master), redis_ha.node_role(replica)) == ("master", "slave")
            assert workers.poll() is None, "the workers quit instead of waiting for the new master"
            for host, state in states.items():
                steps = stack.steps(host)
                assert state["outcome"] == "healthy", (host, steps)
                assert ladders_started(stack.conn, host) == 1, (host, steps)  # however many re-sends
                assert sim.counts(host)["agent_restarts"] == 1, (host, steps)
                assert sim.state(host) == "healthy", host
            codes = receiver.webhook_codes()
            receiver_log = receiver.log.read_text()

    assert len(running) == HOSTS, f"only {running} were running when the master was killed"
    assert masterless and set(masterless) == {503}, masterless
    assert set(codes) <= {202, 503}, codes  # never 2xx for unstored work, never 500
    assert 503 in codes and codes[-1] == 202, codes
    assert "Traceback" not in receiver_log
    assert finished_in < 90
