"""Where a simulated host keeps its things, under ``<sim root>/hosts/<host_id>/``.

Standard library only: the sync agent and the command shims import this module by file.
"""

from __future__ import annotations

from pathlib import Path

AGENT_CONFIG = "agent.json"
HOST_ROOT_ENV = "RINGRIFT_HOST_ROOT"  # in the environment of every process of a host (sessions, agents)


class HostPaths:
    """The file layout of one simulated host (its "machine")."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.bin = self.root / "bin"  # command shims, first on the SSH session's PATH
        self.home = self.root / "home"  # the login directory of SSH sessions (holds start_sync.sh)
        self.data = self.root / "data" / "selfplay"  # stands in for /data/selfplay
        self.log = self.root / "log"
        self.sync_log = self.log / "sync.log"  # stands in for /var/log/ringrift/sync.log
        self.agent_out = self.log / "agent.out"  # stdout/stderr of the agent process
        self.sshd_log = self.log / "sshd.log"
        self.etc = self.root / "etc"
        self.sshd_config = self.etc / "sshd_config"
        self.host_key = self.etc / "ssh_host_ed25519_key"
        self.run = self.root / "run"
        self.agent_pid = self.run / "sync_agent.pid"
        self.agent_config = self.run / AGENT_CONFIG  # argv of the agent, written by the sim
        self.cursor = self.run / "sync_cursor"  # unix seconds up to which this agent has shipped games
        self.force_sync = self.run / "force_sync"  # exists while a force sync is requested
        self.wedged = self.run / "agent_wedged"  # made by a wedged agent once it has stopped syncing
        self.selfplay_lock = self.run / "selfplay.lock"
        self.restart_policy = self.run / "restart_policy"  # systemd's Restart= of the agent unit ("no")
        self.sshd_pid = self.run / "sshd.pid"
        self.faults = self.run / "faults"  # one empty file per persistent fault
        self.counters = self.run / "counters"  # one file per counter, one byte per bump

    def fault(self, name: str) -> Path:
        return self.faults / name

    def has_fault(self, name: str) -> bool:
        return (self.faults / name).exists()

    def make(self) -> None:
        for d in (self.bin, self.home, self.data, self.log, self.etc, self.run, self.faults, self.counters):
            d.mkdir(parents=True, exist_ok=True)
        self.sync_log.touch()


# Persistent faults, as file names under run/faults/ (a wedge is in-process: a restart clears it).
DISK_FULL = "disk_full"
DIES_AFTER_RESTART = "dies_after_restart"
NO_SYSTEMD = "no_systemd"  # systemctl is there but systemd is not running (a container)
NO_SYSTEMCTL = "no_systemctl"  # the host has no systemctl: the command is not found (exit 127)
