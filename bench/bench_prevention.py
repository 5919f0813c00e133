"""Prevention on versus off in one run: hosts whose agents die or wedge at random times, the bench
playing Prometheus. How many reach critical, unsynced games at risk, pages sent.

    python bench/bench_prevention.py [--hosts 50] [--workers 3] [--faults-until 120] [--seed 16]

The whole stack on loopback: a simulated cluster of ``--hosts`` hosts (lagging after ``--warn`` s
without a sync, critical after ``--critical`` s), a private Redis, ``remediator serve`` and
``--workers`` ``remediator worker`` processes with the fast test rules, and a loopback page webhook
that counts the pages. Every host gets one fault at a random time in [5, ``--faults-until``] s: its
agent is killed (half of them) or wedged (the rest; half of those only a restart clears).

Half the hosts (even positions) have prevention on, the others off, in the same run against the same
remediator: every second the bench reads each host's lag from the coordinator, as Prometheus would
its ``ringrift_host_last_sync_timestamp_seconds``, and posts
- ``SyncLagWarning`` (rules ``alerts.prevent``) for a prevention-on host when its lag passes the
  warning threshold, resolved when it falls back below (the ``off`` hosts get no warning at all: the
  rules without ``alerts.prevent``);
- ``CriticalSyncHosts`` for any host the coordinator reports critical, resolved when it is not.
Both with ``for: 0`` (the bench's thresholds stand in for threshold + for); a resolved is posted once
the condition has been clear for ``--resolve-after`` s (Alertmanager's group_interval delays it too),
so a ladder that healed its host can verify that before the resolved stops it.

Measured per group: hosts that reached critical (of the faulted ones, all of which would without a
fix: a dead or wedged agent never syncs by itself), unsynced games at risk (the sum over the run of
the host's unsynced games while it is critical, in game-minutes), pages (webhook deliveries naming a
host of the group), and the ladder outcomes.
"""

from __future__ import annotations

import argparse
import collections
import http.server
import json
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import (
    QUEUE,
    WEBHOOK,
    Server,
    check_no_failed_jobs,
    machine,
    private_redis,
    request,
    stack_env,
    start_workers,
    stop_workers,
)
from rq import Worker

from remediator import keys
from remediator.embedded_redis import free_port
from remediator.sim import SimCluster

TICK = 1.0  # seconds between two looks at the lags (Prometheus' evaluation interval here)
SETTLE = 90.0  # seconds after the last fault for the last ladders to finish
GROUPS = ("prevent", "off")


class PageSink:
    """A loopback HTTP server standing in for the page webhook: records every JSON body posted."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    sink.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                except ValueError:
                    sink.bodies.append({})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="page-sink", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/page"

    def __enter__(self) -> PageSink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def alert(host_id: str, alertname: str, status: str) -> dict[str, Any]:
    severity = "warning" if alertname == "SyncLagWarning" else "critical"
    return {
        "status": status,
        "labels": {"alertname": alertname, "severity": severity, "host_id": host_id},
        "annotations": {"summary": f"{alertname} {host_id}"},
        "startsAt": "2026-12-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-12-01T01:00:00Z",
        "generatorURL": "http://prometheus.local/graph",
        "fingerprint": f"{alertname}-{host_id}",
    }


def post(server: Server, alerts: list[dict[str, Any]]) -> None:
    body = {
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": "remediator",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "alerts": alerts,
    }
    status, answer = request(server.port, "POST", WEBHOOK, json.dumps(body).encode(), timeout=60)
    if status != 202:
        raise RuntimeError(f"webhook answered {status}: {answer[:300]!r}")


class Prometheus:
    """The bench's Prometheus: lag thresholds per host, firing and resolved edges posted as they happen."""

    def __init__(self, sim: SimCluster, server: Server, group: dict[str, str], resolve_after: float) -> None:
        self.sim, self.server, self.group = sim, server, group
        self.resolve_after = resolve_after
        self.firing: set[tuple[str, str]] = set()
        self.clear_since: dict[tuple[str, str], float] = {}
        self.reached_critical: dict[str, float] = {}
        self.risk_game_minutes: collections.Counter[str] = collections.Counter()
        self.posts: collections.Counter[str] = collections.Counter()

    def evaluate(self, dt: float) -> None:
        now = time.time()
        edges = []
        for host in self.sim.host_ids:
            lag = now - self.sim.last_sync(host)
            critical = self.sim.state(host) == "critical"
            wants = {"CriticalSyncHosts": critical}
            if self.group[host] == "prevent":
                wants["SyncLagWarning"] = lag > self.sim.lagging_after
            for name, firing in wants.items():
                key = (host, name)
                if firing:
                    self.clear_since.pop(key, None)
                    if key not in self.firing:
                        self.firing.add(key)
                        edges.append(alert(host, name, "firing"))
                elif key in self.firing and now - self.clear_since.setdefault(key, now) >= self.resolve_after:
                    self.firing.discard(key)
                    self.clear_since.pop(key, None)
                    edges.append(alert(host, name, "resolved"))
            if critical:
                self.reached_critical.setdefault(host, now)
                self.risk_game_minutes[host] += self.sim.unsynced_games(host).count * dt / 60
        if edges:
            post(self.server, edges)
            for edge in edges:
                self.posts[f"{edge['labels']['alertname']} {edge['status']}"] += 1


def inject(sim: SimCluster, schedule: list[tuple[float, str, str]], t0: float, log: list[str]) -> None:
    """Apply each (at seconds, host, fault) when its time comes (a thread: faults wait on the agent)."""
    for at, host, fault in schedule:
        time.sleep(max(0.0, t0 + at - time.time()))
        if fault == "dead":
            sim.kill_agent(host)
        else:
            sim.wedge_agent(host, until_restart=fault == "wedged-until-restart")
        log.append(host)


