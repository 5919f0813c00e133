"""The escalation ladder: diagnose, pick the cheapest step that addresses what was found, verify it,
climb on failure. One advance runs under the host's lock and never sleeps: a step that must wait
schedules the next check with RQ's scheduler and frees the worker.

State lives in the host's Redis hash (``workers.state.LadderState``), so a worker killed anywhere is
replaced by another that resumes from the last checkpoint. Before a mutating step runs, an intent
marker ``done:<host>:<ladder>:<rung>:<step>:<attempt>`` is claimed with SET NX: a resumed worker that
finds it claimed verifies instead of acting twice in one attempt.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from remediator import controls, incidents, keys, metrics, silences, store
from remediator.connections import text
from remediator.exceptions import CoordinatorError, CoordinatorUnavailable, LockLost, LockNotAcquired
from remediator.intake import queue_cleanup, queue_ladder_job
from remediator.locks import HostLock
from remediator.logs import bind, log_context
from remediator.states import HEALED_OUTCOMES, Outcome
from workers import fleet, gates, learning
from workers.context import Context
from workers.plan import ESCALATE, gentle, plan_for, signature, unchanged_steps, without
from workers.prefetch import diagnosis_for
from workers.state import LadderState, Phase
from workers.steps import STEPS
from workers.steps.base import Check, LadderRun, StepOutcome, StepResult, Verdict

log = logging.getLogger("remediator.ladder")

MAX_PHASES_PER_JOB = 12  # phases one job may run before handing over (bounds a job's duration)
LOCKED_RETRY_DELAY = 1.0  # seconds before the ladder's current job tries a host lock held by another
# Ladders of an incident that repeat only the steps whose preconditions changed (a human's do not).
# (A prevention ladder re-plans this way when its host goes critical.)
RETRY_KINDS = frozenset({"retry", "relapse", "prevent"})


class Ladder:
    def __init__(self, ctx: Context, host_id: str, ladder_id: str) -> None:
        self.ctx = ctx
        self.host_id = host_id
        self.ladder_id = ladder_id
        self.state = LadderState()
        self.lock: HostLock | None = None

    # -- entry ---------------------------------------------------------------------------------
    def advance(self) -> str:
        conn = self.ctx.conn
        self._read()
        active = conn.get(keys.ACTIVE.format(self.host_id))
        if active is None or text(active) != self.ladder_id or self.state.ladder_id != self.ladder_id:
            return "superseded: another ladder owns this host"
        if self.ctx.job_id and self.state.job_id not in (self.ctx.job_id, ""):
            return f"stale job: the ladder moved on to job {self.state.job_id}"
        self.lock = HostLock(conn, self.host_id, self.ctx.settings.lock_ttl)
        try:
            fence = self.lock.acquire()
        except LockNotAcquired:
            metrics.count(conn, "remediator_lock_contention")
            if self.ctx.job_id and self.state.job_id == self.ctx.job_id:
                # This is the ladder's current job: the holder is the job that handed over to it and
                # has not released yet (or a worker that lost the lock, which can no longer commit).
                # Try again shortly instead of dropping the ladder until the sweeper notices.
                return self._retry_later()
            return "locked: another worker is advancing this ladder"
        token = bind(host_id=self.host_id, ladder_id=self.ladder_id, job_id=self.ctx.job_id)
        try:
            # Fenced like every later write: a worker that froze while taking the lock, past its TTL,
            # must not mark as running a ladder its successor may have ended meanwhile.
            self._commit(status="running", fence=fence, job_id=self.ctx.job_id or self.state.job_id)
            result = self._loop(fence)
            if self.state.resumes:
                self.ctx.conn.hdel(keys.HOST.format(self.host_id), "resumes", "resumed_at")  # it ran
            return result
        except LockLost:
            return "lock lost: another worker took over"
        finally:
            log_context.reset(token)
            self.lock.release()

    def _retry_later(self) -> str:
        job_id = self._queue_next(
            LOCKED_RETRY_DELAY,
            "host locked by the previous job: trying again",
            status="waiting",
            waiting_for="the host lock",
        )
        return f"locked: trying again as job {job_id} in {LOCKED_RETRY_DELAY:g}s"

    def _loop(self, fence: int) -> str:
        policy = self.ctx.rules.ladder
        for _ in range(MAX_PHASES_PER_JOB):
            self._read()
            cancel = self.ctx.conn.get(keys.CANCEL.format(self.host_id))
            if cancel is not None and text(cancel) == self.ladder_id:
                stopped = self._finish(Outcome.STOPPED, self.state.cancel_reason or "cancelled")
                if stopped is not None:
                    return stopped
                continue  # a firing alert withdrew the cancel: the ladder goes on
            started = self.state.started_at or time.time()
            phase = self.state.phase
            if self.state.upgraded and phase != Phase.DIAGNOSE:
                # A prevention ladder whose host went critical: plan again with the whole runbook.
                self._commit(upgraded=False, phase=Phase.DIAGNOSE, step="diagnose")
                self._run_view(fence).audit("ladder", "upgraded", "the host went critical: the full ladder")
                continue
            late = time.time() - started > policy.deadline_minutes * 60
            if late and self.state.step != ESCALATE:
                if self.state.gentle:
                    ended = self._finish(Outcome.PREVENTION_FAILED, "prevention ran out of time")
                    assert ended is not None  # only a stop can be withdrawn
                    return ended
                self._goto(ESCALATE, reason=f"ladder deadline of {policy.deadline_minutes:g} min passed")
                continue
            lad = self._run_view(fence)
            token = bind(step="diagnose" if phase == Phase.DIAGNOSE else self.state.step, phase=phase)
            try:
                if phase != Phase.DIAGNOSE:
                    self._time_checks(lad, started)
                handler = self._phases.get(phase)
                result = handler(self, lad) if handler else self._finish(Outcome.FAILED, f"in phase {phase}")
            finally:
                log_context.reset(token)
            if result is not None:
                return result
        return self._schedule(0.0, "continuing in a new job")

    def _run_view(self, fence: int) -> LadderRun:
        assert self.lock is not None
        return LadderRun(self.ctx, self.host_id, self.ladder_id, self.state, fence, guard=self.lock.check)

    # -- phases (each returns a final word, or None to go on in this job) ----------------------
    def _diagnose(self, lad: LadderRun) -> str | None:
        t0 = time.monotonic()
        diag, diagnosed_at = diagnosis_for(self.ctx, self.host_id, self.state)  # maybe made ahead
        metrics.observe(
            self.ctx.conn, "remediator_step_duration_seconds", time.monotonic() - t0, step="diagnose"
        )
        facts = diag.facts()
        if not diag.known_to_coordinator:
            lad.audit("diagnose", "failed", "the coordinator does not know this host", **diag.summary())
            return self._finish(Outcome.FAILED, "host unknown to the coordinator")
        lad.remember(diagnosis={**diag.summary(), "record": diag.record})
        if diag.ssh_reachable:
            lad.remember(unreachable_since=None)  # reached: a later wait starts its own clock
        plan = plan_for(facts)
        if self.state.gentle:
            plan = gentle(plan, self.ctx.rules)
        plan = learning.order(lad, plan, facts)  # the rules' learning: observed success first, if enabled
        skipped = self._unchanged(plan, facts)
        plan = without(plan, skipped)
        self._commit(facts=facts, plan=plan, rung=0, pos=0, attempt=1)
        lad.audit(
            "diagnose",
            "done",
            f"plan: {' | '.join('+'.join(r) for r in plan) or 'nothing to do'}",
            facts=facts,
            sources=diag.sources,
            unsynced_first_at=(diag.inventory or {}).get("first_unsynced_at"),
            unsynced_last_at=(diag.inventory or {}).get("last_unsynced_at"),
            skipped_unchanged=skipped or None,
            diagnosed_at=round(diagnosed_at, 3),
        )
        metrics.count(self.ctx.conn, "remediator_steps", step="diagnose", result="done")
        if not self.state.gentle:  # a warning is not a critical host: no fleet window, no storm
            fleet.after_diagnosis(self.ctx, self.host_id, facts, dry_run=lad.dry_run)
        if not plan and self.state.gentle and facts.get("coordinator_state") != "healthy":
            return self._finish(Outcome.PREVENTION_FAILED, "nothing a prevention ladder may do would help")
        if not plan:
            return self._finish(Outcome.HEALTHY, "the host is healthy: nothing to do")
        if lad.dry_run:
            return self._dry_run(lad, plan)
        self._commit(step=plan[0][0], phase=Phase.RUN)
        return None

    def _unchanged(self, plan: list[list[str]], facts: dict[str, Any]) -> list[str]:
        """In a retry of an incident, the steps that already failed in it under the same facts."""
        incident_id = self.state.incident_id
        incident = incidents.get(self.ctx.conn, incident_id) if incident_id else None
        if incident is None:
            return []
        ref = next((r for r in incident.ladders if r.ladder_id == self.ladder_id), None)
        if ref is None or ref.kind not in RETRY_KINDS:
            return []
        return unchanged_steps(plan, facts, incident.tried)

    def _dry_run(self, lad: LadderRun, plan: list[list[str]]) -> str | None:
        """Record what would be done, rung by rung, running each step in its mutation-free form."""
        for rung in plan:
            for step in rung:
                outcome = STEPS[step].run(self._run_view(lad.fence))
                lad.audit(step, "planned", outcome.detail, **outcome.evidence)
        self._commit(plan=plan)
        return self._finish(Outcome.DRY_RUN, "plan recorded; nothing was changed")

    def _silence(self) -> None:
        """Before acting on the host: silence its other alerts, when the rules ask for it."""
        client = self.ctx.clients.silences() if self.ctx.rules.silences.enabled else None
        if client is not None:
            silences.ensure(self.ctx.conn, client, self.ctx.rules, self.host_id, self.ladder_id)

    def _gated(self, lad: LadderRun, step: str, attempt: int) -> str | None:
        """Apply the gates of a mutating step (workers/gates.py): None when it may run now."""
        decision = gates.check(lad, step, attempt)
        if decision is None:
            if lad.scratch.get("gated"):
                lad.remember(gated=None)
            return None
        if isinstance(decision, gates.Refuse):
            lad.audit(step, "refused", decision.why)
            return self._climb(lad, decision.why)
        if isinstance(decision, gates.Escalate):
            lad.audit(step, "escalating", decision.why)
            self._goto(ESCALATE, reason=decision.why)
            return None
        if decision.audit and lad.scratch.get("gated") != decision.why:
            # Once per reason: a frozen ladder re-checks every interval without filling the audit.
            lad.remember(gated=decision.why)
            lad.audit(step, *decision.audit)
        interval = self.ctx.rules.ladder.recheck_interval_seconds
        return self._schedule(interval, decision.why, status=decision.status)

    def _run(self, lad: LadderRun) -> str | None:
        step, attempt = self.state.step, self.state.attempt
        module = STEPS[step]
        if module.MUTATES and not lad.dry_run:
            gated = self._gated(lad, step, attempt)
            if gated is not None or self.state.step != step:
                return gated  # waiting, or the ladder moved on (refused, escalating)
            self._silence()
        # The rung is part of the attempt's name: a step the plan holds twice (force_sync alone, then
        # again after restart_agent) is a new action in its second rung, not a resumed first one.
        intent = keys.DONE.format(self.host_id, f"{self.ladder_id}:{self.state.rung}:{step}:{attempt}")
        assert self.lock is not None
        self.lock.check()
        if not self.ctx.conn.set(intent, lad.fence, nx=True, ex=7 * 86400):
            lad.audit(
                step,
                "resumed",
                f"attempt {attempt} already ran under fence "
                f"{text(self.ctx.conn.get(intent) or b'')}: verifying instead of repeating",
            )
            self._commit(phase=Phase.VERIFY, verify_started_at=f"{time.time():.3f}")
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
            outcome = StepOutcome(StepResult.FAILED, f"coordinator: {exc}")
        finally:
            if module.MUTATES and not lad.dry_run:  # it no longer runs: free its concurrency slot
                controls.release(
                    self.ctx.conn,
                    self.ctx.rules.budget,
                    step=step,
                    member=f"{self.ladder_id}:{self.state.rung}:{step}:{attempt}",
                )
        if lad.scratch.get("coordinator_down_since"):
            lad.remember(coordinator_down_since=None)
        metrics.observe(self.ctx.conn, "remediator_step_duration_seconds", time.monotonic() - t0, step=step)
        metrics.count(self.ctx.conn, "remediator_steps", step=step, result=outcome.result)
        lad.audit(step, outcome.result, outcome.detail, attempt=attempt, fence=lad.fence, **outcome.evidence)
        log.info("%s attempt %d %s: %s", step, attempt, outcome.result, outcome.detail)
        tried = lad.scratch.get("tried", [])
        lad.remember(tried=[*tried, f"{step}#{attempt}: {outcome.result}"])
        if outcome.result == StepResult.DECLINED:
            return self._climb(lad, outcome.detail)
        if outcome.result == StepResult.FAILED:
            return self._retry_or_climb(lad, outcome.detail)
        self._commit(phase=Phase.VERIFY, verify_started_at=f"{time.time():.3f}")
        wait = self._wait_for(step)
        return self._schedule(wait, f"verifying {step}") if wait > 0 else None

    def _verify(self, lad: LadderRun) -> str | None:
        step = self.state.step
        policy = self.ctx.rules.ladder
        try:
            verdict = STEPS[step].verify(lad)
        except CoordinatorError as exc:
            verdict = Verdict(Check.PENDING, f"coordinator: {exc}")
        started = self.state.verify_started_at or time.time()
        if verdict.status == Check.PENDING:
            limit = STEPS[step].VERIFY_TIMEOUT
            limit = (
                policy.verify_timeout_seconds if limit is None else max(limit, policy.verify_timeout_seconds)
            )
            if time.time() - started < limit:
                self._commit(last_verify=verdict.detail)
                # A pending check is never re-run at once: that would spin a worker on it.
                return self._schedule(max(self._wait_for(step), policy.verify_wait_seconds), verdict.detail)
            verdict = Verdict(
                Check.FAILED, f"not verified within {limit:g}s: {verdict.detail}", verdict.evidence
            )
        lad.audit(step, f"verify-{verdict.status}", verdict.detail, **verdict.evidence)
        log.info("%s verify %s: %s", step, verdict.status, verdict.detail)
        if verdict.status == Check.FAILED:
            return self._retry_or_climb(lad, verdict.detail)
        if verdict.rediagnose:
            # The unreachable clock keeps running until a diagnosis reaches the host: a host that
            # answers one echo and drops again must still escalate after the rules' limit.
            self._commit(phase=Phase.DIAGNOSE, step="diagnose")
            return None
        if verdict.final:
            return self._finish(verdict.final, verdict.detail)
        plan, rung, pos = self.state.plan, self.state.rung, self.state.pos + 1
        if rung < len(plan) and pos < len(plan[rung]):
            self._commit(pos=pos, step=plan[rung][pos], phase=Phase.RUN, attempt=1)
            return None
        return self._climb(lad, f"{step} succeeded but did not restore sync")

    def _time_checks(self, lad: LadderRun, started: float) -> None:
        """Time-based escalation: the pages the rules decide on as the ladder ages, under the incident's
        one page (a second rule, or a later ladder, sends nothing new). A prevention ladder pages nobody."""
        if lad.dry_run or self.state.gentle:
            return
        facts = {
            **lad.facts,
            **fleet.fleet_facts(self.ctx, refresh=False),
            "minutes_in_ladder": round((time.time() - started) / 60, 2),
            "ladder_step": self.state.step or "none",
            "ladder_outcome": "running",
            "attempts": self.state.attempt,
            "selfplay_paused": bool(self.ctx.conn.sismember(keys.PAUSED, self.host_id)),
        }
        for page in self.ctx.rules.decide(facts).pages:
            if page.scope != "host":
                continue
            result = fleet.page_host(
                self.ctx,
                self.host_id,
                lad.incident_id or self.ladder_id,
                summary=f"{page.summary}: {self.host_id}",
                severity=page.severity,
                targets=page.to or None,
                details={"facts": facts},
                rule=page.rule,
                host_state="critical",
            )
            if result.sent:
                lad.audit("page", "sent" if result.paged else "failed", page.summary, page=result.as_dict())
            break  # one page per incident: the first host page the rules decide on

    # -- moving along the ladder -----------------------------------------------------------------
    def _coordinator_down(self, lad: LadderRun, step: str, exc: CoordinatorUnavailable) -> str | None:
        """Re-check on a schedule while the coordinator is down; escalate after the rules' limit."""
        policy = self.ctx.rules.ladder
        since = float(lad.scratch.get("coordinator_down_since") or time.time())
        lad.remember(coordinator_down_since=since)
        lad.audit(step, "coordinator-unavailable", str(exc))
        log.warning("%s: coordinator unavailable: %s", step, exc)
        if time.time() - since >= policy.unreachable_escalate_after_minutes * 60:
            self._goto(ESCALATE, reason=f"coordinator unavailable for {(time.time() - since) / 60:.1f} min")
            return None
        return self._schedule(policy.recheck_interval_seconds, f"coordinator unavailable during {step}")

    def _retry_or_climb(self, lad: LadderRun, why: str) -> str | None:
        attempt = self.state.attempt
        if not STEPS[self.state.step].SINGLE_ATTEMPT and attempt < self.ctx.rules.ladder.attempts_per_step:
            self._commit(attempt=attempt + 1, phase=Phase.RUN)
            return None
        return self._climb(lad, why)

    def _climb(self, lad: LadderRun, why: str) -> str | None:
        step = self.state.step
        incident_id = lad.incident_id
        if incident_id and step in STEPS and step != ESCALATE:
            # Remembered for the incident: a retry repeats this step only when its preconditions change.
            incidents.record_tried(
                self.ctx.conn,
                incident_id,
                step,
                signature=signature(step, lad.facts),
                why=why,
                ladder_id=self.ladder_id,
            )
        plan, rung = self.state.plan, self.state.rung + 1
        if step == ESCALATE or rung >= len(plan):
            if self.state.gentle:  # no page, no hold: the critical alert, if it comes, takes it from here
                return self._finish(Outcome.PREVENTION_FAILED, f"prevention did not help: {why}")
            return self._finish(Outcome.FAILED, f"ladder exhausted: {why}")
        if plan[rung][0] == ESCALATE:
            lad.remember(escalation_reason=why)
        self._commit(rung=rung, pos=0, step=plan[rung][0], phase=Phase.RUN, attempt=1)
        return None

    def _goto(self, step: str, reason: str) -> None:
        self._run_view(0).remember(escalation_reason=reason)
        self._commit(step=step, phase=Phase.RUN, attempt=1)

    def _wait_for(self, step: str) -> float:
        policy, wait = self.ctx.rules.ladder, STEPS[step].VERIFY_WAIT
        if wait == "recheck":
            return policy.recheck_interval_seconds
        return policy.verify_wait_seconds if wait == "verify" else 0.0

    # -- persistence -----------------------------------------------------------------------------
    def _read(self) -> None:
        self.state = LadderState.from_hash(store.get_host(self.ctx.conn, self.host_id))

    def _commit(self, **fields: Any) -> None:
        """Write ladder state only while we still hold the lock (fencing)."""
        assert self.lock is not None
        self.lock.check()
        self.state.apply(**fields)  # first: a field that is not the ladder's is refused before any write
        store.update_host(self.ctx.conn, self.host_id, heartbeat=f"{time.time():.3f}", **fields)

    def _schedule(self, delay: float, why: str, *, status: str | None = None) -> str:
        """Free the worker: the next advance runs as a new job ``delay`` seconds from now."""
        assert self.lock is not None
        self.lock.check()
        job_id = self._queue_next(
            delay,
            why,
            status=status or ("waiting" if delay else "queued"),
            waiting_for=why,
            heartbeat=f"{time.time():.3f}",
        )
        return f"waiting: {why} (next check in {delay:g}s, job {job_id})"

    def _queue_next(self, delay: float, description: str, **state: str) -> str:
        """Queue this ladder's next job ``delay`` seconds from now and point the host's state at it
        (``state``: the fields to set with it), in one MULTI; the new job's id."""
        with self.ctx.conn.pipeline() as pipe:
            job_id = queue_ladder_job(
                pipe,
                self.ctx.queue,
                self.host_id,
                self.ladder_id,
                description=description,
                delay=delay,
                **state,
            )
            pipe.execute()
        return job_id

    def _finish(self, outcome: Outcome, detail: str) -> str | None:
        """End the ladder and move its incident on; None when a stop was withdrawn (go on)."""
        assert self.lock is not None
        conn = self.ctx.conn
        lad = self._run_view(0)
        if outcome == Outcome.HEALTHY and self.state.gentle and lad.scratch.get("tried"):
            outcome = Outcome.PREVENTED  # a warning's ladder healed the host before it went critical
        next_state = incidents.state_after(outcome, global_dry_run=self.ctx.dry_run)
        ended = incidents.end_ladder(
            conn,
            self.host_id,
            self.ladder_id,
            self.lock.token,
            outcome,
            detail,
            store.host_fields(
                time.time(),
                status="finished",
                outcome=outcome,
                outcome_detail=detail,
                finished_at=f"{time.time():.3f}",
                phase=Phase.DONE,
                heartbeat=f"{time.time():.3f}",
            ),
            next_state,
            store.audit_entry(
                "ladder",
                outcome,
                detail,
                ladder_id=self.ladder_id,
                job_id=self.ctx.job_id,
                dry_run=lad.dry_run or None,
                tried=lad.scratch.get("tried"),
                incident=next_state.value,
            ),
        )
        if ended.withdrawn:
            lad.audit("ladder", "continued", "the alert fires again: the stop was withdrawn")
            return None
        if not ended.ok:
            # Another worker owns the host now (or this one lost its lock): it is not ours to end.
            raise LockLost(f"lost the lock on host {self.host_id} before ending its ladder")
        learning.record(conn, self.host_id, self.ladder_id, self.state, outcome)
        self.state.apply(status="finished", outcome=outcome, phase=Phase.DONE)
        controls.forget_approval(conn, self.host_id, self.ladder_id)
        if conn.hlen(keys.SILENCES) and (client := self.ctx.clients.silences()) is not None:
            silences.expire(conn, client, ladder_id=self.ladder_id)
        log.info("ladder %s: %s (incident %s: %s)", outcome, detail, ended.incident, ended.state)
        if outcome in HEALED_OUTCOMES and not lad.dry_run:
            fleet.host_recovered(self.ctx, self.host_id)
        if ended.state == incidents.IncidentState.RESOLVED and ended.incident:
            queue_cleanup(conn, self.ctx.settings.queue, ended.incident)
        return f"{outcome}: {detail}"

    # The flow, phase by phase (each returns a final word, or None to go on in this job).
    _phases = {Phase.DIAGNOSE: _diagnose, Phase.RUN: _run, Phase.VERIFY: _verify}
