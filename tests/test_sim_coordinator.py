"""The simulated coordinator's HTTP contract: host records, admin calls, metrics and faults."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from remediator.sim import SimCluster

ADMIN_CALLS = [
    ("/admin/unretire", {"host_id": "host-01"}),
    ("/admin/retire-host", {"host_id": "host-01", "reason": "data_loss", "acknowledge_loss": True}),
    ("/admin/pause-selfplay", {"host_ids": ["host-01"], "reason": "test"}),
    ("/admin/resume-selfplay", {"host_ids": ["host-01"], "reason": "test"}),
    (
        "/admin/data-loss",
        {"host_id": "host-01", "games_lost": 3, "first_game_at": 1.0, "last_game_at": 2.0, "checklist": {}},
    ),
    ("/sim/faults", {"fault": "kill_agent", "host_id": "host-01"}),
]


def _post(sim: SimCluster, path: str, body: Any, key: str | None = None) -> requests.Response:
    headers = {"X-Admin-Key": key} if key is not None else {}
    return requests.post(f"{sim.coordinator_url}{path}", json=body, headers=headers, timeout=10)


def _admin(sim: SimCluster, path: str, body: Any) -> requests.Response:
    return _post(sim, path, body, sim.admin_key)


def test_host_records_carry_the_contract_fields(sim_cluster: SimCluster) -> None:
    hosts = requests.get(f"{sim_cluster.coordinator_url}/sync/hosts", timeout=10).json()
    assert list(hosts) == ["host-01", "host-02", "host-03"]
    record = hosts["host-02"]
    contract = {"state", "last_sync", "retired", "address", "ssh_user", "ssh_port", "provider"}
    assert contract | {"instance_id", "data_dir", "sync_log", "games_synced"} <= set(record)
    host = sim_cluster.host("host-02")
    assert (record["address"], record["ssh_port"], record["data_dir"]) == (
        "127.0.0.1",
        host.ssh_port,
        str(host.data_dir),
    )
    assert (record["provider"], record["instance_id"]) == (host.provider, host.instance_id)
    assert record["state"] == "healthy" and record["retired"] is False
    assert isinstance(record["last_sync"], float)


def test_state_follows_seconds_since_last_sync(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    sim.kill_agent("host-01")
    sim.kill_agent("host-02")
    sim.make_lagging("host-01")
    sim.make_critical("host-02")
    hosts = requests.get(f"{sim.coordinator_url}/sync/hosts", timeout=10).json()
    assert [hosts[h]["state"] for h in sim.host_ids] == ["lagging", "critical", "healthy"]


def test_metrics_count_hosts_by_state_and_give_last_sync(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    sim.kill_agent("host-03")
    sim.make_critical("host-03")
    text = requests.get(f"{sim.coordinator_url}/metrics", timeout=10).text
    assert 'ringrift_sync_hosts{state="critical"} 1' in text
    assert 'ringrift_sync_hosts{state="healthy"} 2' in text
    assert 'ringrift_sync_hosts{state="lagging"} 0' in text
    assert (
        f'ringrift_host_last_sync_timestamp_seconds{{host_id="host-03"}} {sim.last_sync("host-03"):.3f}'
        in text
    )


@pytest.mark.parametrize(("path", "body"), ADMIN_CALLS)
@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_admin_calls_need_the_admin_key(
    sim_cluster: SimCluster, path: str, body: Any, key: str | None
) -> None:
    answer = _post(sim_cluster, path, body, key)
    assert answer.status_code == 401
    assert "X-Admin-Key" in answer.json()["error"]
    counts = sim_cluster.counts("host-01")
    assert not any(counts[c] for c in ("unretires", "retires", "pauses", "resumes", "data_loss_records"))
    assert sim_cluster.host("host-01").agent_pid is not None


def test_retire_without_acknowledge_loss_is_refused(sim_cluster: SimCluster) -> None:
    for ack in (None, False, "yes"):
        body = {"host_id": "host-01", "reason": "data_loss", "acknowledge_loss": ack}
        answer = _admin(sim_cluster, "/admin/retire-host", body)
        assert answer.status_code == 400
        assert answer.json()["field"] == "acknowledge_loss"
    assert sim_cluster.retired("host-01") is False
    assert sim_cluster.counts("host-01")["retires"] == 0


def test_retire_with_acknowledge_loss_retires_and_counts(sim_cluster: SimCluster) -> None:
    body = {"host_id": "host-01", "reason": "data_loss", "acknowledge_loss": True}
    answer = _admin(sim_cluster, "/admin/retire-host", body)
    assert answer.status_code == 200 and answer.json() == {
        "host_id": "host-01",
        "retired": True,
        "changed": True,
    }
    assert sim_cluster.retired("host-01")
    assert _post(sim_cluster, "/sync/hosts/host-01/sync", {"force": True}).status_code == 409
    assert sim_cluster.counts("host-01")["retires"] == 1
    assert "host_id=host-01 retired" in sim_cluster.coordinator_log.read_text()


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/admin/unretire", {}, "host_id"),
        ("/admin/unretire", ["host-01"], "body"),
        ("/admin/retire-host", {"host_id": "host-01", "acknowledge_loss": True}, "reason"),
        ("/admin/pause-selfplay", {"host_ids": "host-01", "reason": "x"}, "host_ids"),
        ("/admin/resume-selfplay", {"host_ids": ["host-01"]}, "reason"),
        ("/admin/data-loss", {"host_id": "host-01", "games_lost": -1}, "games_lost"),
        ("/admin/data-loss", {"host_id": "host-01", "games_lost": 1, "first_game_at": 1.0}, "last_game_at"),
        (
            "/admin/data-loss",
            {
                "host_id": "host-01",
                "games_lost": 1,
                "first_game_at": 1,
                "last_game_at": 2,
                "checklist": "done",
            },
            "checklist",
        ),
        ("/sync/hosts/host-01/sync", {"force": "yes"}, "force"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(
    sim_cluster: SimCluster, path: str, body: Any, field: str
) -> None:
    answer = _admin(sim_cluster, path, body)
    assert answer.status_code == 400
    assert answer.json()["field"] == field


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/unretire", {"host_id": "nope"}),
        ("/admin/retire-host", {"host_id": "nope", "reason": "r", "acknowledge_loss": True}),
        ("/admin/pause-selfplay", {"host_ids": ["host-01", "nope"], "reason": "r"}),
        ("/sync/hosts/nope/sync", {"force": True}),
    ],
)
def test_unknown_hosts_are_404_and_nothing_is_applied(sim_cluster: SimCluster, path: str, body: Any) -> None:
    answer = _admin(sim_cluster, path, body)
    assert answer.status_code == 404
    assert answer.json()["host_id"] == "nope"
    assert sim_cluster.coordinator is not None
    assert not sim_cluster.coordinator.hosts["host-01"].selfplay_paused


def test_every_mutation_is_counted_per_host(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    for path, body in ADMIN_CALLS[:5]:
        assert _admin(sim, path, body).status_code == 200, path
    assert _admin(sim, "/admin/pause-selfplay", {"host_ids": ["host-02", "host-03"], "reason": "r"}).ok
    assert _post(sim, "/sync/hosts/host-02/sync", {"force": True}).status_code == 202
    counts = sim.counts("host-01")
    assert {
        k: counts[k] for k in ("unretires", "retires", "pauses", "resumes", "data_loss_records")
    } == dict.fromkeys(("unretires", "retires", "pauses", "resumes", "data_loss_records"), 1)
    assert (sim.counts("host-02")["pauses"], sim.counts("host-02")["force_syncs"]) == (1, 1)
    assert sim.data_loss_records[0]["games_lost"] == 3
    assert [c["call"] for c in sim.calls] == [
        "unretire",
        "retire-host",
        "pause-selfplay",
        "resume-selfplay",
        "data-loss",
        "pause-selfplay",
        "sync",
    ]


def test_runbook_curl_without_content_type_is_understood(sim_cluster: SimCluster) -> None:
    answer = requests.post(
        f"{sim_cluster.coordinator_url}/admin/unretire",
        data='{"host_id": "host-01"}',
        headers={"X-Admin-Key": sim_cluster.admin_key, "Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert answer.status_code == 200


def test_coordinator_fault_answers_503_then_recovers(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    sim.coordinator_fault(status=503)
    assert requests.get(f"{sim.coordinator_url}/sync/hosts", timeout=10).status_code == 503
    assert _admin(sim, "/admin/unretire", {"host_id": "host-01"}).status_code == 503
    sim.coordinator_fault(None)
    assert requests.get(f"{sim.coordinator_url}/sync/hosts", timeout=10).status_code == 200


def test_slow_coordinator_makes_short_timeouts_expire(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    sim.coordinator_fault(delay=1.5)
    with pytest.raises(requests.ReadTimeout):
        requests.get(f"{sim.coordinator_url}/sync/hosts", timeout=0.3)
    sim.coordinator_fault(None)
    assert requests.get(f"{sim.coordinator_url}/sync/hosts", timeout=10).status_code == 200


def test_faults_can_be_injected_over_http(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    answer = _admin(sim, "/sim/faults", {"fault": "kill_agent", "host_id": "host-01"})
    assert answer.status_code == 200 and answer.json()["applied"] is True
    assert sim.host("host-01").agent_pid is None
    assert _admin(sim, "/sim/faults", {"fault": "coordinator_fault", "status": 503}).status_code == 200
    assert requests.get(f"{sim.coordinator_url}/sync/hosts", timeout=10).status_code == 503
    assert _admin(sim, "/sim/faults", {"fault": "coordinator_fault"}).status_code == 200  # the way back
    assert _admin(sim, "/sim/faults", {"fault": "rm_rf"}).status_code == 400
    assert _admin(sim, "/sim/faults", {"fault": "kill_agent", "host": "x"}).status_code == 400
    assert _admin(sim, "/sim/faults", {"fault": "kill_agent", "host_id": "nope"}).status_code == 404
