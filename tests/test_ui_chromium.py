"""The status page in a real headless Chromium: it loads, shows a seeded host's step and timeline, and is
screenshotted; plus the admin forms and escaping, through the Flask test client."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import require_binary
from helpers import ADMIN_TOKEN, READ_TOKEN, WEBHOOK_TOKEN
from ops_helpers import PRIVATE, QUEUE, run_jobs_failing, seed_evidence, seed_host, start_ladder
from rq import Queue
from werkzeug.serving import make_server

from remediator import keys, outcomes, store

CHROMIUM_TIMEOUT = 90  # seconds one headless Chromium run may take
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "status-page.png"
HOSTILE = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'


@pytest.fixture
def served(app) -> Iterator[str]:
    """The app served over HTTP on a loopback port, for the browser."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="ui-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or require_binary("/usr/bin/chromium")
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, check=False)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


def dump_dom(tmp_path: Path, url: str) -> str:
    return chromium(tmp_path, "--dump-dom", url).stdout


def seed_fleet(conn: redis.Redis) -> None:
    """A fleet worth looking at: hosts at different places on the ladder, a storm, a paused host, a page."""
    now = time.time()
    seed_host(conn, "gpu-node-07")
    store.update_host(
        conn,
        "vast-31",
        ladder_id="lv31",
        job_id="jv31",
        status="finished",
        step="force_sync",
        phase="done",
        attempt=1,
        outcome="healthy",
        outcome_detail="last_sync advanced",
        started_at=f"{now - 400:.3f}",
        plan=[["force_sync"], ["restart_agent", "force_sync"]],
    )
    for step, outcome in (
        ("diagnose", "done"),
        ("force_sync", "ran"),
        ("force_sync", "verify-ok"),
        ("ladder", "healthy"),
    ):
        store.append_audit(conn, "vast-31", step, outcome, "", ladder_id="lv31")
    for i in range(20):  # what healed what: the learning table
        outcomes.add(conn, "agent-wedged", "force_sync", i < 3, 4.0)
        outcomes.add(conn, "agent-wedged", "restart_agent", i < 19, 9.0 + i % 3)
        outcomes.add(conn, "agent-dead", "restart_agent", True, 6.0)
    store.update_host(
        conn,
        "lambda-12",
        ladder_id="ll12",
        job_id="jl12",
        status="waiting",
        step="wait_reachable",
        phase="verify",
        attempt=1,
        outcome="running",
        waiting_for="ssh not reachable yet",
        started_at=f"{now - 900:.3f}",
        plan=[["wait_reachable"], ["escalate"]],
    )
    store.append_audit(
        conn, "lambda-12", "diagnose", "done", "plan: wait_reachable | escalate", ladder_id="ll12"
    )
    store.update_host(
        conn,
        "old-box-2",
        ladder_id="lo2",
        job_id="jo2",
        status="finished",
        step="escalate",
        phase="done",
        attempt=1,
        outcome="failed",
        outcome_detail="ladder exhausted: paged on-call",
        started_at=f"{now - 5000:.3f}",
        plan=[["unretire"], ["restart_agent", "force_sync"], ["recover_data", "escalate"]],
    )
    for step, outcome in (
        ("diagnose", "done"),
        ("unretire", "verify-ok"),
        ("restart_agent", "failed"),
        ("recover_data", "verify-ok"),
        ("escalate", "ran"),
        ("ladder", "failed"),
    ):
        store.append_audit(conn, "old-box-2", step, outcome, "", ladder_id="lo2")
    conn.zadd(keys.FLEET_CRITICAL, {"gpu-node-07": now - 20, "lambda-12": now - 60, "old-box-2": now - 120})
    conn.hset(
        keys.FLEET, mapping={"storm": "1", "storm_id": "3f9c2a1b7d4e", "storm_started_at": f"{now - 120:.3f}"}
    )
    conn.sadd(keys.PAUSED, "gpu-node-07", "lambda-12")
    conn.sadd(keys.PAGES, "remediator/storm/3f9c2a1b7d4e")
    conn.hset(
        keys.PAGE.format("remediator/storm/3f9c2a1b7d4e"),
        mapping={
            "dedup_key": "remediator/storm/3f9c2a1b7d4e",
            "kind": "storm",
            "state": "delivered",
            "summary": "sync storm: 3 hosts critical",
            "severity": "critical",
            "hosts": json.dumps({h: "critical" for h in ("gpu-node-07", "lambda-12", "old-box-2")}),
            "created_at": f"{now - 100:.3f}",
            "delivered_at": f"{now - 99:.3f}",
        },
    )


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# -- in Chromium ---------------------------------------------------------------------------------------


