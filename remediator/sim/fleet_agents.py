"""Virtual sync agents of the fleet-scale sim: one engine process runs every host's sync loop.

    python -m remediator.sim.fleet_agents CONFIG.json

The per-host sim runs one Python process per host's agent (15 MiB each: 15 GiB for 1,000 hosts). Here a
host's agent is a state file, ``run/agent_state`` (``running|dead PID STARTED_NS none|soft|hard``),
changed by the host's command shims (``fleet_shims``: systemctl, pkill, start_sync.sh), by the cluster
(faults) and by this engine, all under ``run/agent.lock`` (``flock``). The engine does what each
agent process of the per-host sim does, with that module's own ``Agent.sync`` (same ingest call, log
lines, cursor, faults):

- every ``interval`` seconds (hosts staggered over it) a running, unwedged agent syncs;
- a force-sync request (the coordinator creates ``<fleet>/force/<host_id>``) is served within a
  tick; it kicks a soft wedge, a hard one ignores it, and a dead agent keeps it for its next start,
  as the per-host agent finds the request file when it starts;
- an agent that starts (the host's wake file) logs ``sync agent started`` and syncs at once;
- with ``dies_after_restart`` an agent never syncs and is marked dead (``sync agent crashed``)
  ``DIES_AFTER`` seconds after its start;
- ``run/syncing`` exists while a sync of the host is in flight (created under the lock), so the
  cluster can kill or wedge an agent and then wait until nothing it sent can still land.

It exits when its owner process (the test or benchmark) is gone, or on SIGTERM.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from remediator.sim import procs
from remediator.sim.layout import DIES_AFTER_RESTART, HostPaths
from remediator.sim.sync_agent import DIES_AFTER, Agent

TICK = 0.05  # seconds between two looks at force-sync requests, wake files and the schedule
SYNC_THREADS = 16  # syncs in flight at once (each one HTTP call to the coordinator)
OWNER_CHECK = 1.0  # seconds between two looks at whether the owner process lives
DIES_AFTER_NS = int(DIES_AFTER * 1e9)
RUNNING, DEAD = "running", "dead"
NO_WEDGE, SOFT, HARD = "none", "soft", "hard"


class FleetHostPaths(HostPaths):
    """A fleet host's layout: the per-host one, with the agent's state file and the engine's inboxes.

    ``force_sync`` is in the fleet's shared ``force/`` directory so that the engine finds every request
    with one directory listing, not 1,000 file checks a tick."""

    def __init__(self, root: str | Path, fleet_dir: str | Path) -> None:
        super().__init__(root)
        fleet = Path(fleet_dir)
        self.force_sync = fleet / "force" / self.root.name
        self.wake = fleet / "wake" / self.root.name  # touched by whoever changes the agent's state
        self.agent_state = self.run / "agent_state"
        self.agent_lock = self.run / "agent.lock"
        self.syncing = self.run / "syncing"


@dataclass(frozen=True)
class AgentState:
    status: str  # RUNNING or DEAD
    pid: int  # the agent's (virtual) pid
    started_ns: int  # time.time_ns() of its start
    wedge: str = NO_WEDGE  # NO_WEDGE, SOFT (a forced sync kicks it) or HARD (only a restart)

    def line(self) -> str:
        return f"{self.status} {self.pid} {self.started_ns} {self.wedge}\n"


def read_state(paths: FleetHostPaths) -> AgentState | None:
    try:
        status, pid, started, wedge = paths.agent_state.read_text().split()
        return AgentState(status, int(pid), int(started), wedge)
    except (OSError, ValueError):
        return None


def write_state(paths: FleetHostPaths, state: AgentState) -> None:
    """Replace the state file atomically (call with ``locked(paths)`` held)."""
    tmp = paths.agent_state.with_name(f"{paths.agent_state.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(state.line())
    os.replace(tmp, paths.agent_state)


@contextlib.contextmanager
def locked(paths: FleetHostPaths) -> Iterator[None]:
    """Hold the host's agent lock (the shims take it with ``flock``: the same kernel lock)."""
    with open(paths.agent_lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def alive(paths: FleetHostPaths, state: AgentState | None, now_ns: int | None = None) -> bool:
    """Whether the agent runs: started, not stopped, and not past its death by ``dies_after_restart``."""
    if state is None or state.status != RUNNING:
        return False
    if paths.has_fault(DIES_AFTER_RESTART):
        return (now_ns or time.time_ns()) - state.started_ns < DIES_AFTER_NS
    return True


def wake(paths: FleetHostPaths) -> None:
    paths.wake.touch()


class VirtualAgent(Agent):
    """The per-host sim's agent, minus its process: ``sync`` is the same; log lines carry the virtual pid."""

    pid = 0

    def log(self, level: str, message: str) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        with open(self.paths.sync_log, "a", encoding="utf-8") as f:
            f.write(f"{stamp} {level} sync_agent[{self.pid}] host_id={self.host_id} {message}\n")


class Engine:
    """Every host's agent loop, on one schedule; syncs run on ``SYNC_THREADS`` threads."""

    def __init__(self, config: dict[str, object]) -> None:
        self.fleet_dir = Path(str(config["fleet_dir"]))
        self.interval = float(config["interval"])  # type: ignore[arg-type]
        owner = config.get("owner_pid")
        self.owner_pid = int(owner) if owner else None  # type: ignore[call-overload]
        hosts: dict[str, str] = config["hosts"]  # type: ignore[assignment]
        self.paths = {h: FleetHostPaths(root, self.fleet_dir) for h, root in hosts.items()}
        self.agents = {
            h: VirtualAgent(
                {
                    "--host-id": h,
                    "--host-root": root,
                    "--coordinator": str(config["coordinator"]),
                    "--interval": str(self.interval),
                    "--network-flag": str(config["network_flag"]),
                }
            )
            for h, root in hosts.items()
        }
        self.next_at: dict[str, float] = {}
        self.schedule: list[tuple[float, str]] = []
        self.known_pid: dict[str, int | None] = dict.fromkeys(hosts)
        self.waiting_force: set[str] = set()  # requested while dead or hard-wedged: served at the next start
        self.retry_force: set[str] = set()  # requested while a sync was in flight: served after it
        self.in_flight: set[str] = set()
        self.lock = threading.Lock()
        self.jobs: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self.stopping = threading.Event()

    # -- the loop -------------------------------------------------------------------------------------

    def run(self) -> int:
        for _ in range(SYNC_THREADS):
            threading.Thread(target=self._sync_worker, daemon=True).start()
        start = time.monotonic()
        for i, host in enumerate(self.paths):
            self._plan(host, start + self.interval * i / max(len(self.paths), 1))
            state = read_state(self.paths[host])
            if alive(self.paths[host], state):
                assert state is not None
                self._started(host, state)
        checked = 0.0
        while not self.stopping.is_set():
            now = time.monotonic()
            if now - checked >= OWNER_CHECK:
                checked = now
                if self.owner_pid is not None and not procs.alive(self.owner_pid):
                    return 0
            for host in self._inbox("force"):
                self._force(host)
            for host in self._inbox("wake"):
                self._woken(host)
            for host in list(self.retry_force):
                if host not in self.in_flight:
                    self.retry_force.discard(host)
                    self._force(host)
            while self.schedule and self.schedule[0][0] <= now:
                at, host = heapq.heappop(self.schedule)
                if self.next_at.get(host) != at:
                    continue  # rescheduled since
                self._plan(host, now + self.interval)
                self._consider(host, "periodic")
            self.stopping.wait(TICK)
        return 0

    def _inbox(self, name: str) -> list[str]:
        """Hosts with a file in the fleet's ``name/`` directory, each file taken (removed)."""
        found = []
        with os.scandir(self.fleet_dir / name) as entries:
            for entry in entries:
                if entry.name in self.paths:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        found.append(entry.name)
        return found

    def _plan(self, host: str, at: float) -> None:
        self.next_at[host] = at
        heapq.heappush(self.schedule, (at, host))

    # -- what an agent does -------------------------------------------------------------------------------

    def _woken(self, host: str) -> None:
        """The host's agent state changed: a new agent logs its start and syncs at once."""
        paths = self.paths[host]
        state = read_state(paths)
        if state is None or state.status != RUNNING:
            self.known_pid[host] = None
            return
        if state.pid != self.known_pid[host]:
            self._plan(host, time.monotonic() + self.interval)
            self._started(host, state)  # (re)plans a look at its death when it dies after a restart
            forced = host in self.waiting_force
            self.waiting_force.discard(host)
            self._consider(host, "forced" if forced else "periodic")

    def _started(self, host: str, state: AgentState) -> None:
        self.known_pid[host] = state.pid
        agent = self.agents[host]
        agent.pid = state.pid
        agent.log("INFO", "sync agent started")
        if self.paths[host].has_fault(DIES_AFTER_RESTART):
            # It dies DIES_AFTER seconds after its start: look again then to log the crash.
            delay = max(0.0, (state.started_ns + DIES_AFTER_NS - time.time_ns()) / 1e9)
            self._plan(host, time.monotonic() + delay)

    def _force(self, host: str) -> None:
        outcome = self._consider(host, "forced")
        if outcome == "busy":
            self.retry_force.add(host)
        elif outcome == "waiting":
            self.waiting_force.add(host)

    def _consider(self, host: str, reason: str) -> str:
        """Sync the host now if its agent would: "sent", "busy" (one in flight), "waiting" (dead or
        hard-wedged: a forced request waits for the next start) or "idle" (nothing to do)."""
        paths = self.paths[host]
        agent = self.agents[host]
        kicked = crashed = False
        with locked(paths):
            state = read_state(paths)
            if state is None or state.status != RUNNING:
                return "waiting"
            if paths.has_fault(DIES_AFTER_RESTART):
                if not alive(paths, state):
                    write_state(paths, AgentState(DEAD, state.pid, state.started_ns))
                    crashed = True
                else:
                    return "waiting" if reason == "forced" else "idle"
            elif state.wedge == HARD or (state.wedge == SOFT and reason != "forced"):
                return "waiting" if reason == "forced" else "idle"
            elif host in self.in_flight:
                return "busy" if reason == "forced" else "idle"
            else:
                if state.wedge == SOFT:
                    write_state(paths, AgentState(RUNNING, state.pid, state.started_ns))
                    kicked = True
                paths.syncing.touch()
                with self.lock:
                    self.in_flight.add(host)
        agent.pid = state.pid
        if crashed:
            self.known_pid[host] = None
            agent.log("ERROR", "sync agent crashed: RuntimeError: sync state corrupt (exit 1)")
            return "waiting"
        if kicked:
            agent.log("INFO", "wedged sync loop kicked by a forced sync")
        self.jobs.put((host, reason))
        return "sent"

    def _sync_worker(self) -> None:
        while (job := self.jobs.get()) is not None:
            host, reason = job
            try:
                self.agents[host].sync(reason)
            except Exception as exc:  # one failed sync must not stop the engine
                self.agents[host].log("ERROR", f"sync failed: {type(exc).__name__}: {exc}")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    self.paths[host].syncing.unlink()
                with self.lock:
                    self.in_flight.discard(host)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m remediator.sim.fleet_agents CONFIG.json", file=sys.stderr)
        return 2
    engine = Engine(json.loads(Path(args[0]).read_text()))
    signal.signal(signal.SIGTERM, lambda *_: engine.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: engine.stopping.set())
    return engine.run()


if __name__ == "__main__":
    sys.exit(main())
