"""The /api/v1 contract: reads, admin-only writes, remediate deduped, requeue never a second ladder."""

from __future__ import annotations

import json

import pytest
import redis
from helpers import ADMIN_TOKEN, READ_TOKEN, WEBHOOK_TOKEN
from ops_helpers import (
    PRIVATE,
    QUEUE,
    admin,
    failed_ids,
    live_jobs,
    make_settings,
    reader,
    run_jobs_failing,
    seed_evidence,
    seed_host,
    start_ladder,
)
from rq import Queue, SimpleWorker
from rq.job import Job

from remediator import create_app, keys, store
from remediator.ports import free_port
from workers.sweeper import sweep


def closed_port_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def audit_of(conn: redis.Redis, host_id: str) -> list[dict]:
    return [json.loads(x) for x in conn.lrange(keys.AUDIT.format(host_id), 0, -1)]


# -- reads ---------------------------------------------------------------------------------------------


def test_hosts_lists_each_host_with_status_step_attempt_and_outcome(client, redis_conn):
    ladder_id = seed_host(redis_conn, "gpu-node-07")
    store.update_host(
        redis_conn,
        "cpu-2",
        status="finished",
        step="force_sync",
        outcome="healthy",
        ladder_id="l2",
        attempt=1,
        started_at="1800000000.5",
    )
    resp = client.get("/api/v1/hosts")
    assert resp.status_code == 200
    hosts = {h["host_id"]: h for h in resp.get_json()["hosts"]}
    assert set(hosts) == {"gpu-node-07", "cpu-2"}
    assert hosts["gpu-node-07"] | {"updated_at": None} == hosts["gpu-node-07"] | {
        "status": "running",
        "step": "restart_agent",
        "attempt": 1,
        "outcome": "running",
        "ladder_id": ladder_id,
        "started_at": 1800000000.0,
        "updated_at": None,
    }
    assert hosts["cpu-2"]["outcome"] == "healthy" and hosts["cpu-2"]["started_at"] == 1800000000.5
    assert isinstance(hosts["cpu-2"]["updated_at"], float)


def test_host_detail_has_state_progress_along_the_ladder_and_the_full_timeline(client, redis_conn):
    ladder_id = seed_host(redis_conn, "gpu-node-07")
    body = client.get("/api/v1/hosts/gpu-node-07", headers=reader()).get_json()
    assert body["view"] == "detail" and body["audit_total"] == 4
    assert body["state"]["step"] == "restart_agent" and body["state"]["facts"]["unsynced_games"] == 412
    assert [e["step"] for e in body["audit"]] == ["intake", "diagnose", "force_sync", "force_sync"]
    assert body["audit"][-1]["last_sync_after"] == 1799999000.0  # evidence is kept
    marks = {p["step"]: p["mark"] for p in body["progress"]}
    assert marks["diagnose"] == "ok" and marks["force_sync"] == "failed"
    assert marks["restart_agent"] == "current" and marks["recover_data"] == "planned"
    assert marks["unretire"] == "idle" and "wait_reachable" not in marks
    assert body["state"]["ladder_id"] == ladder_id


@pytest.mark.parametrize("host_id", ["a;reboot", "$(id)", "-dash", ".hidden", "x" * 64, "h%0A1"])
def test_host_detail_refuses_an_invalid_host_id_with_422(client, host_id):
    resp = client.get(f"/api/v1/hosts/{host_id}")
    assert resp.status_code == 422 and resp.get_json()["field"] == "host_id"


def test_host_detail_of_a_host_never_seen_is_404(client):
    resp = client.get("/api/v1/hosts/never-seen")
    assert resp.status_code == 404 and "never worked on it" in resp.get_json()["error"]


