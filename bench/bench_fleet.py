"""A fleet of hosts with dead agents: wall time until all are healthy against the ideal, and worker RSS.

    python bench/bench_fleet.py [--hosts 200] [--workers 4] [--single 3] [--preload-jobs]

The whole stack on loopback: a simulated cluster of ``--hosts`` hosts, a private Redis,
``remediator serve`` (2 gunicorn processes) and ``--workers`` ``remediator worker`` processes, with the
fast test rules and a 10 s SSH connect timeout (the shipped default).

1. One host's ladder time, T1: ``--single`` times in turn, one host's agent is killed, the host made
   critical and one alert posted; T1 is the median time from the 202 to its ladder finished ``healthy``.
2. The fleet: every host's agent is killed and every host made critical, then one webhook body with
   one alert per host is posted (Alertmanager's grouping). Wall time is from the 202 until every
   host's ladder has finished ``healthy`` (polled every 0.5 s), and the ideal is T1 x hosts / workers.

While the fleet runs, each worker's process tree (the worker, its RQ scheduler and the work horse RQ
forks per job) is sampled every 0.1 s: the peak RSS of one process (VmHWM), the peak of the summed RSS
of the tree and the peak of its summed PSS (shared pages split between the processes that map them).
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

import redis
from _common import (
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
    start_workers,
    stop_workers,
)
from rq import Worker

from remediator import keys
from remediator.sim import SimCluster

FLEET_TIMEOUT = 1800.0  # seconds before the fleet run gives up
POLL = 0.5  # seconds between two looks at the ladders


def post(server: Server, host_ids: list[str]) -> float:
    status, answer = request(server.port, "POST", WEBHOOK, payload(host_ids), timeout=120)
    if status != 202 or answer.count(b'"ladder_id"') != len(host_ids):
        raise RuntimeError(f"alerts not all accepted: {status} {answer[:300]!r}")
    return time.monotonic()


def outcomes(conn: redis.Redis, host_ids: list[str]) -> dict[str, str]:
    """Each host's ladder outcome once finished ("" while it runs)."""
    pipe = conn.pipeline(transaction=False)
    for host_id in host_ids:
        pipe.hmget(keys.HOST.format(host_id), "status", "outcome")
    found = {}
    for host_id, (status, outcome) in zip(host_ids, pipe.execute(), strict=True):
        found[host_id] = (outcome or b"").decode() if status == b"finished" else ""
    return found


def break_hosts(sim: SimCluster, host_ids: list[str]) -> None:
    for host_id in host_ids:
        sim.kill_agent(host_id)
    for host_id in host_ids:
        sim.make_critical(host_id)


def wait_finished(conn: redis.Redis, host_ids: list[str], timeout: float) -> tuple[float, dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        check_no_failed_jobs(conn)
        found = outcomes(conn, host_ids)
        if all(found.values()):
            return time.monotonic(), found
        if time.monotonic() > deadline:
            left = sum(1 for o in found.values() if not o)
            raise TimeoutError(f"{left} of {len(host_ids)} ladders still running after {timeout:.0f} s")
        time.sleep(POLL)


def single_ladder(sim: SimCluster, server: Server, conn: redis.Redis, host_id: str) -> float:
    break_hosts(sim, [host_id])
    time.sleep(1.0)  # the workers are idle
    accepted = post(server, [host_id])
    done, found = wait_finished(conn, [host_id], 300)
    if found[host_id] != "healthy":
        raise RuntimeError(f"{host_id}'s ladder ended {found[host_id]!r}, not healthy")
    return done - accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4, help="`remediator worker` processes")
    parser.add_argument("--single", type=int, default=3, help="single-host ladders timed for T1")
    parser.add_argument("--preload-jobs", action="store_true", help="import the job modules before forking")
    args = parser.parse_args()
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        with private_redis(work) as (conn, url), SimCluster(hosts=args.hosts, root=work / "sim") as sim:
            print(f"  cluster of {args.hosts} up in {time.monotonic() - t0:.1f} s", flush=True)
            env = stack_env(sim, url, work, REMEDIATOR_SSH_CONNECT_TIMEOUT="10")
            workers = start_workers(env, args.workers, work, args.preload_jobs)
            try:
                with Server("remediator", env, work / "serve.log", workers=2) as server:
                    sim.wait_for(lambda: len(Worker.all(connection=conn)) == args.workers, timeout=60)
                    load_single = loadavg()
                    singles = [
                        single_ladder(sim, server, conn, host_id) for host_id in sim.host_ids[: args.single]
                    ]
                    print(f"  single ladders: {[round(s, 2) for s in singles]} s", flush=True)
                    break_hosts(sim, sim.host_ids)
                    time.sleep(1.0)
                    load_fleet = loadavg()
                    with TreeMemory([w.pid for w in workers]) as memory:
                        accepted = post(server, sim.host_ids)
                        done, found = wait_finished(conn, sim.host_ids, FLEET_TIMEOUT)
                    healthy_now = sum(1 for h in sim.host_ids if sim.state(h) == "healthy")
            finally:
                stop_workers(workers)
    t1 = median(singles)
    wall = done - accepted
    ideal = t1 * args.hosts / args.workers
    tally = collections.Counter(found.values())
    mib = 1 / 1024
    print()
    print(
        f"hosts {args.hosts}, workers {args.workers}, preload {args.preload_jobs}; "
        f"load before single ladders {load_single}, before the fleet {load_fleet}"
    )
    print(
        "| hosts | workers | T1 s (median of single ladders) | ideal s (T1 x hosts / workers) "
        "| wall s to all healthy | wall / ideal | ladder outcomes | coordinator healthy at the end |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|---:|")
    print(
        f"| {args.hosts} | {args.workers} | {t1:.2f} | {ideal:.0f} | {wall:.0f} | {wall / ideal:.2f} "
        f"| {dict(tally)} | {healthy_now}/{args.hosts} |"
    )
    print()
    print("| worker | peak RSS of one process MiB | peak summed RSS of its tree MiB | peak summed PSS MiB "
          "| most processes at once |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for i, pid in enumerate(memory.roots):
        print(
            f"| {i} | {memory.peak_process[pid] * mib:.0f} | {memory.peak_rss_sum[pid] * mib:.0f} "
            f"| {memory.peak_pss_sum[pid] * mib:.0f} | {memory.peak_processes[pid]} |"
        )


if __name__ == "__main__":
    main()
