"""Fault injection of ``SimCluster``: what can go wrong with a host, its agent, its instance, the
providers and the coordinator -- each undone by calling it again with ``enabled=False`` (or its
opposite: ``make_reachable``, ``start_instance``). A mixin of ``remediator.sim.cluster.SimCluster``,
kept apart so that the cluster's start, stop and layout read on their own.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from remediator.sim import coordinator as coord
from remediator.sim import defaults
from remediator.sim import provider as prov
from remediator.sim.errors import SimError
from remediator.sim.hang import HangingListener
from remediator.sim.layout import DIES_AFTER_RESTART, DISK_FULL, NO_SYSTEMCTL, NO_SYSTEMD

if TYPE_CHECKING:
    from collections.abc import Callable

    from remediator.sim.cluster import SimHost

T = TypeVar("T")


class Injection:
    """The faults a test or the demo injects (see the module docstring)."""

    if TYPE_CHECKING:  # what the cluster provides
        _lock: threading.RLock
        _hosts: dict[str, SimHost]
        coordinator: coord.CoordinatorState | None
        provider: prov.ProviderState | None
        network_flag: Path
        lagging_after: float
        critical_after: float

        def host(self, host_id: str) -> SimHost: ...
        def start_agent(self, host_id: str) -> int | None: ...
        def _record(self, host_id: str) -> coord.HostRecord: ...
        def _reap(self) -> None: ...
        @staticmethod
        def _kill_all(pids: list[int], sig: signal.Signals) -> None: ...
        def wait_for(
            self, predicate: Callable[[], T], timeout: float = ..., interval: float = ..., what: str = ...
        ) -> T: ...

    def kill_agent(self, host_id: str) -> int | None:
        """The host's agent dies (SIGKILL); returns the pid it had."""
        host = self.host(host_id)
        pid = host.agent_pid
        if pid is not None:
            self._kill_all([pid], signal.SIGKILL)
            self._reap()
            self._wait_no_sync_in_flight(host_id)
        return pid

    def _wait_no_sync_in_flight(self, host_id: str) -> None:
        """A sync the agent sent just before it died may still be landing: let it land."""
        assert self.coordinator is not None
        self.wait_for(lambda: self.coordinator.ingesting[host_id] <= 0, 5.0, 0.01, "in-flight sync")  # type: ignore[union-attr]

    def wedge_agent(self, host_id: str, until_restart: bool = False) -> int:
        """The agent stays alive (pgrep finds it) but stops its periodic syncs.

        A forced sync kicks it back to life, unless ``until_restart``: then it never syncs again and only
        a restart (``systemctl restart``, the fallback) clears it.
        """
        host = self.host(host_id)
        pid = host.agent_pid
        if pid is None:
            raise SimError(f"{host_id} has no running agent to wedge")
        # The agent logs "started" once its signal handlers are in place; a signal sent before that
        # would kill it (the default action) instead of wedging it.
        started = f"sync_agent[{pid}] host_id={host_id} sync agent started"
        self.wait_for(lambda: started in host.sync_log.read_text(), 10.0, 0.01, f"agent of {host_id} started")
        host.paths.wedged.unlink(missing_ok=True)
        os.kill(pid, signal.SIGUSR2 if until_restart else signal.SIGUSR1)
        self.wait_for(host.paths.wedged.exists, 5.0, 0.01, f"agent of {host_id} wedged")
        self._wait_no_sync_in_flight(host_id)
        return pid

    def agent_dies_after_restart(self, host_id: str, enabled: bool = True) -> None:
        """The agent is dead and every (re)start brings up one that dies within ~1 s without syncing."""
        host = self.host(host_id)
        self._flag(host.paths.fault(DIES_AFTER_RESTART), enabled)
        if enabled:
            self.kill_agent(host_id)

    def set_restart_policy(self, host_id: str, policy: str = "on-failure") -> None:
        """systemd's ``Restart=`` of the host's agent unit, as ``systemctl show -p Restart`` answers it
        (``"no"`` until set, as systemd's own default). The sim only reports it: a dead agent stays dead."""
        self.host(host_id).paths.restart_policy.write_text(policy + "\n")

    def without_systemd(self, host_id: str, enabled: bool = True) -> None:
        """systemctl is there but systemd does not run (a container): every systemctl call fails, so only
        the fallback (``start_sync.sh``) restarts the agent, and nothing supervises it."""
        self._flag(self.host(host_id).paths.fault(NO_SYSTEMD), enabled)

    def systemctl_missing(self, host_id: str, enabled: bool = True) -> None:
        """The host has no systemctl at all (an agent run from screen/tmux): "command not found", exit
        127. (``without_systemd``: systemctl is there, systemd is not.)"""
        self._flag(self.host(host_id).paths.fault(NO_SYSTEMCTL), enabled)

    def disk_full(self, host_id: str, enabled: bool = True) -> None:
        """The host's disk is full: the agent's syncs fail with ENOSPC and self-play stops."""
        self._flag(self.host(host_id).paths.fault(DISK_FULL), enabled)

    def make_unreachable(self, host_id: str) -> None:
        """sshd stopped: connections are refused (the agent keeps running)."""
        with self._lock:
            host = self.host(host_id)
            host.unreachable, host.hung = True, False
            self._reconcile_ssh(host)

    def hang_host(self, host_id: str) -> None:
        """sshd replaced by a listener that accepts TCP and never sends the SSH banner."""
        with self._lock:
            host = self.host(host_id)
            host.unreachable, host.hung = False, True
            self._reconcile_ssh(host)

    def make_reachable(self, host_id: str) -> None:
        """Undo make_unreachable / hang_host."""
        with self._lock:
            host = self.host(host_id)
            host.unreachable = host.hung = False
            self._reconcile_ssh(host)

    def network_down(self, enabled: bool = True) -> None:
        """Every host unreachable over SSH and no agent can reach the coordinator."""
        with self._lock:
            self._flag(self.network_flag, enabled)
            for host in self._hosts.values():
                self._reconcile_ssh(host)

    def retire(self, host_id: str, reason: str = "retired by the sim") -> None:
        """The coordinator retires the host (not counted as a remediator retire); its syncs are refused."""
        record = self._record(host_id)
        assert self.coordinator is not None
        with self.coordinator.lock:
            record.retired, record.retired_reason = True, reason
        self.coordinator.log("WARNING", f"host_id={host_id} retired reason={reason!r} (sim)")

    def retired_host_back_online(self, host_id: str) -> None:
        """Retired, critical, but reachable with its agent running: the runbook's Option 4 case."""
        self.retire(host_id)
        self.make_reachable(host_id)
        self.start_agent(host_id)
        self.make_critical(host_id)

    def make_critical(self, host_id: str) -> None:
        """Backdate last_sync so the host is critical now (a live agent's next sync heals it)."""
        self._backdate(host_id, self.critical_after + 1.0)

    def make_lagging(self, host_id: str) -> None:
        self._backdate(host_id, (self.lagging_after + self.critical_after) / 2)

    def _backdate(self, host_id: str, age: float) -> None:
        record = self._record(host_id)
        assert self.coordinator is not None
        with self.coordinator.lock:
            record.last_sync = time.time() - age

    def terminate_instance(self, host_id: str) -> None:
        """The provider says terminated; sshd stopped, agent killed, the data stays on disk."""
        self._set_instance(host_id, prov.TERMINATED)

    def stop_instance(self, host_id: str) -> None:
        """The provider says stopped; sshd stopped, agent killed, the data stays on disk."""
        self._set_instance(host_id, prov.STOPPED)

    def start_instance(self, host_id: str) -> None:
        """The instance runs again: sshd and agent come back."""
        self._set_instance(host_id, prov.RUNNING)

    def _set_instance(self, host_id: str, state: str) -> None:
        assert self.provider is not None
        with self._lock:
            host = self.host(host_id)
            with self.provider.lock:
                self.provider.instances[host_id].state = state
            if state != prov.RUNNING:
                self.kill_agent(host_id)
            self._reconcile_ssh(host)
            if state == prov.RUNNING:
                self.start_agent(host_id)

    def provider_outage(self, enabled: bool = True, provider: str | None = None) -> None:
        """The provider API (both, or "vast"/"lambda") answers 503 and its status page says major."""
        assert self.provider is not None
        for name in (provider,) if provider else ("vast", "lambda"):
            if name not in self.provider.outage:
                raise ValueError(f"provider must be 'vast' or 'lambda', not {name!r}")
            self.provider.outage[name] = enabled

    def provider_answer(self, answer: str = "ok", provider: str | None = None) -> None:
        """The provider API (both, or "vast"/"lambda") answers 200 with ``answer`` (``provider.ANSWERS``):
        "error" (Vast.ai's {"success": false}), "malformed" (no instance list), "not_json", or "ok"
        again. Its status page still says all is well: the API misbehaves, nothing announced an outage."""
        assert self.provider is not None
        if answer not in prov.ANSWERS:
            raise ValueError(f"answer must be one of {', '.join(prov.ANSWERS)}, not {answer!r}")
        for name in (provider,) if provider else ("vast", "lambda"):
            if name not in self.provider.answer:
                raise ValueError(f"provider must be 'vast' or 'lambda', not {name!r}")
            self.provider.answer[name] = answer

    def coordinator_fault(
        self, status: int | None = None, delay: float | None = None, applied: bool = False
    ) -> None:
        """Every coordinator call answers status (e.g. 503) and/or waits delay seconds; None clears.

        ``applied``: each call is carried out first and only its answer is replaced by status (the
        coordinator did the work, then the answer was lost), e.g. a data-loss record that is stored."""
        assert self.coordinator is not None
        if status is not None and not 400 <= int(status) <= 599:
            raise ValueError("status must be an HTTP error status (400-599) or None")
        self.coordinator.fault_status = int(status) if status is not None else None
        self.coordinator.fault_delay = float(delay or 0.0)
        self.coordinator.fault_applied = bool(applied) and status is not None

    def _reconcile_ssh(self, host: SimHost) -> None:
        """Make the host's port match its faults: sshd, a hanging listener, or nothing."""
        assert self.provider is not None and host.sshd is not None
        up = self.provider.instances[host.host_id].state == prov.RUNNING and not self.network_flag.exists()
        want_sshd = up and not host.unreachable and not host.hung
        want_hang = up and host.hung
        if host.hang is not None and not want_hang:
            host.hang.stop()
            host.hang = None
        if host.sshd.running and not want_sshd:
            host.sshd.stop(defaults.STOP_TIMEOUT)
        if want_hang and host.hang is None:
            host.hang = HangingListener(host.address, host.ssh_port)
            host.hang.start()
        if want_sshd and not host.sshd.running:
            host.sshd.start()
            host.sshd.wait_ready(defaults.STARTUP_TIMEOUT)

    @staticmethod
    def _flag(path: Path, enabled: bool) -> None:
        if enabled:
            path.touch()
        else:
            path.unlink(missing_ok=True)
