"""What a ladder step returns, and the view of the ladder a step gets."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol

from remediator import keys, store
from remediator.clients.coordinator import HostRecord
from remediator.states import Outcome
from workers.context import Context
from workers.state import LadderState

VerifyWait = Literal["verify", "recheck", "none"]


class StepResult(StrEnum):
    """What running a step did (``StepOutcome.result``); the audit trail records it as the outcome."""

    RAN = "ran"  # the action was taken (or planned, in a dry run) and must be verified
    FAILED = "failed"  # it could not be taken: try again, or climb
    DECLINED = "declined"  # the step chose not to act: climb without counting an attempt


class Check(StrEnum):
    """A verification's verdict (``Verdict.status``)."""

    OK = "ok"
    PENDING = "pending"  # not yet: check again later
    FAILED = "failed"


class Step(Protocol):
    """What a ladder step module declares about itself (the ladder reads these, never step names).

    ``MUTATES``: it changes something outside the remediator (held by freezes, fleet holds, dry run).
    ``SINGLE_ATTEMPT``: never retried within a ladder (waiting, retiring).
    ``VERIFY_WAIT``: how long before its first verification: the rules' ``verify_wait_seconds``
    ("verify"), ``recheck_interval_seconds`` ("recheck"), or at once ("none").
    ``VERIFY_TIMEOUT``: seconds verification may stay pending; None: the rules' verify timeout;
    ``float("inf")``: until the step's own verdict gives up.
    ``PRECONDITIONS``: the facts under which the step was tried; a retry in the same incident repeats
    a step that failed only when one of these changed."""

    MUTATES: bool
    SINGLE_ATTEMPT: bool
    VERIFY_WAIT: VerifyWait
    VERIFY_TIMEOUT: float | None
    PRECONDITIONS: tuple[str, ...]

    def run(self, lad: LadderRun) -> StepOutcome: ...

    def verify(self, lad: LadderRun) -> Verdict: ...


@dataclass(frozen=True)
class StepOutcome:
    """Result of running a step. ``ran``: the action was taken (or planned, in a dry run) and must be
    verified; ``failed``: it could not be taken; ``declined``: the step chose not to act (go on)."""

    result: StepResult
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """``ok``, ``pending`` (check again later) or ``failed``. ``final`` ends the ladder with that
    outcome; ``rediagnose`` sends it back to diagnosis (the host answers again: plan afresh)."""

    status: Check
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    final: Outcome | None = None
    rediagnose: bool = False


@dataclass
class LadderRun:
    """The running ladder as a step sees it: host, ids, persisted scratch data, latest diagnosis."""

    ctx: Context
    host_id: str
    ladder_id: str
    state: LadderState
    fence: int
    guard: Callable[[], None] = lambda: None  # raises LockLost once this worker no longer holds the host

    @property
    def incident_id(self) -> str | None:
        return self.state.incident_id or None

    @property
    def facts(self) -> dict[str, Any]:
        return self.state.facts

    @property
    def diagnosis(self) -> dict[str, Any]:
        return self.scratch.get("diagnosis") or {}

    @property
    def record(self) -> HostRecord | None:
        raw = self.diagnosis.get("record")
        return HostRecord(**raw) if raw else None

    @property
    def dry_run(self) -> bool:
        return self.state.dry_run or self.ctx.dry_run

    @property
    def scratch(self) -> dict[str, Any]:
        raw = self.ctx.conn.hget(_scratch_key(self.host_id, self.ladder_id), "data")
        return json.loads(raw) if raw else {}

    def remember(self, **values: Any) -> None:
        """Persist values for later phases of this ladder (survives a worker being killed); only while
        this worker still holds the host (a worker that lost it must not overwrite its successor's)."""
        self.guard()
        data = self.scratch
        data.update(values)
        key = _scratch_key(self.host_id, self.ladder_id)
        self.ctx.conn.hset(key, "data", json.dumps(data, default=str))
        self.ctx.conn.expire(key, 7 * 86400)

    def audit(self, step: str, outcome: str, detail: str = "", **evidence: Any) -> None:
        self.guard()
        store.append_audit(
            self.ctx.conn,
            self.host_id,
            step,
            outcome,
            detail,
            ladder_id=self.ladder_id,
            job_id=self.ctx.job_id,
            dry_run=self.dry_run or None,
            **evidence,
        )


def _scratch_key(host_id: str, ladder_id: str) -> str:
    return keys.SCRATCH.format(host_id, ladder_id)
