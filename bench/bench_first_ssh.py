"""Alert accepted -> first SSH session and first timed command on the host, with idle workers.

    python bench/bench_first_ssh.py [--trials 7] [--workers 2] [--preload-jobs]

The whole stack on loopback: a simulated cluster (``--trials`` + 1 hosts), a private Redis,
``remediator serve`` (2 gunicorn processes) and ``--workers`` idle ``remediator worker`` processes,
with the fast test rules. Each trial kills one host's agent, makes it critical, waits 2 s with every
worker idle, posts one firing alert for it and times, from the 202:

- **first SSH session**: the host's sshd (``sshd -D -e``, log in ``log/sshd.log``) logs
  ``Accepted publickey`` when the worker's session is authenticated; the ladder's first command
  (diagnose's ``echo OK``) runs in it right after. The log is followed every 1 ms and each line is
  stamped on arrival.
- **agent check**: REMEDIATOR_AGENT_CHECK_COMMAND is wrapped to append ``date +%s.%N`` to a file on
  the host before ``pgrep -f sync_agent``: the third command of diagnosis, timed on the host itself.

It then waits for the ladder to finish before the next trial. The first trial only warms up.
Baseline, same run, same hosts: a bare OpenSSH ``ssh host echo OK`` (the sim's options), timed from
its start to ``Accepted publickey`` and to its exit. ``--preload-jobs`` starts the workers with
``workers.jobs`` and ``vastai`` imported before RQ forks its work horses (see ``_common.PRELOAD``),
to show what those imports cost every job.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import redis
from _common import (
    WEBHOOK,
    FileTail,
    Server,
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

from remediator import store
from remediator.sim import SimCluster

ACCEPTED = "Accepted publickey"
CHECK_MARKS = "bench-agent-check"  # file under the host's root the wrapped agent check appends to
AGENT_CHECK = f'date +%s.%N >> "$RINGRIFT_HOST_ROOT/{CHECK_MARKS}"; pgrep -f sync_agent'
SETTLE = 2.0  # seconds every worker is idle before an alert is posted


def check_marks(sim: SimCluster, host_id: str) -> list[float]:
    path = sim.host(host_id).root / CHECK_MARKS
    return [float(x) for x in path.read_text().split()] if path.exists() else []


def one_alert(sim: SimCluster, server: Server, conn: redis.Redis, host_id: str) -> dict[str, float]:
    sim.kill_agent(host_id)
    sim.make_critical(host_id)
    time.sleep(SETTLE)
    load = loadavg()
    with FileTail(sim.host(host_id).paths.sshd_log) as tail:
        sent = time.time()
        status, answer = request(server.port, "POST", WEBHOOK, payload([host_id]))
        accepted = time.time()
        if status != 202 or b'"ladder_id"' not in answer:
            raise RuntimeError(f"alert for {host_id} not accepted: {status} {answer[:300]!r}")
        sim.wait_for(lambda: tail.first(ACCEPTED, sent), timeout=30, interval=0.005, what="first SSH")
        sim.wait_for(lambda: check_marks(sim, host_id), timeout=30, interval=0.005, what="agent check")
        session = tail.first(ACCEPTED, sent)
    check = min(check_marks(sim, host_id))
    sim.wait_for(
        lambda: check_no_failed_jobs(conn) or store.get_host(conn, host_id).get("status") == "finished",
        timeout=90,
        what="ladder end",
    )
    assert session is not None
    return {
        "load": load,
        "answer_ms": (accepted - sent) * 1000,
        "session_ms": (session - accepted) * 1000,
        "check_ms": (check - accepted) * 1000,
        "outcome": store.get_host(conn, host_id).get("outcome"),
    }


def bare_ssh(sim: SimCluster, host_id: str) -> dict[str, float]:
    with FileTail(sim.host(host_id).paths.sshd_log) as tail:
        start = time.time()
        done = sim.ssh_run(host_id, "echo OK")
        end = time.time()
        sim.wait_for(lambda: tail.first(ACCEPTED, start), timeout=10, interval=0.005, what="bare ssh")
        session = tail.first(ACCEPTED, start)
    if done.stdout.strip() != "OK":
        raise RuntimeError(f"bare ssh to {host_id} failed: {done.stderr[-300:]}")
    assert session is not None
    return {"session_ms": (session - start) * 1000, "round_trip_ms": (end - start) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2, help="idle `remediator worker` processes")
    parser.add_argument("--preload-jobs", action="store_true", help="import the job modules before forking")
    args = parser.parse_args()
    print(machine(), flush=True)
    trials: list[dict[str, float]] = []
    bare: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-first-ssh-") as tmp:
        work = Path(tmp)
        with private_redis(work) as (conn, url), SimCluster(hosts=args.trials + 1, root=work / "sim") as sim:
            env = stack_env(sim, url, work, REMEDIATOR_AGENT_CHECK_COMMAND=AGENT_CHECK)
            workers = start_workers(env, args.workers, work, args.preload_jobs)
            try:
                with Server("remediator", env, work / "serve.log", workers=2) as server:
                    sim.wait_for(lambda: len(Worker.all(connection=conn)) == args.workers, timeout=60)
                    for i, host_id in enumerate(sim.host_ids):
                        got = one_alert(sim, server, conn, host_id)
                        print(f"  {host_id}{' (warm-up)' if i == 0 else ''}: {got}", flush=True)
                        if i:
                            trials.append(got)
                        bare.append(bare_ssh(sim, host_id))
            finally:
                stop_workers(workers)
    report(trials, bare, args)


def report(trials: list[dict[str, float]], bare: list[dict[str, float]], args: argparse.Namespace) -> None:
    print()
    print(f"workers: {args.workers}, preload workers.jobs: {args.preload_jobs}, trials: {len(trials)}")
    print("| what | median ms | min-max ms | load before |")
    print("|---|---:|---|---|")
    loads = ", ".join(t["load"].split()[0] for t in trials)

    def row(what: str, values: list[float], load: str = "") -> None:
        print(f"| {what} | {median(values):.0f} | {min(values):.0f}-{max(values):.0f} | {load} |")

    row("POST -> 202 (one alert)", [t["answer_ms"] for t in trials], loads)
    row("202 -> first SSH session on the host (sshd `Accepted publickey`)", [t["session_ms"] for t in trials])
    row("202 -> agent check on the host (3rd command of diagnosis)", [t["check_ms"] for t in trials])
    row("baseline: bare `ssh host echo OK`, start -> `Accepted publickey`", [b["session_ms"] for b in bare])
    row("baseline: bare `ssh host echo OK`, round trip", [b["round_trip_ms"] for b in bare])
    print(f"ladder outcomes: {sorted({str(t['outcome']) for t in trials})}")


if __name__ == "__main__":
    main()
