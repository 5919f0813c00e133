"""The receiver contract: every answer code, auth, hostile host ids, dedupe, never 2xx for unstored work."""

from __future__ import annotations

import base64
import json
from collections import Counter

import pytest
import redis
from helpers import WEBHOOK_TOKEN, alert, bearer, make_settings, payload
from hostile import HOSTILE_HOST_IDS
from rq import Queue
from rq.job import Job

from remediator import create_app, keys
from remediator.embedded_redis import EmbeddedRedis
from remediator.intake import LADDER_JOB, PREFETCH_JOB

URL = "/webhook/alertmanager"


def queued_jobs(conn: redis.Redis) -> list[str]:
    return Queue("remediator", connection=conn).job_ids


def queued_by_kind(conn: redis.Redis) -> Counter[str]:
    """How many queued jobs run each job function (ladders; a storm's prefetch jobs)."""
    jobs = Job.fetch_many(queued_jobs(conn), connection=conn)
    return Counter(job.func_name for job in jobs if job is not None)


def post(client, body, headers=None, **kw):
    return client.post(
        URL,
        data=json.dumps(body),
        content_type="application/json",
        headers=headers if headers is not None else bearer(),
        **kw,
    )


def test_firing_alert_is_accepted_with_one_job_and_recorded_state(client, redis_conn):
    resp = post(client, payload([alert("h1")]))
    assert resp.status_code == 202
    body = resp.get_json()
    assert [a["host_id"] for a in body["accepted"]] == ["h1"]
    job_id = body["accepted"][0]["job_id"]
    assert body["accepted"][0]["fingerprint"]
    assert queued_jobs(redis_conn) == [job_id]
    state = redis_conn.hgetall(keys.HOST.format("h1"))
    assert state[b"status"] == b"queued" and state[b"ladder_id"] == job_id.encode()
    assert redis_conn.get(keys.ACTIVE.format("h1")) == job_id.encode()
    audit = [json.loads(x) for x in redis_conn.lrange(keys.AUDIT.format("h1"), 0, -1)]
    assert audit[0]["step"] == "intake" and audit[0]["job_id"] == job_id


def test_resend_of_firing_alert_is_skipped_as_already_remediating(client, redis_conn):
    first = post(client, payload([alert("h1")])).get_json()["accepted"][0]["job_id"]
    second = post(client, payload([alert("h1")]))
    assert second.status_code == 202
    skipped = second.get_json()["skipped"]
    assert skipped[0]["reason"] == f"already remediating {first}"
    assert queued_jobs(redis_conn) == [first]


def test_duplicate_alerts_for_one_host_in_one_payload_make_one_job(client, redis_conn):
    resp = post(client, payload([alert("h1"), alert("h1", extra="x")]))
    body = resp.get_json()
    assert len(body["accepted"]) == 1 and body["skipped"][0]["reason"] == "duplicate in this payload"
    assert len(queued_jobs(redis_conn)) == 1


def test_malformed_json_is_400(client):
    resp = client.post(URL, data="{not json", content_type="application/json", headers=bearer())
    assert resp.status_code == 400
    assert resp.get_json()["field"] == "(body)"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.pop("alerts"), "(body)"),
        (lambda p: p.update(version="3"), "version"),
        (lambda p: p.update(status="exploded"), "status"),
        (lambda p: p["alerts"][0]["labels"].update(host_id=7), "alerts[0].labels.host_id"),
        (lambda p: p["alerts"][0]["labels"].pop("alertname"), "alerts[0].labels"),
        (lambda p: p["alerts"][0].update(status="maybe"), "alerts[0].status"),
        (lambda p: p.update(alerts={"a": 1}), "alerts"),
    ],
)
def test_malformed_payload_is_400_naming_the_field(client, redis_conn, mutate, field):
    body = payload([alert("h1")])
    mutate(body)
    resp = post(client, body)
    assert resp.status_code == 400
    assert resp.get_json()["field"] == field
    assert queued_jobs(redis_conn) == []


def test_missing_token_is_401(client, redis_conn):
    resp = post(client, payload([alert("h1")]), headers={})
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert queued_jobs(redis_conn) == []


def test_wrong_bearer_token_is_401(client):
    assert post(client, payload([alert("h1")]), headers=bearer("wrong")).status_code == 401


def test_right_bearer_token_is_accepted(client):
    assert post(client, payload([alert("h1")]), headers=bearer()).status_code == 202


def test_basic_auth_with_the_token_as_password_is_accepted(client):
    creds = base64.b64encode(f"alertmanager:{WEBHOOK_TOKEN}".encode()).decode()
    assert (
        post(client, payload([alert("h1")]), headers={"Authorization": f"Basic {creds}"}).status_code == 202
    )


def test_basic_auth_with_wrong_password_is_401(client):
    creds = base64.b64encode(b"alertmanager:nope").decode()
    assert (
        post(client, payload([alert("h1")]), headers={"Authorization": f"Basic {creds}"}).status_code == 401
    )


