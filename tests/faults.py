"""A fault layer over every outside call of the remediator (issue 13), for tests.

``FaultyClients(inner, plan, log, hooks)`` wraps a ``remediator.clients.Clients`` -- the world-backed
ones of ``tests/world.py`` or the real ones pointed at the simulated cluster -- and injects, at a named
call, one of:

- ``refused``: the connection is refused; nothing reached the service;
- ``timeout``: the request was sent and no answer came within the caller's timeout (not applied);
- ``5xx`` / ``4xx``: an error status (a 502 proxy, a 503, a 400/404/409), nothing applied;
- ``malformed``: a 200 whose body is not what the contract says (``variant``: ``not_json`` an HTML
  login page, ``list`` a JSON array, ``success_false`` ``{"success": false, ...}``, ``empty`` no body,
  ``missing_fields`` the real answer with fields stripped); for a command, a login banner before its
  output (``banner``) or output cut short (``truncated``);
- ``applied_then_failed``: the call took effect and its answer was lost (``variant``: ``5xx`` a 502,
  ``timeout`` a read timeout, ``reset`` a dropped connection; for commands the session drops);
- ``slow``: the answer comes ``seconds`` later (past the caller's timeout it is a timeout after the
  call was applied);
- ``kill`` / ``kill_after``: SIGKILL of the worker at that call, before it is made or right after it
  took effect: ``WorkerKilled`` (a BaseException) is raised and the hooks mark the worker dead, so
  nothing of its job runs or reaches Redis afterwards (its locks stay until their TTL);
- ``stall``: the worker freezes for ``seconds`` at that call (GC pause, partition): its host lock
  expires and other workers run meanwhile (``hooks.stall``), then the call goes through.

Call names: ``coordinator.{hosts,force_sync,unretire,retire,pause,resume,data_loss}``,
``provider.{lambda,status}``, ``pager.{webhook,pagerduty,alertmanager}``,
``alertmanager.{silence,silences,expire}`` (create, list, expire a silence),
``ssh.{connect,echo,inventory,checksums,agent_check,restart_policy,restart,fallback,log_tail,other}``,
``rsync``, ``import``, ``network``, and ``redis.<COMMAND>`` (see tests/inproc.py). A fault's ``call``
may end in ``*`` to match a prefix. HTTP faults act on each request (so the clients' own retries meet them);
``times`` says how many calls a fault hits (None: until cleared).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError
from world import BANNER, Call, CallLog, make_response

from remediator.clients import Clients
from remediator.clients.coordinator import HostRecord
from remediator.clients.ssh import CommandResult, RsyncResult
from remediator.config import Settings
from remediator.exceptions import SSHError
from workers.diagnose import REMOTE_PYTHON

KINDS = (
    "refused",
    "timeout",
    "5xx",
    "4xx",
    "malformed",
    "applied_then_failed",
    "slow",
    "kill",
    "kill_after",
    "stall",
)
HTTP_MALFORMED = ("not_json", "list", "success_false", "empty", "missing_fields")
COMMAND_MALFORMED = ("banner", "truncated")


class WorkerKilled(BaseException):
    """SIGKILL of the worker at a call: a BaseException, so no ``except Exception`` runs after it."""


@dataclass
class Fault:
    call: str
    kind: str
    times: int | None = 1  # calls it hits; None: every one until cleared
    variant: str = ""
    seconds: float = 0.0
    host: str | None = None  # only calls about this host (None: any)
    skip: int = 0  # matching calls let through before the fault starts to hit
    hits: int = 0

    def matches(self, name: str, host: str | None) -> bool:
        if self.host is not None and host is not None and host != self.host:
            return False
        if self.call.endswith("*"):
            return name.startswith(self.call[:-1])
        return name == self.call


class FaultPlan:
    """The faults in force; ``take`` returns the one a call meets (and uses one of its hits)."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def clear(self, call: str | None = None) -> None:
        self.faults = [f for f in self.faults if call is not None and f.call != call]

    def take(self, name: str, host: str | None = None) -> Fault | None:
        for fault in self.faults:
            if fault.matches(name, host):
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.hits += 1
                if fault.times is not None and fault.hits >= fault.times:
                    self.faults.remove(fault)
                return replace(fault)
        return None


