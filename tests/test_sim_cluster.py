"""The simulated cluster's life cycle, sync agents, game files and agent faults."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from remediator.config import ENV_VARS
from remediator.sim import SimCluster, SimError, games, procs


def _force_sync(sim: SimCluster, host_id: str) -> requests.Response:
    return requests.post(f"{sim.coordinator_url}/sync/hosts/{host_id}/sync", json={"force": True}, timeout=10)


def _first_sync_landed(sim: SimCluster, host_id: str) -> None:
    sim.wait_for(lambda: sim.counts(host_id)["syncs"] >= 1, what=f"first sync of {host_id}")


def _sim_pids(sim: SimCluster) -> list[int]:
    pids = [pid for h in sim.hosts for pid in (h.agent_pid, h.sshd_pid) if pid]
    assert len(pids) == 2 * len(sim.hosts)
    return pids


def _all_gone(pids: list[int]) -> bool:
    return not [pid for pid in pids if procs.alive(pid)]


def test_teardown_leaves_no_sshd_or_agent_alive(tmp_path: Path) -> None:
    with SimCluster(hosts=3, root=tmp_path / "sim") as sim:
        pids = _sim_pids(sim)
        assert all(procs.alive(pid) for pid in pids)
        assert sim.ssh_run("host-01", "systemctl restart ringrift-sync-agent").returncode == 0
        pids.append(sim.wait_for(lambda: sim.host("host-01").agent_pid, what="agent restarted over ssh"))
    assert _all_gone(pids)
    assert procs.matching(f"{sim.root}/") == []


def test_teardown_leaves_nothing_alive_when_the_body_raises(tmp_path: Path) -> None:
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), SimCluster(hosts=2, root=tmp_path / "sim") as sim:
        pids = _sim_pids(sim)
        sim.hang_host("host-02")
        raise RuntimeError("boom")
    assert pids and _all_gone(pids)
    assert procs.matching(f"{sim.root}/") == []


def test_ten_hosts_start_with_distinct_ports_and_healthy_state(
    make_sim_cluster: Callable[..., SimCluster],
) -> None:
    sim = make_sim_cluster(hosts=10)
    assert len({h.ssh_port for h in sim.hosts}) == 10
    assert {sim.state(h) for h in sim.host_ids} == {"healthy"}
    assert {h.provider for h in sim.hosts} == {"vast", "lambda"}


def test_env_names_only_variables_the_app_reads(sim_cluster: SimCluster) -> None:
    env = sim_cluster.env()
    assert set(env) <= set(ENV_VARS)
    assert env["REMEDIATOR_RECOVERY_DIR"] == str(sim_cluster.root / "recovered")
    assert "{data_dir}" in env["REMEDIATOR_IMPORT_COMMAND"]
    assert Path(env["REMEDIATOR_SSH_KEY_FILE"]).is_file()
    assert Path(env["REMEDIATOR_SSH_KNOWN_HOSTS"]).read_text().count("ssh-ed25519") == 3


def test_games_reach_the_central_store_over_time(make_sim_cluster: Callable[..., SimCluster]) -> None:
    sim = make_sim_cluster(hosts=2, game_interval=0.3, sync_interval=0.3)
    for host_id in sim.host_ids:
        sim.wait_for(lambda h=host_id: len(sim.central_game_ids(h)) >= 9, what=f"games of {host_id} synced")
        last_sync = sim.last_sync(host_id)
        central = sim.central_game_ids(host_id)
        on_disk = games.games_since(sim.host(host_id).data_dir, 0.0)
        # The contract: every game created up to last_sync is in the store; the rest are unsynced.
        assert {g.game_id for g in on_disk if g.created_at <= last_sync} <= central
        assert central <= {g.game_id for g in on_disk}


def test_killing_the_agent_makes_the_host_critical(make_sim_cluster: Callable[..., SimCluster]) -> None:
    sim = make_sim_cluster(hosts=2, lagging_after=0.5, critical_after=1.5, sync_interval=0.2)
    pid = sim.kill_agent("host-01")
    assert pid is not None and not procs.alive(pid)
    assert sim.host("host-01").agent_pid is None
    sim.wait_for(lambda: sim.state("host-01") == "critical", what="host-01 critical")
    assert sim.state("host-02") == "healthy"


def test_unsynced_games_are_those_created_after_last_sync(
    make_sim_cluster: Callable[..., SimCluster],
) -> None:
    sim = make_sim_cluster(hosts=1, selfplay=False)
    _first_sync_landed(sim, "host-01")
    sim.kill_agent("host-01")
    assert sim.unsynced_games("host-01").count == 0
    written = sim.write_games("host-01", 4) + sim.write_games("host-01", 2)
    assert sim.unsynced_games("host-01") == (6, written[0].created_at, written[-1].created_at)
    assert written[0].created_at > sim.last_sync("host-01")
    assert not {g.game_id for g in written} & sim.central_game_ids("host-01")


def test_force_sync_of_a_healthy_host_advances_last_sync(make_sim_cluster: Callable[..., SimCluster]) -> None:
    sim = make_sim_cluster(hosts=2, sync_interval=600)
    _first_sync_landed(sim, "host-01")
    before = sim.last_sync("host-01")
    answer = _force_sync(sim, "host-01")
    assert answer.status_code == 202
    sim.wait_for(lambda: sim.last_sync("host-01") > before, what="forced sync landed")
    assert sim.counts("host-01")["force_syncs"] == 1


def test_force_sync_of_a_host_with_a_dead_agent_changes_nothing(
    make_sim_cluster: Callable[..., SimCluster],
) -> None:
    sim = make_sim_cluster(hosts=2, sync_interval=600)
    _first_sync_landed(sim, "host-02")
    sim.kill_agent("host-01")
    sim.make_critical("host-01")
    before = sim.last_sync("host-01")
    assert _force_sync(sim, "host-01").status_code == 202
    # A healthy host's forced sync is the barrier: once it landed, host-01's would have too.
    healthy_before = sim.last_sync("host-02")
    assert _force_sync(sim, "host-02").status_code == 202
    sim.wait_for(lambda: sim.last_sync("host-02") > healthy_before, what="host-02 forced sync")
    assert sim.last_sync("host-01") == before
    assert sim.state("host-01") == "critical"
    assert sim.host("host-01").paths.force_sync.exists()  # asked, but nobody was there to answer


def test_wedged_agent_is_alive_without_periodic_syncs_until_a_forced_sync(
    make_sim_cluster: Callable[..., SimCluster],
) -> None:
    sim = make_sim_cluster(hosts=2, sync_interval=0.2)
    _first_sync_landed(sim, "host-01")
    pid = sim.wedge_agent("host-01")
    sim.make_critical("host-01")
    before = sim.last_sync("host-01")
    syncs = sim.counts("host-02")["syncs"]
    sim.wait_for(lambda: sim.counts("host-02")["syncs"] >= syncs + 3, what="three periodic syncs elsewhere")
    assert sim.last_sync("host-01") == before
    assert sim.ssh_run("host-01", "pgrep -f sync_agent").stdout.strip() == str(pid)
    assert _force_sync(sim, "host-01").status_code == 202
    sim.wait_for(lambda: sim.state("host-01") == "healthy", what="a forced sync kicks the wedged agent")
    assert sim.host("host-01").agent_pid == pid


def test_hard_wedged_agent_never_syncs_until_restarted(make_sim_cluster: Callable[..., SimCluster]) -> None:
    sim = make_sim_cluster(hosts=2, sync_interval=600)
    _first_sync_landed(sim, "host-01")
    _first_sync_landed(sim, "host-02")
    pid = sim.wedge_agent("host-01", until_restart=True)
    sim.make_critical("host-01")
    before = sim.last_sync("host-01")
    assert _force_sync(sim, "host-01").status_code == 202
    # A healthy host's forced sync is the barrier: once it landed, host-01's would have too.
    healthy_before = sim.last_sync("host-02")
    assert _force_sync(sim, "host-02").status_code == 202
    sim.wait_for(lambda: sim.last_sync("host-02") > healthy_before, what="host-02 forced sync")
    assert sim.host("host-01").agent_pid == pid
    assert sim.last_sync("host-01") == before
    assert sim.ssh_run("host-01", "pgrep -f sync_agent").stdout.strip() == str(pid)
    assert sim.ssh_run("host-01", "systemctl restart ringrift-sync-agent").returncode == 0
    sim.wait_for(lambda: sim.state("host-01") == "healthy", what="the restarted agent syncs")


def test_wedging_a_dead_agent_is_refused(sim_cluster: SimCluster) -> None:
    sim_cluster.kill_agent("host-01")
    with pytest.raises(SimError, match="no running agent"):
        sim_cluster.wedge_agent("host-01")


def test_disk_full_stops_syncs_with_enospc_in_the_sync_log(
    make_sim_cluster: Callable[..., SimCluster],
) -> None:
    sim = make_sim_cluster(hosts=1, sync_interval=0.2)
    sim.disk_full("host-01")
    sim.make_critical("host-01")
    log = sim.host("host-01").sync_log
    sim.wait_for(lambda: "No space left on device" in log.read_text(), what="ENOSPC logged")
    assert sim.state("host-01") == "critical"
    sim.disk_full("host-01", False)
    sim.wait_for(lambda: sim.state("host-01") == "healthy", what="syncs again once space is freed")


def test_retired_host_refuses_syncs_until_unretired(make_sim_cluster: Callable[..., SimCluster]) -> None:
    sim = make_sim_cluster(hosts=1, sync_interval=0.2)
    sim.retired_host_back_online("host-01")
    assert sim.retired("host-01") and sim.state("host-01") == "critical"
    assert sim.host("host-01").agent_pid is not None
    sim.wait_for(lambda: sim.counts("host-01")["sync_refusals"] >= 1, what="a refused sync")
    assert sim.state("host-01") == "critical"
    log = sim.host("host-01").sync_log
    sim.wait_for(lambda: "sync refused" in log.read_text(), what="the agent logs the refusal")
    answer = requests.post(
        f"{sim.coordinator_url}/admin/unretire",
        json={"host_id": "host-01"},
        headers={"X-Admin-Key": sim.admin_key},
        timeout=10,
    )
    assert answer.status_code == 200 and answer.json()["changed"] is True
    sim.wait_for(lambda: sim.state("host-01") == "healthy", what="syncs again once unretired")
    assert sim.counts("host-01")["retires"] == 0  # the sim's own retire is not a remediator mutation
    assert sim.counts("host-01")["unretires"] == 1


def test_agent_that_dies_after_restart_never_syncs(make_sim_cluster: Callable[..., SimCluster]) -> None:
    sim = make_sim_cluster(hosts=1, sync_interval=0.2)
    sim.agent_dies_after_restart("host-01")
    sim.make_critical("host-01")
    before = sim.last_sync("host-01")
    assert sim.ssh_run("host-01", "systemctl restart ringrift-sync-agent").returncode == 0
    log = sim.host("host-01").sync_log
    sim.wait_for(lambda: "sync agent crashed" in log.read_text(), what="restarted agent crashed")
    sim.wait_for(lambda: sim.host("host-01").agent_pid is None, what="restarted agent dead")
    assert sim.last_sync("host-01") == before
    assert sim.counts("host-01")["agent_restarts"] == 1


def test_selfplay_stops_while_paused(make_sim_cluster: Callable[..., SimCluster]) -> None:
    sim = make_sim_cluster(hosts=1, game_interval=0.2, sync_interval=0.2)
    data_dir = sim.host("host-01").data_dir
    sim.wait_for(lambda: sim.host_game_ids("host-01"), what="a first game file")
    answer = requests.post(
        f"{sim.coordinator_url}/admin/pause-selfplay",
        json={"host_ids": ["host-01"], "reason": "test"},
        headers={"X-Admin-Key": sim.admin_key},
        timeout=10,
    )
    assert answer.status_code == 200 and answer.json()["paused"] == ["host-01"]
    syncs = sim.counts("host-01")["syncs"]
    sim.wait_for(lambda: sim.counts("host-01")["syncs"] > syncs, what="a file being written is done")
    files = sorted(data_dir.glob("games_*.db"))
    syncs = sim.counts("host-01")["syncs"]
    sim.wait_for(lambda: sim.counts("host-01")["syncs"] >= syncs + 3, what="time passes (three syncs)")
    assert sorted(data_dir.glob("games_*.db")) == files
    assert sim.counts("host-01")["pauses"] == 1


def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="critical_after"):
        SimCluster(hosts=1, root=tmp_path, lagging_after=5, critical_after=2)
    with pytest.raises(ValueError, match="providers"):
        SimCluster(hosts=1, root=tmp_path, providers=("aws",))


@pytest.mark.parametrize("sim_cluster", [{"hosts": 2, "host_ids": ["gpu-a", "gpu-b"]}], indirect=True)
def test_fixture_takes_options(sim_cluster: SimCluster) -> None:
    assert sim_cluster.host_ids == ["gpu-a", "gpu-b"]
