"""Issue 13's safety invariants, checked against what happened to the world (tests/world.py's call log and
state), not against what the remediator says. ``Invariants(harness).check()`` after every step of a
property test, ``check_quiet()`` once everything has been resolved and time has passed.

I1 no retire and no data-loss record while the data may be recoverable (host reachable over SSH, any
   rsync in the incident exited 0, provider answer unknown or malformed);
I2 dry run (global or per ladder): zero mutating calls anywhere (coordinator writes, SSH outside the
   read-only diagnosis set, rsync without --dry-run, import, pages, pause/resume, ledger lines);
I3 the audit says paged <=> a pager received it (answered 2xx);
I4 no mutation twice in one attempt; a worker that lost its lock stops before its next mutation and
   never ends the ladder;
I5 at most one active ladder per host;
I6 every host the remediator paused is resumed or belongs to an open incident;
I7 every ladder ends by its deadline plus one recheck interval (plus the time the remediator could not
   act: calls in flight, a dead worker's lock TTL and the sweeper's resume, see docs/SAFETY.md);
I8 a failing or malformed answer is recorded as unknown -- never as healthy, terminated or "no data".

Beside them: F1 no mutating step while a freeze or a hold alert is in force (DESIGN: "Frozen: ...
mutating steps wait"); a host is retired only once its loss is in the ledger and in the training log
as the world has them; at the end of a sequence (``check_quiet``) no ladder runs, every incident is
closed and cleaned up, nothing stays paused, no page stays open, no silence stays in force.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from world import Call

from remediator import incidents, keys, paging, store
from remediator.incidents import IncidentState

if TYPE_CHECKING:
    from harness import Harness

# Host-scoped mutations a ladder makes under the host's lock, at most once per attempt (I4).
HOST_MUTATIONS = frozenset(
    {
        "coordinator.force_sync",
        "coordinator.unretire",
        "coordinator.retire",
        "coordinator.data_loss",
        "ssh.restart",
        "ssh.fallback",
        "rsync",
        "import",
    }
)
NOT_IDEMPOTENT = frozenset({"coordinator.retire", "coordinator.data_loss"})
# Mutations whose repetition does something again: at most once per attempt (I4). force_sync and
# unretire only set a state; repeating them (the client's retries on 5xx, the ladder re-running a step
# whose coordinator was down without using up an attempt) is by design and changes nothing.
ONCE_PER_ATTEMPT = HOST_MUTATIONS - {"coordinator.force_sync", "coordinator.unretire"}
# Faults after which the answer the caller got is not the service's own (I8).
UNANSWERED = frozenset({"refused", "timeout", "5xx", "4xx", "malformed", "applied_then_failed", "kill_after"})


class Violation(AssertionError):
    """An invariant does not hold; the message names it and the evidence."""


@dataclass
class Observed:
    """What the harness's observers saw happen inside the remediator (diagnoses, closes)."""

    diagnoses: list[dict[str, Any]] = field(default_factory=list)
    closes: list[dict[str, Any]] = field(default_factory=list)