class FaultHooks:
    """What a fault needs from whoever runs the workers. The defaults suit a real-time run in one
    process: a kill raises WorkerKilled, slow sleeps, a stall sleeps (nothing else runs meanwhile)."""

    def now(self) -> float:
        import time

        return time.time()

    def advance(self, seconds: float) -> None:
        import time

        time.sleep(seconds)

    def kill(self) -> None:
        raise WorkerKilled("SIGKILL at a faulted call")

    def stall(self, seconds: float) -> None:
        self.advance(seconds)

    def check_alive(self) -> None:
        """Raise WorkerKilled when the calling worker is dead (a dead process makes no call)."""


# -- naming ----------------------------------------------------------------------------------------


class HttpNames:
    """Which call an HTTP request is, from the URLs in the settings."""

    def __init__(self, settings: Settings) -> None:
        self.coordinator = settings.coordinator_url.rstrip("/")
        self.alertmanager = (settings.alertmanager_url or "").rstrip("/")
        self.pagers = {
            "pager.webhook": settings.page_webhook_url,
            "pager.pagerduty": settings.pagerduty_url,
            "pager.alertmanager": settings.alertmanager_url,
        }
        self.providers = {
            "provider.lambda": settings.lambda_url,
            "provider.vast": settings.vast_url,
            "provider.status": settings.lambda_status_url,
            "provider.vast_status": settings.vast_status_url,
        }

    def __call__(self, method: str, url: str, body: Any) -> tuple[str, str | None]:
        if url.startswith(self.coordinator + "/"):
            path = urlsplit(url).path
            body = body if isinstance(body, dict) else {}
            host = body.get("host_id")
            if path == "/sync/hosts":
                return "coordinator.hosts", None
            if path.startswith("/sync/hosts/") and path.endswith("/sync"):
                return "coordinator.force_sync", path.split("/")[3]
            names = {
                "/admin/unretire": "coordinator.unretire",
                "/admin/retire-host": "coordinator.retire",
                "/admin/pause-selfplay": "coordinator.pause",
                "/admin/resume-selfplay": "coordinator.resume",
                "/admin/data-loss": "coordinator.data_loss",
            }
            if path in ("/admin/pause-selfplay", "/admin/resume-selfplay"):
                ids = body.get("host_ids") or []
                host = ids[0] if len(ids) == 1 else None
            return names.get(path, "coordinator.other"), host
        if self.alertmanager and url.startswith(self.alertmanager + "/api/v2/silence"):
            verb = {"POST": "silence", "DELETE": "expire"}.get(method, "silences")
            return f"alertmanager.{verb}", None
        for name, base in {**self.pagers, **self.providers}.items():
            if base and url.startswith(base.rstrip("/")):
                return name, None
        return "http.other", None


def command_name(settings: Settings, command: str) -> str:
    """Which remote command this is (the read-only diagnosis set or a mutation)."""
    if command == "echo OK":
        return "ssh.echo"
    if command.startswith(REMOTE_PYTHON + " "):
        return "ssh.inventory" if command.rstrip().endswith("no-checksums") else "ssh.checksums"
    if command == settings.agent_check_command:
        return "ssh.agent_check"
    if command == settings.agent_restart_command:
        return "ssh.restart"
    if command == settings.agent_fallback_command:
        return "ssh.fallback"
    if command.startswith("tail -n "):
        return "ssh.log_tail"
    if command == _restart_policy_command():
        return "ssh.restart_policy"
    return "ssh.other"


def _restart_policy_command() -> str | None:
    try:
        from workers.diagnose import RESTART_POLICY_COMMAND
    except ImportError:  # a remediator from before diagnosis read the agent's restart policy
        return None
    return RESTART_POLICY_COMMAND


