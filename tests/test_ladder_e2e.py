"""The escalation ladder end to end: payload -> receiver -> real RQ worker -> simulated cluster over SSH."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from e2e import Stack, kill_worker, pages_received, pages_to, rules_file, running
from helpers import alert, wait_for

from remediator import incidents, keys, paging
from remediator.intake import LadderRequest, start_ladders

H = "host-01"


@pytest.fixture
def stack(sim_cluster, e2e_stack, server):
    with e2e_stack(sim_cluster, **pages_to(server)) as s:
        yield s


def sha256_files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_agent_dead_is_fixed_by_restart_then_verified_sync(stack: Stack):
    sim = stack.sim
    sim.kill_agent(H)
    sim.make_critical(H)
    stack.post([alert(H)])
    state = stack.wait_finished(H)
    assert state["outcome"] == "healthy", stack.steps(H)
    steps = stack.steps(H)
    assert ("restart_agent", "ran") in steps and ("restart_agent", "verify-ok") in steps
    assert ("force_sync", "ran") in steps and ("force_sync", "verify-ok") in steps
    assert steps.index(("restart_agent", "ran")) < steps.index(("force_sync", "ran"))
    diagnosis = next(e for e in stack.audit(H) if e["step"] == "diagnose")
    assert diagnosis["facts"]["agent_running"] is False and diagnosis["facts"]["ssh_reachable"] is True
    assert "ssh" in diagnosis["sources"] and "coordinator" in diagnosis["sources"]
    assert sim.counts(H)["agent_restarts"] == 1
    assert sim.state(H) == "healthy"
    assert not stack.active(H)
    # The worker logs JSON lines that say which host, ladder, job and step they are about.
    lines = [
        json.loads(line) for line in (stack.tmp / "worker0.log").read_text().splitlines() if line.strip()
    ]
    restart = next(e for e in lines if e["msg"].startswith("restart_agent attempt 1 ran"))
    assert restart["host_id"] == H and restart["step"] == "restart_agent"
    assert restart["ladder_id"] == state["ladder_id"] and restart["job_id"]
    # The worker's numbers are read back through any receiver's /metrics.
    text = stack.app.test_client().get("/metrics").get_data(as_text=True)
    assert 'remediator_ladders_total{outcome="healthy"} 1.0' in text
    assert 'remediator_steps_total{result="ran",step="restart_agent"} 1.0' in text
    assert 'remediator_steps_total{result="ran",step="force_sync"} 1.0' in text
    assert 'remediator_step_duration_seconds_count{step="diagnose"} 1.0' in text
    assert 'remediator_step_duration_seconds_bucket{le="+Inf",step="restart_agent"} 1.0' in text
    assert "remediator_hosts_in_remediation 0.0" in text


def test_wedged_agent_is_fixed_by_force_sync_alone(stack: Stack):
    sim = stack.sim
    sim.wedge_agent(H)
    sim.make_critical(H)
    stack.post([alert(H)])
    state = stack.wait_finished(H)
    assert state["outcome"] == "healthy", stack.steps(H)
    steps = [s for s, _ in stack.steps(H)]
    assert "force_sync" in steps and "restart_agent" not in steps
    assert sim.counts(H)["agent_restarts"] == 0


def test_agent_that_keeps_dying_leads_to_verified_recovery_then_escalation(stack: Stack, server):
    sim = stack.sim
    sim.agent_dies_after_restart(H)
    sim.kill_agent(H)
    sim.make_critical(H)
    stack.post([alert(H)])
    state = stack.wait_finished(H, timeout=120)
    assert state["outcome"] == "recovered", stack.steps(H)
    audit = stack.audit(H)
    diag = next(e for e in audit if e["step"] == "diagnose")
    recovery = next(e for e in audit if e["step"] == "recover_data" and e["outcome"] == "ran")
    assert recovery["checksums_compared"] is True and recovery["checksum_mismatches"] == []
    # Every file on the host at copy time is in the recovery dir, byte for byte.
    recovered = sha256_files(sim.recovery_dir / H)
    on_host = sha256_files(sim.host(H).data_dir)
    common = set(recovered) & set(on_host)
    assert common and all(recovered[f] == on_host[f] for f in common)
    assert recovery["unsynced_games"] >= diag["facts"]["unsynced_games"] > 0
    assert recovery["import"]["games"] == recovery["games"]
    assert sim.counts(H)["imports"] == 1
    assert ("escalate", "ran") in stack.steps(H)
    assert any(H in json.dumps(p) for p in pages_received(server))
    text = stack.app.test_client().get("/metrics").get_data(as_text=True)
    assert 'remediator_ladders_total{outcome="recovered"} 1.0' in text
    assert 'remediator_pages_total{action="trigger",pager="webhook",result="sent"} 1.0' in text


def test_retired_host_back_online_is_unretired_and_resynced(stack: Stack):
    sim = stack.sim
    sim.retired_host_back_online(H)
    stack.post([alert(H)])
    state = stack.wait_finished(H)
    assert state["outcome"] == "healthy", stack.steps(H)
    assert ("unretire", "ran") in stack.steps(H)
    assert sim.counts(H)["unretires"] == 1 and not sim.retired(H)


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@pytest.mark.parametrize("automatic", [False, True], ids=["auto-retire-off", "auto-retire-on"])
def test_terminated_instance_documents_the_loss_then_pages_or_retires_as_the_rules_say(
    make_sim_cluster, e2e_stack, tmp_path, server, automatic
):
    # Self-play off, so the unsynced games on the host are exactly the ones written here.
    sim = make_sim_cluster(hosts=1, selfplay=False)
    # Retirement without a human's yes: automatic, and no approval asked (tests/test_controls_e2e.py
    # covers retirement behind the approval gate).
    auto_retire = {"automatic: false": "automatic: true", "steps: [retire]": "steps: []"}
    rules = rules_file(tmp_path, **(auto_retire if automatic else {}))
    with e2e_stack(
        sim,
        REMEDIATOR_RULES_FILE=str(rules),
        **pages_to(server),
    ) as stack:
        sim.kill_agent(H)
        sim.make_critical(H)
        sim.write_games(H, 4)
        sim.write_games(H, 3)
        lost = sim.unsynced_games(H)
        assert lost.count == 7
        # The remediator's first look at the host (a dry run) counts its unsynced games over SSH ...
        start_ladders(stack.conn, "remediator", [LadderRequest(H, "first look", dry_run=True)])
        assert stack.wait_finished(H)["outcome"] == "dry-run"
        # ... then the instance is terminated: the host can never be reached again.
        sim.terminate_instance(H)
        stack.post([alert(H)])
        state = stack.wait_finished(H)
        ledger = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
        assert len(ledger) == 1 and ledger[0]["host_id"] == H
        assert ledger[0]["games_lost"] == lost.count
        assert ledger[0]["first_game_at"] == iso(lost.first_at)
        assert ledger[0]["last_game_at"] == iso(lost.last_at)
        checklist = ledger[0]["checklist"]
        assert checklist["accessible_checked"] and not checklist["accessible"]
        assert checklist["unsynced_games_counted"] and checklist["unsynced_games"] == lost.count
        assert checklist["rsync_attempted"] and checklist["loss_documented"]
        assert sim.counts(H)["data_loss_records"] == 1  # the training-log entry at the coordinator
        assert sim.data_loss_records[0]["games_lost"] == lost.count
        if automatic:
            assert state["outcome"] == "retired", stack.steps(H)
            assert sim.counts(H)["retires"] == 1 and sim.retired(H)
            retire_call = next(c for c in sim.calls if c["call"] == "retire-host" and c["status"] == 200)
            assert retire_call["body"]["acknowledge_loss"] is True
        else:
            assert state["outcome"] == "escalated", stack.steps(H)
            assert ("retire", "declined") in stack.steps(H)
            assert sim.counts(H)["retires"] == 0 and not sim.retired(H)
            page = next(p for p in pages_received(server) if H in json.dumps(p))
            assert page["details"]["checklist"]["loss_documented"] is True


def test_unreachable_host_with_running_instance_is_rechecked_then_escalated_never_retired(stack: Stack):
    sim = stack.sim
    sim.kill_agent(H)  # the host is down: neither SSH nor its agent gets through
    sim.make_unreachable(H)
    sim.make_critical(H)
    stack.post([alert(H)])
    state = stack.wait_finished(H, timeout=60)
    assert state["outcome"] == "escalated", stack.steps(H)
    steps = stack.steps(H)
    assert steps.count(("wait_reachable", "verify-failed")) == 1
    assert ("retire", "ran") not in steps and sim.counts(H)["retires"] == 0
    # re-checks were scheduled jobs, not a sleeping worker: several waits were recorded
    assert any(e.get("step") == "wait_reachable" for e in stack.audit(H))


def test_escalation_no_pager_delivered_is_a_failed_ladder_not_an_escalated_one(
    sim_cluster, e2e_stack, server
):
    server.expect_request("/page", method="POST").respond_with_data("down", status=503)
    with e2e_stack(sim_cluster, REMEDIATOR_PAGE_WEBHOOK_URL=server.url_for("/page")) as stack:
        sim_cluster.kill_agent(H)
        sim_cluster.make_unreachable(H)
        sim_cluster.make_critical(H)
        stack.post([alert(H)])
        state = stack.wait_finished(H, timeout=60)
        # Nobody was woken: the ladder must not claim it escalated to a human.
        assert state["outcome"] == "failed", stack.steps(H)
        assert stack.steps(H).count(("escalate", "failed")) == 2  # attempts_per_step in the fast rules
        assert len(pages_received(server)) == 2 * 3  # each attempt paged anew, the pager retrying 3 times
        # The page is on record as failed, never as delivered, and the incident does not say "paged".
        incident = incidents.get(stack.conn, state["incident_id"])
        assert incident is not None and incident.paged is False and incident.pages
        assert paging.get(stack.conn, incident.pages[0]).state == paging.PageState.FAILED


def test_hanging_host_is_bounded_by_the_connect_timeout_and_treated_as_unreachable(stack: Stack):
    sim = stack.sim
    sim.kill_agent(H)
    sim.hang_host(H)
    sim.make_critical(H)
    stack.post([alert(H)])
    diag = wait_for(
        lambda: next((e for e in stack.audit(H) if e["step"] == "diagnose"), None),
        timeout=30,
        what="diagnosis",
    )
    assert diag["facts"]["ssh_reachable"] is False
    assert "timed out" in diag["sources"]["ssh"]
    state = stack.wait_finished(H, timeout=60)
    assert state["outcome"] == "escalated" and sim.counts(H)["retires"] == 0


def test_resolved_alert_stops_the_ladder_at_the_next_boundary(stack: Stack):
    sim = stack.sim
    sim.kill_agent(H)  # the host is down: neither SSH nor its agent gets through
    sim.make_unreachable(H)
    sim.make_critical(H)
    stack.post([alert(H)])
    wait_for(lambda: ("wait_reachable", "ran") in stack.steps(H), timeout=30, what="the wait step")
    stack.post([alert(H, status="resolved")])
    state = stack.wait_finished(H, timeout=30)
    assert state["outcome"] == "stopped"
    # The ladder stopped for the resolved alert, and its end closed the host's incident.
    ends = [
        (e["step"], e["outcome"], e.get("detail"))
        for e in stack.audit(H)
        if e["step"] in ("ladder", "incident")
    ]
    assert ends[:2] == [
        ("ladder", "stopped", "alert resolved"),
        ("incident", "resolved", "the alert resolved; the ladder stopped"),
    ]
    assert incidents.get(stack.conn, state["incident_id"]).state == incidents.IncidentState.RESOLVED


def test_alert_without_host_id_starts_one_ladder_per_critical_host(stack: Stack):
    sim = stack.sim
    for h in sim.host_ids:
        sim.kill_agent(h)
        sim.make_critical(h)
    body = stack.post([alert(None)])
    assert body["accepted"][0]["host_id"] is None
    for h in sim.host_ids:
        wait_for(lambda h=h: stack.host(h).get("ladder_id"), timeout=30, what=f"a ladder for {h}")
    ladders = {h: stack.host(h)["ladder_id"] for h in sim.host_ids}
    assert len(set(ladders.values())) == 3
    for h in sim.host_ids:
        assert stack.wait_finished(h)["outcome"] == "healthy"
    assert not stack.conn.exists(keys.ACTIVE.format("_discovery"))


def test_dry_run_records_the_plan_and_mutates_nothing(sim_cluster, e2e_stack, tmp_path):
    sim = sim_cluster
    with e2e_stack(sim, REMEDIATOR_DRY_RUN="true") as stack:
        sim.kill_agent("host-01")
        sim.agent_dies_after_restart("host-02")
        sim.kill_agent("host-02")
        sim.terminate_instance("host-03")
        for h in sim.host_ids:
            sim.make_critical(h)
        before = {h: sim.counts(h) for h in sim.host_ids}
        stack.post([alert(h) for h in sim.host_ids])
        for h in sim.host_ids:
            assert stack.wait_finished(h)["outcome"] == "dry-run", stack.steps(h)
        assert [s for s, o in stack.steps("host-01") if o == "planned"] == [
            "restart_agent",
            "force_sync",
            "recover_data",
            "escalate",
            "escalate",
        ]
        assert [s for s, o in stack.steps("host-03") if o == "planned"] == ["retire", "escalate"]
        assert {h: sim.counts(h) for h in sim.host_ids} == before
        assert not (sim.recovery_dir / "host-02").exists() or not any(
            (sim.recovery_dir / "host-02").iterdir()
        )
        assert not (tmp_path / "ledger.jsonl").exists()


def test_worker_killed_in_the_middle_of_restart_agent_is_replaced_and_restarts_once(sim_cluster, e2e_stack):
    sim = sim_cluster
    # The step's command lingers after the restart, so the kill lands inside the step, provably.
    with e2e_stack(
        sim,
        REMEDIATOR_AGENT_RESTART_COMMAND="systemctl restart ringrift-sync-agent; sleep 7.31",
    ) as stack:
        first = stack.workers[0]
        sim.kill_agent(H)
        sim.make_critical(H)
        stack.post([alert(H)])
        wait_for(lambda: running("sleep 7.31"), timeout=60, what="restart_agent's command to run")
        assert sim.counts(H)["agent_restarts"] == 1
        kill_worker(first)
        stack.start_worker()
        state = stack.wait_finished(H, timeout=120)
        assert state["outcome"] == "healthy", stack.steps(H)
        steps = stack.steps(H)
        assert ("sweeper", "resumed") in steps
        assert ("restart_agent", "resumed") in steps  # attempt 1 had run: verified, not repeated
        assert sim.counts(H)["agent_restarts"] == 1


def test_worker_killed_in_the_middle_of_recover_data_is_replaced_and_imports_once(sim_cluster, e2e_stack):
    sim = sim_cluster
    importer = sim.env()["REMEDIATOR_IMPORT_COMMAND"]
    with e2e_stack(
        sim,
        REMEDIATOR_IMPORT_COMMAND=f"sh -c 'sleep 7.37 && exec \"$@\"' import {importer}",
    ) as stack:
        first = stack.workers[0]
        sim.agent_dies_after_restart(H)
        sim.make_critical(H)
        stack.post([alert(H)])
        # rsync has copied the data; the import is about to run when the worker dies.
        wait_for(lambda: running("sleep 7.37"), timeout=120, what="recover_data's import to start")
        assert sim.counts(H)["imports"] == 0
        kill_worker(first)
        stack.start_worker()
        state = stack.wait_finished(H, timeout=150)
        assert state["outcome"] == "recovered", stack.steps(H)
        assert ("sweeper", "resumed") in stack.steps(H)
        assert sim.counts(H)["imports"] == 1
        recovered = sha256_files(sim.recovery_dir / H)
        on_host = sha256_files(sim.host(H).data_dir)
        assert recovered and all(on_host.get(name) == digest for name, digest in recovered.items())


def test_a_step_the_plan_holds_twice_runs_again_in_its_second_rung(stack: Stack):
    # force_sync alone fails (the agent is wedged until a restart); then restart_agent + force_sync: the
    # second rung's force_sync requests a sync of its own, not "resumed" from the first rung's marker.
    sim = stack.sim
    sim.wedge_agent(H, until_restart=True)
    sim.make_critical(H)
    stack.post([alert(H)])
    state = stack.wait_finished(H, timeout=120)
    assert state["outcome"] == "healthy", stack.steps(H)
    steps = stack.steps(H)
    assert ("force_sync", "resumed") not in steps
    after_restart = steps[steps.index(("restart_agent", "ran")) :]
    assert ("force_sync", "ran") in after_restart
    assert sim.counts(H)["force_syncs"] >= 3  # two attempts in the first rung, one in the second
