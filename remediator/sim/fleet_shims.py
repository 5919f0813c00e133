"""Command shims of the fleet-scale sim's hosts: ``pgrep``, ``pkill``, ``systemctl``, ``start_sync.sh``.

A fleet host's sync agent is not a process but a state file (``run/agent_state``: ``running|dead PID
STARTED_NS none|soft|hard``) that the agent engine (``fleet_agents``) acts on. These shims give the
remediator's commands the same observable behaviour as the per-host sim's (``shims.py``, real procps):

- ``pgrep``/``pkill`` match the virtual agent by its name (``python3``) or, with ``-f``, by the command
  line the per-host sim's agent has (``python3 -E -s -S .../sync_agent.py --host-id H --host-root R``),
  with ``grep -E`` (procps' extended regular expressions), ``-x`` and ``-i`` honoured. They also run the
  real procps over the caller's own SSH session (every command runs in a session of its own), so, as
  on a real host, ``sh -c 'pkill -f sync_agent && ./start_sync.sh'`` kills the shell that runs it (its
  command line contains ``sync_agent``) and ``start_sync.sh`` never runs. They never match themselves.
- A signal does to the virtual agent what it does to the per-host sim's agent: ``TERM`` stops it and
  counts an ``agent_kills``, ``KILL``, ``INT``, ``HUP``, ``QUIT`` stop it uncounted, ``USR1``/``USR2``
  wedge it (soft/hard), ``0`` only asks.
- An agent of a host with the ``dies_after_restart`` fault counts as dead ``DIES_AFTER`` seconds after
  its start, whoever looks (shim or engine), so no host is kinder because the engine is busy.
- ``systemctl`` and ``start_sync.sh`` behave as ``shims.py``'s: the ``no_systemd`` and ``no_systemctl``
  faults, ``show -p Restart``, restart counted in ``agent_restarts``.

Every shim is POSIX sh (dash): a few milliseconds each, where a Python shim costs 30 ms of CPU, which
1,000 hosts cannot afford. Writers serialise on ``run/agent.lock`` (``flock``), as the engine does, and
replace the state file atomically; each change touches the host's wake file so the engine reacts at
once (an agent started syncs at once, as a real one does).

Differences from the per-host sim, by design: a shim sees the virtual agent and its own session, not
the host's other SSH sessions; options of pgrep/pkill that select by user, group, terminal or parent
apply to the session's processes only.
"""

from __future__ import annotations

import os
from pathlib import Path

from remediator.sim.sync_agent import DIES_AFTER

SIM_DIR = Path(__file__).resolve().parent
LIB_NAME = "fleet-lib.sh"
SHIMS = ("pgrep", "pkill", "systemctl")
START_SYNC = "start_sync.sh"

