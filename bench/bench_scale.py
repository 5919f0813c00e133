"""A 1,000-host storm on the fleet-scale sim, healed by one worker pool of 4 and then of 16 processes.

    python bench/bench_scale.py [--hosts 1000] [--processes 4,16] [--single 3] [--ssh-limit 64]
                                [--calls-per-second 25] [--listing-seconds 5] [--floor-concurrency 64]

The whole stack on loopback: a ``FleetCluster`` of ``--hosts`` hosts (shared SSH server processes and
one agent engine, self-play off), a private Redis, ``remediator serve`` (2 gunicorn processes), one
``remediator worker --processes N`` command per run, the fast test rules (the agent-restart budget
raised to ``RESTARTS_BUDGET``: the shipped 100 per 10 minutes freezes a 1,000-host storm, as it
should), a page-webhook stand-in, and the fleet-wide limits at the given values (the shipped defaults
unless told).

1. Floor: one process connects to every host over SSH and runs ``echo OK``, ``--floor-concurrency``
   at a time (asyncssh): what "every host diagnosed" cannot beat on this machine. And the diagnosis
   floor: the same, running the five commands a diagnosis runs (``echo OK``, the Python inventory, the
   agent check, the supervisor check, the sync log's tail). Every simulated host's commands run on
   this machine's cores, so what a diagnosis costs on the hosts bounds the remediator here, as it
   would not on a real fleet (each host its own CPU).
2. T1: ``--single`` times in turn, one host's agent killed, the host made critical and one alert
   posted; T1 is the median time from the 202 to its ladder finished ``healthy`` (a pool of the first
   run's size, idle otherwise).
3. Per run (Redis flushed, a new worker pool of N processes): every host's agent killed and every host
   made critical, one host in ten given an unsynced game file (data at risk: the rules page the storm),
   then one webhook body with one alert per host (Alertmanager's group). Reported: wall
   time from the 202 until every ladder finished ``healthy`` against the ideal T1 x hosts / N; time
   until every host had its first diagnosis against the floor; storms and pages (firing) received by
   the stand-in; the most SSH slots held at once (``SSH_SLOTS_PEAK``) and the SSH servers' own peak
   of logged-in sessions (a sum of per-server peaks, an upper bound); the most coordinator requests in
   any one second (as the sim coordinator received them, the agents' syncs left out); provider
   listings fetched; the worker pool's memory (peak RSS of one process, peak summed RSS and PSS of the
   tree); Redis' peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import http.server
import json
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncssh
import redis
from _common import (
    FAST_RULES,
    WEBHOOK,
    Server,
    TreeMemory,
    check_no_failed_jobs,
    loadavg,
    machine,
    median,
    payload,
    private_redis,
    request,
    stack_env,
    stop_workers,
)
from rq import Worker

from remediator import keys
from remediator.sim.fleet import FleetCluster
from workers.fleet import FLEET

STORM_TIMEOUT = 1500.0  # seconds before one storm run gives up
POLL = 1.0  # seconds between two looks at the ladders
# The fast test rules, with the blast-radius budget's agent restarts raised from 100 to this many per
# 10 minutes: with the shipped 100, a 1,000-host storm freezes all automation after the 100th restart
# (as it should) and the bench would measure a human's unfreeze.
RESTARTS_BUDGET = 5000
GAMES_EVERY = 10  # one host in this many gets an unsynced game file before the storm (self-play is off)


class Pages:
    """A page-webhook stand-in on loopback: counts what the remediator's webhook pager posts."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    received.append(json.loads(body))
                except ValueError:
                    received.append({"unreadable": True})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/page"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def firing(self) -> list[dict[str, Any]]:
        return [p for p in self.received if p.get("status") == "firing"]