class Invariants:
    def __init__(self, harness: Harness, observed: Observed, *, deadline: float, recheck: float) -> None:
        self.h = harness
        self.observed = observed
        self.deadline = deadline
        self.recheck = recheck
        self.seen_calls = 0
        self.seen_ledger = 0
        self.seen_diagnoses = 0
        self.seen_ends = 0
        self.seen_closes = 0
        self.attempt_mutations: Counter[tuple[Any, ...]] = Counter()
        self._crash_ok: set[str] = set()
        self.audit_seen: dict[str, int] = {}
        self.events_seen = 0
        self.runs_seen = 0
        self.lost_seen = 0
        self.dead_jobs: set[str] = set()
        self.lost: set[int] = set()
        self.spent: dict[str, float] = {}  # ladder id -> virtual seconds spent inside its outside calls

    # -- the whole check -------------------------------------------------------------------------------
    def check(self) -> None:
        new_calls = self.h.log.calls[self.seen_calls :]
        self.seen_calls = len(self.h.log.calls)
        for call in new_calls:
            self._call(call)
        ledger = self.h.ledger()
        for line in ledger[self.seen_ledger :]:
            self._ledger_line(line)
        self.seen_ledger = len(ledger)
        for diag in self.observed.diagnoses[self.seen_diagnoses :]:
            self._diagnosis(diag)
        self.seen_diagnoses = len(self.observed.diagnoses)
        for end in self.h.driver.ends[self.seen_ends :]:
            self._end(end)
        self.seen_ends = len(self.h.driver.ends)
        for close in self.observed.closes[self.seen_closes :]:
            self._close(close)
        self.seen_closes = len(self.observed.closes)
        self._pages()
        self._one_ladder_per_host()
        self._paused()
        self._deadlines()
        self._crashes()

    def fail(self, invariant: str, message: str, **evidence: Any) -> None:
        detail = json.dumps(evidence, default=str, sort_keys=True)[:3000]
        raise Violation(f"{invariant}: {message} -- {detail}")

    # -- per call ------------------------------------------------------------------------------------
    def _call(self, call: Call) -> None:
        ctx = call.ctx
        if call.level == "intent" and ctx.get("ladder_id"):
            self.spent[ctx["ladder_id"]] = (
                self.spent.get(ctx["ladder_id"], 0.0) + (call.ended or call.at) - call.at
            )
        host = call.args.get("host_id") or ctx.get("host")
        # I2: nothing mutating in a dry run (the whole deployment, or this ladder / discovery).
        if call.mutating:
            if self.h.settings.dry_run:
                self.fail("I2", "a mutating call in a dry-run deployment", call=_brief(call))
            if ctx.get("dry_run"):
                self.fail("I2", "a mutating call by a dry-run ladder", call=_brief(call))
        # I1: retire / data-loss only for data that is truly gone.
        if call.name in NOT_IDEMPOTENT and call.level == "wire" and call.reached:
            self._recoverable("I1", call, host, ctx.get("ladder_id"), ctx.get("incident"), call.world)
        if call.name == "coordinator.retire" and call.level == "wire" and call.applied:
            self._documented(call, host, ctx.get("ladder_id"))
        if call.name in NOT_IDEMPOTENT and call.level == "wire" and call.applied:
            key = (ctx.get("ladder_id"), ctx.get("step"), ctx.get("attempt"), call.name, "applied")
            self.attempt_mutations[key] += 1
            if self.attempt_mutations[key] > 1:
                self.fail("I4", "a retirement or loss record applied twice in one attempt", call=_brief(call))
        if call.level != "intent" or call.name not in HOST_MUTATIONS or ctx.get("kind") != "ladder":
            return
        if call.name == "rsync" and call.args.get("dry_run"):
            return
        # I4: once per attempt; I4/I5: only under the host's lock, by the host's active ladder.
        key = (ctx.get("ladder_id"), ctx.get("step"), ctx.get("attempt"), call.name)
        self.attempt_mutations[key] += call.name in ONCE_PER_ATTEMPT
        if self.attempt_mutations[key] > 1:
            self.fail("I4", "a mutation twice in one attempt", attempt=key, call=_brief(call))
        if not ctx.get("token") or ctx.get("lock_now") != ctx.get("token"):
            self.fail("I4", "a mutation by a worker that does not hold the host's lock", call=_brief(call))
        if ctx.get("last_owner") != ctx.get("token"):
            self.fail("I4", "a mutation by a worker whose lock was taken over", call=_brief(call))
        if ctx.get("active_now") != ctx.get("ladder_id"):
            self.fail("I5", "a mutation by a ladder that is not the host's active one", call=_brief(call))
        if ctx.get("frozen_now"):
            self.fail("F1", "a mutating step while frozen or held", why=ctx["frozen_now"], call=_brief(call))

    def _recoverable(
        self,
        invariant: str,
        what: Any,
        host: str | None,
        ladder: str | None,
        incident: str | None,
        world: dict[str, Any] | None,
    ) -> None:
        """I1's conditions for ``what`` (a retire or data-loss call, or a ledger line) on ``host``."""
        if world is not None and world.get("ssh_up"):
            self.fail(
                invariant, "retire/data loss while the host answers over SSH", what=_brief(what), world=world
            )
        if world is not None and world.get("instance") != "terminated":
            self.fail(
                invariant,
                "retire/data loss while the instance is not terminated",
                what=_brief(what),
                world=world,
            )
        copied = [
            c
            for c in self.h.log.calls
            if c.name == "rsync"
            and c.level == "intent"
            and c.result == 0
            and not c.args.get("dry_run")
            and c.args.get("host_id") == host
            and incident
            and c.ctx.get("incident") == incident
        ]
        if copied:
            self.fail(
                invariant,
                "retire/data loss after an rsync of the incident exited 0",
                what=_brief(what),
                rsync=_brief(copied[0]),
            )
        asked = [
            c
            for c in self.h.log.calls
            if c.name == "provider.lambda"
            and c.level == "intent"
            and c.ctx.get("ladder_id") == ladder
            and c.ctx.get("host") == host
        ]
        if not asked:
            self.fail(
                invariant, "retire/data loss without asking the provider in this ladder", what=_brief(what)
            )
        last = asked[-1]
        wires = [
            c
            for c in self.h.log.calls[last.seq + 1 :]
            if c.name == "provider.lambda"
            and c.level == "wire"
            and c.ctx == last.ctx
            and c.at <= (last.ended or c.at)
        ]
        if last.result != "terminated" or any(w.fault in UNANSWERED for w in wires):
            self.fail(
                invariant,
                "retire/data loss on an unknown or malformed provider answer",
                what=_brief(what),
                provider=_brief(last),
                wires=[_brief(w) for w in wires],
            )

    def _documented(self, call: Call, host: str | None, ladder: str | None) -> None:
        """I1, and the checklist: a host is retired only once its loss is in the ledger and in the
        coordinator's training log (as the world has them, not as the remediator believes)."""
        logged = [r for r in self.h.world.data_loss if r.get("host_id") == host and r["at"] <= call.at]
        ledger = [line for line in self.h.ledger() if line.get("ladder_id") == ladder]
        if not logged or not ledger:
            self.fail(
                "I1",
                "a host retired before its loss was in the training log and the ledger",
                call=_brief(call),
                training_log=len(logged),
                ledger=len(ledger),
            )

    def _ledger_line(self, line: dict[str, Any]) -> None:
        ladder = line.get("ladder_id")
        calls = [c for c in self.h.log.calls if c.ctx.get("ladder_id") == ladder]
        ctx = calls[-1].ctx if calls else {}
        if self.h.settings.dry_run or ctx.get("dry_run"):
            self.fail("I2", "a data-loss ledger line in a dry run", line=line)
        world = self.h.world.snapshot(line["host_id"])
        self._recoverable("I1", line, line.get("host_id"), ladder, ctx.get("incident"), world)

    # -- diagnoses and endings (I8) ------------------------------------------------------------------
    def _diagnosis(self, seen: dict[str, Any]) -> None:
        diag = seen["diagnosis"]
        calls = self.h.log.calls[seen["first"] : seen["last"]]
        mine = [c for c in calls if c.ctx.get("job") == seen["job"]]
        coordinator = [c for c in mine if c.name == "coordinator.hosts" and c.level == "wire"]
        malformed = coordinator and coordinator[-1].fault == "malformed"
        if malformed and (diag.coordinator_state != "unknown" or not diag.known_to_coordinator):
            self.fail(
                "I8",
                "a malformed coordinator answer read as a known state (or as an unknown host)",
                state=diag.coordinator_state,
                known=diag.known_to_coordinator,
                call=_brief(coordinator[-1]),
            )
        provider = [c for c in mine if c.name == "provider.lambda" and c.level == "wire"]
        if provider and provider[-1].fault in UNANSWERED and diag.cloud_state != "unknown":
            self.fail(
                "I8",
                "a failed provider answer read as a cloud state",
                cloud_state=diag.cloud_state,
                call=_brief(provider[-1]),
            )
        inventory = [c for c in mine if c.name == "ssh.inventory" and c.level == "intent"]
        failed = inventory and (
            inventory[-1].fault == "malformed"
            or (inventory[-1].fault in UNANSWERED | {"slow"} and inventory[-1].result != 0)
        )
        if failed and diag.inventory_at is not None and diag.inventory_at >= seen["at"]:
            self.fail(
                "I8",
                "a failed or malformed inventory read as a fresh count",
                call=_brief(inventory[-1]),
                inventory_at=diag.inventory_at,
            )
        agent = [c for c in mine if c.name == "ssh.agent_check" and c.level == "intent"]
        if (
            agent
            and agent[-1].fault in ("refused", "timeout", "applied_then_failed")
            and diag.agent_running is not None
        ):
            self.fail(
                "I8",
                "a failed agent check read as running or not",
                call=_brief(agent[-1]),
                agent_running=diag.agent_running,
            )

    def _end(self, end: dict[str, Any]) -> None:
        if not end["ok"]:
            return
        # I4: only the worker holding the host's lock (the last to take it) ends the ladder.
        if end.get("latest_owner") != end["token"]:
            self.fail("I4", "a ladder ended by a worker whose lock was taken over", end=end)
        world = end.get("world") or {}
        if end["outcome"] == "healthy" and (world.get("state") == "critical" or world.get("retired")):
            self.fail("I8", "a ladder ended healthy while the host is critical or retired", end=end)

    def _close(self, close: dict[str, Any]) -> None:
        if close["by"] != "coordinator" or not close.get("closed"):
            return
        world = close.get("world") or {}
        if world.get("state") != "healthy" or world.get("retired"):
            self.fail("I8", "an incident closed as healthy while the host is not", close=close)

    # -- state checks ----------------------------------------------------------------------------------
    def _pages(self) -> None:
        """I3: paged in the remediator's records <=> a pager took it (2xx). Audit entries and pager
        events are looked at once each (both only grow; a page once delivered stays delivered)."""
        conn = self.h.conn
        took = {e.dedup_key for e in self.h.world.pager_events if e.action == "trigger" and e.status < 300}
        records = {}
        for raw in conn.scan_iter(keys.PAGE.format("*")):
            record = paging.get(conn, raw.decode().split(":", 2)[2])
            if record is not None:
                records[record.dedup_key] = record

        def reached(key: str | None) -> bool:
            record = records.get(key or "")
            if key in took:
                return True
            return bool(record and record.folded_into and record.folded_into in took)

        for key, record in records.items():
            if record.paged and key not in took:
                self.fail("I3", "a page on record as delivered that no pager took", page=key)
        for raw in conn.scan_iter(keys.INCIDENT.format("*")):
            incident = incidents.get(conn, raw.decode().split(":", 2)[2])
            if incident is not None and incident.paged and not any(reached(k) for k in incident.pages):
                self.fail(
                    "I3",
                    "an incident says paged but no pager took its pages",
                    incident=incident.id,
                    pages=incident.pages,
                )
        for trail in [*self.h.world.hosts, "_fleet"]:
            seen = self.audit_seen.get(trail, 0)
            if conn.llen(keys.AUDIT.format(trail)) < seen:
                seen = 0  # trimmed: look at all of it again
            entries = store.get_audit(conn, trail, seen)
            self.audit_seen[trail] = seen + len(entries)
            for entry in entries:
                for page in entry.get("pages") or (
                    [entry["page"]] if isinstance(entry.get("page"), dict) else []
                ):
                    if isinstance(page, dict) and page.get("paged") and not reached(page.get("dedup_key")):
                        self.fail("I3", "the audit says paged but no pager took it", entry=entry)
        events = self.h.world.pager_events[self.events_seen :]
        self.events_seen += len(events)
        lost = self._lost_answers()
        for event in events:
            if event.action != "trigger" or event.status >= 300 or event.call is None:
                continue
            if event.call.seq in lost:
                continue
            record = records.get(event.dedup_key)
            if record is None or not (record.paged or record.state == paging.PageState.RESOLVED):
                self.fail(
                    "I3",
                    "a pager took a page the remediator does not record as paged",
                    page=event.dedup_key,
                    state=record.state if record else None,
                    call=_brief(event.call),
                )

    def _lost_answers(self) -> set[int]:
        """Calls whose answer never made it into the remediator's records: lost on the way, or made by
        a job that was killed or crashed before it could record it (or by a sweep that was killed)."""
        runs = self.h.driver.runs
        self.dead_jobs |= {r.job_id for r in runs[self.runs_seen :] if r.outcome != "finished"}
        self.runs_seen = len(runs)
        dead_workers = {k["worker"] for k in self.h.driver.kills}
        calls = self.h.log.calls
        for call in calls[self.lost_seen :]:
            killed_sweep = call.ctx.get("kind") == "sweeper" and call.ctx.get("worker") in dead_workers
            if call.answer_lost or call.ctx.get("job") in self.dead_jobs or killed_sweep:
                self.lost.add(call.seq)
        self.lost_seen = len(calls)
        return self.lost

    def _one_ladder_per_host(self) -> None:
        """I5: one active ladder per host, and the host's state names it."""
        conn = self.h.conn
        for host in self.h.world.hosts:
            active = conn.get(keys.ACTIVE.format(host))
            state = self.h.host(host)
            if active is not None and state.get("ladder_id") != active.decode():
                self.fail(
                    "I5",
                    "the active ladder is not the one the host's state runs",
                    host=host,
                    active=active.decode(),
                    state=state.get("ladder_id"),
                )
            running = []
            for incident in incidents.history(conn, host, limit=20):
                running += [r.ladder_id for r in incident.ladders if r.outcome is None]
            if len(running) > 1:
                self.fail("I5", "more than one ladder of the host without an end", host=host, ladders=running)

    def _paused(self) -> None:
        """I6: a host the remediator paused is known to it as paused, and is resumed or in an open
        incident (or its incident's cleanup, which resumes it, is still to run)."""
        conn = self.h.conn
        for host_id, host in self.h.world.hosts.items():
            if not host.selfplay_paused:
                continue
            if not conn.sismember(keys.PAUSED, host_id):
                self.fail(
                    "I6",
                    "a host is paused but the remediator does not know it paused it",
                    host=host_id,
                    reason=self.h.world.paused_by.get(host_id),
                )
            if incidents.current(conn, host_id) is not None:
                continue
            last = incidents.history(conn, host_id, limit=1)
            if (
                last
                and last[0].cleanup != "done"
                and (conn.zscore(keys.CLEANUP, last[0].id) is not None or _cleanup_pending(conn, last[0].id))
            ):
                continue
            self.fail(
                "I6",
                "a paused host with no open incident and no cleanup to come",
                host=host_id,
                incidents=[i.id for i in last],
            )

    def _deadlines(self) -> None:
        """I7: every ladder ends by its deadline plus one recheck interval, plus what it could not help.
        A ladder runs while it is its host's active one (the intake's and END_LUA's key)."""
        now = self.h.clock.now
        for host in self.h.world.hosts:
            active = self.h.conn.get(keys.ACTIVE.format(host))
            state = self.h.host(host)
            if active is None or state.get("ladder_id") != active.decode():
                continue
            started = float(state.get("started_at") or now)
            allowance = self.allowance(host, state["ladder_id"], started)
            if now - started > self.deadline + self.recheck + allowance:
                self.fail(
                    "I7",
                    "a ladder is still running past its deadline",
                    host=host,
                    ladder=state["ladder_id"],
                    running_for=round(now - started, 1),
                    deadline=self.deadline,
                    allowance=round(allowance, 1),
                    step=state.get("step"),
                    status=state.get("status"),
                    last=self.h.steps(host)[-5:],
                )

    def allowance(self, host: str, ladder: str, started: float) -> float:
        """Virtual seconds the remediator could not act on this ladder: time inside its outside calls
        (each bounded by its own timeout), and for each worker killed or stalled while running it, the
        lock TTL, the sweeper's resume backoff and the delivery lock a killed page delivery leaves."""
        from remediator import paging as pg
        from workers import sweeper

        spent = self.spent.get(ladder, 0.0)
        disruptions = sum(1 for k in self.h.driver.kills if k.get("host") == host and k["at"] >= started)
        disruptions += sum(1 for s in self.h.driver.stalls if s.get("host") == host and s["at"] >= started)
        crashes = sum(1 for r in self.h.driver.runs if r.outcome == "failed" and r.args[:2] == (host, ladder))
        per = (
            self.h.settings.lock_ttl
            + sweeper.MAX_BACKOFF
            + 2 * sweeper.SWEEP_INTERVAL
            + 2 * pg.DELIVERY_LOCK_TTL
        )
        return spent + (disruptions + crashes) * per

    def _crashes(self) -> None:
        """A job that crashed on an answer (instead of recording it as unknown) breaks I8. Failing on
        purpose is allowed where the code says so: an injected Redis fault, a discovery or a cleanup
        that could not reach the coordinator or a pager, or a cleanup that must not resume selfplay
        during a freeze (all retried)."""
        for run in self.h.driver.runs:
            if run.outcome != "failed" or run.job_id in self._crash_ok:
                continue
            text = str(run.result)
            redis_fault = any(s in text for s in ("ConnectionError", "TimeoutError", "WorkerDead"))
            on_purpose = run.func in ("discover", "finish_incident") and text.startswith("Coordinator")
            on_purpose |= run.func == "finish_incident" and text.startswith("Frozen")  # resumes after it
            if redis_fault or on_purpose:
                self._crash_ok.add(run.job_id)
                continue
            self.fail("I8", "a job crashed instead of recording an answer as unknown", run=run.__dict__)

    # -- after the dust settles --------------------------------------------------------------------
    def is_quiet(self) -> bool:
        try:
            self.check_quiet()
        except Violation:
            return False
        return True

    def check_quiet(self) -> None:
        """Everything resolved, every fault cleared, time passed: every incident is closed and cleaned
        up, nothing stays paused, no page stays open, no ladder runs."""
        conn = self.h.conn
        for host_id, host in self.h.world.hosts.items():
            if self.h.active(host_id):
                self.fail(
                    "quiet",
                    "a ladder still runs after everything resolved",
                    host=host_id,
                    steps=self.h.steps(host_id)[-6:],
                )
            current = incidents.current(conn, host_id)
            if current is not None:
                self.fail(
                    "quiet",
                    "an incident stays open after its alert resolved",
                    host=host_id,
                    incident=current.id,
                    state=current.state.value,
                )
            for incident in incidents.history(conn, host_id, limit=20):
                if incident.state == IncidentState.RESOLVED and incident.cleanup != "done":
                    self.fail("quiet", "a closed incident's cleanup never finished", incident=incident.id)
            if host.selfplay_paused:
                self.fail("quiet", "a host stays paused after its incident closed", host=host_id)
        open_pages = [k.decode() for k in conn.smembers(keys.PAGES)]
        if open_pages:
            self.fail("quiet", "pages stay open after every incident closed", pages=open_pages)
        if self.h.world.active_silences():
            self.fail(
                "quiet",
                "silences stay in force after every ladder ended",
                silences=self.h.world.active_silences(),
            )


def _cleanup_pending(conn: Any, incident_id: str) -> bool:
    from remediator.intake import job_status

    status = job_status(conn, f"cleanup-{incident_id}")
    return status is not None and status.value in ("queued", "scheduled", "started")


def _brief(what: Any) -> Any:
    if isinstance(what, Call):
        return {
            "seq": what.seq,
            "at": what.at,
            "name": what.name,
            "level": what.level,
            "fault": what.fault,
            "applied": what.applied,
            "result": what.result,
            "args": what.args,
            "ctx": {
                k: what.ctx.get(k) for k in ("kind", "worker", "ladder_id", "step", "attempt", "dry_run")
            },
        }
    return what
