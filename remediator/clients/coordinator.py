"""Clients for the RingRift coordinator: the HTTP API of the contract, or in-process ``SyncCoordinator``."""

from __future__ import annotations

import asyncio
import importlib
import logging
import posixpath
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import requests
from urllib3.exceptions import NewConnectionError

from remediator.config import Settings
from remediator.exceptions import (
    CoordinatorError,
    CoordinatorMaybeApplied,
    CoordinatorUnavailable,
    LimitUnavailable,
)
from remediator.hosts import is_valid_host_id

log = logging.getLogger("remediator.clients.coordinator")

RETRIES = 3  # attempts for one call on 5xx / connection errors
BACKOFF = 0.5  # seconds, doubled after each failed attempt
IN_PROCESS_MODULE = "app.coordination.sync_coordinator"

_ADDRESS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_PATH = re.compile(r"^/[A-Za-z0-9._/-]{0,1023}$")
# A host's data dir is read whole (inventory) and copied whole (rsync) to the recovery dir: never one
# of the system's own trees, nor anything in them -- a record saying /etc would copy the host's
# secrets here, one saying / the whole disk.
SYSTEM_TREES = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32",
    "/proc", "/root", "/run", "/sbin", "/sys", "/usr", "/var",
)  # fmt: skip
# Top-level directories too broad to be a data dir themselves (a directory below one may be).
BROAD_DIRS = frozenset({"/", "/data", "/home", "/media", "/mnt", "/opt", "/srv", "/tmp"})  # noqa: S108
# A sync log is only tailed (its last lines go into the audit): it may be under /var/log, but not in
# a tree that holds secrets or devices.
SECRET_TREES = ("/boot", "/dev", "/etc", "/proc", "/root", "/sys")


def _within(path: str, trees: tuple[str, ...]) -> bool:
    return any(path == tree or path.startswith(tree + "/") for tree in trees)


def unsafe_data_dir(path: str) -> str | None:
    """Why a data dir from the coordinator must not be used (None when it may)."""
    if path != posixpath.normpath(path) or "//" in path:
        return "not a normal absolute path ('.', '..' or '//' in it)"
    if path in BROAD_DIRS:
        return "a whole top-level directory, not a data dir"
    if _within(path, SYSTEM_TREES):
        return "inside a system directory"
    return None


@dataclass(frozen=True)
class HostRecord:
    """One host as the coordinator describes it, every field validated before use."""

    host_id: str
    state: str
    last_sync: float | None
    retired: bool
    address: str | None
    ssh_user: str | None
    ssh_port: int
    provider: str | None
    instance_id: str | None
    data_dir: str
    sync_log: str | None = None

    @classmethod
    def from_api(cls, host_id: str, raw: dict[str, Any]) -> HostRecord:
        def checked(name: str, pattern: re.Pattern[str], default: str | None = None) -> str | None:
            value = raw.get(name, default)
            if value is None or value == "":
                return default
            if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value.split("/"):
                raise CoordinatorError(
                    f"coordinator gave host {host_id} an unsafe {name}: {str(value)[:60]!r}"
                )
            return value

        port = raw.get("ssh_port", 22)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise CoordinatorError(f"coordinator gave host {host_id} an invalid ssh_port: {port!r}")
        instance = raw.get("instance_id")
        return cls(
            host_id=host_id,
            state=str(raw.get("state", "unknown")),
            last_sync=_timestamp(raw.get("last_sync")),
            retired=bool(raw.get("retired", False)),
            address=checked("address", _ADDRESS),
            ssh_user=checked("ssh_user", _USER),
            ssh_port=port,
            provider=str(raw["provider"]) if raw.get("provider") else None,
            instance_id=str(instance) if instance not in (None, "") else None,
            data_dir=_data_dir(host_id, checked("data_dir", _PATH, "/data/selfplay") or "/data/selfplay"),
            sync_log=_sync_log(host_id, checked("sync_log", _PATH)),
        )


def _data_dir(host_id: str, value: str) -> str:
    """The data dir without a trailing slash; CoordinatorError (the record is unsafe) when it is one
    the remediator must not read or copy."""
    path = value.rstrip("/") or "/"
    problem = unsafe_data_dir(path)
    if problem:
        raise CoordinatorError(
            f"coordinator gave host {host_id} an unsafe data_dir: {value[:60]!r} ({problem})"
        )
    return path


def _sync_log(host_id: str, value: str | None) -> str | None:
    if value is not None and (value != posixpath.normpath(value) or _within(value, SECRET_TREES)):
        raise CoordinatorError(f"coordinator gave host {host_id} an unsafe sync_log: {value[:60]!r}")
    return value