def floor(sim: FleetCluster, concurrency: int, commands: list[tuple[str, str | None]] | None = None) -> float:
    """Seconds for one process to run ``commands`` (``echo OK`` unless told; each with its stdin) on
    every host over one SSH connection each, ``concurrency`` hosts at a time."""
    commands = commands or [("echo OK", None)]

    # Parsed once, as the remediator does (remediator.clients.ssh): asyncssh given the paths parses
    # the 1,000-line known_hosts file at every connection, which made the floor slower than it is.
    known_hosts = asyncssh.read_known_hosts(str(sim.known_hosts_file))
    client_keys = asyncssh.load_keypairs([str(sim.ssh_key_file)])

    async def run() -> list[str]:
        gate = asyncio.Semaphore(concurrency)

        async def one(host_id: str) -> str:
            host = sim.host(host_id)
            async with (
                gate,
                asyncssh.connect(
                    host.address,
                    port=host.ssh_port,
                    username=sim.ssh_user,
                    known_hosts=known_hosts,
                    client_keys=client_keys,
                    agent_path=None,
                    config=[],
                ) as conn,
            ):
                first = str((await conn.run(commands[0][0], input=commands[0][1], check=True)).stdout)
                for command, stdin in commands[1:]:
                    where = {
                        "data_dir": shlex.quote(str(host.data_dir)),
                        "sync_log": shlex.quote(str(host.sync_log)),
                    }
                    await conn.run(command.format(**where), input=stdin)
                return first.strip()

        return await asyncio.gather(*(one(h) for h in sim.host_ids))

    started = time.monotonic()
    answers = asyncio.run(run())
    took = time.monotonic() - started
    if answers.count("OK") != len(sim.host_ids):
        raise RuntimeError(f"floor: {answers.count('OK')} of {len(sim.host_ids)} hosts answered")
    return took


def diagnosis_commands(env: dict[str, str]) -> list[tuple[str, str | None]]:
    """The commands a diagnosis runs on a host (workers/diagnose.py), as this bench's settings make them."""
    from remediator.config import Settings
    from workers.diagnose import INVENTORY_SOURCE, LOG_TAIL_LINES, REMOTE_PYTHON, RESTART_POLICY_COMMAND

    settings = Settings.from_env(env)  # the agent check command of this deployment
    return [
        ("echo OK", None),
        (REMOTE_PYTHON + " {data_dir} 0 no-checksums", INVENTORY_SOURCE),
        (settings.agent_check_command, None),
        (RESTART_POLICY_COMMAND, None),
        (f"tail -n {LOG_TAIL_LINES} {{sync_log}}", None),
    ]


