"""What a ladder step returns, and the view of the ladder a step gets."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from remediator import keys, store
from remediator.coordinator import HostRecord
from workers.context import Context


@dataclass(frozen=True)
class StepOutcome:
    """Result of running a step. ``ran``: the action was taken (or planned, in a dry run) and must be
    verified; ``failed``: it could not be taken; ``declined``: the step chose not to act (go on)."""

    result: str
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """``ok``, ``pending`` (check again later) or ``failed``; ``final`` ends the ladder with that outcome."""

    status: str
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    final: str | None = None


@dataclass
class LadderRun:
    """The running ladder as a step sees it: host, ids, persisted scratch data, latest diagnosis."""

    ctx: Context
    host_id: str
    ladder_id: str
    state: dict[str, Any]
    fence: int

    @property
    def facts(self) -> dict[str, Any]:
        return self.state.get("facts") or {}

    @property
    def diagnosis(self) -> dict[str, Any]:
        return self.scratch.get("diagnosis") or {}

    @property
    def record(self) -> HostRecord | None:
        raw = self.diagnosis.get("record")
        return HostRecord(**raw) if raw else None

    @property
    def dry_run(self) -> bool:
        return self.state.get("dry_run") == "1" or self.ctx.dry_run

    @property
    def scratch(self) -> dict[str, Any]:
        raw = self.ctx.conn.hget(_scratch_key(self.host_id, self.ladder_id), "data")
        return json.loads(raw) if raw else {}

    def remember(self, **values: Any) -> None:
        """Persist values for later phases of this ladder (survives a worker being killed)."""
        data = self.scratch
        data.update(values)
        key = _scratch_key(self.host_id, self.ladder_id)
        self.ctx.conn.hset(key, "data", json.dumps(data, default=str))
        self.ctx.conn.expire(key, 7 * 86400)

    def audit(self, step: str, outcome: str, detail: str = "", **evidence: Any) -> None:
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
