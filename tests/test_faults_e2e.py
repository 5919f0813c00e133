"""The world misbehaving, end to end: payload -> receiver -> real RQ worker -> simulated cluster.

Whatever fails -- a provider API answering an error, a host without systemctl -- the remediator must
not make things worse: an unknown is never read as "terminated", "healthy" or "no data".
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e import pages_received, pages_to, rules_file
from helpers import alert

from remediator.intake import LadderRequest, start_ladders

H = "host-01"  # the first sim host is on Vast


def auto_retire_rules(tmp_path: Path) -> Path:
    """The fast test rules with automatic retirement on: only the facts stand between a host and retire."""
    return rules_file(tmp_path, **{"automatic: false": "automatic: true"})


@pytest.mark.parametrize("answer", ["error", "malformed"])
def test_provider_error_answer_with_unreachable_host_escalates_and_never_retires(
    make_sim_cluster, e2e_stack, tmp_path, server, answer
):
    sim = make_sim_cluster(hosts=1, selfplay=False)
    with e2e_stack(
        sim,
        REMEDIATOR_RULES_FILE=str(auto_retire_rules(tmp_path)),
        **pages_to(server),
    ) as stack:
        sim.kill_agent(H)
        sim.make_critical(H)
        sim.write_games(H, 5)
        # A first look (dry run) counts the unsynced games, so the recovery checklist could be complete:
        # nothing but the provider's word stands between this host and automatic retirement.
        start_ladders(stack.conn, "remediator", [LadderRequest(H, "first look", dry_run=True)])
        assert stack.wait_finished(H)["outcome"] == "dry-run"
        sim.make_unreachable(H)
        sim.provider_answer(answer, provider="vast")  # status 200, status page "all systems operational"
        stack.post([alert(H)])
        state = stack.wait_finished(H, timeout=60)

        assert state["outcome"] == "escalated", stack.steps(H)
        steps = stack.steps(H)
        assert ("wait_reachable", "ran") in steps and ("escalate", "ran") in steps
        assert not any(step == "retire" for step, _ in steps)
        diagnosis = [e for e in stack.audit(H) if e["step"] == "diagnose"][-1]
        assert diagnosis["facts"]["cloud_state"] == "unknown"
        assert diagnosis["facts"]["data_recoverable"] is True
        # Nothing was retired and no loss was recorded, at the coordinator or in the ledger.
        assert sim.counts(H)["retires"] == 0 and not sim.retired(H)
        assert not [c for c in sim.calls if c["call"] in ("retire-host", "data-loss")]
        assert sim.data_loss_records == [] and sim.counts(H)["data_loss_records"] == 0
        assert not (tmp_path / "ledger.jsonl").exists()
        # A human was paged, and the page says why the remediator could not know the instance's fate.
        [page] = [p for p in pages_received(server) if H in p["hosts"]]
        assert "provider answer unusable" in page["text"], page["text"]
        assert "provider answer unusable" in page["details"]["reason"]
        escalated = next(
            e for e in stack.audit(H) if e["step"] == "wait_reachable" and e["outcome"] == "verify-failed"
        )
        assert "provider answer unusable" in escalated["cloud_detail"]


@pytest.fixture
def stack(sim_cluster, e2e_stack):
    with e2e_stack(sim_cluster) as s:
        assert "REMEDIATOR_AGENT_FALLBACK_COMMAND" not in s.env  # the shipped default runs on the hosts
        yield s


def test_host_without_systemctl_gets_its_dead_agent_back_from_the_default_fallback(stack):
    sim = stack.sim
    sim.systemctl_missing(H)
    sim.kill_agent(H)
    sim.make_critical(H)
    stack.post([alert(H)])
    state = stack.wait_finished(H)

    assert state["outcome"] == "healthy", stack.steps(H)
    ran = next(e for e in stack.audit(H) if e["step"] == "restart_agent" and e["outcome"] == "ran")
    assert ran["exit_status"] == 127 and ran["fallback_exit_status"] == 0, ran
    assert len(sim.host(H).agent_pids) == 1  # exactly one agent, and it syncs:
    assert sim.state(H) == "healthy" and sim.counts(H)["agent_restarts"] == 1


def test_host_without_systemctl_gets_its_wedged_agent_replaced_by_the_default_fallback(stack):
    sim = stack.sim
    sim.systemctl_missing(H)
    wedged = sim.wedge_agent(H, until_restart=True)  # alive, never syncs again: force_sync cannot help
    sim.make_critical(H)
    stack.post([alert(H)])
    state = stack.wait_finished(H, timeout=120)

    assert state["outcome"] == "healthy", stack.steps(H)
    steps = stack.steps(H)
    assert ("force_sync", "verify-failed") in steps and ("restart_agent", "ran") in steps
    ran = next(e for e in stack.audit(H) if e["step"] == "restart_agent" and e["outcome"] == "ran")
    assert ran["exit_status"] == 127 and ran["fallback_exit_status"] == 0, ran
    assert wedged not in sim.host(H).agent_pids
    assert len(sim.host(H).agent_pids) == 1
    assert sim.state(H) == "healthy"
