"""One remediator against one world, on a virtual clock, with a fault layer over every outside call.

``Harness`` puts together what tests/world.py, tests/faults.py and tests/inproc.py provide: the world
(hosts, coordinator, provider, pagers), the fault plan and the call log, the in-process workers, the
real receiver (the Flask app, for alerts and the API), and ``remediator.clients.install`` of the
fault-layered world clients for the whole process. The property test builds one per generated
sequence; regression tests build one per test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import redis
from faults import FaultPlan, faulty_clients
from helpers import ADMIN_TOKEN, WEBHOOK_TOKEN, HostReads, alert, bearer, make_settings, payload
from inproc import VIRTUAL, Driver, install_end_tracking, install_lock_tracking, install_virtual_time
from invariants import Observed
from world import CallLog, VirtualClock, World, world_clients, world_settings_env

from remediator import clients, create_app, incidents
from remediator.config import Settings

START = 1_900_000_000.0  # virtual epoch of every sequence (2030-03-17): far from the real clock


class Harness(HostReads):
    def __init__(
        self,
        root: Path,
        redis_url: str,
        host_ids: list[str],
        *,
        rules_file: Path,
        dry_run: bool = False,
        app: Any = None,
        env: dict[str, str] | None = None,
    ) -> None:
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        self.root = root
        self.redis_url = redis_url
        self.clock = VirtualClock(START)
        VIRTUAL.clock = self.clock
        self.log = CallLog(self.clock)
        self.world = World(root, self.clock, host_ids, self.log)
        self.plan = FaultPlan()
        self.env = {
            **world_settings_env(root),
            "REDIS_URL": redis_url,
            "REMEDIATOR_RULES_FILE": str(rules_file),
            "REMEDIATOR_DRY_RUN": "true" if dry_run else "false",
            **(env or {}),
        }
        self._saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        self.settings = Settings.from_env()
        self.conn = redis.Redis.from_url(redis_url)
        self.conn.flushall()
        self.driver = Driver(redis_url, self.settings, self.clock, self.plan, self.log)
        self.driver.snapshot = self.world.snapshot
        self.observed = Observed()
        self.inner = world_clients(self.world, self.settings)
        self.clients = faulty_clients(self.inner, self.plan, self.log, self.driver, self.settings)
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(clients.install(lambda _settings: self.clients))
        # The incident scripts are registered once per process; register them on a connection that is
        # never killed (each call passes its own client anyway).
        incidents._scripts.clear()
        self.app = app or create_app(
            {"SETTINGS": make_settings(redis_url, **_app_overrides(self.settings)), "TESTING": True}
        )
        self.http = self.app.test_client()

    def close(self) -> None:
        self._stack.close()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        VIRTUAL.clock = None
        self.conn.close()

    # -- what Alertmanager and humans do ----------------------------------------------------------
    def fire(self, *host_ids: str | None) -> dict[str, Any]:
        return self._post([alert(h) for h in host_ids])

    def resolve(self, *host_ids: str) -> dict[str, Any]:
        return self._post([alert(h, status="resolved") for h in host_ids])

    def warn(self, host_id: str, *, resolved: bool = False) -> dict[str, Any]:
        """The rules' prevention alert (a gentle ladder before the host is critical)."""
        return self._post(
            [alert(host_id, status="resolved" if resolved else "firing", alertname="SyncLagWarning")]
        )

    def maintenance(self, host_id: str | None, *, firing: bool) -> dict[str, Any]:
        """The rules' hold alert: while it fires, mutating steps wait (its host's, or every host's)."""
        return self._post(
            [alert(host_id, status="firing" if firing else "resolved", alertname="RingRiftMaintenance")]
        )

    def freeze(self, host_id: str | None = None, *, seconds: float | None = None) -> int:
        body: dict[str, Any] = {"reason": "change window"}
        if host_id is not None:
            body["host_id"] = host_id
        if seconds is not None:
            body["duration_seconds"] = seconds
        return self.http.post("/api/v1/freeze", json=body, headers=bearer(ADMIN_TOKEN)).status_code

    def unfreeze(self, host_id: str | None = None) -> int:
        query = f"?host_id={host_id}" if host_id else ""
        return self.http.delete(f"/api/v1/freeze{query}", headers=bearer(ADMIN_TOKEN)).status_code

    def approve(self, host_id: str, *, yes: bool) -> int:
        body = {"approve": yes, "reason": "looked at it"}
        return self.http.post(
            f"/api/v1/hosts/{host_id}/approve", json=body, headers=bearer(ADMIN_TOKEN)
        ).status_code

    def _post(self, alerts: list[dict[str, Any]]) -> dict[str, Any]:
        resp = self.http.post(
            "/webhook/alertmanager",
            data=json.dumps(payload(alerts)),
            content_type="application/json",
            headers=bearer(WEBHOOK_TOKEN),
        )
        assert resp.status_code == 202, resp.get_data(as_text=True)
        return resp.get_json()

    def remediate(self, host_id: str, *, dry_run: bool = False) -> dict[str, Any]:
        resp = self.http.post(
            f"/api/v1/hosts/{host_id}/remediate", json={"dry_run": dry_run}, headers=bearer(ADMIN_TOKEN)
        )
        assert resp.status_code in (200, 202, 409), resp.get_data(as_text=True)
        return resp.get_json()

    def close_incident(self, host_id: str) -> int:
        resp = self.http.post(
            f"/api/v1/hosts/{host_id}/incident/close",
            json={"reason": "fixed by hand"},
            headers=bearer(ADMIN_TOKEN),
        )
        return resp.status_code

    # -- reading the remediator's side (host, audit, steps and active come from HostReads) ----------
    def ledger(self) -> list[dict[str, Any]]:
        path = Path(self.settings.ledger_file)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def run(self, seconds: float = 0.0) -> None:
        """Run every job now due, then let ``seconds`` of virtual time pass with workers busy."""
        self.driver.run_until_quiet()
        if seconds:
            self.driver.run_for(seconds)

    def finish(self, host_id: str, within: float = 900.0, step: float = 5.0) -> dict[str, Any]:
        """Let time pass until the host's ladder has finished (or ``within`` virtual seconds)."""
        waited = 0.0
        self.driver.run_until_quiet()
        while self.host(host_id).get("status") != "finished" and waited < within:
            self.driver.run_for(step)
            waited += step
        state = self.host(host_id)
        assert state.get("status") == "finished", (
            f"{host_id} not finished after {within}s: {self.steps(host_id)[-6:]}"
        )
        return state