LIB = r"""# Sourced by the fleet sim's command shims (remediator/sim/fleet_shims.py). POSIX sh.
R=$RINGRIFT_HOST_ROOT
if [ -z "$R" ] || [ ! -d "$R/run" ]; then
    echo "fleet sim: RINGRIFT_HOST_ROOT does not name a simulated host" >&2
    exit 2
fi
HOST_ID=${R##*/}
STATE=$R/run/agent_state
AGENT_LOCK=$R/run/agent.lock
WAKE=@WAKE_DIR@/$HOST_ID
AGENT_NAME=python3
AGENT_CMDLINE="python3 -E -s -S @SIM_DIR@/sync_agent.py --host-id $HOST_ID --host-root $R"
DIES_AFTER_NS=@DIES_AFTER_NS@
PROCPS_PGREP=/usr/bin/pgrep

# agent_alive: status 0 while the host's sync agent runs (AGENT_PID is then its pid).
agent_alive() {
    AGENT_PID=
    [ -f "$STATE" ] || return 1
    read -r a_status a_pid a_started a_wedge < "$STATE" || return 1
    [ "$a_status" = running ] || return 1
    if [ -e "$R/run/faults/dies_after_restart" ]; then
        [ $(( $(date +%s%N) - a_started )) -lt "$DIES_AFTER_NS" ] || return 1
    fi
    AGENT_PID=$a_pid
}

agent_lock() { exec 9>>"$AGENT_LOCK"; flock 9; }
agent_unlock() { exec 9>&-; }

write_state() {
    printf '%s %s %s %s\n' "$1" "$2" "$3" "$4" > "$STATE.$$" && mv -f "$STATE.$$" "$STATE"
}

bump() { printf '\n' >> "$R/run/counters/$1"; }

# agent_start: start the agent unless it runs (status 1 then); AGENT_PID is its pid either way.
agent_start() {
    agent_lock
    if agent_alive; then agent_unlock; return 1; fi
    AGENT_PID=$$
    write_state running "$AGENT_PID" "$(date +%s%N)" none
    : > "$WAKE"
    agent_unlock
}

# agent_signal SIGNAL: deliver SIGNAL (a name without SIG, or 0) to the agent; status 1 when none runs.
agent_signal() {
    agent_lock
    if ! agent_alive; then agent_unlock; return 1; fi
    case $1 in
        0|CONT|STOP|TSTP|TTIN|TTOU|CHLD|URG|WINCH) ;;
        USR1) [ "$a_wedge" = hard ] || write_state running "$a_pid" "$a_started" soft ;;
        USR2) write_state running "$a_pid" "$a_started" hard ;;
        TERM) write_state dead "$a_pid" "$a_started" none; bump agent_kills ;;
        *) write_state dead "$a_pid" "$a_started" none ;;
    esac
    : > "$WAKE"
    agent_unlock
}

# signal_name SPEC: SIGNAL for 9, KILL, SIGKILL ... (as procps reads -SIGNAL and --signal)
signal_name() {
    SIGNAL=${1#SIG}
    case $SIGNAL in
        1) SIGNAL=HUP ;; 2) SIGNAL=INT ;; 3) SIGNAL=QUIT ;; 9) SIGNAL=KILL ;; 10) SIGNAL=USR1 ;;
        12) SIGNAL=USR2 ;; 15) SIGNAL=TERM ;; 18) SIGNAL=CONT ;; 19) SIGNAL=STOP ;;
    esac
}

# procps_flags ARGS...: the matching options of pgrep/pkill (FULL EXACT ICASE LIST LISTFULL PATTERN).
procps_flags() {
    FULL=0 EXACT=0 ICASE=0 LIST=0 LISTFULL=0 PATTERN= skip=0
    for arg; do
        if [ "$skip" = 1 ]; then skip=0; continue; fi
        case $arg in
            --full) FULL=1 ;; --exact) EXACT=1 ;; --ignore-case) ICASE=1 ;;
            --list-name) LIST=1 ;; --list-full) LISTFULL=1 ;;
            --*=*) ;;
            --euid|--uid|--group|--parent|--session|--terminal|--pidfile|--pgroup|--ns|--nslist) skip=1 ;;
            --*) ;;
            -?*)
                rest=${arg#-}
                while [ -n "$rest" ]; do
                    c=${rest%"${rest#?}"}
                    rest=${rest#?}
                    case $c in
                        f) FULL=1 ;; x) EXACT=1 ;; i) ICASE=1 ;; l) LIST=1 ;; a) LISTFULL=1 ;;
                        [uUgGPstF]) [ -z "$rest" ] && skip=1; rest= ;;
                    esac
                done ;;
            *) PATTERN=$arg ;;
        esac
    done
}

# agent_matches: status 0 when PATTERN matches the agent's name (its command line with -f).
agent_matches() {
    [ -n "$PATTERN" ] || return 1
    if [ "$FULL" = 1 ]; then subject=$AGENT_CMDLINE; else subject=$AGENT_NAME; fi
    set -- -E -q
    [ "$EXACT" = 1 ] && set -- "$@" -x
    [ "$ICASE" = 1 ] && set -- "$@" -i
    printf '%s\n' "$subject" | grep "$@" -e "$PATTERN"
}

# my_session: SID, the session of this shim (one SSH command's processes, and nothing else).
my_session() {
    read -r st < /proc/$$/stat
    set -- ${st##*") "}
    SID=$4
}
"""

PGREP = r"""#!/bin/sh
# pgrep of a fleet sim host: its virtual sync agent, and the real procps over this session.
. "@LIB@"
procps_flags "$@"
my_session
if agent_alive && agent_matches; then
    if [ "$LISTFULL" = 1 ]; then echo "$AGENT_PID $AGENT_CMDLINE"
    elif [ "$LIST" = 1 ]; then echo "$AGENT_PID $AGENT_NAME"
    else echo "$AGENT_PID"; fi
    others=$R/run/.pgrep.$$
    "$PROCPS_PGREP" -s "$SID" "$@" > "$others"
    while read -r pid rest; do
        [ "$pid" = "$$" ] || echo "$pid${rest:+ $rest}"
    done < "$others"
    rm -f "$others"
    exit 0
fi
exec "$PROCPS_PGREP" -s "$SID" "$@"
"""

