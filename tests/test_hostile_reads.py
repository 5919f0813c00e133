"""Hostile hosts and nosy readers against the deployed receiver (gunicorn): what each reader gets, how much.

Real ladders (``remediator worker`` against the simulated cluster over real SSH) record their evidence:
SSH users, addresses and ports, data paths, agent commands, an operator's address, and, for a host the
coordinator does not know, the coordinator log's lines about it, which carry megabyte lines and markup
(the hostile part: a host id is all it takes to get text into them). Then every read endpoint
and the webhook are called through gunicorn three ways: with no token, with the read token, with the
admin token. A reader without a token must see no secret, no SSH user, address or port, no data path,
no log line, no agent command and no operator address; a reader with either token must see that
evidence (so the search is not vacuous). No answer may exceed the size stated for it below.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from e2e import Receiver, Stack
from e2e import deployed as e2e_deployed
from helpers import alert, payload, wait_for

from remediator import store
from remediator.defaults import (
    AGENT_CHECK_COMMAND,
    AUDIT_ENTRY_MAX_BYTES,
    AUDIT_MAX_ENTRIES,
    AUDIT_PAGE_ENTRIES,
    MAX_BODY_BYTES,
)

WEBHOOK_TOKEN = "whk-HOSTILE-READS-7b1e0c2d"
ADMIN_TOKEN = "adm-HOSTILE-READS-4f9a6e31"
READ_TOKEN = "rdt-HOSTILE-READS-c3d85a07"
COORDINATOR_KEY = "coord-HOSTILE-READS-19e2b7f4"
TEN_MB = 10 * 1024 * 1024
MARKUP = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>&amp;"\''

# The sizes stated for answers (bytes). A summary carries no free text, so it stays small whatever the
# hosts say; a details page holds AUDIT_PAGE_ENTRIES entries of at most AUDIT_ENTRY_MAX_BYTES each as
# stored, which HTML-escaping can grow at most sixfold ('<' shown as \u003c inside the evidence).
SUMMARY_BOUND = 256 * 1024
DETAIL_PAGE_BOUND = AUDIT_PAGE_ENTRIES * 6 * AUDIT_ENTRY_MAX_BYTES + 256 * 1024
# The JSON detail is re-encoded from entries of at most AUDIT_ENTRY_MAX_BYTES, plus the state's fields.
API_PAGE_BOUND = AUDIT_PAGE_ENTRIES * AUDIT_ENTRY_MAX_BYTES + 256 * 1024
API_ALL_BOUND = AUDIT_MAX_ENTRIES * AUDIT_ENTRY_MAX_BYTES + 256 * 1024
# A webhook answer says what it did with each alert it was sent, so it is bounded by the body limit.
WEBHOOK_BOUND = 8 * MAX_BODY_BYTES

DEAD, OTHER = "host-01", "host-02"
GHOST = "ghost-9"  # alerted on, unknown to the coordinator


def _env_without_remediator() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("REMEDIATOR_", "REDIS_URL"))}


@pytest.fixture
def deployed(make_sim_cluster, redis_url, tmp_path, monkeypatch) -> Iterator[tuple[Stack, Receiver]]:
    sim = make_sim_cluster(hosts=2, admin_key=COORDINATOR_KEY)
    read_file = tmp_path / "read-token"
    read_file.write_text(READ_TOKEN + "\n")
    with e2e_deployed(
        sim,
        redis_url,
        tmp_path,
        monkeypatch,
        workers=1,
        REMEDIATOR_WEBHOOK_TOKEN=WEBHOOK_TOKEN,
        REMEDIATOR_ADMIN_TOKEN=ADMIN_TOKEN,
        REMEDIATOR_READ_TOKEN_FILE=str(read_file),
        REMEDIATOR_ALLOWED_HOSTS="localhost,127.0.0.1",
    ) as stack_and_receiver:
        yield stack_and_receiver


class Reader:
    """Calls the receiver as one kind of reader and keeps every answer (status line, headers, body)."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base
        self.token = token
        self.session = requests.Session()
        self.answers: list[tuple[str, requests.Response]] = []

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self.token and path.startswith("/api/"):
            headers["Authorization"] = f"Bearer {self.token}"
        resp = self.session.request(method, self.base + path, headers=headers, timeout=60, **kwargs)
        self.answers.append((f"{method} {path}", resp))
        return resp

    def read_everything(self, host_ids: list[str]) -> None:
        """Every read endpoint; the details form is posted with this reader's token (if any)."""
        for path in (
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/api/v1/hosts",
            "/api/v1/fleet",
            "/ui",
        ):
            assert self.call("GET", path).status_code == 200, path
        for host in host_ids:
            for path in (
                f"/api/v1/hosts/{host}",
                f"/api/v1/hosts/{host}?limit={AUDIT_MAX_ENTRIES}",
                f"/api/v1/hosts/{host}?limit=10&offset=5",
                f"/ui/hosts/{host}",
                f"/ui/hosts/{host}?page=2",
                f"/ui/hosts/{host}/details",
                f"/ui/admin?host_id={host}",
            ):
                assert self.call("GET", path).status_code == 200, path
            posted = self.call("POST", f"/ui/hosts/{host}/details", data={"token": self.token or ""})
            assert posted.status_code == (200 if self.token else 401)

    def text(self) -> str:
        return "\n".join(
            f"{what} -> {r.status_code}\n{dict(r.headers)}\n{r.text}" for what, r in self.answers
        )


