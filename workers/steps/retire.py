"""Runbook Option 5 and the Data Recovery Checklist: retire only when data is truly gone.

The checklist is filled in from what the ladder saw; the data loss is documented with game count and
time range (to the coordinator's training log and to the local ledger, which survives a coordinator
outage); retirement itself happens only with ``acknowledge_loss: true`` and where the rules allow it.
Otherwise the step declines and the ladder escalates to a human with the checklist attached.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from remediator.exceptions import CoordinatorError, SSHError
from remediator.hosts import recovery_path
from remediator.ssh import rsync_pull
from workers.steps.base import LadderRun, StepOutcome, Verdict, VerifyWait

MUTATES = True
SINGLE_ATTEMPT = True
VERIFY_WAIT: VerifyWait = "verify"
VERIFY_TIMEOUT: float | None = None
PRECONDITIONS: tuple[str, ...] = ("ssh_reachable", "cloud_state", "data_recoverable")

# The runbook's Data Recovery Checklist: accessible? unsynced games counted? rsync attempted? loss
# documented? training log updated? Every one must hold before a host may be retired automatically.
CHECKLIST_ITEMS = (
    "accessible_checked",
    "unsynced_games_counted",
    "rsync_attempted",
    "loss_documented",
    "training_log_updated",
)


def checklist(lad: LadderRun) -> dict[str, Any]:
    diag = lad.diagnosis
    inv = diag.get("inventory") or {}
    scratch = lad.scratch
    return {
        "accessible_checked": True,
        "accessible": bool(diag.get("ssh_reachable")),
        "unsynced_games_counted": diag.get("inventory") is not None,
        "unsynced_games": inv.get("unsynced_games"),
        "counted_at": diag.get("inventory_at"),
        "rsync_attempted": bool(scratch.get("rsync_attempted")),
        "rsync_exit": scratch.get("rsync_exit"),
        "loss_documented": bool(scratch.get("loss_documented")),
        "training_log_updated": bool(scratch.get("training_log_updated")),
    }


def checklist_complete(items: dict[str, Any]) -> bool:
    return all(items[k] for k in CHECKLIST_ITEMS)


def _attempt_rsync(lad: LadderRun) -> None:
    """Checklist item 3: try to copy whatever remains, even from a host that looks gone."""
    if lad.scratch.get("rsync_attempted") or lad.record is None:
        return
    s = lad.ctx.settings
    try:
        result = rsync_pull(
            s,
            lad.record,
            recovery_path(s.recovery_dir, lad.host_id),
            dry_run=lad.dry_run,
            timeout=s.ssh_connect_timeout * 3 + 30,
        )
        lad.remember(rsync_attempted=True, rsync_exit=result.exit_status)
    except (SSHError, OSError) as exc:
        lad.remember(rsync_attempted=True, rsync_exit=None, rsync_error=str(exc))


def loss_record(lad: LadderRun) -> dict[str, Any]:
    diag = lad.diagnosis
    inv = diag.get("inventory") or {}
    first = inv.get("first_unsynced_at") or diag.get("last_sync")
    last = inv.get("last_unsynced_at") or diag.get("inventory_at") or diag.get("at")
    return {
        "host_id": lad.host_id,
        "games_lost": inv.get("unsynced_games"),
        "first_game_at": _iso(first),
        "last_game_at": _iso(last),
        "checklist": checklist(lad),
    }


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(ts)))


def _document_loss(lad: LadderRun, record: dict[str, Any]) -> dict[str, Any]:
    """Write the ledger line first (local, always works), then tell the coordinator (training log)."""
    s = lad.ctx.settings
    if not lad.scratch.get("loss_documented"):
        ledger = Path(s.ledger_file)
        ledger.parent.mkdir(parents=True, exist_ok=True)
        # This line is the documentation of the loss: the checklist it carries says so.
        entry = {
            **record,
            "checklist": {**record["checklist"], "loss_documented": True},
            "ladder_id": lad.ladder_id,
            "recorded_at": _iso(time.time()),
        }
        line = json.dumps(entry, sort_keys=True)
        with ledger.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        lad.remember(loss_documented=True)
    result: dict[str, Any] = {"ledger": s.ledger_file}
    if not lad.scratch.get("training_log_updated"):
        try:
            lad.ctx.coordinator.record_data_loss({**record, "checklist": checklist(lad)})
            lad.remember(training_log_updated=True)
        except CoordinatorError as exc:
            result["coordinator_error"] = str(exc)
    return result


def run(lad: LadderRun) -> StepOutcome:
    _attempt_rsync(lad)
    record = loss_record(lad)
    if lad.dry_run:
        return StepOutcome("ran", "would document the loss and retire if the rules allow", {"loss": record})
    lad.guard()
    documented = _document_loss(lad, record)
    items = checklist(lad)
    facts = {**lad.facts, "checklist_complete": checklist_complete(items)}
    lad.remember(checklist=items, checklist_complete=facts["checklist_complete"])
    if not lad.ctx.rules.may_retire(facts):
        return StepOutcome(
            "declined",
            "retirement is not allowed automatically by the rules: paging a human",
            {"loss": loss_record(lad), **documented},
        )
    lad.guard()
    lad.ctx.coordinator.retire(lad.host_id, reason="data_loss", acknowledge_loss=True)
    lad.remember(retired=True)
    return StepOutcome("ran", "host retired with acknowledge_loss", {"loss": loss_record(lad), **documented})


def verify(lad: LadderRun) -> Verdict:
    if lad.dry_run:
        return Verdict("ok", "dry run")
    record = lad.ctx.coordinator.host(lad.host_id)
    if record is not None and (record.retired or record.state == "retired"):
        return Verdict("ok", "coordinator shows the host retired", final="retired")
    return Verdict("pending", "coordinator does not show the host retired yet")
