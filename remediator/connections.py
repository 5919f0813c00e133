"""The one way the remediator connects to Redis.

``REDIS_URL`` alone names one Redis. With Sentinel (``REDIS_SENTINELS`` and ``REDIS_SENTINEL_MASTER``)
the sentinels say where the master is, and ``REDIS_URL`` still gives the rest: its db, its credentials
(the master's password) and TLS (``rediss://``); its host and port are not used. The receiver, the
workers, their RQ scheduler, the sweeper, the CLI and the demo all build their clients here, so every
one of them follows a failover the same way: a client asks the sentinels again whenever its connection
to the master breaks, and a demoted master (``READONLY``) counts as a broken connection.

What a client raises while no master can be reached is always a ``redis.ConnectionError`` (a
``MasterNotFoundError`` while the sentinels know no healthy master, the error of the dead socket
before) or a ``redis.TimeoutError``: both are ``redis.RedisError``, which the receiver answers with
503 and the workers wait out.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.connection import SSLConnection, parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel

from remediator import keys
from remediator.config import Settings
from remediator.exceptions import ConfigError

log = logging.getLogger("remediator.redis")

SOCKET_TIMEOUT = 5.0  # seconds; a hung Redis must turn into a 503, not a hung request
CONNECT_TIMEOUT = 2.0  # seconds to connect to Redis (or to a sentinel)
SENTINEL_SOCKET_TIMEOUT = 2.0  # seconds a sentinel may take to say where the master is
HEALTH_CHECK_INTERVAL = 30  # seconds a pooled connection may sit idle before it is PINGed on reuse
# A command that meets a broken connection is tried again this often, after a short backoff (base and
# cap in seconds), on a fresh connection: under Sentinel that asks the sentinels for the master again.
RETRIES = 3
RETRY_BACKOFF_BASE = 0.05
RETRY_BACKOFF_CAP = 0.5
# TCP keepalive, so that a connection to a master that vanished without closing it (its node lost) is
# noticed in about KEEPIDLE + KEEPINTVL * KEEPCNT seconds, not when the socket timeout ends.
KEEPIDLE = 10  # seconds
KEEPINTVL = 5  # seconds
KEEPCNT = 3
REPLICA_WAIT_MS = 1000  # milliseconds the receiver waits for a replica to confirm an alert's writes
# Parts of REDIS_URL that say where one server is: under Sentinel the sentinels say that.
_ADDRESS_KWARGS = ("host", "port", "path", "connection_class")


def _keepalive_options() -> dict[int, int]:
    options = {}
    for name, value in (("TCP_KEEPIDLE", KEEPIDLE), ("TCP_KEEPINTVL", KEEPINTVL), ("TCP_KEEPCNT", KEEPCNT)):
        if hasattr(socket, name):  # Linux has all three; other systems keep their defaults
            options[getattr(socket, name)] = value
    return options


def _retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=RETRY_BACKOFF_BASE, cap=RETRY_BACKOFF_CAP), RETRIES)


def redis_from_settings(
    settings: Settings,
    *,
    socket_timeout: float | None = SOCKET_TIMEOUT,
    socket_connect_timeout: float = CONNECT_TIMEOUT,
) -> redis.Redis | None:
    """A client for the remediator's Redis (the Sentinel master when Sentinel is configured); None
    when neither REDIS_URL nor REDIS_SENTINELS is set. ``socket_timeout=None`` leaves reads unbounded
    (an RQ worker sets its own, longer than its blocking dequeue)."""
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "socket_keepalive": True,
        "socket_keepalive_options": _keepalive_options(),
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "retry": _retry(),
    }
    if settings.redis_sentinels:
        return _sentinel_master(settings, common)
    if not settings.redis_url:
        return None
    return redis.Redis.from_url(settings.redis_url, **common)


def text(raw: bytes | str) -> str:
    """A reply as text. The clients made here return bytes (no ``decode_responses``); redis-py types
    every reply ``bytes | str`` since it cannot tell."""
    return raw.decode() if isinstance(raw, bytes) else raw


def _url_kwargs(settings: Settings) -> dict[str, Any]:
    """What REDIS_URL says about the master under Sentinel: db, credentials, TLS and its options."""
    if not settings.redis_url:
        return {}
    try:
        kwargs = parse_url(settings.redis_url)
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL: {exc}") from None
    if settings.redis_url.startswith("unix://"):
        raise ConfigError("REDIS_URL: a unix:// socket cannot be combined with REDIS_SENTINELS")
    tls = kwargs.get("connection_class") is SSLConnection
    kwargs = {k: v for k, v in kwargs.items() if k not in _ADDRESS_KWARGS}
    if tls:
        kwargs["ssl"] = True
    return kwargs


def _sentinel_master(settings: Settings, common: dict[str, Any]) -> redis.Redis:
    master = _url_kwargs(settings)
    tls = {k: v for k, v in master.items() if k == "ssl" or k.startswith("ssl_")}
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        # One try per sentinel and question: a sentinel that is down (or refuses the password) is
        # skipped for the next one at once, instead of being retried with backoff (redis-py's default).
        "retry": Retry(NoBackoff(), 0),
        "password": settings.redis_sentinel_password,
        # Sentinels listen with TLS when the master does (the usual set-up): same CA and options.
        **tls,
    }
    sentinel = Sentinel(list(settings.redis_sentinels), sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(settings.redis_sentinel_master, **common, **master)


def is_sentinel_backed(conn: redis.Redis) -> bool:
    """Whether ``conn`` finds its master through sentinels (what an RQ job's connection must be)."""
    from redis.sentinel import SentinelConnectionPool, SentinelManagedConnection

    pool = conn.connection_pool
    return isinstance(pool, SentinelConnectionPool) or issubclass(
        pool.connection_class, SentinelManagedConnection
    )


def confirm_replicated(conn: redis.Redis, timeout_ms: int = REPLICA_WAIT_MS) -> bool:
    """Wait until a replica has every write made so far on the master (WAIT), so that a failover
    cannot lose them; raise ``redis.ConnectionError`` when the master has replicas and none confirmed.

    Replication is asynchronous: a master killed right after answering a write takes that write with
    it, and the replica promoted in its place never saw it. WAIT counts the writes of its own
    connection, so the probe writes on the connection it waits on: replication offsets grow in order,
    so a replica that has the probe has everything written before it. A master with no replica at all
    (alone after a failover, until the old one rejoins) cannot do better: True, and a warning."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.incr(keys.REPLICATION_PROBE)
        pipe.execute_command("WAIT", 1, timeout_ms)
        _, acknowledged = pipe.execute()
    if int(acknowledged) >= 1:
        return True
    role = conn.execute_command("ROLE")
    replicas = role[2] if role and role[0] in (b"master", "master") and len(role) > 2 else []
    if replicas:
        raise redis.ConnectionError(f"no replica confirmed the writes within {timeout_ms} ms")
    log.warning("the Redis master has no replica: writes are stored on the master alone")
    return False
