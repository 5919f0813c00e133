"""The whole stack for end-to-end tests: receiver, real ``remediator worker`` processes, simulated cluster."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from helpers import WEBHOOK_TOKEN, HostReads, bearer, payload, wait_for

from remediator import create_app, keys
from remediator.config import Settings
from remediator.connections import redis_from_settings
from remediator.sim import SimCluster, procs

FAST_RULES = Path(__file__).parent / "rules" / "fast.yaml"


def rules_file(tmp: Path, **replacements: str) -> Path:
    """tests/rules/fast.yaml as ``tmp/rules.yaml``, each text ``old`` in it (which must be there) replaced
    by ``new``, in order: ``rules_file(tmp, **{"automatic: false": "automatic: true"})``."""
    text = FAST_RULES.read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp / "rules.yaml"
    path.write_text(text)
    return path


def steady_rules(tmp: Path) -> str:
    """The fast rules, but an incident stays open while its host is healthy (Alertmanager here
    re-sends every alert until the test ends: a closed incident would take a re-send as a new one)."""
    return str(rules_file(tmp, **{"healthy_for_minutes: 0.1 ": "healthy_for_minutes: 60  "}))


def pages_to(server: Any) -> dict[str, str]:
    """The environment that sends the remediator's webhook pages to the test's HTTP ``server``, which
    is told to answer every page 200: ``make_stack(..., **pages_to(server))``."""
    server.expect_request("/page", method="POST").respond_with_json({"ok": True})
    return {"REMEDIATOR_PAGE_WEBHOOK_URL": server.url_for("/page")}


def pages_received(server: Any) -> list[dict[str, Any]]:
    """Every page the test's HTTP ``server`` was sent so far, in order."""
    return [json.loads(req.get_data()) for req, _ in server.log]


