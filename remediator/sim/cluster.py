"""``SimCluster``: a RingRift stand-in with a coordinator, hosts over real SSH, providers and faults.

    with SimCluster(hosts=10, root=tmp_path) as sim:
        env = sim.env()                 # points the remediator at this cluster
        sim.kill_agent("host-03")       # inject a fault
        sim.make_critical("host-03")    # ...and make it show now

Layout under ``root``: ``ssh/`` (client key, known_hosts, authorized_keys), ``coordinator/`` (central
store ``games.db``, ``sync.log``), ``hosts/<host_id>/`` (see ``layout.HostPaths``), ``recovered/`` (the
remediator's recovery dir) and ``faults/``. Times are unix seconds (floats) unless a name says otherwise.
On exit, even after an exception, no process the cluster started (sshd, sessions, agents) is left.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from remediator import ports
from remediator.sim import agentctl, defaults, games, procs
from remediator.sim import coordinator as coord
from remediator.sim import provider as prov
from remediator.sim.errors import SimError
from remediator.sim.faults import apply_fault
from remediator.sim.hang import HangingListener
from remediator.sim.injection import Injection
from remediator.sim.layout import (
    DISK_FULL,
    HOST_ROOT_ENV,
    HostPaths,
)
from remediator.sim.observe import COUNTERS, Observation, UnsyncedGames  # noqa: F401 -- re-exported
from remediator.sim.selfplay import Selfplay
from remediator.sim.server import BackgroundServer
from remediator.sim.sshd import SSHServer, binary, keygen
from remediator.sim.store import GameStore

SIM_DIR = Path(__file__).resolve().parent


class SimHost:
    """One simulated host: its paths, its sshd, the faults it has."""

    def __init__(
        self, host_id: str, paths: HostPaths, address: str, port: int, provider: str, instance_id: str
    ):
        self.host_id, self.paths, self.address, self.ssh_port = host_id, paths, address, port
        self.provider, self.instance_id = provider, instance_id
        self.sshd: SSHServer | None = None
        self.hang: HangingListener | None = None
        self.unreachable = False
        self.hung = False

    @property
    def root(self) -> Path:
        return self.paths.root

    @property
    def data_dir(self) -> Path:
        return self.paths.data

    @property
    def sync_log(self) -> Path:
        return self.paths.sync_log

    @property
    def agent_pid(self) -> int | None:
        """The running agent's pid (None when dead)."""
        return agentctl.agent_pid(self.paths)

    @property
    def agent_pids(self) -> list[int]:
        """Every live sync agent process of this host, however it was started (a leftover one too)."""
        marker = f"--host-root {self.root} "
        return [
            pid
            for pid in procs.with_env(HOST_ROOT_ENV, str(self.root))
            if "sync_agent" in (line := procs.cmdline(pid)) and marker in line
        ]

    @property
    def sshd_pid(self) -> int | None:
        return self.sshd.pid if self.sshd else None

    def __repr__(self) -> str:
        return f"SimHost({self.host_id!r}, port={self.ssh_port}, agent_pid={self.agent_pid})"


