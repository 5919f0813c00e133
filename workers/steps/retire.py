"""Runbook Option 5 and the Data Recovery Checklist: retire only when data is truly gone.

The data is *not* gone, and nothing is documented as lost nor retired, while it may be recoverable:
the provider does not say terminated, the host answers over SSH, or any rsync of the incident
succeeded (a successful checklist copy is imported instead, and a human decides). Otherwise the
checklist is filled in from what the ladder saw — the unsynced games count only when counted since the
host's last sync and within INVENTORY_FRESH — the rules are asked whether retirement may be automatic,
and when the checklist's prerequisites hold the loss is documented with game count and time range (to
the local ledger, which survives a coordinator outage, and to the coordinator's training log, whose
answer must say ``"recorded": true``). Retirement itself happens only with ``acknowledge_loss: true``,
where the rules allow it, and once both records are written. Otherwise the step declines and the
ladder escalates to a human with the checklist attached.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from remediator import incidents
from remediator.exceptions import CoordinatorError, SSHError
from remediator.hosts import recovery_path
from remediator.states import Outcome
from workers.host_inventory import inventory
from workers.steps.base import Check, LadderRun, StepOutcome, StepResult, Verdict, VerifyWait
from workers.steps.recover_data import last_import, manifest_digest, run_import

MUTATES = True
SINGLE_ATTEMPT = True
VERIFY_WAIT: VerifyWait = "verify"
VERIFY_TIMEOUT: float | None = None
PRECONDITIONS: tuple[str, ...] = ("ssh_reachable", "cloud_state", "data_recoverable")

INVENTORY_FRESH = 24 * 3600.0  # seconds: an unsynced-games count older than this is not a count

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
    counted_at = diag.get("inventory_at")
    last_sync = diag.get("last_sync")
    # A count says what is unsynced only if it was taken after the last sync, and recently.
    counted = (
        diag.get("inventory") is not None
        and counted_at is not None
        and (last_sync is None or float(counted_at) >= float(last_sync))
        and time.time() - float(counted_at) <= INVENTORY_FRESH
    )
    return {
        "accessible_checked": True,
        "accessible": bool(diag.get("ssh_reachable")),
        "unsynced_games_counted": counted,
        "unsynced_games": inv.get("unsynced_games"),
        "counted_at": counted_at,
        "rsync_attempted": bool(scratch.get("rsync_attempted")),
        "rsync_exit": scratch.get("rsync_exit"),
        "loss_documented": bool(scratch.get("loss_documented")),
        "training_log_updated": bool(scratch.get("training_log_updated")),
        "paged": bool(scratch.get("paged")),
    }


def checklist_complete(items: dict[str, Any]) -> bool:
    return all(items[k] for k in CHECKLIST_ITEMS)


def prerequisites_met(items: dict[str, Any]) -> bool:
    """Checklist items 1-3 (accessible checked, unsynced games counted, rsync attempted): what must hold
    before a loss may be documented; items 4 and 5 are this step documenting it."""
    return all(items[k] for k in CHECKLIST_ITEMS[:3])


def recoverable(lad: LadderRun) -> str | None:
    """Why the host's data may still be recoverable (never retire, never document a loss), or None."""
    facts = lad.facts
    if facts.get("cloud_state") != "terminated":
        return f"the provider does not say the instance is terminated ({facts.get('cloud_state')})"
    if facts.get("ssh_reachable"):
        return "the host answers over SSH"
    if lad.scratch.get("rsync_exit") == 0:
        return "the checklist's rsync copied the host's data"
    incident = incidents.get(lad.ctx.conn, lad.incident_id) if lad.incident_id else None
    if incident is not None and incident.rsync_ok:
        return "an rsync of this incident copied the host's data"
    return None


