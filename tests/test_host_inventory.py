"""The data-dir inventory run on hosts: what it counts as unsynced, and what it cannot read."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from workers.host_inventory import UNPARSEABLE_LISTED, inventory

LAST_SYNC = 1_800_000_000.0  # unix seconds; "before" and "after" below are relative to it


def games_db(path: Path, created_at: list[float], mtime: float) -> int:
    """A games database with one game per timestamp; returns its size in bytes."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE games (game_id TEXT PRIMARY KEY, created_at REAL NOT NULL)")
    conn.executemany(
        "INSERT INTO games VALUES (?, ?)", [(f"g{i}-{path.name}", t) for i, t in enumerate(created_at)]
    )
    conn.commit()
    conn.close()
    os.utime(path, (mtime, mtime))
    return path.stat().st_size


def write(path: Path, data: bytes, mtime: float) -> int:
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return len(data)


def test_parseable_games_keep_their_meaning(tmp_path: Path) -> None:
    synced = games_db(tmp_path / "games_000001.db", [LAST_SYNC - 60, LAST_SYNC - 30], LAST_SYNC - 30)
    fresh = games_db(tmp_path / "games_000002.db", [LAST_SYNC + 10, LAST_SYNC + 20], LAST_SYNC + 20)
    inv = inventory(str(tmp_path), LAST_SYNC, checksums=False)
    assert (inv["games"], inv["unsynced_games"]) == (4, 2)
    assert (inv["first_unsynced_at"], inv["last_unsynced_at"]) == (LAST_SYNC + 10, LAST_SYNC + 20)
    assert inv["unsynced_bytes"] == fresh and inv["bytes"] == synced + fresh
    assert (inv["unparseable_file_count"], inv["unparseable_files"], inv["unsynced_unparseable_bytes"]) == (
        0,
        [],
        0,
    )


def test_db_of_another_schema_modified_after_last_sync_is_unsynced_bytes_not_no_data(tmp_path: Path) -> None:
    other = tmp_path / "games_000003.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE matches (id INTEGER PRIMARY KEY, moves BLOB)")
    conn.executemany("INSERT INTO matches (moves) VALUES (?)", [(os.urandom(512),) for _ in range(20)])
    conn.commit()
    conn.close()
    os.utime(other, (LAST_SYNC + 5, LAST_SYNC + 5))
    size = other.stat().st_size

    inv = inventory(str(tmp_path), LAST_SYNC, checksums=False)

    assert inv["unsynced_bytes"] == size > 0
    assert inv["unsynced_unparseable_bytes"] == size and inv["unparseable_bytes"] == size
    assert inv["unparseable_file_count"] == 1
    [listed] = inv["unparseable_files"]
    assert (
        listed["path"] == "games_000003.db" and listed["size"] == size and listed["after_last_sync"] is True
    )
    assert "no such table: games" in listed["reason"]
    assert inv["files"]["games_000003.db"]["unparseable"] == listed["reason"]
    assert inv["unsynced_games"] == 0  # games it could not count are not made up


