"""No secret leaves the remediator: not in logs, answers, job arguments, Redis (audit, state) or metrics.

Every secret of the configuration contract is set to a known, distinctive value; scenarios run through
the served receiver (gunicorn) and ``remediator worker`` processes against the simulated cluster, and
then every place an operator, an API client or a Redis reader can look is searched for those values.
Each secret is also shown to have been in use, so the search is not vacuous.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from e2e import Receiver, Stack
from e2e import deployed as e2e_deployed
from helpers import alert, payload
from rq.job import Job

WEBHOOK_TOKEN = "whk-LEAKCHECK-5e1f0c9a77d34b21"
ADMIN_TOKEN = "adm-LEAKCHECK-b84f2d6c19e07a53"
COORDINATOR_KEY = "coord-LEAKCHECK-3a9d7e2f60c1b845"
PAGERDUTY_KEY = "pdrk-LEAKCHECK-c07e4b1d92f86a3e"
PAGE_HOOK_TOKEN = "hook-LEAKCHECK-9d2c41e7a0b3f586"  # a Slack-style webhook URL embeds its token
PAGE_HOOK_PATH = f"/services/T0LEAK/B0LEAK/{PAGE_HOOK_TOKEN}"

DEAD, DYING, RETIRED = "host-01", "host-02", "host-03"


@pytest.fixture
def deployed(make_sim_cluster, redis_url, tmp_path, monkeypatch, server) -> Iterator[tuple[Stack, Receiver]]:
    server.expect_request("/v2/enqueue", method="POST").respond_with_json({"status": "success"}, status=202)
    server.expect_request(PAGE_HOOK_PATH, method="POST").respond_with_data("ok")
    sim = make_sim_cluster(hosts=3, admin_key=COORDINATOR_KEY)
    admin_file = tmp_path / "admin-token"
    admin_file.write_text(ADMIN_TOKEN + "\n")  # the _FILE form, as a Kubernetes Secret mounts it
    with e2e_deployed(
        sim,
        redis_url,
        tmp_path,
        monkeypatch,
        workers=2,
        REMEDIATOR_WEBHOOK_TOKEN=WEBHOOK_TOKEN,
        REMEDIATOR_ADMIN_TOKEN_FILE=str(admin_file),
        REMEDIATOR_PAGERDUTY_ROUTING_KEY=PAGERDUTY_KEY,
        REMEDIATOR_PAGERDUTY_URL=server.url_for("/v2/enqueue"),
        REMEDIATOR_PAGE_WEBHOOK_URL=server.url_for(PAGE_HOOK_PATH),
        REMEDIATOR_LOG_LEVEL="DEBUG",  # the most the logs will ever say
    ) as stack_and_receiver:
        yield stack_and_receiver


class Answers:
    """Every HTTP answer the test got from the receiver, kept whole (status line, headers, body)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = requests.Session()
        self.seen: list[str] = []

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        resp = self.session.request(method, self.base + path, timeout=30, **kwargs)
        # The answer only: the path is what the test sent (it may hold a secret on purpose).
        self.seen.append(f"{method} -> {resp.status_code}\n{dict(resp.headers)}\n{resp.text}")
        return resp

    def webhook(self, body: Any, **headers: str) -> requests.Response:
        return self.call("POST", "/webhook/alertmanager", data=json.dumps(body), headers=headers)


