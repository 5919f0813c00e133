"""A rules file changed under a running receiver: reloaded without restart; a broken one is refused."""

from __future__ import annotations

import os
import re
from pathlib import Path

from helpers import alert, bearer, make_settings, payload

from remediator import create_app

FAST = Path(__file__).parent / "rules" / "fast.yaml"


def post(client, alertname: str) -> dict:
    resp = client.post(
        "/webhook/alertmanager", json=payload([alert("h1", alertname=alertname)]), headers=bearer()
    )
    assert resp.status_code == 202
    return resp.get_json()


def reload_failures(client) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    match = re.search(r"^remediator_rules_reload_failures_total (\S+)$", text, re.MULTILINE)
    return float(match.group(1))


def swap(link, target) -> None:
    """Replace the file the way a ConfigMap update does: a new file, then an atomic symlink swap."""
    tmp = link.with_suffix(".tmp")
    tmp.symlink_to(target)
    os.replace(tmp, link)


def test_receiver_follows_a_swapped_rules_file_and_keeps_the_old_one_when_the_new_is_broken(
    redis_url, redis_conn, tmp_path, monkeypatch
):
    original = FAST.read_text()
    v1 = tmp_path / "v1.yaml"
    v1.write_text(original)
    v2 = tmp_path / "v2.yaml"
    v2.write_text(
        original.replace("start_ladder: [CriticalSyncHosts]", "start_ladder: [CriticalSyncHosts, DiskFull]")
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text(original.replace("attempts_per_step: 2", "attempts_per_step: zero"))
    link = tmp_path / "rules.yaml"
    link.symlink_to(v1)
    app = create_app({"SETTINGS": make_settings(redis_url, rules_file=str(link))})
    watcher = app.extensions["rules"]
    monkeypatch.setattr(watcher, "min_interval", 0.0)  # look at the file on every request
    client = app.test_client()

    assert "does not start a ladder" in post(client, "DiskFull")["skipped"][0]["reason"]
    swap(link, v2)
    assert post(client, "DiskFull")["accepted"][0]["host_id"] == "h1"

    redis_conn.flushall()
    failures = reload_failures(client)
    swap(link, broken)
    # The broken file is refused: the v2 rules stay in force, and the failure is counted.
    assert post(client, "DiskFull")["accepted"][0]["host_id"] == "h1"
    assert reload_failures(client) == failures + 1
