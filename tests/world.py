"""A world model for fault and property tests: hosts, their data, the coordinator, a provider, pagers.

It stands in for everything outside the remediator, in-process and on a virtual clock, so that a
property test can run hundreds of generated sequences in minutes. It is no kinder than reality:

- a host's sync agent runs, is dead, is wedged (soft: a forced sync kicks it; hard: only a restart), or
  dies within a second of every (re)start; some hosts have no ``systemctl``; a host may print a login
  banner before every command's output; its SSH may be down while its agent still syncs;
- remote commands run through a small POSIX-shell model with procps semantics: a compound command
  keeps its ``sh -c`` alive, and ``pkill -f``/``pgrep -f`` match that shell's command line too (a
  runbook ``pkill -f sync_agent; ./start_sync.sh`` kills its own shell before ``start_sync.sh`` runs);
- game files are real SQLite databases on local disk (the schema of ``remediator/sim/games.py``), the
  inventory is the real ``workers/host_inventory.py`` source the remediator sends, rsync is real rsync
  of local directories, the import reads the recovered files;
- the coordinator, the provider and the pagers answer real HTTP status codes and JSON through a
  ``requests`` transport adapter (``WorldAdapter``), so the remediator's real clients parse them.

Every call that reaches the world is recorded in the shared ``CallLog`` (name, mutating, args summary,
the fault that hit it, whether it changed the world, and who made it), so invariants are checked
against what actually happened, not against what the remediator says happened.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter

from remediator.sim.games import SCHEMA as GAMES_SCHEMA

# -- time ------------------------------------------------------------------------------------------


class VirtualClock:
    """The one clock of a world: advanced only on purpose (a rule, a sleep, a slow call).

    ``on_advance`` hooks run after every move (the world's agents and selfplay, Redis key ageing)."""

    def __init__(self, start: float) -> None:
        self.now = float(start)
        self.on_advance: list[Callable[[float, float], None]] = []

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds <= 0:
            return
        before, self.now = self.now, self.now + seconds
        for hook in self.on_advance:
            hook(before, self.now)

    def advance_to(self, when: float) -> None:
        self.advance(when - self.now)


class RealClock(VirtualClock):
    """The real clock, for runs against the real simulated cluster: moving it is sleeping."""

    def __init__(self) -> None:
        super().__init__(0.0)

    @property  # type: ignore[override]
    def now(self) -> float:
        import time

        return time.time()

    @now.setter
    def now(self, value: float) -> None:
        pass

    def advance(self, seconds: float) -> None:
        import time

        if seconds > 0:
            time.sleep(seconds)


# -- the call log --------------------------------------------------------------------------------------

# Calls that change something outside the remediator (DESIGN.md: dry run must make none of these).
READ_ONLY_SSH = frozenset({"ssh.connect", "ssh.echo", "ssh.inventory", "ssh.checksums", "ssh.agent_check"})
READ_ONLY_SSH |= {"ssh.log_tail", "ssh.restart_policy"}
MUTATING_CALLS = frozenset(
    {
        "coordinator.force_sync",
        "coordinator.unretire",
        "coordinator.retire",
        "coordinator.pause",
        "coordinator.resume",
        "coordinator.data_loss",
        "pager.webhook",
        "pager.pagerduty",
        "pager.alertmanager",
        "ssh.restart",
        "ssh.fallback",
        "ssh.other",
        "import",
        "alertmanager.silence",
        "alertmanager.expire",
    }
)


def is_mutating(name: str, args: Mapping[str, Any] | None = None) -> bool:
    """Whether a call of this name (with these args) changes the world."""
    if name == "rsync":
        return not (args or {}).get("dry_run")
    return name in MUTATING_CALLS


@dataclass
class Call:
    """One call to the outside world. ``level``: ``intent`` (one call of the Clients seam, e.g. one
    ``coordinator.force_sync()``) or ``wire`` (one HTTP request / command as it reached the world)."""

    seq: int
    at: float
    name: str
    level: str
    mutating: bool
    args: dict[str, Any]
    ctx: dict[str, Any]
    fault: str | None = None
    reached: bool = False  # the request reached the world (it may have been applied)
    applied: bool = False  # it changed the world
    result: Any = None  # a short summary of the answer the caller got (or the error)
    answer_lost: bool = False  # the world acted/answered but the caller never got the answer
    ended: float | None = None  # the clock when the caller had its answer (or its error)
    world: dict[str, Any] | None = None  # the host as the world had it when the call was made


class CallLog:
    """Every call into the world, in order; ``context()`` says who is calling (job, ladder, step)."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.calls: list[Call] = []
        self.context: Callable[[], dict[str, Any]] = dict
        self.snapshot: Callable[[str], dict[str, Any] | None] = lambda host: None
        self._current = threading.local()

    def new(
        self, name: str, level: str, args: Mapping[str, Any] | None = None, fault: str | None = None
    ) -> Call:
        args = dict(args or {})
        call = Call(
            seq=len(self.calls),
            at=self.clock.now,
            name=name,
            level=level,
            mutating=is_mutating(name, args),
            args=args,
            ctx=self.context(),
            fault=fault,
        )
        host = args.get("host_id")
        if isinstance(host, str):
            call.world = self.snapshot(host)
        self.calls.append(call)
        return call

    @contextlib.contextmanager
    def current(self, call: Call) -> Iterator[Call]:
        """While the world handles ``call``: what it applies is marked on it."""
        previous = getattr(self._current, "call", None)
        self._current.call = call
        call.reached = True
        try:
            yield call
        finally:
            self._current.call = previous

    def current_call(self) -> Call | None:
        return getattr(self._current, "call", None)

    def applied(self) -> None:
        call = self.current_call()
        if call is not None:
            call.applied = True

    def where(self, **match: Any) -> list[Call]:
        return [c for c in self.calls if all(getattr(c, k) == v for k, v in match.items())]


# -- the hosts ---------------------------------------------------------------------------------------

AGENT_INTERVAL = 30.0  # seconds between a healthy agent's syncs
GAME_INTERVAL = 240.0  # seconds between two game files written by selfplay
GAMES_PER_FILE = 3
LAGGING_AFTER = 120.0  # seconds since the last sync: the coordinator says lagging
CRITICAL_AFTER = 300.0  # seconds since the last sync: critical
DIES_AFTER = 1.0  # seconds an agent lives after a (re)start on a host whose agents keep dying
BANNER = "Welcome to RingRift GPU node\n*** authorised use only ***\n"
AGENT_CMDLINE = "python3 /opt/ringrift/sync_agent.py --daemon"


@dataclass
class WorldHost:
    host_id: str
    root: Path
    last_sync: float
    agent: str = "running"  # running | dead | soft_wedged | hard_wedged
    agent_started_at: float = 0.0
    dies_after_restart: bool = False
    systemd: bool = True
    restart_policy: str = "no"  # the agent unit's Restart= (the world restarts nothing by itself)
    ssh_up: bool = True  # sshd answers
    net_up: bool = True  # the host reaches the coordinator (its agent can sync)
    banner: bool = False  # every command's stdout starts with a login banner
    instance: str = "running"  # running | stopped | terminated (what the provider knows)
    retired: bool = False
    retired_reason: str | None = None
    selfplay_paused: bool = False
    next_file: int = 1
    last_game_file_at: float = 0.0
    games: dict[str, float] = field(default_factory=dict)  # game id -> created_at, what the host holds
    restarts: int = 0  # agent (re)starts that happened
    unparseable: list[str] = field(default_factory=list)  # files that are not games databases

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def login_dir(self) -> Path:
        return self.root / "home"

    @property
    def sync_log(self) -> Path:
        return self.root / "sync.log"

    @property
    def instance_id(self) -> str:
        return f"i-{self.host_id}"

    @property
    def address(self) -> str:
        return f"{self.host_id}.hosts.world"

    def agent_alive(self, now: float) -> bool:
        """A process pgrep would find."""
        if self.agent == "dead" or self.instance != "running":
            return False
        return not (self.dies_after_restart and now >= self.agent_started_at + DIES_AFTER)

    def syncing(self, now: float) -> bool:
        """An agent that syncs by itself."""
        return self.agent_alive(now) and self.agent == "running" and self.net_up and not self.retired


def coordinator_state(last_sync: float, now: float) -> str:
    age = now - last_sync
    if age >= CRITICAL_AFTER:
        return "critical"
    if age >= LAGGING_AFTER:
        return "lagging"
    return "healthy"


# -- the world ---------------------------------------------------------------------------------------

COORDINATOR_URL = "http://coordinator.world"
PAGER_WEBHOOK_URL = "http://pager.world/webhook"
PAGERDUTY_URL = "http://pager.world/pagerduty/v2/enqueue"
ALERTMANAGER_URL = "http://alertmanager.world"
LAMBDA_URL = "http://lambda.world"
LAMBDA_STATUS_URL = "http://status.world/lambda"
ADMIN_KEY = "world-admin-key-5e1f"


@dataclass
class PagerEvent:
    pager: str
    action: str  # trigger | resolve
    dedup_key: str
    at: float
    status: int  # what the pager answered
    call: Call | None = None


class World:
    """Hosts, the coordinator, a Lambda-style provider with a status page, and three pagers."""

    def __init__(self, root: Path, clock: VirtualClock, host_ids: list[str], log: CallLog | None = None):
        self.root = root
        self.clock = clock
        self.log = log or CallLog(clock)
        self.hosts: dict[str, WorldHost] = {}
        self.central: dict[str, set[str]] = {}  # host -> game ids the coordinator has (synced, imported)
        self.imports: list[dict[str, Any]] = []
        self.data_loss: list[dict[str, Any]] = []
        self.retirements: list[dict[str, Any]] = []
        self.pager_events: list[PagerEvent] = []
        self.paused_by: dict[str, str] = {}  # host -> the reason of the pause in force
        self.coordinator_down = False  # connection refused on every endpoint
        self.coordinator_5xx = False  # 503 on every endpoint
        self.provider_down = False  # the provider API answers 503
        self.provider_outage = False  # the status page reports a major outage
        self.pagers_down: set[str] = set()  # pagers answering 503
        self.silences: dict[str, dict[str, Any]] = {}  # Alertmanager's silences by id
        self.selfplay = True
        for host_id in host_ids:
            self.add_host(host_id)
        clock.on_advance.append(self._advance)
        self.log.snapshot = self.snapshot

    def snapshot(self, host_id: str) -> dict[str, Any] | None:
        host = self.hosts.get(host_id)
        if host is None:
            return None
        now = self.clock.now
        return {
            "ssh_up": host.ssh_up,
            "net_up": host.net_up,
            "instance": host.instance,
            "retired": host.retired,
            "agent": host.agent if host.agent_alive(now) else "dead",
            "state": coordinator_state(host.last_sync, now),
            "last_sync": host.last_sync,
            "unsynced": len(self.unsynced(host_id)),
            "paused": host.selfplay_paused,
        }

    # -- hosts and their data ------------------------------------------------------------------------
    def add_host(self, host_id: str) -> WorldHost:
        host = WorldHost(host_id, self.root / "hosts" / host_id, last_sync=self.clock.now)
        host.agent_started_at = self.clock.now - 3600
        host.data_dir.mkdir(parents=True, exist_ok=True)
        host.login_dir.mkdir(parents=True, exist_ok=True)
        (host.login_dir / "start_sync.sh").write_text("#!/bin/sh\nexec python3 /opt/ringrift/sync_agent.py\n")
        host.sync_log.write_text("")
        self.hosts[host_id] = host
        self.central[host_id] = set()
        self.write_games(host, GAMES_PER_FILE, self.clock.now - 60)
        self._sync(host, self.clock.now)
        return host

    def write_games(self, host: WorldHost, count: int, at: float | None = None) -> list[str]:
        """A new game file of ``count`` games created at ``at`` (now), written under a temp name."""
        at = self.clock.now if at is None else at
        number = host.next_file
        host.next_file += 1
        final = host.data_dir / f"games_{number:06d}.db"
        tmp = host.data_dir / f".games_{number:06d}.db.tmp"
        games = [(f"{host.host_id}-{number:06d}-{k}", at + k * 1e-3, 40 + k) for k in range(count)]
        conn = sqlite3.connect(tmp)
        try:
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute(GAMES_SCHEMA)
            conn.executemany("INSERT INTO games VALUES (?, ?, ?)", games)
            conn.commit()
        finally:
            conn.close()
        tmp.rename(final)
        for game_id, created, _ in games:
            host.games[game_id] = created
        host.last_game_file_at = at
        return [g[0] for g in games]

    def write_unparseable(self, host: WorldHost) -> None:
        """A file the inventory cannot read as a games database (a half-written batch)."""
        name = f"batch_{len(host.unparseable):03d}.db"
        (host.data_dir / name).write_bytes(b"\x00partial write " * 64)
        host.unparseable.append(name)

    def unsynced(self, host_id: str) -> list[str]:
        host = self.hosts[host_id]
        return sorted(g for g, at in host.games.items() if at > host.last_sync)

    def lost(self, host_id: str) -> list[str]:
        """Games on the host that the coordinator has from neither a sync nor an import."""
        host = self.hosts[host_id]
        return sorted(set(host.games) - self.central[host_id])

    def _sync(self, host: WorldHost, at: float) -> None:
        host.last_sync = max(host.last_sync, at)
        self.central[host.host_id] |= {g for g, created in host.games.items() if created <= at}
        self._host_log(host, f"INFO synced until {at:.3f}")

    def _host_log(self, host: WorldHost, line: str) -> None:
        with host.sync_log.open("a", encoding="utf-8") as fh:
            fh.write(f"{datetime.fromtimestamp(self.clock.now, UTC):%Y-%m-%dT%H:%M:%S} sync_agent {line}\n")

    def _advance(self, before: float, now: float) -> None:
        """What happens by itself between ``before`` and ``now``: agents sync, selfplay writes games."""
        for host in self.hosts.values():
            dying = host.dies_after_restart and host.agent in ("running", "soft_wedged", "hard_wedged")
            if dying and now >= host.agent_started_at + DIES_AFTER:
                host.agent = "dead"
            tick = (before // AGENT_INTERVAL + 1) * AGENT_INTERVAL
            last = None
            while tick <= now:
                if host.syncing(tick):
                    last = tick
                tick += AGENT_INTERVAL
            if last is not None:
                self._sync(host, last)
            if self.selfplay and not host.selfplay_paused and host.instance == "running":
                while host.last_game_file_at + GAME_INTERVAL <= now:
                    self.write_games(host, GAMES_PER_FILE, host.last_game_file_at + GAME_INTERVAL)

    # -- world changes (the property test's rules) ---------------------------------------------------
    def break_agent(self, host_id: str, how: str) -> None:
        """The agent stops syncing (dead, soft/hard wedged, dies after every restart), and the host is
        made critical (its last sync backdated), as the sim's make_critical does."""
        host = self.hosts[host_id]
        if how == "dies_after_restart":
            host.dies_after_restart = True
            host.agent = "dead"
        else:
            host.agent = how
        host.last_sync = min(host.last_sync, self.clock.now - CRITICAL_AFTER - 1)

    def terminate(self, host_id: str) -> None:
        host = self.hosts[host_id]
        host.instance, host.ssh_up, host.net_up, host.agent = "terminated", False, False, "dead"

    def retire_and_back(self, host_id: str) -> None:
        """Retired, critical, reachable with its agent running: the runbook's Option 4 case."""
        host = self.hosts[host_id]
        host.retired, host.retired_reason = True, "data_loss"
        host.ssh_up = host.net_up = True
        host.agent, host.agent_started_at = "running", self.clock.now
        host.last_sync = min(host.last_sync, self.clock.now - CRITICAL_AFTER - 1)

    # -- the coordinator, provider and pagers over HTTP ------------------------------------------------
    def http(self, method: str, url: str, body: Any, headers: Mapping[str, str]) -> tuple[int, Any]:
        """Answer one HTTP request: (status, JSON-able body or raw str). Raises ConnectionError when the
        service is down."""
        parts = urlsplit(url)
        base = f"{parts.scheme}://{parts.netloc}"
        if base == COORDINATOR_URL:
            if self.coordinator_down:
                raise requests.ConnectionError("coordinator.world: connection refused")
            if self.coordinator_5xx:
                return 503, {"error": "coordinator unavailable"}
            return self._coordinator(method, parts.path, body, headers)
        if url.startswith(PAGER_WEBHOOK_URL):
            return self._pager("webhook", body, 200)
        if url.startswith(PAGERDUTY_URL):
            return self._pager("pagerduty", body, 202)
        if base == ALERTMANAGER_URL:
            if parts.path.startswith(("/api/v2/silences", "/api/v2/silence/")):
                return self._silences(method, parts.path, body)
            return self._pager("alertmanager", body, 200)
        if base == LAMBDA_URL:
            if self.provider_down:
                return 503, {"error": {"code": "global/unavailable", "message": "try again"}}
            rows = [
                {"id": h.instance_id, "status": {"running": "active", "stopped": "unhealthy"}[h.instance]}
                for h in self.hosts.values()
                if h.instance != "terminated"
            ]
            return 200, {"data": rows}
        if url.startswith(LAMBDA_STATUS_URL):
            return 200, {"status": {"indicator": "major" if self.provider_outage else "none"}}
        return 404, {"error": f"no such service {base}"}

    def record(self, host: WorldHost) -> dict[str, Any]:
        return {
            "state": coordinator_state(host.last_sync, self.clock.now),
            "last_sync": host.last_sync,
            "retired": host.retired,
            "address": host.address,
            "ssh_user": "ringrift",
            "ssh_port": 22,
            "provider": "lambda",
            "instance_id": host.instance_id,
            "data_dir": str(host.data_dir),
            "sync_log": str(host.sync_log),
            "selfplay_paused": host.selfplay_paused,
        }

    def _coordinator(self, method: str, path: str, body: Any, headers: Mapping[str, str]) -> tuple[int, Any]:
        if path.startswith("/admin/") and headers.get("X-Admin-Key") != ADMIN_KEY:
            return 401, {"error": "missing or wrong X-Admin-Key"}
        body = body if isinstance(body, dict) else {}
        if method == "GET" and path == "/sync/hosts":
            return 200, {h: self.record(host) for h, host in self.hosts.items()}
        match = re.fullmatch(r"/sync/hosts/([^/]+)/sync", path)
        if method == "POST" and match:
            host = self.hosts.get(match.group(1))
            if host is None:
                return 404, {"error": "unknown host_id"}
            if host.retired:
                return 409, {"error": "host is retired; unretire it first", "retired": True}
            if host.agent_alive(self.clock.now) and host.agent != "hard_wedged" and host.net_up:
                host.agent = "running"  # a forced sync kicks a soft-wedged loop
                self._sync(host, self.clock.now)
                self.log.applied()
            return 202, {"host_id": host.host_id, "status": "sync requested", "last_sync": host.last_sync}
        if method != "POST":
            return 405, {"error": "method not allowed"}
        host_id = body.get("host_id")
        if path in ("/admin/unretire", "/admin/retire-host", "/admin/data-loss"):
            if not isinstance(host_id, str) or host_id not in self.hosts:
                return (404 if isinstance(host_id, str) else 400), {"error": "host_id"}
            host = self.hosts[host_id]
            if path == "/admin/unretire":
                host.retired, host.retired_reason = False, None
                self.log.applied()
                return 200, {"host_id": host_id, "retired": False}
            if path == "/admin/retire-host":
                if body.get("acknowledge_loss") is not True or not body.get("reason"):
                    return 400, {"error": "acknowledge_loss must be true", "field": "acknowledge_loss"}
                host.retired, host.retired_reason = True, str(body["reason"])
                self.retirements.append({"at": self.clock.now, **body})
                self.log.applied()
                return 200, {"host_id": host_id, "retired": True}
            games = body.get("games_lost")
            if not isinstance(games, int) or isinstance(games, bool) or games < 0:
                return 400, {"error": "games_lost must be an integer >= 0", "field": "games_lost"}
            if not isinstance(body.get("checklist"), dict | list):
                return 400, {"error": "checklist must be an object", "field": "checklist"}
            self.data_loss.append({"at": self.clock.now, **body})
            self.log.applied()
            return 200, {"host_id": host_id, "recorded": True, "record": len(self.data_loss)}
        if path in ("/admin/pause-selfplay", "/admin/resume-selfplay"):
            ids = body.get("host_ids")
            if not isinstance(ids, list) or not ids or not all(i in self.hosts for i in ids):
                return 400, {"error": "host_ids must be a non-empty list of known hosts", "field": "host_ids"}
            paused = path == "/admin/pause-selfplay"
            for host_id in ids:
                self.hosts[host_id].selfplay_paused = paused
                if paused:
                    self.paused_by[host_id] = str(body.get("reason"))
                else:
                    self.paused_by.pop(host_id, None)
            self.log.applied()
            return 200, {"paused" if paused else "resumed": ids}
        return 404, {"error": f"no such endpoint {path}"}

    def _silences(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """Alertmanager's silences API: create, list, expire."""
        if "alertmanager" in self.pagers_down:
            return 503, {"error": "down"}
        if method == "POST" and path == "/api/v2/silences" and isinstance(body, dict):
            silence_id = f"sil-{len(self.silences) + 1:04d}"
            self.silences[silence_id] = {**body, "id": silence_id, "status": {"state": "active"}}
            self.log.applied()
            return 200, {"silenceID": silence_id}
        if method == "GET" and path == "/api/v2/silences":
            return 200, list(self.silences.values())
        if method == "DELETE" and path.startswith("/api/v2/silence/"):
            found = self.silences.get(path.rsplit("/", 1)[1])
            if found is None:
                return 404, {"error": "silence not found"}
            found["status"] = {"state": "expired"}
            self.log.applied()
            return 200, {}
        return 400, {"error": "bad silences request"}

    def active_silences(self) -> list[str]:
        return [i for i, s in self.silences.items() if s["status"]["state"] == "active"]

    def _pager(self, name: str, body: Any, ok: int) -> tuple[int, Any]:
        if name == "alertmanager":
            alert = (body or [{}])[0] if isinstance(body, list) else {}
            key = (alert.get("labels") or {}).get("dedup_key", "")
            ends = alert.get("endsAt", "")
            action = "resolve" if ends and alert.get("startsAt") == ends else "trigger"
        elif name == "pagerduty":
            key, action = body.get("dedup_key", ""), body.get("event_action", "")
        else:
            key, action = body.get("dedup_key", ""), body.get("event_action", "")
        status = 503 if name in self.pagers_down else ok
        if status < 300:
            self.log.applied()
        self.pager_events.append(
            PagerEvent(name, action, key, self.clock.now, status, self.log.current_call())
        )
        return status, ({"status": "success", "dedup_key": key} if status < 300 else {"error": "down"})

    # -- SSH, rsync, the import ----------------------------------------------------------------------
    def host_by_address(self, address: str | None) -> WorldHost | None:
        return next((h for h in self.hosts.values() if h.address == address), None)

    def run(self, host: WorldHost, command: str, stdin: str | None) -> tuple[int | None, str, str]:
        """Run a command on the host as ``sh -c`` would: (exit status, stdout, stderr)."""
        shell = HostShell(self, host, command)
        status, out, err = shell.run_script(stdin)
        return status, (BANNER + out) if host.banner else out, err

    def rsync(self, host: WorldHost | None, dest: Path, dry_run: bool) -> tuple[int, int, str]:
        """Real rsync of the host's data dir into dest (local directories); (exit, files, stderr)."""
        dest.mkdir(parents=True, exist_ok=True)
        if host is None or not host.ssh_up:
            return (
                255,
                0,
                "ssh: connect to host port 22: Connection refused\nrsync: connection unexpectedly closed",
            )
        argv = ["rsync", "-a", "--partial", "--stats", "--protect-args"]
        if dry_run:
            argv.append("--dry-run")
        argv += [f"{host.data_dir}/", f"{dest}/"]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        files = 0
        for line in proc.stdout.splitlines():
            if line.startswith("Number of regular files transferred:"):
                files = int(line.split(":")[1].strip().replace(",", "") or 0)
        if proc.returncode == 0 and not dry_run:
            self.log.applied()
        return proc.returncode, files, proc.stderr[-2000:]

    def run_import(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """The import command: games of the recovered folder into the coordinator (deduplicated)."""
        try:
            data_dir = Path(argv[argv.index("--data-dir") + 1])
            host_id = argv[argv.index("--host") + 1]
        except (ValueError, IndexError):
            return subprocess.CompletedProcess(argv, 2, "", "usage: world-import --data-dir DIR --host ID")
        if host_id not in self.hosts or not data_dir.is_dir():
            return subprocess.CompletedProcess(argv, 1, "", f"import: {data_dir} is not a directory")
        found: set[str] = set()
        for path in sorted(data_dir.rglob("games_*.db")):
            try:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                try:
                    found |= {row[0] for row in conn.execute("SELECT game_id FROM games")}
                finally:
                    conn.close()
            except sqlite3.Error:
                continue
        new = found - self.central[host_id]
        self.central[host_id] |= found
        self.imports.append({"at": self.clock.now, "host_id": host_id, "games": len(found), "new": len(new)})
        self.log.applied()
        summary = {"host_id": host_id, "games": len(found), "new_games": len(new)}
        return subprocess.CompletedProcess(argv, 0, json.dumps(summary) + "\n", "")

    def network_ok(self) -> tuple[bool, int, int]:
        """(ok, reachable, total): the coordinator and every host's SSH port, OK when half answer."""
        total = 1 + len(self.hosts)
        reachable = int(not self.coordinator_down) + sum(h.ssh_up for h in self.hosts.values())
        return reachable * 2 >= total, reachable, total


# -- a POSIX shell with procps, enough for the remediator's commands -----------------------------------


class ShellExit(Exception):
    """The shell running the command was killed (pkill matched its own command line)."""


class _Break(Exception):
    pass


class HostShell:
    """``sh -c COMMAND`` on a world host. A compound command keeps its shell, whose command line
    (``sh -c COMMAND``) ``pgrep -f`` and ``pkill -f`` match like any process's (procps skips only
    itself); a simple command is exec'd by the shell, so nothing else carries its text."""

    SEPARATORS = (";", "&&", "||", "\n")

    def __init__(self, world: World, host: WorldHost, command: str) -> None:
        self.world = world
        self.host = host
        self.command = command
        # Redirections of output the caller does not read are dropped before parsing (the shell model
        # has no file descriptors); what a command prints is only ever its stdout.
        bare = re.sub(r"\s*(?:[12]?>\s*/dev/null|2>&1)", "", command)
        lexer = shlex.shlex(bare, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        self.tokens = list(lexer)
        self.compound = any(t in self.SEPARATORS or t in ("for", "if", "|") for t in self.tokens)
        self.out: list[str] = []
        self.err: list[str] = []

    def processes(self) -> list[str]:
        """Command lines of the host's processes a pgrep/pkill could see (besides itself)."""
        found = []
        if self.host.agent_alive(self.world.clock.now):
            found.append(AGENT_CMDLINE)
        if self.compound:
            found.append(f"sh -c {self.command}")
        return found

    def run_script(self, stdin: str | None) -> tuple[int | None, str, str]:
        self.stdin = stdin
        try:
            status = self._sequence(self.tokens)
        except ShellExit:
            return None, "".join(self.out), "".join(self.err)
        return status, "".join(self.out), "".join(self.err)

    def _sequence(self, tokens: list[str]) -> int:
        status = 0
        op = ";"
        i = 0
        while i < len(tokens):
            if tokens[i] in ("for", "if"):
                opener, closer = tokens[i], "done" if tokens[i] == "for" else "fi"
                end = self._matching(tokens, i, opener, closer)
                if op == ";" or (op == "&&" and status == 0) or (op == "||" and status != 0):
                    status = self._for(tokens[i:end]) if opener == "for" else self._if(tokens[i:end])
                i = end + 1 if end < len(tokens) else end
                continue
            j = i
            while j < len(tokens) and tokens[j] not in (";", "&&", "||", "\n"):
                j += 1
            simple = tokens[i:j]
            if simple and (op == ";" or (op == "&&" and status == 0) or (op == "||" and status != 0)):
                status = self._simple(simple)
            op = tokens[j] if j < len(tokens) else ";"
            i = j + 1
        return status

    @staticmethod
    def _matching(tokens: list[str], start: int, opener: str, closer: str) -> int:
        depth = 0
        for k in range(start, len(tokens)):
            if tokens[k] == opener:
                depth += 1
            elif tokens[k] == closer:
                depth -= 1
                if depth == 0:
                    return k
        return len(tokens)

    def _if(self, tokens: list[str]) -> int:
        # if COND ; then BODY [; else BODY] ; (fi dropped by the caller)
        then = tokens.index("then")
        other = tokens.index("else") if "else" in tokens else len(tokens)
        if self._sequence(tokens[1:then]) == 0:
            return self._sequence(tokens[then + 1 : other])
        return self._sequence(tokens[other + 1 :]) if other < len(tokens) else 0

    def _for(self, tokens: list[str]) -> int:
        # for NAME in WORDS ; do BODY ; done
        do = tokens.index("do")
        words = [t for t in tokens[3:do] if t not in (";", "\n")]
        body = tokens[do + 1 : -1] if tokens[-1] == "done" else tokens[do + 1 :]
        status = 0
        for _ in words:
            try:
                status = self._sequence(body)
            except _Break:
                break
        return status

    def _simple(self, argv: list[str]) -> int:
        redirect = [a for a in argv if a.startswith(">")]
        argv = [a for a in argv if not a.startswith(">") and a not in ("/dev/null",)]
        name, args = argv[0], argv[1:]
        world, host, now = self.world, self.host, self.world.clock.now
        if name == "break":
            raise _Break
        if name == "echo":
            if not redirect:
                self.out.append(" ".join(args) + "\n")
            return 0
        if name in ("true", ":"):
            return 0
        if name == "sleep":
            world.clock.advance(float(args[0]))
            return 0
        if name == "python3" and "-" in args:  # options (-I -S) before the script read from stdin
            return self._inventory(args[args.index("-") + 1 :])
        if name == "tail":
            lines = host.sync_log.read_text(encoding="utf-8").splitlines()
            count = int(args[args.index("-n") + 1]) if "-n" in args else 10
            self.out.append("".join(line + "\n" for line in lines[-count:]))
            return 0
        if name in ("pgrep", "pkill"):
            signal = "TERM"
            rest = list(args)
            if rest and rest[0].startswith("-") and rest[0] not in ("-f",):
                signal = rest.pop(0).lstrip("-")
            if rest[:1] != ["-f"] or len(rest) < 2:
                self.err.append(f"{name}: unsupported arguments\n")
                return 2
            pattern = re.compile(rest[1])
            matched = [cmd for cmd in self.processes() if pattern.search(cmd)]
            if name == "pgrep":
                if not redirect:
                    self.out.append("".join(f"{4000 + k}\n" for k in range(len(matched))))
                return 0 if matched else 1
            if not matched:
                return 1
            if AGENT_CMDLINE in matched:
                host.agent = "dead"
                self.world.log.applied()
            if any(cmd.startswith("sh -c ") for cmd in matched):
                raise ShellExit(f"killed by SIG{signal}")
            return 0
        if name == "command" and args[:1] == ["-v"]:
            found = {"systemctl": host.systemd}.get(args[1], args[1] in ("sh", "pgrep", "pkill", "python3"))
            return 0 if found else 1
        if name == "systemctl":
            if not host.systemd:
                self.err.append("sh: 1: systemctl: not found\n")
                return 127
            if args[:1] == ["restart"]:
                self._start_agent()
                return 0
            if args[:3] == ["show", "-p", "Restart"]:
                self.out.append(f"Restart={host.restart_policy}\n")
                return 0
            return 1
        if name == "./start_sync.sh":
            if not (host.login_dir / "start_sync.sh").exists():
                self.err.append("sh: 1: ./start_sync.sh: not found\n")
                return 127
            if host.agent_alive(now):
                return 0  # an agent runs already: start_sync.sh starts no second one
            self._start_agent()
            return 0
        self.err.append(f"sh: 1: {name}: not found\n")
        return 127

    def _start_agent(self) -> None:
        host = self.host
        host.agent, host.agent_started_at = "running", self.world.clock.now
        host.restarts += 1
        self.world.log.applied()

    def _inventory(self, args: list[str]) -> int:
        """``python3 [-I -S] - DATA_DIR [LAST_SYNC [no-checksums]]`` with the inventory's source on stdin: the
        source the remediator sent is what runs, on the host's data dir."""
        if not self.stdin:
            return 0
        namespace: dict[str, Any] = {"__name__": "__main__"}
        buffer = io.StringIO()
        argv = sys.argv
        sys.argv = ["-", *args]
        try:
            with contextlib.redirect_stdout(buffer):
                exec(compile(self.stdin, "<stdin>", "exec"), namespace)  # noqa: S102 - the host runs it
        except Exception as exc:
            self.err.append(f"Traceback: {type(exc).__name__}: {exc}\n")
            return 1
        finally:
            sys.argv = argv
        self.out.append(buffer.getvalue())
        return 0


# -- HTTP into the world ------------------------------------------------------------------------------


def make_response(request: requests.PreparedRequest, status: int, body: Any) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.request = request
    response.url = request.url or ""
    response.reason = "OK" if status < 400 else "Error"
    if isinstance(body, bytes | str):
        raw = body.encode() if isinstance(body, str) else body
        response.headers["Content-Type"] = "text/html"
    else:
        raw = json.dumps(body).encode()
        response.headers["Content-Type"] = "application/json"
    response._content = raw
    response.encoding = "utf-8"
    return response


def request_body(request: requests.PreparedRequest) -> Any:
    raw = request.body
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


class WorldAdapter(BaseAdapter):
    """A requests transport that answers from the world (mount it on a client's session)."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        status, body = self.world.http(
            request.method or "GET", request.url or "", request_body(request), request.headers
        )
        return make_response(request, status, body)

    def close(self) -> None:
        pass


# -- the world as the remediator's Clients -------------------------------------------------------------


class WorldSession:
    """An SSH session to a world host (``remediator.clients.Session``)."""

    def __init__(self, world: World, record: Any) -> None:
        self.world = world
        self.record = record
        self.host: WorldHost | None = None

    def __enter__(self) -> WorldSession:
        from remediator.exceptions import SSHError

        host = self.world.host_by_address(self.record.address)
        if host is None or not host.ssh_up:
            raise SSHError("connection refused")
        self.host = host
        return self

    def __exit__(self, *exc: object) -> None:
        self.host = None

    def run(self, command: str, stdin: str | None = None, timeout: float | None = None) -> Any:
        from remediator.clients.ssh import CommandResult
        from remediator.exceptions import SSHError

        assert self.host is not None, "connect first"
        if not self.host.ssh_up:
            raise SSHError(f"{command.split()[0]}: connection lost")
        status, out, err = self.world.run(self.host, command, stdin)
        return CommandResult(command, status, out, err)


def world_settings_env(root: Path) -> dict[str, str]:
    """The REMEDIATOR_* environment of a remediator talking to this world."""
    return {
        "REMEDIATOR_COORDINATOR_URL": COORDINATOR_URL,
        "REMEDIATOR_COORDINATOR_ADMIN_KEY": ADMIN_KEY,
        "REMEDIATOR_COORDINATOR_TIMEOUT": "10",
        "REMEDIATOR_PAGE_WEBHOOK_URL": PAGER_WEBHOOK_URL,
        "REMEDIATOR_PAGERDUTY_ROUTING_KEY": "world-routing-key-77aa",
        "REMEDIATOR_PAGERDUTY_URL": PAGERDUTY_URL,
        "REMEDIATOR_ALERTMANAGER_URL": ALERTMANAGER_URL,
        "REMEDIATOR_LAMBDA_URL": LAMBDA_URL,
        "REMEDIATOR_LAMBDA_API_KEY": "world-lambda-key-19c3",
        "REMEDIATOR_LAMBDA_STATUS_URL": LAMBDA_STATUS_URL,
        "REMEDIATOR_RECOVERY_DIR": str(root / "recovered"),
        "REMEDIATOR_LEDGER_FILE": str(root / "ledger.jsonl"),
        "REMEDIATOR_IMPORT_COMMAND": "world-import --data-dir {data_dir} --host {host_id}",
        "REMEDIATOR_SSH_KNOWN_HOSTS": str(root / "known_hosts"),
        "REMEDIATOR_LOCK_TTL": "30",
    }


def world_clients(world: World, settings: Any) -> Any:
    """The remediator's Clients over the world: the real HTTP clients (coordinator, Lambda provider,
    status page, pagers) on a WorldAdapter, world SSH sessions, real rsync, the world's import."""
    from remediator.clients import Clients, providers
    from remediator.clients.coordinator import HttpCoordinator
    from remediator.clients.netcheck import NetworkCheck
    from remediator.clients.pagers import pagers_from_settings
    from remediator.clients.ssh import RsyncResult

    def session() -> requests.Session:
        s = requests.Session()
        s.mount("http://", WorldAdapter(world))
        s.mount("https://", WorldAdapter(world))
        return s

    coordinator = HttpCoordinator(
        settings.coordinator_url, settings.coordinator_admin_key, settings.coordinator_timeout
    )
    coordinator.session = session()
    status_session = session()

    def rsync(record: Any, dest: Path, *, dry_run: bool = False, timeout: float | None = None) -> Any:
        return RsyncResult(*world.rsync(world.host_by_address(record.address), Path(dest), dry_run))

    def run_import(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return world.run_import(argv)

    def provider_map() -> dict[str, Any]:
        return {
            "lambda": providers.LambdaProvider(
                settings.lambda_url, settings.lambda_api_key, session=session()
            )
        }

    def provider_statuses() -> dict[str, bool | None]:
        return providers.provider_statuses(settings, session=status_session)

    provider_statuses.session = status_session  # type: ignore[attr-defined]  (the fault layer mounts on it)

    def network(hosts: Mapping[str, Mapping[str, Any]]) -> Any:
        ok, reachable, total = world.network_ok()
        return NetworkCheck(ok, reachable, total, {})

    def pagers() -> dict[str, Any]:
        found = pagers_from_settings(settings)
        for pager in found.values():
            pager.session = session()
        return found

    def silences() -> Any:
        from remediator.silences import AlertmanagerSilences

        return AlertmanagerSilences(settings.alertmanager_url, session=session())

    return Clients(
        coordinator=coordinator,
        ssh=lambda record: WorldSession(world, record),
        rsync=rsync,
        run_import=run_import,
        providers=provider_map,
        provider_statuses=provider_statuses,
        network=network,
        pagers=pagers,
        **({"silences": silences} if "silences" in Clients.__dataclass_fields__ else {}),
    )
