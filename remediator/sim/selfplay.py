"""Self-play on every simulated host: one background thread writes each host's game files on schedule."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence

from remediator.sim import games
from remediator.sim.layout import HostPaths

TICK = 0.05  # seconds between two looks at the schedule


class Selfplay:
    """Every ``interval`` seconds a producing host gets a new game file of ``per_file`` games.

    Hosts are staggered over the interval so that files do not all appear at once; ``producing(host_id)``
    says whether a host plays now (not paused, disk not full, instance running).
    """

    def __init__(
        self,
        hosts: Sequence[tuple[str, HostPaths]],
        interval: float,
        per_file: int,
        producing: Callable[[str], bool],
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:
        self.hosts = list(hosts)
        self.interval, self.per_file = interval, per_file
        self.producing, self.on_tick = producing, on_tick
        self._numbers = dict.fromkeys((h for h, _ in self.hosts), 0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self, host_id: str, paths: HostPaths, count: int | None = None) -> list[games.Game]:
        """Write one game file for host_id now; returns its games."""
        with self._lock:
            self._numbers[host_id] += 1
            number = self._numbers[host_id]
        return games.write_game_file(paths.data, number, host_id, count or self.per_file, paths.selfplay_lock)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sim-selfplay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        n = max(len(self.hosts), 1)
        due = {h: start + self.interval * (i + 1) / n for i, (h, _) in enumerate(self.hosts)}
        while not self._stop.wait(TICK):
            now = time.monotonic()
            for host_id, paths in self.hosts:
                if now < due[host_id]:
                    continue
                due[host_id] = now + self.interval
                if self.producing(host_id):
                    # A host root removed under us has nothing to play on.
                    with contextlib.suppress(OSError, sqlite3.Error):
                        self.write(host_id, paths)
            self.on_tick()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