def test_status_page_in_chromium_shows_the_seeded_hosts_current_step_and_the_fleet(
    served, redis_conn, tmp_path
):
    seed_fleet(redis_conn)
    dom = dump_dom(tmp_path, f"{served}/ui")
    assert '<meta http-equiv="refresh" content="5">' in dom
    assert 'data-host="gpu-node-07"' in dom
    assert 'data-step="restart_agent" data-mark="current"' in dom
    assert 'data-step="force_sync" data-mark="failed"' in dom
    assert 'data-step="diagnose" data-mark="ok"' in dom
    assert "ACTIVE" in dom and "3f9c2a1b7d4e" in dom  # the storm
    assert "remediator/storm/3f9c2a1b7d4e" in dom  # the open page (its text needs the read token)
    assert 'type="password"' not in dom  # the forms live on /ui/admin, which does not refresh
    assert 'href="/ui/admin"' in dom
    assert 'data-signature="agent-wedged" data-step="restart_agent"' in dom and "19 / 20" in dom  # learned


def test_admin_page_in_chromium_has_token_forms_and_does_not_refresh(served, redis_conn, tmp_path):
    seed_host(redis_conn, "gpu-node-07")
    dom = dump_dom(tmp_path, f"{served}/ui/admin?host_id=gpu-node-07")
    assert 'http-equiv="refresh"' not in dom
    assert dom.count('type="password" name="token"') == 5 and ADMIN_TOKEN not in dom
    assert 'name="host_id" value="gpu-node-07"' in dom
    assert 'action="/ui/remediate"' in dom and 'action="/ui/requeue"' in dom


def post_form(tmp_path: Path, url: str, fields: dict[str, str]) -> str:
    """The DOM Chromium shows after posting ``fields`` to ``url`` as a form, as a person typing them would.

    The form is on a local page of its own that submits itself (the remediator's pages run no script);
    --virtual-time-budget makes headless Chromium dump the DOM of the page the post navigated to."""
    inputs = "".join(f'<input name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in fields.items())
    page = tmp_path / f"post-{time.monotonic_ns()}.html"
    page.write_text(
        f'<!doctype html><form method="post" action="{html.escape(url)}">{inputs}</form>'
        "<script>document.forms[0].submit()</script>"
    )
    return chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()).stdout


def test_host_page_in_chromium_shows_the_timeline_steps_and_no_evidence_without_the_read_token(
    served, redis_conn, tmp_path
):
    seed_evidence(redis_conn, "gpu-node-07")
    dom = dump_dom(tmp_path, f"{served}/ui/hosts/gpu-node-07")
    assert '<meta http-equiv="refresh" content="5">' in dom
    assert 'class="entry" data-step="force_sync" data-outcome="verify-failed"' in dom
    assert "restart_agent (run), attempt 1" in dom
    assert [p for p in PRIVATE if p in dom] == []
    assert "last_sync did not advance" not in dom and "last_sync_after" not in dom  # detail, evidence
    assert 'href="/ui/hosts/gpu-node-07/details"' in dom and 'type="password"' not in dom


def test_details_posted_with_the_read_token_in_chromium_show_the_timeline_with_evidence(
    served, redis_conn, tmp_path
):
    seed_evidence(redis_conn, "gpu-node-07")
    form = dump_dom(tmp_path, f"{served}/ui/hosts/gpu-node-07/details")
    assert 'http-equiv="refresh"' not in form and 'type="password" name="token"' in form
    assert 'action="/ui/hosts/gpu-node-07/details"' in form
    dom = post_form(tmp_path, f"{served}/ui/hosts/gpu-node-07/details", {"token": READ_TOKEN, "page": "1"})
    assert 'data-view="detail"' in dom and 'http-equiv="refresh"' not in dom
    assert 'class="entry" data-step="force_sync" data-outcome="verify-failed"' in dom
    assert "last_sync did not advance" in dom and "last_sync_after" in dom
    assert [p for p in PRIVATE if p not in dom] == []
    assert READ_TOKEN not in dom  # the token is never put in the page


def test_hostile_audit_text_is_escaped_and_never_runs_in_chromium(served, redis_conn, tmp_path):
    seed_host(redis_conn, "gpu-node-07")
    store.append_audit(redis_conn, "gpu-node-07", "force_sync", "failed", HOSTILE, evidence=HOSTILE)
    store.update_host(redis_conn, "gpu-node-07", outcome_detail=HOSTILE)
    details = post_form(tmp_path, f"{served}/ui/hosts/gpu-node-07/details", {"token": READ_TOKEN})
    summaries = [dump_dom(tmp_path, served + page) for page in ("/ui", "/ui/hosts/gpu-node-07")]
    for dom in (details, *summaries):
        assert "pwned" not in dom.split("<title>")[1].split("</title>")[0]
        assert "<img src" not in dom and "<script>" not in dom
    assert "&lt;img src=x" in details  # shown, escaped, to a reader with the token
    assert all("img src" not in dom for dom in summaries)  # not shown at all without it


