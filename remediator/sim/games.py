"""Self-play game files: small SQLite databases of timestamped games in a host's data dir.

Standard library only (the sync agent imports it by file). A game file is ``games_<n>.db`` holding
``games(game_id TEXT PRIMARY KEY, created_at REAL NOT NULL, moves INTEGER)``; ``created_at`` is a unix
timestamp in seconds. A file is written under a ``.tmp`` name and renamed, so readers never see half a
file, and under the host's self-play lock (``fcntl.flock``) so that a sync agent that holds the lock and
reads the clock knows every game created up to that instant is on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

SCHEMA = "CREATE TABLE games (game_id TEXT PRIMARY KEY, created_at REAL NOT NULL, moves INTEGER)"
FILE_GLOB = "games_*.db"
MTIME_SLACK = 1.0  # seconds of doubt allowed between a file's mtime and its newest game


class Game(NamedTuple):
    game_id: str
    created_at: float  # unix seconds
    moves: int


@contextlib.contextmanager
def selfplay_lock(lock_path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the host's self-play lock: no game file is being written while it is held."""
    with open(lock_path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_game_file(data_dir: Path, number: int, host_id: str, count: int, lock_path: Path) -> list[Game]:
    """Write ``games_<number>.db`` with count new games created now; returns them."""
    final = data_dir / f"games_{number:06d}.db"
    tmp = data_dir / f".games_{number:06d}.db.tmp"
    with selfplay_lock(lock_path):
        now = time.time()
        games = [
            Game(f"{host_id}-{number:06d}-{k}", now + k * 1e-6, random.randint(20, 400)) for k in range(count)
        ]
        tmp.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp)
        try:
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute(SCHEMA)
            conn.executemany("INSERT INTO games VALUES (?, ?, ?)", games)
            conn.commit()
        finally:
            conn.close()
        # The kernel stamps mtime from a coarse clock; pin it to the newest game so it is never earlier.
        os.utime(tmp, (games[-1].created_at, games[-1].created_at))
        os.rename(tmp, final)
    return games


def game_files(data_dir: Path, *, recursive: bool = False) -> list[Path]:
    """The game files under data_dir, in name order."""
    pattern = f"**/{FILE_GLOB}" if recursive else FILE_GLOB
    return sorted(p for p in data_dir.glob(pattern) if p.is_file())


def read_games(path: Path, since: float | None = None) -> list[Game]:
    """The games of one file, only those created after since (unix seconds) when given."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if since is None:
            rows = conn.execute("SELECT game_id, created_at, moves FROM games").fetchall()
        else:
            rows = conn.execute(
                "SELECT game_id, created_at, moves FROM games WHERE created_at > ?", (since,)
            ).fetchall()
    finally:
        conn.close()
    return [Game(*row) for row in rows]


def games_since(data_dir: Path, since: float) -> list[Game]:
    """Every game in data_dir created after since; skips files last written before since."""
    found: list[Game] = []
    for path in game_files(data_dir):
        try:
            if path.stat().st_mtime < since - MTIME_SLACK:
                continue  # a file's mtime is never earlier than the games it holds
        except FileNotFoundError:
            continue
        found.extend(read_games(path, since))
    return found
