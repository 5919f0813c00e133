"""Payload builders and small utilities shared by the tests."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from remediator import keys, store
from remediator.config import Settings

WEBHOOK_TOKEN = "whk-7f3a9c1e5b2d4f60-secret"
ADMIN_TOKEN = "adm-91c2e8f4a7b3d650-secret"
READ_TOKEN = "rdt-3e5a7c9b1d2f4068-secret"


class HostReads:
    """What a test reads of the remediator's side of a host, from Redis (``self.conn``)."""

    conn: Any

    def host(self, host_id: str) -> dict[str, Any]:
        return store.get_host(self.conn, host_id)

    def audit(self, host_id: str) -> list[dict[str, Any]]:
        return store.get_audit(self.conn, host_id)

    def steps(self, host_id: str) -> list[tuple[str, str]]:
        return [(e["step"], e["outcome"]) for e in self.audit(host_id)]

    def active(self, host_id: str) -> bool:
        return bool(self.conn.exists(keys.ACTIVE.format(host_id)))


def make_settings(redis_url: str, **overrides: object) -> Settings:
    """Settings for a test app: the test tokens (webhook, admin, read), the given Redis, and any overrides."""
    base = Settings(
        redis_url=redis_url, webhook_token=WEBHOOK_TOKEN, admin_token=ADMIN_TOKEN, read_token=READ_TOKEN
    )
    return Settings(**{**base.__dict__, **overrides})


def alert(
    host_id: str | None = "h1", status: str = "firing", alertname: str = "CriticalSyncHosts", **labels: str
) -> dict[str, Any]:
    lbl = {"alertname": alertname, "severity": "critical", **labels}
    if host_id is not None:
        lbl["host_id"] = host_id
    fp = hashlib.sha256(repr(sorted(lbl.items())).encode()).hexdigest()[:16]
    return {
        "status": status,
        "labels": lbl,
        "annotations": {"summary": "host sync critical"},
        "startsAt": "2026-11-29T05:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-29T06:00:00Z",
        "generatorURL": "http://prometheus.local/graph",
        "fingerprint": fp,
    }


def payload(alerts: Iterable[dict[str, Any]], status: str | None = None) -> dict[str, Any]:
    alerts = list(alerts)
    return {
        "version": "4",
        "groupKey": '{}:{alertname="CriticalSyncHosts"}',
        "truncatedAlerts": 0,
        "status": status or ("firing" if any(a["status"] == "firing" for a in alerts) else "resolved"),
        "receiver": "remediator",
        "groupLabels": {"alertname": "CriticalSyncHosts"},
        "commonLabels": {"alertname": "CriticalSyncHosts"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "alerts": alerts,
    }


def bearer(token: str = WEBHOOK_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