class SimCluster(Observation, Injection):
    """The simulated cluster; a context manager (``start()`` on enter, ``stop()`` on exit)."""

    def __init__(
        self,
        hosts: int = 3,
        root: str | os.PathLike[str] | None = None,
        *,
        host_ids: Sequence[str] | None = None,
        providers: Sequence[str] = defaults.PROVIDERS,
        lagging_after: float = defaults.LAGGING_AFTER,
        critical_after: float = defaults.CRITICAL_AFTER,
        sync_interval: float = defaults.SYNC_INTERVAL,
        game_interval: float = defaults.GAME_INTERVAL,
        games_per_file: int = defaults.GAMES_PER_FILE,
        selfplay: bool = True,
        start_agents: bool = True,
        admin_key: str | None = None,
        address: str = "127.0.0.1",
    ) -> None:
        if host_ids is not None:
            hosts = len(host_ids)
        if hosts < 1:
            raise ValueError("hosts must be at least 1")
        if not 0 < lagging_after < critical_after:
            raise ValueError("need 0 < lagging_after < critical_after (seconds)")
        if games_per_file < 1 or sync_interval <= 0 or game_interval <= 0:
            raise ValueError("games_per_file, sync_interval and game_interval must be positive")
        if any(p not in ("vast", "lambda") for p in providers) or not providers:
            raise ValueError("providers must be a non-empty sequence of 'vast' and 'lambda'")
        width = max(2, len(str(hosts)))
        self.host_ids = list(host_ids) if host_ids else [f"host-{i:0{width}d}" for i in range(1, hosts + 1)]
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="ringrift-sim-"))
        self.root = self.root.resolve()
        if "sync_agent" in str(self.root):
            # A host's `pkill -f sync_agent` would match every process whose command line names the root.
            raise ValueError(f"the sim root {self.root} must not contain 'sync_agent'")
        self.providers = tuple(providers)
        self.lagging_after, self.critical_after = lagging_after, critical_after
        self.sync_interval, self.game_interval, self.games_per_file = (
            sync_interval,
            game_interval,
            games_per_file,
        )
        self.selfplay_enabled, self.start_agents = selfplay, start_agents
        self.admin_key = admin_key or uuid.uuid4().hex
        self.vast_api_key, self.lambda_api_key = f"vast-{uuid.uuid4().hex}", f"lambda-{uuid.uuid4().hex}"
        self.address = address
        self.ssh_user = getpass.getuser()
        self.ssh_dir = self.root / "ssh"
        self.ssh_key_file = self.ssh_dir / "client_ed25519"
        self.known_hosts_file = self.ssh_dir / "known_hosts"
        self.authorized_keys_file = self.ssh_dir / "authorized_keys"
        self.coordinator_log = self.root / "coordinator" / "sync.log"
        self.recovery_dir = self.root / "recovered"
        self.network_flag = self.root / "faults" / "network_down"
        self._hosts: dict[str, SimHost] = {}
        self._agents: list[subprocess.Popen[bytes]] = []
        self._lock = threading.RLock()
        self._started = False
        self.coordinator: coord.CoordinatorState | None = None
        self.provider: prov.ProviderState | None = None
        self._coordinator_server: BackgroundServer | None = None
        self._provider_server: BackgroundServer | None = None
        self._store: GameStore | None = None
        self._selfplay: Selfplay | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def __enter__(self) -> SimCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> SimCluster:
        """Bring everything up; on any failure, tear down what was started and raise."""
        if self._started:
            return self
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        binary("sshd"), binary("ssh-keygen")  # fail early, naming what to install
        for d in (self.ssh_dir, self.coordinator_log.parent, self.recovery_dir, self.network_flag.parent):
            d.mkdir(parents=True, exist_ok=True)
        self.network_flag.unlink(missing_ok=True)
        keygen(self.ssh_key_file, "ringrift-sim-client")
        self.authorized_keys_file.write_text(self.ssh_key_file.with_suffix(".pub").read_text())
        picked = ports.free_ports(self.address, len(self.host_ids))
        for i, (host_id, port) in enumerate(zip(self.host_ids, picked, strict=True)):
            provider = self.providers[i % len(self.providers)]
            instance_id = str(defaults.VAST_FIRST_INSTANCE_ID + i) if provider == "vast" else uuid.uuid4().hex
            host = SimHost(
                host_id, HostPaths(self.root / "hosts" / host_id), self.address, port, provider, instance_id
            )
            host.paths.make()
            host.sshd = SSHServer(host.paths, self.address, port, self.authorized_keys_file)
            self._hosts[host_id] = host
        self._parallel(lambda h: h.sshd.prepare(), self._hosts.values())  # type: ignore[union-attr]
        for host in self._hosts.values():
            self._write_shims(host)
        # Every sshd listens before any port is written down (known_hosts, coordinator, provider): a
        # host whose port another process took meanwhile moves to a fresh one.
        deadline = time.monotonic() + defaults.STARTUP_TIMEOUT
        self._parallel(lambda h: self._start_sshd(h, deadline), self._hosts.values())
        self.known_hosts_file.write_text(
            "".join(h.sshd.known_hosts_line() + "\n" for h in self._hosts.values())  # type: ignore[union-attr]
        )

        self._start_services()

        for host in self._hosts.values():
            self._write_agent_config(host)
        if self.start_agents:
            for host in self._hosts.values():
                self.start_agent(host.host_id)
        self._start_selfplay()

    def _start_selfplay(self) -> None:
        """Self-play on every host (started when the cluster plays: ``selfplay_enabled``)."""
        self._selfplay = Selfplay(
            [(h.host_id, h.paths) for h in self._hosts.values()],
            self.game_interval,
            self.games_per_file,
            self._producing,
            self._reap,
        )
        if self.selfplay_enabled:
            self._selfplay.start()

    def _start_services(self) -> None:
        """The coordinator and provider stand-ins over the hosts, once every host's SSH port is final."""
        now = time.time()
        self._store = GameStore(self.root / "coordinator" / "games.db")
        records = {
            h.host_id: coord.HostRecord(
                h.host_id, h.address, self.ssh_user, h.ssh_port, h.provider, h.instance_id, h.paths, now
            )
            for h in self._hosts.values()
        }
        self.coordinator = coord.CoordinatorState(
            records,
            self._store,
            self.coordinator_log,
            self.admin_key,
            self.lagging_after,
            self.critical_after,
        )
        self._coordinator_server = BackgroundServer(
            coord.create_app(self.coordinator, lambda name, args: apply_fault(self, name, args)),
            "sim-coordinator",
        )
        self._coordinator_server.start()
        instances = {
            h.host_id: prov.Instance(
                h.host_id, h.provider, h.instance_id, h.address, h.ssh_port, started_at=now
            )
            for h in self._hosts.values()
        }
        self.provider = prov.ProviderState(
            instances, {"vast": self.vast_api_key, "lambda": self.lambda_api_key}
        )
        self._provider_server = BackgroundServer(prov.create_app(self.provider), "sim-provider")
        self._provider_server.start()

    def _start_sshd(self, host: SimHost, deadline: float) -> None:
        """Start the host's sshd; when its port was taken before it could bind, again on a fresh one."""
        sshd = host.sshd
        assert sshd is not None
        for attempt in range(1, defaults.PORT_ATTEMPTS + 1):
            sshd.start()
            try:
                sshd.wait_ready(deadline - time.monotonic())
                return
            except SimError:
                if attempt == defaults.PORT_ATTEMPTS or not sshd.bind_failed():
                    raise
            host.ssh_port = sshd.port = ports.free_port(self.address)
            sshd.write_config()

    def stop(self) -> None:
        """Stop every process and server the cluster started; safe to call twice."""
        if self._selfplay is not None:
            self._selfplay.stop()
        pids = [pid for h in self._hosts.values() if (pid := h.agent_pid)]
        self._kill_all(pids, signal.SIGTERM)
        for host in self._hosts.values():
            if host.hang is not None:
                host.hang.stop()
                host.hang = None
        self._parallel(lambda h: h.sshd.stop(defaults.STOP_TIMEOUT) if h.sshd else None, self._hosts.values())
        # Agents started over SSH are nobody's children here: find them (and anything else) by path,
        # and whatever a session left running in the background by its host's mark.
        marked = [p for h in self._hosts.values() for p in procs.with_env(HOST_ROOT_ENV, str(h.root))]
        self._kill_all(sorted({*procs.matching(f"{self.root}/"), *marked} - {os.getpid()}), signal.SIGTERM)
        for server in (self._coordinator_server, self._provider_server):
            if server is not None:
                server.stop()
        self._coordinator_server = self._provider_server = None
        if self._store is not None:
            self._store.close()
            self._store = None
        self._reap()
        if self._own_root and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _kill_all(pids: list[int], sig: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + defaults.STOP_TIMEOUT
        for pid in pids:
            if not procs.wait_dead(pid, max(deadline - time.monotonic(), 0.0)):
                procs.terminate(pid, defaults.STOP_TIMEOUT)

    def _reap(self) -> None:
        """Collect exited agents this process started, so none lingers as a zombie."""
        with self._lock:
            self._agents = [p for p in self._agents if p.poll() is None]

    @staticmethod
    def _parallel(fn: Callable[[SimHost], Any], hosts: Any) -> None:
        hosts = list(hosts)
        with ThreadPoolExecutor(max_workers=min(16, max(len(hosts), 1))) as pool:
            for future in [pool.submit(fn, h) for h in hosts]:
                future.result()

    def _write_agent_config(self, host: SimHost) -> None:
        assert self._coordinator_server is not None
        argv = [
            sys.executable, "-E", "-s", "-S", str(SIM_DIR / "sync_agent.py"),
            "--host-id", host.host_id,
            "--host-root", str(host.root),
            "--coordinator", self._coordinator_server.url,
            "--interval", repr(self.sync_interval),
            "--network-flag", str(self.network_flag),
            "--owner-pid", str(os.getpid()),
        ]  # fmt: skip
        host.paths.agent_config.write_text(json.dumps({"argv": argv}, indent=1) + "\n")

    def _write_shims(self, host: SimHost) -> None:
        """The command shims on the session's PATH, and ``start_sync.sh`` in the login directory."""
        for name in ("systemctl", "pgrep", "pkill", "start_sync.sh"):
            run = [
                sys.executable,
                "-E",
                "-s",
                "-S",
                str(SIM_DIR / "shims.py"),
                "--host-root",
                str(host.root),
                name,
            ]
            shim = (host.paths.home if name == "start_sync.sh" else host.paths.bin) / name
            shim.write_text(f'#!/bin/sh\nexec {shlex.join(run)} "$@"\n')
            shim.chmod(0o755)

    def _producing(self, host_id: str) -> bool:
        host = self._hosts[host_id]
        assert self.coordinator is not None and self.provider is not None
        return (
            not self.coordinator.hosts[host_id].selfplay_paused
            and not host.paths.has_fault(DISK_FULL)
            and self.provider.instances[host_id].state == prov.RUNNING
        )

    # -- looking at the cluster ------------------------------------------------------------------------

    @property
    def hosts(self) -> list[SimHost]:
        return list(self._hosts.values())

    def host(self, host_id: str) -> SimHost:
        try:
            return self._hosts[host_id]
        except KeyError:
            raise coord.UnknownHost(host_id) from None

    @property
    def coordinator_url(self) -> str:
        assert self._coordinator_server is not None, "the cluster is not started"
        return self._coordinator_server.url

    @property
    def provider_url(self) -> str:
        assert self._provider_server is not None, "the cluster is not started"
        return self._provider_server.url

    @property
    def vast_url(self) -> str:
        return f"{self.provider_url}/vast"

    @property
    def lambda_url(self) -> str:
        return f"{self.provider_url}/lambda"

    def status_url(self, provider: str) -> str:
        """The statuspage.io ``status.json`` URL of "vast" or "lambda"."""
        return f"{self.provider_url}/{provider}-status/api/v2/status.json"

    def env(self) -> dict[str, str]:
        """Environment variables (names from remediator.config.ENV_VARS) pointing the remediator here."""
        importer = [sys.executable, "-m", "remediator.sim.importer"]
        return {
            "REMEDIATOR_COORDINATOR_URL": self.coordinator_url,
            "REMEDIATOR_COORDINATOR_ADMIN_KEY": self.admin_key,
            "REMEDIATOR_COORDINATOR_LOG": str(self.coordinator_log),
            "REMEDIATOR_SSH_KEY_FILE": str(self.ssh_key_file),
            "REMEDIATOR_SSH_KNOWN_HOSTS": str(self.known_hosts_file),
            "REMEDIATOR_VAST_URL": self.vast_url,
            "REMEDIATOR_VAST_API_KEY": self.vast_api_key,
            "REMEDIATOR_LAMBDA_URL": self.lambda_url,
            "REMEDIATOR_LAMBDA_API_KEY": self.lambda_api_key,
            "REMEDIATOR_VAST_STATUS_URL": self.status_url("vast"),
            "REMEDIATOR_LAMBDA_STATUS_URL": self.status_url("lambda"),
            "REMEDIATOR_IMPORT_COMMAND": shlex.join(importer)
            + " --data-dir {data_dir} --trigger-sync --coordinator "
            + shlex.quote(self.coordinator_url),
            "REMEDIATOR_RECOVERY_DIR": str(self.recovery_dir),
        }

    # -- reaching a host ---------------------------------------------------------------------------------

    def ssh_options(self, host_id: str, connect_timeout: float = 5) -> list[str]:
        """ssh options for the host, host keys checked against the sim's known_hosts."""
        host = self.host(host_id)
        return [
            "-F", "/dev/null",
            "-i", str(self.ssh_key_file),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts_file}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={int(connect_timeout)}",
            "-p", str(host.ssh_port),
        ]  # fmt: skip

    def ssh_argv(self, host_id: str, command: str) -> list[str]:
        host = self.host(host_id)
        return ["ssh", *self.ssh_options(host_id), f"{self.ssh_user}@{host.address}", command]

    def ssh_run(self, host_id: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run command on the host over real SSH; never raises on a non-zero exit."""
        return subprocess.run(
            self.ssh_argv(host_id, command),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def rsync_argv(self, host_id: str, dest: str | os.PathLike[str]) -> list[str]:
        """rsync of the host's data dir to dest over its sshd (what the runbook's Option 3 runs)."""
        host = self.host(host_id)
        return [
            "rsync", "-a", "-e", shlex.join(["ssh", *self.ssh_options(host_id)]),
            f"{self.ssh_user}@{host.address}:{host.data_dir}/", f"{dest}/",
        ]  # fmt: skip

    # -- driving the cluster -------------------------------------------------------------------------------

    def write_games(self, host_id: str, count: int | None = None) -> list[games.Game]:
        """Write one game file on the host now (whatever self-play is doing); returns its games."""
        assert self._selfplay is not None, "the cluster is not started"
        host = self.host(host_id)
        return self._selfplay.write(host_id, host.paths, count)

    def start_agent(self, host_id: str) -> int | None:
        """Start the host's agent unless it runs (not counted as a restart); returns its pid."""
        host = self.host(host_id)
        proc = agentctl.start(host.paths)
        if proc is None:
            return host.agent_pid
        with self._lock:
            self._agents.append(proc)
        return proc.pid
