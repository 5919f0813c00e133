"""One SSH server process for many simulated hosts: the fleet-scale sim's stand-in for their sshds.

    python -m remediator.sim.fleet_sshd CONFIG.json      (started and driven by ``FleetSSHD``)

The per-host sim runs one OpenSSH ``sshd`` per host (9 MiB each, and a fork per connection). Here one
asyncssh server process serves a few hundred hosts, each still a real SSH endpoint: its own loopback
port, its own ed25519 host key (listed in the sim's known_hosts), the SSH protocol as asyncssh speaks it
to any client (asyncssh, OpenSSH's ``ssh``, ``rsync -e ssh``). Only the sim's client key is accepted,
and only for the sim's user.

Every exec request runs as a real subprocess, as sshd runs it: the user's login shell ``-c COMMAND``
(bash for root on Debian, which execs a lone command, as on a real host), in a session of its own,
in the host's login directory (``home/``, where ``./start_sync.sh`` is), with ``PATH`` putting the
fleet's command shims first and ``RINGRIFT_HOST_ROOT`` naming the host; stdin, stdout and stderr are
relayed as bytes and the exit status (or the signal that ended it) is sent back. So
``rsync -e ssh host:/data/selfplay/ dest/`` works: the remote side is ``rsync --server ...``. When the
client goes away, the command gets SIGHUP (then SIGKILL), as sshd does. A shell without a command is
refused: nothing the remediator runs needs one.

Faults come from the cluster over the control pipe (stdin: one JSON request a line; stdout: one JSON
answer a line; logs go to stderr): a host ``up``, ``down`` (its port refuses connections and its open
connections drop, as when sshd stops) or ``hang`` (its port accepts TCP and never sends the banner).
``stats`` answers the SSH connections open now, the most open at once since the last reset, and the
connections accepted; and the same for sessions (connections that logged in, so not a bare TCP probe
such as the remediator's network check). The soft limit of open files is raised to the hard one (a
listener per host, a socket per connection, three pipes per command). The process exits when its
owner is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import resource
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from remediator.sim import procs
from remediator.sim.errors import SimError

READ_SIZE = 65536  # bytes relayed at once
HUP_GRACE = 2.0  # seconds a command whose client went away gets after SIGHUP, before SIGKILL
OWNER_CHECK = 1.0  # seconds between two looks at whether the owner process lives
LOGIN_TIMEOUT = 30.0  # seconds a client has to authenticate (sshd's LoginGraceTime of the per-host sim)
SESSION_PATH = "{bin}:/usr/local/bin:/usr/bin:/bin"
UP, DOWN, HANG = "up", "down", "hang"


@dataclass
class Endpoint:
    """One host as this server serves it."""

    host_id: str
    port: int
    key: asyncssh.SSHKey
    home: str
    env: dict[str, str]
    mode: str = DOWN
    acceptor: Any = None  # asyncssh's SSHAcceptor while up
    hang: asyncio.AbstractServer | None = None  # while hung
    held: set[asyncio.BaseTransport] = field(default_factory=set)  # connections the hang holds
    conns: set[asyncssh.SSHServerConnection] = field(default_factory=set)
    commands: set[asyncio.subprocess.Process] = field(default_factory=set)


class _Silent(asyncio.Protocol):
    """A connection to a hung host: accepted, never answered."""

    def __init__(self, held: set[asyncio.BaseTransport]) -> None:
        self.held = held

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.held.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.held.discard(self.transport)


class _HostServer(asyncssh.SSHServer):
    """Authentication for one host's connection: the sim's user with the sim's key, nothing else."""

    def __init__(self, server: FleetServer, endpoint: Endpoint) -> None:
        self.server, self.endpoint = server, endpoint
        self.conn: asyncssh.SSHServerConnection | None = None
        self.logged_in = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.endpoint.conns.add(conn)
        self.server.opened()

    def auth_completed(self) -> None:
        self.logged_in = True
        self.server.session_opened()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.logged_in:
            self.logged_in = False
            self.server.session_closed()
        if self.conn in self.endpoint.conns:
            self.endpoint.conns.discard(self.conn)
            self.server.closed()

    def begin_auth(self, username: str) -> bool:
        if username == self.server.user and self.conn is not None:
            self.conn.set_authorized_keys(self.server.authorized)
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False