def request_summary(request: requests.PreparedRequest) -> dict[str, Any]:
    from world import request_body

    body = request_body(request)
    summary: dict[str, Any] = {"method": request.method, "path": urlsplit(request.url or "").path}
    if isinstance(body, dict):
        for key in ("host_id", "host_ids", "event_action", "dedup_key", "acknowledge_loss", "games_lost"):
            if key in body:
                summary[key] = body[key]
    elif isinstance(body, list) and body and isinstance(body[0], dict):
        labels = body[0].get("labels") or {}
        summary["dedup_key"] = labels.get("dedup_key")
        summary["ends_at"] = body[0].get("endsAt")
    return summary


# -- HTTP --------------------------------------------------------------------------------------------


def _timeout(kwargs: Mapping[str, Any]) -> float:
    timeout = kwargs.get("timeout")
    if isinstance(timeout, tuple):
        timeout = timeout[1]
    return float(timeout or 10.0)


def refused(request: requests.PreparedRequest) -> requests.ConnectionError:
    """What requests raises when nothing listens: it provably never reached the service."""
    reason = NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")
    return requests.ConnectionError(MaxRetryError(None, request.url, reason), request=request)  # type: ignore[arg-type]


def dropped(request: requests.PreparedRequest) -> requests.ConnectionError:
    """A connection dropped after the request was sent (the service may have acted on it)."""
    reason = ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer"))
    return requests.ConnectionError(reason, request=request)


def malformed(
    request: requests.PreparedRequest, variant: str, real: requests.Response | None
) -> requests.Response:
    if variant == "list":
        return make_response(request, 200, [])
    if variant == "success_false":
        return make_response(request, 200, {"success": False, "error": "internal error", "msg": "try later"})
    if variant == "empty":
        response = make_response(request, 200, "")
        response._content = b""
        return response
    if variant == "missing_fields" and real is not None:
        try:
            body = real.json()
        except ValueError:
            body = {}
        return make_response(request, real.status_code, _strip(body))
    return make_response(request, 200, "<html><body>Please log in</body></html>")


def _strip(body: Any) -> Any:
    """The answer with its meaningful fields removed (records without state, rows without status)."""
    if isinstance(body, dict):
        if "data" in body and isinstance(body["data"], list):
            return {"data": [{"id": row.get("id")} for row in body["data"] if isinstance(row, dict)]}
        if "status" in body and isinstance(body["status"], dict):
            return {"status": {}}
        out = {}
        for key, value in body.items():
            if isinstance(value, dict):
                out[key] = {k: v for k, v in value.items() if k not in ("state", "last_sync", "retired")}
        return out or {}
    return {}


