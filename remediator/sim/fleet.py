"""``FleetCluster``: the simulated cluster at fleet scale, 1,000 hosts on a 2-core machine.

    with FleetCluster(hosts=1000, root=tmp_path) as sim:
        env = sim.env()                 # the same public methods as SimCluster
        sim.kill_agent("host-0042")
        sim.make_critical("host-0042")

What the per-host ``SimCluster`` runs once per host -- an OpenSSH ``sshd`` and a Python sync agent,
24 MiB and two processes a host -- is shared here:

- **SSH**: a few server processes (``fleet_sshd``, one per ``hosts_per_server`` hosts, so both cores
  serve) each listen on one loopback port per host, with that host's own ed25519 host key (the
  known_hosts file lists them all), and run every exec request as a real ``$SHELL -c COMMAND`` in the
  host's environment (login directory, PATH with the fleet's command shims first, its data dir), so
  commands, exit statuses and ``rsync`` behave as over OpenSSH.
- **Agents**: one engine process (``fleet_agents``) runs every host's sync loop with the per-host
  agent's own sync code; a host's agent is a state file that its ``systemctl``, ``pkill``, ``pgrep``
  and ``./start_sync.sh`` (``fleet_shims``, POSIX sh) act on, with the failure modes of the per-host
  sim: dead, wedged (soft or until restart), dies after restart, no systemd, no systemctl, and the
  runbook's ``pkill -f sync_agent`` killing its own shell.

Everything else is ``SimCluster``'s own: the coordinator and provider stand-ins, the central game
store, self-play, host layout (``fleet_agents.FleetHostPaths``), counters and fault methods. The
per-host cluster stays the one the fidelity tests use. Defaults are slower than SimCluster's so the
fleet does not swamp the machine (``defaults.FLEET_*``: a sync every 10 s, critical after 60 s, a game
file every 30 s). Layout as SimCluster's, plus ``fleet/`` (shims, the engine's ``force/`` and
``wake/`` inboxes, the servers' configs and logs).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncssh

from remediator import ports
from remediator.sim import defaults, fleet_agents, fleet_shims, procs
from remediator.sim import provider as prov
from remediator.sim.cluster import SimCluster, SimHost
from remediator.sim.errors import SimError
from remediator.sim.fleet_agents import DEAD, HARD, NO_WEDGE, RUNNING, SOFT, AgentState, FleetHostPaths
from remediator.sim.fleet_sshd import DOWN, HANG, UP, FleetSSHD
from remediator.sim.layout import HOST_ROOT_ENV
from remediator.sim.sshd import binary, keygen


class FleetHost(SimHost):
    """One host of the fleet: a port of a shared SSH server, a state file for its agent."""

    paths: FleetHostPaths

    def __init__(self, *args: Any, server: FleetSSHD | None = None) -> None:
        super().__init__(*args)
        self.server = server

    @property
    def agent_pid(self) -> int | None:
        """The running agent's (virtual) pid; None when dead."""
        state = fleet_agents.read_state(self.paths)
        return state.pid if state is not None and fleet_agents.alive(self.paths, state) else None

    @property
    def agent_pids(self) -> list[int]:
        return [pid] if (pid := self.agent_pid) else []

    @property
    def sshd_pid(self) -> int | None:
        """The pid of the SSH server process this host's port belongs to."""
        return self.server.pid if self.server else None