def test_no_configured_token_refuses_every_request(redis_url):
    app = create_app({"SETTINGS": make_settings(redis_url, webhook_token=None)})
    resp = post(app.test_client(), payload([alert("h1")]), headers=bearer(""))
    assert resp.status_code == 401


def test_token_never_appears_in_answers(client):
    for headers in ({}, bearer("wrong"), bearer()):
        for body in (payload([alert("h1")]), {"bad": 1}):
            resp = post(client, body, headers=headers)
            assert WEBHOOK_TOKEN not in resp.get_data(as_text=True)


def test_body_over_the_limit_is_413(redis_url, redis_conn):
    app = create_app({"SETTINGS": make_settings(redis_url, max_body_bytes=2048)})
    big = payload([alert(f"h{i}") for i in range(40)])
    resp = post(app.test_client(), big)
    assert resp.status_code == 413
    assert queued_jobs(redis_conn) == []


def test_non_json_content_type_is_415(client):
    resp = client.post(
        URL, data=json.dumps(payload([alert("h1")])), content_type="text/plain", headers=bearer()
    )
    assert resp.status_code == 415
    assert resp.get_json()["field"] == "Content-Type"


@pytest.mark.parametrize("host_id", HOSTILE_HOST_IDS)
def test_hostile_host_id_is_422_and_nothing_is_enqueued(client, redis_conn, host_id):
    body = payload([alert("good-host"), alert(host_id)])
    resp = post(client, body)
    assert resp.status_code == 422
    assert resp.get_json()["field"] == "alerts[1].labels.host_id"
    assert queued_jobs(redis_conn) == []
    assert redis_conn.keys("remediator:*") == []


def test_resolved_alert_asks_the_running_ladder_to_stop(client, redis_conn):
    job = post(client, payload([alert("h1")])).get_json()["accepted"][0]["job_id"]
    resp = post(client, payload([alert("h1", status="resolved")]))
    assert resp.status_code == 202
    assert resp.get_json()["resolved"][0]["ladder_id"] == job
    assert redis_conn.get(keys.CANCEL.format("h1")) == job.encode()


def test_resolved_alert_for_a_host_never_seen_is_answered_and_writes_nothing(client, redis_conn):
    resp = post(client, payload([alert("h9", status="resolved")]))
    assert resp.status_code == 202
    assert resp.get_json()["resolved"][0]["reason"] == "nothing open for this host"
    # No key at all for a host the remediator never worked on (5,000 such alerts would be 5,000 keys).
    assert [k for k in redis_conn.keys("remediator:*") if b"h9" in k] == []


def test_alert_without_host_id_enqueues_one_discovery_job(client, redis_conn):
    first = post(client, payload([alert(None)])).get_json()
    assert first["accepted"][0]["host_id"] is None
    second = post(client, payload([alert(None)])).get_json()
    assert second["skipped"][0]["reason"].startswith("discovery already queued")
    jobs = Queue("remediator", connection=redis_conn).jobs
    assert [j.func_name for j in jobs] == ["workers.jobs.discover"]


def test_alertname_the_rules_do_not_act_on_is_skipped_with_reason(client, redis_conn):
    body = post(client, payload([alert("h1", alertname="DiskAlmostFull")])).get_json()
    assert "does not start a ladder" in body["skipped"][0]["reason"]
    assert queued_jobs(redis_conn) == []


def test_fleet_only_alert_feeds_the_fleet_view(client, redis_conn):
    body = post(client, payload([alert(None, alertname="ClusterHealthCritical")])).get_json()
    assert body["recorded"][0]["alertname"] == "ClusterHealthCritical"
    assert redis_conn.hget(keys.FLEET, "alert:ClusterHealthCritical").startswith(b"firing")
    assert queued_jobs(redis_conn) == []


def test_thousand_alert_payload_makes_a_thousand_jobs(redis_url, redis_conn):
    # One job per host, written in one transaction: each ladder is independent and locked per host,
    # so a fan-out job would only add a hop before the first SSH command.
    app = create_app({"SETTINGS": make_settings(redis_url)})
    body = payload([alert(f"host-{i:04d}") for i in range(1000)])
    resp = post(app.test_client(), body)
    assert resp.status_code == 202
    assert len(resp.get_json()["accepted"]) == 1000
    # And 16 jobs that diagnose the storm's hosts ahead of their ladders, 64 each (workers/prefetch.py).
    assert queued_by_kind(redis_conn) == {LADDER_JOB: 1000, PREFETCH_JOB: 16}
    assert redis_conn.zcard(keys.HOSTS) == 1000


def test_redis_stopped_answers_503_and_stores_nothing(tmp_path):
    server = EmbeddedRedis(tmp_path / "r").start()
    app = create_app({"SETTINGS": make_settings(server.url)})
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    server.stop()
    resp = post(client, payload([alert("h1"), alert("h2")]))
    assert resp.status_code == 503
    assert resp.get_json()["retry"] is True
    assert client.get("/readyz").status_code == 503
    server.start()  # same port, no persistence: whatever was written would have been lost anyway
    try:
        conn = redis.Redis.from_url(server.url)
        assert conn.dbsize() == 0
        # Alertmanager retries: the same delivery now succeeds.
        assert post(client, payload([alert("h1"), alert("h2")])).status_code == 202
        assert len(queued_jobs(conn)) == 2
    finally:
        server.stop()


