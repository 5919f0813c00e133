"""Inventory of a self-play data directory: files, sizes, checksums, unsynced games and their time range.

Standard library only and read-only: the diagnosis sends this file's source to the host over SSH and
runs it with ``python3 -I -S - DATA_DIR LAST_SYNC no-checksums`` (arguments quoted), recover_data runs it with
checksums and imports it to inventory the local copy, so both sides are measured by the same code.
Game files are SQLite databases with a ``games(game_id, created_at)`` table; a game is unsynced when
``created_at > last_sync``.

A file the inventory cannot read as such a database -- another schema, a half-written or corrupt
file, another format (a ``-wal`` journal, a ``.tmp``, anything not ``.db``), or one it cannot even
stat or open -- is *unparseable*, and never counts as "no data": when it was modified after
``last_sync`` its bytes are unsynced bytes at risk (``unsynced_unparseable_bytes``, included in
``unsynced_bytes``), and every unparseable file is counted (``unparseable_file_count``,
``unparseable_bytes``) and the newest are named (``unparseable_files``). The other keys keep their
meaning for the data that could be read.
"""

from __future__ import annotations  # annotations stay strings: the host's python3 may be older

import hashlib
import json
import os
import sqlite3
import sys
from typing import Any

UNPARSEABLE_LISTED = 20  # unparseable files named in the output at most (newest first); all are counted
REASON_CHARS = 120  # characters of an error message kept as the reason a file is unparseable


def _games(path: str, last_sync: float) -> tuple[int, float | None, float | None, int]:
    """(unsynced count, first created_at, last created_at, all games) of one SQLite games file.

    Raises sqlite3.Error when the file is not one (or is damaged)."""
    # mode=ro + immutable: never write to, lock, or create journals beside the host's data.
    uri = "file:" + path + "?mode=ro&immutable=1"
    conn = sqlite3.connect(uri, uri=True, timeout=1)
    try:
        total = conn.execute("SELECT COUNT(*) FROM games").fetchone()[0]
        row = conn.execute(
            "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM games WHERE created_at > ?",
            (last_sync,),
        ).fetchone()
    finally:
        conn.close()
    return row[0], row[1], row[2], total


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _why(exc: BaseException) -> str:
    return (type(exc).__name__ + ": " + str(exc))[:REASON_CHARS]


def inventory(data_dir: str, last_sync: float = 0.0, checksums: bool = True) -> dict[str, Any]:
    files: dict[str, dict[str, Any]] = {}
    unsynced = 0
    games_total = 0
    first: float | None = None
    last: float | None = None
    total_bytes = 0
    unsynced_bytes = 0
    # (modified_at, path, size, reason, after_last_sync)
    unparseable: list[tuple[float | None, str, int | None, str | None, bool | None]] = []
    unparseable_bytes = 0
    unsynced_unparseable_bytes = 0
    for root, _dirs, names in os.walk(data_dir):
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, data_dir)
            try:
                st = os.stat(path)
            except OSError as exc:
                # Unreadable, or gone since the walk listed it (renamed: the new name may be missed):
                # either way what it holds is unknown, never zero.
                unparseable.append((None, rel, None, "cannot stat: " + _why(exc), None))
                continue
            size = st.st_size
            entry: dict[str, Any] = {"size": size}
            reason: str | None = None
            if checksums:
                try:
                    entry["sha256"] = _sha256(path)
                except FileNotFoundError as exc:  # gone since the stat: not a file the host holds
                    unparseable.append((None, rel, None, "gone while read: " + _why(exc), None))
                    continue
                except OSError as exc:  # there, but unreadable: listed without a checksum
                    entry["sha256"] = None
                    reason = _why(exc)
            games: tuple[int, float | None, float | None, int] | None = None
            if reason is None and name.endswith(".db"):
                try:
                    games = _games(path, last_sync)
                except sqlite3.Error as exc:
                    reason = "not a games database: " + _why(exc)
            elif reason is None:
                reason = "not a .db games file"
            if games is not None:
                count, lo, hi, total = games
                entry["unsynced_games"] = count
                entry["games"] = total
                games_total += total
                if count:
                    assert lo is not None and hi is not None  # MIN and MAX of at least one game
                    unsynced += count
                    unsynced_bytes += size
                    first = lo if first is None else min(first, lo)
                    last = hi if last is None else max(last, hi)
            else:
                after = st.st_mtime > last_sync
                entry["unparseable"] = reason
                unparseable.append((st.st_mtime, rel, size, reason, after))
                unparseable_bytes += size
                if after:
                    unsynced_unparseable_bytes += size
            total_bytes += size
            files[rel] = entry
    unparseable.sort(key=lambda u: (u[0] is not None, u[0] or 0.0), reverse=True)
    return {
        "data_dir": data_dir,
        "exists": os.path.isdir(data_dir),
        "files": files,
        "file_count": len(files),
        "bytes": total_bytes,
        "games": games_total,
        "unsynced_games": unsynced,
        "unsynced_bytes": unsynced_bytes + unsynced_unparseable_bytes,
        "first_unsynced_at": first,
        "last_unsynced_at": last,
        "unparseable_file_count": len(unparseable),
        "unparseable_bytes": unparseable_bytes,
        "unsynced_unparseable_bytes": unsynced_unparseable_bytes,
        "unparseable_files": [
            {"path": rel, "size": size, "modified_at": mtime, "after_last_sync": after, "reason": reason}
            for mtime, rel, size, reason, after in unparseable[:UNPARSEABLE_LISTED]
        ],
    }


if __name__ == "__main__":
    # python3 -I -S - DATA_DIR [LAST_SYNC [no-checksums]]
    last_sync = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    checksums = sys.argv[3:4] != ["no-checksums"]
    print(json.dumps(inventory(sys.argv[1], last_sync, checksums=checksums)))
