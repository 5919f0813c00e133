"""Loopback ports for the servers the remediator starts itself: the embedded Redis, the simulated
cluster's sshds, Alertmanager, and the tests' and benchmarks' servers.

Picking a port by binding port 0 and closing the socket returns one from the kernel's ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``), the range it also hands out as the local port of every
outgoing connection. Between the close and the server's own bind, any connection made on the machine
(a client of the previous test, a worker's Redis connection) may be given that same port, and the
server fails with "Address already in use". So ports are picked *outside* that range, where no
outgoing connection ever lands: from below it (above it when there is no room below), at random so
that processes picking at the same time rarely meet, and each checked free by binding it. Another
process may still take a port between the check and the server's bind: servers that start on a
picked port retry on a fresh one when their bind fails (``EmbeddedRedis``, ``SimCluster``,
``AlertmanagerProcess``).
"""

from __future__ import annotations

import random
import socket

EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
DEFAULT_EPHEMERAL_RANGE = (32768, 60999)  # Linux's default, when the file cannot be read
LOWEST_PORT = 10000  # ports below are left to well-known and registered services
MIN_POOL = 1000  # ports a pool outside the ephemeral range needs to be used
ATTEMPTS = 500  # candidates tried before giving up, plus ATTEMPTS_PER_PORT for each port asked for
ATTEMPTS_PER_PORT = 4  # a fleet-scale sim asks for 1,000 ports at once: more than ATTEMPTS candidates


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (first, last)."""
    try:
        with open(EPHEMERAL_RANGE_FILE, encoding="ascii") as fh:
            first, last = (int(n) for n in fh.read().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL_RANGE
    return first, last


def pool() -> range:
    """The ports to pick from: below the ephemeral range, else above it."""
    first, last = ephemeral_range()
    if first - LOWEST_PORT >= MIN_POOL:
        return range(LOWEST_PORT, first)
    if 65535 - last >= MIN_POOL:
        return range(last + 1, 65536)
    raise RuntimeError(
        f"no room for server ports outside the ephemeral range {first}-{last} ({EPHEMERAL_RANGE_FILE}); "
        f"leave at least {MIN_POOL} ports free of it above {LOWEST_PORT}"
    )


def _free(host: str, port: int, udp: bool) -> bool:
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_ports(host: str = "127.0.0.1", count: int = 1, *, udp: bool = False) -> list[int]:
    """``count`` distinct ports outside the ephemeral range, free on ``host`` now (TCP, and UDP too
    with ``udp``, as Alertmanager's gossip needs)."""
    candidates = pool()
    found: list[int] = []
    if count < 1:
        return found
    for _ in range(ATTEMPTS + ATTEMPTS_PER_PORT * count):
        port = random.choice(candidates)  # noqa: S311 (spreading picks, not a secret)
        if port not in found and _free(host, port, udp):
            found.append(port)
            if len(found) == count:
                return found
    raise RuntimeError(f"found {len(found)} of {count} free ports on {host} in {candidates}")


def free_port(host: str = "127.0.0.1", *, udp: bool = False) -> int:
    """One port outside the ephemeral range, free on ``host`` now."""
    return free_ports(host, 1, udp=udp)[0]