def outcomes(conn: Any, host_ids: list[str]) -> dict[str, list[str]]:
    """Every ladder outcome of each host, from its audit's ladder ends."""
    found: dict[str, list[str]] = {}
    for host in host_ids:
        ends = []
        for raw in conn.lrange(keys.AUDIT.format(host), 0, -1):
            entry = json.loads(raw)
            if entry.get("step") == "ladder" and entry.get("outcome") not in ("upgraded", "continued"):
                ends.append(entry["outcome"])
        found[host] = ends
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--workers", type=int, default=3, help="`remediator worker` processes")
    parser.add_argument("--warn", type=float, default=15.0, help="seconds of lag: SyncLagWarning")
    parser.add_argument("--critical", type=float, default=45.0, help="seconds of lag: critical")
    parser.add_argument("--faults-until", type=float, default=120.0, help="last fault, seconds into the run")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument(
        "--resolve-after",
        type=float,
        default=10.0,
        help="seconds a condition must stay clear before its resolved is posted (Alertmanager's delay)",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-prevention-") as tmp:
        work = Path(tmp)
        t_up = time.monotonic()
        with (
            private_redis(work) as (conn, url),
            PageSink() as pages,
            SimCluster(
                hosts=args.hosts,
                root=work / "sim",
                lagging_after=args.warn,
                critical_after=args.critical,
            ) as sim,
        ):
            print(f"  cluster of {args.hosts} up in {time.monotonic() - t_up:.1f} s", flush=True)
            group = {h: GROUPS[i % 2] for i, h in enumerate(sim.host_ids)}
            faults = ["dead", "wedged", "wedged-until-restart", "dead"]
            schedule = sorted(
                (rng.uniform(5.0, args.faults_until), h, rng.choice(faults)) for h in sim.host_ids
            )
            env = stack_env(sim, url, work, REMEDIATOR_PAGE_WEBHOOK_URL=pages.url)
            workers = start_workers(env, args.workers, work)
            try:
                with Server("remediator", env, work / "serve.log", workers=2) as server:
                    sim.wait_for(lambda: len(Worker.all(connection=conn)) == args.workers, timeout=60)
                    prometheus = Prometheus(sim, server, group, args.resolve_after)
                    injected: list[str] = []
                    t0 = time.time()
                    injector = threading.Thread(
                        target=inject, args=(sim, schedule, t0, injected), name="faults", daemon=True
                    )
                    injector.start()
                    last = time.time()
                    while True:
                        now = time.time()
                        prometheus.evaluate(now - last)
                        last = now
                        check_no_failed_jobs(conn)
                        settled = (
                            not injector.is_alive()
                            and now - t0 > args.faults_until + 10
                            and all(sim.state(h) == "healthy" for h in sim.host_ids)
                            and not any(conn.exists(keys.ACTIVE.format(h)) for h in sim.host_ids)
                        )
                        if settled or now - t0 > args.faults_until + SETTLE:
                            break
                        time.sleep(max(0.0, TICK - (time.time() - now)))
                    run_seconds = time.time() - t0
                    healthy_end = sum(1 for h in sim.host_ids if sim.state(h) == "healthy")
                    ladder_ends = outcomes(conn, sim.host_ids)
                    queue_left = conn.llen(f"rq:queue:{QUEUE}")
            finally:
                stop_workers(workers)
            page_bodies = list(pages.bodies)
    kinds = {h: f for _, h, f in schedule}
    triggers = [b for b in page_bodies if b.get("event_action") == "trigger"]
    print()
    print(
        f"hosts {args.hosts} (prevention on for {sum(1 for g in group.values() if g == 'prevent')}), "
        f"workers {args.workers}, warning at {args.warn:g} s of lag, critical at {args.critical:g} s, "
        f"faults in [5, {args.faults_until:g}] s, resolved after {args.resolve_after:g} s clear, "
        f"seed {args.seed}; run {run_seconds:.0f} s, "
        f"{len(injected)} faults injected, coordinator healthy at the end {healthy_end}/{args.hosts}, "
        f"jobs left queued {queue_left}"
    )
    print(f"alerts posted: {dict(prometheus.posts)}")
    print()
    print(
        "| prevention | faulted hosts (dead / wedged / wedged until restart) | reached critical | share "
        "| unsynced games at risk, game-minutes | pages triggered naming its hosts | ladder outcomes |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in GROUPS:
        hosts = [h for h in sim.host_ids if group[h] == name]
        reached = [h for h in hosts if h in prometheus.reached_critical]
        split = collections.Counter(kinds[h] for h in hosts)
        risk = sum(prometheus.risk_game_minutes[h] for h in hosts)
        named = sum(1 for body in triggers if set(body.get("hosts") or []) & set(hosts))
        ends = collections.Counter(o for h in hosts for o in ladder_ends[h])
        kinds_shown = f"{split['dead']} / {split['wedged']} / {split['wedged-until-restart']}"
        print(
            f"| {name} | {len(hosts)} ({kinds_shown}) "
            f"| {len(reached)} | {len(reached) / len(hosts):.0%} | {risk:.1f} | {named} | {dict(ends)} |"
        )
    actions = collections.Counter(str(b.get("event_action", "?")) for b in page_bodies)
    print(f"\npage deliveries in all: {len(page_bodies)} ({dict(actions)})")


if __name__ == "__main__":
    main()
