"""Fleet-wide limits, shared by every worker process and pod through Redis.

More workers must not mean more load on what they share. Two limits here and the shared listings in
``remediator.listings``, all applied in the clients seam (``remediator.clients.real_clients``), so the
ladder, the probe and the fleet view get them alike:

- ``SessionSlots``: at most ``REMEDIATOR_MAX_SSH_SESSIONS`` SSH sessions (asyncssh sessions and
  rsync's OpenSSH) open at once fleet-wide. A slot is a lease in a sorted set (token -> expiry, Redis
  server time), taken by a Lua script that first drops expired leases; the holder renews it every third
  of its TTL from a thread, so a worker killed while holding one frees it within ``SLOT_LEASE_TTL``
  seconds instead of leaking it (the one gap: a holder that could not reach Redis for a whole lease
  finds its slot gone, and takes it again once there is room, its session already open). A worker
  waiting for a slot blocks in Redis (``BLPOP`` on a list that each release pushes to), not in a
  sleep, and retries at least every ``WAIT_SLICE`` seconds (a lease may expire without a release).
- ``CallRate``: at most ``REMEDIATOR_COORDINATOR_CALLS_PER_SECOND`` coordinator HTTP calls in any one
  second fleet-wide: a sliding window (a sorted set of the last second's calls, Redis time); a call that
  finds it full waits until its oldest entry leaves it, then tries again. Every HTTP attempt counts,
  retries included (``remediator.clients.coordinator.HttpCoordinator``).

Each fails safe: when Redis does not answer, the limit waits and tries again (backing off up to
``REDIS_BACKOFF_MAX`` seconds) rather than letting the call through unbounded, and after
``REMEDIATOR_LIMIT_WAIT_SECONDS`` without a slot it raises ``LimitUnavailable``, which the clients seam
turns into the error of the call it guards: an SSH error (the host was not reached this time), the
coordinator being unavailable (the ladder waits for it without using an attempt), or a provider error
(the cloud state is unknown). Nothing is ever let through without its slot.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import redis

from remediator import keys
from remediator.exceptions import LimitUnavailable

log = logging.getLogger("remediator.limits")

SLOT_LEASE_TTL = 30.0  # seconds an SSH slot lives unless its holder renews it (every third of it)
WAIT_SLICE = 1.0  # seconds one blocking wait in Redis lasts before the limit is tried again
REDIS_BACKOFF_MAX = 2.0  # seconds between two tries when Redis does not answer
FREED_KEEP = 60.0  # seconds the list of freed-slot tokens lives without a release

T = TypeVar("T")

# KEYS: leases, peak. ARGV: token, limit, lease ms. 1 when the slot was taken, else 0. The set's own TTL
# only ever grows (a holder with a shorter lease must not expire the others' leases with it).
ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local open = redis.call('ZCARD', KEYS[1])
if open >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
if open + 1 > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], open + 1) end
return 1
"""

# KEYS: leases. ARGV: token, lease ms. 1 when renewed, 0 when the lease was gone (expired and dropped).
RENEW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""

# KEYS: leases, freed. ARGV: token, keep ms.
RELEASE_LUA = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], 0, 63)
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
end
return 1
"""

# KEYS: window, peak. ARGV: token, calls per second. 0 when the call may go now, else milliseconds to
# wait. The peak is the most calls the window ever held (what bench/bench_scale.py reports).
CALL_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 1000)
local open = redis.call('ZCARD', KEYS[1])
if open < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 2000)
  if open + 1 > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], open + 1) end
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + 1000 - now)
"""

# KEYS: lock. ARGV: token. Deletes the lock only while it is still this worker's.


def patiently(what: str, deadline: float, call: Callable[[], T]) -> T:
    """``call()``, tried again with backoff while Redis does not answer, until ``deadline``
    (monotonic seconds); then LimitUnavailable. Never lets the guarded call through without it."""
    delay = 0.05
    while True:
        try:
            return call()
        except redis.RedisError as exc:
            if time.monotonic() + delay > deadline:
                raise LimitUnavailable(f"{what}: Redis did not answer ({type(exc).__name__})") from None
            log.warning(
                "%s: Redis did not answer (%s); trying again in %.2fs", what, type(exc).__name__, delay
            )
            time.sleep(delay)  # bounded: the limit's own wait, never past its deadline
            delay = min(delay * 2, REDIS_BACKOFF_MAX)


