"""Operator controls end to end: receiver -> real workers -> simulated cluster over SSH (and a real
Alertmanager for silences). Freeze (CLI, API, status page in Chromium), the blast-radius budget, the
approval gate before retirement, and Alertmanager silences while a ladder acts."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import requests
from conftest import require_binary
from e2e import make_stack, pages_received, pages_to, rules_file
from helpers import ADMIN_TOKEN, WEBHOOK_TOKEN, alert, wait_for
from test_ui_chromium import dump_dom, post_form
from werkzeug.serving import make_server

from remediator import controls, incidents, keys, paging
from remediator.config import Settings
from remediator.intake import LadderRequest, start_ladders
from remediator.sim.alertmanager import AlertmanagerProcess
from workers.sweeper import sweep

FROZEN_FOR = 60.0  # seconds a frozen host is watched for a restart that must not happen (the minute)


def cli(stack, *args: str) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [sys.executable, "-m", "remediator", *args], env=stack.env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def wait_frozen(stack, h: str) -> None:
    wait_for(
        lambda: ("restart_agent", "frozen") in stack.steps(h), timeout=60, what=f"{h} held by the freeze"
    )
    assert ("diagnose", "done") in stack.steps(h)  # diagnosis ran and was audited while frozen


def watch_no_restart(sim, h: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert sim.counts(h)["agent_restarts"] == 0, "a frozen host was restarted"
        time.sleep(1.0)


def test_a_freeze_from_the_cli_holds_the_restart_for_a_minute_and_unfreeze_lets_it_heal(
    sim_cluster, e2e_stack
):
    sim = sim_cluster
    h = sim.host_ids[0]
    with e2e_stack(sim, REMEDIATOR_ADMIN_TOKEN=ADMIN_TOKEN) as stack:
        assert "fleet frozen" in cli(stack, "freeze", "--reason", "test").stdout
        sim.kill_agent(h)
        sim.make_critical(h)
        stack.post([alert(h)])
        wait_frozen(stack, h)
        assert stack.host(h)["status"] == "frozen"
        watch_no_restart(sim, h, FROZEN_FOR)
        frozen_entries = [e for e in stack.audit(h) if e["outcome"] == "frozen"]
        assert len(frozen_entries) == 1 and "frozen (the fleet) by cli" in frozen_entries[0]["detail"]
        text = stack.app.test_client().get("/metrics").get_data(as_text=True)
        assert 'remediator_automation_frozen{host_id=""} 1.0' in text
        assert "unfrozen" in cli(stack, "unfreeze").stdout
        assert stack.wait_finished(h, timeout=60)["outcome"] == "healthy", stack.steps(h)
        assert sim.counts(h)["agent_restarts"] == 1
        changes = [(e["outcome"], e.get("who") or e.get("lifted_by")) for e in stack.audit(controls.CONTROLS)]
        assert [c[0] for c in changes] == ["set", "lifted"] and all(c[1].startswith("cli") for c in changes)
        text = stack.app.test_client().get("/metrics").get_data(as_text=True)
        assert 'remediator_automation_frozen{host_id=""} 0.0' in text


def test_a_freeze_through_the_api_and_one_through_the_status_page_in_chromium(
    sim_cluster, redis_url, tmp_path, monkeypatch
):
    sim = sim_cluster
    h1, h2 = sim.host_ids[:2]
    stack = make_stack(sim, redis_url, tmp_path, monkeypatch, REMEDIATOR_ADMIN_TOKEN=ADMIN_TOKEN)
    stack.start_worker()
    server = make_server("127.0.0.1", 0, stack.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served = f"http://127.0.0.1:{server.server_port}"
    client = stack.app.test_client()
    try:
        # The API: freeze one host.
        resp = client.post("/api/v1/freeze", json={"reason": "disk swap", "host_id": h1}, headers=admin())
        assert resp.status_code == 201 and resp.get_json()["host_id"] == h1
        sim.kill_agent(h1)
        sim.make_critical(h1)
        stack.post([alert(h1)])
        wait_frozen(stack, h1)
        watch_no_restart(sim, h1, 10)
        assert client.delete(f"/api/v1/freeze?host_id={h1}", headers=admin()).status_code == 200
        assert stack.wait_finished(h1, timeout=60)["outcome"] == "healthy"
        # The status page: the admin form freezes the fleet, the banner says so, the form unfreezes it.
        dom = post_form(
            tmp_path, f"{served}/ui/freeze", {"reason": "provider maintenance", "token": ADMIN_TOKEN}
        )
        assert "Frozen" in dom and ADMIN_TOKEN not in dom
        banner = dump_dom(tmp_path, f"{served}/ui")
        assert 'id="freeze-banner"' in banner and "provider maintenance" in banner
        sim.kill_agent(h2)
        sim.make_critical(h2)
        stack.post([alert(h2)])
        wait_frozen(stack, h2)
        watch_no_restart(sim, h2, 10)
        dom = post_form(tmp_path, f"{served}/ui/unfreeze", {"token": ADMIN_TOKEN})
        assert "Unfrozen" in dom
        assert stack.wait_finished(h2, timeout=60)["outcome"] == "healthy"
        assert 'id="freeze-banner"' not in dump_dom(tmp_path, f"{served}/ui")
    finally:
        server.shutdown()
        stack.stop()


def test_a_budget_of_two_restarts_trips_a_freeze_that_names_it_and_pages_once(
    make_sim_cluster, e2e_stack, tmp_path, server
):
    sim = make_sim_cluster(hosts=5)
    rules = rules_file(
        tmp_path,
        **{
            "    - {name: restarts, step: restart_agent, max: 100, per_minutes: 10}": (
                "    - {name: restarts, step: restart_agent, max: 2, per_minutes: 10}"
            ),
            "storm_threshold: 3": "storm_threshold: 10",  # five hosts here are five incidents, no storm
        },
    )
    with e2e_stack(
        sim,
        REMEDIATOR_RULES_FILE=str(rules),
        **pages_to(server),
        REMEDIATOR_ADMIN_TOKEN=ADMIN_TOKEN,
    ) as stack:
        for h in sim.host_ids:
            sim.kill_agent(h)
            sim.make_critical(h)
        stack.post([alert(h) for h in sim.host_ids])
        wait_for(lambda: controls.frozen(stack.conn) is not None, timeout=90, what="the budget to trip")
        item = controls.frozen(stack.conn)
        assert item.source == "budget" and "restarts" in item.reason and "at most 2 per 10 min" in item.reason
        wait_for(
            lambda: len([h for h in sim.host_ids if ("restart_agent", "frozen") in stack.steps(h)]) == 3,
            timeout=60,
            what="the three other hosts held",
        )
        time.sleep(5)  # re-checks run while frozen: none may restart anything
        assert sum(sim.counts(h)["agent_restarts"] for h in sim.host_ids) == 2
        pages = pages_received(server)
        freeze_pages = [p for p in pages if p["dedup_key"].startswith("remediator/freeze/")]
        assert len(freeze_pages) == 1 and "restarts" in freeze_pages[0]["summary"], pages
        assert stack.app.test_client().delete("/api/v1/freeze", headers=admin()).status_code == 200
        for h in sim.host_ids:
            assert stack.wait_finished(h, timeout=90)["outcome"] == "healthy", (h, stack.steps(h))
        assert [sim.counts(h)["agent_restarts"] for h in sim.host_ids] == [1] * 5
        resolved = pages_received(server)[len(pages) :]
        assert [p["status"] for p in resolved if p["dedup_key"] == freeze_pages[0]["dedup_key"]] == [
            "resolved"
        ]


@pytest.mark.parametrize("answer", ["approve", "deny", "timeout"])
def test_retirement_waits_for_approval_then_retires_once_or_escalates(
    make_sim_cluster, e2e_stack, tmp_path, server, answer
):
    sim = make_sim_cluster(hosts=1, selfplay=False)
    h = sim.host_ids[0]
    rules = rules_file(
        tmp_path,
        **{"automatic: false": "automatic: true", "timeout_minutes: 60": "timeout_minutes: 0.25"},
    )
    with e2e_stack(
        sim,
        REMEDIATOR_RULES_FILE=str(rules),
        **pages_to(server),
    ) as stack:
        sim.kill_agent(h)
        sim.make_critical(h)
        sim.write_games(h, 3)
        # A first (dry-run) look counts the unsynced games; then the instance is terminated.
        start_ladders(stack.conn, "remediator", [LadderRequest(h, "first look", dry_run=True, force=True)])
        assert stack.wait_finished(h)["outcome"] == "dry-run"
        sim.terminate_instance(h)
        stack.post([alert(h)])
        wait_for(
            lambda: stack.host(h).get("status") == "awaiting_approval", timeout=60, what="the approval wait"
        )
        pages = pages_received(server)
        asked = [p for p in pages if "asks approval" in p["summary"]]
        assert len(asked) == 1 and "remediator approve" in json.dumps(asked[0]["details"])
        assert sim.counts(h)["retires"] == 0 and sim.counts(h)["data_loss_records"] == 0
        if answer != "timeout":
            args = ["approve", h, "--reason", "checked the provider console"]
            cli(stack, *([*args, "--deny"] if answer == "deny" else args))
        state = stack.wait_finished(h, timeout=90)
        if answer == "approve":
            assert state["outcome"] == "retired", stack.steps(h)
            assert sim.counts(h)["retires"] == 1 and sim.retired(h)
            approval = next(
                e for e in stack.audit(h) if e["step"] == "approval" and e["outcome"] == "approved"
            )
            assert approval["who"].startswith("cli") and approval["detail"] == "checked the provider console"
        else:
            assert state["outcome"] == "escalated", stack.steps(h)
            assert sim.counts(h)["retires"] == 0 and not sim.retired(h)
            expected = ("retire", "refused") if answer == "deny" else ("retire", "escalating")
            assert expected in stack.steps(h)
        # One incident, one page: the approval request, later updated, never a second trigger key.
        keys_paged = {p["dedup_key"] for p in pages_received(server)}
        assert len(keys_paged) == 1


def silences_of(am: AlertmanagerProcess, state: str = "active") -> list[dict]:
    found = requests.get(am.url + "/api/v2/silences", timeout=5).json()
    return [s for s in found if s["status"]["state"] == state and s["createdBy"] == "ringrift-remediator"]


def test_a_host_s_other_alerts_are_silenced_while_its_agent_is_restarted_and_not_after(
    sim_cluster, e2e_stack, tmp_path
):
    require_binary("prometheus-alertmanager")
    sim = sim_cluster
    h = sim.host_ids[0]
    rules = rules_file(tmp_path, **{"  enabled: false ": "  enabled: true  "})
    with (
        AlertmanagerProcess(tmp_path / "am", "http://127.0.0.1:9/unused", bearer_token=WEBHOOK_TOKEN) as am,
        e2e_stack(
            sim,
            REMEDIATOR_RULES_FILE=str(rules),
            REMEDIATOR_ALERTMANAGER_URL=am.url,
        ) as stack,
    ):
        sim.agent_dies_after_restart(h)  # two restarts, a recovery, an escalation: a while
        sim.make_critical(h)
        stack.post([alert(h)])
        wait_for(lambda: silences_of(am), timeout=60, what="a silence while the restart runs")
        [silence] = silences_of(am)
        assert stack.host(h)["status"] != "finished"
        matchers = {
            (m["name"], m["value"], m["isRegex"], m.get("isEqual", True)) for m in silence["matchers"]
        }
        assert ("host_id", h, False, True) in matchers
        assert ("alertname", "CriticalSyncHosts", True, False) in matchers  # the trigger: never silenced
        state = stack.wait_finished(h, timeout=120)
        assert state["outcome"] == "recovered", stack.steps(h)
        wait_for(lambda: not silences_of(am), timeout=10, what="the ladder's end to expire its silence")
        assert [s["id"] for s in silences_of(am, "expired")] == [silence["id"]]
        # A worker killed between making a silence and recording it leaves one Redis does not know;
        # the sweeper finds it in Alertmanager (made by the remediator, its ladder no longer runs).
        orphan = requests.post(
            am.url + "/api/v2/silences",
            json={
                "matchers": silence["matchers"],
                "startsAt": silence["startsAt"],
                "endsAt": silence["endsAt"],
                "createdBy": "ringrift-remediator",
                "comment": f"ringrift-remediator is remediating {h} (ladder {'0' * 32})",
            },
            timeout=5,
        ).json()["silenceID"]
        assert [s["id"] for s in silences_of(am)] == [orphan]
        stack.conn.delete(keys.SWEEP_LOCK, keys.SILENCE_SWEEP_LOCK)
        sweep(stack.conn, Settings.from_env())
        assert silences_of(am) == [] and stack.conn.hlen(keys.SILENCES) == 0


def test_a_maintenance_alert_holds_mutating_steps_until_it_resolves(sim_cluster, e2e_stack):
    sim = sim_cluster
    h = sim.host_ids[0]
    with e2e_stack(sim) as stack:
        stack.post([alert(None, alertname="RingRiftMaintenance")])
        sim.kill_agent(h)
        sim.make_critical(h)
        stack.post([alert(h)])
        wait_for(lambda: ("restart_agent", "frozen") in stack.steps(h), timeout=60, what="the hold")
        assert "RingRiftMaintenance" in next(e["detail"] for e in stack.audit(h) if e["outcome"] == "frozen")
        watch_no_restart(sim, h, 5)
        stack.post([alert(None, alertname="RingRiftMaintenance", status="resolved")])
        assert stack.wait_finished(h, timeout=60)["outcome"] == "healthy"
        assert incidents.current(stack.conn, h).state == incidents.IncidentState.MONITORING
        assert paging.open_pages(stack.conn) == []
