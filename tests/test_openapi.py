"""/openapi.json is true: every route is described (and nothing else), and real answers validate."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from helpers import READ_TOKEN, WEBHOOK_TOKEN, alert, bearer, payload
from jsonschema import Draft202012Validator
from ops_helpers import admin, make_settings, reader, run_jobs_failing, seed_host, start_ladder

from remediator import create_app, store
from remediator.ports import free_port

IGNORED_METHODS = {"HEAD", "OPTIONS"}
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def app(redis_url: str):
    return create_app({"SETTINGS": make_settings(redis_url, max_body_bytes=4096), "TESTING": True})


@pytest.fixture
def spec(client) -> dict[str, Any]:
    resp = client.get("/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    return resp.get_json()


def openapi_path(rule: str) -> str:
    """Flask's ``/hosts/<host_id>`` as OpenAPI's ``/hosts/{host_id}``."""
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def app_operations(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        for method in rule.methods - IGNORED_METHODS:
            out.add((openapi_path(rule.rule), method.lower()))
    return out


def spec_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method) for path, item in spec["paths"].items() for method in item if method in HTTP_METHODS
    }


def test_every_route_of_the_app_is_in_the_spec_and_every_spec_path_is_a_route(app, spec):
    assert spec["openapi"].startswith("3.1")
    assert app_operations(app) == spec_operations(spec)


def test_spec_schemas_are_valid_json_schema_and_every_ref_resolves(spec):
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    for name, schema in spec["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema), name
    for node in walk(spec["paths"]):
        ref = node.get("$ref")
        if isinstance(ref, str):
            target: Any = spec
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
    operation_ids = [
        op["operationId"] for _, item in spec["paths"].items() for m, op in item.items() if m in HTTP_METHODS
    ]
    assert len(operation_ids) == len(set(operation_ids))
    for path, item in spec["paths"].items():
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{([a-z_]+)}", path)), path


def test_security_schemes_are_bearer_and_writes_require_the_admin_token(spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes["adminBearer"] == schemes["adminBearer"] | {"type": "http", "scheme": "bearer"}
    assert schemes["webhookBearer"]["scheme"] == "bearer"
    for path, item in spec["paths"].items():
        if path.startswith("/api/v1") and "post" in item:
            assert item["post"]["security"] == [{"adminBearer": []}], path
            assert "401" in item["post"]["responses"]
    webhook = spec["paths"]["/webhook/alertmanager"]["post"]
    assert set(webhook["responses"]) == {"202", "400", "401", "413", "415", "422", "503"}


class Checker:
    """Calls the app and validates each answer against the spec's schema for that path, method and code."""

    def __init__(self, app, spec: dict[str, Any]) -> None:
        self.app = app
        self.spec = spec
        self.adapter = app.url_map.bind("localhost")
        self.seen: set[tuple[str, str, str]] = set()

    def schema_validator(self, pointer: str) -> Draft202012Validator:
        # The whole document is the root, so "#/components/..." references resolve; "$ref" picks the schema.
        return Draft202012Validator({**self.spec, "$ref": pointer})

    def call(self, method: str, url: str, expect: int, client=None, **kwargs: Any) -> Any:
        client = client or self.app.test_client()
        path = url.split("?")[0]
        rule, _ = self.adapter.match(path, method=method.upper(), return_rule=True)
        template = openapi_path(rule.rule)
        operation = self.spec["paths"][template][method]
        if "json" in kwargs and "requestBody" in operation and expect < 300:  # a valid request
            body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
            Draft202012Validator({**self.spec, **body_schema}).validate(kwargs["json"])
        resp = getattr(client, method)(url, **kwargs)
        assert resp.status_code == expect, (url, resp.status_code, resp.get_data(as_text=True)[:500])
        code = str(resp.status_code)
        assert code in operation["responses"], f"{method.upper()} {template} answered undocumented {code}"
        content = operation["responses"][code]["content"]
        assert resp.mimetype in content, f"{method.upper()} {template} {code}: {resp.mimetype} not documented"
        if resp.mimetype == "application/json":
            pointer = "/".join(
                [
                    "#/paths",
                    template.replace("/", "~1"),
                    method,
                    "responses",
                    code,
                    "content",
                    "application~1json",
                    "schema",
                ]
            )
            self.schema_validator(pointer).validate(resp.get_json())
        self.seen.add((template, method, code))
        return resp


