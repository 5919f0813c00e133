"""The simulated RingRift coordinator: the coordinator contract of DESIGN.md, plus sim-only endpoints.

Contract: ``GET /sync/hosts``, ``POST /sync/hosts/<host_id>/sync``, the ``/admin/*`` calls (with
``X-Admin-Key``) and ``GET /metrics``. ``last_sync`` is a unix timestamp in seconds (float). A host's
state is ``healthy``, ``lagging`` or ``critical`` by the seconds since its last sync; a retired host
keeps its flag (and refuses syncs) until it is unretired, so it soon reads ``critical``.

Sim-only, under ``/sim/``: the agents' ``ingest``, the importer's ``import`` and ``faults`` (admin key).
Every force-sync request and every admin call is recorded (``CoordinatorState.calls``) and counted per
host (``CoordinatorState.counters``) so that tests can prove no mutation was applied twice.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

from remediator.sim.layout import HostPaths
from remediator.sim.store import GameStore

FaultHandler = Callable[[str, dict[str, Any]], dict[str, Any]]
STATES = ("healthy", "lagging", "critical")


@dataclass
class HostRecord:
    """One host as the coordinator knows it."""

    host_id: str
    address: str
    ssh_user: str
    ssh_port: int
    provider: str
    instance_id: str
    paths: HostPaths
    last_sync: float  # unix seconds
    retired: bool = False
    retired_reason: str | None = None
    selfplay_paused: bool = False
    games_synced: int = 0


@dataclass
class CoordinatorState:
    """Everything the coordinator knows; shared by the request threads under ``lock``."""

    hosts: dict[str, HostRecord]
    store: GameStore
    log_path: Path
    admin_key: str
    lagging_after: float  # seconds
    critical_after: float  # seconds
    lock: threading.RLock = field(default_factory=threading.RLock)
    counters: dict[str, Counter[str]] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # unix time of every request outside /sim/
    ingesting: Counter[str] = field(default_factory=Counter)  # syncs being handled, by host
    data_loss: list[dict[str, Any]] = field(default_factory=list)
    fault_status: int | None = None  # every contract call answers this status while set
    fault_delay: float = 0.0  # seconds every contract call waits before answering
    fault_applied: bool = False  # with fault_status: the call is applied first, then answered with it

    def state_of(self, host: HostRecord, now: float | None = None) -> str:
        age = (time.time() if now is None else now) - host.last_sync
        if age >= self.critical_after:
            return "critical"
        if age >= self.lagging_after:
            return "lagging"
        return "healthy"

    def record(self, host: HostRecord) -> dict[str, Any]:
        """The contract's host record, plus sync_log, games_synced, selfplay_paused, retired_reason."""
        return {
            "state": self.state_of(host),
            "last_sync": host.last_sync,
            "retired": host.retired,
            "address": host.address,
            "ssh_user": host.ssh_user,
            "ssh_port": host.ssh_port,
            "provider": host.provider,
            "instance_id": host.instance_id,
            "data_dir": str(host.paths.data),
            "sync_log": str(host.paths.sync_log),
            "games_synced": host.games_synced,
            "selfplay_paused": host.selfplay_paused,
            "retired_reason": host.retired_reason,
        }

    def bump(self, host_id: str, name: str, by: int = 1) -> None:
        with self.lock:
            self.counters.setdefault(host_id, Counter())[name] += by

    def log(self, level: str, message: str) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        with self.lock, open(self.log_path, "a", encoding="utf-8") as f:
            f.write(f"{stamp} {level} sync_coordinator {message}\n")

    def request_sync(self, host: HostRecord) -> None:
        """Ask the host's agent to sync now (it polls for this file); a dead agent never sees it."""
        host.paths.force_sync.touch()


class UnknownHost(LookupError):
    """A host id the coordinator does not know; answered 404."""


