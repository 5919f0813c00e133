"""HTTP hardening of every answer: the Host allow-list, nosniff and no-store, one charset on /metrics."""

from __future__ import annotations

import pytest
from helpers import ADMIN_TOKEN, READ_TOKEN, WEBHOOK_TOKEN, alert, bearer, payload
from ops_helpers import PRIVATE, admin, make_settings, seed_evidence, seed_host
from rq import Queue

from remediator import create_app
from remediator.config import Settings

ANSWERS = [
    ("get", "/healthz", {}),
    ("get", "/readyz", {}),
    ("get", "/metrics", {}),
    ("get", "/openapi.json", {}),
    ("get", "/api/v1/hosts", {}),
    ("get", "/api/v1/hosts/gpu-node-07", {}),
    ("get", "/api/v1/hosts/never-seen", {}),
    ("get", "/api/v1/fleet", {}),
    ("post", "/api/v1/hosts/h1/remediate", {}),
    ("post", "/webhook/alertmanager", {"json": payload([alert("h1")])}),
    ("post", "/webhook/alertmanager", {"json": payload([alert("h1")]), "headers": bearer()}),
    ("get", "/webhook/alertmanager", {}),
    ("get", "/no/such/route", {}),
    ("get", "/ui", {}),
    ("get", "/ui/hosts/gpu-node-07", {}),
    ("get", "/ui/admin", {}),
]


@pytest.mark.parametrize(("method", "url", "kwargs"), ANSWERS, ids=[f"{m} {u}" for m, u, _ in ANSWERS])
def test_every_answer_says_nosniff_and_no_store(client, redis_conn, method, url, kwargs):
    seed_host(redis_conn, "gpu-node-07")
    resp = getattr(client, method)(url, **kwargs)
    assert resp.headers["X-Content-Type-Options"] == "nosniff", resp.status_code
    assert resp.headers["Cache-Control"] == "no-store", resp.status_code


def test_metrics_content_type_names_its_charset_once(client):
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert resp.headers["Content-Type"].count("charset") == 1


def test_admin_write_answers_are_not_cached_either(client):
    resp = client.post("/api/v1/hosts/h1/remediate", headers=admin(), json={"dry_run": True})
    assert resp.status_code == 202 and resp.headers["Cache-Control"] == "no-store"


# -- the Host allow-list (DNS rebinding) -----------------------------------------------------------------

ALLOWED = "rr-ringrift-remediator-receiver.remediation.svc,localhost,127.0.0.1,[::1]"
GUARDED = [
    ("get", "/api/v1/hosts"),
    ("get", "/api/v1/hosts/gpu-node-07"),
    ("get", "/api/v1/fleet"),
    ("get", "/ui"),
    ("get", "/ui/hosts/gpu-node-07"),
    ("get", "/ui/hosts/gpu-node-07/details"),
    ("get", "/ui/admin"),
    ("get", "/openapi.json"),
    ("post", "/api/v1/hosts/h1/remediate"),
    ("post", "/api/v1/hosts/gpu-node-07/incident/close"),
    ("post", "/ui/hosts/gpu-node-07/details"),
]


@pytest.fixture
def guarded(redis_url):
    settings = make_settings(
        redis_url, allowed_hosts=Settings.from_env({"REMEDIATOR_ALLOWED_HOSTS": ALLOWED}).allowed_hosts
    )
    return create_app({"SETTINGS": settings, "TESTING": True}).test_client()


@pytest.mark.parametrize(("method", "url"), GUARDED, ids=[f"{m} {u}" for m, u in GUARDED])
def test_a_rebinding_page_s_host_name_is_421_on_every_read_write_and_page(guarded, redis_conn, method, url):
    # A page on attacker.example resolves its name to the receiver: the browser sends its own name as Host.
    seed_evidence(redis_conn, "gpu-node-07")
    before = redis_conn.dbsize()
    resp = getattr(guarded, method)(
        url, headers={"Host": "attacker.example:8080", **admin()}, data={"token": READ_TOKEN, "host_id": "h1"}
    )
    assert resp.status_code == 421, resp.get_data(as_text=True)[:200]
    text = resp.get_data(as_text=True)
    assert "REMEDIATOR_ALLOWED_HOSTS" in text and "attacker" not in text
    assert [p for p in PRIVATE if p in text] == []
    assert redis_conn.dbsize() == before and Queue("remediator", connection=redis_conn).count == 0


@pytest.mark.parametrize(
    "host",
    [
        "rr-ringrift-remediator-receiver.remediation.svc:8080",
        "RR-Ringrift-Remediator-Receiver.Remediation.SVC.",
        "localhost",
        "localhost:8080",
        "127.0.0.1:31337",
        "[::1]:8080",
    ],
)
def test_a_listed_name_is_answered_with_any_port_case_or_trailing_dot(guarded, redis_conn, host):
    seed_host(redis_conn, "gpu-node-07")
    assert guarded.get("/api/v1/hosts/gpu-node-07", headers={"Host": host}).status_code == 200
    assert guarded.get("/ui/hosts/gpu-node-07", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["", "localhost:", "localhost:http", "[::1", "local host", "localhost.evil"])
def test_a_missing_or_malformed_host_header_is_421(guarded, host):
    assert guarded.get("/api/v1/fleet", headers={"Host": host}).status_code == 421


@pytest.mark.parametrize("url", ["/healthz", "/readyz", "/metrics"])
def test_probes_and_scrapes_by_pod_ip_are_answered_whatever_the_host(guarded, redis_conn, url):
    # The kubelet and Prometheus address the pod by its IP, which no allow-list knows in advance.
    assert guarded.get(url, headers={"Host": "10.244.3.17:8080"}).status_code == 200


def test_a_webhook_delivery_is_accepted_whatever_the_host(guarded, redis_conn):
    # Its token is the guard; a 421 would drop the alert (Alertmanager does not retry a 4xx).
    resp = guarded.post(
        "/webhook/alertmanager", json=payload([alert("h1")]), headers={"Host": "10.96.0.12:8080", **bearer()}
    )
    assert resp.status_code == 202


def test_without_an_allow_list_any_host_is_answered(client, redis_conn):
    assert client.get("/api/v1/fleet", headers={"Host": "attacker.example"}).status_code == 200


def test_the_421_answer_is_the_same_whatever_the_host_even_a_secret(guarded, redis_conn):
    reference = guarded.get("/api/v1/fleet", headers={"Host": "attacker.example"})
    for host in (ADMIN_TOKEN, WEBHOOK_TOKEN, READ_TOKEN):
        resp = guarded.get("/api/v1/fleet", headers={"Host": host})
        assert (resp.status_code, resp.get_data()) == (421, reference.get_data())


def test_421_answers_are_counted_by_endpoint(guarded):
    guarded.get("/api/v1/fleet", headers={"Host": "attacker.example"})
    text = guarded.get("/metrics").get_data(as_text=True)
    assert 'remediator_api_requests_total{code="421",endpoint="api.fleet"}' in text
