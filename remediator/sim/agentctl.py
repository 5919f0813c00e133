"""Start, find, stop and restart a host's sync agent; count restarts.

Standard library only: used by the sim in-process and by the ``systemctl``/``pkill``/``start_sync.sh``
shims that run inside a host's SSH session. The agent's pid lives in ``run/sync_agent.pid``; a pid is
only believed when that process is alive and its command line names the agent script and this host.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

try:
    from remediator.sim import procs
    from remediator.sim.layout import HOST_ROOT_ENV, HostPaths
except ImportError:  # run by file (agent, shims) without the package on sys.path
    import procs  # type: ignore[no-redef,import-not-found]
    from layout import HOST_ROOT_ENV, HostPaths  # type: ignore[no-redef,import-not-found]

AGENT_RESTARTS = "agent_restarts"  # counter: (re)starts through systemctl or start_sync.sh
AGENT_KILLS = "agent_kills"  # counter: agents that got SIGTERM (systemctl stop/restart, pkill), counted
# by the agent itself; the sim's kill_agent fault (SIGKILL) is not counted


def agent_pid(paths: HostPaths) -> int | None:
    """The pid of this host's running agent, or None."""
    try:
        pid = int(paths.agent_pid.read_text().strip())
    except (OSError, ValueError):
        return None
    line = procs.cmdline(pid)
    deadline = time.monotonic() + 1.0
    while not line and procs.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.005)  # /proc/<pid>/cmdline reads empty while the process is still in exec()
        line = procs.cmdline(pid)
    if procs.alive(pid) and "sync_agent" in line and f"{paths.root}" in line:
        return pid
    return None


def start(paths: HostPaths) -> subprocess.Popen[bytes] | None:
    """Start the agent unless one runs; returns the new process (None when one was running)."""
    if agent_pid(paths) is not None:
        return None
    argv = json.loads(paths.agent_config.read_text())["argv"]
    # The host's mark, so that the host's pgrep/pkill (shims.py) see this agent as one of its processes.
    env = {**os.environ, HOST_ROOT_ENV: str(paths.root)}
    with open(paths.agent_out, "ab") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the SSH session that started it
            close_fds=True,
        )
    tmp = paths.agent_pid.with_suffix(".tmp")
    tmp.write_text(f"{proc.pid}\n")
    os.replace(tmp, paths.agent_pid)
    return proc


def stop(paths: HostPaths, timeout: float = 5.0) -> bool:
    """Stop the running agent (SIGTERM, then SIGKILL); False when none was running."""
    pid = agent_pid(paths)
    if pid is None:
        return False
    procs.terminate(pid, timeout)
    return True


def bump(paths: HostPaths, counter: str) -> None:
    """Add one to a host-side counter (an O_APPEND write of one byte is atomic across processes)."""
    fd = os.open(paths.counters / counter, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, b"\n")
    finally:
        os.close(fd)


def count(paths: HostPaths, counter: str) -> int:
    try:
        return (paths.counters / counter).stat().st_size
    except FileNotFoundError:
        return 0
