"""What the benchmarks share: the machine line, a private Redis, a server under gunicorn, payloads,
process-tree memory and a timestamping file tail. Run by hand, not in CI; everything on loopback."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import redis

from remediator.embedded_redis import EmbeddedRedis
from remediator.ports import free_port
from remediator.sim import SimCluster

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
TOKEN = "bench-webhook-token-" + uuid.uuid4().hex[:12]
QUEUE = "remediator"  # the default REMEDIATOR_QUEUE; the baseline enqueues on it too
WEBHOOK = "/webhook/alertmanager"
READY_TIMEOUT = 30.0  # seconds a server may take to answer /healthz
FAST_RULES = REPO / "tests" / "rules" / "fast.yaml"
# A worker that imports the job modules (and the vastai SDK they import lazily) before RQ forks a work
# horse per job, so no horse imports them again: what a preload in workers/runner.py would do.
PRELOAD = "import vastai, workers.jobs; from remediator.cli import main; main(['worker'])"


def loadavg() -> str:
    """The three load averages of /proc/loadavg, recorded before each measurement."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> str:
    return (
        f"date: {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {loadavg()}"
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile (pct in 0-100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, round(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[tuple[redis.Redis, str]]:
    """A fresh redis-server of our own (no persistence), stopped on exit: (client, url)."""
    server = EmbeddedRedis(workdir / "redis").start()
    conn = redis.Redis.from_url(server.url)
    try:
        yield conn, server.url
    finally:
        conn.close()
        server.stop()


def base_env(redis_url: str, workdir: Path, **extra: str) -> dict[str, str]:
    """The environment of a receiver or worker: our Redis and token, nothing inherited from REMEDIATOR_*.
    Everything else is the shipped default, the INFO log level (a line per alert) included."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMEDIATOR_")}
    metrics_dir = workdir / f"prom-{uuid.uuid4().hex[:6]}"
    metrics_dir.mkdir(parents=True)
    env.update(
        {
            "REDIS_URL": redis_url,
            "REMEDIATOR_WEBHOOK_TOKEN": TOKEN,
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        }
    )
    env.update(extra)
    return env


class Server:
    """A receiver under gunicorn in a child process: ``remediator serve`` or the baseline app."""

    def __init__(self, kind: str, env: dict[str, str], log: Path, *, workers: int, threads: int = 4) -> None:
        if kind not in ("remediator", "baseline"):
            raise ValueError(f"kind must be 'remediator' or 'baseline', not {kind!r}")
        self.kind, self.env, self.log = kind, env, log
        self.port = free_port()
        self.workers, self.threads = workers, threads
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        common = ["--bind", self.address, "--workers", str(self.workers), "--threads", str(self.threads)]
        if self.kind == "remediator":
            return [sys.executable, "-m", "remediator", "serve", *common, "--timeout", "30"]
        return [sys.executable, str(BENCH / "baseline_app.py"), *common, "--timeout", "30"]

    def start(self) -> Server:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv(), env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited on start; see {self.log}")
            try:
                status, _ = request(self.port, "GET", "/healthz", timeout=1)
                if status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.kind} server did not answer /healthz; see {self.log}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # gunicorn's arbiter stops its workers on SIGTERM
            try:
                self.proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30
) -> tuple[int, bytes]:
    """One HTTP request on a new connection; (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def alert(host_id: str, alertname: str = "CriticalSyncHosts") -> dict[str, Any]:
    """One firing alert for ``host_id``, shaped as Alertmanager sends it."""
    labels = {"alertname": alertname, "severity": "critical", "host_id": host_id}
    return {
        "status": "firing",
        "labels": labels,
        "annotations": {"summary": "host sync critical"},
        "startsAt": "2026-11-29T05:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.local/graph",
        "fingerprint": uuid.uuid5(uuid.NAMESPACE_DNS, host_id).hex[:16],
    }


def payload(host_ids: Sequence[str]) -> bytes:
    """A version-4 webhook body with one firing CriticalSyncHosts alert per host."""
    body = {
        "version": "4",
        "groupKey": '{}:{alertname="CriticalSyncHosts"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "remediator",
        "groupLabels": {"alertname": "CriticalSyncHosts"},
        "commonLabels": {"alertname": "CriticalSyncHosts", "severity": "critical"},
        "commonAnnotations": {"summary": "host sync critical"},
        "externalURL": "http://alertmanager.local",
        "alerts": [alert(h) for h in host_ids],
    }
    return json.dumps(body).encode()


def queued_jobs(conn: redis.Redis) -> int:
    return int(conn.llen(f"rq:queue:{QUEUE}"))


def check_no_failed_jobs(conn: redis.Redis) -> None:
    """RuntimeError naming the first failed RQ job's error: a run with failed jobs measures nothing."""
    from rq import Queue
    from rq.registry import FailedJobRegistry

    registry = FailedJobRegistry(queue=Queue(QUEUE, connection=conn))
    ids = registry.get_job_ids(0, 0)
    if ids:
        job = Queue(QUEUE, connection=conn).fetch_job(ids[0])
        why = (job.latest_result().exc_string or "").strip().splitlines()[-1:] if job else ["?"]
        raise RuntimeError(f"{registry.count} RQ job(s) failed, e.g. {ids[0]}: {why}")


# -- the full stack: simulated cluster, workers --------------------------------------------------------


def stack_env(sim: SimCluster, url: str, work: Path, **extra: str) -> dict[str, str]:
    """The environment of the full stack on ``sim``, as tests/e2e.py builds it (fast rules)."""
    settings = {
        **sim.env(),
        "REMEDIATOR_RULES_FILE": str(FAST_RULES),
        "REMEDIATOR_SSH_CONNECT_TIMEOUT": "3",
        "REMEDIATOR_LEDGER_FILE": str(work / "ledger.jsonl"),
        "REMEDIATOR_LOCK_TTL": "6",
        **extra,
    }
    return base_env(url, work, **settings)


def start_workers(
    env: dict[str, str], count: int, work: Path, preload: bool = False
) -> list[subprocess.Popen[bytes]]:
    """``count`` ``remediator worker`` processes (logs in ``work``); see PRELOAD for ``preload``."""
    argv = [sys.executable, "-c", PRELOAD] if preload else [sys.executable, "-m", "remediator", "worker"]
    procs = []
    for i in range(count):
        with (work / f"worker{i}.log").open("ab") as log:
            procs.append(
                subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()  # RQ's warm shutdown: an idle worker exits at once
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- memory of a process tree ------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Every descendant of pid (from /proc/<pid>/task/*/children)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            found = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, found):
            out += [child, *children(child)]
    return out


def kib(pid: int, field: str) -> int:
    """A field of /proc/<pid>/status in KiB (VmRSS, VmHWM); 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size in KiB (shared pages split among their users); 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMemory:
    """Samples the memory of some process trees in a thread until stopped; keeps the peaks.

    Per tree: the peak of one process's RSS (VmHWM, the kernel's own peak, read while it lives),
    the peak of the summed RSS of the tree's processes, and the peak of their summed PSS.
    """

    def __init__(self, roots: Sequence[int], interval: float = 0.1) -> None:
        self.roots = list(roots)
        self.interval = interval
        self.peak_process = dict.fromkeys(self.roots, 0)
        self.peak_rss_sum = dict.fromkeys(self.roots, 0)
        self.peak_pss_sum = dict.fromkeys(self.roots, 0)
        self.peak_processes = dict.fromkeys(self.roots, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for root in self.roots:
                pids = [root, *children(root)]
                rss = [kib(p, "VmRSS") for p in pids]
                self.peak_process[root] = max(self.peak_process[root], *(kib(p, "VmHWM") for p in pids))
                self.peak_rss_sum[root] = max(self.peak_rss_sum[root], sum(rss))
                self.peak_pss_sum[root] = max(self.peak_pss_sum[root], sum(pss_kib(p) for p in pids))
                self.peak_processes[root] = max(self.peak_processes[root], sum(1 for r in rss if r))
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- lines of a growing file, stamped when they appear ----------------------------------------------------


class FileTail:
    """Follows a file from its current end in a thread; each new line is stamped with time.time() on
    arrival (polled every ``interval`` s, so a stamp is late by at most about that much)."""

    def __init__(self, path: Path, interval: float = 0.001) -> None:
        self.path = path
        self.interval = interval
        self.lines: list[tuple[float, str]] = []
        self._offset = path.stat().st_size if path.exists() else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="file-tail", daemon=True)

    def _run(self) -> None:
        pending = b""
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            while not self._stop.is_set():
                chunk = fh.read()
                if chunk:
                    now = time.time()
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    self.lines += [(now, line.decode(errors="replace")) for line in complete]
                else:
                    time.sleep(self.interval)

    def first(self, marker: str, after: float = 0.0) -> float | None:
        """The stamp of the first line containing marker that arrived at or after ``after``."""
        for stamp, line in list(self.lines):
            if stamp >= after and marker in line:
                return stamp
        return None

    def __enter__(self) -> FileTail:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