def _app_overrides(settings: Settings) -> dict[str, Any]:
    """The worker's settings the receiver shares (dry run, queue, rules, coordinator)."""
    return {
        "dry_run": settings.dry_run,
        "rules_file": settings.rules_file,
        "queue": settings.queue,
        "coordinator_url": settings.coordinator_url,
        "coordinator_admin_key": settings.coordinator_admin_key,
    }


def fast_rules(tmp: Path, **changes: Any) -> Path:
    """tests/rules/fast.yaml with ``section.key`` values replaced (``"ladder.deadline_minutes": 2``)."""
    import yaml

    source = Path(__file__).parent / "rules" / "fast.yaml"
    data = yaml.safe_load(source.read_text())
    for dotted, value in changes.items():
        node = data
        *path, last = dotted.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    target = tmp / f"rules-{abs(hash(json.dumps(changes, sort_keys=True, default=str))):x}.yaml"
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


class Current:
    """The harness in use: the process-wide patches (virtual time, lock and end tracking, observers)
    are installed once per test and read the current harness through this."""

    harness: Harness | None = None

    def driver(self) -> Driver | None:
        return self.harness.driver if self.harness else None


def install(monkeypatch: Any) -> Current:
    """Install, for the test, everything a harness needs in the process; returns the holder to set."""
    import workers.prefetch as ladder  # where a ladder's diagnoses are made (its first maybe ahead)

    current = Current()
    install_virtual_time(monkeypatch)
    install_lock_tracking(monkeypatch, current.driver)
    install_end_tracking(monkeypatch, current.driver)
    diagnose, close = ladder.diagnose, incidents.close

    def observed_diagnose(ctx: Any, host_id: str, since: float | None = None) -> Any:
        h = current.harness
        if h is None:
            return diagnose(ctx, host_id, since=since)
        first, at = len(h.log.calls), h.clock.now
        running = h.driver.current
        diag = diagnose(ctx, host_id, since=since)
        h.observed.diagnoses.append(
            {
                "diagnosis": diag,
                "first": first,
                "last": len(h.log.calls),
                "at": at,
                "job": running.job.id if running and running.job else None,
            }
        )
        return diag

    def observed_close(conn: Any, host_id: str, *, by: str, reason: str, expected: str = "") -> Any:
        closed = close(conn, host_id, by=by, reason=reason, expected=expected)
        h = current.harness
        if h is not None:
            h.observed.closes.append(
                {
                    "by": by,
                    "host": host_id,
                    "closed": closed.incident,
                    "at": h.clock.now,
                    "world": h.world.snapshot(host_id),
                }
            )
        return closed

    monkeypatch.setattr(ladder, "diagnose", observed_diagnose)
    monkeypatch.setattr(incidents, "close", observed_close)
    return current