def closed_port_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def test_real_answers_of_every_endpoint_validate_against_the_spec(
    app, spec, redis_url, redis_conn, monkeypatch
):
    check = Checker(app, spec)
    seed_host(redis_conn, "gpu-node-07")
    store.update_host(
        redis_conn,
        "vast-31",
        status="finished",
        outcome="healthy",
        ladder_id="l31",
        plan=[["force_sync"]],
        dry_run=True,
    )
    hook = "/webhook/alertmanager"

    check.call("get", "/healthz", 200)
    check.call("get", "/readyz", 200)
    check.call("get", "/metrics", 200)
    check.call("get", "/openapi.json", 200)
    # receiver: every documented answer
    check.call(
        "post",
        hook,
        202,
        json=payload(
            [alert("h1"), alert("h2", status="resolved"), alert(None), alert("h3", alertname="Other")]
        ),
        headers=bearer(),
    )
    check.call("post", hook, 202, json=payload([alert("h1")]), headers=bearer())  # deduped
    check.call("post", hook, 400, json={"version": "4"}, headers=bearer())
    check.call("post", hook, 401, json=payload([alert("h1")]))
    check.call("post", hook, 413, data="x" * 5000, content_type="application/json", headers=bearer())
    check.call("post", hook, 415, data="{}", content_type="text/plain", headers=bearer())
    check.call("post", hook, 422, json=payload([alert("a;reboot")]), headers=bearer())
    # reads: the summary without a token, the detail with the read or the admin token
    check.call("get", "/api/v1/hosts", 200)
    check.call("get", "/api/v1/hosts", 200, headers=reader())
    check.call("get", "/api/v1/hosts", 401, headers=bearer(WEBHOOK_TOKEN))
    check.call("get", "/api/v1/hosts/gpu-node-07", 200)
    check.call("get", "/api/v1/hosts/gpu-node-07?limit=2&offset=1", 200, headers=reader())
    check.call("get", "/api/v1/hosts/gpu-node-07", 200, headers=admin())
    check.call("get", "/api/v1/hosts/gpu-node-07?limit=0", 400)
    check.call("get", "/api/v1/hosts/gpu-node-07?offset=1001", 400, headers=reader())
    check.call("get", "/api/v1/hosts/gpu-node-07", 401, headers=bearer("wrong"))
    check.call("get", "/api/v1/hosts/vast-31", 200, headers=reader())
    check.call("get", "/api/v1/hosts/nobody", 404)
    check.call("get", "/api/v1/hosts/$(id)", 422)
    check.call("get", "/api/v1/fleet", 200)
    check.call("get", "/api/v1/fleet", 200, headers=reader())
    check.call("get", "/api/v1/fleet", 401, headers=bearer(WEBHOOK_TOKEN))
    from remediator import outcomes

    outcomes.add(redis_conn, "agent-wedged", "restart_agent", True, 12.5)
    outcomes.add(redis_conn, "agent-wedged", "force_sync", False)
    check.call("get", "/api/v1/stats", 200)
    check.call("get", "/api/v1/stats", 200, headers=reader())
    check.call("get", "/api/v1/stats", 401, headers=bearer(WEBHOOK_TOKEN))
    # writes
    check.call("post", "/api/v1/hosts/h9/remediate", 202, json={"dry_run": True}, headers=admin())
    check.call("post", "/api/v1/hosts/h9/remediate", 409, headers=admin())
    check.call("post", "/api/v1/hosts/h9/remediate", 401)
    check.call("post", "/api/v1/hosts/h9/remediate", 400, json={"dry_run": 1}, headers=admin())
    check.call("post", "/api/v1/hosts/-x/remediate", 422, headers=admin())
    close = "/api/v1/hosts/h9/incident/close"
    check.call("post", close, 200, json={"reason": "fixed by hand"}, headers=admin())
    check.call("post", close, 404, headers=admin())
    check.call("post", close, 401)
    check.call("post", close, 400, json={"reason": ""}, headers=admin())
    check.call("post", "/api/v1/hosts/-x/incident/close", 422, headers=admin())
    # operator controls
    check.call("get", "/api/v1/freeze", 200)
    check.call("get", "/api/v1/freeze", 401, headers={"Authorization": "Bearer wrong"})
    check.call(
        "post",
        "/api/v1/freeze",
        201,
        json={"reason": "maintenance", "duration_seconds": 600},
        headers=admin(),
    )
    check.call("get", "/api/v1/freeze", 200, headers=admin())
    check.call("post", "/api/v1/freeze", 400, json={"reason": ""}, headers=admin())
    check.call("post", "/api/v1/freeze", 409, json={"reason": "late", "ends_at": 1}, headers=admin())
    check.call("post", "/api/v1/freeze", 422, json={"reason": "x", "host_id": "a;b"}, headers=admin())
    check.call("post", "/api/v1/freeze", 401, json={"reason": "x"})
    check.call("delete", "/api/v1/freeze", 200, headers=admin())
    check.call("delete", "/api/v1/freeze", 404, headers=admin())
    check.call("delete", "/api/v1/freeze?host_id=a;b", 422, headers=admin())
    check.call("delete", "/api/v1/freeze", 401)
    from remediator import controls

    controls.ask(redis_conn, "h9", "l9", "retire")
    approve = "/api/v1/hosts/h9/approve"
    check.call("post", approve, 400, json={"approve": "yes", "reason": "ok"}, headers=admin())
    check.call("post", approve, 200, json={"approve": True, "reason": "checked it"}, headers=admin())
    check.call("post", approve, 404, json={"approve": True, "reason": "again"}, headers=admin())
    check.call("post", approve, 401, json={"approve": True, "reason": "x"})
    check.call(
        "post", "/api/v1/hosts/-x/approve", 422, json={"approve": True, "reason": "x"}, headers=admin()
    )
    ladder_id = start_ladder(redis_conn, "h7")
    run_jobs_failing(redis_conn, monkeypatch)
    check.call("post", f"/api/v1/jobs/{ladder_id}/requeue", 202, headers=admin())
    check.call("post", f"/api/v1/jobs/{ladder_id}/requeue", 200, headers=admin())
    check.call("post", "/api/v1/jobs/nope/requeue", 404, headers=admin())
    check.call("post", "/api/v1/jobs/a;b/requeue", 422, headers=admin())
    check.call("post", "/api/v1/jobs/x/requeue", 401)
    redis_conn.set("remediator:lock:h7", "w", ex=60)
    run_jobs_failing(redis_conn, monkeypatch)
    check.call("post", "/api/v1/jobs/requeue-failed", 200, json={"host_id": "h7"}, headers=admin())
    check.call("post", "/api/v1/jobs/requeue-failed", 200, headers=admin())
    redis_conn.delete("remediator:active:h7")
    start_ladder(redis_conn, "h7")
    check.call("post", f"/api/v1/jobs/{ladder_id}/requeue", 409, headers=admin())
    check.call(
        "post",
        "/api/v1/jobs/requeue-failed",
        400,
        data="[]",
        content_type="application/json",
        headers=admin(),
    )
    check.call("post", "/api/v1/jobs/requeue-failed", 422, json={"host_id": "../x"}, headers=admin())
    check.call("post", "/api/v1/jobs/requeue-failed", 401)
    # status page
    check.call("get", "/ui", 200)
    check.call("get", "/ui/hosts/gpu-node-07", 200)
    check.call("get", "/ui/hosts/gpu-node-07?page=2", 200)
    check.call("get", "/ui/hosts/gpu-node-07?page=11", 400)
    check.call("get", "/ui/hosts/nobody", 404)
    check.call("get", "/ui/hosts/a;b", 422)
    check.call("get", "/ui/hosts/gpu-node-07/details", 200)
    check.call("get", "/ui/hosts/gpu-node-07/details?page=0", 400)
    check.call("get", "/ui/hosts/nobody/details", 404)
    check.call("get", "/ui/hosts/a;b/details", 422)
    details = "/ui/hosts/gpu-node-07/details"
    check.call("post", details, 200, data={"token": READ_TOKEN})
    check.call("post", details, 200, data={"token": make_settings("").admin_token, "page": "2"})
    check.call("post", details, 401, data={"token": "no"})
    check.call("post", details, 400, data={"token": READ_TOKEN, "page": "11"})
    check.call("post", "/ui/hosts/nobody/details", 404, data={"token": READ_TOKEN})
    check.call("post", "/ui/hosts/a;b/details", 422, data={"token": READ_TOKEN})
    check.call("get", "/ui/admin?host_id=gpu-node-07", 200)
    check.call("post", "/ui/remediate", 401, data={"host_id": "h8", "token": "no"})
    check.call("post", "/ui/remediate", 202, data={"host_id": "h8", "token": make_settings("").admin_token})
    check.call("post", "/ui/remediate", 409, data={"host_id": "h8", "token": make_settings("").admin_token})
    check.call("post", "/ui/remediate", 422, data={"host_id": "-h", "token": make_settings("").admin_token})
    check.call("post", "/ui/requeue", 401, data={"token": "no"})
    check.call(
        "post", "/ui/requeue", 200, data={"host_id": "idle-host", "token": make_settings("").admin_token}
    )
    check.call("post", "/ui/requeue", 404, data={"job_id": "nope", "token": make_settings("").admin_token})
    check.call("post", "/ui/requeue", 422, data={"job_id": "a;b", "token": make_settings("").admin_token})
    token = make_settings("").admin_token
    check.call("post", "/ui/freeze", 200, data={"reason": "upgrade", "hours": "1", "token": token})
    check.call("post", "/ui/freeze", 401, data={"reason": "upgrade", "token": "no"})
    check.call("post", "/ui/freeze", 422, data={"reason": "", "token": token})
    check.call("post", "/ui/unfreeze", 200, data={"token": token})
    check.call("post", "/ui/unfreeze", 404, data={"token": token})
    check.call("post", "/ui/unfreeze", 401, data={"token": "no"})
    check.call("post", "/ui/unfreeze", 422, data={"host_id": "a;b", "token": token})
    controls.ask(redis_conn, "h9", "l10", "retire")
    check.call(
        "post", "/ui/approve", 200, data={"host_id": "h9", "answer": "deny", "reason": "no", "token": token}
    )
    check.call(
        "post", "/ui/approve", 404, data={"host_id": "h9", "answer": "deny", "reason": "no", "token": token}
    )
    check.call(
        "post", "/ui/approve", 401, data={"host_id": "h9", "answer": "deny", "reason": "no", "token": "x"}
    )
    check.call(
        "post", "/ui/approve", 422, data={"host_id": "h9", "answer": "maybe", "reason": "no", "token": token}
    )
    # Redis down
    down = create_app({"SETTINGS": make_settings(closed_port_redis())}).test_client()
    check.call("post", hook, 503, client=down, json=payload([alert("h1")]), headers=bearer(WEBHOOK_TOKEN))
    check.call("get", "/readyz", 503, client=down)
    for method, url in (
        ("get", "/api/v1/hosts"),
        ("get", "/api/v1/hosts/h1"),
        ("get", "/api/v1/fleet"),
        ("get", "/api/v1/stats"),
        ("post", "/api/v1/hosts/h1/remediate"),
        ("post", "/api/v1/hosts/h1/incident/close"),
        ("post", "/api/v1/jobs/j/requeue"),
        ("post", "/api/v1/jobs/requeue-failed"),
        ("get", "/api/v1/freeze"),
        ("delete", "/api/v1/freeze"),
        ("get", "/ui"),
        ("get", "/ui/hosts/h1"),
        ("get", "/ui/hosts/h1/details"),
    ):
        check.call(method, url, 503, client=down, headers=admin())
    check.call("post", "/api/v1/freeze", 503, client=down, json={"reason": "x"}, headers=admin())
    check.call(
        "post",
        "/api/v1/hosts/h1/approve",
        503,
        client=down,
        json={"approve": True, "reason": "x"},
        headers=admin(),
    )
    check.call("post", "/ui/hosts/h1/details", 503, client=down, data={"token": READ_TOKEN})

    # A Host outside REMEDIATOR_ALLOWED_HOSTS (DNS rebinding), on every operation that checks it.
    guarded = create_app(
        {"SETTINGS": make_settings(redis_url, allowed_hosts=("remediator.svc",)), "TESTING": True}
    ).test_client()
    for method, url in (
        ("get", "/api/v1/hosts"),
        ("get", "/api/v1/hosts/h1"),
        ("get", "/api/v1/fleet"),
        ("get", "/api/v1/stats"),
        ("post", "/api/v1/hosts/h1/remediate"),
        ("post", "/api/v1/hosts/h1/incident/close"),
        ("post", "/api/v1/jobs/j/requeue"),
        ("post", "/api/v1/jobs/requeue-failed"),
        ("get", "/ui"),
        ("get", "/ui/hosts/h1"),
        ("get", "/ui/hosts/h1/details"),
        ("post", "/ui/hosts/h1/details"),
        ("get", "/ui/admin"),
        ("post", "/ui/remediate"),
        ("post", "/ui/requeue"),
        ("get", "/api/v1/freeze"),
        ("post", "/api/v1/freeze"),
        ("delete", "/api/v1/freeze"),
        ("post", "/api/v1/hosts/h1/approve"),
        ("post", "/ui/freeze"),
        ("post", "/ui/unfreeze"),
        ("post", "/ui/approve"),
        ("get", "/openapi.json"),
    ):
        check.call(method, url, 421, client=guarded, headers={"Host": "attacker.example", **admin()})

    exercised = {(path, method) for path, method, _ in check.seen}
    assert exercised == spec_operations(spec)
    api_codes = {
        (p, m, c)
        for p, item in spec["paths"].items()
        for m, op in item.items()
        if m in HTTP_METHODS
        for c in op["responses"]
        if p.startswith(("/api/", "/webhook/", "/readyz"))
    }
    assert api_codes - check.seen == set(), "documented JSON answers never produced by the app"


def test_the_served_spec_embeds_the_receivers_webhook_schema(spec):
    from importlib import resources

    shipped = json.loads(
        resources.files("remediator.web")
        .joinpath("schemas", "alertmanager-webhook-v4.json")
        .read_text(encoding="utf-8")
    )
    served = Draft202012Validator({**spec, "$ref": "#/components/schemas/AlertmanagerWebhookV4"})
    receiver = Draft202012Validator(shipped)
    bad_label = payload([alert("h1")])
    bad_label["alerts"][0]["labels"]["n"] = 5
    for body in (payload([alert("h1")]), {"version": "4"}, bad_label, payload([alert(None)], status="x")):
        assert served.is_valid(body) == receiver.is_valid(body), body
