"""One simulated host's real OpenSSH server: ``sshd -D -e -f <its config>`` on a loopback port.

It runs as the current user with its own ed25519 host key, accepts only the sim's client key, and
sets the session's ``PATH`` (the host's ``bin/`` of command shims first) and ``RINGRIFT_HOST_ROOT`` with
``SetEnv``, which sshd applies after its own defaults, so the remediator's default commands find this
host's shims. Every command runs in the host's login directory (``home/``, where ``./start_sync.sh``
is): a ``ForceCommand`` changes there, then execs the user's shell with the command as sshd would have
run it (``$SHELL -c COMMAND``), so the process that runs a command has the command line it has on a
real host.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

from remediator.sim import procs
from remediator.sim.errors import SimError
from remediator.sim.layout import HostPaths

SESSION_PATH = "{bin}:/usr/local/bin:/usr/bin:/bin"
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start as root without it


def binary(name: str) -> str:
    """Absolute path of an OpenSSH binary (sshd must be started by absolute path)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not found:
        raise SimError(f"{name} is not installed; install openssh-server and openssh-client (apt-get)")
    return os.path.abspath(found)


def keygen(path: Path, comment: str) -> None:
    """A new passphrase-less ed25519 key pair at path and path.pub."""
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    subprocess.run(
        [binary("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def _quote(value: str) -> str:
    if any(c in value for c in '"\\\n'):
        raise SimError(f"path {value!r} cannot be written into an sshd_config; use a simpler sim root")
    return f'"{value}"'


class SSHServer:
    """The sshd of one host; ``start()`` returns at once, ``wait_ready()`` until it accepts TCP."""

    def __init__(self, paths: HostPaths, address: str, port: int, authorized_keys: Path) -> None:
        self.paths, self.address, self.port, self.authorized_keys = paths, address, port, authorized_keys
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where the log of the current start begins

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def prepare(self) -> None:
        """Make the host key and write the config."""
        keygen(self.paths.host_key, f"sim-host-key@{self.paths.root.name}")
        self.write_config()

    def write_config(self) -> None:
        """The sshd_config for the current port (rewritten when the port changes)."""
        session_path = SESSION_PATH.format(bin=self.paths.bin)
        login = shlex.quote(str(self.paths.home))
        lines = [
            f"ListenAddress {self.address}:{self.port}",
            f"HostKey {_quote(str(self.paths.host_key))}",
            f"PidFile {_quote(str(self.paths.sshd_pid))}",
            f"AuthorizedKeysFile {_quote(str(self.authorized_keys))}",
            "StrictModes no",
            "UsePAM no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "PermitUserEnvironment no",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "X11Forwarding no",
            "MaxStartups 256:30:512",
            "MaxSessions 64",
            "LoginGraceTime 30",
            f"SetEnv {_quote('PATH=' + session_path)} {_quote('RINGRIFT_HOST_ROOT=' + str(self.paths.root))}",
            f'ForceCommand cd {login} && exec "$SHELL" -c "$SSH_ORIGINAL_COMMAND"',
            "Subsystem sftp internal-sftp",
        ]
        self.paths.sshd_config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        if self.running:
            return
        if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.paths.sshd_pid.unlink(missing_ok=True)  # sshd writes it once it listens (see wait_ready)
        self._log_start = self.paths.sshd_log.stat().st_size if self.paths.sshd_log.exists() else 0
        with open(self.paths.sshd_log, "ab") as log:
            self._proc = subprocess.Popen(
                [binary("sshd"), "-D", "-e", "-f", str(self.paths.sshd_config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float) -> None:
        """Poll until this sshd listens: its pid file names it (sshd writes it after binding) and the
        port accepts a TCP connection. Another process's server on the port does not count.
        SimError with the log tail if sshd died (``bind_failed`` tells whether its port was taken)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                tail = self.paths.sshd_log.read_text(errors="replace")[-2000:]
                raise SimError(f"sshd of {self.paths.root.name} exited on start; its log ends:\n{tail}")
            try:
                if self._pid_written():
                    with socket.create_connection((self.address, self.port), timeout=1):
                        return
            except OSError:
                if time.monotonic() >= deadline:
                    raise SimError(f"sshd of {self.paths.root.name} not listening on {self.port}") from None
                time.sleep(0.02)

    def _pid_written(self) -> bool:
        try:
            return self._proc is not None and int(self.paths.sshd_pid.read_text().strip()) == self._proc.pid
        except (OSError, ValueError):
            return False

    def bind_failed(self) -> bool:
        """Whether the last start ended because the port was in use (another process took it)."""
        try:
            with open(self.paths.sshd_log, "rb") as log:
                log.seek(self._log_start)
                return b"Address already in use" in log.read()
        except OSError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sshd and every session it runs (a host that goes away drops its connections)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            for child in reversed(procs.children(self._proc.pid)):
                procs.terminate(child, timeout)
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)
        self._proc = None

    def known_hosts_line(self) -> str:
        """This host's key in ``[address]:port`` form for a known_hosts file."""
        key_type, key = self.paths.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[{self.address}]:{self.port} {key_type} {key}"