class FaultAdapter(BaseAdapter):
    """A requests transport that faults named calls and passes the rest to ``inner``."""

    def __init__(self, inner: BaseAdapter, layer: FaultLayer) -> None:
        super().__init__()
        self.inner = inner
        self.layer = layer

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        from world import request_body

        layer = self.layer
        layer.hooks.check_alive()
        name, host = layer.names(request.method or "GET", request.url or "", request_body(request))
        fault = layer.plan.take(name, host)
        call = layer.log.new(name, "wire", request_summary(request), fault.kind if fault else None)
        if fault is None:
            return self._forward(call, request, kwargs)
        kind, timeout = fault.kind, _timeout(kwargs)
        if kind == "kill":
            layer.hooks.kill()
        if kind == "refused":
            call.result = "refused"
            raise refused(request)
        if kind == "timeout":
            layer.hooks.advance(timeout)
            call.result = "timeout"
            raise requests.ReadTimeout(f"read timed out after {timeout:g}s", request=request)
        if kind == "5xx":
            call.result = int(fault.variant or 503)
            return make_response(request, call.result, {"error": "upstream unavailable"})
        if kind == "4xx":
            call.result = int(fault.variant or 400)
            return make_response(request, call.result, {"error": "bad request (injected)"})
        if kind == "malformed":
            # A read is answered from the real answer with its fields stripped; a write never reaches
            # the service unless the variant is built from its answer (a pager's garbage 2xx body).
            real = None
            if fault.variant == "missing_fields" or name.startswith("pager."):
                real = self._forward(call, request, kwargs)
            if name.startswith("pager.") and real is not None:
                response = malformed(request, fault.variant, None)
                response.status_code = real.status_code
                return response
            call.result = f"malformed:{fault.variant}"
            return malformed(request, fault.variant, real)
        if kind in ("applied_then_failed", "kill_after"):
            self._forward(call, request, kwargs)
            call.answer_lost = True
            if kind == "kill_after":
                layer.hooks.kill()
            variant = fault.variant or "5xx"
            call.result = f"lost:{variant}"
            if variant == "timeout":
                layer.hooks.advance(timeout)
                raise requests.ReadTimeout(f"read timed out after {timeout:g}s", request=request)
            if variant == "reset":
                raise dropped(request)
            return make_response(request, 502, "<html>502 Bad Gateway</html>")
        if kind == "slow":
            layer.hooks.advance(min(fault.seconds, timeout))
            response = self._forward(call, request, kwargs)
            if fault.seconds >= timeout:
                call.answer_lost = True
                call.result = "timeout (applied)"
                raise requests.ReadTimeout(f"read timed out after {timeout:g}s", request=request)
            return response
        if kind == "stall":
            layer.hooks.stall(fault.seconds)
            return self._forward(call, request, kwargs)
        raise ValueError(f"unknown fault kind {kind!r}")

    def _forward(self, call: Call, request: requests.PreparedRequest, kwargs: Any) -> requests.Response:
        with self.layer.log.current(call):
            response = self.inner.send(request, **kwargs)
        if call.result is None:
            call.result = response.status_code
        return response

    def close(self) -> None:
        self.inner.close()


def mount(session: requests.Session, layer: FaultLayer, inner: BaseAdapter | None = None) -> None:
    """Put the fault adapter in front of whatever the session used (or ``inner``), for every URL."""
    for prefix in ("http://", "https://"):
        current = inner or session.get_adapter(prefix + "x")
        if not isinstance(current, FaultAdapter):
            session.mount(prefix, FaultAdapter(current, layer))


# -- the Clients wrapper -----------------------------------------------------------------------------


@dataclass
class FaultLayer:
    plan: FaultPlan
    log: CallLog
    hooks: FaultHooks
    settings: Settings
    names: HttpNames = field(init=False)

    def __post_init__(self) -> None:
        self.names = HttpNames(self.settings)

    def intent(self, name: str, args: Mapping[str, Any] | None = None) -> Call:
        self.hooks.check_alive()
        return self.log.new(name, "intent", args)

    def finish(self, call: Call) -> None:
        """An intent's outcome: applied when any request it made was."""
        call.ended = self.log.clock.now
        wires = [c for c in self.log.calls[call.seq + 1 :] if c.level == "wire" and c.ctx == call.ctx]
        call.applied = call.applied or any(c.applied for c in wires)
        call.reached = call.reached or any(c.reached for c in wires)


class _Proxy:
    """Records each method call of a client as an intent (its HTTP requests are faulted below it)."""

    NAMES: dict[str, str] = {}

    def __init__(self, inner: Any, layer: FaultLayer, prefix: str, host: Callable[..., str | None]) -> None:
        self._inner = inner
        self._layer = layer
        self._prefix = prefix
        self._host = host

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._inner, attr)
        if not callable(value) or attr.startswith("_"):
            return value
        name = f"{self._prefix}.{self.NAMES.get(attr, attr)}"

        def call(*args: Any, **kwargs: Any) -> Any:
            intent = self._layer.intent(name, {"host_id": self._host(*args, **kwargs), "method": attr})
            try:
                result = value(*args, **kwargs)
                intent.result = "ok"
                return result
            except Exception as exc:
                intent.result = f"{type(exc).__name__}: {exc}"[:200]
                raise
            finally:
                self._layer.finish(intent)

        return call


class CoordinatorProxy(_Proxy):
    NAMES = {
        "host": "hosts",
        "pause_selfplay": "pause",
        "resume_selfplay": "resume",
        "record_data_loss": "data_loss",
    }


