"""Is the cluster's network up? Plain TCP connects to known endpoints, in parallel, within a deadline.

Runbook Escalation: when several hosts go critical at once, check the cluster-wide network before
blaming the hosts. The endpoints are the coordinator, the hosts' SSH ports and any configured extras
(REMEDIATOR_NETWORK_PROBES); the network counts as OK when at least ``min_fraction`` of them answer.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from remediator.config import Settings
from remediator.exceptions import ConfigError

log = logging.getLogger(__name__)

MIN_FRACTION = 0.5  # share of endpoints that must answer for the network to count as OK
PROBE_TIMEOUT = 3.0  # seconds for the whole probe
MAX_THREADS = 64  # connects in flight at once
DEFAULT_SSH_PORT = 22


@dataclass(frozen=True)
class NetworkCheck:
    """The outcome of one probe: how many endpoints answered, and why the others did not."""

    ok: bool
    reachable: int
    total: int
    failures: dict[str, str] = field(default_factory=dict)


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6addr]:port"``) as (host, port); ValueError naming the input otherwise."""
    host, sep, port = endpoint.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"network probe {endpoint!r} is not host:port")
    return host, int(port)


def endpoint_from_url(url: str) -> str:
    """The ``host:port`` a URL connects to (80/443 when the URL names no port)."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


def cluster_network_ok(reachable: int, total: int, min_fraction: float = MIN_FRACTION) -> bool:
    """The rule: OK when at least ``min_fraction`` of the endpoints answered (nothing to probe is OK:
    no evidence of a fault)."""
    if total == 0:
        return True
    return reachable >= math.ceil(total * min_fraction)


def _connect(host: str, port: int, timeout: float) -> None:
    with socket.create_connection((host, port), timeout=timeout):
        pass


def probe(
    endpoints: Iterable[str], timeout: float = PROBE_TIMEOUT, *, min_fraction: float = MIN_FRACTION
) -> NetworkCheck:
    """TCP-connect to every endpoint at once; an endpoint not connected within ``timeout`` failed.

    The whole probe returns within about ``timeout`` even when name resolution hangs: such a
    connect is abandoned (its thread finishes in the background) and reported as timed out.
    """
    targets = list(dict.fromkeys(e.strip() for e in endpoints if e and e.strip()))
    failures: dict[str, str] = {}
    parsed: dict[str, tuple[str, int]] = {}
    for endpoint in targets:
        try:
            parsed[endpoint] = parse_endpoint(endpoint)
        except ValueError as exc:
            failures[endpoint] = str(exc)
    reachable = 0
    if parsed:
        pool = ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(parsed)), thread_name_prefix="netcheck")
        try:
            futures = {pool.submit(_connect, host, port, timeout): e for e, (host, port) in parsed.items()}
            done, pending = wait(futures, timeout=timeout + 0.5)
            for future in pending:
                failures[futures[future]] = f"no answer within {timeout:g} s"
            for future in done:
                error = future.exception()
                if error is None:
                    reachable += 1
                elif isinstance(error, TimeoutError):
                    failures[futures[future]] = f"no answer within {timeout:g} s"
                else:
                    failures[futures[future]] = _reason(error)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    total = len(targets)
    check = NetworkCheck(cluster_network_ok(reachable, total, min_fraction), reachable, total, failures)
    log.info("network probe: %d of %d endpoints answered (ok=%s)", reachable, total, check.ok)
    return check


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"name not resolved ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def cluster_endpoints(settings: Settings, hosts: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """The coordinator, each host's SSH port (records as from ``GET /sync/hosts``) and the configured
    probes, without repeats. A malformed REMEDIATOR_NETWORK_PROBES entry raises ConfigError."""
    endpoints = [endpoint_from_url(settings.coordinator_url)]
    for host_id, record in (hosts or {}).items():
        address = record.get("address")
        if not address:
            continue
        try:
            port = int(record.get("ssh_port") or DEFAULT_SSH_PORT)
        except (TypeError, ValueError):
            log.warning("host %s: ssh_port %r is not a number; not probed", host_id, record.get("ssh_port"))
            continue
        endpoints.append(f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}")
    for extra in settings.network_probes:
        try:
            parse_endpoint(extra)
        except ValueError as exc:
            raise ConfigError(f"REMEDIATOR_NETWORK_PROBES: {exc}") from None
        endpoints.append(extra)
    return list(dict.fromkeys(endpoints))


def check_cluster_network(
    settings: Settings,
    hosts: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    timeout: float = PROBE_TIMEOUT,
    min_fraction: float = MIN_FRACTION,
) -> NetworkCheck:
    """Probe every cluster endpoint (``cluster_endpoints``) and apply the ``cluster_network_ok`` rule."""
    return probe(cluster_endpoints(settings, hosts), timeout, min_fraction=min_fraction)