PKILL = r"""#!/bin/sh
# pkill of a fleet sim host: its virtual sync agent, and the real procps' choice in this session.
. "@LIB@"
SIGNAL=TERM
n=$#
while [ "$n" -gt 0 ]; do
    arg=$1; shift; n=$((n - 1))
    case $arg in
        --signal) signal_name "$1"; shift; n=$((n - 1)); continue ;;
        --signal=*) signal_name "${arg#--signal=}"; continue ;;
        -[0-9]|-[0-9][0-9]|-[A-Z][A-Z]*) signal_name "${arg#-}"; continue ;;
    esac
    set -- "$@" "$arg"
done
procps_flags "$@"
my_session
found=1
if agent_alive && agent_matches && agent_signal "$SIGNAL"; then found=0; fi
others=$R/run/.pkill.$$
"$PROCPS_PGREP" -s "$SID" "$@" > "$others"
status=$?
while read -r pid rest; do
    [ "$pid" = "$$" ] && continue
    if [ "$SIGNAL" = 0 ]; then kill -0 "$pid" 2>/dev/null && found=0
    else kill -s "$SIGNAL" "$pid" 2>/dev/null && found=0; fi
done < "$others"
rm -f "$others"
[ "$status" -gt 1 ] && exit "$status"
exit "$found"
"""

SYSTEMCTL = r"""#!/bin/sh
# systemctl of a fleet sim host: one unit, ringrift-sync-agent, the virtual agent.
. "@LIB@"
if [ -e "$R/run/faults/no_systemctl" ]; then echo "systemctl: command not found" >&2; exit 127; fi
if [ -e "$R/run/faults/no_systemd" ]; then
    echo "System has not been booted with systemd as init system (PID 1). Can't operate." >&2
    exit 1
fi
if [ "$1" = show ]; then
    policy=no
    [ -f "$R/run/restart_policy" ] && read -r policy < "$R/run/restart_policy"
    echo "Restart=$policy"
    exit 0
fi
verb= unit=
for arg; do
    case $arg in -*) ;; *) if [ -z "$verb" ]; then verb=$arg; elif [ -z "$unit" ]; then unit=$arg; fi ;; esac
done
if [ -z "$unit" ]; then
    echo "systemctl (sim): usage: systemctl restart|start|stop|status|is-active UNIT" >&2
    exit 1
fi
unit=${unit%.service}
if [ "$unit" != ringrift-sync-agent ]; then
    echo "Failed to $verb $unit.service: Unit $unit.service not found." >&2
    exit 5
fi
case $verb in
    restart) bump agent_restarts; agent_signal TERM; agent_start; exit 0 ;;
    start) agent_start && bump agent_restarts; exit 0 ;;
    stop) agent_signal TERM; exit 0 ;;
    status|is-active)
        if agent_alive; then echo "active (pid $AGENT_PID)"; exit 0; fi
        echo inactive; exit 3 ;;
esac
echo "systemctl (sim): unknown command '$verb'" >&2
exit 1
"""

START_SYNC_SH = r"""#!/bin/sh
# ./start_sync.sh of a fleet sim host: starts its virtual sync agent unless it runs.
. "@LIB@"
if agent_start; then
    bump agent_restarts
    echo "sync agent started (pid $AGENT_PID)"
    exit 0
fi
echo "sync agent already running (pid $AGENT_PID)"
"""


def install(bin_dir: Path, wake_dir: Path) -> Path:
    """Write the shared library and the shims into ``bin_dir``; returns the path of ``start_sync.sh``
    (kept beside them, linked into every host's login directory by ``link_start_sync``)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    lib = bin_dir / LIB_NAME
    lib.write_text(
        LIB.replace("@WAKE_DIR@", str(wake_dir))
        .replace("@SIM_DIR@", str(SIM_DIR))
        .replace("@DIES_AFTER_NS@", str(int(DIES_AFTER * 1e9)))
    )
    scripts = {"pgrep": PGREP, "pkill": PKILL, "systemctl": SYSTEMCTL}
    start_sync = bin_dir.parent / START_SYNC
    for path, text in [
        *((bin_dir / name, body) for name, body in scripts.items()),
        (start_sync, START_SYNC_SH),
    ]:
        path.write_text(text.replace("@LIB@", str(lib)))
        path.chmod(0o755)
    return start_sync


def link_start_sync(home: Path, script: Path) -> None:
    """``./start_sync.sh`` in a host's login directory, as the runbook runs it."""
    link = home / START_SYNC
    link.unlink(missing_ok=True)
    os.symlink(script, link)