def json_headers(authorization: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": authorization}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def expanded(raw: bytes) -> list[bytes]:
    """The bytes, and what they hold when they are zlib-compressed (rq's job data) or base64 (results)."""
    out = [raw]
    for candidate in (raw, _b64(raw)):
        if candidate:
            try:
                out.append(zlib.decompress(candidate))
            except zlib.error:
                pass
    if (decoded := _b64(raw)) is not None:
        out.append(decoded)
    return out


def _b64(raw: bytes) -> bytes | None:
    try:
        return base64.b64decode(raw, validate=True) if raw else None
    except (binascii.Error, ValueError):
        return None


def redis_dump(conn: redis.Redis) -> dict[str, list[bytes]]:
    """Every key in Redis with every value it holds, whatever its type."""
    dump: dict[str, list[bytes]] = {}
    for key in conn.scan_iter(count=1000):
        kind = conn.type(key).decode()
        if kind == "string":
            values = [conn.get(key) or b""]
        elif kind == "hash":
            values = [b for kv in conn.hgetall(key).items() for b in kv]
        elif kind == "list":
            values = conn.lrange(key, 0, -1)
        elif kind == "set":
            values = list(conn.smembers(key))
        elif kind == "zset":
            values = [m for m, _ in conn.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            values = [b for _, fields in conn.xrange(key) for kv in fields.items() for b in kv]
        else:
            values = []
        dump[key.decode()] = [b for v in values for b in expanded(v)]
    return dump


def jobs_seen(conn: redis.Redis) -> list[str]:
    """Every RQ job in Redis as its worker sees it: function, args, kwargs, description, meta, results."""
    out = []
    for key in conn.scan_iter(match="rq:job:*", count=1000):
        job_id = key.decode().removeprefix("rq:job:")
        if ":" in job_id:  # rq:job:<id>:dependents and the like
            continue
        job = Job.fetch(job_id, connection=conn)
        results = [repr(r.return_value) + repr(r.exc_string) for r in job.results()]
        out.append(
            f"{job.func_name} {job.args!r} {job.kwargs!r} {job.description!r} {job.meta!r} "
            f"{job.exc_info!r} {results!r}"
        )
    return out


def test_no_secret_appears_in_logs_answers_jobs_redis_or_metrics(deployed, server):
    stack, receiver = deployed
    sim = stack.sim
    secrets = {
        "webhook token": WEBHOOK_TOKEN,
        "admin token": ADMIN_TOKEN,
        "coordinator admin key": COORDINATOR_KEY,
        "PagerDuty routing key": PAGERDUTY_KEY,
        "Vast.ai API key": sim.vast_api_key,
        "Lambda API key": sim.lambda_api_key,
        "page webhook URL": stack.env["REMEDIATOR_PAGE_WEBHOOK_URL"],
        "page webhook URL's token": PAGE_HOOK_TOKEN,
    }
    api = Answers(receiver.url)

    # Callers with the wrong credentials, some of them other secrets of the remediator.
    body = payload([alert(DEAD)])
    for authorization in (
        f"Bearer {ADMIN_TOKEN}",
        f"Bearer {WEBHOOK_TOKEN}-but-longer",
        basic("alertmanager", COORDINATOR_KEY),
        basic(WEBHOOK_TOKEN, "wrong"),
        f"Token {WEBHOOK_TOKEN}",
    ):
        assert api.webhook(body, **json_headers(authorization)).status_code == 401
    assert (
        api.call(
            "POST", f"/api/v1/hosts/{DEAD}/remediate", headers=json_headers(f"Bearer {WEBHOOK_TOKEN}")
        ).status_code
        == 401
    )
    assert (
        api.call("POST", "/ui/remediate", data={"host_id": DEAD, "token": PAGERDUTY_KEY}).status_code == 401
    )
    assert (
        api.webhook({"version": "4", "alerts": "nope"}, **json_headers(f"Bearer {WEBHOOK_TOKEN}")).status_code
        == 400
    )

    # The ladders: a dead agent (healed), a dying one (data recovered, a page sent to PagerDuty),
    # a retired host back online (unretired with the coordinator admin key).
    sim.kill_agent(DEAD)
    sim.agent_dies_after_restart(DYING)
    sim.kill_agent(DYING)
    sim.retired_host_back_online(RETIRED)
    for host in (DEAD, DYING):
        sim.make_critical(host)
    answer = api.webhook(
        payload([alert(h) for h in (DEAD, DYING, RETIRED)]), **json_headers(basic("am", WEBHOOK_TOKEN))
    )
    assert answer.status_code == 202, answer.text
    outcomes = {h: stack.wait_finished(h, timeout=150)["outcome"] for h in (DEAD, DYING, RETIRED)}
    assert outcomes == {DEAD: "healthy", DYING: "recovered", RETIRED: "healthy"}, {
        h: stack.steps(h) for h in outcomes
    }

    # Manual control with the admin token, and everything a reader can fetch.
    admin = json_headers(f"Bearer {ADMIN_TOKEN}")
    assert (
        api.call("POST", f"/api/v1/hosts/{DEAD}/remediate", headers=admin, json={"dry_run": True}).status_code
        == 202
    )
    assert api.call("POST", "/api/v1/jobs/requeue-failed", headers=admin, json={}).status_code == 200
    stack.wait_finished(DEAD)
    assert (
        api.call(
            "POST", "/ui/remediate", data={"host_id": RETIRED, "token": ADMIN_TOKEN, "dry_run": "1"}
        ).status_code
        == 202
    )
    stack.wait_finished(RETIRED)
    for path in (
        "/healthz",
        "/readyz",
        "/api/v1/hosts",
        "/api/v1/fleet",
        "/ui",
        "/ui/admin",
        "/openapi.json",
    ):
        assert api.call("GET", path).status_code == 200, path
    for host in sim.host_ids:
        assert api.call("GET", f"/api/v1/hosts/{host}").status_code == 200
        assert api.call("GET", f"/ui/hosts/{host}").status_code == 200
    # A secret pasted into a URL: the answer and gunicorn's access log line must not carry it either.
    assert api.call("GET", f"/api/v1/hosts/{WEBHOOK_TOKEN}").status_code == 404
    assert api.call("GET", f"/ui/hosts/{ADMIN_TOKEN}").status_code == 404
    metrics = api.call("GET", "/metrics").text

    # Each secret was in use: the calls that need it succeeded.
    pages = [json.loads(req.get_data()) for req, _ in server.log if req.path == "/v2/enqueue"]
    assert pages and all(p["routing_key"] == PAGERDUTY_KEY for p in pages)
    assert any(DYING in json.dumps(p) for p in pages)
    assert [req for req, _ in server.log if req.path == PAGE_HOOK_PATH]  # the webhook pager got pages too
    assert sim.counts(RETIRED)["unretires"] == 1  # an admin call: X-Admin-Key was accepted
    clouds = {
        sim.host(h).provider: next(e for e in stack.audit(h) if e["step"] == "diagnose")["facts"][
            "cloud_state"
        ]
        for h in sim.host_ids
    }
    assert clouds == {"vast": "running", "lambda": "running"}  # both provider APIs answered with the keys
    assert 'remediator_webhook_requests_total{code="401"}' in metrics

    # ... and none of them is anywhere else.
    receiver.stop()  # flush and close its log
    stack.stop()
    places: dict[str, bytes] = {
        "receiver log": receiver.log.read_bytes(),
        **{f"worker log {p.name}": p.read_bytes() for p in sorted(stack.tmp.glob("worker*.log"))},
        "metrics": metrics.encode(),
        **{f"answer {i}": a.encode() for i, a in enumerate(api.seen)},
        **{f"job {i}": j.encode() for i, j in enumerate(jobs_seen(stack.conn))},
        **{f"redis key {k}": b"\n".join(v) for k, v in redis_dump(stack.conn).items()},
        "pages": "\n".join(
            json.dumps({k: v for k, v in p.items() if k != "routing_key"}) for p in pages
        ).encode(),
    }
    # The search reaches into what it must: audit trails, and rq's compressed job data, decoded.
    assert any(k.startswith("redis key remediator:audit:") for k in places)
    assert any(DYING.encode() in v for k, v in places.items() if k.startswith("job "))
    assert any(b"run_ladder" in v for k, v in places.items() if k.startswith("redis key rq:job:"))
    assert b"[REDACTED]" not in places["metrics"]
    leaks = [
        f"{name} in {where}"
        for where, text in places.items()
        for name, secret in secrets.items()
        if secret.encode() in text
    ]
    assert not leaks, leaks
