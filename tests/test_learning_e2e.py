"""Learning from outcomes: after a history where restart_agent healed a signature every time and
force_sync never did, a new ladder of that signature restarts the agent first, and its audit says why;
with learning off the order is the runbook's. Real worker, real SSH, the simulated cluster."""

from __future__ import annotations

import pytest
from e2e import FAST_RULES, make_stack
from helpers import alert

from remediator import outcomes, store
from remediator.rules.loader import load_rules
from workers import learning
from workers.state import LadderState

WEDGED = "agent-wedged"  # the agent runs but does not sync: force_sync first, then restart, by the runbook


def script_history(
    conn, healed_by_restart: int = 20, healed_by_force_sync: int = 0, ladders: int = 20
) -> None:
    for i in range(ladders):
        outcomes.add(conn, WEDGED, "force_sync", i < healed_by_force_sync, 3.0)
        outcomes.add(conn, WEDGED, "restart_agent", i < healed_by_restart, 7.0)


def rules_with_learning(tmp_path, enabled: bool):
    path = tmp_path / "learning-rules.yaml"
    path.write_text(
        FAST_RULES.read_text() + f"\nlearning:\n  enabled: {str(enabled).lower()}\n  min_samples: 10\n"
    )
    load_rules(path)
    return path


def first_step_run(stack, host: str) -> str:
    return next(step for step, outcome in stack.steps(host) if outcome in ("ran", "failed"))


@pytest.mark.parametrize("enabled", [True, False], ids=["learning-on", "learning-off"])
def test_a_wedged_host_is_restarted_first_only_when_learning_saw_restarts_heal_it(
    enabled, sim_cluster, redis_url, tmp_path, monkeypatch
):
    sim = sim_cluster
    host = sim.host_ids[0]
    rules = rules_with_learning(tmp_path, enabled)
    stack = make_stack(sim, redis_url, tmp_path, monkeypatch, REMEDIATOR_RULES_FILE=str(rules))
    script_history(stack.conn)
    sim.wedge_agent(host, until_restart=True)  # only a restart makes it sync again
    sim.make_critical(host)
    stack.start_worker()
    try:
        stack.post([alert(host)])
        state = stack.wait_finished(host, timeout=90)
        assert state["outcome"] == "healthy", stack.steps(host)
        decisions = [e for e in stack.audit(host) if e["step"] == "learning"]
        if enabled:
            assert first_step_run(stack, host) == "restart_agent"
            (decision,) = decisions
            assert decision["outcome"] == "reordered"
            assert decision["detail"].startswith(f"chose restart_agent first: 20/20 healed {WEDGED}")
            assert "force_sync: 0/20 healed" in decision["detail"]
            assert sim.counts(host)["force_syncs"] == 1  # only the rung's own sync after the restart
        else:
            assert first_step_run(stack, host) == "force_sync"  # the runbook's order
            assert decisions == []
            assert sim.counts(host)["force_syncs"] >= 2  # the rung that could not heal, then the one that did
        assert sim.counts(host)["agent_restarts"] == 1
        # The ladder's own outcome was counted: one more heal by the restart rung.
        assert outcomes.table(stack.conn)[WEDGED]["restart_agent"]["healed"] == 21
        stats = stack.app.test_client().get("/api/v1/stats").get_json()
        assert stats["learning"]["enabled"] is enabled
        row = next(r for r in stats["steps"] if r["signature"] == WEDGED and r["step"] == "restart_agent")
        assert row["tried"] == 21 and row["success_rate"] == 1.0
    finally:
        stack.stop()


class _Lad:
    """Just enough of a LadderRun for ``learning.order``: rules, Redis, and an audit list."""

    def __init__(self, conn, enabled: bool = True, min_samples: int = 10) -> None:
        from types import SimpleNamespace

        from remediator.rules.types import LearningPolicy

        self.ctx = SimpleNamespace(
            conn=conn, rules=SimpleNamespace(learning=LearningPolicy(enabled, min_samples))
        )
        self.entries: list[tuple[str, str, str]] = []

    def audit(self, step: str, outcome: str, detail: str = "", **_: object) -> None:
        self.entries.append((step, outcome, detail))


WEDGED_FACTS = {"coordinator_state": "critical", "ssh_reachable": True, "agent_running": True}
RUNBOOK_PLAN = [["force_sync"], ["restart_agent", "force_sync"], ["recover_data", "escalate"], ["escalate"]]


def test_learning_never_moves_a_destructive_rung_and_needs_enough_samples(redis_conn):
    script_history(redis_conn, ladders=9)
    lad = _Lad(redis_conn)
    assert learning.order(lad, RUNBOOK_PLAN, WEDGED_FACTS) == RUNBOOK_PLAN  # 9 < min_samples
    assert lad.entries[-1][:2] == ("learning", "kept") and "fewer than 10" in lad.entries[-1][2]
    script_history(redis_conn, ladders=1)
    reordered = learning.order(lad, RUNBOOK_PLAN, WEDGED_FACTS)
    assert reordered == [["restart_agent", "force_sync"], ["force_sync"], *RUNBOOK_PLAN[2:]]
    # The same number of steps before recover_data: a destructive step is never reached sooner.
    assert sum(map(len, reordered[:2])) == sum(map(len, RUNBOOK_PLAN[:2]))
    # Another signature has no history: its plan is untouched.
    dead = {**WEDGED_FACTS, "agent_running": False}
    plan = [["restart_agent", "force_sync"], ["recover_data", "escalate"], ["escalate"]]
    assert learning.order(lad, plan, dead) == plan
    off = _Lad(redis_conn, enabled=False)
    assert learning.order(off, RUNBOOK_PLAN, WEDGED_FACTS) == RUNBOOK_PLAN and off.entries == []


def test_a_ladders_end_counts_each_rung_it_entered_and_the_one_that_healed(redis_conn):
    host, ladder = "gpu-4", "l-1"
    for step, outcome in [
        ("diagnose", "done"),
        ("force_sync", "ran"),
        ("force_sync", "verify-failed"),
        ("restart_agent", "ran"),
        ("restart_agent", "verify-ok"),
        ("force_sync", "ran"),
        ("force_sync", "verify-ok"),
    ]:
        store.append_audit(redis_conn, host, step, outcome, "", ladder_id=ladder)
    store.append_audit(redis_conn, host, "force_sync", "ran", "", ladder_id="another-ladder")
    state = {"plan": RUNBOOK_PLAN, "rung": "1", "facts": WEDGED_FACTS}
    learning.record(redis_conn, host, ladder, LadderState.from_hash(state), "healthy")
    learning.record(redis_conn, host, ladder, LadderState.from_hash({**state, "rung": "2"}), "recovered")
    learning.record(
        redis_conn, host, ladder, LadderState.from_hash(state), "stopped"
    )  # cut short: not counted
    table = outcomes.table(redis_conn)[WEDGED]
    assert table["force_sync"]["tried"] == 2 and table["force_sync"]["healed"] == 0
    assert table["restart_agent"]["tried"] == 2 and table["restart_agent"]["healed"] == 1
    assert table["restart_agent"]["median_seconds_to_healthy"] is not None
    assert "recover_data" not in table  # entered, but never ran in this audit
    assert learning.signature({"coordinator_state": "unknown"}) == "coordinator-unknown"
    assert learning.signature({"coordinator_state": "critical", "ssh_reachable": False}) == "unreachable"
    retired_dead = {
        "coordinator_state": "critical",
        "ssh_reachable": True,
        "host_retired": True,
        "agent_running": False,
    }
    assert learning.signature(retired_dead) == "retired+agent-dead"
