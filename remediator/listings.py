"""Shared listings: one fetch of a fleet-wide answer serves every worker for a few seconds.

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

Both keep the limits' fail-safe: a listing that cannot be shared or waited for in
``REMEDIATOR_LIMIT_WAIT_SECONDS`` is the error of the call (the coordinator unavailable, the cloud
state unknown), never an answer made up.
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
from remediator.limits import patiently
from remediator.locks import RELEASE_LUA, RENEW_LUA

log = logging.getLogger("remediator.limits")

# Seconds the lock of a worker fetching a shared listing lives unless renewed; renewed every third of it
# while the fetch runs (however long its timeouts), so a worker killed mid-fetch holds the others up for
# this long, not for the longest fetch there could be.
LISTING_LOCK_TTL = 5.0
LISTING_POLL = 0.05  # seconds between two looks for a listing another worker is fetching

T = TypeVar("T")


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
        if patiently(
            what, deadline, lambda: conn.set(lock_key, token, nx=True, px=int(LISTING_LOCK_TTL * 1000))
        ):
            try:
                found = look()  # stored by another worker between our look and our lock?
                if found is not None:
                    return found
                with _renewed(conn, lock_key, token):
                    return fetch()
            finally:
                with contextlib.suppress(redis.RedisError):  # it expires by itself
                    unlock(keys=[lock_key], args=[token])
        if time.monotonic() > deadline:
            raise LimitUnavailable(f"{what}: another worker's fetch gave nothing in time")
        time.sleep(LISTING_POLL)  # another worker is fetching it: a few seconds at most


@contextlib.contextmanager
def _renewed(conn: redis.Redis, lock_key: str, token: str) -> Iterator[None]:
    """Keep the fetch lock ``lock_key`` (holding ``token``) alive while the block runs."""
    stop = threading.Event()
    extend = conn.register_script(RENEW_LUA)
    ttl_ms = int(LISTING_LOCK_TTL * 1000)

    def renew() -> None:
        while not stop.wait(LISTING_LOCK_TTL / 3):
            try:
                if not extend(keys=[lock_key], args=[token, ttl_ms]):
                    return  # lapsed (Redis away for a whole TTL): another worker may fetch too, no harm
            except redis.RedisError:
                continue  # it lapses by itself if Redis stays away

    thread = threading.Thread(target=renew, name="listing-lock", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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
        self._unlock = conn.register_script(RELEASE_LUA)

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
            raw = patiently(what, deadline, lambda: self.conn.get(self.key))
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
        self._unlock = conn.register_script(RELEASE_LUA)

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

            at, found = patiently(what, deadline, look)
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
