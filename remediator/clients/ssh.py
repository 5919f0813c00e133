"""SSH to hosts: asyncssh for commands (host keys always checked), OpenSSH for rsync.

Commands are fixed templates; any value from outside is validated upstream and quoted here with
``shlex.quote``. Nothing here deletes anything on a host.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncssh

from remediator import defaults
from remediator.clients.coordinator import HostRecord
from remediator.config import Settings
from remediator.exceptions import ConfigError, SSHError


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_status: int | None
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def quote_template(template: str, **values: str) -> str:
    """Fill ``{name}`` placeholders with each value shell-quoted as one argument."""
    return template.format(**{k: shlex.quote(v) for k, v in values.items()})


def classify(exc: BaseException) -> str:
    """A short, secret-free reason for an SSH failure, used in facts and the audit trail."""
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return "host key not verifiable (refused; check known_hosts)"
    if isinstance(exc, asyncssh.PermissionDenied):
        return "authentication refused"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError):
        return f"network error: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, asyncssh.Error):
        return f"ssh error: {exc.reason}"
    return type(exc).__name__


_loaded: dict[tuple[str, str], tuple[tuple[tuple[int, int, int], ...], Any]] = {}


def _load_once(kind: str, path: str) -> Any:
    """The known_hosts file or the client key at ``path``, parsed once per process and again only
    when the file changes (a ConfigMap or Secret update). asyncssh given a path parses the file at
    every connection: with 1,000 hosts in known_hosts, 1,000 host keys built for each connection. The
    worker loads both before it forks a job's work horse (workers/rq_worker.py), which inherits them.

    A file that cannot be read or parsed is handed to asyncssh as the path, to fail the connection
    as it always did."""
    try:
        # A client key's certificate (``<key>-cert.pub``, which asyncssh pairs with it) counts too.
        signature = tuple(_stat(f) for f in (path, f"{path}-cert.pub"))
        cached = _loaded.get((kind, path))
        if cached is not None and cached[0] == signature:
            return cached[1]
        # For a client key: what asyncssh.connect does with a path in client_keys.
        value: Any = (
            asyncssh.read_known_hosts(path) if kind == "known_hosts" else asyncssh.load_keypairs([path])
        )
    except (OSError, ValueError, asyncssh.Error):
        return path if kind == "known_hosts" else [path]
    _loaded[(kind, path)] = (signature, value)
    return value


def _stat(path: str) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (0, 0, 0)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def load_keys(settings: Settings) -> None:
    """Parse the known_hosts file and the client key now (see ``_load_once``)."""
    if settings.ssh_known_hosts:
        _load_once("known_hosts", settings.ssh_known_hosts)
    if settings.ssh_key_file:
        _load_once("client_key", settings.ssh_key_file)


class HostSession:
    """One SSH connection to a host, used synchronously from an RQ job."""

    def __init__(self, settings: Settings, record: HostRecord) -> None:
        if not record.address or not record.ssh_user:
            raise SSHError(f"coordinator has no address/ssh_user for host {record.host_id}")
        if not settings.ssh_known_hosts:
            raise ConfigError("REMEDIATOR_SSH_KNOWN_HOSTS is not set: host keys are always checked")
        self.settings = settings
        self.record = record
        self.loop = asyncio.new_event_loop()
        self.conn: asyncssh.SSHClientConnection | None = None

    def connect(self) -> HostSession:
        s = self.settings
        options: dict[str, Any] = {
            "port": self.record.ssh_port,
            "username": self.record.ssh_user,
            "known_hosts": _load_once("known_hosts", s.ssh_known_hosts or ""),
            "client_keys": _load_once("client_key", s.ssh_key_file) if s.ssh_key_file else None,
            "agent_path": None,
            "connect_timeout": s.ssh_connect_timeout,
            "login_timeout": s.ssh_connect_timeout,
            "keepalive_interval": 15,
            "config": [],
        }
        try:
            self.conn = self.loop.run_until_complete(
                asyncio.wait_for(
                    asyncssh.connect(self.record.address, **options), timeout=s.ssh_connect_timeout + 1
                )
            )
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            self.close()
            raise SSHError(classify(exc)) from None
        return self

    def run(self, command: str, stdin: str | None = None, timeout: float | None = None) -> CommandResult:
        assert self.conn is not None, "connect() first"
        timeout = timeout or self.settings.ssh_command_timeout
        try:
            result = self.loop.run_until_complete(
                self.conn.run(command, input=stdin, check=False, timeout=timeout)
            )
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            raise SSHError(f"{command.split()[0]}: {classify(exc)}") from None
        return CommandResult(command, result.exit_status, str(result.stdout or ""), str(result.stderr or ""))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            try:
                self.loop.run_until_complete(asyncio.wait_for(self.conn.wait_closed(), timeout=5))
            except (TimeoutError, OSError, asyncssh.Error):
                pass
            self.conn = None
        if not self.loop.is_closed():
            self.loop.close()

    def __enter__(self) -> HostSession:
        return self.connect()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def ssh_command_for_rsync(settings: Settings, record: HostRecord) -> str:
    """The ``rsync -e`` command: OpenSSH with host keys checked and no prompts."""
    parts = [
        "ssh",
        "-p",
        str(record.ssh_port),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={settings.ssh_known_hosts}",
        "-o",
        f"ConnectTimeout={int(settings.ssh_connect_timeout)}",
        "-o",
        "ServerAliveInterval=15",
        "-F",
        "/dev/null",
    ]
    if settings.ssh_key_file:
        parts += ["-i", settings.ssh_key_file, "-o", "IdentitiesOnly=yes"]
    return shlex.join(parts)


@dataclass(frozen=True)
class RsyncResult:
    exit_status: int
    files_transferred: int
    stderr: str


def rsync_pull(
    settings: Settings, record: HostRecord, dest: Path, *, dry_run: bool = False, timeout: float | None = None
) -> RsyncResult:
    """Copy the host's data dir into ``dest``. Never deletes on either side; ``--dry-run`` copies nothing."""
    if not record.address:
        raise SSHError(f"coordinator has no address for host {record.host_id}")
    dest.mkdir(parents=True, exist_ok=True)
    argv = [
        "rsync",
        "-a",
        "--partial",
        "--stats",
        "--protect-args",
        "--timeout=60",
        "-e",
        ssh_command_for_rsync(settings, record),
    ]
    if dry_run:
        argv.append("--dry-run")
    host = f"[{record.address}]" if ":" in record.address else record.address
    argv += [f"{record.ssh_user}@{host}:{record.data_dir.rstrip('/')}/", f"{dest}/"]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout or defaults.RSYNC_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return RsyncResult(-1, 0, "rsync timed out")
    transferred = 0
    for line in proc.stdout.splitlines():
        if line.startswith("Number of regular files transferred:"):
            transferred = int(line.split(":")[1].strip().replace(",", "") or 0)
    return RsyncResult(proc.returncode, transferred, proc.stderr[-2000:])
