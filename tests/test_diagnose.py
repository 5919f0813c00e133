"""Diagnosis in-process against the simulated cluster's real sshd: what each source decides."""

from __future__ import annotations

from remediator.config import Settings
from workers.context import Context
from workers.diagnose import diagnose


def _context(sim, redis_url, redis_conn, monkeypatch, **env: str) -> Context:
    for key, value in {**sim.env(), "REDIS_URL": redis_url, **env}.items():
        monkeypatch.setenv(key, value)
    return Context(Settings.from_env(), redis_conn)


def test_diagnosis_counts_games_without_reading_every_byte(sim_cluster, redis_url, redis_conn, monkeypatch):
    host = sim_cluster.host_ids[0]
    sim_cluster.kill_agent(host)  # otherwise the agent may ship the games before the diagnosis counts them
    sim_cluster.write_games(host, 3)
    diag = diagnose(_context(sim_cluster, redis_url, redis_conn, monkeypatch), host)
    assert diag.ssh_reachable and diag.inventory is not None
    assert diag.inventory["unsynced_games"] >= 3
    # Checksums are recover_data's job (it compares both sides); diagnosis only counts.
    assert diag.inventory["files"] and not any("sha256" in f for f in diag.inventory["files"].values())


def test_a_host_that_answered_stays_reachable_when_a_later_command_times_out(
    sim_cluster, redis_url, redis_conn, monkeypatch
):
    host = sim_cluster.host_ids[0]
    # Every command without a timeout of its own (the inventory) times out at once; echo OK and the
    # agent check have their own timeouts.
    ctx = _context(sim_cluster, redis_url, redis_conn, monkeypatch, REMEDIATOR_SSH_COMMAND_TIMEOUT="0.001")
    diag = diagnose(ctx, host)
    assert diag.ssh_reachable is True, diag.sources
    assert diag.sources["inventory"].startswith("failed"), diag.sources
    assert diag.agent_running is not None  # the agent check still ran
    assert diag.facts()["ssh_reachable"] is True


def test_coordinator_log_lines_of_the_host_come_from_the_log_s_tail(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from workers import diagnose as diagnose_module

    log = tmp_path / "coordinator.log"
    old = [f"old line {i} host h1" for i in range(50)]
    recent = ["sync h1 failed: timeout", "sync h10 ok", "héllo h1 again"]
    log.write_text("\n".join([*old, *recent]) + "\n", encoding="utf-8")
    tail = len(("\n".join(recent) + "\n").encode()) + 5  # the cut falls inside the last old line
    monkeypatch.setattr(diagnose_module, "COORDINATOR_LOG_TAIL_BYTES", tail)
    ctx = SimpleNamespace(settings=SimpleNamespace(coordinator_log=str(log)))
    # Only the tail is searched (the old lines are not), whole words only (not h10), cut line dropped.
    assert diagnose_module._coordinator_log(ctx, "h1") == ["sync h1 failed: timeout", "héllo h1 again"]


def test_diagnosis_reads_the_agent_s_restart_policy_and_says_when_nothing_restarts_it(
    sim_cluster, redis_url, redis_conn, monkeypatch
):
    plain, supervised, container = sim_cluster.host_ids
    sim_cluster.set_restart_policy(supervised, "on-failure")
    sim_cluster.without_systemd(container)
    ctx = _context(sim_cluster, redis_url, redis_conn, monkeypatch)
    found = {h: diagnose(ctx, h) for h in sim_cluster.host_ids}
    # systemd's own default for a unit without Restart= is "no": nothing restarts a dead agent.
    assert found[plain].agent_restart_policy == "no" and found[plain].facts()["agent_auto_restart"] is False
    assert found[supervised].agent_restart_policy == "on-failure"
    assert found[supervised].facts()["agent_auto_restart"] is True
    # systemctl without a running systemd (a container): no supervisor at all.
    assert found[container].agent_restart_policy == "none"
    assert found[container].facts()["agent_auto_restart"] is False
    assert "systemctl show -p Restart" in found[plain].sources["supervisor"]


def test_an_unreadable_restart_policy_is_unknown_and_no_fact():
    from workers.diagnose import Diagnosis, restart_policy

    assert restart_policy(0, "Restart=always\n") == "always"
    assert restart_policy(0, "no systemctl\n") == "none"
    assert restart_policy(1, "") == "none"  # "System has not been booted with systemd"
    assert restart_policy(0, "Restart=$(reboot)\n") == "unknown"  # not a systemd value: not believed
    assert restart_policy(255, "") == "unknown"
    assert "agent_auto_restart" not in Diagnosis("h1", 0.0).facts()


def test_unreachable_host_with_an_unusable_provider_answer_is_unknown_and_waited_for_not_retired(
    make_sim_cluster, redis_url, redis_conn, monkeypatch
):
    from workers.ladder import plan_for

    sim = make_sim_cluster(hosts=1, selfplay=False)
    host = sim.host_ids[0]  # on Vast
    sim.kill_agent(host)
    sim.make_critical(host)
    sim.make_unreachable(host)
    sim.provider_answer("error", provider="vast")
    diag = diagnose(_context(sim, redis_url, redis_conn, monkeypatch), host)
    facts = diag.facts()
    assert (facts["ssh_reachable"], facts["cloud_state"]) == (False, "unknown")
    assert facts["data_recoverable"] is True
    assert "provider answer unusable" in diag.cloud_detail and "success=False" in diag.cloud_detail
    assert "provider answer unusable" in diag.sources["cloud"]
    assert plan_for(facts) == [["wait_reachable"], ["escalate"]]


def test_data_the_inventory_cannot_parse_is_diagnosed_as_unsynced_bytes_not_no_data(
    make_sim_cluster, redis_url, redis_conn, monkeypatch
):
    sim = make_sim_cluster(hosts=1, selfplay=False)
    host = sim.host_ids[0]
    sim.kill_agent(host)
    sim.make_critical(host)
    junk = sim.host(host).data_dir / "games_999999.db"
    junk.write_bytes(b"\x1f\x8b\x08\x00" + bytes(8192))  # a compressed batch, say: not SQLite
    diag = diagnose(_context(sim, redis_url, redis_conn, monkeypatch), host)
    facts = diag.facts()
    assert facts["unsynced_games"] == 0
    assert facts["unsynced_bytes"] >= junk.stat().st_size
    assert facts["unparseable_files"] == 1
    assert diag.summary()["inventory"]["unparseable_files"][0]["path"] == "games_999999.db"