def _coordinator_host(*args: Any, **kwargs: Any) -> str | None:
    first = args[0] if args else kwargs.get("host_id") or kwargs.get("host_ids") or kwargs.get("record")
    if isinstance(first, dict):
        return first.get("host_id")
    if isinstance(first, list):
        return first[0] if len(first) == 1 else None
    return first if isinstance(first, str) else None


class FaultySession:
    """An SSH session whose connect and commands meet the plan's ``ssh.*`` faults."""

    def __init__(self, layer: FaultLayer, factory: Callable[[HostRecord], Any], record: HostRecord) -> None:
        self.layer = layer
        self.record = record
        self.inner = factory(record)
        self.entered = False

    def __enter__(self) -> FaultySession:
        layer, host = self.layer, self.record.host_id
        call = layer.intent("ssh.connect", {"host_id": host})
        fault = layer.plan.take("ssh.connect", host)
        call.fault = fault.kind if fault else None
        timeout = layer.settings.ssh_connect_timeout
        if fault is not None:
            if fault.kind in ("kill", "kill_after"):
                layer.hooks.kill()
            if fault.kind == "stall":
                layer.hooks.stall(fault.seconds)
            elif fault.kind == "slow":
                layer.hooks.advance(min(fault.seconds, timeout))
                if fault.seconds >= timeout:
                    call.result = "timed out"
                    raise SSHError("timed out")
            elif fault.kind in ("timeout", "applied_then_failed"):
                layer.hooks.advance(timeout)
                call.result = "timed out"
                raise SSHError("timed out")
            elif fault.kind == "4xx":
                call.result = "authentication refused"
                raise SSHError("authentication refused")
            else:
                call.result = "connection refused"
                raise SSHError("connection refused")
        try:
            with layer.log.current(call):
                self.inner.__enter__()
        except SSHError as exc:
            call.result = str(exc)
            raise
        call.result = "connected"
        self.entered = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.entered:
            self.inner.__exit__(*exc)

    def run(self, command: str, stdin: str | None = None, timeout: float | None = None) -> CommandResult:
        layer, host = self.layer, self.record.host_id
        name = command_name(layer.settings, command)
        call = layer.intent(name, {"host_id": host, "command": command[:120]})
        fault = layer.plan.take(name, host)
        call.fault = fault.kind if fault else None
        word = command.split()[0]
        limit = timeout or layer.settings.ssh_command_timeout
        try:
            if fault is None:
                return self._run(call, command, stdin, timeout)
            kind = fault.kind
            if kind == "kill":
                layer.hooks.kill()
            if kind == "refused":
                raise SSHError(f"{word}: connection lost")
            if kind == "timeout":
                layer.hooks.advance(limit)
                raise SSHError(f"{word}: timed out")
            if kind in ("5xx", "4xx"):
                return CommandResult(command, 1 if kind == "5xx" else 126, "", "error (injected)\n")
            if kind == "malformed":
                real = self._run(call, command, stdin, timeout)
                if fault.variant == "truncated":
                    return CommandResult(
                        command, real.exit_status, real.stdout[: len(real.stdout) // 2], real.stderr
                    )
                return CommandResult(command, real.exit_status, BANNER + real.stdout, real.stderr)
            if kind in ("applied_then_failed", "kill_after"):
                self._run(call, command, stdin, timeout)
                call.answer_lost = True
                if kind == "kill_after":
                    layer.hooks.kill()
                raise SSHError(f"{word}: connection lost")
            if kind == "slow":
                layer.hooks.advance(min(fault.seconds, limit))
                result = self._run(call, command, stdin, timeout)
                if fault.seconds >= limit:
                    call.answer_lost = True
                    raise SSHError(f"{word}: timed out")
                return result
            if kind == "stall":
                layer.hooks.stall(fault.seconds)
                return self._run(call, command, stdin, timeout)
            raise ValueError(f"unknown fault kind {kind!r}")
        except SSHError as exc:
            call.result = str(exc)
            raise
        finally:
            call.ended = layer.log.clock.now

    def _run(self, call: Call, command: str, stdin: str | None, timeout: float | None) -> CommandResult:
        with self.layer.log.current(call):
            result = self.inner.run(command, stdin=stdin, timeout=timeout)
        call.result = result.exit_status
        return result


def faulty_clients(
    inner: Clients, plan: FaultPlan, log: CallLog, hooks: FaultHooks, settings: Settings
) -> Clients:
    """``inner`` with every outside call going through the fault layer."""
    layer = FaultLayer(plan, log, hooks, settings)
    session = getattr(inner.coordinator, "session", None)
    if session is None:
        session = getattr(getattr(inner.coordinator, "http", None), "session", None)
    if session is not None:
        mount(session, layer)

    def ssh(record: HostRecord) -> FaultySession:
        return FaultySession(layer, inner.ssh, record)

    def rsync(
        record: HostRecord, dest: Path, *, dry_run: bool = False, timeout: float | None = None
    ) -> RsyncResult:
        call = layer.intent("rsync", {"host_id": record.host_id, "dry_run": dry_run, "dest": str(dest)})
        try:
            return _rsync(call, record, dest, dry_run, timeout)
        finally:
            call.ended = log.clock.now

    def _rsync(
        call: Call, record: HostRecord, dest: Path, dry_run: bool, timeout: float | None
    ) -> RsyncResult:
        fault = plan.take("rsync", record.host_id)
        call.fault = fault.kind if fault else None

        def real() -> RsyncResult:
            with log.current(call):
                result = inner.rsync(record, dest, dry_run=dry_run, timeout=timeout)
            call.result = result.exit_status
            return result

        if fault is None:
            return real()
        kind = fault.kind
        if kind == "kill":
            hooks.kill()
        if kind == "refused":
            call.result = 255
            return RsyncResult(255, 0, "ssh: connect to host port 22: Connection refused")
        if kind == "timeout":
            hooks.advance(timeout or 60)
            call.result = -1
            return RsyncResult(-1, 0, "rsync timed out")
        if kind in ("5xx", "4xx", "malformed"):
            call.result = 23 if kind != "4xx" else 12
            return RsyncResult(call.result, 0, "rsync error: some files/attrs were not transferred (code 23)")
        if kind in ("applied_then_failed", "kill_after"):
            real()
            call.answer_lost = True
            if kind == "kill_after":
                hooks.kill()
            call.result = 12
            return RsyncResult(12, 0, "rsync: connection unexpectedly closed (code 12)")
        if kind == "slow":
            hooks.advance(fault.seconds)
            return real()
        if kind == "stall":
            hooks.stall(fault.seconds)
            return real()
        raise ValueError(kind)

    def run_import(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        call = layer.intent("import", {"argv": argv[-6:]})
        try:
            return _import(call, argv, timeout)
        finally:
            call.ended = log.clock.now

    def _import(call: Call, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        fault = plan.take("import")
        call.fault = fault.kind if fault else None

        def real() -> subprocess.CompletedProcess[str]:
            with log.current(call):
                proc = inner.run_import(argv, timeout)
            call.result = proc.returncode
            return proc

        if fault is None:
            return real()
        kind = fault.kind
        if kind == "kill":
            hooks.kill()
        if kind == "refused":
            call.result = "FileNotFoundError"
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        if kind == "timeout":
            hooks.advance(timeout)
            call.result = "timeout"
            raise subprocess.TimeoutExpired(argv, timeout)
        if kind in ("5xx", "4xx"):
            call.result = 1
            return subprocess.CompletedProcess(argv, 1, "", "import: coordinator answered 503\n")
        if kind == "malformed":
            proc = real()
            return subprocess.CompletedProcess(
                argv, proc.returncode, "Traceback (most recent call last):\n", ""
            )
        if kind in ("applied_then_failed", "kill_after"):
            real()
            call.answer_lost = True
            if kind == "kill_after":
                hooks.kill()
            hooks.advance(timeout)
            call.result = "timeout (applied)"
            raise subprocess.TimeoutExpired(argv, timeout)
        if kind == "slow":
            hooks.advance(min(fault.seconds, timeout))
            proc = real()
            if fault.seconds >= timeout:
                call.answer_lost = True
                raise subprocess.TimeoutExpired(argv, timeout)
            return proc
        if kind == "stall":
            hooks.stall(fault.seconds)
            return real()
        raise ValueError(kind)

    def providers() -> Mapping[str, Any]:
        found = dict(inner.providers())
        for provider in found.values():
            if getattr(provider, "session", None) is not None:
                mount(provider.session, layer)
        return {
            name: ProviderProxy(p, layer, f"provider.{name}", lambda *a, **k: a[0] if a else None)
            for name, p in found.items()
        }

    status_session = getattr(inner.provider_statuses, "session", None)
    if status_session is not None:
        mount(status_session, layer)

    def provider_statuses() -> dict[str, bool | None]:
        call = layer.intent("provider.status")
        try:
            statuses = inner.provider_statuses()
        finally:
            layer.finish(call)
        call.result = statuses
        return statuses

    def network(hosts: Mapping[str, Mapping[str, Any]]) -> Any:
        call = layer.intent("network", {"hosts": len(hosts)})
        fault = plan.take("network")
        call.fault = fault.kind if fault else None
        if fault is not None:
            if fault.kind in ("kill", "kill_after"):
                hooks.kill()
            if fault.kind in ("slow", "stall", "timeout"):
                hooks.advance(fault.seconds or 3.0)
            from remediator.clients.netcheck import NetworkCheck

            call.result = "failed"
            return NetworkCheck(False, 0, len(hosts) + 1, {"*": "injected"})
        with log.current(call):
            result = inner.network(hosts)
        call.result = getattr(result, "ok", None)
        return result

    def silences() -> Any:
        client = inner.silences()
        if client is not None and getattr(client, "session", None) is not None:
            mount(client.session, layer)
        return client

    def pagers() -> Mapping[str, Any]:
        found = dict(inner.pagers())
        for pager in found.values():
            if getattr(pager, "session", None) is not None:
                mount(pager.session, layer)
        return {
            name: PagerProxy(p, layer, f"pager.{name}", lambda *a, **k: None) for name, p in found.items()
        }

    return Clients(
        coordinator=CoordinatorProxy(inner.coordinator, layer, "coordinator", _coordinator_host),  # type: ignore[arg-type]
        ssh=ssh,
        rsync=rsync,
        run_import=run_import,
        providers=providers,
        provider_statuses=provider_statuses,
        network=network,
        pagers=pagers,
        **({"silences": silences} if "silences" in Clients.__dataclass_fields__ else {}),
    )


class ProviderProxy(_Proxy):
    NAMES = {"instance_state": "", "instance_states": "", "instance_state_since": "", "instances": ""}

    def __getattr__(self, attr: str) -> Any:
        if attr == "name":
            return self._inner.name
        value = getattr(self._inner, attr)
        if attr not in ("instance_state", "instance_states", "instance_state_since") or not callable(value):
            return value
        layer, name = self._layer, self._prefix

        def call(*args: Any, **kwargs: Any) -> Any:
            intent = layer.intent(name, {"instance": str(args[0]) if args else None, "method": attr})
            try:
                result = value(*args, **kwargs)
                intent.result = str(result)
                return result
            except Exception as exc:
                intent.result = f"{type(exc).__name__}: {exc}"[:200]
                raise
            finally:
                layer.finish(intent)

        return call


class PagerProxy(_Proxy):
    def __getattr__(self, attr: str) -> Any:
        if attr == "name":
            return self._inner.name
        value = getattr(self._inner, attr)
        if attr not in ("trigger", "resolve"):
            return value
        layer, name = self._layer, self._prefix

        def call(page: Any) -> Any:
            intent = layer.intent(
                name, {"action": attr, "dedup_key": page.dedup_key, "hosts": list(page.hosts)}
            )
            try:
                value(page)
                intent.result = "sent"
            except Exception as exc:
                intent.result = f"{type(exc).__name__}: {exc}"[:200]
                raise
            finally:
                layer.finish(intent)

        return call
