"""Inventory of a self-play data directory: files, sizes, checksums, unsynced games and their time range.

Standard library only and read-only: the diagnosis sends this file's source to the host over SSH and
runs it with ``python3 - DATA_DIR LAST_SYNC no-checksums`` (arguments quoted), recover_data runs it with
checksums and imports it to inventory the local copy, so both sides are measured by the same code.
Game files are SQLite databases with a ``games(game_id, created_at)`` table; a game is unsynced when
``created_at > last_sync``.
"""

import hashlib
import json
import os
import sqlite3
import sys


def _games(path, last_sync):
    """(unsynced count, first created_at, last created_at, all games) of one SQLite file; None if not one."""
    try:
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
    except sqlite3.Error:
        return None
    return row[0], row[1], row[2], total


def inventory(data_dir, last_sync=0.0, checksums=True):
    files = {}
    unsynced = 0
    games_total = 0
    first = None
    last = None
    total_bytes = 0
    unsynced_bytes = 0
    for root, _dirs, names in os.walk(data_dir):
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, data_dir)
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            entry = {"size": size}
            if checksums:
                digest = hashlib.sha256()
                with open(path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
                entry["sha256"] = digest.hexdigest()
            games = _games(path, last_sync) if name.endswith(".db") else None
            if games is not None:
                count, lo, hi, total = games
                entry["unsynced_games"] = count
                entry["games"] = total
                games_total += total
                if count:
                    unsynced += count
                    unsynced_bytes += size
                    first = lo if first is None else min(first, lo)
                    last = hi if last is None else max(last, hi)
            total_bytes += size
            files[rel] = entry
    return {
        "data_dir": data_dir,
        "exists": os.path.isdir(data_dir),
        "files": files,
        "file_count": len(files),
        "bytes": total_bytes,
        "games": games_total,
        "unsynced_games": unsynced,
        "unsynced_bytes": unsynced_bytes,
        "first_unsynced_at": first,
        "last_unsynced_at": last,
    }


if __name__ == "__main__":
    # python3 - DATA_DIR [LAST_SYNC [no-checksums]]
    last_sync = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    checksums = sys.argv[3:4] != ["no-checksums"]
    print(json.dumps(inventory(sys.argv[1], last_sync, checksums=checksums)))
