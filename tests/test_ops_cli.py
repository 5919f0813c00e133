"""`remediator status`, `remediate` and `requeue` against a real Redis: same answers as the API."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from ops_helpers import (
    QUEUE,
    failed_ids,
    live_jobs,
    make_settings,
    reader,
    run_jobs_failing,
    seed_host,
    start_ladder,
)
from rq import Queue

from remediator import create_app, keys, store
from remediator.cli import main
from remediator.ports import free_port
from workers.sweeper import sweep


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def invoke(runner, redis_url):
    def run(*args: str, env: dict[str, str] | None = None):
        return runner.invoke(
            main, list(args), env={"REDIS_URL": redis_url, "REMEDIATOR_DRY_RUN": "false", **(env or {})}
        )

    return run


@pytest.fixture
def api(redis_url):
    return create_app({"SETTINGS": make_settings(redis_url), "TESTING": True}).test_client()


def test_the_operator_commands_are_part_of_the_remediator_command(runner):
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("status", "remediate", "requeue"):
        assert f"  {command} " in result.output


def test_status_prints_a_table_of_hosts_with_their_step_and_outcome(invoke, redis_conn):
    seed_host(redis_conn, "gpu-node-07")
    store.update_host(redis_conn, "vast-31", status="finished", outcome="healthy", step="force_sync")
    result = invoke("status")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    gpu = next(line for line in lines if "gpu-node-07" in line)
    assert "running" in gpu and "restart_agent" in gpu and "▶restart_agent" in gpu and "✗force_sync" in gpu
    assert "healthy" in next(line for line in lines if "vast-31" in line)


def test_status_json_is_what_the_api_returns(invoke, api, redis_conn):
    seed_host(redis_conn, "gpu-node-07")
    result = invoke("status", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output) == api.get("/api/v1/hosts", headers=reader()).get_json()
    host = invoke("status", "gpu-node-07", "--json")
    assert (
        json.loads(host.output)
        == api.get("/api/v1/hosts/gpu-node-07?limit=1000", headers=reader()).get_json()
    )


def test_status_of_a_host_prints_its_timeline_with_evidence(invoke, redis_conn):
    seed_host(redis_conn, "gpu-node-07")
    result = invoke("status", "gpu-node-07")
    assert result.exit_code == 0, result.output
    assert "timeline" in result.output
    assert "verify-failed" in result.output and "not verified within 300s" in result.output
    assert "last_sync_after" in result.output  # evidence column


def test_status_of_an_unknown_host_exits_1_and_of_an_invalid_one_exits_2(invoke):
    unknown = invoke("status", "nobody")
    assert unknown.exit_code == 1 and "no state for host nobody" in unknown.output
    assert invoke("status", "a;reboot").exit_code == 2


def test_remediate_queues_one_ladder_and_a_second_run_exits_1_naming_it(invoke, redis_conn):
    first = invoke("remediate", "h1")
    assert first.exit_code == 0, first.output
    ladder_id = redis_conn.get(keys.ACTIVE.format("h1")).decode()
    assert f"ladder {ladder_id} queued for h1" in first.output
    second = invoke("remediate", "h1", "--dry-run")
    assert second.exit_code == 1
    assert f"host h1 is already being remediated by ladder {ladder_id}" in second.output
    assert Queue(QUEUE, connection=redis_conn).job_ids == [ladder_id]
    assert store.get_audit(redis_conn, "h1")[0]["detail"].startswith("manual remediate by cli")


def test_remediate_dry_run_is_recorded_and_an_invalid_host_exits_2(invoke, redis_conn):
    result = invoke("remediate", "h1", "--dry-run")
    assert result.exit_code == 0 and "dry-run ladder" in result.output
    assert store.get_host(redis_conn, "h1")["dry_run"] == "1"
    assert invoke("remediate", "../etc").exit_code == 2


def test_requeue_job_resumes_the_same_ladder_and_a_second_requeue_creates_nothing(
    invoke, redis_conn, monkeypatch
):
    ladder_id = start_ladder(redis_conn, "h1")
    run_jobs_failing(redis_conn, monkeypatch)
    first = invoke("requeue", ladder_id)
    assert first.exit_code == 0, first.output
    assert f"{ladder_id}: resumed: ladder {ladder_id} of h1 resumed as job" in first.output
    new_id = store.get_host(redis_conn, "h1")["job_id"]
    assert Queue(QUEUE, connection=redis_conn).job_ids == [new_id] and new_id != ladder_id
    second = invoke("requeue", ladder_id, "--json")
    assert second.exit_code == 0
    assert json.loads(second.output)["results"][0]["action"] == "unchanged"
    assert Queue(QUEUE, connection=redis_conn).job_ids == [new_id]


def test_requeue_exits_1_when_another_ladder_owns_the_host(invoke, redis_conn, monkeypatch):
    old = start_ladder(redis_conn, "h1")
    run_jobs_failing(redis_conn, monkeypatch)
    redis_conn.delete(keys.ACTIVE.format("h1"))
    current = start_ladder(redis_conn, "h1")
    result = invoke("requeue", old)
    assert result.exit_code == 1
    assert f"host h1 is already being remediated by ladder {current}" in result.output
    assert Queue(QUEUE, connection=redis_conn).job_ids == [current]


def test_requeue_failed_with_three_failed_jobs_of_two_hosts_ends_with_one_live_job_per_host(
    invoke, redis_url, redis_conn, monkeypatch
):
    start_ladder(redis_conn, "h1")
    run_jobs_failing(redis_conn, monkeypatch)
    assert sweep(redis_conn, make_settings(redis_url)) == ["h1"]
    start_ladder(redis_conn, "h2")
    run_jobs_failing(redis_conn, monkeypatch)
    assert len(failed_ids(redis_conn)) == 3
    result = invoke("requeue", "--failed")
    assert result.exit_code == 0, result.output
    assert result.output.count(": resumed: ") == 2 and result.output.count(": unchanged: ") == 1
    live = live_jobs(redis_conn)
    assert {h: len(j) for h, j in live.items()} == {"h1": 1, "h2": 1}
    assert failed_ids(redis_conn) == []
    assert invoke("requeue", "--failed").output.strip() == "no failed jobs"


def test_requeue_host_requeues_only_that_hosts_failed_jobs(invoke, redis_conn, monkeypatch):
    start_ladder(redis_conn, "h1")
    l2 = start_ladder(redis_conn, "h2")
    run_jobs_failing(redis_conn, monkeypatch)
    result = invoke("requeue", "--host", "h1")
    assert result.exit_code == 0 and "h1 resumed" in result.output
    assert failed_ids(redis_conn) == [l2] and list(live_jobs(redis_conn)) == ["h1"]


@pytest.mark.parametrize("args", [[], ["j1", "--failed"], ["--failed", "--host", "h1"]])
def test_requeue_needs_exactly_one_of_job_failed_or_host(invoke, args):
    result = invoke("requeue", *args)
    assert result.exit_code == 2 and "exactly one of JOB_ID, --failed or --host" in result.output


def test_requeue_of_an_unknown_job_exits_1(invoke):
    result = invoke("requeue", "no-such-job")
    assert result.exit_code == 1 and "no job no-such-job" in result.output


def test_commands_explain_a_missing_or_unreachable_redis(runner):
    unset = runner.invoke(main, ["status"], env={"REDIS_URL": ""})
    assert unset.exit_code == 1 and "REDIS_URL is not set" in unset.output
    url = f"redis://127.0.0.1:{free_port()}/0"
    for args in (["status"], ["remediate", "h1"], ["requeue", "--failed"]):
        down = runner.invoke(main, args, env={"REDIS_URL": url})
        assert down.exit_code == 1 and "Redis is unavailable" in down.output, (args, down.output)


def test_hosts_list_progress_reads_a_tail_yet_sees_a_long_ladder_from_its_start(redis_conn):
    from remediator import ops

    host = "h-long"
    for i in range(300):  # an earlier ladder's trail
        store.append_audit(redis_conn, host, "force_sync", "ran", job_id="old-ladder", n=i)
    store.append_audit(redis_conn, host, "intake", "queued", "CriticalSyncHosts firing", job_id="L1")
    store.append_audit(redis_conn, host, "force_sync", "verify-failed", "no sync", ladder_id="L1")
    for i in range(ops.PROGRESS_TAIL + 50):  # a long wait: more entries than the tail holds
        store.append_audit(redis_conn, host, "wait_reachable", "held", "down", ladder_id="L1", n=i)
    store.update_host(redis_conn, host, ladder_id="L1", status="running", step="wait_reachable")
    (listed,) = ops.list_hosts_with_progress(redis_conn)
    detail = ops.host_detail(redis_conn, host)
    assert listed["progress"] == detail["progress"]  # the full trail's answer
    assert {p["step"]: p["mark"] for p in listed["progress"]}["force_sync"] == "failed"


def test_incident_close_closes_the_open_incident_and_says_which(invoke, redis_conn):
    ladder_id = start_ladder(redis_conn, "gpu-node-07")
    from remediator import incidents

    incident_id = incidents.current_id(redis_conn, "gpu-node-07")
    result = invoke("incident", "close", "gpu-node-07", "--reason", "replaced the disk")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"incident {incident_id} of gpu-node-07 closed; ladder {ladder_id} stops at its next step"
    )
    closed = incidents.get(redis_conn, incident_id)
    assert closed.state == "resolved" and closed.close_reason == "replaced the disk"
    assert closed.closed_by.startswith("cli")
    again = invoke("incident", "close", "gpu-node-07")
    assert again.exit_code == 1 and "has no open incident" in again.output
    assert invoke("incident", "close", "a;b").exit_code == 2
