"""Process helpers over /proc (Linux): is a pid alive, what is its command line, who are its children.

Standard library only: the sync agent and the command shims import this module by file, without the
remediator package on their path. A zombie counts as dead: the sim's agents may be orphaned and
reaped late (or never) by whatever runs as PID 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            raw = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ..." where comm may itself hold spaces and parentheses.
    return raw[raw.rfind(")") + 2 :].split()


def alive(pid: int | None) -> bool:
    """Whether the process exists and is not a zombie."""
    if not pid or pid <= 0:
        return False
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def session(pid: int) -> int | None:
    """The session id of the process (None when it is gone)."""
    fields = _stat_fields(pid)
    return int(fields[3]) if fields else None


def has_env(pid: int, name: str, value: str) -> bool:
    """Whether the process's environment holds ``name=value`` (False when unreadable or gone)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return False
    return f"{name}={value}".encode() in entries


def with_env(name: str, value: str) -> list[int]:
    """Live pids whose environment holds ``name=value``."""
    pids = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    return [pid for pid in pids if has_env(pid, name, value) and alive(pid)]


def cmdline(pid: int) -> str:
    """The process's command line joined by spaces ("" when it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """Every descendant of pid (children first, then theirs)."""
    by_parent: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                by_parent.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    queue = [pid]
    while queue:
        for child in by_parent.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def matching(needle: str) -> list[int]:
    """Live pids (other than this one) whose command line contains needle."""
    pids = [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != os.getpid()]
    return [pid for pid in pids if needle in cmdline(pid) and alive(pid)]


def wait_dead(pid: int, timeout: float) -> bool:
    """Poll until pid is dead or timeout seconds pass; reap it if it is our child."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def terminate(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after timeout seconds; returns once the process is dead."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_dead(pid, wait):
            return