def _attempt_rsync(lad: LadderRun) -> None:
    """Checklist item 3: try to copy whatever remains, even from a host that looks gone."""
    if lad.scratch.get("rsync_attempted") or lad.record is None:
        return
    s = lad.ctx.settings
    try:
        result = lad.ctx.clients.rsync(
            lad.record,
            recovery_path(s.recovery_dir, lad.host_id),
            dry_run=lad.dry_run,
            timeout=s.ssh_connect_timeout * 3 + 30,
        )
        lad.remember(rsync_attempted=True, rsync_exit=result.exit_status)
        if result.exit_status == 0 and not lad.dry_run and lad.incident_id:
            incidents.update(lad.ctx.conn, lad.incident_id, rsync_ok=f"{time.time():.3f}")
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
        assert s.ledger_file is not None  # Settings.from_env defaults it under the recovery dir
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
            answer = lad.ctx.coordinator.record_data_loss({**record, "checklist": checklist(lad)})
        except CoordinatorError as exc:
            result["coordinator_error"] = str(exc)
        else:
            # Only an answer that says the entry was recorded is one: a 2xx from something else (a proxy's
            # empty 200, a catch-all route) would retire a host whose loss is in no training log.
            if isinstance(answer, dict) and answer.get("recorded") is True:
                lad.remember(training_log_updated=True)
            else:
                result["coordinator_error"] = f"the training log did not confirm it: {str(answer)[:100]}"
    return result


def run(lad: LadderRun) -> StepOutcome:
    why = recoverable(lad)
    if why is None and not lad.dry_run:
        _attempt_rsync(lad)
        why = recoverable(lad)
    if why is not None:
        evidence: dict[str, Any] = {"checklist": checklist(lad)}
        if lad.scratch.get("rsync_exit") == 0 and not lad.dry_run:
            evidence["import"] = _import_copy(lad)
        return StepOutcome(StepResult.DECLINED, f"not retiring: the data may be recoverable: {why}", evidence)
    record = loss_record(lad)
    if lad.dry_run:
        return StepOutcome(
            StepResult.RAN, "would document the loss and retire if the rules allow", {"loss": record}
        )
    items = checklist(lad)
    ready = prerequisites_met(items)
    # Asked before anything is written: may this host be retired without a human, once documented?
    allowed = lad.ctx.rules.may_retire({**lad.facts, "checklist_complete": ready})
    documented: dict[str, Any] = {}
    if ready:
        lad.guard()
        documented = _document_loss(lad, record)
    items = checklist(lad)
    lad.remember(checklist=items, checklist_complete=checklist_complete(items))
    evidence = {"loss": loss_record(lad), **documented}
    if not ready:
        return StepOutcome(
            StepResult.DECLINED,
            "the checklist is not complete (unsynced games not counted since the last sync, or no rsync "
            "attempted): the loss is not documented, paging a human",
            evidence,
        )
    if not allowed:
        return StepOutcome(
            StepResult.DECLINED,
            "retirement is not allowed automatically by the rules: paging a human",
            evidence,
        )
    if not checklist_complete(items):
        return StepOutcome(
            StepResult.DECLINED, "the loss could not be documented everywhere: not retiring", evidence
        )
    lad.guard()
    lad.ctx.coordinator.retire(lad.host_id, reason="data_loss", acknowledge_loss=True)
    lad.remember(retired=True)
    return StepOutcome(StepResult.RAN, "host retired with acknowledge_loss", evidence)


def _import_copy(lad: LadderRun) -> dict[str, Any]:
    """A host thought lost whose data the checklist's rsync copied: import the copy (once)."""

    dest = recovery_path(lad.ctx.settings.recovery_dir, lad.host_id)
    local = inventory(str(dest), lad.diagnosis.get("last_sync") or 0.0)
    digest = manifest_digest(local)
    if last_import(lad).get("digest") == digest:
        return {"skipped": "nothing new since the last import"}
    evidence: dict[str, Any] = {"files": local["file_count"], "unsynced_games": local["unsynced_games"]}
    outcome = run_import(lad, dest, digest, evidence)
    lad.remember(recovered_games=local["unsynced_games"] if outcome.result == StepResult.RAN else 0)
    return {"result": outcome.result, "detail": outcome.detail, **evidence}


def verify(lad: LadderRun) -> Verdict:
    if lad.dry_run:
        return Verdict(Check.OK, "dry run")
    record = lad.ctx.coordinator.host(lad.host_id)
    if record is not None and (record.retired or record.state == "retired"):
        return Verdict(Check.OK, "coordinator shows the host retired", final=Outcome.RETIRED)
    return Verdict(Check.PENDING, "coordinator does not show the host retired yet")