def test_status_page_screenshot_is_a_png_of_the_window_size(served, redis_conn, tmp_path):
    seed_fleet(redis_conn)
    shot = tmp_path / "status-page.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", f"{served}/ui")
    assert shot.exists() and png_size(shot) == (1280, 900)
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)


# -- pages and forms (test client) ---------------------------------------------------------------------


def test_host_page_of_a_host_with_an_audit_but_no_state_renders_its_timeline(client, redis_conn):
    # A resolved alert for a host the remediator never worked on left an audit entry and no state; the
    # page answered 500 (a missing started_at in the template's time filter).
    store.append_audit(redis_conn, "never-remediated", "intake", "resolved", "alert resolved; no ladder")
    resp = client.get("/ui/hosts/never-remediated")
    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    assert 'data-step="intake" data-outcome="resolved"' in page
    assert client.get("/api/v1/hosts/never-remediated").status_code == 200


def test_pages_carry_a_strict_content_security_policy(client, redis_conn):
    seed_host(redis_conn, "gpu-node-07")
    for page in ("/ui", "/ui/hosts/gpu-node-07"):
        resp = client.get(page)
        assert resp.status_code == 200 and resp.mimetype == "text/html"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        assert "http://" not in resp.get_data(as_text=True).split("<body>")[0]  # no external assets


def test_host_page_is_422_for_an_invalid_host_id_and_404_for_an_unknown_one(client):
    assert client.get("/ui/hosts/a;reboot").status_code == 422
    assert client.get("/ui/hosts/unknown-host").status_code == 404


@pytest.mark.parametrize("guess", [ADMIN_TOKEN, WEBHOOK_TOKEN])
def test_host_page_of_an_unknown_host_is_the_same_for_any_id_even_a_configured_secret(client, guess):
    reference = client.get("/ui/hosts/never-seen")
    resp = client.get(f"/ui/hosts/{guess}")
    assert resp.status_code == reference.status_code == 404
    assert strip_clock(resp.get_data(as_text=True)) == strip_clock(reference.get_data(as_text=True))
    assert "REDACTED" not in resp.get_data(as_text=True)
    assert "never-seen" not in reference.get_data(as_text=True)


@pytest.mark.parametrize("guess", [ADMIN_TOKEN, WEBHOOK_TOKEN, "never-seen"])
def test_admin_page_prefills_only_a_host_the_remediator_knows(client, redis_conn, guess):
    seed_host(redis_conn, "gpu-node-07")
    known = client.get("/ui/admin?host_id=gpu-node-07").get_data(as_text=True)
    assert known.count('name="host_id" value="gpu-node-07"') == 3  # remediate, requeue, approve
    reference = client.get("/ui/admin").get_data(as_text=True)
    page = client.get(f"/ui/admin?host_id={guess}").get_data(as_text=True)
    assert strip_clock(page) == strip_clock(reference)  # nothing of the guess, redacted or not
    assert "REDACTED" not in page


def strip_clock(html: str) -> str:
    """The page without the time it was rendered at (the header shows it)."""
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "", html)


def test_status_pages_without_the_read_token_show_no_address_user_port_path_log_line_or_evidence(
    client, redis_conn
):
    seed_evidence(redis_conn, "gpu-node-07")
    for page in (
        "/ui",
        "/ui/hosts/gpu-node-07",
        "/ui/hosts/gpu-node-07/details",
        "/ui/admin?host_id=gpu-node-07",
    ):
        resp = client.get(page)
        assert resp.status_code == 200, page
        text = resp.get_data(as_text=True)
        assert [p for p in PRIVATE if p in text] == [], page


@pytest.mark.parametrize("token", ["", "wrong", WEBHOOK_TOKEN, READ_TOKEN + "x"])
def test_details_form_refuses_a_wrong_token_with_401_and_shows_nothing(client, redis_conn, token):
    seed_evidence(redis_conn, "gpu-node-07")
    resp = client.post("/ui/hosts/gpu-node-07/details", data={"token": token})
    assert resp.status_code == 401 and "read token" in resp.get_data(as_text=True)
    assert [p for p in PRIVATE if p in resp.get_data(as_text=True)] == []


@pytest.mark.parametrize("token", [READ_TOKEN, ADMIN_TOKEN], ids=["read token", "admin token"])
def test_details_form_with_the_read_or_admin_token_shows_every_piece_of_evidence(client, redis_conn, token):
    seed_evidence(redis_conn, "gpu-node-07")
    resp = client.post("/ui/hosts/gpu-node-07/details", data={"token": token})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 200 and 'http-equiv="refresh"' not in page
    assert [p for p in PRIVATE if p not in page] == [] and token not in page


