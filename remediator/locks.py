"""Per-host locks: ``SET key token NX PX ttl``, renewed while held, released by compare-and-delete.

Every acquisition also increments the host's fencing counter; a step records the fence it ran under,
so a worker that lost its lock (paused, partitioned) can be told apart from the one that now holds it.
"""

from __future__ import annotations

import secrets
import threading
from types import TracebackType

import redis

from remediator import keys
from remediator.defaults import HOST_KEYS_TTL
from remediator.exceptions import LockLost, LockNotAcquired
from remediator.hosts import validate_host_id

# Token locks (SET NX PX with a random token), shared by every lock of the product: the host locks here,
# the shared listings' fetch locks (listings.py) and the fleet probe's pass lock (workers/probe.py).
# KEYS[1] lock key; ARGV[1] token. Delete only if we still own it.
RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# KEYS[1] lock key; ARGV[1] token, ARGV[2] ttl ms. Extend only if we still own it.
RENEW_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


class HostLock:
    """The lock on one host. Use as a context manager, or ``acquire()`` / ``release()``."""

    def __init__(self, connection: redis.Redis, host_id: str, ttl: float, *, renew: bool = True) -> None:
        self.connection = connection
        self.host_id = validate_host_id(host_id)
        self.key = keys.LOCK.format(host_id)
        self.ttl_ms = max(int(ttl * 1000), 1000)
        self.token = secrets.token_hex(16)
        self.fence: int | None = None
        self._renew = renew
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = threading.Event()

    def acquire(self) -> int:
        """Take the lock or raise LockNotAcquired; returns the fencing token."""
        if not self.connection.set(self.key, self.token, nx=True, px=self.ttl_ms):
            raise LockNotAcquired(f"host {self.host_id} is locked by another worker")
        fence_key = keys.FENCE.format(self.host_id)
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.incr(fence_key)
            pipe.expire(fence_key, HOST_KEYS_TTL)  # a host unseen for a month need not be remembered
            self.fence = int(pipe.execute()[0])
        if self._renew:
            self._thread = threading.Thread(
                target=self._renew_loop, name=f"lock-renew-{self.host_id}", daemon=True
            )
            self._thread.start()
        return self.fence

    def renew(self) -> bool:
        """Extend the TTL; False when the lock is no longer ours."""
        ok = bool(self.connection.eval(RENEW_LUA, 1, self.key, self.token, self.ttl_ms))
        if not ok:
            self._lost.set()
        return ok

    def _renew_loop(self) -> None:
        interval = self.ttl_ms / 3000
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    return
            except redis.RedisError:
                # Keep trying: a blip shorter than the TTL must not cost us the lock.
                continue

    def check(self) -> None:
        """Raise LockLost if the lock expired or was taken; call before committing a step."""
        if self._lost.is_set() or self.connection.get(self.key) != self.token.encode():
            self._lost.set()
            raise LockLost(f"lost the lock on host {self.host_id}")

    def release(self) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            return bool(self.connection.eval(RELEASE_LUA, 1, self.key, self.token))
        except redis.RedisError:
            return False  # it expires by itself

    def __enter__(self) -> HostLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
