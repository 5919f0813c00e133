"""The sync agent of one simulated host: ships new self-play games to the coordinator.

Run by file with the standard library only (``python -E -s -S sync_agent.py --host-root ...``) so that
200 of them start fast and fit in memory. Every ``--interval`` seconds, and within ``TRIGGER_POLL``
seconds of a force-sync request (the coordinator creates ``run/force_sync``), it takes the host's
self-play lock, reads the clock (T), and posts every game created after its cursor and up to T to
``POST /sim/hosts/<id>/ingest``; the coordinator stores them and sets ``last_sync = T``. So a game is
unsynced exactly when its ``created_at`` is later than the coordinator's ``last_sync``.

Faults: SIGUSR1 wedges it softly (alive, no periodic syncs, a forced sync kicks it), SIGUSR2 hard
(alive, never syncs again until restarted); ``run/faults/disk_full`` makes every sync fail
with ENOSPC; ``run/faults/dies_after_restart`` makes it die shortly after starting; the cluster's
network-down flag makes syncs fail as unreachable. It never deletes a game file. It exits by itself
when the process that owns the sim (``--owner-pid``) is gone, so a crashed test leaves no agent behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

try:
    from remediator.sim import agentctl, games, procs
    from remediator.sim.layout import DIES_AFTER_RESTART, DISK_FULL, HostPaths
except ImportError:  # run by file without the package on sys.path (the normal case)
    import agentctl  # type: ignore[no-redef,import-not-found]
    import games  # type: ignore[no-redef,import-not-found]
    import procs  # type: ignore[no-redef,import-not-found]
    from layout import DIES_AFTER_RESTART, DISK_FULL, HostPaths  # type: ignore[no-redef,import-not-found]

TRIGGER_POLL = 0.1  # seconds between two looks for a force-sync request
DIES_AFTER = 0.5  # seconds an agent with the "dies after restart" fault lives
HTTP_TIMEOUT = 10.0  # seconds for one ingest call
SOFT_WEDGE = "soft"  # SIGUSR1: no periodic syncs; a forced sync kicks the loop back to life
HARD_WEDGE = "hard"  # SIGUSR2: never syncs again, forced or not; only a restart clears it


class Agent:
    def __init__(self, args: dict[str, str]) -> None:
        self.host_id = args["--host-id"]
        self.paths = HostPaths(args["--host-root"])
        self.coordinator = urlsplit(args["--coordinator"])
        self.interval = float(args.get("--interval", "1.0"))
        self.network_flag = Path(args["--network-flag"]) if args.get("--network-flag") else None
        self.owner_pid = int(args["--owner-pid"]) if args.get("--owner-pid") else None
        self.wedged: str | None = None  # SOFT_WEDGE or HARD_WEDGE once signalled
        self.stopping = False

    def log(self, level: str, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
        line = f"{stamp} {level} sync_agent[{os.getpid()}] host_id={self.host_id} {message}\n"
        with open(self.paths.sync_log, "a", encoding="utf-8") as f:
            f.write(line)

    def cursor(self) -> float:
        try:
            return float(self.paths.cursor.read_text().strip())
        except (OSError, ValueError):
            return 0.0  # unknown: ship everything, the coordinator deduplicates

    def sync(self, reason: str) -> None:
        if self.network_flag is not None and self.network_flag.exists():
            self.log("ERROR", f"sync failed ({reason}): [Errno 101] Network is unreachable")
            return
        if self.paths.has_fault(DISK_FULL):
            self.log("ERROR", f"sync failed ({reason}): [Errno 28] No space left on device")
            return
        since = self.cursor()
        with games.selfplay_lock(self.paths.selfplay_lock):
            until = time.time()
            new = games.games_since(self.paths.data, since)
        body = json.dumps({"synced_until": until, "games": [list(g) for g in new]})
        try:
            status, answer = self.post(f"/sim/hosts/{self.host_id}/ingest", body)
        except OSError as exc:
            self.log("ERROR", f"sync failed ({reason}): coordinator unreachable: {exc}")
            return
        if status != 200:
            self.log("WARNING", f"sync refused ({reason}): HTTP {status}: {answer.get('error', answer)}")
            return
        tmp = self.paths.cursor.with_suffix(".tmp")
        tmp.write_text(f"{until!r}\n")
        os.replace(tmp, self.paths.cursor)
        self.log(
            "INFO", f"synced {len(new)} games ({reason}) new={answer.get('new_games')} last_sync={until:.3f}"
        )

    def post(self, path: str, body: str) -> tuple[int, dict[str, object]]:
        """One HTTP/1.0 POST over a plain socket (http.client costs 25 ms of imports per agent)."""
        payload = body.encode()
        host = self.coordinator.hostname or "127.0.0.1"
        head = (
            f"POST {path} HTTP/1.0\r\nHost: {host}:{self.coordinator.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        with socket.create_connection((host, self.coordinator.port or 80), timeout=HTTP_TIMEOUT) as conn:
            conn.sendall(head.encode() + payload)
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        raw = b"".join(chunks)
        header, _, content = raw.partition(b"\r\n\r\n")
        try:
            status = int(header.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise OSError(f"malformed HTTP answer: {raw[:80]!r}") from None
        try:
            answer = json.loads(content or b"{}")
        except ValueError:
            answer = {"error": content[:200].decode("utf-8", "replace")}
        return status, answer if isinstance(answer, dict) else {"answer": answer}

    def on_sigterm(self, *_: object) -> None:
        """Stop now, even in the middle of a slow sync (what systemd's stop asks of a service)."""
        self.stopping = True
        agentctl.bump(self.paths, agentctl.AGENT_KILLS)  # whoever sent it: systemctl, pkill, the sim
        raise SystemExit(0)

    def owner_gone(self) -> bool:
        return self.owner_pid is not None and not procs.alive(self.owner_pid)

    def run(self) -> int:
        signal.signal(signal.SIGUSR1, lambda *_: setattr(self, "wedged", self.wedged or SOFT_WEDGE))
        signal.signal(signal.SIGUSR2, lambda *_: setattr(self, "wedged", HARD_WEDGE))
        signal.signal(signal.SIGTERM, self.on_sigterm)
        self.paths.wedged.unlink(missing_ok=True)
        self.log("INFO", "sync agent started")
        if self.paths.has_fault(DIES_AFTER_RESTART):
            time.sleep(DIES_AFTER)
            self.log("ERROR", "sync agent crashed: RuntimeError: sync state corrupt (exit 1)")
            return 1
        next_sync = 0.0
        while not self.stopping:
            if self.owner_gone():
                return 0
            if self.wedged:
                self.paths.wedged.touch()  # for the sim: no sync is in flight from here on
                if self.wedged == HARD_WEDGE or not self.paths.force_sync.exists():
                    time.sleep(TRIGGER_POLL)
                    continue
                # A forced sync kicks a stuck loop: the runbook's Option 1 is what fixes a soft wedge.
                self.wedged = None
                self.log("INFO", "wedged sync loop kicked by a forced sync")
            requested = self.paths.force_sync.exists()
            if requested or time.monotonic() >= next_sync:
                if requested:
                    self.paths.force_sync.unlink(missing_ok=True)
                try:
                    self.sync("forced" if requested else "periodic")
                except Exception as exc:  # one failed sync must not kill the agent
                    self.log("ERROR", f"sync failed: {type(exc).__name__}: {exc}")
                next_sync = time.monotonic() + self.interval
            time.sleep(TRIGGER_POLL)
        self.log("INFO", "sync agent stopped")
        return 0


OPTIONS = {"--host-id", "--host-root", "--coordinator", "--interval", "--network-flag", "--owner-pid"}
REQUIRED = ("--host-id", "--host-root", "--coordinator")


def parse_args(argv: list[str]) -> dict[str, str]:
    """``--name value`` pairs (argparse costs 10 ms of imports per agent)."""
    if len(argv) % 2 or any(name not in OPTIONS for name in argv[::2]):
        raise SystemExit(f"usage: sync_agent.py {' '.join(f'{o} VALUE' for o in sorted(OPTIONS))}")
    args = dict(zip(argv[::2], argv[1::2], strict=True))
    missing = [name for name in REQUIRED if name not in args]
    if missing:
        raise SystemExit(f"sync_agent.py: missing {', '.join(missing)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return Agent(args).run()
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
