"""Fleet-wide limits, shared by every worker process and pod through Redis.

More workers must not mean more load on what they share. Three limits, all applied in the clients
seam (``remediator.clients.real_clients``), so the ladder, the probe and the fleet view get them alike:

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
- ``SharedListing``: one provider listing (Vast.ai, Lambda) serves every diagnosis for
  ``REMEDIATOR_PROVIDER_LISTING_SECONDS``: the first worker to need it takes a lock, fetches it and
  stores the instance states it read (or the error it met) in Redis; the others wait for that and read
  it. A storm of 1,000 diagnoses makes one listing, not 1,000 (each of them paged). A caller that
  cannot use a listing older than some moment (diagnosis of a host that did not answer over SSH) asks
  with ``since`` and gets one fetched after it, still one fetch at a time fleet-wide.

- ``SharedHosts``: one coordinator host listing (``GET /sync/hosts``, the whole fleet in one answer)
  serves every read for ``REMEDIATOR_COORDINATOR_LISTING_SECONDS``: fetched by one worker at a time,
  kept in a Redis hash of one record per host, so a read parses its own host's record, not the
  fleet's. A 1,000-host storm read the 1,000-host listing three or four times per host.

Each fails safe: when Redis does not answer, the limit waits and tries again (backing off up to
``REDIS_BACKOFF_MAX`` seconds) rather than letting the call through unbounded, and after
``REMEDIATOR_LIMIT_WAIT_SECONDS`` without a slot it raises ``LimitUnavailable``, which the clients seam
turns into the error of the call it guards: an SSH error (the host was not reached this time), the
coordinator being unavailable (the ladder waits for it without using an attempt), or a provider error
(the cloud state is unknown). Nothing is ever let through without its slot.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import redis

from remediator import keys
from remediator.connections import text
from remediator.exceptions import LimitUnavailable, ProviderError

log = logging.getLogger("remediator.limits")

SLOT_LEASE_TTL = 30.0  # seconds an SSH slot lives unless its holder renews it (every third of it)
WAIT_SLICE = 1.0  # seconds one blocking wait in Redis lasts before the limit is tried again
REDIS_BACKOFF_MAX = 2.0  # seconds between two tries when Redis does not answer
LISTING_LOCK_TTL = 60.0  # seconds the worker fetching a provider listing holds its lock at most
LISTING_POLL = 0.05  # seconds between two looks for a listing another worker is fetching
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
UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _patiently(what: str, deadline: float, call: Callable[[], T]) -> T:
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


def _shared(
    conn: redis.Redis,
    unlock: Any,
    lock_key: str,
    what: str,
    deadline: float,
    look: Callable[[], T | None],
    fetch: Callable[[], T],
) -> T:
    """What ``look()`` finds in Redis (anything but None); else one worker at a time, under
    ``lock_key``, runs ``fetch()`` (which stores what it fetched for the others), while the others
    wait for ``look()`` to find it. LimitUnavailable after ``deadline`` (monotonic seconds)."""
    token = uuid.uuid4().hex
    while True:
        found = look()
        if found is not None:
            return found
        if _patiently(
            what, deadline, lambda: conn.set(lock_key, token, nx=True, px=int(LISTING_LOCK_TTL * 1000))
        ):
            try:
                found = look()  # stored by another worker between our look and our lock?
                return found if found is not None else fetch()
            finally:
                with contextlib.suppress(redis.RedisError):  # it expires by itself
                    unlock(keys=[lock_key], args=[token])
        if time.monotonic() > deadline:
            raise LimitUnavailable(f"{what}: another worker's fetch gave nothing in time")
        time.sleep(LISTING_POLL)  # another worker is fetching it: a few seconds at most


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
            if _patiently(what, deadline, lambda: self._acquire(keys=self._keys, args=args)) == 1:
                return Lease(self, token)
            left = deadline - time.monotonic()
            if left <= 0:
                raise LimitUnavailable(f"no SSH session slot free within {self.wait:g} s: {what} reached")
            self._wait_for_release(what, deadline, max(0.05, min(WAIT_SLICE, left)))

    def _wait_for_release(self, what: str, deadline: float, seconds: float) -> None:
        """Block in Redis until a slot is freed (or ``seconds`` pass: a lease may expire unreleased)."""
        _patiently(what, deadline, lambda: self.conn.blpop([keys.SSH_SLOTS_FREED], timeout=seconds))

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
            wait_ms = _patiently(
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


class SharedListing:
    """A provider whose instance listing is fetched once for every worker for ``ttl`` seconds.

    Wraps a ``remediator.clients.providers`` provider (``name``, ``url``, ``instances()``,
    ``row_state(row)``).
    What is shared is what diagnosis reads: each listed instance's state, or the error that made the
    listing untrustworthy (so a failing provider is not asked again by every host either)."""

    def __init__(self, inner: Any, conn: redis.Redis, ttl: float, wait: float) -> None:
        self.inner, self.conn, self.ttl, self.wait = inner, conn, float(ttl), float(wait)
        self.name = inner.name
        digest = hashlib.sha256(str(getattr(inner, "url", "")).encode()).hexdigest()[:16]
        self.key = keys.LISTING.format(f"{self.name}:{digest}")
        self.lock_key = keys.LISTING_LOCK.format(f"{self.name}:{digest}")
        self._unlock = conn.register_script(UNLOCK_LUA)

    def __repr__(self) -> str:
        return f"SharedListing({self.inner!r}, ttl={self.ttl:g})"

    def instance_states(self, instance_ids: Iterable[str], since: float | None = None) -> dict[str, Any]:
        """States of several instances from the shared listing (an id not listed is terminated).

        ``since`` (unix seconds): only a listing fetched at or after it will do -- diagnosis asks this
        when a host did not answer over SSH, where a state a few seconds old (an instance terminated
        since) would send the ladder the wrong way. Such asks are still one fetch at a time."""
        from remediator.clients.providers import CloudState

        try:
            listed = self._listing(since)
        except LimitUnavailable as exc:  # no shared listing, and no listing of our own either
            raise ProviderError(str(exc)) from None
        return {str(i): CloudState(listed.get(str(i), CloudState.TERMINATED.value)) for i in instance_ids}

    def instance_state(self, instance_id: str) -> Any:
        return self.instance_states([instance_id])[str(instance_id)]

    def instance_state_since(self, instance_id: str, since: float) -> Any:
        """The state of one instance from a listing fetched at or after ``since`` (see instance_states)."""
        return self.instance_states([instance_id], since)[str(instance_id)]

    def _listing(self, since: float | None = None) -> dict[str, str]:
        deadline = time.monotonic() + self.wait
        what = f"{self.name} listing"

        def stored() -> dict[str, Any] | None:
            raw = _patiently(what, deadline, lambda: self.conn.get(self.key))
            if raw is None:
                return None
            shared = json.loads(raw)
            if since is not None and float(shared.get("at", 0)) < since:
                return None  # older than the caller can use
            return shared

        return _read(_shared(self.conn, self._unlock, self.lock_key, what, deadline, stored, self._fetch))

    def _fetch(self) -> dict[str, Any]:
        at = time.time()  # when the fetch began: every state in it is at least this recent
        try:
            shared: dict[str, Any] = {
                "at": at,
                "states": {
                    str(row.get("id")): self.inner.row_state(row).value for row in self.inner.instances()
                },
            }
        except ProviderError as exc:
            shared = {"at": at, "error": str(exc)}
        try:
            self.conn.set(self.key, json.dumps(shared), px=max(1, int(self.ttl * 1000)))
        except redis.RedisError as exc:  # fetched under the lock all the same: use it, share it next time
            log.warning("%s listing not shared (%s)", self.name, type(exc).__name__)
        return shared


def _read(shared: dict[str, Any]) -> dict[str, str]:
    if "error" in shared:
        raise ProviderError(str(shared["error"]))
    return dict(shared["states"])


class SharedHosts:
    """A coordinator whose host listing is fetched once for every worker for ``ttl`` seconds.

    Wraps ``remediator.clients.coordinator.HttpCoordinator``; its writes go straight through. A read
    uses a listing whose fetch began at most ``ttl`` seconds before the read did (never older), else
    fetches one under a lock while the other readers wait for it. An error the fetch met (the
    coordinator unavailable, an answer it cannot trust) is shared the same way and raised as the same
    error: every reader in that window would have met it too. Each host's record is kept as the
    coordinator sent it, and checked (``HostRecord.from_api``) by the reader, as before."""

    def __init__(self, inner: Any, conn: redis.Redis, ttl: float, wait: float) -> None:
        self.inner, self.conn, self.ttl, self.wait = inner, conn, float(ttl), float(wait)
        self._unlock = conn.register_script(UNLOCK_LUA)

    def __repr__(self) -> str:
        return f"SharedHosts({self.inner!r}, ttl={self.ttl:g})"

    def __getattr__(self, name: str) -> Any:  # the writes, and the HTTP client's attributes
        return getattr(self.inner, name)

    def hosts(self) -> dict[str, Any]:
        from remediator.clients.coordinator import _records

        found = self._read(lambda pipe: pipe.hgetall(keys.HOSTS_LISTING), lambda raw: raw)
        return _records(
            {text(h): json.loads(r) if isinstance(r, (bytes, str)) else r for h, r in found.items()}
        )

    def host(self, host_id: str, since: float | None = None) -> Any:
        """``since``: no listing fetched before it will do either (diagnosis passes its ladder's start:
        never a state from before the alert that started it)."""
        from remediator.clients.coordinator import _record

        raw = self._read(
            lambda pipe: pipe.hget(keys.HOSTS_LISTING, host_id), lambda raw: raw.get(host_id), since
        )
        if raw is None:
            return None  # not in the listing: unknown to the coordinator
        return _record({host_id: json.loads(raw) if isinstance(raw, (bytes, str)) else raw}, host_id)

    def _read(
        self,
        stored_part: Callable[[Any], Any],
        fetched_part: Callable[[dict[str, Any]], Any],
        since: float | None = None,
    ) -> Any:
        """A part of the shared listing (``stored_part`` queues its read on a Redis pipeline), once one
        fetched late enough is there; or of the listing this reader fetched (``fetched_part``)."""
        deadline = time.monotonic() + self.wait
        now = time.time()
        oldest = max(now - self.ttl, min(since or 0.0, now))  # a ``since`` ahead of our clock: now
        what = "coordinator host listing"

        def stored() -> tuple[Any] | None:  # the part in a 1-tuple: a host not listed is None
            def look() -> list[Any]:
                pipe = self.conn.pipeline(transaction=True)  # the listing and its time, as one
                pipe.get(keys.HOSTS_LISTING_AT)
                stored_part(pipe)
                return list(pipe.execute())

            at, found = _patiently(what, deadline, look)
            if at is None or float(json.loads(at)["at"]) < oldest:
                return None  # none, or older than the reader may use
            meta = json.loads(at)
            if "error" in meta:
                raise _coordinator_error(meta)
            return (found,)

        try:
            (found,) = _shared(
                self.conn,
                self._unlock,
                keys.HOSTS_LISTING_LOCK,
                what,
                deadline,
                stored,
                lambda: (fetched_part(self._fetch()),),
            )
        except LimitUnavailable as exc:
            from remediator.exceptions import CoordinatorUnavailable

            raise CoordinatorUnavailable(f"GET /sync/hosts not sent: {exc}") from None
        return found

    def _fetch(self) -> dict[str, Any]:
        """Fetch the listing, share it (or its error), and return it (or raise its error)."""
        from remediator.exceptions import CoordinatorError, CoordinatorUnavailable

        at = time.time()  # when the fetch began: every record in it is at least this recent
        keep = max(1, int((self.ttl + 5.0) * 1000))
        pipe = self.conn.pipeline(transaction=True)
        pipe.delete(keys.HOSTS_LISTING)
        failed: CoordinatorError | None = None
        raw: dict[str, Any] = {}
        try:
            raw = self.inner._raw_hosts()
        except CoordinatorError as exc:
            failed = exc
            meta = {"at": at, "error": str(exc), "unavailable": isinstance(exc, CoordinatorUnavailable)}
        else:
            meta = {"at": at}
            if raw:
                pipe.hset(keys.HOSTS_LISTING, mapping={h: json.dumps(r) for h, r in raw.items()})
                pipe.pexpire(keys.HOSTS_LISTING, keep)
        pipe.set(keys.HOSTS_LISTING_AT, json.dumps(meta), px=keep)
        try:
            pipe.execute()
        except redis.RedisError as exc:  # fetched under the lock all the same: use it
            log.warning("coordinator host listing not shared (%s)", type(exc).__name__)
        if failed is not None:
            raise failed
        return raw


def _coordinator_error(meta: dict[str, Any]) -> Exception:
    from remediator.exceptions import CoordinatorError, CoordinatorUnavailable

    kind = CoordinatorUnavailable if meta.get("unavailable") else CoordinatorError
    return kind(f"{meta['error']} (the fleet's shared host listing)")