@dataclass
class Stack(HostReads):
    sim: SimCluster
    conn: redis.Redis
    env: dict[str, str]
    tmp: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    app: Any = None

    def start_worker(self, *args: str) -> subprocess.Popen[bytes]:
        """``remediator worker`` with ``args`` (``--processes 3``, say), its output in workerN.log."""
        log = (self.tmp / f"worker{len(self.workers)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "remediator", "worker", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(proc)
        return proc

    def stop(self) -> None:
        # kill_worker, not killpg of the worker: a work horse runs in a group of its own and would
        # go on running its job against the next test's hosts.
        for proc in self.workers:
            if proc.poll() is None:
                kill_worker(proc)

    def post(self, alerts: list[dict[str, Any]]) -> dict[str, Any]:
        resp = self.app.test_client().post(
            "/webhook/alertmanager",
            data=json.dumps(payload(alerts)),
            content_type="application/json",
            headers=bearer(),
        )
        assert resp.status_code == 202, resp.get_data(as_text=True)
        return resp.get_json()

    def wait_finished(self, host_id: str, timeout: float = 90) -> dict[str, Any]:
        return wait_for(
            lambda: self.host(host_id) if self.host(host_id).get("status") == "finished" else None,
            timeout=timeout,
            interval=0.2,
            what=f"{host_id}'s ladder to finish (last: {self.steps(host_id)[-3:]})",
        )


def make_stack(sim: SimCluster, redis_url: str, tmp: Path, monkeypatch: Any, **extra_env: str) -> Stack:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REMEDIATOR_", "REDIS_"))}
    env.update(sim.env())
    env.update(
        {
            "REDIS_URL": redis_url,
            "REMEDIATOR_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
            "REMEDIATOR_RULES_FILE": str(FAST_RULES),
            "REMEDIATOR_SSH_CONNECT_TIMEOUT": "3",
            "REMEDIATOR_LEDGER_FILE": str(tmp / "ledger.jsonl"),
            "REMEDIATOR_LOCK_TTL": "6",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom"),
        }
    )
    env.update(extra_env)
    (tmp / "prom").mkdir(exist_ok=True)
    # The in-process receiver gets the remediator's settings; PROMETHEUS_MULTIPROC_DIR stays with the
    # worker processes: in this process prometheus_client would bind its metrics to it for good.
    for key in list(os.environ):
        if key.startswith(("REMEDIATOR_", "REDIS_")) and key not in env:
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(("REMEDIATOR_", "REDIS_")):
            monkeypatch.setenv(key, value)
    # The test's own client is built like the remediator's (Sentinel-aware when extra_env says so).
    conn = redis_from_settings(Settings.from_env(env))
    assert conn is not None
    stack = Stack(sim=sim, conn=conn, env=env, tmp=tmp)
    stack.app = create_app()
    return stack


@contextlib.contextmanager
def stack_running(
    sim: SimCluster, redis_url: str, tmp: Path, monkeypatch: Any, workers: int = 1, **extra_env: str
) -> Iterator[Stack]:
    """``make_stack`` with ``workers`` ``remediator worker`` processes started, all stopped after."""
    stack = make_stack(sim, redis_url, tmp, monkeypatch, **extra_env)
    try:
        for _ in range(workers):
            stack.start_worker()
        yield stack
    finally:
        stack.stop()


def running(command: str) -> bool:
    """Whether a live process runs exactly ``command`` (its argv, space-joined): "sleep 7.31" is the
    sleep itself, not the shell whose ``-c`` string merely contains it and starts before it."""
    return any(procs.cmdline(pid) == command for pid in procs.matching(command))


def kill_worker(proc) -> None:
    """SIGKILL a worker with its work horse, scheduler and their children, as a node failure would.
    RQ's work horse runs in a session of its own (setsid), so every descendant's group is killed."""
    pids = [proc.pid, *procs.children(proc.pid)]
    groups = set()
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            continue
    proc.wait()
    # SIGKILL is delivered asynchronously: give the kernel a moment, then name any survivor.
    try:
        wait_for(lambda: not [p for p in pids if procs.alive(p)], timeout=10, what="the killed worker to die")
    except AssertionError:
        survivors = {pid: procs.cmdline(pid) for pid in pids if procs.alive(pid)}
        raise AssertionError(f"processes of the killed worker survived: {survivors}") from None


# -- the receiver as deployed, and Alertmanager's side -------------------------------------------------


class Receiver:
    """``remediator serve`` (gunicorn) as a subprocess on a fixed loopback port, restartable on that
    port; stdout and stderr of every run are appended to one log file."""

    def __init__(self, env: dict[str, str], log: Path, port: int | None = None) -> None:
        from remediator.ports import free_port

        self.env = env
        self.log = log
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        return self.url + "/webhook/alertmanager"

    def start(self) -> Receiver:
        import requests

        argv = [sys.executable, "-m", "remediator", "serve", "--bind", f"127.0.0.1:{self.port}"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "--workers", "2", "--threads", "4"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def healthy() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"gunicorn exited:\n{self.log_tail()}"
            try:
                return requests.get(self.url + "/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(healthy, timeout=30, interval=0.1, what="the receiver to answer /healthz")
        return self

    def stop(self) -> None:
        """SIGTERM (gunicorn's graceful stop), SIGKILL of the group if it hangs; waits for the exit."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def lines(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far (gunicorn's access and error logs, the app's logs)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def webhook_codes(self) -> list[int]:
        """The answer codes of every webhook request, from gunicorn's access log, in order."""
        return [
            int(e["status"])
            for e in self.lines()
            if e.get("logger") == "remediator.access" and e.get("path") == "/webhook/alertmanager"
        ]

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def am_alert(host_id: str, resolved: bool = False) -> dict[str, Any]:
    """A CriticalSyncHosts alert as Prometheus posts it to Alertmanager's /api/v2/alerts; ``resolved``
    gives it an endsAt in the past, which is how Prometheus says it stopped firing."""
    body: dict[str, Any] = {
        "labels": {"alertname": "CriticalSyncHosts", "host_id": host_id, "severity": "critical"},
        "annotations": {"summary": f"{host_id} sync critical"},
    }
    if resolved:
        body["endsAt"] = "2000-01-01T00:00:01Z"
    return body


def prom_value(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples (with at least these labels) in Prometheus exposition text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


def ladders_started(conn: redis.Redis, host_id: str) -> int:
    """How many ladders the receiver ever started for the host (the intake's own record)."""
    return conn.zcard(keys.LADDER_STARTS.format(host_id))


@contextlib.contextmanager
def deployed(
    sim: SimCluster,
    redis_url: str,
    tmp: Path,
    monkeypatch: Any,
    workers: int = 1,
    **extra_env: str,
) -> Iterator[tuple[Stack, Receiver]]:
    """The remediator as deployed: the gunicorn receiver and RQ worker processes, all stopped after."""
    with stack_running(sim, redis_url, tmp, monkeypatch, workers, **extra_env) as stack:
        receiver = Receiver(stack.env, tmp / "receiver.log")
        try:
            receiver.start()
            yield stack, receiver
        finally:
            receiver.stop()
