"""Reaching simulated hosts over real SSH: rsync, host keys, command shims and network faults."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from remediator import defaults
from remediator.sim import SimCluster, games, procs


def _refused(sim: SimCluster, host_id: str) -> bool:
    try:
        socket.create_connection(("127.0.0.1", sim.host(host_id).ssh_port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_session_path_puts_the_host_shims_first_in_its_login_directory(sim_cluster: SimCluster) -> None:
    result = sim_cluster.ssh_run(
        "host-02", "command -v systemctl pgrep pkill; echo $RINGRIFT_HOST_ROOT; pwd; ls"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    paths = sim_cluster.host("host-02").paths
    assert lines[:3] == [str(paths.bin / n) for n in ("systemctl", "pgrep", "pkill")]
    assert lines[3] == str(paths.root)
    # The runbook's ./start_sync.sh is a script in the login directory, as on a real host.
    assert lines[4:] == [str(paths.home), "start_sync.sh"]


def test_rsync_over_the_host_sshd_copies_its_games(sim_cluster: SimCluster, tmp_path: Path) -> None:
    sim = sim_cluster
    sim.kill_agent("host-01")
    written = {g.game_id for g in sim.write_games("host-01", 5)}
    dest = tmp_path / "recovered" / "host-01"
    dest.mkdir(parents=True)
    before = sim.host_game_ids("host-01")
    result = subprocess.run(sim.rsync_argv("host-01", dest), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    copied = {g.game_id for g in games.games_since(dest, 0.0)}
    assert written <= before <= copied
    # Self-play goes on writing (the agent is dead, not the host): a file may land after the copy.
    assert copied <= sim.host_game_ids("host-01")


def test_ssh_refuses_a_host_whose_key_is_not_the_known_one(sim_cluster: SimCluster, tmp_path: Path) -> None:
    sim = sim_cluster
    wrong = tmp_path / "known_hosts"
    other_key = sim.host("host-02").paths.host_key.with_suffix(".pub").read_text().split()[:2]
    wrong.write_text(f"[127.0.0.1]:{sim.host('host-01').ssh_port} {' '.join(other_key)}\n")
    argv = sim.ssh_argv("host-01", "echo OK")
    argv[argv.index(f"UserKnownHostsFile={sim.known_hosts_file}")] = f"UserKnownHostsFile={wrong}"
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr
    assert "OK" not in result.stdout
    assert sim.ssh_run("host-01", "echo OK").stdout.strip() == "OK"


def test_default_restart_command_restarts_only_that_host_agent(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    before = {h.host_id: h.agent_pid for h in sim.hosts}
    syncs = sim.counts("host-02")["syncs"]
    result = sim.ssh_run("host-02", defaults.AGENT_RESTART_COMMAND)
    assert result.returncode == 0, result.stderr
    new_pid = sim.host("host-02").agent_pid
    assert new_pid is not None and new_pid != before["host-02"]
    assert not procs.alive(before["host-02"])
    assert {h: sim.host(h).agent_pid for h in ("host-01", "host-03")} == {
        h: before[h] for h in ("host-01", "host-03")
    }
    assert [sim.counts(h)["agent_restarts"] for h in sim.host_ids] == [0, 1, 0]
    sim.wait_for(lambda: sim.counts("host-02")["syncs"] > syncs, what="the restarted agent syncs")


def test_default_check_command_tells_whether_this_host_agent_runs(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    alive = sim.ssh_run("host-01", defaults.AGENT_CHECK_COMMAND)
    assert alive.returncode == 0 and alive.stdout.strip() == str(sim.host("host-01").agent_pid)
    sim.kill_agent("host-01")
    assert sim.ssh_run("host-01", defaults.AGENT_CHECK_COMMAND).returncode == 1
    assert sim.ssh_run("host-02", defaults.AGENT_CHECK_COMMAND).returncode == 0


def test_default_fallback_command_replaces_the_running_agent_with_exactly_one(
    sim_cluster: SimCluster,
) -> None:
    sim = sim_cluster
    old = sim.host("host-03").agent_pid
    result = sim.ssh_run("host-03", defaults.AGENT_FALLBACK_COMMAND)
    assert result.returncode == 0, result.stderr
    assert "sync agent started" in result.stdout
    assert not procs.alive(old)
    assert sim.host("host-03").agent_pids == [sim.host("host-03").agent_pid] != [old]
    counts = sim.counts("host-03")
    assert (counts["agent_kills"], counts["agent_restarts"]) == (1, 1)
    assert sim.counts("host-01")["agent_kills"] == 0 and sim.host("host-01").agent_pid is not None


def test_default_fallback_command_starts_the_agent_when_none_runs(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    sim.kill_agent("host-01")  # pkill finds nothing (exit 1): start_sync.sh must still run
    result = sim.ssh_run("host-01", defaults.AGENT_FALLBACK_COMMAND)
    assert result.returncode == 0, result.stderr
    assert len(sim.host("host-01").agent_pids) == 1 and sim.host("host-01").agent_pid is not None
    syncs = sim.counts("host-01")["syncs"]
    sim.wait_for(lambda: sim.counts("host-01")["syncs"] > syncs, what="the new agent syncs")


def test_default_fallback_command_stops_every_leftover_agent(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    host = sim.host("host-02")
    first = host.agent_pid
    host.paths.agent_pid.unlink()  # the pid file forgot it: start_sync.sh starts a second agent
    assert sim.ssh_run("host-02", "./start_sync.sh").returncode == 0
    assert len(host.agent_pids) == 2
    result = sim.ssh_run("host-02", defaults.AGENT_FALLBACK_COMMAND)
    assert result.returncode == 0, result.stderr
    assert len(host.agent_pids) == 1 and first not in host.agent_pids


def test_runbook_pkill_kills_its_own_shell_so_start_sync_never_runs_as_with_procps(
    sim_cluster: SimCluster,
) -> None:
    sim = sim_cluster
    # procps pkill never matches itself but does match its parent shell, whose command line holds the
    # pattern: the shell dies of the SIGTERM (128 + 15) before it gets to ./start_sync.sh. (The outer
    # shell spells the pattern in pieces so that it is not matched too and can report the exit.)
    runbook = 'sh -c "pkill -f ${p}_agent; ./start_sync.sh"'
    result = sim.ssh_run("host-03", f'p=sync; {runbook}; echo "exit $?"')
    assert result.stdout.split() == ["exit", "143"], (result.returncode, result.stdout, result.stderr)
    sim.wait_for(lambda: sim.host("host-03").agent_pids == [], what="the killed agent to exit")
    assert sim.counts("host-03")["agent_restarts"] == 0  # start_sync.sh never ran


def test_pkill_and_pgrep_in_a_session_see_only_that_host(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    for host_id in ("host-01", "host-02"):
        assert sim.ssh_run(host_id, "nohup sleep 93.7 >/dev/null 2>&1 &").returncode == 0
    sleepers = {
        h: sim.wait_for(lambda h=h: _sleeper(sim, h), what=f"the sleep on {h}")
        for h in ("host-01", "host-02")
    }
    found = sim.ssh_run("host-01", "pgrep -f 'sleep 93[.]7'")
    assert found.stdout.split() == [str(sleepers["host-01"])]
    assert sim.ssh_run("host-01", "pkill -f 'sleep 93[.]7'").returncode == 0
    sim.wait_for(lambda: not procs.alive(sleepers["host-01"]), what="host-01's sleep to die")
    assert procs.alive(sleepers["host-02"])  # another host's process is out of reach
    assert sim.ssh_run("host-03", "pgrep -f 'sleep 93[.]7'").returncode == 1
    assert sim.ssh_run("host-01", "pkill -f sshd").returncode == 1  # the machine's sshd is not the host's
    assert all(h.sshd_pid and procs.alive(h.sshd_pid) for h in sim.hosts)


def _sleeper(sim: SimCluster, host_id: str) -> int | None:
    root = str(sim.host(host_id).root)
    pids = [p for p in procs.with_env("RINGRIFT_HOST_ROOT", root) if procs.cmdline(p) == "sleep 93.7"]
    return pids[0] if pids else None


def test_host_without_systemctl_answers_command_not_found(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    sim.systemctl_missing("host-01")
    result = sim.ssh_run("host-01", defaults.AGENT_RESTART_COMMAND)
    assert result.returncode == 127 and "systemctl: command not found" in result.stderr
    assert sim.ssh_run("host-02", defaults.AGENT_RESTART_COMMAND).returncode == 0
    sim.systemctl_missing("host-01", enabled=False)
    assert sim.ssh_run("host-01", defaults.AGENT_RESTART_COMMAND).returncode == 0


def test_unknown_unit_is_refused(sim_cluster: SimCluster) -> None:
    assert sim_cluster.ssh_run("host-01", "systemctl restart nginx").returncode == 5


def test_unreachable_host_refuses_connections_until_reachable(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    agent = sim.host("host-01").agent_pid
    sim.make_unreachable("host-01")
    assert _refused(sim, "host-01")
    result = sim.ssh_run("host-01", "echo OK")
    assert result.returncode == 255 and "Connection refused" in result.stderr
    assert sim.host("host-01").agent_pid == agent  # the host runs on, only SSH is gone
    sim.make_reachable("host-01")
    assert sim.ssh_run("host-01", "echo OK").stdout.strip() == "OK"


def test_hanging_host_accepts_tcp_but_never_sends_a_banner(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    sim.hang_host("host-02")
    with socket.create_connection(("127.0.0.1", sim.host("host-02").ssh_port), timeout=2) as conn:
        conn.settimeout(2)
        with pytest.raises(TimeoutError):
            conn.recv(64)
    sim.make_reachable("host-02")
    with socket.create_connection(("127.0.0.1", sim.host("host-02").ssh_port), timeout=5) as conn:
        conn.settimeout(5)
        assert conn.recv(64).startswith(b"SSH-2.0-")


def test_network_down_makes_every_host_unreachable_and_stops_syncs(
    make_sim_cluster: Callable[..., SimCluster],
) -> None:
    sim = make_sim_cluster(hosts=2, sync_interval=0.2)
    sim.network_down()
    assert all(_refused(sim, h) for h in sim.host_ids)
    sim.make_critical("host-01")
    log = sim.host("host-01").sync_log
    sim.wait_for(lambda: "Network is unreachable" in log.read_text(), what="agent sees the network down")
    assert sim.state("host-01") == "critical"
    sim.network_down(False)
    assert sim.ssh_run("host-02", "echo OK").stdout.strip() == "OK"
    sim.wait_for(lambda: sim.state("host-01") == "healthy", what="syncs once the network is back")


def test_terminated_instance_is_unreachable_without_agent_but_keeps_its_data(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    written = {g.game_id for g in sim.write_games("host-03", 2)}
    sim.terminate_instance("host-03")
    assert sim.instance_state("host-03") == "terminated"
    assert sim.host("host-03").agent_pid is None
    assert _refused(sim, "host-03")
    assert written <= sim.host_game_ids("host-03")


def test_import_command_from_env_imports_rsynced_games_once(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    sim.kill_agent("host-01")
    written = {g.game_id for g in sim.write_games("host-01", 4)}
    env = sim.env()
    data_dir = Path(env["REMEDIATOR_RECOVERY_DIR"]) / "host-01"
    data_dir.mkdir(parents=True)
    assert (
        subprocess.run(sim.rsync_argv("host-01", data_dir), capture_output=True, timeout=60).returncode == 0
    )
    command = env["REMEDIATOR_IMPORT_COMMAND"].replace("{data_dir}", shlex.quote(str(data_dir)))
    first = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["host_id"] == "host-01" and summary["games"] >= 4 and summary["new_games"] >= 4
    assert written <= sim.central_game_ids("host-01")
    again = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60)
    assert json.loads(again.stdout)["new_games"] == 0
    counts = sim.counts("host-01")
    assert (counts["imports"], counts["sync_triggers"]) == (2, 2)
    assert counts["imported_games"] == summary["new_games"]