class FleetServer:
    """The hosts of one server process, their listeners and their commands."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.address: str = config["address"]
        self.user: str = config["user"]
        self.authorized = asyncssh.import_authorized_keys(Path(config["authorized_keys"]).read_text())
        self.owner_pid: int | None = config.get("owner_pid")
        self.shell = pwd.getpwnam(self.user).pw_shell or "/bin/sh"
        base_env = {"LANG": "C.UTF-8", "USER": self.user, "LOGNAME": self.user, "SHELL": self.shell}
        session_path = SESSION_PATH.format(bin=config["bin"])
        self.endpoints = {
            h["host_id"]: Endpoint(
                h["host_id"],
                int(h["port"]),
                asyncssh.read_private_key(h["host_key"]),
                h["home"],
                {**base_env, "HOME": h["home"], "PATH": session_path, "RINGRIFT_HOST_ROOT": h["root"]},
            )
            for h in config["hosts"]
        }
        self.open = self.peak = self.accepted = 0
        self.sessions = self.sessions_peak = 0  # connections logged in: SSH sessions, not TCP probes

    def opened(self) -> None:
        self.open += 1
        self.accepted += 1
        self.peak = max(self.peak, self.open)

    def closed(self) -> None:
        self.open -= 1

    def session_opened(self) -> None:
        self.sessions += 1
        self.sessions_peak = max(self.sessions_peak, self.sessions)

    def session_closed(self) -> None:
        self.sessions -= 1

    # -- a host's port ---------------------------------------------------------------------------------

    async def set_mode(self, endpoint: Endpoint, mode: str) -> None:
        """Make the host's port ``up``, ``down`` or ``hang``; OSError when its port cannot be bound."""
        if mode == endpoint.mode:
            return
        await self._take_down(endpoint)
        if mode == UP:
            endpoint.acceptor = await asyncssh.create_server(
                lambda: _HostServer(self, endpoint),
                self.address,
                endpoint.port,
                server_host_keys=[endpoint.key],
                process_factory=lambda process: self.run_command(endpoint, process),
                encoding=None,
                login_timeout=LOGIN_TIMEOUT,
                agent_forwarding=False,
                x11_forwarding=False,
                allow_pty=False,
                reuse_address=True,
            )
        elif mode == HANG:
            endpoint.hang = await asyncio.get_running_loop().create_server(
                lambda: _Silent(endpoint.held), self.address, endpoint.port, reuse_address=True
            )
        endpoint.mode = mode

    async def _take_down(self, endpoint: Endpoint) -> None:
        """Close the host's listener and drop its connections and commands, as a stopped sshd does."""
        if endpoint.acceptor is not None:
            endpoint.acceptor.close()
            await endpoint.acceptor.wait_closed()
            endpoint.acceptor = None
        for conn in list(endpoint.conns):
            conn.abort()
        for command in list(endpoint.commands):
            _signal_group(command, signal.SIGKILL)
        if endpoint.hang is not None:
            endpoint.hang.close()
            endpoint.hang = None
        for transport in list(endpoint.held):
            transport.abort()  # type: ignore[attr-defined]  # asyncio's transports all have abort()
        endpoint.mode = DOWN

    # -- a command --------------------------------------------------------------------------------------

    async def run_command(self, endpoint: Endpoint, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """Run the exec request as ``$SHELL -c COMMAND`` in the host's environment, relaying its streams."""
        command = process.command
        if command is None:
            process.stderr.write(b"this simulated host runs commands only: ssh HOST COMMAND\n")
            process.exit(1)
            return
        child = await asyncio.create_subprocess_exec(
            self.shell,
            "-c",
            command,
            cwd=endpoint.home,
            env=endpoint.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        endpoint.commands.add(child)
        assert child.stdin and child.stdout and child.stderr
        feeding = asyncio.ensure_future(_feed(process.stdin, child.stdin))
        relaying = asyncio.ensure_future(
            asyncio.gather(_relay(child.stdout, process.stdout), _relay(child.stderr, process.stderr))
        )
        closed = asyncio.ensure_future(process.wait_closed())
        try:
            await asyncio.wait([relaying, closed], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]  # two futures of different result types
            if relaying.done() and not relaying.exception():
                status = await child.wait()
                if status < 0:
                    process.exit_with_signal(signal.Signals(-status).name.removeprefix("SIG"))
                else:
                    process.exit(status)
        finally:
            for task in (feeding, relaying, closed):
                task.cancel()
            if child.returncode is None:  # the client went away: hang up, as sshd does
                _signal_group(child, signal.SIGHUP)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(child.wait(), HUP_GRACE)
                _signal_group(child, signal.SIGKILL)
                await child.wait()
            endpoint.commands.discard(child)


async def _feed(source: asyncssh.SSHReader[bytes], sink: asyncio.StreamWriter) -> None:
    """Client's stdin to the command, then EOF."""
    try:
        while data := await source.read(READ_SIZE):
            sink.write(data)
            await sink.drain()
    except (OSError, asyncssh.Error, asyncssh.BreakReceived, asyncssh.SignalReceived):
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.close()


async def _relay(source: asyncio.StreamReader, sink: asyncssh.SSHWriter[bytes]) -> None:
    """The command's stdout or stderr to the client, until the command closes it."""
    while data := await source.read(READ_SIZE):
        sink.write(data)
        await sink.drain()


def _signal_group(child: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)


# -- the process: control pipe and lifetime ------------------------------------------------------------


def _raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _set_modes(server: FleetServer, modes: dict[str, str], ports: dict[str, int]) -> dict[str, str]:
    """Apply modes (and new ports) to hosts; the hosts whose port could not be bound, with the error."""
    failed: dict[str, str] = {}

    async def one(host_id: str, mode: str) -> None:
        endpoint = server.endpoints[host_id]
        if host_id in ports and ports[host_id] != endpoint.port:
            await server._take_down(endpoint)
            endpoint.port = int(ports[host_id])
        try:
            await server.set_mode(endpoint, mode)
        except OSError as exc:
            await server._take_down(endpoint)
            failed[host_id] = f"{type(exc).__name__}: {exc}"

    await asyncio.gather(*(one(h, m) for h, m in modes.items()))
    return failed


async def _answer(server: FleetServer, request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "modes":
        failed = await _set_modes(server, request["modes"], request.get("ports") or {})
        return {"ok": not failed, "failed": failed}
    if op == "stats":
        found = {
            "open": server.open,
            "peak": server.peak,
            "accepted": server.accepted,
            "sessions": server.sessions,
            "sessions_peak": server.sessions_peak,
        }
        if request.get("reset_peak"):
            server.peak, server.sessions_peak = server.open, server.sessions
        return {"ok": True, **found}
    return {"ok": False, "error": f"unknown op {op!r}"}


def _watch_children_by_pidfd(loop: asyncio.AbstractEventLoop) -> None:
    """Reap commands through pidfds on the event loop instead of asyncio's default of one waiting thread
    per command (hundreds of threads in a storm)."""
    with contextlib.suppress(AttributeError, OSError, NotImplementedError):
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(loop)
        asyncio.set_child_watcher(watcher)


async def serve(config: dict[str, Any]) -> int:
    _raise_open_files_limit()
    loop = asyncio.get_running_loop()
    _watch_children_by_pidfd(loop)
    server = FleetServer(config)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def control() -> None:
        while line := await reader.readline():
            try:
                answer = await _answer(server, json.loads(line))
            except Exception as exc:  # a bad request is answered, never fatal
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
        stop.set()  # the cluster closed the pipe: it is gone

    async def owner() -> None:
        while server.owner_pid is None or procs.alive(server.owner_pid):
            await asyncio.sleep(OWNER_CHECK)
        stop.set()

    tasks = [asyncio.ensure_future(control()), asyncio.ensure_future(owner())]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*(server._take_down(e) for e in server.endpoints.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m remediator.sim.fleet_sshd CONFIG.json", file=sys.stderr)
        return 2
    return asyncio.run(serve(json.loads(Path(args[0]).read_text())))


# -- the cluster's side ------------------------------------------------------------------------------------


class FleetSSHD:
    """A server process for some hosts, as the cluster drives it (thread-safe)."""

    def __init__(self, config: dict[str, Any], config_file: Path, log_file: Path) -> None:
        self.config, self.config_file, self.log_file = config, config_file, log_file
        self.host_ids = [h["host_id"] for h in config["hosts"]]
        self.proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> None:
        self.config_file.write_text(json.dumps(self.config))
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "remediator.sim.fleet_sshd", str(self.config_file)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )

    def request(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One control request and its answer; SimError when the server is gone or does not answer."""
        with self._lock:
            proc = self.proc
            if proc is None or proc.stdin is None or proc.stdout is None:
                raise SimError("the fleet SSH server is not running")
            try:
                proc.stdin.write(json.dumps(body).encode() + b"\n")
                proc.stdin.flush()
            except BrokenPipeError:
                raise SimError(f"the fleet SSH server exited; see {self.log_file}") from None
            return json.loads(self._readline(proc, timeout))

    def _readline(self, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise SimError(
                        f"the fleet SSH server did not answer in {timeout:g} s; see {self.log_file}"
                    )
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    raise SimError(f"the fleet SSH server exited; see {self.log_file}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def modes(
        self, modes: dict[str, str], timeout: float, ports: dict[str, int] | None = None
    ) -> dict[str, str]:
        """Set hosts up, down or hung (and move some to new ports); the hosts whose port failed to bind."""
        answer = self.request({"op": "modes", "modes": modes, "ports": ports or {}}, timeout)
        if "error" in answer:
            raise SimError(f"fleet SSH server: {answer['error']}")
        return dict(answer.get("failed") or {})

    def stats(self, reset_peak: bool = False, timeout: float = 10.0) -> dict[str, int]:
        return self.request({"op": "stats", "reset_peak": reset_peak}, timeout)

    def stop(self, timeout: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


if __name__ == "__main__":
    sys.exit(main())
