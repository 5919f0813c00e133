"""Bounded Redis growth from the webhook: whatever an authenticated payload sends, once it is resolved
(and the jobs it queued have run), no key is left without a TTL except the indexes a sweep trims."""

from __future__ import annotations

import json

from helpers import alert, bearer, make_settings, payload
from rq import Queue, SimpleWorker

from remediator import create_app, keys, metrics

# Keys without a TTL that are indexes, each trimmed by something that runs: the hosts index (the
# sweeper drops hosts idle for HOSTS_KEEP), the fleet window (the intake drops old sightings), open
# incidents (an incident's close removes it), the page budget window, the worker-side counters (one
# field per metric and label set: bounded by the code, not the input), and rq's own queues/registries.
HOSTS = 1000  # hosts fired and resolved (the payload is checked whole; the jobs then run in process)
INDEXES = {
    keys.HOSTS,
    keys.FLEET_CRITICAL,
    keys.OPEN_INCIDENTS,
    keys.CLEANUP,
    keys.FLEET,
    metrics.COUNTS,
}


def test_hosts_fired_then_resolved_leave_only_keys_with_a_ttl(
    redis_url, redis_conn, monkeypatch, closed_url, tmp_path
):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("REMEDIATOR_COORDINATOR_URL", closed_url)  # nothing answers: ladders only wait
    monkeypatch.setenv("REMEDIATOR_LEDGER_FILE", str(tmp_path / "ledger.jsonl"))
    app = create_app({"SETTINGS": make_settings(redis_url, coordinator_url=closed_url), "TESTING": True})
    client = app.test_client()
    hosts = [f"h-{i:04d}" for i in range(HOSTS)]
    for status in ("firing", "resolved"):
        body = payload([alert(h, status=status) for h in hosts])
        resp = client.post(
            "/webhook/alertmanager", data=json.dumps(body), content_type="application/json", headers=bearer()
        )
        assert resp.status_code == 202
    # Resolved alerts for hosts never seen write nothing at all.
    body = payload([alert(f"ghost-{i:04d}", status="resolved") for i in range(HOSTS)])
    client.post(
        "/webhook/alertmanager", data=json.dumps(body), content_type="application/json", headers=bearer()
    )
    assert not [k for k in redis_conn.keys("remediator:*ghost*")]
    # The queued ladders run: each finds its stop pending and ends; the incidents' cleanups run.
    queue = Queue("remediator", connection=redis_conn)
    SimpleWorker([queue], connection=redis_conn).work(burst=True)
    SimpleWorker([queue], connection=redis_conn).work(burst=True)
    without_ttl = []
    for key in redis_conn.scan_iter(match="remediator:*", count=1000):
        if key.decode() in INDEXES:
            continue
        if redis_conn.ttl(key) < 0:
            without_ttl.append(key.decode())
    assert without_ttl == []
    assert redis_conn.hlen(keys.OPEN_INCIDENTS) == 0 and redis_conn.zcard(keys.CLEANUP) == 0
