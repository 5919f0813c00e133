"""Command shims of a simulated host: ``systemctl``, ``pgrep``, ``pkill`` and ``start_sync.sh``.

Each host's ``bin/`` holds tiny sh wrappers that exec this file with the host's root baked in, and
the host's sshd puts that ``bin/`` first on the session's PATH. So the remediator's default commands
(``pgrep -f sync_agent``, ``systemctl restart ringrift-sync-agent``, ``pkill -f sync_agent;
start_sync.sh``) act on *this* host's agent only, as they would on a real host. Standard library only.

A ``pgrep``/``pkill`` pattern that could name the sync agent is answered for this host's agent; any
other ``pgrep`` runs the real one, any other ``pkill`` is refused so a shim never touches the machine.
"""

from __future__ import annotations

import json
import os
import re
import sys

try:
    from remediator.sim import agentctl
    from remediator.sim.layout import NO_SYSTEMD, HostPaths
except ImportError:  # run by file without the package on sys.path (the normal case)
    import agentctl  # type: ignore[no-redef]
    from layout import NO_SYSTEMD, HostPaths  # type: ignore[no-redef]

UNIT = "ringrift-sync-agent"
REAL_PGREP = "/usr/bin/pgrep"


def _names_agent(paths: HostPaths, pattern: str) -> bool:
    """Whether pattern (a pgrep regex) matches the agent's command line."""
    argv = json.loads(paths.agent_config.read_text())["argv"]
    try:
        return re.search(pattern, " ".join(argv)) is not None
    except re.error:
        return False


def _pattern(args: list[str]) -> str | None:
    """The pattern argument of pgrep/pkill (options such as -f, -a, -9, -TERM are skipped)."""
    rest = [a for a in args if not a.startswith("-")]
    return rest[-1] if rest else None


NOT_BOOTED = "System has not been booted with systemd as init system (PID 1). Can't operate."


def show(paths: HostPaths, args: list[str]) -> int:
    """``systemctl show -p Restart UNIT``: the unit's restart policy (``sim.set_restart_policy``)."""
    wanted = [a.split("=", 1)[1] for a in args if a.startswith("--property=")]
    wanted += [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-p", "--property")]
    policy = paths.restart_policy.read_text().strip() if paths.restart_policy.exists() else "no"
    if "Restart" in wanted or not wanted:
        print(f"Restart={policy}")
    return 0


def systemctl(paths: HostPaths, args: list[str]) -> int:
    if paths.has_fault(NO_SYSTEMD):
        print(NOT_BOOTED, file=sys.stderr)
        return 1
    if args and args[0] == "show":
        return show(paths, args[1:])
    verbs = [a for a in args if not a.startswith("-")]
    if len(verbs) < 2:
        print("systemctl (sim): usage: systemctl restart|start|stop|status|is-active UNIT", file=sys.stderr)
        return 1
    verb, unit = verbs[0], verbs[1].removesuffix(".service")
    if unit != UNIT:
        print(f"Failed to {verb} {unit}.service: Unit {unit}.service not found.", file=sys.stderr)
        return 5
    if verb == "restart":
        agentctl.bump(paths, agentctl.AGENT_RESTARTS)
        agentctl.stop(paths)
        agentctl.start(paths)
        return 0
    if verb == "start":
        if agentctl.start(paths) is not None:
            agentctl.bump(paths, agentctl.AGENT_RESTARTS)
        return 0
    if verb == "stop":
        if agentctl.stop(paths):
            agentctl.bump(paths, agentctl.AGENT_KILLS)
        return 0
    if verb in ("status", "is-active"):
        pid = agentctl.agent_pid(paths)
        print("active" if pid else "inactive", f"(pid {pid})" if pid else "")
        return 0 if pid else 3
    print(f"systemctl (sim): unknown command {verb!r}", file=sys.stderr)
    return 1


def pgrep(paths: HostPaths, args: list[str]) -> int:
    pattern = _pattern(args)
    if pattern is None or not _names_agent(paths, pattern):
        os.execv(REAL_PGREP, [REAL_PGREP, *args])  # noqa: S606 (argv, no shell)
    pid = agentctl.agent_pid(paths)
    if pid is None:
        return 1
    print(pid)
    return 0


def pkill(paths: HostPaths, args: list[str]) -> int:
    pattern = _pattern(args)
    if pattern is None or not _names_agent(paths, pattern):
        print("pkill (sim): only this host's sync agent may be killed here", file=sys.stderr)
        return 1
    if not agentctl.stop(paths):
        return 1
    agentctl.bump(paths, agentctl.AGENT_KILLS)
    return 0


def start_sync(paths: HostPaths, args: list[str]) -> int:
    proc = agentctl.start(paths)
    if proc is None:
        print(f"sync agent already running (pid {agentctl.agent_pid(paths)})")
        return 0
    agentctl.bump(paths, agentctl.AGENT_RESTARTS)
    print(f"sync agent started (pid {proc.pid})")
    return 0


COMMANDS = {"systemctl": systemctl, "pgrep": pgrep, "pkill": pkill, "start_sync.sh": start_sync}


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "--host-root" or argv[2] not in COMMANDS:
        print(f"usage: shims.py --host-root DIR {{{','.join(COMMANDS)}}} [ARGS...]", file=sys.stderr)
        return 2
    return COMMANDS[argv[2]](HostPaths(argv[1]), argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
