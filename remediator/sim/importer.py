"""Stand-in for RingRift's ``scripts/import_orphaned_databases.py --data-dir DIR --trigger-sync``.

    python -m remediator.sim.importer --data-dir DIR [--host-id ID] [--trigger-sync] [--coordinator URL]

Reads every game file (``games_*.db``, SQLite) under DIR, sends the games to the sim coordinator's
central store (deduplicated by game_id; the host's import count goes up by one), asks the host's agent
to sync when ``--trigger-sync`` is given, prints one JSON line ``{"host_id", "files", "games",
"new_games"}`` and exits 0. The host id is DIR's base name unless ``--host-id`` says otherwise. Exits 1
when the coordinator refuses or cannot be reached, 2 when DIR is not a directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import urllib.error
import urllib.request
from pathlib import Path

from remediator import defaults
from remediator.sim import games

HTTP_TIMEOUT = 30.0  # seconds for the import call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m remediator.sim.importer", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--data-dir", required=True, type=Path, help="folder of recovered game files")
    parser.add_argument("--host-id", help="the host the games came from [DIR's base name]")
    parser.add_argument("--trigger-sync", action="store_true", help="ask the host's agent to sync afterwards")
    parser.add_argument(
        "--coordinator",
        default=os.environ.get("REMEDIATOR_COORDINATOR_URL") or defaults.COORDINATOR_URL,
        help="coordinator base URL [$REMEDIATOR_COORDINATOR_URL or %(default)s]",
    )
    args = parser.parse_args(argv)
    data_dir: Path = args.data_dir
    if not data_dir.is_dir():
        print(f"importer: --data-dir {str(data_dir)!r} is not a directory", file=sys.stderr)
        return 2
    host_id = args.host_id or data_dir.resolve().name
    files = games.game_files(data_dir, recursive=True)
    found: list[list[object]] = []
    for path in files:
        try:
            found.extend(list(g) for g in games.read_games(path))
        except sqlite3.Error as exc:
            print(f"importer: skipped {path}: {exc}", file=sys.stderr)
    body = json.dumps(
        {"host_id": host_id, "files": len(files), "games": found, "trigger_sync": args.trigger_sync}
    ).encode()
    request = urllib.request.Request(  # noqa: S310 (the URL is the operator's coordinator)
        args.coordinator.rstrip("/") + "/sim/import",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        print(f"importer: coordinator answered {exc.code}: {exc.read()[:300]!r}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"importer: coordinator {args.coordinator} unreachable: {exc}", file=sys.stderr)
        return 1
    summary = {"host_id": host_id, "files": len(files), "games": len(found), "new_games": answer["new_games"]}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
