"""How long the simulated cluster takes to start, and what its agents cost in memory.

    python bench/bench_sim_startup.py [--hosts 10 100 200] [--runs 3]

For each host count: the median (and min/max) over ``--runs`` of the seconds ``SimCluster.start()``
takes (every sshd accepting, every agent spawned), of the seconds until every agent's first sync has
landed, and of the seconds ``stop()`` takes; then the total peak RSS (``VmHWM``) of the agents and the
total RSS of the sshd listeners, sampled after every agent has synced at least twice. Prints a Markdown
table for docs/BENCHMARKS.md. Run by hand, not in CI.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from remediator.sim import SimCluster


def _kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_once(hosts: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as root:
        sim = SimCluster(hosts=hosts, root=root)
        t0 = time.perf_counter()
        sim.start()
        started = time.perf_counter() - t0
        try:
            sim.wait_for(
                lambda: all(sim.counts(h)["syncs"] >= 1 for h in sim.host_ids), timeout=120, interval=0.05
            )
            first_sync = time.perf_counter() - t0
            sim.wait_for(lambda: all(sim.counts(h)["syncs"] >= 2 for h in sim.host_ids), timeout=120)
            agents = [h.agent_pid for h in sim.hosts]
            agent_peak = sum(_kib(pid, "VmHWM") for pid in agents if pid)
            sshd_rss = sum(_kib(pid, "VmRSS") for pid in (h.sshd_pid for h in sim.hosts) if pid)
        finally:
            t1 = time.perf_counter()
            sim.stop()
            stopped = time.perf_counter() - t1
    return {
        "start": started,
        "first_sync": first_sync,
        "stop": stopped,
        "agent_peak_mib": agent_peak / 1024,
        "sshd_mib": sshd_rss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[10, 100, 200])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"date: {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        "| hosts | start s (median, min-max) | all first syncs s | stop s "
        "| agents peak RSS MiB | sshd RSS MiB |"
    )
    print("|---:|---|---:|---:|---:|---:|")
    for hosts in args.hosts:
        runs = [run_once(hosts) for _ in range(args.runs)]

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        starts = [r["start"] for r in runs]
        print(
            f"| {hosts} | {med('start'):.2f} ({min(starts):.2f}-{max(starts):.2f}) | {med('first_sync'):.2f} "
            f"| {med('stop'):.2f} | {med('agent_peak_mib'):.0f} ({med('agent_peak_mib') / hosts:.1f}/agent) "
            f"| {med('sshd_mib'):.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
