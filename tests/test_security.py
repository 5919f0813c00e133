"""HTTP hardening of every answer: nosniff and no-store headers, one charset on /metrics."""

from __future__ import annotations

import pytest
from helpers import alert, bearer, payload
from ops_helpers import admin, seed_host

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