@pytest.mark.parametrize("guess", [ADMIN_TOKEN, WEBHOOK_TOKEN, ADMIN_TOKEN[:-1]])
def test_unknown_host_answers_the_same_404_for_any_id_even_a_configured_secret(client, guess):
    # The id used to be echoed, and the secret redactor then confirmed a guessed secret: the answer for
    # /api/v1/hosts/<admin token> said "no state for host [REDACTED]", testing every secret at once.
    reference = client.get("/api/v1/hosts/never-seen")
    resp = client.get(f"/api/v1/hosts/{guess}")
    assert (resp.status_code, resp.get_data()) == (reference.status_code, reference.get_data())
    assert b"REDACTED" not in resp.get_data()
    for url in (f"/api/v1//hosts/{guess}", f"/api/v1/hosts//{guess}"):
        doubled = client.get(url)  # no redirect whose page echoes the path
        assert doubled.status_code == 404 and b"REDACTED" not in doubled.get_data(), url
        assert "Location" not in doubled.headers


# -- read access: a summary without the read token -----------------------------------------------------


def test_unauthenticated_host_detail_shows_no_address_user_port_path_log_line_or_evidence(client, redis_conn):
    seed_evidence(redis_conn, "gpu-node-07")
    resp = client.get("/api/v1/hosts/gpu-node-07")
    assert resp.status_code == 200
    text = resp.get_data(as_text=True)
    assert [p for p in PRIVATE if p in text] == []
    body = resp.get_json()
    assert body["view"] == "summary"
    assert body["state"]["step"] == "restart_agent" and body["state"]["outcome"] == "running"
    assert {p["step"]: p["mark"] for p in body["progress"]}["restart_agent"] == "current"
    assert all(set(e) == {"ts", "step", "outcome"} for e in body["audit"])
    assert [e["step"] for e in body["audit"]][-2:] == ["restart_agent", "force_sync"]


def test_unauthenticated_hosts_list_shows_no_outcome_detail_or_waiting_for(client, redis_conn):
    seed_evidence(redis_conn, "gpu-node-07")
    resp = client.get("/api/v1/hosts")
    text = resp.get_data(as_text=True)
    assert resp.status_code == 200 and [p for p in PRIVATE if p in text] == []
    (host,) = resp.get_json()["hosts"]
    assert resp.get_json()["view"] == "summary"
    assert host["status"] == "running" and "outcome_detail" not in host and "waiting_for" not in host


@pytest.mark.parametrize("token", [READ_TOKEN, ADMIN_TOKEN], ids=["read token", "admin token"])
def test_the_read_token_and_the_admin_token_read_the_full_state_and_evidence(client, redis_conn, token):
    seed_evidence(redis_conn, "gpu-node-07")
    detail = client.get("/api/v1/hosts/gpu-node-07", headers=reader(token))
    assert detail.status_code == 200 and detail.get_json()["view"] == "detail"
    text = detail.get_data(as_text=True)
    assert [p for p in PRIVATE if p not in text] == []  # every piece of evidence is there
    listed = client.get("/api/v1/hosts", headers=reader(token)).get_json()
    assert listed["view"] == "detail" and "COORD-ERROR-BODY-5521" in listed["hosts"][0]["outcome_detail"]


