"""Receiver throughput and latency at 16 connections, against a minimal RQ receiver as the baseline.

    python bench/bench_receiver.py [--sizes 1 50] [--rounds 3] [--duration 10] [--workers 5]

Starts one private Redis, ``remediator serve`` and ``bench/baseline_app.py`` (the same gunicorn
options: gthread, ``--workers`` processes x ``--threads`` threads), then drives each with ``wrk``
(apt-get install wrk; 2 threads, 16 keep-alive connections, ``--duration`` seconds) posting webhook
bodies of ``--sizes`` firing alerts. Every alert of every request names a host id never used before,
so the remediator accepts (and enqueues) every one instead of deduping it, like the baseline; Redis is
flushed before every run. Before each measured run a 2 s warm-up of the same server (then flushed).
Runs alternate baseline / remediator, ``--rounds`` times per size; the table gives the median over
rounds of alerts/s and of wrk's p50/p99 latency. Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from _common import (
    QUEUE,
    TOKEN,
    Server,
    base_env,
    loadavg,
    machine,
    median,
    private_redis,
    queued_jobs,
)

CONNECTIONS = 16
WRK_THREADS = 2
WARMUP = 2  # seconds of load before each measured run, not counted

# wrk script: every request a new body whose alerts name fresh host ids ("<tag>-<thread>-<n>-<i>").
WRK_SCRIPT = r"""
local counter = 1
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

function init(args)
  size = tonumber(args[1])
  tag = args[2]
  n = 0
  headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. args[3]}
  head = '{"version":"4","groupKey":"{}:{alertname=\\"CriticalSyncHosts\\"}","truncatedAlerts":0,'
    .. '"status":"firing","receiver":"remediator","groupLabels":{"alertname":"CriticalSyncHosts"},'
    .. '"commonLabels":{"alertname":"CriticalSyncHosts","severity":"critical"},'
    .. '"commonAnnotations":{"summary":"host sync critical"},'
    .. '"externalURL":"http://alertmanager.local","alerts":['
  item = '{"status":"firing","labels":{"alertname":"CriticalSyncHosts","severity":"critical",'
    .. '"host_id":"%s-%d-%d-%d"},"annotations":{"summary":"host sync critical"},'
    .. '"startsAt":"2026-11-29T05:00:00Z","endsAt":"0001-01-01T00:00:00Z",'
    .. '"generatorURL":"http://prometheus.local/graph","fingerprint":"%04x%06x%06x"}'
end

function request()
  n = n + 1
  local parts = {}
  for i = 1, size do
    parts[i] = string.format(item, tag, tid, n, i, tid, n, i)
  end
  return wrk.format("POST", "/webhook/alertmanager", headers, head .. table.concat(parts, ",") .. "]}")
end

function done(summary, latency, requests)
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
    .. '"non_2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def wrk(script: Path, port: int, size: int, seconds: int) -> dict[str, float]:
    """One bounded wrk run; wrk stops by itself after ``seconds``."""
    tag = uuid.uuid4().hex[:8]
    argv = [
        "wrk", f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "5s",
        "-s", str(script), f"http://127.0.0.1:{port}", "--", str(size), tag, TOKEN,
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def measure(server: Server, conn, script: Path, size: int, seconds: int) -> dict[str, float]:
    wrk(script, server.port, size, WARMUP)
    conn.flushall()
    load = loadavg()
    found = wrk(script, server.port, size, seconds)
    time.sleep(0.2)  # requests wrk stopped waiting for may still be finishing
    jobs = queued_jobs(conn)
    conn.flushall()
    secs = found["duration_us"] / 1e6
    return {
        "load": load,
        "alerts_per_s": found["requests"] * size / secs,
        "requests_per_s": found["requests"] / secs,
        "p50_ms": found["p50_us"] / 1000,
        "p99_ms": found["p99_us"] / 1000,
        "errors": found["non_2xx"] + found["socket_errors"],
        "alerts_sent": found["requests"] * size,
        "jobs": jobs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 50], help="alerts per request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured wrk run")
    parser.add_argument("--workers", type=int, default=5, help="gunicorn processes (serve's default here)")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn process")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    print(machine(), flush=True)
    print(
        f"gunicorn gthread {args.workers} processes x {args.threads} threads; "
        f"wrk {WRK_THREADS} threads, {CONNECTIONS} connections, {args.duration} s per run; queue {QUEUE}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-receiver-") as tmp:
        work = Path(tmp)
        script = work / "alerts.lua"
        script.write_text(WRK_SCRIPT)
        with private_redis(work) as (conn, url):
            servers = {
                kind: Server(kind, base_env(url, work), work / f"{kind}.log", workers=args.workers)
                for kind in ("baseline", "remediator")
            }
            for server in servers.values():
                server.start()
            try:
                results: dict[tuple[str, int], list[dict[str, float]]] = {}
                for size in args.sizes:
                    for rnd in range(args.rounds):
                        for kind, server in servers.items():
                            got = measure(server, conn, script, size, args.duration)
                            results.setdefault((kind, size), []).append(got)
                            print(f"  round {rnd + 1} size {size} {kind}: {got}", flush=True)
            finally:
                for server in servers.values():
                    server.stop()
    print()
    print(
        "| alerts/request | app | alerts/s (median) | requests/s | p50 ms | p99 ms "
        "| ratio to baseline | errors | jobs created / alerts answered | load before runs |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|---|")
    for size in args.sizes:
        base = median([r["alerts_per_s"] for r in results[("baseline", size)]])
        for kind in ("baseline", "remediator"):
            runs = results[(kind, size)]
            rate = median([r["alerts_per_s"] for r in runs])
            print(
                f"| {size} | {kind} | {rate:.0f} | {median([r['requests_per_s'] for r in runs]):.0f} "
                f"| {median([r['p50_ms'] for r in runs]):.1f} | {median([r['p99_ms'] for r in runs]):.1f} "
                f"| {rate / base:.2f} | {sum(int(r['errors']) for r in runs)} "
                f"| {sum(int(r['jobs']) for r in runs)} / {sum(int(r['alerts_sent']) for r in runs)} "
                f"| {', '.join(str(r['load']).split()[0] for r in runs)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