def test_half_written_db_counts_as_unsynced_bytes(tmp_path: Path) -> None:
    whole = tmp_path / "games_000004.db"
    games_db(whole, [LAST_SYNC + i for i in range(1, 2000)], LAST_SYNC + 2000)
    with whole.open("r+b") as fh:
        fh.truncate(whole.stat().st_size // 2)  # the writer died half-way
    os.utime(whole, (LAST_SYNC + 2000, LAST_SYNC + 2000))
    size = whole.stat().st_size

    inv = inventory(str(tmp_path), LAST_SYNC, checksums=True)

    assert inv["unsynced_bytes"] == size and inv["unparseable_file_count"] == 1
    assert inv["unsynced_games"] == 0
    assert inv["files"]["games_000004.db"]["sha256"]  # still checksummed: recover_data compares it


def test_file_of_another_format_counts_as_unsynced_bytes(tmp_path: Path) -> None:
    games = games_db(tmp_path / "games_000005.db", [LAST_SYNC + 1], LAST_SYNC + 1)
    gz = write(tmp_path / "games_000006.db", b"\x1f\x8b\x08\x00" + os.urandom(3000), LAST_SYNC + 2)
    wal = write(tmp_path / "games_000005.db-wal", os.urandom(4096), LAST_SYNC + 3)
    (tmp_path / "batch").mkdir()
    jsonl = write(tmp_path / "batch" / "games.jsonl", b"{}\n" * 10, LAST_SYNC + 4)

    inv = inventory(str(tmp_path), LAST_SYNC, checksums=False)

    assert inv["unsynced_bytes"] == games + gz + wal + jsonl
    assert inv["unsynced_games"] == 1
    assert [f["path"] for f in inv["unparseable_files"]] == [
        os.path.join("batch", "games.jsonl"),
        "games_000005.db-wal",
        "games_000006.db",
    ]  # newest first


def test_unparseable_file_older_than_the_last_sync_is_reported_but_not_unsynced(tmp_path: Path) -> None:
    size = write(tmp_path / "games_000007.db", b"not sqlite at all", LAST_SYNC - 100)
    inv = inventory(str(tmp_path), LAST_SYNC, checksums=False)
    assert inv["unsynced_bytes"] == 0 and inv["unsynced_unparseable_bytes"] == 0
    assert inv["unparseable_file_count"] == 1 and inv["unparseable_bytes"] == size
    assert inv["unparseable_files"][0]["after_last_sync"] is False


def test_unparseable_files_are_all_counted_and_the_newest_listed(tmp_path: Path) -> None:
    now = time.time()
    for i in range(UNPARSEABLE_LISTED + 7):
        write(tmp_path / f"junk_{i:03d}.db", b"x" * 10, now + i)
    inv = inventory(str(tmp_path), 0.0, checksums=False)
    assert inv["unparseable_file_count"] == UNPARSEABLE_LISTED + 7
    assert inv["unsynced_bytes"] == 10 * (UNPARSEABLE_LISTED + 7)
    listed = [f["path"] for f in inv["unparseable_files"]]
    assert len(listed) == UNPARSEABLE_LISTED and listed[0] == f"junk_{UNPARSEABLE_LISTED + 6:03d}.db"


def test_file_that_cannot_be_stat_is_counted_as_unparseable_not_skipped(tmp_path: Path) -> None:
    (tmp_path / "games_000008.db").symlink_to(tmp_path / "elsewhere" / "gone.db")  # dangling
    inv = inventory(str(tmp_path), LAST_SYNC, checksums=True)
    assert "games_000008.db" not in inv["files"]  # not a file the host holds
    assert inv["unparseable_file_count"] == 1
    [listed] = inv["unparseable_files"]
    assert listed["path"] == "games_000008.db" and listed["size"] is None
    assert listed["reason"].startswith("cannot stat: FileNotFoundError")


def test_the_host_s_python_environment_cannot_change_what_the_inventory_reports(tmp_path: Path) -> None:
    """The command the remediator runs on a host, run here as the host's shell would: a PYTHONPATH
    with a module shadowing the standard library's (a host's tooling, or anyone who can set the
    agent user's environment) changes nothing: ``-I`` ignores it."""
    import json
    import subprocess

    from workers.diagnose import INVENTORY_SOURCE, REMOTE_PYTHON

    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "sqlite3.py").write_text("raise SystemExit('shadowed sqlite3 imported')\n")
    data = tmp_path / "data"
    data.mkdir()
    env = {**os.environ, "PYTHONPATH": str(shadow)}
    done = subprocess.run(
        ["sh", "-c", f"{REMOTE_PYTHON} {data} 0 no-checksums"],
        input=INVENTORY_SOURCE,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["unsynced_games"] == 0