READ_REFUSED = [
    {"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "Basic " + __import__("base64").b64encode(f"r:{READ_TOKEN}".encode()).decode()},
    {"Authorization": READ_TOKEN},
]


@pytest.mark.parametrize("url", ["/api/v1/hosts", "/api/v1/hosts/gpu-node-07"])
@pytest.mark.parametrize("headers", READ_REFUSED, ids=["webhook", "wrong", "basic", "no-scheme"])
def test_reads_with_other_credentials_are_401_not_a_quiet_summary(client, redis_conn, url, headers):
    seed_evidence(redis_conn, "gpu-node-07")
    resp = client.get(url, headers=headers)
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    text = resp.get_data(as_text=True)
    assert "gpu-node-07" not in text and READ_TOKEN not in text


def test_without_a_configured_read_token_only_the_admin_token_reads_the_detail(redis_url, redis_conn):
    seed_evidence(redis_conn, "gpu-node-07")
    client = create_app({"SETTINGS": make_settings(redis_url, read_token=None)}).test_client()
    assert client.get("/api/v1/hosts/gpu-node-07", headers=reader()).status_code == 401
    assert client.get("/api/v1/hosts/gpu-node-07").get_json()["view"] == "summary"
    assert client.get("/api/v1/hosts/gpu-node-07", headers=admin()).get_json()["view"] == "detail"


def test_host_detail_pages_the_audit_newest_first_and_says_the_total(client, redis_conn):
    for i in range(250):
        store.append_audit(redis_conn, "h1", "diagnose", f"o{i}")
    first = client.get("/api/v1/hosts/h1").get_json()
    assert (first["audit_total"], first["audit_offset"], first["audit_limit"]) == (250, 0, 100)
    assert [e["outcome"] for e in first["audit"]] == [f"o{i}" for i in range(150, 250)]  # oldest first
    page = client.get("/api/v1/hosts/h1?limit=30&offset=200", headers=reader()).get_json()
    assert [e["outcome"] for e in page["audit"]] == [f"o{i}" for i in range(20, 50)]
    last = client.get("/api/v1/hosts/h1?limit=100&offset=200").get_json()
    assert [e["outcome"] for e in last["audit"]] == [f"o{i}" for i in range(50)]
    assert client.get("/api/v1/hosts/h1?offset=250").get_json()["audit"] == []
    whole = client.get("/api/v1/hosts/h1?limit=1000").get_json()["audit"]
    assert len(whole) == 250


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("limit=-1", "limit"),
        ("limit=010", "limit"),
        ("offset=-1", "offset"),
        ("offset=1001", "offset"),
        ("offset=1.5", "offset"),
    ],
)
def test_a_limit_or_offset_out_of_range_is_400_naming_it(client, redis_conn, query, field):
    seed_host(redis_conn, "h1")
    resp = client.get(f"/api/v1/hosts/h1?{query}")
    assert resp.status_code == 400 and resp.get_json()["field"] == field


def test_fleet_shows_critical_hosts_in_window_storm_paused_hosts_and_open_pages(client, redis_conn):
    import time

    now = time.time()
    redis_conn.zadd(keys.FLEET_CRITICAL, {"h1": now, "h2": now - 30, "old": now - 86000})
    redis_conn.hset(keys.FLEET, mapping={"storm": "1", "storm_id": "s1", "storm_started_at": f"{now:.3f}"})
    redis_conn.sadd(keys.PAUSED, "h1", "h2")
    redis_conn.sadd(keys.PAGES, "remediator/storm/s1")
    redis_conn.hset(
        keys.PAGE.format("remediator/storm/s1"),
        mapping={
            "dedup_key": "remediator/storm/s1",
            "kind": "storm",
            "state": "delivered",
            "summary": "storm: 2 hosts critical",
            "severity": "critical",
            "hosts": json.dumps({"h1": "critical", "h2": "critical"}),
            "created_at": f"{now:.3f}",
        },
    )
    body = client.get("/api/v1/fleet", headers=reader()).get_json()
    assert [c["host_id"] for c in body["critical_hosts"]] == ["h2", "h1"]
    assert body["storm_active"] is True and body["storm_id"] == "s1"
    assert body["paused_hosts"] == ["h1", "h2"]
    assert body["open_pages"][0]["hosts"] == ["h1", "h2"]
    assert body["open_pages"][0]["summary"] == "storm: 2 hosts critical" and body["view"] == "detail"
    # Without the read token, an open page's text (it carries the ladder's escalation reason) is left out.
    summary = client.get("/api/v1/fleet").get_json()
    assert summary["view"] == "summary" and "summary" not in summary["open_pages"][0]
    assert summary["open_pages"][0]["hosts"] == ["h1", "h2"] and summary["storm_active"] is True


# -- auth ----------------------------------------------------------------------------------------------

WRITES = ["/api/v1/hosts/h1/remediate", "/api/v1/jobs/abc/requeue", "/api/v1/jobs/requeue-failed"]
BAD_CREDENTIALS = [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
    {"Authorization": "Basic " + __import__("base64").b64encode(f"admin:{ADMIN_TOKEN}".encode()).decode()},
    {"Authorization": ADMIN_TOKEN},
]


