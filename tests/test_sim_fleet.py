"""The fleet-scale sim: 50 hosts on shared SSH servers and one agent engine, each host still a real SSH
endpoint with its own key, its own data and agent state, and the failure modes of the per-host sim."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
import requests
from e2e import make_stack
from helpers import alert

from remediator import defaults
from remediator.sim import games
from remediator.sim.fleet import FleetCluster

HOSTS = 50


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetCluster]:
    """One 50-host fleet for the module (each test uses hosts of its own), two SSH server processes,
    agents syncing every second so that a fault shows within seconds."""
    sim = FleetCluster(
        hosts=HOSTS,
        root=tmp_path_factory.mktemp("fleet"),
        hosts_per_server=25,
        sync_interval=1.0,
        lagging_after=3.0,
        critical_after=6.0,
        game_interval=2.0,
    )
    with sim:
        yield sim


def run(sim: FleetCluster, host_id: str, command: str) -> tuple[int, str, str]:
    result = sim.ssh_run(host_id, command, timeout=30)
    return result.returncode, result.stdout.strip(), result.stderr.strip()


def test_every_host_answers_echo_ok_over_ssh_with_its_own_host_key(fleet: FleetCluster) -> None:
    async def echo(host_id: str) -> str:
        host = fleet.host(host_id)
        async with asyncssh.connect(
            host.address,
            port=host.ssh_port,
            username=fleet.ssh_user,
            known_hosts=str(fleet.known_hosts_file),
            client_keys=[str(fleet.ssh_key_file)],
            agent_path=None,
            config=[],
        ) as conn:
            return str((await conn.run("echo OK", check=True)).stdout).strip()

    async def all_hosts() -> list[str]:
        return await asyncio.gather(*(echo(h) for h in fleet.host_ids))

    assert asyncio.run(all_hosts()) == ["OK"] * HOSTS
    ports = {fleet.host(h).ssh_port for h in fleet.host_ids}
    keys = {fleet.host(h).paths.host_key.with_suffix(".pub").read_text().split()[1] for h in fleet.host_ids}
    assert len(ports) == len(keys) == HOSTS
    assert len(fleet.known_hosts_file.read_text().splitlines()) == HOSTS
    assert len({fleet.host(h).sshd_pid for h in fleet.host_ids}) == 2  # 25 hosts a server


def test_a_host_presenting_another_hosts_key_is_refused(fleet: FleetCluster, tmp_path: Path) -> None:
    wrong = tmp_path / "known_hosts"
    other = fleet.host("host-02").paths.host_key.with_suffix(".pub").read_text().split()[:2]
    wrong.write_text(f"[127.0.0.1]:{fleet.host('host-01').ssh_port} {' '.join(other)}\n")
    argv = fleet.ssh_argv("host-01", "echo OK")
    argv[argv.index(f"UserKnownHostsFile={fleet.known_hosts_file}")] = f"UserKnownHostsFile={wrong}"
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 255 and "HOST IDENTIFICATION HAS CHANGED" in result.stderr


def test_a_session_runs_in_the_hosts_login_directory_with_its_shims_first(fleet: FleetCluster) -> None:
    status, out, _ = run(
        fleet, "host-03", "command -v systemctl pgrep pkill; echo $RINGRIFT_HOST_ROOT; pwd; ls"
    )
    paths = fleet.host("host-03").paths
    assert status == 0
    assert out.split() == [
        *(str(fleet.fleet_dir / "bin" / n) for n in ("systemctl", "pgrep", "pkill")),
        str(paths.root),
        str(paths.home),
        "start_sync.sh",
    ]


def test_rsync_over_the_fleet_server_copies_a_hosts_games(fleet: FleetCluster, tmp_path: Path) -> None:
    fleet.kill_agent("host-04")
    written = {g.game_id for g in fleet.write_games("host-04", 5)}
    dest = tmp_path / "recovered" / "host-04"
    dest.mkdir(parents=True)
    result = subprocess.run(fleet.rsync_argv("host-04", dest), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    copied = {g.game_id for g in games.games_since(dest, 0.0)}
    assert written <= copied <= fleet.host_game_ids("host-04")
    assert not copied & fleet.host_game_ids("host-05")  # its own data dir, not another host's


def test_agent_check_exit_codes_follow_the_agents_life(fleet: FleetCluster) -> None:
    h = "host-06"
    assert run(fleet, h, defaults.AGENT_CHECK_COMMAND)[0] == 0
    fleet.kill_agent(h)
    assert fleet.host(h).agent_pid is None
    assert run(fleet, h, defaults.AGENT_CHECK_COMMAND)[0] == 1
    assert run(fleet, h, "pgrep sync_agent")[0] == 1  # without -f: the process name, python3
    assert run(fleet, h, defaults.AGENT_RESTART_COMMAND)[0] == 0
    status, out, _ = run(fleet, h, defaults.AGENT_CHECK_COMMAND)
    assert status == 0 and out == str(fleet.host(h).agent_pid)
    counts = fleet.counts(h)
    assert counts["agent_restarts"] == 1 and counts["agent_kills"] == 0  # restarting a dead agent kills none


def test_the_runbooks_pkill_kills_its_own_shell_and_the_default_fallback_does_not(
    fleet: FleetCluster,
) -> None:
    h = "host-07"
    status, _, _ = run(fleet, h, "pkill -f sync_agent && ./start_sync.sh")
    assert status == 255  # the shell running it was killed: ssh reports the signal, start_sync.sh never ran
    assert fleet.host(h).agent_pid is None and fleet.counts(h)["agent_kills"] == 1
    assert fleet.counts(h)["agent_restarts"] == 0
    status, out, _ = run(fleet, h, defaults.AGENT_FALLBACK_COMMAND)
    assert status == 0 and out.startswith("sync agent started")
    assert fleet.host(h).agent_pid is not None and fleet.counts(h)["agent_restarts"] == 1


def test_hosts_without_systemd_or_systemctl_fail_the_restart_as_the_per_host_sim_does(
    fleet: FleetCluster,
) -> None:
    fleet.without_systemd("host-08")
    status, _, err = run(fleet, "host-08", defaults.AGENT_RESTART_COMMAND)
    assert status == 1 and "not been booted with systemd" in err
    fleet.systemctl_missing("host-09")
    status, _, err = run(fleet, "host-09", defaults.AGENT_RESTART_COMMAND)
    assert status == 127 and "command not found" in err
    fleet.set_restart_policy("host-10", "on-failure")
    assert run(fleet, "host-10", "systemctl show -p Restart ringrift-sync-agent")[1] == "Restart=on-failure"


def test_an_agent_that_dies_after_restart_is_found_and_then_gone(fleet: FleetCluster) -> None:
    h = "host-11"
    fleet.agent_dies_after_restart(h)
    assert run(fleet, h, defaults.AGENT_RESTART_COMMAND)[0] == 0
    assert run(fleet, h, defaults.AGENT_CHECK_COMMAND)[0] == 0  # alive for a moment ...
    time.sleep(0.6)
    assert run(fleet, h, defaults.AGENT_CHECK_COMMAND)[0] == 1  # ... then dead, whoever looks
    fleet.wait_for(lambda: "sync agent crashed" in fleet.host(h).sync_log.read_text(), 5, what="the crash")
    before = fleet.last_sync(h)
    time.sleep(1.5)
    assert fleet.last_sync(h) == before  # it never synced


def test_a_soft_wedge_is_kicked_by_a_forced_sync_and_a_hard_one_only_by_a_restart(
    fleet: FleetCluster,
) -> None:
    soft, hard = "host-12", "host-13"
    fleet.wedge_agent(soft)
    fleet.wedge_agent(hard, until_restart=True)
    since = {h: fleet.last_sync(h) for h in (soft, hard)}
    time.sleep(2.5)  # two sync intervals
    assert [fleet.last_sync(h) for h in (soft, hard)] == [since[soft], since[hard]]
    assert run(fleet, hard, defaults.AGENT_CHECK_COMMAND)[0] == 0  # alive: pgrep finds it
    for h in (soft, hard):
        requests.post(f"{fleet.coordinator_url}/sync/hosts/{h}/sync", json={"force": True}, timeout=10)
    fleet.wait_for(lambda: fleet.last_sync(soft) > since[soft], 5, what="the kicked agent's sync")
    time.sleep(1.0)
    assert fleet.last_sync(hard) == since[hard]
    assert run(fleet, hard, defaults.AGENT_RESTART_COMMAND)[0] == 0
    fleet.wait_for(lambda: fleet.last_sync(hard) > since[hard], 5, what="the restarted agent's sync")


def test_network_faults_refuse_hang_and_come_back(fleet: FleetCluster) -> None:
    h = "host-14"
    port = fleet.host(h).ssh_port
    fleet.make_unreachable(h)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    fleet.hang_host(h)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            sock.recv(100)  # no banner
    fleet.make_reachable(h)
    assert run(fleet, h, "echo OK")[:2] == (0, "OK")
    assert run(fleet, "host-15", "echo OK")[:2] == (0, "OK")  # the other hosts of its server never noticed


def test_an_agent_dead_fleet_host_is_healed_by_a_real_worker_through_the_ladder(
    fleet: FleetCluster, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = "host-20"
    stack = make_stack(fleet, redis_url, tmp_path, monkeypatch)
    stack.start_worker()
    try:
        fleet.kill_agent(h)
        fleet.make_critical(h)
        stack.post([alert(h)])
        state = stack.wait_finished(h, timeout=60)
    finally:
        stack.stop()
    assert state["outcome"] == "healthy", stack.steps(h)
    steps = stack.steps(h)
    assert ("restart_agent", "verify-ok") in steps and ("force_sync", "verify-ok") in steps
    assert fleet.counts(h)["agent_restarts"] == 1
    assert fleet.state(h) == "healthy"