def private_strings(stack: Stack, host_ids: list[str]) -> dict[str, str]:
    """What a reader without a token must not see: name -> the string."""
    sim = stack.sim
    out = {
        "webhook token": WEBHOOK_TOKEN,
        "admin token": ADMIN_TOKEN,
        "read token": READ_TOKEN,
        "coordinator admin key": COORDINATOR_KEY,
        "Vast.ai key": sim.vast_api_key,
        "Lambda key": sim.lambda_api_key,
        "SSH user@": f"{sim.ssh_user}@",
        "host and operator address": "127.0.0.1",
        "agent check command": AGENT_CHECK_COMMAND,
        "coordinator log line": "COORD-LOG-MARKER",
        "4 MB coordinator log line": "HOSTILE-4MB-LINE",
        "markup from a log": "document.title",
        "simulated cluster's root": str(sim.root),
    }
    for host in host_ids:
        out[f"{host} SSH port"] = f":{sim.host(host).ssh_port}"
        out[f"{host} data dir"] = str(sim.host(host).data_dir)
    return out


def hostile_logs(stack: Stack) -> None:
    """The coordinator's log says hostile things about a host it does not know (diagnosis records its
    lines about such a host) and about a known one; the known one's sync log carries a 10 MB line."""
    with stack.sim.coordinator_log.open("a") as log:
        log.write(f"coordinator: unknown host {GHOST} COORD-LOG-MARKER {MARKUP}\n")
        # 4 MB: diagnosis searches the coordinator log's last 8 MB, from a line boundary.
        log.write(f"coordinator: {GHOST} HOSTILE-4MB-LINE " + "é<" * (4 * 1024 * 1024 // 3) + "\n")
        log.write(f"coordinator: {DEAD} refused COORD-LOG-MARKER {MARKUP}\n")
    with stack.sim.host(DEAD).sync_log.open("a") as log:
        log.write("sync_agent: HOSTILE-10MB-LINE " + "x" * TEN_MB + "\n")


def test_hostile_evidence_reaches_token_holders_bounded_and_no_one_else(deployed):
    stack, receiver = deployed
    sim = stack.sim
    hostile_logs(stack)
    sim.kill_agent(DEAD)
    sim.make_critical(DEAD)
    hosts = [DEAD, OTHER, GHOST]

    anonymous = Reader(receiver.url, None)
    for token in (None, "wrong", ADMIN_TOKEN, READ_TOKEN):  # only the webhook token opens the webhook
        headers = {"Content-Type": "application/json"} | (
            {"Authorization": f"Bearer {token}"} if token else {}
        )
        refused = anonymous.call(
            "POST", "/webhook/alertmanager", data=json.dumps(payload([alert(DEAD)])), headers=headers
        )
        assert refused.status_code == 401
    hook = requests.post(
        receiver.webhook_url,
        json=payload([alert(h) for h in hosts]),
        headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
        timeout=30,
    )
    assert hook.status_code == 202, hook.text
    for host in hosts:
        stack.wait_finished(host, timeout=150)
    # An operator starts one by hand: their address goes into the reason and the audit.
    manual = requests.post(
        f"{receiver.url}/ui/remediate",
        data={"host_id": OTHER, "token": ADMIN_TOKEN, "dry_run": "1"},
        timeout=30,
    )
    assert manual.status_code == 202
    wait_for(
        lambda: any("manual remediate" in e.get("detail", "") for e in stack.audit(OTHER)),
        what="manual ladder",
    )
    stack.wait_finished(OTHER, timeout=150)

    readers = {
        "no token": anonymous,
        "read token": Reader(receiver.url, READ_TOKEN),
        "admin token": Reader(receiver.url, ADMIN_TOKEN),
    }
    for reader in readers.values():
        reader.read_everything(hosts)

    private = private_strings(stack, [DEAD, OTHER])
    seen = anonymous.text()
    assert [name for name, value in private.items() if value in seen] == []
    assert "REDACTED" not in seen  # nothing secret was even near an answer
    secrets = {k: v for k, v in private.items() if "token" in k or "key" in k}
    for name in ("read token", "admin token"):
        text = readers[name].text()
        assert [k for k, v in secrets.items() if v in text] == [], name
        # The evidence is there for a token holder: the search above is not vacuous.
        evidence = {k: v for k, v in private.items() if k not in secrets and k != "simulated cluster's root"}
        assert [k for k, v in evidence.items() if v not in text] == [], name
        assert "[truncated " in text, name  # the megabyte lines, cut where they were stored

    for name, reader in readers.items():
        for what, resp in reader.answers:
            assert len(resp.content) <= bound(what, name), (name, what, len(resp.content))
    # The hostile markup never reaches a page unescaped.
    for reader in readers.values():
        for what, resp in reader.answers:
            if resp.headers.get("Content-Type", "").startswith("text/html"):
                assert "<script>" not in resp.text and "<img src" not in resp.text, what


def bound(what: str, reader: str) -> int:
    """The size stated for the answer to ``what`` (method and path) for this kind of reader."""
    if reader == "no token" or what.startswith("POST /webhook"):
        return SUMMARY_BOUND
    if f"limit={AUDIT_MAX_ENTRIES}" in what:
        return API_ALL_BOUND
    if what.startswith("GET /api/"):
        return API_PAGE_BOUND
    return DETAIL_PAGE_BOUND


def test_a_full_audit_of_worst_case_entries_keeps_every_answer_within_its_stated_size(
    redis_url, redis_conn, tmp_path
):
    """AUDIT_MAX_ENTRIES entries, each as large as an entry is stored and made of the text that grows most
    when shown ('<' in HTML, control and non-ASCII characters in JSON), written through store.append_audit
    as the workers write them; then every reader reads everything."""
    grows_in_html, grows_in_json = "<" * 4096, "\x01é\u2028" * 1400
    for i in range(AUDIT_MAX_ENTRIES + 5):
        # As much of each as fits in one stored entry (JSON escapes grow a string threefold).
        evidence = {"host_log_tail": [grows_in_html] * 2} if i % 2 else {}
        blob = grows_in_html if i % 2 else grows_in_json
        entry = store.append_audit(
            redis_conn, DEAD, "diagnose", "done", blob, ladder_id="L1", n=i, **evidence
        )
        assert len(store.encode_audit(entry)) > AUDIT_ENTRY_MAX_BYTES // 2  # near the limit, not cut to ids
    store.update_host(
        redis_conn, DEAD, status="running", step="diagnose", ladder_id="L1", outcome_detail=grows_in_html * 9
    )
    env = _env_without_remediator() | {
        "REDIS_URL": redis_url,
        "REMEDIATOR_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        "REMEDIATOR_ADMIN_TOKEN": ADMIN_TOKEN,
        "REMEDIATOR_READ_TOKEN": READ_TOKEN,
        "REMEDIATOR_ALLOWED_HOSTS": "localhost,127.0.0.1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }
    (tmp_path / "prom").mkdir()
    receiver = Receiver(env, tmp_path / "receiver.log").start()
    try:
        sizes: dict[str, int] = {}
        for name, token in (("no token", None), ("read token", READ_TOKEN), ("admin token", ADMIN_TOKEN)):
            reader = Reader(receiver.url, token)
            reader.read_everything([DEAD])
            for what, resp in reader.answers:
                assert len(resp.content) <= bound(what, name), (name, what, len(resp.content))
                sizes[f"{name}: {what}"] = len(resp.content)
        # A webhook body at the limit, made of what grows most in the answer (skipped alerts echo labels).
        alerts = [alert(f"h{i}", alertname="é" * 4000) for i in range(60)]
        body = json.dumps(payload(alerts), ensure_ascii=False).encode()
        assert len(body) <= MAX_BODY_BYTES
        hook = requests.post(
            receiver.webhook_url,
            data=body,
            headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert hook.status_code == 202 and len(hook.content) <= WEBHOOK_BOUND, len(hook.content)
        sizes["webhook: POST /webhook/alertmanager (1 MiB of skipped alerts)"] = len(hook.content)
        report = Path(os.environ.get("HOSTILE_READS_SIZES", str(tmp_path / "sizes.json")))
        report.write_text(json.dumps(dict(sorted(sizes.items(), key=lambda kv: -kv[1])), indent=1))
        # The summaries stayed small although every entry was stored at its limit.
        assert max(v for k, v in sizes.items() if k.startswith("no token")) <= SUMMARY_BOUND
        assert (
            sizes[f"read token: GET /api/v1/hosts/{DEAD}?limit={AUDIT_MAX_ENTRIES}"]
            > AUDIT_MAX_ENTRIES * 1024
        )
    finally:
        receiver.stop()


def test_a_rebinding_page_cannot_read_through_an_operator_s_browser(redis_url, redis_conn, tmp_path):
    """A page on attacker.example whose name resolves to the receiver: the browser sends that name as Host."""
    store.append_audit(redis_conn, DEAD, "diagnose", "done", "ssh root@10.1.2.3:22 failed")
    env = _env_without_remediator() | {
        "REDIS_URL": redis_url,
        "REMEDIATOR_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        "REMEDIATOR_ALLOWED_HOSTS": "localhost,127.0.0.1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }
    (tmp_path / "prom").mkdir()
    receiver = Receiver(env, tmp_path / "receiver.log").start()
    try:
        rebinding = {"Host": f"attacker.example:{receiver.port}"}
        for path in (
            "/api/v1/hosts",
            f"/api/v1/hosts/{DEAD}",
            "/api/v1/fleet",
            "/ui",
            f"/ui/hosts/{DEAD}",
            "/openapi.json",
        ):
            resp = requests.get(receiver.url + path, headers=rebinding, timeout=10)
            assert resp.status_code == 421 and DEAD not in resp.text and "10.1.2.3" not in resp.text, path
            assert requests.get(receiver.url + path, timeout=10).status_code == 200, path
        assert requests.get(receiver.url + "/healthz", headers=rebinding, timeout=10).status_code == 200
    finally:
        receiver.stop()
