"""Command shims of a simulated host: ``systemctl``, ``pgrep``, ``pkill`` and ``start_sync.sh``.

Each host's ``bin/`` holds tiny sh wrappers that exec this file with the host's root baked in, and
the host's sshd puts that ``bin/`` first on the session's PATH; ``start_sync.sh`` sits in the session's
login directory (``home/``), where the runbook runs it as ``./start_sync.sh``. So the remediator's
default commands act on *this* host, as they would on a real one. Standard library only.

``pgrep`` and ``pkill`` are the real procps ones, shown only this host's processes: the shim execs
``/usr/bin/pgrep -s SID,...`` (or pkill) with the sessions of every process that carries this host's
``RINGRIFT_HOST_ROOT`` in its environment (what its SSH sessions run, and its sync agents). Being the
real procps, they behave as on a host: they never match their own process, but they do match the
shell that runs them -- ``sh -c 'pkill -f sync_agent; ...'`` kills that shell, whose command line
contains ``sync_agent``. The sim's pgrep/pkill cannot reach a process of another host or of the
machine: every session in the list belongs to this host (a session's members all descend from its
leader, and the kernel does not reuse a pid still in use as a session id).

``systemctl`` knows one unit, ``ringrift-sync-agent`` (and ``show -p Restart``, its restart policy). On
a host with the ``no_systemd`` fault it is there but fails (systemd does not run, as in a container);
with ``no_systemctl`` it is not there at all: the shell's "command not found", exit 127 (the machine's
own systemctl must never be reached from a simulated host, so the shim stands in for its absence).
"""

from __future__ import annotations

import os
import sys

try:
    from remediator.sim import agentctl, procs
    from remediator.sim.layout import HOST_ROOT_ENV, NO_SYSTEMCTL, NO_SYSTEMD, HostPaths
except ImportError:  # run by file without the package on sys.path (the normal case)
    import agentctl  # type: ignore[no-redef,import-not-found]
    import procs  # type: ignore[no-redef,import-not-found]
    from layout import HOST_ROOT_ENV, NO_SYSTEMCTL, NO_SYSTEMD, HostPaths  # type: ignore[no-redef,import-not-found]

UNIT = "ringrift-sync-agent"
PROCPS = {"pgrep": "/usr/bin/pgrep", "pkill": "/usr/bin/pkill"}
NOT_FOUND = 127  # the shell's exit status for a command it cannot find


def host_sessions(paths: HostPaths) -> list[int]:
    """The session ids of every live process of this host (sorted, without duplicates)."""
    found = {procs.session(pid) for pid in procs.with_env(HOST_ROOT_ENV, str(paths.root))}
    return sorted(sid for sid in found if sid)


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
    if paths.has_fault(NO_SYSTEMCTL):
        print("systemctl: command not found", file=sys.stderr)
        return NOT_FOUND
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
        agentctl.stop(paths)  # the agent counts its own SIGTERM (agent_kills)
        return 0
    if verb in ("status", "is-active"):
        pid = agentctl.agent_pid(paths)
        print("active" if pid else "inactive", f"(pid {pid})" if pid else "")
        return 0 if pid else 3
    print(f"systemctl (sim): unknown command {verb!r}", file=sys.stderr)
    return 1


def procps(name: str, paths: HostPaths, args: list[str]) -> int:
    """Exec the real pgrep/pkill, limited to this host's sessions (this process keeps its pid)."""
    sessions = host_sessions(paths)
    if not sessions:  # nothing of this host runs (not even the caller): nothing can match
        return 1
    binary = PROCPS[name]
    os.execv(binary, [name, "-s", ",".join(map(str, sessions)), *args])  # noqa: S606 (argv, no shell)
    return 1  # not reached


def pgrep(paths: HostPaths, args: list[str]) -> int:
    return procps("pgrep", paths, args)


def pkill(paths: HostPaths, args: list[str]) -> int:
    return procps("pkill", paths, args)


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
