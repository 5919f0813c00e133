"""Runbook Option 3: rsync the host's data to ``<recovery dir>/<host_id>/``, verify it, import it.

Nothing is deleted on the host (no ``--remove-source-files``, no ``rm``). The copy is verified file by
file against a checksum inventory taken on the host. Like every mutating step, it runs at most once per
attempt (the ladder's intent marker): a worker killed during it uses up that attempt, verification
finds no recorded recovery, and the next attempt copies and imports again. The import is idempotent
(games are deduplicated by id), so even a kill inside the import command itself loses nothing.

Only new data is imported: the recovered folder's manifest (every file's name, size and SHA-256) is
digested, and when it equals the digest of the last successful import of this host, the import is not
run again (a re-sent alert, a retry ladder or a second recovery never imports the same data twice).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import time
from typing import Any

from remediator import defaults, keys
from remediator.exceptions import SSHError
from remediator.hosts import recovery_path
from remediator.ssh import HostSession, quote_template, rsync_pull
from workers.diagnose import INVENTORY_SOURCE
from workers.host_inventory import inventory
from workers.steps.base import LadderRun, StepOutcome, Verdict, VerifyWait

MUTATES = True
SINGLE_ATTEMPT = False
VERIFY_WAIT: VerifyWait = "none"
VERIFY_TIMEOUT: float | None = None
PRECONDITIONS: tuple[str, ...] = ("ssh_reachable", "unsynced_games", "unsynced_bytes")


def import_argv(template: str, data_dir: str, host_id: str) -> list[str]:
    """The import command as argv: the template is split first, then each placeholder is filled, so a
    substituted value is always exactly one argument and never reaches a shell."""
    return [token.format(data_dir=data_dir, host_id=host_id) for token in shlex.split(template)]


IMPORTED_TTL = 30 * 86400  # seconds the digest of a host's last import is remembered


def manifest_digest(inventory_: dict[str, Any]) -> str:
    """One digest of what a recovery folder holds: each file's relative name, size and SHA-256."""
    digest = hashlib.sha256()
    for name, entry in sorted(inventory_["files"].items()):
        digest.update(f"{name}\0{entry.get('size')}\0{entry.get('sha256')}\n".encode())
    return digest.hexdigest()


def last_import(lad: LadderRun) -> dict[str, Any]:
    raw = lad.ctx.conn.get(keys.IMPORTED.format(lad.host_id))
    return json.loads(raw) if raw else {}


def run(lad: LadderRun) -> StepOutcome:
    s = lad.ctx.settings
    record = lad.record
    if record is None:
        return StepOutcome("failed", "no host record from diagnosis")
    dest = recovery_path(s.recovery_dir, lad.host_id)
    lad.guard()
    result = rsync_pull(s, record, dest, dry_run=lad.dry_run)
    evidence = {
        "destination": str(dest),
        "rsync_exit": result.exit_status,
        "files_transferred": result.files_transferred,
    }
    lad.remember(rsync_attempted=True, rsync_exit=result.exit_status)
    if result.exit_status != 0:
        evidence["stderr"] = result.stderr[-300:]
        return StepOutcome("failed", "rsync failed", evidence)
    if lad.dry_run:
        return StepOutcome("ran", f"rsync --dry-run ok; would import with {s.import_command!r}", evidence)
    try:
        with HostSession(s, record) as session:
            remote = session.run(quote_template("python3 - {d} 0", d=record.data_dir), stdin=INVENTORY_SOURCE)
        host_inv = json.loads(remote.stdout) if remote.ok else None
    except SSHError as exc:
        host_inv = None
        evidence["checksum_error"] = str(exc)
    last_sync = lad.diagnosis.get("last_sync") or 0.0
    local = inventory(str(dest), last_sync)
    mismatched = []
    if host_inv is not None:
        for name, entry in host_inv["files"].items():
            mine = local["files"].get(name)
            if mine is not None and mine.get("sha256") != entry.get("sha256"):
                mismatched.append(name)
    evidence.update(
        files=local["file_count"],
        games=local["games"],
        unsynced_games=local["unsynced_games"],
        checksum_mismatches=mismatched[:20],
        checksums_compared=host_inv is not None,
    )
    digest = manifest_digest(local)
    evidence["manifest_digest"] = digest
    previous = last_import(lad)
    if previous.get("digest") == digest:
        evidence["import"] = {"skipped": f"nothing new since the import of {previous.get('at')}"}
        lad.remember(recovery=evidence)
        return StepOutcome(
            "ran", "data copied; nothing new since the last import, not imported again", evidence
        )
    argv = import_argv(s.import_command, str(dest), lad.host_id)
    lad.guard()
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=defaults.IMPORT_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        evidence["import_exit"] = None
        lad.remember(recovery=evidence)
        return StepOutcome("failed", f"import command timed out after {defaults.IMPORT_TIMEOUT}s", evidence)
    evidence["import_exit"] = proc.returncode
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            evidence["import"] = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    lad.remember(recovery=evidence)
    if proc.returncode != 0:
        evidence["import_stderr"] = proc.stderr[-300:]
        return StepOutcome("failed", "import command failed", evidence)
    lad.ctx.conn.set(
        keys.IMPORTED.format(lad.host_id),
        json.dumps(
            {
                "digest": digest,
                "at": round(time.time(), 3),
                "ladder_id": lad.ladder_id,
                "incident_id": lad.incident_id,
            }
        ),
        ex=IMPORTED_TTL,
    )
    return StepOutcome("ran", "data copied and imported", evidence)


def verify(lad: LadderRun) -> Verdict:
    if lad.dry_run:
        return Verdict("ok", "dry run: nothing copied")
    rec = lad.scratch.get("recovery") or {}
    expected = (lad.facts or {}).get("unsynced_games")
    evidence = {
        "expected_unsynced_games": expected,
        "recovered_unsynced_games": rec.get("unsynced_games"),
        "checksum_mismatches": rec.get("checksum_mismatches"),
    }
    if rec.get("checksum_mismatches"):
        return Verdict("failed", "recovered files differ from the host's", evidence)
    if expected is not None and (rec.get("unsynced_games") or 0) < expected:
        return Verdict("failed", "fewer unsynced games recovered than diagnosis counted", evidence)
    lad.remember(recovered_games=rec.get("unsynced_games") or 0)
    return Verdict("ok", "recovered data matches the host's", evidence)
