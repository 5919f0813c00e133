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

from remediator import defaults, incidents, keys
from remediator.clients.ssh import quote_template
from remediator.exceptions import SSHError
from remediator.hosts import recovery_path
from workers.diagnose import INVENTORY_SOURCE, REMOTE_PYTHON
from workers.host_inventory import inventory
from workers.steps.base import Check, LadderRun, StepOutcome, StepResult, Verdict, VerifyWait

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


def host_inventory(lad: LadderRun) -> tuple[dict[str, Any] | None, str | None]:
    """The host's checksum inventory of its data dir, or None and why (SSH error, timeout, exit, or an
    answer that is not the inventory's JSON, e.g. a login banner)."""
    record = lad.record
    assert record is not None
    try:
        with lad.ctx.clients.ssh(record) as session:
            command = quote_template(REMOTE_PYTHON + " {d} 0", d=record.data_dir)
            remote = session.run(command, stdin=INVENTORY_SOURCE)
    except SSHError as exc:
        return None, str(exc)
    if not remote.ok:
        return None, f"exit {remote.exit_status}: {remote.stderr[-200:]}"
    try:
        found = json.loads(remote.stdout)
    except ValueError:
        return None, "the host's inventory answer is not JSON"
    if not isinstance(found, dict) or not isinstance(found.get("files"), dict):
        return None, "the host's inventory answer has no file list"
    return found, None


def compare(
    before: dict[str, Any], after: dict[str, Any] | None, local: dict[str, Any]
) -> dict[str, list[str]]:
    """What the copy lacks: files the host had before the copy that are not in it (``missing``), and
    files whose copy differs although the host's file did not change during the copy (``mismatched``).
    A file the host changed during the copy (live selfplay) is ``changed``: the next sync takes it."""
    missing, mismatched, changed = [], [], []
    for name, entry in sorted(before["files"].items()):
        mine = local["files"].get(name)
        if mine is None:
            missing.append(name)
            continue
        if mine.get("sha256") == entry.get("sha256"):
            continue
        now = (after or {}).get("files", {}).get(name)
        if after is not None and now is not None and now.get("sha256") != entry.get("sha256"):
            changed.append(name)
        else:
            mismatched.append(name)
    return {"missing": missing, "mismatched": mismatched, "changed": changed}


def run(lad: LadderRun) -> StepOutcome:
    s = lad.ctx.settings
    record = lad.record
    if record is None:
        return StepOutcome(StepResult.FAILED, "no host record from diagnosis")
    dest = recovery_path(s.recovery_dir, lad.host_id)
    # What the host holds before the copy: the copy is checked against it, file by file.
    before, before_error = (None, None) if lad.dry_run else host_inventory(lad)
    lad.guard()
    result = lad.ctx.clients.rsync(record, dest, dry_run=lad.dry_run)
    evidence: dict[str, Any] = {
        "destination": str(dest),
        "rsync_exit": result.exit_status,
        "files_transferred": result.files_transferred,
    }
    lad.remember(rsync_attempted=True, rsync_exit=result.exit_status)
    if result.exit_status == 0 and not lad.dry_run and lad.incident_id:
        # The host's data could be copied: nothing in this incident may call it lost.
        incidents.update(lad.ctx.conn, lad.incident_id, rsync_ok=f"{time.time():.3f}")
    if result.exit_status != 0:
        evidence["stderr"] = result.stderr[-300:]
        return StepOutcome(StepResult.FAILED, "rsync failed", evidence)
    if lad.dry_run:
        return StepOutcome(
            StepResult.RAN, f"rsync --dry-run ok; would import with {s.import_command!r}", evidence
        )
    after, after_error = host_inventory(lad)
    last_sync = lad.diagnosis.get("last_sync") or 0.0
    local = inventory(str(dest), last_sync)
    diff = compare(before, after, local) if before is not None else None
    evidence.update(
        files=local["file_count"],
        games=local["games"],
        unsynced_games=local["unsynced_games"],
        checksums_compared=diff is not None,
        checksum_error=before_error or after_error,
        checksum_mismatches=(diff or {}).get("mismatched", [])[:20],
        missing_files=(diff or {}).get("missing", [])[:20],
        changed_during_copy=(diff or {}).get("changed", [])[:20],
    )
    digest = manifest_digest(local)
    evidence["manifest_digest"] = digest
    previous = last_import(lad)
    if previous.get("digest") == digest:
        evidence["import"] = {"skipped": f"nothing new since the import of {previous.get('at')}"}
        lad.remember(recovery=evidence)
        return StepOutcome(
            StepResult.RAN, "data copied; nothing new since the last import, not imported again", evidence
        )
    outcome = run_import(lad, dest, digest, evidence)
    lad.remember(recovery=evidence)
    return outcome


def run_import(lad: LadderRun, dest: Any, digest: str, evidence: dict[str, Any]) -> StepOutcome:
    """Run the import command on the recovered folder; remember its digest once it succeeded."""
    argv = import_argv(lad.ctx.settings.import_command, str(dest), lad.host_id)
    lad.guard()
    try:
        proc = lad.ctx.clients.run_import(argv, defaults.IMPORT_TIMEOUT)
    except subprocess.TimeoutExpired:
        evidence["import_exit"] = None
        return StepOutcome(
            StepResult.FAILED, f"import command timed out after {defaults.IMPORT_TIMEOUT}s", evidence
        )
    except OSError as exc:  # the command is not there, or not executable
        evidence["import_exit"] = None
        return StepOutcome(StepResult.FAILED, f"import command could not run: {exc}", evidence)
    evidence["import_exit"] = proc.returncode
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            evidence["import"] = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    if proc.returncode != 0:
        evidence["import_stderr"] = proc.stderr[-300:]
        return StepOutcome(StepResult.FAILED, "import command failed", evidence)
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
    return StepOutcome(StepResult.RAN, "data copied and imported", evidence)


def verify(lad: LadderRun) -> Verdict:
    """OK only for a recovery on record whose copy was checked against the host: every file the host
    had is in it, byte for byte, and it holds at least the unsynced games diagnosis counted."""
    if lad.dry_run:
        return Verdict(Check.OK, "dry run: nothing copied")
    rec = lad.scratch.get("recovery") or {}
    expected = (lad.facts or {}).get("unsynced_games")
    evidence = {
        "expected_unsynced_games": expected,
        "recovered_unsynced_games": rec.get("unsynced_games"),
        "checksum_mismatches": rec.get("checksum_mismatches"),
        "missing_files": rec.get("missing_files"),
        "checksum_error": rec.get("checksum_error"),
    }
    if not rec:
        return Verdict(Check.FAILED, "no recovery is on record for this attempt", evidence)
    if not rec.get("checksums_compared"):
        why = rec.get("checksum_error") or "no checksum inventory of the host"
        return Verdict(Check.FAILED, f"the copy could not be checked against the host: {why}", evidence)
    if rec.get("missing_files"):
        return Verdict(Check.FAILED, "files the host had are missing from the copy", evidence)
    if rec.get("checksum_mismatches"):
        return Verdict(Check.FAILED, "recovered files differ from the host's", evidence)
    if expected is not None and (rec.get("unsynced_games") or 0) < expected:
        return Verdict(Check.FAILED, "fewer unsynced games recovered than diagnosis counted", evidence)
    lad.remember(recovered_games=rec.get("unsynced_games") or 0)
    return Verdict(Check.OK, "recovered data matches the host's", evidence)
