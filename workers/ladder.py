"""The escalation ladder: diagnose, pick the cheapest step that addresses what was found, verify it,
climb on failure. One advance runs under the host's lock and never sleeps: a step that must wait
schedules the next check with RQ's scheduler and frees the worker.

State lives in the host's Redis hash (``phase``, ``plan``, ``rung``, ``pos``, ``attempt``), so a worker
killed anywhere is replaced by another that resumes from the last checkpoint. Before a mutating step
runs, an intent marker ``done:<host>:<ladder>:<step>:<attempt>`` is claimed with SET NX: a resumed
worker that finds it claimed goes on to verification instead of acting twice in one attempt.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from remediator import keys, metrics, store
from remediator.exceptions import CoordinatorError, CoordinatorUnavailable, LockLost, LockNotAcquired
from remediator.intake import queue_ladder_job
from remediator.locks import HostLock
from remediator.logs import bind, log_context
from workers.context import Context
from workers.diagnose import diagnose
from workers.steps import STEPS
from workers.steps.base import LadderRun, StepOutcome, Verdict

log = logging.getLogger("remediator.ladder")

MAX_PHASES_PER_JOB = 12  # phases one job may run before handing over (bounds a job's duration)
SINGLE_ATTEMPT = {"wait_reachable", "retire"}


def plan_for(facts: dict[str, Any]) -> list[list[str]]:
    """The rungs of the ladder for what diagnosis found, cheapest first; each rung is tried in turn."""
    if facts.get("coordinator_state") == "healthy" and not facts.get("host_retired"):
        return []
    if facts.get("coordinator_state") == "unknown":
        # The coordinator did not answer: the host's state is unknown, not "unreachable". Wait for the
        # coordinator and diagnose afresh (wait_reachable re-asks it), escalating after the same limit.
        return [["wait_reachable"], ["escalate"]]
    if not facts.get("ssh_reachable"):
        if facts.get("cloud_state") == "terminated":
            return [["retire"], ["escalate"]]
        return [["wait_reachable"], ["escalate"]]
    rungs: list[list[str]] = []
    if facts.get("host_retired"):
        rungs.append(["unretire"])
    if facts.get("agent_running") is False:
        rungs.append(["restart_agent", "force_sync"])
    else:
        rungs += [["force_sync"], ["restart_agent", "force_sync"]]
    rungs += [["recover_data", "escalate"], ["escalate"]]
    return rungs


class Ladder:
    def __init__(self, ctx: Context, host_id: str, ladder_id: str) -> None:
        self.ctx = ctx
        self.host_id = host_id
        self.ladder_id = ladder_id
        self.state: dict[str, Any] = {}
        self.lock: HostLock | None = None

    # -- entry ---------------------------------------------------------------------------------
    def advance(self) -> str:
        conn = self.ctx.conn
        self.state = store.get_host(conn, self.host_id)
        active = conn.get(keys.ACTIVE.format(self.host_id))
        if (
            active is None
            or active.decode() != self.ladder_id
            or self.state.get("ladder_id") != self.ladder_id
        ):
            return "superseded: another ladder owns this host"
        if self.ctx.job_id and self.state.get("job_id") not in (self.ctx.job_id, None, ""):
            return f"stale job: the ladder moved on to job {self.state.get('job_id')}"
        self.lock = HostLock(conn, self.host_id, self.ctx.settings.lock_ttl)
        try:
            fence = self.lock.acquire()
        except LockNotAcquired:
            metrics.count(conn, "remediator_lock_contention")
            return "locked: another worker is advancing this ladder"
        token = bind(host_id=self.host_id, ladder_id=self.ladder_id, job_id=self.ctx.job_id)
        try:
            self._update(
                status="running",
                fence=fence,
                heartbeat=f"{time.time():.3f}",
                job_id=self.ctx.job_id or self.state.get("job_id"),
            )
            return self._loop(fence)
        except LockLost:
            return "lock lost: another worker took over"
        finally:
            log_context.reset(token)
            self.lock.release()

    def _loop(self, fence: int) -> str:
        policy = self.ctx.rules.ladder
        for _ in range(MAX_PHASES_PER_JOB):
            self.state = store.get_host(self.ctx.conn, self.host_id)
            cancel = self.ctx.conn.get(keys.CANCEL.format(self.host_id))
            if cancel is not None and cancel.decode() == self.ladder_id:
                return self._finish("stopped", self.state.get("cancel_reason") or "cancelled")
            started = float(self.state.get("started_at") or time.time())
            phase = self.state.get("phase") or "diagnose"
            if time.time() - started > policy.deadline_minutes * 60 and self.state.get("step") != "escalate":
                self._goto("escalate", reason=f"ladder deadline of {policy.deadline_minutes:g} min passed")
                continue
            lad = LadderRun(self.ctx, self.host_id, self.ladder_id, self.state, fence)
            token = bind(step="diagnose" if phase == "diagnose" else self.state.get("step"), phase=phase)
            try:
                if phase != "diagnose":
                    self._time_checks(lad, started)
                if phase == "diagnose":
                    result = self._diagnose(lad)
                elif phase == "run":
                    result = self._run(lad)
                elif phase == "verify":
                    result = self._verify(lad)
                else:
                    result = self._finish("failed", f"unknown phase {phase!r}")
            finally:
                log_context.reset(token)
            if result is not None:
                return result
        return self._schedule(0.0, "continuing in a new job")

    # -- phases (each returns a final word, or None to go on in this job) ----------------------
    def _diagnose(self, lad: LadderRun) -> str | None:
        t0 = time.monotonic()
        diag = diagnose(self.ctx, self.host_id)
        metrics.observe(
            self.ctx.conn, "remediator_step_duration_seconds", time.monotonic() - t0, step="diagnose"
        )
        facts = diag.facts()
        if not diag.known_to_coordinator:
            lad.audit("diagnose", "failed", "the coordinator does not know this host", **diag.summary())
            return self._finish("failed", "host unknown to the coordinator")
        lad.remember(diagnosis={**diag.summary(), "record": diag.record})
        plan = plan_for(facts)
        self._commit(facts=facts, plan=plan, rung=0, pos=0, attempt=1)
        lad.audit(
            "diagnose",
            "done",
            f"plan: {' | '.join('+'.join(r) for r in plan) or 'nothing to do'}",
            facts=facts,
            sources=diag.sources,
            unsynced_first_at=(diag.inventory or {}).get("first_unsynced_at"),
            unsynced_last_at=(diag.inventory or {}).get("last_unsynced_at"),
        )
        metrics.count(self.ctx.conn, "remediator_steps", step="diagnose", result="done")
        from remediator.fleet import after_diagnosis

        after_diagnosis(self.ctx, self.host_id, facts)
        if not plan:
            return self._finish("healthy", "the host is healthy: nothing to do")
        if lad.dry_run:
            return self._dry_run(lad, plan)
        self._commit(step=plan[0][0], phase="run")
        return None

    def _dry_run(self, lad: LadderRun, plan: list[list[str]]) -> str:
        """Record what would be done, rung by rung, running each step in its mutation-free form."""
        for rung in plan:
            for step in rung:
                outcome = STEPS[step].run(
                    LadderRun(self.ctx, self.host_id, self.ladder_id, self.state, lad.fence)
                )
                lad.audit(step, "planned", outcome.detail, **outcome.evidence)
        self._commit(plan=plan)
        return self._finish("dry-run", "plan recorded; nothing was changed")

    def _held(self, lad: LadderRun) -> str | None:
        from remediator.fleet import fleet_facts

        facts = {**lad.facts, **fleet_facts(self.ctx)}
        decision = self.ctx.rules.decide(facts)
        if decision.hold_ladders:
            lad.audit(
                self.state["step"],
                "held",
                "fleet-wide fault (provider outage or network): holding",
                rules_matched=list(decision.matched),
            )
            return self._schedule(self.ctx.rules.ladder.recheck_interval_seconds, "held by the rules")
        return None

    def _run(self, lad: LadderRun) -> str | None:
        step = self.state["step"]
        attempt = int(self.state.get("attempt") or 1)
        module = STEPS[step]
        if getattr(module, "MUTATES", True):
            held = self._held(lad)
            if held:
                return held
        intent = keys.DONE.format(self.host_id, f"{self.ladder_id}:{step}:{attempt}")
        self.lock.check()
        if not self.ctx.conn.set(intent, lad.fence, nx=True, ex=7 * 86400):
            lad.audit(
                step,
                "resumed",
                f"attempt {attempt} already ran under fence "
                f"{self.ctx.conn.get(intent).decode()}: verifying instead of repeating",
            )
            self._commit(phase="verify", verify_started_at=f"{time.time():.3f}")
            return None
        t0 = time.monotonic()
        try:
            outcome = module.run(lad)
        except CoordinatorUnavailable as exc:
            # The coordinator is down, not the host: wait for it without using up an attempt. The
            # action was not taken (or, after a POST timeout, is one that repeating cannot double).
            self.ctx.conn.delete(intent)
            return self._coordinator_down(lad, step, exc)
        except CoordinatorError as exc:
            outcome = StepOutcome("failed", f"coordinator: {exc}")
        if lad.scratch.get("coordinator_down_since"):
            lad.remember(coordinator_down_since=None)
        metrics.observe(self.ctx.conn, "remediator_step_duration_seconds", time.monotonic() - t0, step=step)
        metrics.count(self.ctx.conn, "remediator_steps", step=step, result=outcome.result)
        lad.audit(step, outcome.result, outcome.detail, attempt=attempt, fence=lad.fence, **outcome.evidence)
        log.info("%s attempt %d %s: %s", step, attempt, outcome.result, outcome.detail)
        tried = lad.scratch.get("tried", [])
        lad.remember(tried=[*tried, f"{step}#{attempt}: {outcome.result}"])
        if outcome.result == "declined":
            return self._climb(lad, outcome.detail)
        if outcome.result == "failed":
            return self._retry_or_climb(lad, outcome.detail)
        self._commit(phase="verify", verify_started_at=f"{time.time():.3f}")
        wait = self._wait_for(step)
        return self._schedule(wait, f"verifying {step}") if wait > 0 else None

    def _verify(self, lad: LadderRun) -> str | None:
        step = self.state["step"]
        policy = self.ctx.rules.ladder
        try:
            verdict = STEPS[step].verify(lad)
        except CoordinatorError as exc:
            verdict = Verdict("pending", f"coordinator: {exc}")
        started = float(self.state.get("verify_started_at") or time.time())
        if verdict.status == "pending":
            limit = policy.verify_timeout_seconds if step != "wait_reachable" else float("inf")
            if time.time() - started < limit:
                self._commit(last_verify=verdict.detail)
                return self._schedule(self._wait_for(step), verdict.detail)
            verdict = Verdict(
                "failed",
                f"not verified within {policy.verify_timeout_seconds:g}s: {verdict.detail}",
                verdict.evidence,
            )
        lad.audit(step, f"verify-{verdict.status}", verdict.detail, **verdict.evidence)
        log.info("%s verify %s: %s", step, verdict.status, verdict.detail)
        if verdict.status == "failed":
            return self._retry_or_climb(lad, verdict.detail)
        if verdict.final == "rediagnose":
            lad.remember(unreachable_since=None)  # a later wait starts its own clock
            self._commit(phase="diagnose", step="diagnose")
            return None
        if verdict.final:
            return self._finish(verdict.final, verdict.detail)
        plan = self.state.get("plan") or []
        rung, pos = int(self.state.get("rung") or 0), int(self.state.get("pos") or 0) + 1
        if rung < len(plan) and pos < len(plan[rung]):
            self._commit(pos=pos, step=plan[rung][pos], phase="run", attempt=1)
            return None
        return self._climb(lad, f"{step} succeeded but did not restore sync")

    def _time_checks(self, lad: LadderRun, started: float) -> None:
        """Time-based escalation: pages the rules decide on as the ladder ages (once per rule)."""
        from remediator.fleet import fleet_facts
        from remediator.paging import open_incident

        facts = {
            **lad.facts,
            **fleet_facts(self.ctx, refresh=False),
            "minutes_in_ladder": round((time.time() - started) / 60, 2),
            "ladder_step": self.state.get("step") or "none",
            "ladder_outcome": "running",
            "attempts": int(self.state.get("attempt") or 0),
            "selfplay_paused": bool(self.ctx.conn.sismember(keys.PAUSED, self.host_id)),
        }
        if lad.dry_run:
            return
        for page in self.ctx.rules.decide(facts).pages:
            if page.scope != "host":
                continue
            open_incident(
                self.ctx.conn,
                self.ctx.settings,
                dedup_key=f"remediator/{self.host_id}/{self.ladder_id}/{page.rule}",
                summary=f"{page.summary}: {self.host_id}",
                severity=page.severity,
                targets=page.to or None,
                hosts=(self.host_id,),
                details={"facts": facts},
                rule=page.rule,
            )

    # -- moving along the ladder -----------------------------------------------------------------
    def _coordinator_down(self, lad: LadderRun, step: str, exc: CoordinatorUnavailable) -> str | None:
        """Re-check on a schedule while the coordinator is down; escalate after the rules' limit."""
        policy = self.ctx.rules.ladder
        since = float(lad.scratch.get("coordinator_down_since") or time.time())
        lad.remember(coordinator_down_since=since)
        lad.audit(step, "coordinator-unavailable", str(exc))
        log.warning("%s: coordinator unavailable: %s", step, exc)
        if time.time() - since >= policy.unreachable_escalate_after_minutes * 60:
            self._goto("escalate", reason=f"coordinator unavailable for {(time.time() - since) / 60:.1f} min")
            return None
        return self._schedule(policy.recheck_interval_seconds, f"coordinator unavailable during {step}")

    def _retry_or_climb(self, lad: LadderRun, why: str) -> str | None:
        step = self.state["step"]
        attempt = int(self.state.get("attempt") or 1)
        if step not in SINGLE_ATTEMPT and attempt < self.ctx.rules.ladder.attempts_per_step:
            self._commit(attempt=attempt + 1, phase="run")
            return None
        return self._climb(lad, why)

    def _climb(self, lad: LadderRun, why: str) -> str | None:
        plan = self.state.get("plan") or []
        rung = int(self.state.get("rung") or 0) + 1
        if self.state.get("step") == "escalate" or rung >= len(plan):
            return self._finish("failed", f"ladder exhausted: {why}")
        if plan[rung][0] == "escalate":
            lad.remember(escalation_reason=why)
        self._commit(rung=rung, pos=0, step=plan[rung][0], phase="run", attempt=1)
        return None

    def _goto(self, step: str, reason: str) -> None:
        LadderRun(self.ctx, self.host_id, self.ladder_id, self.state, 0).remember(escalation_reason=reason)
        self._commit(step=step, phase="run", attempt=1)

    def _wait_for(self, step: str) -> float:
        policy = self.ctx.rules.ladder
        if step == "wait_reachable":
            return policy.recheck_interval_seconds
        if step in ("escalate", "recover_data"):
            return 0.0
        return policy.verify_wait_seconds

    # -- persistence -----------------------------------------------------------------------------
    def _commit(self, **fields: Any) -> None:
        """Write ladder state only while we still hold the lock (fencing)."""
        assert self.lock is not None
        self.lock.check()
        self._update(heartbeat=f"{time.time():.3f}", **fields)
        self.state.update({k: (str(v) if isinstance(v, int) else v) for k, v in fields.items()})

    def _update(self, **fields: Any) -> None:
        store.update_host(self.ctx.conn, self.host_id, **fields)

    def _schedule(self, delay: float, why: str) -> str:
        """Free the worker: the next advance runs as a new job ``delay`` seconds from now."""
        assert self.lock is not None
        self.lock.check()
        with self.ctx.conn.pipeline() as pipe:
            job_id = queue_ladder_job(
                pipe,
                self.ctx.queue,
                self.host_id,
                self.ladder_id,
                description=why,
                delay=delay,
                status="waiting" if delay else "queued",
                waiting_for=why,
                heartbeat=f"{time.time():.3f}",
            )
            pipe.execute()
        return f"waiting: {why} (next check in {delay:g}s, job {job_id})"

    def _finish(self, outcome: str, detail: str) -> str:
        conn = self.ctx.conn
        lad = LadderRun(self.ctx, self.host_id, self.ladder_id, self.state, 0)
        lad.audit("ladder", outcome, detail, tried=lad.scratch.get("tried"))
        log.info("ladder %s: %s", outcome, detail)
        with conn.pipeline() as pipe:
            store.update_host(
                pipe,
                self.host_id,
                status="finished",
                outcome=outcome,
                outcome_detail=detail,
                finished_at=f"{time.time():.3f}",
                phase="done",
            )
            pipe.execute()
        # Release the host for the next alert only if this ladder still owns it (compare-and-delete).
        conn.eval(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1], KEYS[2]) end "
            "return 0",
            2,
            keys.ACTIVE.format(self.host_id),
            keys.CANCEL.format(self.host_id),
            self.ladder_id,
        )
        metrics.count(conn, "remediator_ladders", outcome=outcome)
        if outcome == "healthy":
            from remediator.fleet import host_recovered
            from remediator.paging import open_incidents, resolve_incident

            host_recovered(self.ctx, self.host_id)
            for incident in open_incidents(conn):
                if incident["dedup_key"].startswith(f"remediator/{self.host_id}/"):
                    resolve_incident(conn, self.ctx.settings, incident["dedup_key"])
        return f"{outcome}: {detail}"
