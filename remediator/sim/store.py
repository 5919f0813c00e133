"""The coordinator's central store of synced games: one SQLite file, deduplicated by game_id."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS games (
    game_id TEXT PRIMARY KEY,
    host_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    moves INTEGER,
    source TEXT NOT NULL,          -- 'sync' (an agent shipped it) or 'import' (recovered data)
    received_at REAL NOT NULL      -- unix seconds
)
"""


class GameStore:
    """Thread-safe central store; ``add`` returns how many of the games were new."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.executescript(SCHEMA)

    def add(self, host_id: str, games: Iterable[tuple[str, float, int | None]], source: str) -> int:
        now = time.time()
        rows = [(str(g[0]), host_id, float(g[1]), g[2], source, now) for g in games]
        with self._lock:
            before = self._conn.total_changes
            self._conn.executemany("INSERT OR IGNORE INTO games VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._conn.commit()
            return self._conn.total_changes - before

    def game_ids(self, host_id: str | None = None) -> set[str]:
        with self._lock:
            if host_id is None:
                rows = self._conn.execute("SELECT game_id FROM games").fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT game_id FROM games WHERE host_id = ?", (host_id,)
                ).fetchall()
        return {r[0] for r in rows}

    def count(self, host_id: str | None = None, source: str | None = None) -> int:
        query = "SELECT COUNT(*) FROM games WHERE 1=1"
        args: list[str] = []
        if host_id is not None:
            query, args = query + " AND host_id = ?", [*args, host_id]
        if source is not None:
            query, args = query + " AND source = ?", [*args, source]
        with self._lock:
            return int(self._conn.execute(query, args).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