@pytest.mark.parametrize("url", WRITES)
@pytest.mark.parametrize("headers", BAD_CREDENTIALS, ids=["none", "wrong", "webhook", "basic", "no-scheme"])
def test_write_endpoints_refuse_anything_but_the_admin_bearer_token(client, redis_conn, url, headers):
    resp = client.post(url, headers=headers)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert ADMIN_TOKEN not in resp.get_data(as_text=True)
    assert Queue(QUEUE, connection=redis_conn).count == 0 and not redis_conn.exists(keys.HOST.format("h1"))


def test_writes_are_refused_when_no_admin_token_is_configured(redis_url, redis_conn):
    client = create_app({"SETTINGS": make_settings(redis_url, admin_token=None)}).test_client()
    assert client.post(WRITES[0], headers={"Authorization": "Bearer "}).status_code == 401
    assert client.post(WRITES[0], headers=admin()).status_code == 401


# -- remediate -----------------------------------------------------------------------------------------


def test_remediate_queues_one_ladder_and_a_second_request_is_409_already_remediating(client, redis_conn):
    first = client.post("/api/v1/hosts/h1/remediate", headers=admin())
    assert first.status_code == 202
    ladder_id = first.get_json()["ladder_id"]
    assert Queue(QUEUE, connection=redis_conn).job_ids == [ladder_id]
    assert redis_conn.get(keys.ACTIVE.format("h1")).decode() == ladder_id
    second = client.post("/api/v1/hosts/h1/remediate", headers=admin(), json={"dry_run": True})
    assert second.status_code == 409
    assert second.get_json()["error"] == f"already remediating {ladder_id}"
    assert Queue(QUEUE, connection=redis_conn).job_ids == [ladder_id]
    assert audit_of(redis_conn, "h1")[0]["detail"].startswith("manual remediate by api")


def test_remediate_dry_run_is_recorded_on_the_ladder(client, redis_conn):
    resp = client.post("/api/v1/hosts/h1/remediate", headers=admin(), json={"dry_run": True})
    assert resp.status_code == 202 and resp.get_json()["dry_run"] is True
    assert store.get_host(redis_conn, "h1")["dry_run"] == "1"


@pytest.mark.parametrize(
    "body,field", [('{"dry_run": "yes"}', "dry_run"), ("[1]", "(body)"), ("{", "(body)")]
)
def test_remediate_rejects_a_malformed_body_with_400_and_queues_nothing(client, redis_conn, body, field):
    resp = client.post(
        "/api/v1/hosts/h1/remediate", headers=admin(), data=body, content_type="application/json"
    )
    assert resp.status_code == 400 and resp.get_json()["field"] == field
    assert Queue(QUEUE, connection=redis_conn).count == 0


def test_remediate_refuses_an_invalid_host_id_with_422(client, redis_conn):
    resp = client.post("/api/v1/hosts/$(reboot)/remediate", headers=admin())
    assert resp.status_code == 422
    assert Queue(QUEUE, connection=redis_conn).count == 0


# -- requeue -------------------------------------------------------------------------------------------


def test_requeue_of_a_failed_job_resumes_the_same_ladder_with_a_fresh_job(client, redis_conn, monkeypatch):
    ladder_id = start_ladder(redis_conn, "h1")
    run_jobs_failing(redis_conn, monkeypatch)
    assert failed_ids(redis_conn) == [ladder_id]

    resp = client.post(f"/api/v1/jobs/{ladder_id}/requeue", headers=admin())
    assert resp.status_code == 202
    body = resp.get_json()
    assert body["action"] == "resumed" and body["ladder_id"] == ladder_id
    new_id = body["new_job_id"]
    assert new_id != ladder_id
    job = Job.fetch(new_id, connection=redis_conn)
    assert job.func_name == "workers.jobs.run_ladder" and job.args == ("h1", ladder_id)
    state = store.get_host(redis_conn, "h1")
    assert state["job_id"] == new_id and state["status"] == "queued" and state["ladder_id"] == ladder_id
    assert redis_conn.get(keys.ACTIVE.format("h1")).decode() == ladder_id  # still the one ladder
    last = audit_of(redis_conn, "h1")[-1]
    assert last["outcome"] == "requeued" and last["detail"].startswith("requeued by api")
    assert last["job_id"] == new_id and last["ladder_id"] == ladder_id
    assert failed_ids(redis_conn) == []