def _timestamp(value: Any) -> float | None:
    """last_sync as unix seconds: the contract's number, or an ISO-8601 string."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


class Coordinator(Protocol):
    def hosts(self) -> dict[str, HostRecord]: ...
    def host(self, host_id: str, since: float | None = None) -> HostRecord | None:
        """``since``: a caller's floor on how old the answer may be (unix seconds); a backend that
        always asks the coordinator anew meets any."""
        ...

    def force_sync(self, host_id: str) -> dict[str, Any]: ...
    def unretire(self, host_id: str) -> dict[str, Any]: ...
    def retire(self, host_id: str, reason: str, acknowledge_loss: bool) -> dict[str, Any]: ...
    def pause_selfplay(self, host_ids: list[str], reason: str) -> dict[str, Any]: ...
    def resume_selfplay(self, host_ids: list[str], reason: str) -> dict[str, Any]: ...
    def record_data_loss(self, record: dict[str, Any]) -> dict[str, Any]: ...


def _record(raw: Mapping[str, Any], host_id: str) -> HostRecord | None:
    """One host's record; CoordinatorError if it is one the remediator cannot trust."""
    found = raw.get(host_id)
    return HostRecord.from_api(host_id, dict(found)) if isinstance(found, Mapping) else None


def _records(raw: Mapping[str, Any]) -> dict[str, HostRecord]:
    """Every host's record the remediator can trust. A record it cannot (an unsafe field) is left out
    and logged, not raised: one bad record must not stop discovery and the fleet view for all hosts.
    That host's own ladder gets the error from ``host()``."""
    out: dict[str, HostRecord] = {}
    for host_id, found in raw.items():
        if not is_valid_host_id(host_id) or not isinstance(found, Mapping):
            continue
        try:
            out[host_id] = HostRecord.from_api(host_id, dict(found))
        except CoordinatorError as exc:
            log.warning("coordinator record of %s left out: %s", host_id, exc)
    return out


