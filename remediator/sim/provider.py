"""The simulated cloud providers: the parts of the Vast.ai and Lambda Cloud APIs the remediator reads.

One Flask app, mounted under three prefixes:

- ``/vast``: what the ``vastai`` SDK's ``VastAI(api_key=..., server_url=<base>/vast).show_instances()``
  calls — ``GET /api/v1/instances/`` paged by ``limit``/``after_token`` (``next_token`` in the answer),
  plus the legacy ``GET /api/v0/instances/`` and ``GET /api/v0/instances/<id>/``. Auth: ``Authorization:
  Bearer <key>`` (or ``?api_key=``). A running instance has ``actual_status: "running"``; a stopped one
  ``"exited"`` (``intended_status: "stopped"``); a terminated (destroyed) one is no longer listed, and
  ``/api/v0/instances/<id>/`` answers ``{"instances": null}`` for it, as Vast.ai does.
- ``/lambda``: Lambda Cloud's ``GET /api/v1/instances`` and ``GET /api/v1/instances/<id>`` (``{"data":
  ...}``, status ``active``, ``unhealthy`` for a stopped one (Lambda has no stop), ``terminated``). Auth:
  Bearer, or basic auth with the key as user name.
- ``/vast-status`` and ``/lambda-status``: a statuspage.io ``GET /api/v2/status.json``.

During a provider outage the API answers 503 and the status page says ``major``. A provider may also
answer 200 with something that is not a usable listing while its status page says all is well
(``ProviderState.answer``, see ``ANSWERS``): Vast.ai's ``{"success": false, ...}`` error answer, a
listing without its instance list, or an HTML page.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, Response, request

from remediator.sim import defaults

RUNNING, STOPPED, TERMINATED = "running", "stopped", "terminated"
INSTANCE_STATES = (RUNNING, STOPPED, TERMINATED)
# What a provider's instance API answers (HTTP 200 in every case): the listing, or a faulty answer.
ANSWERS = (
    "ok",  # the listing
    "error",  # an error object: Vast.ai {"success": false, "error", "msg"}, Lambda {"error": {...}}
    "malformed",  # JSON without the instance list: Vast.ai {"success": true}, Lambda {"data": null}
    "not_json",  # an HTML page, as a proxy in front of the API may send
)
NOT_JSON_PAGE = "<html><body><h1>Service temporarily unavailable</h1></body></html>\n"


@dataclass
class Instance:
    host_id: str
    provider: str  # "vast" or "lambda"
    instance_id: str  # Vast.ai: str() of the integer id
    address: str
    ssh_port: int
    state: str = RUNNING
    started_at: float = field(default_factory=time.time)  # unix seconds


@dataclass
class ProviderState:
    instances: dict[str, Instance]  # by host_id
    api_keys: dict[str, str]  # provider -> API key
    outage: dict[str, bool] = field(default_factory=lambda: {"vast": False, "lambda": False})
    answer: dict[str, str] = field(default_factory=lambda: {"vast": "ok", "lambda": "ok"})  # see ANSWERS
    listings: dict[str, int] = field(default_factory=lambda: {"vast": 0, "lambda": 0})  # full listings asked
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, provider: str) -> list[Instance]:
        with self.lock:
            return [i for i in self.instances.values() if i.provider == provider]


def _bearer_ok(key: str) -> bool:
    auth = request.headers.get("Authorization", "")
    given = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
    if not given and request.authorization is not None and request.authorization.type == "basic":
        given = request.authorization.username or ""
    if not given:
        given = request.args.get("api_key", "")
    return bool(given) and hmac.compare_digest(given.encode(), key.encode())


def _vast_row(inst: Instance) -> dict[str, Any]:
    running = inst.state == RUNNING
    return {
        "id": int(inst.instance_id),
        "label": inst.host_id,
        "machine_id": 40_000 + int(inst.instance_id) % 1000,
        "host_id": 90_000 + int(inst.instance_id) % 1000,  # Vast.ai's host (machine owner) id
        "actual_status": "running" if running else "exited",
        "intended_status": "running" if running else "stopped",
        "cur_state": "running" if running else "stopped",
        "next_state": "running" if running else "stopped",
        "status_msg": "success, running ringrift/selfplay" if running else "Stopped by user",
        "image_uuid": "ringrift/selfplay:latest",
        "image_runtype": "ssh",
        "num_gpus": 1,
        "gpu_name": "RTX 4090",
        "ssh_host": inst.address,
        "ssh_port": inst.ssh_port,
        "public_ipaddr": inst.address,
        "start_date": inst.started_at,
        "end_date": None,
        "extra_env": [["RINGRIFT_HOST_ID", inst.host_id]],
        "dph_total": 0.35,
    }


def _lambda_row(inst: Instance) -> dict[str, Any]:
    status = {RUNNING: "active", STOPPED: "unhealthy", TERMINATED: "terminated"}[inst.state]
    return {
        "id": inst.instance_id,
        "name": inst.host_id,
        "ip": inst.address,
        "private_ip": inst.address,
        "status": status,
        "hostname": f"{inst.host_id}.lambda.sim",
        "ssh_key_names": ["ringrift-sim"],
        "file_system_names": [],
        "region": {"name": "us-west-1", "description": "California, USA"},
        "instance_type": {"name": "gpu_1x_a10", "description": "1x A10 (24 GB PCIe)"},
        "is_reserved": False,
    }


def _json_param(name: str, default: Any) -> Any:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _faulty_answer(answer: str, error: dict[str, Any], malformed: dict[str, Any]) -> Any:
    """The 200 answer of a faulty provider API (None when it answers normally)."""
    if answer == "error":
        return error, 200
    if answer == "malformed":
        return malformed, 200
    if answer == "not_json":
        return Response(NOT_JSON_PAGE, status=200, mimetype="text/html")
    return None


def vast_blueprint(state: ProviderState) -> Blueprint:
    bp = Blueprint("vast", __name__, url_prefix="/vast")

    @bp.before_request
    def gate() -> tuple[dict[str, Any], int] | None:
        if state.outage["vast"]:
            return {"success": False, "error": "service_unavailable", "msg": "simulated outage"}, 503
        if not _bearer_ok(state.api_keys["vast"]):
            return {"success": False, "error": "auth_error", "msg": "Invalid user key"}, 401
        return _faulty_answer(
            state.answer["vast"],
            {"success": False, "error": "server_error", "msg": "simulated error answer"},
            {"success": True, "next_token": None},
        )

    @bp.get("/api/v1/instances/")
    def instances_v1() -> dict[str, Any]:
        limit = int(_json_param("limit", defaults.VAST_PAGE_LIMIT) or defaults.VAST_PAGE_LIMIT)
        after = _json_param("after_token", None)
        rows = sorted(
            (_vast_row(i) for i in state.of("vast") if i.state != TERMINATED), key=lambda r: r["id"]
        )
        total = len(rows)
        if after in (None, ""):  # a listing's first page
            with state.lock:
                state.listings["vast"] += 1
        if after not in (None, ""):
            rows = [r for r in rows if r["id"] > int(after)]
        page = rows[:limit]
        more = len(rows) > limit
        return {
            "success": True,
            "instances": page,
            "next_token": str(page[-1]["id"]) if more and page else None,
            "total_instances": total,
        }

    @bp.get("/api/v0/instances/")
    def instances_v0() -> dict[str, Any]:
        rows = [_vast_row(i) for i in state.of("vast") if i.state != TERMINATED]
        return {"instances": sorted(rows, key=lambda r: r["id"])}

    @bp.get("/api/v0/instances/<int:instance_id>/")
    def instance_v0(instance_id: int) -> dict[str, Any]:
        for inst in state.of("vast"):
            if inst.instance_id == str(instance_id) and inst.state != TERMINATED:
                return {"instances": _vast_row(inst)}
        return {"instances": None}

    return bp


def lambda_blueprint(state: ProviderState) -> Blueprint:
    bp = Blueprint("lambda", __name__, url_prefix="/lambda")

    @bp.before_request
    def gate() -> tuple[dict[str, Any], int] | None:
        if state.outage["lambda"]:
            error = {"code": "global/service-unavailable", "message": "simulated outage"}
            return {"error": error}, 503
        if not _bearer_ok(state.api_keys["lambda"]):
            return {"error": {"code": "global/invalid-api-key", "message": "API key was invalid"}}, 401
        return _faulty_answer(
            state.answer["lambda"],
            {"error": {"code": "global/unknown", "message": "simulated error answer"}},
            {"data": None},
        )

    @bp.get("/api/v1/instances")
    def instances() -> dict[str, Any]:
        with state.lock:
            state.listings["lambda"] += 1
        return {"data": [_lambda_row(i) for i in state.of("lambda")]}

    @bp.get("/api/v1/instances/<instance_id>")
    def instance(instance_id: str) -> tuple[dict[str, Any], int]:
        for inst in state.of("lambda"):
            if inst.instance_id == instance_id:
                return {"data": _lambda_row(inst)}, 200
        error = {"code": "global/object-does-not-exist", "message": "Specified instance does not exist."}
        return {"error": error}, 404

    return bp


def status_blueprint(state: ProviderState, provider: str) -> Blueprint:
    bp = Blueprint(f"{provider}_status", __name__, url_prefix=f"/{provider}-status")

    @bp.get("/api/v2/status.json")
    def status() -> dict[str, Any]:
        down = state.outage[provider]
        return {
            "page": {"id": f"{provider}-sim", "name": provider, "url": request.host_url},
            "status": {
                "indicator": "major" if down else "none",
                "description": "Major System Outage" if down else "All Systems Operational",
            },
        }

    return bp


def create_app(state: ProviderState) -> Flask:
    """The providers' Flask app over ``state``."""
    app = Flask("remediator.sim.provider")
    app.register_blueprint(vast_blueprint(state))
    app.register_blueprint(lambda_blueprint(state))
    for provider in ("vast", "lambda"):
        app.register_blueprint(status_blueprint(state, provider))
    return app