def test_resumed_job_is_accepted_by_the_ladder_and_advances_it(client, redis_conn, monkeypatch):
    ladder_id = start_ladder(redis_conn, "h1")
    run_jobs_failing(redis_conn, monkeypatch)
    new_id = client.post(f"/api/v1/jobs/{ladder_id}/requeue", headers=admin()).get_json()["new_job_id"]
    # A real worker runs it; the coordinator is down, so diagnosis records that and the ladder plans.
    monkeypatch.setenv("REMEDIATOR_COORDINATOR_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("REMEDIATOR_COORDINATOR_TIMEOUT", "0.5")
    SimpleWorker([Queue(QUEUE, connection=redis_conn)], connection=redis_conn).work(burst=True)
    result = Job.fetch(new_id, connection=redis_conn).return_value()
    assert not result.startswith(("stale job", "superseded")), result
    diagnosed = [e for e in audit_of(redis_conn, "h1") if e["step"] == "diagnose"]
    assert diagnosed and diagnosed[0]["ladder_id"] == ladder_id and diagnosed[0]["job_id"] == new_id


def test_a_second_requeue_while_the_first_is_queued_creates_nothing(client, redis_conn, monkeypatch):
    ladder_id = start_ladder(redis_conn, "h1")
    run_jobs_failing(redis_conn, monkeypatch)
    first = client.post(f"/api/v1/jobs/{ladder_id}/requeue", headers=admin()).get_json()
    audit_len = len(audit_of(redis_conn, "h1"))
    second = client.post(f"/api/v1/jobs/{ladder_id}/requeue", headers=admin())
    assert second.status_code == 200
    assert second.get_json()["action"] == "unchanged"
    assert second.get_json()["new_job_id"] == first["new_job_id"]
    assert Queue(QUEUE, connection=redis_conn).job_ids == [first["new_job_id"]]
    assert len(audit_of(redis_conn, "h1")) == audit_len


def test_requeue_is_refused_when_another_ladder_owns_the_host(client, redis_conn, monkeypatch):
    old = start_ladder(redis_conn, "h1")
    run_jobs_failing(redis_conn, monkeypatch)
    redis_conn.delete(keys.ACTIVE.format("h1"))  # the old ladder ended...
    current = start_ladder(redis_conn, "h1")  # ...and a new alert started another
    resp = client.post(f"/api/v1/jobs/{old}/requeue", headers=admin())
    assert resp.status_code == 409
    assert resp.get_json()["error"] == f"host h1 is already being remediated by ladder {current}"
    assert Queue(QUEUE, connection=redis_conn).job_ids == [current]


def test_requeue_of_a_job_whose_ladder_ended_starts_one_new_ladder(client, redis_conn, monkeypatch):
    old = start_ladder(redis_conn, "h1")
    run_jobs_failing(redis_conn, monkeypatch)
    redis_conn.delete(keys.ACTIVE.format("h1"))
    store.update_host(redis_conn, "h1", status="finished", outcome="stopped")
    resp = client.post(f"/api/v1/jobs/{old}/requeue", headers=admin())
    assert resp.status_code == 202
    body = resp.get_json()
    assert body["action"] == "started" and body["ladder_id"] != old
    assert redis_conn.get(keys.ACTIVE.format("h1")).decode() == body["ladder_id"]
    again = client.post(f"/api/v1/jobs/{old}/requeue", headers=admin())
    assert again.status_code == 409  # the new ladder now owns the host
    assert Queue(QUEUE, connection=redis_conn).job_ids == [body["ladder_id"]]


def test_requeue_is_busy_while_a_worker_holds_the_host_lock(client, redis_conn, monkeypatch):
    ladder_id = start_ladder(redis_conn, "h1")
    run_jobs_failing(redis_conn, monkeypatch)
    redis_conn.set(keys.LOCK.format("h1"), "another-worker", ex=60)
    resp = client.post(f"/api/v1/jobs/{ladder_id}/requeue", headers=admin())
    assert resp.status_code == 409 and resp.get_json()["action"] == "busy"
    assert Queue(QUEUE, connection=redis_conn).count == 0


def test_requeue_of_an_unknown_job_is_404_and_of_an_invalid_id_is_422(client):
    assert client.post("/api/v1/jobs/nope/requeue", headers=admin()).status_code == 404
    assert client.post("/api/v1/jobs/a;b/requeue", headers=admin()).status_code == 422


def test_requeue_failed_with_three_failed_jobs_of_two_hosts_ends_with_one_live_job_per_host(
    client, redis_url, redis_conn, monkeypatch
):
    l1 = start_ladder(redis_conn, "h1")
    run_jobs_failing(redis_conn, monkeypatch)
    # The sweeper resumes h1's ladder with a fresh job (leaving the failed one filed), which fails too.
    assert sweep(redis_conn, make_settings(redis_url)) == ["h1"]
    l2 = start_ladder(redis_conn, "h2")
    run_jobs_failing(redis_conn, monkeypatch)
    assert len(failed_ids(redis_conn)) == 3

    resp = client.post("/api/v1/jobs/requeue-failed", headers=admin())
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["counts"] == {"resumed": 2, "unchanged": 1}
    live = live_jobs(redis_conn)
    assert {h: len(j) for h, j in live.items()} == {"h1": 1, "h2": 1}
    for host, ladder_id in (("h1", l1), ("h2", l2)):
        state = store.get_host(redis_conn, host)
        assert state["ladder_id"] == ladder_id and live[host] == [state["job_id"]]
    assert failed_ids(redis_conn) == []
    assert client.post("/api/v1/jobs/requeue-failed", headers=admin()).get_json()["results"] == []


def test_requeue_failed_for_one_host_leaves_the_other_hosts_failed_jobs(client, redis_conn, monkeypatch):
    start_ladder(redis_conn, "h1")
    l2 = start_ladder(redis_conn, "h2")
    run_jobs_failing(redis_conn, monkeypatch)
    resp = client.post("/api/v1/jobs/requeue-failed", headers=admin(), json={"host_id": "h1"})
    assert [r["host_id"] for r in resp.get_json()["results"]] == ["h1"]
    assert failed_ids(redis_conn) == [l2] and list(live_jobs(redis_conn)) == ["h1"]


# -- Redis down ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,url",
    [
        ("get", "/api/v1/hosts"),
        ("get", "/api/v1/hosts/h1"),
        ("get", "/api/v1/fleet"),
        ("post", "/api/v1/hosts/h1/remediate"),
        ("post", "/api/v1/jobs/abc/requeue"),
        ("post", "/api/v1/jobs/requeue-failed"),
    ],
)
def test_redis_unavailable_is_503(method, url):
    client = create_app({"SETTINGS": make_settings(closed_port_url())}).test_client()
    resp = getattr(client, method)(url, headers=admin())
    assert resp.status_code == 503 and resp.get_json()["retry"] is True


def test_unauthenticated_host_detail_shows_the_incident_s_states_not_who_or_why(client, redis_conn):
    from remediator import incidents
    from remediator.intake import LadderRequest, start_ladders

    start_ladders(redis_conn, QUEUE, [LadderRequest("h1", "manual remediate by api (10.9.8.7)", force=True)])
    incidents.close(redis_conn, "h1", by="api (10.9.8.7)", reason="fixed the disk at 10.9.8.7")
    summary = client.get("/api/v1/hosts/h1").get_json()
    incident = summary["incident"]
    assert incident["state"] == "resolved" and [r["kind"] for r in incident["ladders"]] == ["manual"]
    assert "10.9.8.7" not in json.dumps(summary)
    detail = client.get("/api/v1/hosts/h1", headers={"Authorization": f"Bearer {READ_TOKEN}"}).get_json()
    assert detail["incident"]["closed_by"] == "api (10.9.8.7)"