def _not_sent(exc: requests.RequestException) -> bool:
    """Whether the request provably never reached the coordinator: the connection was refused, could
    not be made, or its connect timed out. After anything else (a reset, a dropped connection, a read
    timeout) the request may have been received and applied."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError) and exc.args:
        return isinstance(getattr(exc.args[0], "reason", None), NewConnectionError)
    return False


def _answer(method: str, path: str, resp: requests.Response) -> Any:
    """A 2xx answer's JSON. One that carries none (an HTML page from a proxy, a cut or empty body) or
    says it failed (``{"success": false}``) raises CoordinatorError: it says nothing about the hosts,
    so it must be read as unknown -- never as "no such host", nor as done, nor crash the caller."""
    if not resp.content and method != "GET":
        return {}
    try:
        body = resp.json()
    except ValueError:
        raise CoordinatorError(
            f"{method} {path} answered {resp.status_code} with a body that is not JSON: {resp.text[:80]!r}"
        ) from None
    if isinstance(body, dict) and body.get("success") is False:
        raise CoordinatorError(
            f"{method} {path} answered {resp.status_code} but says it failed: {resp.text[:120]}"
        )
    return body


class HttpCoordinator:
    """The coordinator HTTP API of the contract, with bounded retries and backoff.

    A call that can be repeated without changing its outcome (``idempotent``) is retried on 5xx and
    on any connection error. One that cannot -- a second data-loss record is a duplicate entry in the
    training log -- is retried only when the request provably never reached the coordinator
    (``_not_sent``); after a 5xx, a timeout or a dropped connection it raises CoordinatorMaybeApplied.

    Which calls are idempotent, from the contract:

    - ``GET /sync/hosts``: a read.
    - ``POST /sync/hosts/<id>/sync``: asks for a sync; asking twice at worst syncs twice.
    - ``POST /admin/unretire``, ``/admin/pause-selfplay``, ``/admin/resume-selfplay``: set a state
      (retired false, selfplay paused or not) on named hosts; setting it again changes nothing.
    - ``POST /admin/data-loss``: appends a training-log entry each time -- not idempotent.
    - ``POST /admin/retire-host``: sets retired, but with ``acknowledge_loss`` it is the record that a
      loss was accepted, which the coordinator may log per call -- treated as not idempotent.

    ``limiter`` (the fleet-wide call rate, ``remediator.limits.CallRate.take``) is called before every
    HTTP attempt, retries included; when it gives no slot in time the call is not made and raises
    CoordinatorUnavailable, as a coordinator that cannot be reached does.
    """

    def __init__(
        self,
        base_url: str,
        admin_key: str | None,
        timeout: float = 10.0,
        retries: int = RETRIES,
        backoff: float = BACKOFF,
        limiter: Callable[[], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter
        self._admin_key = admin_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.session = requests.Session()

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        admin: bool = False,
        idempotent: bool | None = None,
    ) -> Any:
        """One contract call; ``idempotent`` defaults to True for GET only (see the class docstring)."""
        repeatable = method == "GET" if idempotent is None else idempotent
        headers = {"X-Admin-Key": self._admin_key} if admin and self._admin_key else {}
        delay = self.backoff
        last = ""
        for attempt in range(1, self.retries + 1):
            self._wait_for_slot(method, path)
            try:
                resp = self.session.request(
                    method, self.base_url + path, json=body, headers=headers, timeout=self.timeout
                )
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}"
                if not repeatable and not _not_sent(exc):
                    raise CoordinatorMaybeApplied(
                        f"{method} {path} failed after it was sent ({last}); not retried, since the "
                        "coordinator may have applied it"
                    ) from None
            else:
                if resp.status_code < 500:
                    if resp.status_code >= 400:
                        raise CoordinatorError(
                            f"{method} {path} answered {resp.status_code}: {resp.text[:200]}"
                        )
                    return _answer(method, path, resp)
                last = f"HTTP {resp.status_code}"
                if not repeatable:
                    raise CoordinatorMaybeApplied(
                        f"{method} {path} answered {last}; not retried, since the coordinator may have "
                        "applied it"
                    )
            if attempt < self.retries:
                log.warning("coordinator %s %s failed (%s); retrying in %.1fs", method, path, last, delay)
                time.sleep(delay)  # bounded: at most retries-1 short backoffs inside one step
                delay *= 2
        raise CoordinatorUnavailable(f"{method} {path} failed after {self.retries} attempts: {last}")

    def _wait_for_slot(self, method: str, path: str) -> None:
        if self.limiter is None:
            return
        try:
            self.limiter()
        except LimitUnavailable as exc:
            raise CoordinatorUnavailable(f"{method} {path} not sent: {exc}") from None

    def _raw_hosts(self) -> dict[str, Any]:
        raw = self._call("GET", "/sync/hosts")
        if not isinstance(raw, dict):
            raise CoordinatorError("GET /sync/hosts did not return an object")
        return raw

    def hosts(self) -> dict[str, HostRecord]:
        return _records(self._raw_hosts())

    def host(self, host_id: str, since: float | None = None) -> HostRecord | None:
        return _record(self._raw_hosts(), host_id)

    def force_sync(self, host_id: str) -> dict[str, Any]:
        return self._call("POST", f"/sync/hosts/{host_id}/sync", {"force": True}, idempotent=True)

    def unretire(self, host_id: str) -> dict[str, Any]:
        return self._call("POST", "/admin/unretire", {"host_id": host_id}, admin=True, idempotent=True)

    def retire(self, host_id: str, reason: str, acknowledge_loss: bool) -> dict[str, Any]:
        body = {"host_id": host_id, "reason": reason, "acknowledge_loss": acknowledge_loss}
        return self._call("POST", "/admin/retire-host", body, admin=True, idempotent=False)

    def pause_selfplay(self, host_ids: list[str], reason: str) -> dict[str, Any]:
        body = {"host_ids": host_ids, "reason": reason}
        return self._call("POST", "/admin/pause-selfplay", body, admin=True, idempotent=True)

    def resume_selfplay(self, host_ids: list[str], reason: str) -> dict[str, Any]:
        body = {"host_ids": host_ids, "reason": reason}
        return self._call("POST", "/admin/resume-selfplay", body, admin=True, idempotent=True)

    def record_data_loss(self, record: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/admin/data-loss", record, admin=True, idempotent=False)


class InProcessCoordinator:
    """Inside the RingRift code base: ``SyncCoordinator.get_instance()`` instead of HTTP.

    Admin calls the in-process API does not offer fall back to the HTTP client.
    """

    def __init__(self, module: Any, http: HttpCoordinator) -> None:
        self.sync = module.SyncCoordinator.get_instance()
        self.http = http

    def hosts(self) -> dict[str, HostRecord]:
        return _records(self.sync.get_host_statuses())

    def host(self, host_id: str, since: float | None = None) -> HostRecord | None:
        return _record(self.sync.get_host_statuses(), host_id)

    def force_sync(self, host_id: str) -> dict[str, Any]:
        result = self.sync.sync_host(host_id, force=True)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return {
            "requested": True,
            "result": result if isinstance(result, dict | bool | None) else str(result),
        }

    def __getattr__(self, name: str) -> Any:
        return getattr(self.http, name)


def coordinator_from_settings(settings: Settings, limiter: Callable[[], None] | None = None) -> Coordinator:
    """The in-process backend when RingRift's module is importable, else the HTTP client; ``limiter``
    paces the HTTP calls (the in-process backend's own calls are not HTTP and are not paced)."""
    http = HttpCoordinator(
        settings.coordinator_url,
        settings.coordinator_admin_key,
        settings.coordinator_timeout,
        limiter=limiter,
    )
    try:
        module = importlib.import_module(IN_PROCESS_MODULE)
    except ImportError:
        return http
    return InProcessCoordinator(module, http)
