"""The fleet probe (runbook Prevention 3, "regular connectivity tests to all hosts").

Every ``probe.interval_seconds`` one worker checks every host the coordinator lists: SSH ``echo OK``
within the connect timeout (runbook Diagnosis 2), then the agent check command (Diagnosis 3). The
findings go to Redis (``remediator.probe``), so every receiver exports them; with
``probe.start_prevention`` a reachable host whose agent is down gets a gentle ladder, through the intake
like an alert (a host with an open incident attaches to it instead).

Where it runs: a thread of every ``remediator worker`` (``Prober``, beside the sweeper) looks every
second whether a pass is due. A pass is claimed with ``SET remediator:probe:lock <token> NX EX ttl``
once the last one started an interval ago, so one pass runs at a time across workers. Not an RQ job:
a pass would take a work horse from the ladders for as long as its slowest host; not the sweeper's
thread: a slow pass would delay its resumes of dead ladders. The lock is renewed as hosts finish and
always released; a worker killed mid-pass leaves it to expire after its TTL.

Bounds: at most ``probe.concurrency`` SSH sessions at once (one pass at a time, so that is the probe's
fleet-wide SSH limit); each host's check is bounded by the connect timeout plus
``probe.command_timeout_seconds``, so a hanging host holds one session that long and delays no other.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import redis

from remediator import keys, probe
from remediator.clients import Clients, clients_for
from remediator.clients.coordinator import HostRecord
from remediator.config import Settings
from remediator.exceptions import CoordinatorError, RemediatorError, SSHError
from remediator.intake import LadderRequest, start_ladders
from remediator.locks import RELEASE_LUA, RENEW_LUA
from remediator.ops import ladder_limit
from remediator.probe import HostProbe, ProbePass
from workers.context import rules_for

log = logging.getLogger("remediator.probe")

LOCK_SLACK = 30.0  # seconds the pass lock outlives the longest single host check
PREVENTION_REASON = "fleet probe: the sync agent is not running"
PROBE_ALERTNAME = "FleetProbe"  # how a probe-started ladder names what started it (intake, audit)
TICK = 1.0  # seconds between two looks whether a pass is due (a Redis HGET)
UNDECIDED_EXIT = 126  # an agent check exiting with this or above (not runnable, not found) or by a signal


def check_host(clients: Clients, settings: Settings, policy: Any, record: HostRecord) -> HostProbe:
    """SSH echo OK, then the agent check, on one host; what could not be decided stays None."""
    t0 = time.monotonic()

    def found(reachable: bool | None, agent: bool | None, error: str | None = None) -> HostProbe:
        return HostProbe(
            record.host_id,
            reachable,
            agent,
            at=time.time(),
            seconds=round(time.monotonic() - t0, 3),
            retired=record.retired,
            error=error,
        )

    if not record.address or not record.ssh_user:
        return found(None, None, "no address or ssh_user in the coordinator's record")
    try:
        with clients.ssh(record) as session:
            echo = session.run("echo OK", timeout=settings.ssh_connect_timeout)
            if not (echo.ok and echo.stdout.strip() == "OK"):
                return found(False, None, f"echo OK answered exit {echo.exit_status}")
            try:
                check = session.run(settings.agent_check_command, timeout=policy.command_timeout_seconds)
            except SSHError as exc:
                return found(True, None, f"agent check: {exc}")
            if check.exit_status is None or check.exit_status >= UNDECIDED_EXIT:
                return found(True, None, f"agent check could not run (exit {check.exit_status})")
            return found(True, check.ok)
    except SSHError as exc:
        return found(False, None, str(exc))
    except RemediatorError as exc:  # configuration (no known_hosts, ...): not the host's fault
        return found(None, None, f"{type(exc).__name__}: {exc}")


def run_pass(conn: redis.Redis, settings: Settings, rules: Any, token: str) -> ProbePass | None:
    """Check every host the coordinator lists; save and return what was found (None: no coordinator)."""
    policy = rules.probe
    clients = clients_for(settings)
    started = time.time()
    try:
        records = clients.coordinator.hosts()
    except CoordinatorError as exc:
        log.warning("fleet probe: coordinator unavailable (%s); the last findings stay", exc)
        return None
    ttl_ms = int((settings.ssh_connect_timeout + 1 + policy.command_timeout_seconds + LOCK_SLACK) * 1000)
    hosts: dict[str, HostProbe] = {}
    if records:
        with ThreadPoolExecutor(
            max_workers=min(policy.concurrency, len(records)), thread_name_prefix="probe"
        ) as pool:
            futures = [pool.submit(check_host, clients, settings, policy, r) for r in records.values()]
            for future in as_completed(futures):
                result = future.result()
                hosts[result.host_id] = result
                conn.eval(RENEW_LUA, 1, keys.PROBE_LOCK, token, ttl_ms)
    found = ProbePass(started_at=started, finished_at=time.time(), hosts=hosts)
    probe.save(conn, found)
    down = sorted(h for h, p in hosts.items() if p.reachable is False)
    dead = sorted(h for h, p in hosts.items() if p.agent_running is False)
    log.info(
        "fleet probe: %d hosts in %.1fs; unreachable: %s; agent down: %s",
        len(hosts),
        found.finished_at - started,
        ", ".join(down) or "none",
        ", ".join(dead) or "none",
    )
    if policy.start_prevention:
        start_prevention(conn, settings, rules, found)
    return found


def start_prevention(conn: redis.Redis, settings: Settings, rules: Any, found: ProbePass) -> list[str]:
    """A gentle ladder for each reachable, unretired host whose agent is down; returns the hosts started."""
    hosts = sorted(found.hosts.items())
    targets = [h for h, p in hosts if p.reachable and p.agent_running is False and not p.retired]
    if not targets:
        return []
    dry = settings.dry_run
    result = start_ladders(
        conn,
        settings.queue,
        [
            LadderRequest(h, PREVENTION_REASON, alertname=PROBE_ALERTNAME, gentle=True, dry_run=dry)
            for h in targets
        ],
        ladder_limit(rules),
    )
    started = [a["host_id"] for a in result.accepted]
    if started:
        log.info("fleet probe: gentle ladders for %s", ", ".join(started))
    return started


def claim(conn: redis.Redis, settings: Settings, policy: Any) -> str | None:
    """The lock token when a pass is due and this worker got it, else None."""
    last = conn.hget(keys.PROBE, "claimed_at")
    if last is not None and time.time() - float(last) < policy.interval_seconds:
        return None
    token = secrets.token_hex(16)
    ttl = int(settings.ssh_connect_timeout + 1 + policy.command_timeout_seconds + LOCK_SLACK)
    if not conn.set(keys.PROBE_LOCK, token, nx=True, ex=ttl):
        return None
    # Another worker may have finished a pass between the look and the lock: look again, under it.
    last = conn.hget(keys.PROBE, "claimed_at")
    if last is not None and time.time() - float(last) < policy.interval_seconds:
        conn.eval(RELEASE_LUA, 1, keys.PROBE_LOCK, token)
        return None
    # The next pass is due an interval on. Not started_at: that, with finished_at and the findings,
    # describes the last pass that finished, and is written with them.
    conn.hset(keys.PROBE, "claimed_at", f"{time.time():.3f}")
    return token


def probe_once(conn: redis.Redis, settings: Settings, token: str) -> ProbePass | None:
    """Run a claimed pass and release its lock, whatever happens."""
    try:
        return run_pass(conn, settings, rules_for(settings), token)
    finally:
        try:
            conn.eval(RELEASE_LUA, 1, keys.PROBE_LOCK, token)
        except redis.RedisError:
            pass  # it expires by itself


class Prober(threading.Thread):
    """The fleet probe of one ``remediator worker``: looks every TICK seconds whether a pass is due."""

    def __init__(self, conn: redis.Redis, settings: Settings, tick: float = TICK) -> None:
        super().__init__(name="fleet-probe", daemon=True)
        self.conn = conn
        self.settings = settings
        self.tick = tick
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.tick):
            try:
                policy = rules_for(self.settings).probe
                token = claim(self.conn, self.settings, policy) if policy.enabled else None
                if token is not None:
                    probe_once(self.conn, self.settings, token)
            except redis.RedisError as exc:
                log.warning("fleet probe failed: %s", exc)
            except Exception:
                # A bug in one pass (or a broken rules file) must not end the thread for good.
                log.exception("fleet probe failed")

    def stop(self) -> None:
        self._stop_event.set()
