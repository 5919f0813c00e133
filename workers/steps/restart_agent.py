"""Runbook Option 2: restart the sync agent over SSH, with the configured fallback; verified by pgrep."""

from __future__ import annotations

from remediator.exceptions import SSHError
from workers.steps.base import Check, LadderRun, StepOutcome, StepResult, Verdict, VerifyWait

MUTATES = True
SINGLE_ATTEMPT = False
VERIFY_WAIT: VerifyWait = "verify"
VERIFY_TIMEOUT: float | None = None
PRECONDITIONS: tuple[str, ...] = ("ssh_reachable", "agent_running", "host_retired")


def run(lad: LadderRun) -> StepOutcome:
    s = lad.ctx.settings
    record = lad.record
    if record is None:
        return StepOutcome(StepResult.FAILED, "no host record from diagnosis")
    if lad.dry_run:
        return StepOutcome(
            StepResult.RAN, f"would run {s.agent_restart_command!r} (fallback {s.agent_fallback_command!r})"
        )
    lad.guard()
    try:
        with lad.ctx.clients.ssh(record) as session:
            first = session.run(s.agent_restart_command, timeout=60)
            evidence = {"command": s.agent_restart_command, "exit_status": first.exit_status}
            if first.ok:
                return StepOutcome(StepResult.RAN, "restart command succeeded", evidence)
            lad.guard()  # the fallback is a mutation of its own: not for a worker that lost the host
            fallback = session.run(s.agent_fallback_command, timeout=60)
            evidence.update(
                fallback=s.agent_fallback_command,
                fallback_exit_status=fallback.exit_status,
                stderr=(first.stderr + fallback.stderr)[-300:],
            )
            if fallback.ok:
                return StepOutcome(StepResult.RAN, "restart failed; fallback command succeeded", evidence)
            return StepOutcome(StepResult.FAILED, "restart and fallback commands both failed", evidence)
    except SSHError as exc:
        return StepOutcome(StepResult.FAILED, f"ssh: {exc}")


def verify(lad: LadderRun) -> Verdict:
    s = lad.ctx.settings
    record = lad.record
    if record is None:
        return Verdict(Check.FAILED, "no host record")
    try:
        with lad.ctx.clients.ssh(record) as session:
            check = session.run(s.agent_check_command, timeout=30)
    except SSHError as exc:
        return Verdict(Check.FAILED, f"ssh: {exc}")
    if check.ok:
        return Verdict(Check.OK, "sync agent is running", {"check": s.agent_check_command})
    return Verdict(
        Check.FAILED,
        "sync agent is not running after the restart",
        {"check": s.agent_check_command, "exit_status": check.exit_status},
    )
