"""One 1,000-alert webhook payload: time to the 202 and jobs created, against the baseline receiver.

    python bench/bench_fanout.py [--alerts 1000] [--runs 7] [--workers 5]

Starts one private Redis, ``remediator serve`` and ``bench/baseline_app.py`` under the same gunicorn
options, warms each up with one payload, then posts one body of ``--alerts`` firing alerts (distinct,
never-seen host ids) ``--runs`` times to each, alternating, on a new connection each time, with Redis
flushed before every post. Time to 202 is from just before the request is sent until the whole answer
is read; jobs created is the length of the RQ queue afterwards. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

from _common import (
    WEBHOOK,
    Server,
    base_env,
    loadavg,
    machine,
    median,
    payload,
    private_redis,
    queued_jobs,
    request,
)


def post_once(server: Server, conn, alerts: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    body = payload([f"f{run}-{i}" for i in range(alerts)])
    conn.flushall()
    load = loadavg()
    t0 = time.perf_counter()
    status, answer = request(server.port, "POST", WEBHOOK, body)
    elapsed = time.perf_counter() - t0
    if status != 202:
        raise RuntimeError(f"{server.kind} answered {status}: {answer[:300]!r}")
    accepted = json.loads(answer)["accepted"]
    return {"ms": elapsed * 1000, "jobs": queued_jobs(conn), "accepted": len(accepted), "load": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--workers", type=int, default=5, help="gunicorn processes (serve's default here)")
    args = parser.parse_args()
    print(machine(), flush=True)
    results: dict[str, list[dict[str, float]]] = {"baseline": [], "remediator": []}
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        work = Path(tmp)
        with private_redis(work) as (conn, url):
            servers = [
                Server(kind, base_env(url, work), work / f"{kind}.log", workers=args.workers)
                for kind in results
            ]
            for server in servers:
                server.start()
            try:
                for server in servers:
                    # Warm-up: one payload per gunicorn process, so no run pays for a cold worker.
                    for _ in range(args.workers):
                        post_once(server, conn, args.alerts)
                for rnd in range(args.runs):
                    for server in servers:
                        got = post_once(server, conn, args.alerts)
                        results[server.kind].append(got)
                        print(f"  run {rnd + 1} {server.kind}: {got}", flush=True)
            finally:
                for server in servers:
                    server.stop()
    print()
    print(
        "| app | alerts | time to 202 ms (median, min-max) | jobs created | accepted in answer "
        "| load before |"
    )
    print("|---|---:|---|---:|---:|---|")
    for kind, runs in results.items():
        ms = [r["ms"] for r in runs]
        print(
            f"| {kind} | {args.alerts} | {median(ms):.0f} ({min(ms):.0f}-{max(ms):.0f}) "
            f"| {median([r['jobs'] for r in runs]):.0f} | {median([r['accepted'] for r in runs]):.0f} "
            f"| {runs[0]['load'].split()[0]}-{runs[-1]['load'].split()[0]} |"
        )


if __name__ == "__main__":
    main()
