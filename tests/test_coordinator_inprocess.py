"""Inside the RingRift code base the remediator uses SyncCoordinator in-process instead of HTTP."""

from __future__ import annotations

import sys
import textwrap

import pytest

from remediator.clients.coordinator import HttpCoordinator, InProcessCoordinator, coordinator_from_settings
from remediator.config import Settings

MODULE = textwrap.dedent("""
    import asyncio

    CALLS = []

    class SyncCoordinator:
        _instance = None

        @classmethod
        def get_instance(cls):
            cls._instance = cls._instance or cls()
            return cls._instance

        def get_host_statuses(self):
            return {"h1": {"state": "critical", "last_sync": 100.0, "retired": False, "address": "10.0.0.1",
                           "ssh_user": "ringrift", "ssh_port": 22, "provider": "vast", "instance_id": "42",
                           "data_dir": "/data/selfplay"},
                    "bad;id": {"state": "critical"}}

        async def sync_host(self, host_id, force=False):
            await asyncio.sleep(0)
            CALLS.append((host_id, force))
            return True
""")


@pytest.fixture
def ringrift_on_path(tmp_path, monkeypatch):
    pkg = tmp_path / "app" / "coordination"
    pkg.mkdir(parents=True)
    (tmp_path / "app" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "sync_coordinator.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [m for m in sys.modules if m == "app" or m.startswith("app.")]:
        del sys.modules[name]


def test_in_process_backend_is_used_when_sync_coordinator_is_importable(ringrift_on_path):
    coordinator = coordinator_from_settings(Settings())
    assert isinstance(coordinator, InProcessCoordinator)
    hosts = coordinator.hosts()
    assert list(hosts) == ["h1"]  # an invalid host id from the coordinator is never used
    assert hosts["h1"].state == "critical" and hosts["h1"].last_sync == 100.0
    coordinator.force_sync("h1")
    from app.coordination import sync_coordinator

    assert sync_coordinator.CALLS == [("h1", True)]


def test_http_backend_is_used_outside_ringrift():
    assert isinstance(coordinator_from_settings(Settings()), HttpCoordinator)
