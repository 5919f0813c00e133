"""The outside world as the remediator reaches it: one seam for every outside call.

The ladder, the fleet escalation, paging and the incident monitor reach the coordinator, the hosts
(SSH, rsync), the import command, the cloud providers, the network probes and the pagers only
through a ``Clients``. ``clients_for(settings)`` gives the real ones; the fault tests install a
factory of their own (``install``) that wraps every call in a fault layer, so a refused, slow,
malformed or half-applied answer can be injected at any call and what the remediator did about it
checked.

The clients themselves are this package's modules: ``coordinator`` (RingRift's coordinator API),
``ssh`` (asyncssh sessions and rsync over OpenSSH), ``providers`` (Vast.ai, Lambda), ``netcheck``
(the cluster network probe), ``pagers`` (PagerDuty, webhook, Alertmanager) and ``http`` (the retry,
backoff and secret-scrubbing every HTTP client shares).

The real clients carry the fleet-wide limits (``remediator.limits``), shared by every worker through
Redis: an SSH session or an rsync holds one of ``REMEDIATOR_MAX_SSH_SESSIONS`` slots while it is open,
every coordinator HTTP call waits for its place under ``REMEDIATOR_COORDINATOR_CALLS_PER_SECOND``, and
the providers' instance listings are shared for ``REMEDIATOR_PROVIDER_LISTING_SECONDS``. Without a
Redis configured (nothing runs fleet-wide then) there are no limits.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from remediator.clients.coordinator import Coordinator, HostRecord, coordinator_from_settings
from remediator.clients.pagers.base import Pager
from remediator.clients.ssh import CommandResult, RsyncResult
from remediator.config import Settings
from remediator.exceptions import LimitUnavailable, SSHError


class Session(Protocol):
    """An SSH session to one host (``remediator.clients.ssh.HostSession``)."""

    def run(self, command: str, stdin: str | None = None, timeout: float | None = None) -> CommandResult: ...

    def __enter__(self) -> Session: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None, /
    ) -> None: ...


@dataclass
class Clients:
    coordinator: Coordinator
    ssh: Callable[[HostRecord], Session]
    rsync: Callable[..., RsyncResult]  # (record, dest, *, dry_run, timeout)
    run_import: Callable[[list[str], float], subprocess.CompletedProcess[str]]  # (argv, timeout)
    providers: Callable[[], Mapping[str, Any]]  # provider name -> remediator.clients.providers.Provider
    provider_statuses: Callable[[], dict[str, bool | None]]
    network: Callable[[Mapping[str, Mapping[str, Any]]], Any]  # hosts -> netcheck.NetworkCheck
    pagers: Callable[[], Mapping[str, Pager]]
    silences: Callable[[], Any]  # -> remediator.silences.AlertmanagerSilences, or None (no Alertmanager)


class LimitedSession:
    """An SSH session that holds a fleet-wide slot (``limits.SessionSlots``) from before it connects
    until it is closed; no slot in time is an SSHError (the host was not reached this time)."""

    def __init__(self, session: Session, slots: Any) -> None:
        self.session, self.slots = session, slots
        self.lease: Any = None

    def __enter__(self) -> Session:
        try:
            self.lease = self.slots.acquire()
        except LimitUnavailable as exc:
            raise SSHError(str(exc)) from None
        try:
            return self.session.__enter__()
        except BaseException:
            self.lease.release()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.session.__exit__(exc_type, exc, tb)
        finally:
            lease, self.lease = self.lease, None
            if lease is not None:
                lease.release()

    def run(self, command: str, stdin: str | None = None, timeout: float | None = None) -> CommandResult:
        if self.lease is None:  # only inside ``with``: never a command without its slot
            raise SSHError(f"{command.split()[0] if command.split() else command}: no SSH session slot held")
        return self.session.run(command, stdin, timeout)


def real_clients(settings: Settings) -> Clients:
    from remediator.clients import netcheck, providers
    from remediator.clients.coordinator import HttpCoordinator
    from remediator.clients.pagers import pagers_from_settings
    from remediator.clients.ssh import HostSession, rsync_pull
    from remediator.connections import redis_from_settings
    from remediator.limits import CallRate, SessionSlots
    from remediator.listings import SharedHosts, SharedListing
    from remediator.silences import AlertmanagerSilences

    conn = redis_from_settings(settings)
    wait = settings.limit_wait_seconds
    slots = SessionSlots(conn, settings.max_ssh_sessions, wait) if conn is not None else None
    rate = CallRate(conn, settings.coordinator_calls_per_second, wait) if conn is not None else None

    def ssh(record: HostRecord) -> Session:
        session = HostSession(settings, record)
        return LimitedSession(session, slots) if slots is not None else session

    def rsync(
        record: HostRecord, dest: Path, *, dry_run: bool = False, timeout: float | None = None
    ) -> RsyncResult:
        if slots is None:
            return rsync_pull(settings, record, dest, dry_run=dry_run, timeout=timeout)
        try:
            lease = slots.acquire()
        except LimitUnavailable as exc:
            return RsyncResult(-1, 0, f"rsync not started: {exc}")
        try:
            return rsync_pull(settings, record, dest, dry_run=dry_run, timeout=timeout)
        finally:
            lease.release()

    def provider_clients() -> Mapping[str, Any]:
        found = providers.providers_from_settings(settings)
        if conn is None:
            return found
        ttl = settings.provider_listing_seconds
        return {name: SharedListing(p, conn, ttl, wait) for name, p in found.items()}

    def run_import(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def network(hosts: Mapping[str, Mapping[str, Any]]) -> Any:
        return netcheck.check_cluster_network(settings, hosts, timeout=min(5.0, settings.ssh_connect_timeout))

    coordinator = coordinator_from_settings(settings, rate.take if rate is not None else None)
    if conn is not None and isinstance(coordinator, HttpCoordinator):  # in-process reads are not HTTP
        coordinator = SharedHosts(coordinator, conn, settings.coordinator_listing_seconds, wait)
    return Clients(
        coordinator=coordinator,
        ssh=ssh,
        rsync=rsync,
        run_import=run_import,
        providers=provider_clients,
        provider_statuses=lambda: providers.provider_statuses(settings),
        network=network,
        pagers=lambda: pagers_from_settings(settings),
        silences=lambda: (
            AlertmanagerSilences(settings.alertmanager_url) if settings.alertmanager_url else None
        ),
    )


_factory: Callable[[Settings], Clients] = real_clients


def clients_for(settings: Settings) -> Clients:
    """The clients to use with these settings (the real ones unless a test installed others)."""
    return _factory(settings)


@contextlib.contextmanager
def install(factory: Callable[[Settings], Clients]) -> Iterator[None]:
    """Use ``factory`` for every ``clients_for`` in this process while the block runs (tests)."""
    global _factory
    previous, _factory = _factory, factory
    try:
        yield
    finally:
        _factory = previous