class Lease:
    """One SSH slot held; renewed in a thread until released."""

    def __init__(self, slots: SessionSlots, token: str) -> None:
        self.slots, self.token = slots, token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="ssh-slot-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        every = self.slots.lease_ttl / 3
        while not self._stop.wait(every):
            try:
                if not self.slots._renew(self.token) and not self.slots._retake(self.token):
                    # Expired while held (Redis unreachable for a whole lease) and the slot was taken
                    # since: the session is already open; it goes on, and is retaken when one frees.
                    log.warning("SSH slot lease %s lost while held; retaken once one frees", self.token[:8])
            except redis.RedisError as exc:  # tried again at the next renewal
                log.warning("SSH slot lease %s not renewed (%s)", self.token[:8], type(exc).__name__)

    def release(self) -> None:
        self._stop.set()
        try:
            self.slots._release(self.token)
        except redis.RedisError as exc:  # the lease expires by itself within its TTL
            log.warning("SSH slot lease %s not released (%s)", self.token[:8], type(exc).__name__)


class SessionSlots:
    """At most ``limit`` SSH sessions open at once, fleet-wide (see the module docstring)."""

    def __init__(self, conn: redis.Redis, limit: int, wait: float, lease_ttl: float = SLOT_LEASE_TTL) -> None:
        if limit < 1:
            raise ValueError("an SSH session limit must be at least 1")
        self.conn, self.limit, self.wait, self.lease_ttl = conn, int(limit), float(wait), float(lease_ttl)
        self._acquire = conn.register_script(ACQUIRE_LUA)
        self._renew_script = conn.register_script(RENEW_LUA)
        self._release_script = conn.register_script(RELEASE_LUA)
        self._keys = [keys.SSH_SLOTS, keys.SSH_SLOTS_PEAK]

    def acquire(self) -> Lease:
        """A slot, waiting for one up to ``wait`` seconds; LimitUnavailable when none came."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.wait
        what = f"SSH session limit ({self.limit})"
        args: list[str | int] = [token, self.limit, int(self.lease_ttl * 1000)]
        while True:
            if patiently(what, deadline, lambda: self._acquire(keys=self._keys, args=args)) == 1:
                return Lease(self, token)
            left = deadline - time.monotonic()
            if left <= 0:
                raise LimitUnavailable(f"no SSH session slot free within {self.wait:g} s: {what} reached")
            self._wait_for_release(what, deadline, max(0.05, min(WAIT_SLICE, left)))

    def _wait_for_release(self, what: str, deadline: float, seconds: float) -> None:
        """Block in Redis until a slot is freed (or ``seconds`` pass: a lease may expire unreleased)."""
        patiently(what, deadline, lambda: self.conn.blpop([keys.SSH_SLOTS_FREED], timeout=seconds))

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        lease = self.acquire()
        try:
            yield
        finally:
            lease.release()

    def _renew(self, token: str) -> bool:
        return self._renew_script(keys=[keys.SSH_SLOTS], args=[token, int(self.lease_ttl * 1000)]) == 1

    def _retake(self, token: str) -> bool:
        """Take ``token``'s slot again after its lease expired while held (there is room for it)."""
        return self._acquire(keys=self._keys, args=[token, self.limit, int(self.lease_ttl * 1000)]) == 1

    def _release(self, token: str) -> None:
        self._release_script(
            keys=[keys.SSH_SLOTS, keys.SSH_SLOTS_FREED], args=[token, int(FREED_KEEP * 1000)]
        )

    def open(self) -> int:
        """Slots held now (leases not expired, by Redis' clock as the scripts read it)."""
        seconds, micros = self.conn.time()
        return int(self.conn.zcount(keys.SSH_SLOTS, seconds * 1000 + micros // 1000, "+inf"))

    def peak(self, reset: bool = False) -> int:
        """The most slots held at once since the last reset."""
        value = self.conn.getset(keys.SSH_SLOTS_PEAK, 0) if reset else self.conn.get(keys.SSH_SLOTS_PEAK)
        return int(value or 0)


class CallRate:
    """At most ``per_second`` calls in any one second, fleet-wide (see the module docstring)."""

    def __init__(self, conn: redis.Redis, per_second: int, wait: float, key: str = keys.COORDINATOR_CALLS):
        if per_second < 1:
            raise ValueError("a call rate must be at least 1 per second")
        self.conn, self.per_second, self.wait, self.key = conn, int(per_second), float(wait), key
        self._script = conn.register_script(CALL_LUA)

    def take(self) -> None:
        """Return once a call may be made; LimitUnavailable after ``wait`` seconds without one."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.wait
        what = f"coordinator call rate ({self.per_second}/s)"
        while True:
            wait_ms = patiently(
                what,
                deadline,
                lambda: self._script(
                    keys=[self.key, keys.COORDINATOR_CALLS_PEAK], args=[token, self.per_second]
                ),
            )
            if int(wait_ms) == 0:
                return
            pause = int(wait_ms) / 1000
            if time.monotonic() + pause > deadline:
                raise LimitUnavailable(f"no coordinator call slot within {self.wait:g} s: {what} reached")
            time.sleep(pause)  # at most a second: until the window's oldest call leaves it