class FleetCluster(SimCluster):
    """A SimCluster whose hosts share SSH server processes and an agent engine (see the module doc)."""

    def __init__(
        self,
        hosts: int = 3,
        root: str | os.PathLike[str] | None = None,
        *,
        hosts_per_server: int = defaults.FLEET_HOSTS_PER_SERVER,
        sync_interval: float = defaults.FLEET_SYNC_INTERVAL,
        lagging_after: float = defaults.FLEET_LAGGING_AFTER,
        critical_after: float = defaults.FLEET_CRITICAL_AFTER,
        game_interval: float = defaults.FLEET_GAME_INTERVAL,
        **options: Any,
    ) -> None:
        if hosts_per_server < 1:
            raise ValueError("hosts_per_server must be at least 1")
        super().__init__(
            hosts,
            root,
            sync_interval=sync_interval,
            lagging_after=lagging_after,
            critical_after=critical_after,
            game_interval=game_interval,
            **options,
        )
        self.hosts_per_server = hosts_per_server
        self.fleet_dir = self.root / "fleet"
        self._servers: list[FleetSSHD] = []
        self._engine: subprocess.Popen[bytes] | None = None
        self._pids = itertools.count(defaults.VIRTUAL_PID_BASE)
        self._pid_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------------

    def _start(self) -> None:
        binary("ssh-keygen")  # fail early, naming what to install
        for d in (self.ssh_dir, self.coordinator_log.parent, self.recovery_dir, self.network_flag.parent):
            d.mkdir(parents=True, exist_ok=True)
        for sub in ("force", "wake", "servers"):
            (self.fleet_dir / sub).mkdir(parents=True, exist_ok=True)
        self.network_flag.unlink(missing_ok=True)
        keygen(self.ssh_key_file, "ringrift-sim-client")
        self.authorized_keys_file.write_text(self.ssh_key_file.with_suffix(".pub").read_text())
        start_sync = fleet_shims.install(self.fleet_dir / "bin", self.fleet_dir / "wake")
        picked = ports.free_ports(self.address, len(self.host_ids))
        for i, (host_id, port) in enumerate(zip(self.host_ids, picked, strict=True)):
            provider = self.providers[i % len(self.providers)]
            instance_id = str(defaults.VAST_FIRST_INSTANCE_ID + i) if provider == "vast" else uuid.uuid4().hex
            paths = FleetHostPaths(self.root / "hosts" / host_id, self.fleet_dir)
            paths.make()
            fleet_shims.link_start_sync(paths.home, start_sync)
            _host_key(paths.host_key, host_id)
            self._hosts[host_id] = FleetHost(host_id, paths, self.address, port, provider, instance_id)
        self._start_servers()
        self.known_hosts_file.write_text("".join(_known_hosts_line(h) for h in self._fleet_hosts()))
        self._start_services()
        if self.start_agents:
            for host in self._fleet_hosts():
                fleet_agents.write_state(host.paths, AgentState(RUNNING, self._new_pid(), time.time_ns()))
        self._start_engine()
        self._start_selfplay()

    def _start_servers(self) -> None:
        """The SSH server processes, every host's port listening; a port taken meanwhile moves."""
        hosts = self._fleet_hosts()
        for n in range(0, len(hosts), self.hosts_per_server):
            chunk = hosts[n : n + self.hosts_per_server]
            number = len(self._servers)
            config = {
                "address": self.address,
                "user": self.ssh_user,
                "authorized_keys": str(self.authorized_keys_file),
                "owner_pid": os.getpid(),
                "bin": str(self.fleet_dir / "bin"),
                "hosts": [
                    {
                        "host_id": h.host_id,
                        "port": h.ssh_port,
                        "host_key": str(h.paths.host_key),
                        "home": str(h.paths.home),
                        "root": str(h.root),
                    }
                    for h in chunk
                ],
            }
            servers_dir = self.fleet_dir / "servers"
            server = FleetSSHD(config, servers_dir / f"sshd{number}.json", servers_dir / f"sshd{number}.log")
            server.start()
            self._servers.append(server)
            for h in chunk:
                h.server = server
        for server in self._servers:
            failed = server.modes(dict.fromkeys(server.host_ids, UP), defaults.STARTUP_TIMEOUT)
            for _attempt in range(defaults.PORT_ATTEMPTS):
                if not failed:
                    break
                moved = dict(zip(failed, ports.free_ports(self.address, len(failed)), strict=True))
                for host_id, port in moved.items():
                    self.host(host_id).ssh_port = port
                failed = server.modes(dict.fromkeys(moved, UP), defaults.STARTUP_TIMEOUT, ports=moved)
            if failed:
                raise SimError(f"fleet SSH server could not listen for {sorted(failed)[:5]}: {failed}")

    def _start_engine(self) -> None:
        config = {
            "fleet_dir": str(self.fleet_dir),
            "interval": self.sync_interval,
            "coordinator": self.coordinator_url,
            "network_flag": str(self.network_flag),
            "owner_pid": os.getpid(),
            "hosts": {h.host_id: str(h.root) for h in self._fleet_hosts()},
        }
        config_file = self.fleet_dir / "agents.json"
        config_file.write_text(json.dumps(config))
        with open(self.fleet_dir / "agents.log", "ab") as log:
            self._engine = subprocess.Popen(
                [sys.executable, "-m", "remediator.sim.fleet_agents", str(config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        """Stop the engine, the SSH servers (and every command they run) and the services; safe twice."""
        if self._selfplay is not None:
            self._selfplay.stop()
        if self._engine is not None:
            _stop_process(self._engine, defaults.STOP_TIMEOUT)
            self._engine = None
        for server in self._servers:
            server.stop(defaults.STOP_TIMEOUT)
        self._servers = []
        # Whatever a command left running in the background, by its host's mark, and anything else
        # that names the sim's root.
        left = {*self._host_processes(), *procs.matching(f"{self.root}/")} - {os.getpid()}
        self._kill_all(sorted(left), signal.SIGTERM)
        for http in (self._coordinator_server, self._provider_server):
            if http is not None:
                http.stop()
        self._coordinator_server = self._provider_server = None
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._own_root and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    def _host_processes(self) -> list[int]:
        """Live processes marked as a host's (``RINGRIFT_HOST_ROOT`` under this cluster's hosts/)."""
        mark = f"{HOST_ROOT_ENV}={self.root / 'hosts'}/".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if any(e.startswith(mark) for e in f.read().split(b"\0")) and procs.alive(int(entry)):
                        found.append(int(entry))
            except OSError:
                continue
        return found

    # -- looking at the fleet -----------------------------------------------------------------------------

    def _fleet_hosts(self) -> list[FleetHost]:
        return list(self._hosts.values())  # type: ignore[arg-type]

    def host(self, host_id: str) -> FleetHost:
        return super().host(host_id)  # type: ignore[return-value]

    def ssh_stats(self, reset_peak: bool = False) -> dict[str, int]:
        """SSH connections open now, the sum of each server's most at once since the last reset (an upper
        bound of the fleet's concurrent connections), and the connections accepted; ``sessions`` and
        ``sessions_peak`` the same for connections that logged in (a TCP probe is not a session)."""
        found = [s.stats(reset_peak) for s in self._servers]
        names = ("open", "peak", "accepted", "sessions", "sessions_peak")
        return {k: sum(int(f[k]) for f in found) for k in names}

    @property
    def process_ids(self) -> list[int]:
        """The cluster's own processes: SSH servers and the agent engine (for memory figures)."""
        pids = [s.pid for s in self._servers]
        pids.append(self._engine.pid if self._engine is not None and self._engine.poll() is None else None)
        return [p for p in pids if p]

    # -- agents -----------------------------------------------------------------------------------------

    def _new_pid(self) -> int:
        with self._pid_lock:
            return next(self._pids)

    def start_agent(self, host_id: str) -> int | None:
        """Start the host's agent unless it runs (not counted as a restart); returns its pid."""
        paths = self.host(host_id).paths
        with fleet_agents.locked(paths):
            state = fleet_agents.read_state(paths)
            if fleet_agents.alive(paths, state):
                assert state is not None
                return state.pid
            pid = self._new_pid()
            fleet_agents.write_state(paths, AgentState(RUNNING, pid, time.time_ns()))
        fleet_agents.wake(paths)
        return pid

    def kill_agent(self, host_id: str) -> int | None:
        """The host's agent dies (as by SIGKILL: not counted); returns the pid it had."""
        paths = self.host(host_id).paths
        with fleet_agents.locked(paths):
            state = fleet_agents.read_state(paths)
            if not fleet_agents.alive(paths, state):
                return None
            assert state is not None
            fleet_agents.write_state(paths, AgentState(DEAD, state.pid, state.started_ns))
        fleet_agents.wake(paths)
        self._wait_quiet(host_id)
        return state.pid

    def wedge_agent(self, host_id: str, until_restart: bool = False) -> int:
        """The agent stays alive (pgrep finds it) but stops its periodic syncs; a forced sync kicks it
        back to life, unless ``until_restart``: then only a restart clears it."""
        paths = self.host(host_id).paths
        with fleet_agents.locked(paths):
            state = fleet_agents.read_state(paths)
            if not fleet_agents.alive(paths, state):
                raise SimError(f"{host_id} has no running agent to wedge")
            assert state is not None
            wedge = HARD if until_restart or state.wedge == HARD else SOFT
            fleet_agents.write_state(paths, AgentState(RUNNING, state.pid, state.started_ns, wedge))
        paths.wedged.touch()
        self._wait_quiet(host_id)
        return state.pid

    def agent_wedge(self, host_id: str) -> str:
        """``none``, ``soft`` or ``hard``: how the host's agent is wedged."""
        state = fleet_agents.read_state(self.host(host_id).paths)
        return state.wedge if state is not None else NO_WEDGE

    def _wait_quiet(self, host_id: str) -> None:
        """No sync of the host is in flight any more: what it sent has landed (or failed)."""
        paths = self.host(host_id).paths
        self.wait_for(lambda: not paths.syncing.exists(), 15.0, 0.01, f"{host_id}'s sync in flight")
        self._wait_no_sync_in_flight(host_id)

    # -- reaching a host ------------------------------------------------------------------------------------

    def _mode(self, host: SimHost) -> str:
        assert self.provider is not None
        up = self.provider.instances[host.host_id].state == prov.RUNNING and not self.network_flag.exists()
        if not up or host.unreachable:
            return DOWN
        return HANG if host.hung else UP

    def _reconcile_ssh(self, host: SimHost) -> None:
        """Make the host's port match its faults: served, hanging, or refusing."""
        self._apply_modes([host])

    def network_down(self, enabled: bool = True) -> None:
        """Every host unreachable over SSH and no agent can reach the coordinator."""
        with self._lock:
            self._flag(self.network_flag, enabled)
            self._apply_modes(self._fleet_hosts())

    def _apply_modes(self, hosts: Sequence[SimHost]) -> None:
        by_server: dict[int, tuple[FleetSSHD, dict[str, str]]] = {}
        for host in hosts:
            server = self.host(host.host_id).server
            assert server is not None
            by_server.setdefault(id(server), (server, {}))[1][host.host_id] = self._mode(host)
        for server, modes in by_server.values():
            failed = server.modes(modes, defaults.STARTUP_TIMEOUT)
            if failed:
                raise SimError(f"fleet SSH server could not listen again for {failed}")


def _host_key(path: Path, host_id: str) -> None:
    """A new ed25519 host key at path (OpenSSH format) and path.pub."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"sim-host-key@{host_id}")
    path.write_bytes(key.export_private_key("openssh"))
    path.chmod(0o600)
    path.with_suffix(".pub").write_bytes(key.export_public_key("openssh"))


def _known_hosts_line(host: FleetHost) -> str:
    key_type, key = host.paths.host_key.with_suffix(".pub").read_text().split()[:2]
    return f"[{host.address}]:{host.ssh_port} {key_type} {key}\n"


def _stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