def test_host_page_shows_the_newest_100_entries_and_pages_through_the_rest(client, redis_conn):
    for i in range(250):
        store.append_audit(redis_conn, "h1", "diagnose", f"outcome-{i:03d}")
    first = client.get("/ui/hosts/h1").get_data(as_text=True)
    outcomes = re.findall(r'data-outcome="outcome-(\d+)"', first)
    assert outcomes == [f"{i:03d}" for i in range(249, 149, -1)]  # newest first
    assert "entries 151\u2013250 of 250" in first and 'href="/ui/hosts/h1?page=2"' in first
    last = client.get("/ui/hosts/h1?page=3").get_data(as_text=True)
    assert re.findall(r'data-outcome="outcome-(\d+)"', last) == [f"{i:03d}" for i in range(49, -1, -1)]
    assert 'href="/ui/hosts/h1?page=2"' in last and "?page=4" not in last
    detail = client.post("/ui/hosts/h1/details", data={"token": READ_TOKEN, "page": "2"}).get_data(
        as_text=True
    )
    assert re.findall(r'data-outcome="outcome-(\d+)"', detail)[0] == "149"
    for bad in ("0", "11", "x", "-1", "01"):
        assert client.get(f"/ui/hosts/h1?page={bad}").status_code == 400, bad


HOST_PAGE_BOUND = 128 * 1024  # bytes: the host page with a 10 MB evidence entry (it was 63 MB)


def test_a_10_mb_evidence_entry_keeps_the_host_page_under_128_kib(client, redis_conn):
    seed_host(redis_conn, "gpu-node-07")
    store.append_audit(
        redis_conn,
        "gpu-node-07",
        "diagnose",
        "done",
        "tail",
        host_log_tail=['<&>"' * (10 * 1024 * 1024 // 4)],
    )
    store.update_host(redis_conn, "gpu-node-07", outcome_detail="x" * 10 * 1024 * 1024)
    summary = client.get("/ui/hosts/gpu-node-07")
    details = client.post("/ui/hosts/gpu-node-07/details", data={"token": READ_TOKEN})
    index = client.get("/ui")
    for resp in (summary, details, index):
        assert resp.status_code == 200 and len(resp.get_data()) < HOST_PAGE_BOUND, len(resp.get_data())
    assert "…[truncated " in details.get_data(as_text=True)


@pytest.mark.parametrize("token", ["", "wrong", ADMIN_TOKEN + "x"])
def test_admin_forms_refuse_a_wrong_token_and_change_nothing(client, redis_conn, token):
    resp = client.post("/ui/remediate", data={"host_id": "h1", "token": token})
    assert resp.status_code == 401 and "admin token" in resp.get_data(as_text=True)
    resp = client.post("/ui/requeue", data={"token": token})
    assert resp.status_code == 401
    assert Queue(QUEUE, connection=redis_conn).count == 0 and not redis_conn.exists(keys.HOST.format("h1"))


def test_remediate_form_with_the_admin_token_queues_one_ladder_then_409(client, redis_conn):
    resp = client.post("/ui/remediate", data={"host_id": "h1", "token": ADMIN_TOKEN, "dry_run": "1"})
    assert resp.status_code == 202
    page = resp.get_data(as_text=True)
    assert "dry-run ladder" in page and ADMIN_TOKEN not in page
    assert store.get_host(redis_conn, "h1")["dry_run"] == "1"
    again = client.post("/ui/remediate", data={"host_id": "h1", "token": ADMIN_TOKEN})
    assert again.status_code == 409 and "already remediating" in again.get_data(as_text=True)
    assert Queue(QUEUE, connection=redis_conn).count == 1


def test_requeue_form_resumes_a_failed_ladder_once(client, redis_conn, monkeypatch):
    ladder_id = start_ladder(redis_conn, "h1")
    run_jobs_failing(redis_conn, monkeypatch)
    resp = client.post("/ui/requeue", data={"token": ADMIN_TOKEN, "host_id": "h1"})
    assert resp.status_code == 202 and "resumed" in resp.get_data(as_text=True)
    again = client.post("/ui/requeue", data={"token": ADMIN_TOKEN, "job_id": ladder_id})
    assert again.status_code == 200 and "unchanged" in again.get_data(as_text=True)
    assert Queue(QUEUE, connection=redis_conn).count == 1
    assert client.post("/ui/requeue", data={"token": ADMIN_TOKEN, "job_id": "a;b"}).status_code == 422
