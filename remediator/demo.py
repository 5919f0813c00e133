"""``remediator demo``: the product working on this machine, end to end, in about a minute.

Embedded Redis, a simulated cluster of five hosts each failing differently, the receiver and two RQ
workers; ``CriticalSyncHosts`` is fired through a real Alertmanager when one is installed (else the
same v4 payload is posted directly); progress is shown live and a per-host summary ends it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import requests

from remediator import store
from remediator.config import Settings
from remediator.connections import redis_from_settings
from remediator.defaults import LADDER_STEPS
from remediator.embedded_redis import EmbeddedRedis
from remediator.ports import free_port

SCENARIOS = {
    "agent-dead": "sync agent killed",
    "agent-wedged": "agent alive but stuck",
    "retired-back": "retired, reachable again",
    "terminated": "instance terminated with unsynced games",
    "healthy": "nothing wrong (a stale alert)",
}


def _alert(host_id: str) -> dict[str, Any]:
    return {
        "labels": {"alertname": "CriticalSyncHosts", "host_id": host_id, "severity": "critical"},
        "annotations": {"summary": f"{host_id} has not synced"},
    }


def _fire(token: str, receiver: str, workdir: Path, hosts: list[str]) -> tuple[str, Any]:
    """Send the alerts as Alertmanager would: through a real one when it is installed."""
    if shutil.which("prometheus-alertmanager") or shutil.which("alertmanager"):
        from remediator.sim.alertmanager import AlertmanagerProcess

        am = AlertmanagerProcess(workdir / "alertmanager", webhook_url=receiver, bearer_token=token)
        am.start()
        am.post_alerts([_alert(h) for h in hosts])
        return f"alerts posted to a real Alertmanager at {am.url}", am
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = {
        "version": "4",
        "status": "firing",
        "receiver": "remediator",
        "groupKey": "demo",
        "alerts": [{**_alert(h), "status": "firing", "startsAt": now} for h in hosts],
    }
    requests.post(receiver, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    return "no Alertmanager installed: posted the same v4 payload to the receiver", None


def _progress(conn: redis.Redis, hosts: list[str]) -> list[dict[str, Any]]:
    rows = []
    for h in hosts:
        state = store.get_host(conn, h)
        audit = store.get_audit(conn, h)
        rows.append(
            {
                "host_id": h,
                "scenario": SCENARIOS[h],
                "status": state.get("status", "-"),
                "step": state.get("step", "-"),
                "outcome": state.get("outcome", "-") if state.get("status") == "finished" else "running",
                "steps_taken": [f"{e['step']}:{e['outcome']}" for e in audit if e["step"] in LADDER_STEPS],
                "games_recovered": next(
                    (
                        e.get("unsynced_games")
                        for e in audit
                        if e["step"] == "recover_data" and e["outcome"] == "ran"
                    ),
                    None,
                ),
                "games_lost": next(
                    (
                        e.get("loss", {}).get("games_lost")
                        for e in audit
                        if e["step"] == "retire" and "loss" in e
                    ),
                    None,
                ),
            }
        )
    return rows


# Short names, so that the table fits an 80-column terminal without cutting the steps taken.
SHORT_STEP = {
    "diagnose": "diag",
    "wait_reachable": "wait",
    "force_sync": "sync",
    "restart_agent": "restart",
    "recover_data": "recover",
    "unretire": "unretire",
    "retire": "retire",
    "escalate": "escalate",
}
SHORT_OUTCOME = {
    "done": "ok",
    "verify-ok": "ok",
    "verify-failed": "FAIL",
    "failed": "FAIL",
    "declined": "no",
    "awaiting-approval": "ask",
    "frozen": "hold",
    "held": "hold",
}
STEPS_SHOWN = 5  # the newest steps in the live table (the summary lists them all)


def _short(step_outcome: str) -> str:
    step, _, outcome = step_outcome.partition(":")
    return f"{SHORT_STEP.get(step, step)}:{SHORT_OUTCOME.get(outcome, outcome)}"


def _table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="ringrift-remediator demo", width=80)
    table.add_column("host", no_wrap=True, width=12)
    table.add_column("outcome", no_wrap=True, width=9)
    table.add_column("steps taken (newest last)", overflow="fold")
    for r in rows:
        steps = [_short(s) for s in r["steps_taken"]]
        shown = ("… " if len(steps) > STEPS_SHOWN else "") + " ".join(steps[-STEPS_SHOWN:])
        table.add_row(r["host_id"], r["outcome"], shown)
    return table


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the receiver exited on start (exit {proc.returncode})")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)  # startup only
    raise RuntimeError(f"the receiver did not answer {url} within {timeout:g}s")


def run_demo(*, as_json: bool = False, timeout: float = 240.0) -> int:
    from rich.console import Console
    from rich.live import Live

    from remediator.sim import SimCluster

    console = Console(stderr=as_json)
    workdir = Path(tempfile.mkdtemp(prefix="remediator-demo-"))
    hosts = list(SCENARIOS)
    token = secrets.token_urlsafe(16)
    workers: list[subprocess.Popen[bytes]] = []
    am = None
    server: subprocess.Popen[bytes] | None = None
    with EmbeddedRedis(workdir / "redis") as r, SimCluster(host_ids=hosts, root=workdir / "sim") as sim:
        env = {
            # The demo's Redis is its own: a Sentinel set-up in the caller's environment is not it.
            **{k: v for k, v in os.environ.items() if not k.startswith("REDIS_SENTINEL")},
            **sim.env(),
            "REDIS_URL": r.url,
            "REMEDIATOR_WEBHOOK_TOKEN": token,
            "REMEDIATOR_RULES_FILE": str(Path(__file__).parent / "sim" / "demo-rules.yaml"),
            "REMEDIATOR_SSH_CONNECT_TIMEOUT": "3",
            "REMEDIATOR_LOG_LEVEL": "WARNING",
            "REMEDIATOR_LEDGER_FILE": str(workdir / "data-loss.jsonl"),
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
        }
        (workdir / "metrics").mkdir()
        os.environ.update(
            {k: v for k, v in env.items() if k.startswith(("REMEDIATOR_", "REDIS_URL", "PROM"))}
        )
        try:
            port = free_port()
            # The receiver as `remediator serve` runs it (gunicorn), its log in the work dir.
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "remediator",
                    "serve",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--workers",
                    "1",
                ],
                env=env,
                stdout=(workdir / "receiver.log").open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            _wait_healthy(f"http://127.0.0.1:{port}/healthz", server)
            for i in range(2):
                log = (workdir / f"worker{i}.log").open("wb")
                workers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "remediator", "worker"],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            console.print(
                f"simulated cluster: {len(hosts)} hosts under {workdir}; receiver on 127.0.0.1:{port}"
            )
            for h, scenario in SCENARIOS.items():
                console.print(f"  {h:<13} {scenario}")
            sim.kill_agent("agent-dead")
            sim.wedge_agent("agent-wedged")
            sim.retired_host_back_online("retired-back")
            sim.kill_agent("terminated")
            sim.terminate_instance("terminated")
            for h in ("agent-dead", "agent-wedged", "terminated"):
                sim.make_critical(h)
            how, am = _fire(token, f"http://127.0.0.1:{port}/webhook/alertmanager", workdir, hosts)
            console.print(f"CriticalSyncHosts fired for {', '.join(hosts)}: {how}")
            conn = redis_from_settings(Settings(redis_url=r.url))
            assert conn is not None
            deadline = time.monotonic() + timeout
            with Live(_table(_progress(conn, hosts)), console=console, refresh_per_second=4) as live:
                while time.monotonic() < deadline:
                    rows = _progress(conn, hosts)
                    live.update(_table(rows))
                    if all(row["status"] == "finished" for row in rows):
                        break
                    time.sleep(0.5)
            rows = _progress(conn, hosts)
        finally:
            if am is not None:
                am.stop()
            if server is not None and server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()
            for proc in workers:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in workers:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    finished = all(row["status"] == "finished" for row in rows)
    if as_json:
        print(json.dumps({"finished": finished, "hosts": rows}, indent=2))
    else:
        console.print("\nsummary")
        for row in rows:
            extra = ""
            if row["games_recovered"] is not None:
                extra = f", {row['games_recovered']} unsynced games recovered"
            if row["games_lost"] is not None:
                extra += f", {row['games_lost']} games lost (documented)"
            steps = " ".join(_short(step) for step in row["steps_taken"])
            console.print(f"  {row['host_id']:<13} {row['outcome']:<10} {steps}{extra}")
    return 0 if finished else 1