class BadRequest(Exception):
    """A request body field is missing or malformed; answered 400 naming the field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


def _error(status: int, message: str, **extra: Any) -> tuple[dict[str, Any], int]:
    return {"error": message, **extra}, status


def _body() -> dict[str, Any]:
    """The JSON object body, whatever the Content-Type (the runbook's curl sends none)."""
    if not request.get_data():
        return {}
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise BadRequest("body", "the request body must be a JSON object")
    return body


def _str_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(name, f"{name} is required and must be a non-empty string")
    return value


def create_app(state: CoordinatorState, fault_handler: FaultHandler | None = None) -> Flask:
    """The coordinator's Flask app over ``state``; ``fault_handler`` serves ``POST /sim/faults``."""
    app = Flask("remediator.sim.coordinator")

    def host_or_404(host_id: str) -> HostRecord:
        host = state.hosts.get(host_id)
        if host is None:
            raise UnknownHost(host_id)
        return host

    def admin_ok() -> bool:
        given = request.headers.get("X-Admin-Key", "")
        return hmac.compare_digest(given.encode(), state.admin_key.encode())

    def note_call(kind: str, host_ids: list[str], body: dict[str, Any], status: int) -> None:
        with state.lock:
            state.calls.append(
                {"at": time.time(), "call": kind, "host_ids": host_ids, "body": body, "status": status}
            )

    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest) -> tuple[dict[str, Any], int]:
        return _error(400, str(exc), field=exc.field)

    @app.errorhandler(UnknownHost)
    def unknown_host(exc: UnknownHost) -> tuple[dict[str, Any], int]:
        return _error(404, f"unknown host_id {exc.args[0]!r}", host_id=exc.args[0])

    @app.before_request
    def simulated_outage() -> tuple[dict[str, Any], int] | None:
        if request.path == "/sim/faults":
            return None
        if not request.path.startswith("/sim/"):  # the agents' syncs and imports are not the remediator's
            with state.lock:
                state.arrivals.append(time.time())
        if state.fault_delay:
            time.sleep(state.fault_delay)
        if state.fault_status and not state.fault_applied:
            return _error(state.fault_status, "coordinator unavailable (simulated fault)")
        return None

    @app.after_request
    def answer_lost_after_applying(response: Response) -> Response:
        # The coordinator did the work, then its answer was lost: a proxy's 502/504, a crash while
        # answering. A client cannot tell this from a call that was never applied.
        if state.fault_status and state.fault_applied and request.path != "/sim/faults":
            body, status = _error(state.fault_status, "coordinator failed after applying (simulated fault)")
            return app.make_response((body, status))
        return response

    @app.before_request
    def admin_key_required() -> tuple[dict[str, Any], int] | None:
        if (request.path.startswith("/admin/") or request.path == "/sim/faults") and not admin_ok():
            note_call(request.path, [], {}, 401)
            return _error(401, "missing or wrong X-Admin-Key")
        return None

    @app.get("/sync/hosts")
    def list_hosts() -> dict[str, Any]:
        with state.lock:
            return {host_id: state.record(host) for host_id, host in state.hosts.items()}

    @app.get("/sync/hosts/<host_id>")
    def show_host(host_id: str) -> dict[str, Any]:
        with state.lock:
            return state.record(host_or_404(host_id))

    @app.post("/sync/hosts/<host_id>/sync")
    def force_sync(host_id: str) -> tuple[dict[str, Any], int]:
        host = host_or_404(host_id)
        body = _body()
        if "force" in body and not isinstance(body["force"], bool):
            raise BadRequest("force", "force must be true or false")
        state.bump(host_id, "force_syncs")
        if host.retired:
            note_call("sync", [host_id], body, 409)
            state.log("WARNING", f"host_id={host_id} force sync refused: host is retired")
            return _error(409, f"host {host_id} is retired; unretire it first", retired=True)
        state.request_sync(host)
        note_call("sync", [host_id], body, 202)
        state.log("INFO", f"host_id={host_id} force sync requested")
        return {"host_id": host_id, "status": "sync requested", "last_sync": host.last_sync}, 202

    @app.post("/admin/unretire")
    def unretire() -> dict[str, Any]:
        body = _body()
        host = host_or_404(_str_field(body, "host_id"))
        with state.lock:
            changed, host.retired, host.retired_reason = host.retired, False, None
        state.bump(host.host_id, "unretires")
        note_call("unretire", [host.host_id], body, 200)
        state.log("INFO", f"host_id={host.host_id} unretired (was retired: {changed})")
        return {"host_id": host.host_id, "retired": False, "changed": changed}

    @app.post("/admin/retire-host")
    def retire_host() -> dict[str, Any]:
        body = _body()
        host = host_or_404(_str_field(body, "host_id"))
        reason = _str_field(body, "reason")
        if body.get("acknowledge_loss") is not True:
            note_call("retire-host", [host.host_id], body, 400)
            raise BadRequest("acknowledge_loss", "acknowledge_loss must be true to retire a host")
        with state.lock:
            changed, host.retired, host.retired_reason = not host.retired, True, reason
        state.bump(host.host_id, "retires")
        note_call("retire-host", [host.host_id], body, 200)
        state.log("WARNING", f"host_id={host.host_id} retired reason={reason!r} acknowledge_loss=true")
        return {"host_id": host.host_id, "retired": True, "changed": changed}

    def selfplay(paused: bool) -> dict[str, Any]:
        body = _body()
        host_ids = body.get("host_ids")
        if not isinstance(host_ids, list) or not host_ids or not all(isinstance(h, str) for h in host_ids):
            raise BadRequest("host_ids", "host_ids must be a non-empty list of host ids")
        reason = _str_field(body, "reason")
        hosts = [host_or_404(h) for h in host_ids]  # all known, or nothing is applied
        with state.lock:
            for host in hosts:
                host.selfplay_paused = paused
        verb = "paused" if paused else "resumed"
        for host in hosts:
            state.bump(host.host_id, "pauses" if paused else "resumes")
            state.log("INFO", f"host_id={host.host_id} selfplay {verb} reason={reason!r}")
        note_call("pause-selfplay" if paused else "resume-selfplay", host_ids, body, 200)
        return {verb: host_ids, "reason": reason}

    @app.post("/admin/pause-selfplay")
    def pause_selfplay() -> dict[str, Any]:
        return selfplay(True)

    @app.post("/admin/resume-selfplay")
    def resume_selfplay() -> dict[str, Any]:
        return selfplay(False)

    @app.post("/admin/data-loss")
    def data_loss() -> dict[str, Any]:
        body = _body()
        host = host_or_404(_str_field(body, "host_id"))
        games_lost = body.get("games_lost")
        if not isinstance(games_lost, int) or isinstance(games_lost, bool) or games_lost < 0:
            raise BadRequest("games_lost", "games_lost must be an integer >= 0")
        for name in ("first_game_at", "last_game_at"):
            if name not in body or not isinstance(body[name], int | float | str | None):
                raise BadRequest(name, f"{name} must be a unix timestamp, an ISO 8601 string or null")
        if not isinstance(body.get("checklist"), dict | list):
            raise BadRequest("checklist", "checklist must be an object or a list")
        entry = {"recorded_at": time.time(), **body}
        with state.lock:
            state.data_loss.append(entry)
            number = len(state.data_loss)
        state.bump(host.host_id, "data_loss_records")
        note_call("data-loss", [host.host_id], body, 200)
        state.log("WARNING", f"host_id={host.host_id} data loss recorded games_lost={games_lost}")
        return {"host_id": host.host_id, "recorded": True, "record": number}

    @app.get("/metrics")
    def metrics() -> Response:
        now = time.time()
        with state.lock:
            states = Counter(state.state_of(h, now) for h in state.hosts.values())
            lines = [
                "# HELP ringrift_sync_hosts Hosts by sync state (healthy, lagging, critical).",
                "# TYPE ringrift_sync_hosts gauge",
                *(f'ringrift_sync_hosts{{state="{s}"}} {states.get(s, 0)}' for s in STATES),
                "# HELP ringrift_host_last_sync_timestamp_seconds Unix time of the host's last sync.",
                "# TYPE ringrift_host_last_sync_timestamp_seconds gauge",
                *(
                    f'ringrift_host_last_sync_timestamp_seconds{{host_id="{h.host_id}"}} {h.last_sync:.3f}'
                    for h in state.hosts.values()
                ),
                "# HELP ringrift_host_retired 1 when the host is retired.",
                "# TYPE ringrift_host_retired gauge",
                *(
                    f'ringrift_host_retired{{host_id="{h.host_id}"}} {int(h.retired)}'
                    for h in state.hosts.values()
                ),
            ]
        return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")

    @app.post("/sim/hosts/<host_id>/ingest")
    def ingest(host_id: str) -> tuple[dict[str, Any], int]:
        host = host_or_404(host_id)
        with state.lock:
            state.ingesting[host_id] += 1
        try:
            return ingest_games(host, _body())
        finally:
            with state.lock:
                state.ingesting[host_id] -= 1

    def ingest_games(host: HostRecord, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        host_id = host.host_id
        if host.retired:
            state.bump(host_id, "sync_refusals")
            state.log("WARNING", f"host_id={host_id} sync refused: host is retired")
            return _error(409, f"host {host_id} is retired")
        games = body.get("games", [])
        until = body.get("synced_until")
        if not isinstance(until, int | float):
            raise BadRequest("synced_until", "synced_until must be a unix timestamp")
        new = state.store.add(host_id, games, "sync")
        with state.lock:
            host.last_sync = max(host.last_sync, float(until))
            host.games_synced += new
        state.bump(host_id, "syncs")
        state.log("INFO", f"host_id={host_id} synced games={len(games)} new={new} last_sync={until:.3f}")
        return {"host_id": host_id, "new_games": new, "last_sync": host.last_sync}, 200

    @app.post("/sim/import")
    def import_games() -> dict[str, Any]:
        body = _body()
        host = host_or_404(_str_field(body, "host_id"))
        games = body.get("games")
        if not isinstance(games, list):
            raise BadRequest("games", "games must be a list of [game_id, created_at, moves]")
        new = state.store.add(host.host_id, games, "import")
        state.bump(host.host_id, "imports")
        state.bump(host.host_id, "imported_games", new)
        state.log("INFO", f"host_id={host.host_id} imported games={len(games)} new={new} (recovered data)")
        if body.get("trigger_sync") and not host.retired:
            state.bump(host.host_id, "sync_triggers")
            state.request_sync(host)
        return {"host_id": host.host_id, "games": len(games), "new_games": new}

    @app.post("/sim/faults")
    def faults() -> tuple[dict[str, Any], int]:
        if fault_handler is None:
            return _error(404, "fault injection is not enabled")
        body = _body()
        name = _str_field(body, "fault")
        args = {k: v for k, v in body.items() if k != "fault"}
        try:
            return fault_handler(name, args), 200
        except (TypeError, ValueError) as exc:
            return _error(400, str(exc), field="fault")

    @app.errorhandler(405)
    def method_not_allowed(exc: Exception) -> tuple[dict[str, Any], int]:
        return _error(405, "method not allowed")

    @app.errorhandler(404)
    def not_found(exc: Exception) -> tuple[dict[str, Any], int]:
        return _error(404, f"no such endpoint {request.path}")

    app.json.sort_keys = False  # type: ignore[attr-defined]
    return app