def start_pool(env: dict[str, str], processes: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "remediator", "worker", "--processes", str(processes)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def post(server: Server, host_ids: list[str]) -> float:
    status, answer = request(server.port, "POST", WEBHOOK, payload(host_ids), timeout=300)
    if status != 202 or answer.count(b'"ladder_id"') != len(host_ids):
        raise RuntimeError(f"alerts not all accepted: {status} {answer[:300]!r}")
    return time.time()


def finished(conn: redis.Redis, host_ids: list[str]) -> dict[str, str]:
    pipe = conn.pipeline(transaction=False)
    for host_id in host_ids:
        pipe.hmget(keys.HOST.format(host_id), "status", "outcome")
    found = {}
    for h, (status, outcome) in zip(host_ids, pipe.execute(), strict=True):
        if status == b"frozen":  # the blast-radius budget tripped: only a human goes on from here
            raise RuntimeError(f"{h}'s ladder is frozen: automation was frozen (rules budget)")
        found[h] = (outcome or b"").decode() if status == b"finished" else ""
    return found


def wait_finished(conn: redis.Redis, host_ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        check_no_failed_jobs(conn)
        found = finished(conn, host_ids)
        if all(found.values()):
            return found
        if time.monotonic() > deadline:
            left = sum(1 for o in found.values() if not o)
            raise TimeoutError(f"{left} of {len(host_ids)} ladders still running after {timeout:.0f} s")
        time.sleep(POLL)


def break_hosts(sim: FleetCluster, host_ids: list[str]) -> None:
    for host_id in host_ids:
        sim.kill_agent(host_id)
    for host_id in host_ids:
        sim.make_critical(host_id)


def first_diagnosed(conn: redis.Redis, host_ids: list[str], after: float) -> float:
    """The unix time by which every host had its first diagnosis after ``after``."""
    pipe = conn.pipeline(transaction=False)
    for host_id in host_ids:
        pipe.lrange(keys.AUDIT.format(host_id), 0, -1)
    latest = 0.0
    for entries in pipe.execute():
        # When the diagnosis was made: ahead of its ladder by a prefetch job, or by the ladder itself.
        made = [e.get("diagnosed_at", e["ts"]) for e in map(json.loads, entries) if e["step"] == "diagnose"]
        stamps = [t for t in made if t >= after]
        if not stamps:  # its trail was trimmed past its first diagnosis (store.AUDIT_MAX_ENTRIES)
            return float("nan")
        latest = max(latest, min(stamps))
    return latest


def peak_per_second(stamps: list[float]) -> int:
    ordered = sorted(stamps)
    return max((bisect.bisect_left(ordered, t + 1.0) - i for i, t in enumerate(ordered)), default=0)


def storm_ids(conn: redis.Redis) -> set[str]:
    """Every storm id the fleet trail and the pages sent name. The trail alone is not enough: it keeps
    its last entries only (store.AUDIT_MAX_ENTRIES), and a 1,000-host storm's pauses and resumes
    push its "storm started" out."""
    entries = [json.loads(e) for e in conn.lrange(keys.AUDIT.format(FLEET), 0, -1)]
    found = {str(e["storm_id"]) for e in entries if e.get("storm_id")}
    current = conn.hget(keys.FLEET, "storm_id")
    if current:
        found.add(current.decode())
    for sent in env_pages.received:
        found.update(re.findall(r"remediator/storm/([0-9a-f]+)", json.dumps(sent)))
    return found


def single_ladder(sim: FleetCluster, server: Server, conn: redis.Redis, host_id: str) -> float:
    break_hosts(sim, [host_id])
    time.sleep(1.0)
    accepted = post(server, [host_id])
    found = wait_finished(conn, [host_id], 300)
    if found[host_id] != "healthy":
        raise RuntimeError(f"{host_id}'s ladder ended {found[host_id]!r}, not healthy")
    return time.time() - accepted


def wait_healthy(sim: FleetCluster, timeout: float = 120) -> None:
    """Until the coordinator says every host is healthy again (agents restarted and synced)."""
    deadline = time.monotonic() + timeout
    while unhealthy := [h for h in sim.host_ids if sim.state(h) != "healthy"]:
        if time.monotonic() > deadline:
            states = collections.Counter(sim.state(h) for h in unhealthy)
            raise TimeoutError(
                f"{len(unhealthy)} hosts not healthy between runs, e.g. {unhealthy[:3]}: {states}"
            )
        time.sleep(1.0)


def one_ladder_time(
    sim: FleetCluster, conn: redis.Redis, env: dict[str, str], work: Path, processes: int, single: int
) -> float:
    """T1: the median of ``single`` single-host ladders, one after the other, on an idle pool."""
    conn.flushall()
    pool = start_pool(env, processes, work / "pool-single.log")
    try:
        with Server("remediator", env, work / "serve-single.log", workers=2) as server:
            sim.wait_for(lambda: len(Worker.all(connection=conn)) >= processes, timeout=120)
            singles = [single_ladder(sim, server, conn, h) for h in sim.host_ids[:single]]
    finally:
        stop_workers([pool])
    print(f"  single ladders: {[round(s, 2) for s in singles]} s", flush=True)
    wait_healthy(sim)
    return median(singles)


def storm(
    sim: FleetCluster, conn: redis.Redis, env: dict[str, str], work: Path, processes: int, t1: float
) -> dict[str, Any]:
    conn.flushall()  # a fresh start: no incident, ladder or dedupe left from the run before
    pool = start_pool(env, processes, work / f"pool{processes}.log")
    try:
        with Server("remediator", env, work / f"serve{processes}.log", workers=2) as server:
            sim.wait_for(lambda: len(Worker.all(connection=conn)) >= processes, timeout=120)
            break_hosts(sim, sim.host_ids)
            for host_id in sim.host_ids[::GAMES_EVERY]:  # unsynced games at risk: the storm pages
                sim.write_games(host_id, 1)
            time.sleep(1.0)
            load = loadavg()
            sim.ssh_stats(reset_peak=True)
            conn.set(keys.SSH_SLOTS_PEAK, 0)
            conn.set(keys.COORDINATOR_CALLS_PEAK, 0)
            storms_before = storm_ids(conn)
            listings_before = sum(sim.provider_listings().values())
            pages_before = len(env_pages.firing())
            with TreeMemory([pool.pid], interval=0.5) as memory:
                sent = time.time()  # ladders start while the receiver still answers the 1,000 alerts
                accepted = post(server, sim.host_ids)
                found = wait_finished(conn, sim.host_ids, STORM_TIMEOUT)
                done = time.time()
            diagnosed = first_diagnosed(conn, sim.host_ids, sent)
            time.sleep(3.0)  # the storm's end and its page's resolve
            arrivals = [t for t in sim.coordinator_arrivals() if accepted <= t <= done]
            info = conn.info("memory")
            result = {
                "processes": processes,
                "t1": t1,
                "load": load,
                "wall": done - accepted,
                "diagnosed": diagnosed - accepted,
                "outcomes": dict(collections.Counter(found.values())),
                "healthy_at_coordinator": sum(1 for h in sim.host_ids if sim.state(h) == "healthy"),
                "storms": len(storm_ids(conn) - storms_before),
                "pages": len(env_pages.firing()) - pages_before,
                "slots_peak": int(conn.get(keys.SSH_SLOTS_PEAK) or 0),
                "server_peak": sim.ssh_stats()["sessions_peak"],
                "calls": len(arrivals),
                "calls_peak": peak_per_second(arrivals),
                "calls_sent_peak": int(conn.get(keys.COORDINATOR_CALLS_PEAK) or 0),
                "listings": sum(sim.provider_listings().values()) - listings_before,
                "one_mib": memory.peak_process[pool.pid] / 1024,
                "rss_mib": memory.peak_rss_sum[pool.pid] / 1024,
                "pss_mib": memory.peak_pss_sum[pool.pid] / 1024,
                "procs": memory.peak_processes[pool.pid],
                "redis_peak_mib": int(info["used_memory_peak"]) / 2**20,
            }
    finally:
        stop_workers([pool])
    print(f"  run {processes}: {json.dumps(result)}", flush=True)  # before the wait below, which may fail
    return result


env_pages: Pages


def main() -> None:
    global env_pages
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--processes", default="4,16", help="work processes of each run, comma-separated")
    parser.add_argument("--single", type=int, default=3, help="single-host ladders timed for T1")
    parser.add_argument("--ssh-limit", type=int, default=64, help="REMEDIATOR_MAX_SSH_SESSIONS")
    parser.add_argument("--calls-per-second", type=int, default=25, help="coordinator calls per second")
    parser.add_argument("--listing-seconds", type=float, default=5.0, help="provider listing shared for")
    parser.add_argument("--floor-concurrency", type=int, default=64)
    args = parser.parse_args()
    runs = [int(p) for p in args.processes.split(",")]
    print(machine(), flush=True)
    env_pages = Pages()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        with (
            private_redis(work) as (conn, url),
            FleetCluster(hosts=args.hosts, root=work / "sim", selfplay=False) as sim,
        ):
            up = time.monotonic() - t0
            print(f"  fleet of {args.hosts} up in {up:.1f} s", flush=True)
            mem = sum(_rss_kib(p) for p in sim.process_ids) / 1024
            floor_s = floor(sim, args.floor_concurrency)
            print(f"  floor: echo OK on every host, {args.floor_concurrency} at once: {floor_s:.1f} s")
            rules = work / "rules.yaml"
            shipped = FAST_RULES.read_text()
            budget = "{name: restarts, step: restart_agent, max: 100, per_minutes: 10}"
            if budget not in shipped:
                raise RuntimeError(f"{FAST_RULES} no longer has {budget}: update the bench")
            rules.write_text(shipped.replace(budget, budget.replace("max: 100", f"max: {RESTARTS_BUDGET}")))
            env = stack_env(
                sim,
                url,
                work,
                REMEDIATOR_RULES_FILE=str(rules),
                REMEDIATOR_SSH_CONNECT_TIMEOUT="10",
                REMEDIATOR_PAGE_WEBHOOK_URL=env_pages.url,
                REMEDIATOR_MAX_SSH_SESSIONS=str(args.ssh_limit),
                REMEDIATOR_COORDINATOR_CALLS_PER_SECOND=str(args.calls_per_second),
                REMEDIATOR_PROVIDER_LISTING_SECONDS=str(args.listing_seconds),
            )
            diagnosis_floor_s = floor(sim, args.floor_concurrency, diagnosis_commands(env))
            print(f"  diagnosis floor: its five commands on every host: {diagnosis_floor_s:.1f} s")
            t1 = one_ladder_time(sim, conn, env, work, runs[0], args.single)
            for i, processes in enumerate(runs):
                if i:
                    wait_healthy(sim, timeout=300)  # the hosts the last run healed, synced again
                results.append(storm(sim, conn, env, work, processes, t1))
    print()
    print(
        f"hosts {args.hosts}; fleet up in {up:.0f} s, its processes' RSS {mem:.0f} MiB; limits: SSH "
        f"{args.ssh_limit}, coordinator {args.calls_per_second}/s, listing shared {args.listing_seconds:g} s"
    )
    print(f"floor (echo OK on every host, {args.floor_concurrency} at a time, one process): {floor_s:.1f} s")
    print(f"diagnosis floor (a diagnosis's five commands on every host, so): {diagnosis_floor_s:.1f} s")
    print()
    print(
        "| processes | load before | T1 s | ideal s (T1 x hosts / N) | wall s to all healthy | wall / ideal "
        "| s until all diagnosed | / floor | / diagnosis floor | outcomes | storms | pages (firing) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in results:
        ideal = r["t1"] * args.hosts / r["processes"]
        print(
            f"| {r['processes']} | {r['load']} | {r['t1']:.2f} | {ideal:.0f} | {r['wall']:.0f} "
            f"| {r['wall'] / ideal:.2f} | {r['diagnosed']:.0f} | {r['diagnosed'] / floor_s:.1f} "
            f"| {r['diagnosed'] / diagnosis_floor_s:.1f} "
            f"| {r['outcomes']} | {r['storms']} | {r['pages']} |"
        )
    print()
    print(
        "| processes | SSH slots peak (limit) | SSH servers' session peak | coordinator requests "
        "| sent in 1 s, most (limit) | received in 1 s, most | provider listings | peak RSS one process MiB "
        "| peak RSS tree MiB "
        "| peak PSS tree MiB | processes | Redis peak MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['processes']} | {r['slots_peak']} ({args.ssh_limit}) | {r['server_peak']} | {r['calls']} "
            f"| {r['calls_sent_peak']} ({args.calls_per_second}) | {r['calls_peak']} | {r['listings']} "
            f"| {r['one_mib']:.0f} "
            f"| {r['rss_mib']:.0f} | {r['pss_mib']:.0f} | {r['procs']} | {r['redis_peak_mib']:.1f} |"
        )


def _rss_kib(pid: int) -> int:
    from _common import kib

    return kib(pid, "VmRSS")


if __name__ == "__main__":
    main()
