"""AlertmanagerProcess: the real prometheus-alertmanager on loopback, for the e2e tests and the demo."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import require_binary
from helpers import wait_for
from pytest_httpserver import HTTPServer

from remediator.sim.alertmanager import AlertmanagerProcess

TOKEN = "am-webhook-token-3f9e1c7a"


@pytest.fixture(autouse=True)
def _binary() -> None:
    require_binary("prometheus-alertmanager")


@pytest.fixture
def webhook() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0)
    server.expect_request("/webhook/alertmanager", method="POST").respond_with_json({}, status=202)
    server.start()
    yield server
    server.clear()
    server.stop()


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def alert(host_id: str) -> dict[str, object]:
    return {
        "labels": {"alertname": "CriticalSyncHosts", "host_id": host_id, "severity": "critical"},
        "annotations": {"summary": f"{host_id} sync critical"},
    }


def test_a_posted_alert_reaches_the_webhook_with_the_bearer_token(
    tmp_path: Path, webhook: HTTPServer
) -> None:
    with AlertmanagerProcess(tmp_path, webhook.url_for("/webhook/alertmanager"), bearer_token=TOKEN) as am:
        am.post_alerts([alert("gpu-3")])

        [listed] = am.alerts()
        assert listed["labels"]["host_id"] == "gpu-3" and listed["status"]["state"] == "active"
        request, _ = wait_for(lambda: webhook.log)[0]  # type: ignore[index]
        pid = am.pid

    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    body = json.loads(request.get_data())
    assert body["version"] == "4" and body["status"] == "firing"
    assert [a["labels"]["host_id"] for a in body["alerts"]] == ["gpu-3"]
    assert pid is not None and process_gone(pid)


def test_the_token_is_kept_out_of_the_config_file(tmp_path: Path) -> None:
    am = AlertmanagerProcess(tmp_path, "http://127.0.0.1:1/hook", bearer_token=TOKEN)
    config = am.config()
    authorization = config["receivers"][0]["webhook_configs"][0]["http_config"]["authorization"]
    assert authorization["type"] == "Bearer"
    assert Path(authorization["credentials_file"]).read_text() == TOKEN
    assert Path(authorization["credentials_file"]).stat().st_mode & 0o077 == 0
    assert TOKEN not in yaml.safe_dump(config)


def test_basic_auth_and_resolved_notifications(tmp_path: Path, webhook: HTTPServer) -> None:
    with AlertmanagerProcess(
        tmp_path, webhook.url_for("/webhook/alertmanager"), basic_auth=("alertmanager", "pw-s3cret")
    ) as am:
        am.post_alerts([alert("gpu-4")])
        wait_for(lambda: webhook.log)
        am.post_alerts(
            [{**alert("gpu-4"), "endsAt": "2000-01-01T00:00:00Z", "startsAt": "2000-01-01T00:00:00Z"}]
        )

        def resolved() -> bool:
            return any(json.loads(r.get_data())["status"] == "resolved" for r, _ in webhook.log)

        wait_for(resolved)
        assert am.alerts() == []

    expected = "Basic " + base64.b64encode(b"alertmanager:pw-s3cret").decode()
    assert {r.headers["Authorization"] for r, _ in webhook.log} == {expected}


def test_two_instances_gossip_as_an_ha_pair(tmp_path: Path, webhook: HTTPServer) -> None:
    url = webhook.url_for("/webhook/alertmanager")
    with AlertmanagerProcess(tmp_path / "a", url, cluster=True) as first:
        assert first.cluster_address is not None
        with AlertmanagerProcess(tmp_path / "b", url, peers=[first.cluster_address]) as second:

            def peers() -> int:
                status = second._session.get(second.url + "/api/v2/status", timeout=5).json()
                return len(status["cluster"]["peers"] or [])

            assert wait_for(lambda: peers() == 2)
            pids = [first.pid, second.pid]

    assert all(pid is not None and process_gone(pid) for pid in pids)


def test_stop_is_idempotent_and_leaves_no_process(tmp_path: Path) -> None:
    am = AlertmanagerProcess(tmp_path, "http://127.0.0.1:1/hook")
    with pytest.raises(RuntimeError, match="not started"):
        _ = am.url
    am.start()
    pid = am.pid
    am.stop()
    am.stop()
    assert pid is not None and process_gone(pid) and am.pid is None