def test_redis_out_of_memory_answers_503_and_half_writes_nothing(tmp_path):
    with EmbeddedRedis(tmp_path / "r") as server:
        conn = redis.Redis.from_url(server.url)
        app = create_app({"SETTINGS": make_settings(server.url)})
        conn.config_set("maxmemory-policy", "noeviction")
        conn.config_set("maxmemory", 1)
        resp = post(app.test_client(), payload([alert(f"h{i}") for i in range(5)]))
        assert resp.status_code == 503
        conn.config_set("maxmemory", 0)
        assert conn.keys("remediator:*") == [] and conn.keys("rq:*") == []


def test_healthz_needs_no_redis(tmp_path):
    app = create_app({"SETTINGS": make_settings("redis://127.0.0.1:1/0")})
    assert app.test_client().get("/healthz").status_code == 200
    assert app.test_client().get("/readyz").status_code == 503


def test_metrics_count_requests_by_code(client):
    post(client, payload([alert("h1")]))
    post(client, payload([alert("h1")]), headers={})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'remediator_webhook_requests_total{code="202"}' in text
    assert 'remediator_webhook_requests_total{code="401"}' in text
    assert "remediator_queue_depth" in text


def test_a_token_sent_inside_a_label_is_not_echoed_back(client):
    resp = post(client, payload([alert("h1", alertname=f"x-{WEBHOOK_TOKEN}")]))
    assert resp.status_code == 202
    text = resp.get_data(as_text=True)
    assert "does not start a ladder" in text and WEBHOOK_TOKEN not in text and "[REDACTED]" in text


def test_method_not_allowed_keeps_the_allow_header(client):
    resp = client.get(URL)
    assert resp.status_code == 405 and "POST" in resp.headers["Allow"]
    assert resp.is_json


# -- bodies without a Content-Length, through the real server --------------------------------------------


@pytest.fixture
def gunicorn_receiver(redis_url, tmp_path):
    """``remediator serve`` (gunicorn) with the default body limit (1 MiB)."""
    import os

    from e2e import Receiver

    env = {k: v for k, v in os.environ.items() if not k.startswith(("REMEDIATOR_", "REDIS_URL"))}
    env.update(
        REDIS_URL=redis_url,
        REMEDIATOR_WEBHOOK_TOKEN=WEBHOOK_TOKEN,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"),
    )
    (tmp_path / "prom").mkdir()
    receiver = Receiver(env, tmp_path / "receiver.log").start()
    yield receiver
    receiver.stop()


def chunked(data: bytes, size: int = 32 * 1024):
    """A generator body: requests sends it with Transfer-Encoding: chunked and no Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_a_chunked_body_over_the_limit_is_413_not_cut_into_a_400(gunicorn_receiver, redis_conn):
    import requests

    from remediator.defaults import MAX_BODY_BYTES

    body = payload([alert(f"h{i}", instance="x" * 2000) for i in range(470)])
    data = json.dumps(body).encode()
    assert MAX_BODY_BYTES < len(data) < MAX_BODY_BYTES + 256 * 1024
    resp = requests.post(
        gunicorn_receiver.webhook_url,
        data=chunked(data),
        headers={**bearer(), "Content-Type": "application/json"},
        timeout=30,
    )
    assert resp.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in resp.request.headers
    assert resp.status_code == 413, resp.text
    assert "REMEDIATOR_MAX_BODY_BYTES" in resp.json()["error"]
    assert queued_jobs(redis_conn) == []


def test_a_chunked_body_within_the_limit_is_read_whole_and_accepted(gunicorn_receiver, redis_conn):
    import requests

    data = json.dumps(payload([alert(f"h{i}", instance="x" * 2000) for i in range(100)])).encode()
    resp = requests.post(
        gunicorn_receiver.webhook_url,
        data=chunked(data, size=1000),
        headers={**bearer(), "Content-Type": "application/json"},
        timeout=30,
    )
    assert resp.request.headers.get("Transfer-Encoding") == "chunked"
    assert resp.status_code == 202, resp.text
    assert len(resp.json()["accepted"]) == 100 and queued_by_kind(redis_conn)[LADDER_JOB] == 100


def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_413(redis_url, redis_conn):
    app = create_app({"SETTINGS": make_settings(redis_url, max_body_bytes=4096)})
    body = json.dumps(payload([alert("h1")])).encode()
    exact = body + b" " * (4096 - len(body))
    client = app.test_client()
    assert post_raw(client, exact).status_code == 202
    redis_conn.flushall()
    assert post_raw(client, exact + b" ").status_code == 413
    assert queued_jobs(redis_conn) == []


def post_raw(client, data: bytes):
    return client.post(URL, data=data, content_type="application/json", headers=bearer())
