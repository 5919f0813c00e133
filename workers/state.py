"""A ladder's state, as its host's Redis hash holds it (``remediator:host:<id>``): typed on the way in,
written back field by field by the ladder, under its lock.

The hash is also what the API, the status page and the sweeper read, so its field names and string
values are a contract (DESIGN.md); this is the ladder's typed view of it, nothing more.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    """Where a ladder is in the flow: diagnose, run the current step, verify it, done."""

    DIAGNOSE = "diagnose"
    RUN = "run"
    VERIFY = "verify"
    DONE = "done"


@dataclass
class LadderState:
    """The fields of the host hash the ladder reads and writes (others, e.g. ``heartbeat``, are only
    written). Flags are ``"1"``/``"0"`` in Redis; ``plan`` and ``facts`` JSON (remediator/store.py)."""

    ladder_id: str = ""
    job_id: str = ""
    status: str = ""
    phase: Phase = Phase.DIAGNOSE
    step: str = ""
    plan: list[list[str]] = field(default_factory=list)
    rung: int = 0
    pos: int = 0
    attempt: int = 1
    facts: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None
    verify_started_at: float | None = None
    incident_id: str = ""
    dry_run: bool = False  # this ladder only (a human's --dry-run); the deployment's is in the Context
    gentle: bool = False  # a prevention ladder: non-invasive steps only
    upgraded: bool = False  # a prevention ladder whose host went critical: plan again, fully
    resumes: int = 0  # times the sweeper resumed it without an advance running since
    cancel_reason: str = ""
    fence: int = 0
    last_verify: str = ""
    outcome: str = ""

    @classmethod
    def from_hash(cls, raw: dict[str, Any]) -> LadderState:
        """From ``store.get_host``'s decoded hash; a missing or empty field takes its default."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = raw.get(f.name)
            if value in (None, ""):
                continue
            values[f.name] = _typed(f.name, value)
        return cls(**values)

    def apply(self, **changes: Any) -> None:
        """Take ``changes`` (as the ladder writes them to the hash) into this view; a name that is not
        a field is a programming error (TypeError), not a silently ignored typo."""
        for name, value in changes.items():
            if name not in _FIELDS:
                raise TypeError(f"LadderState has no field {name!r}")
            setattr(
                self, name, copy.copy(getattr(_DEFAULT, name)) if value in (None, "") else _typed(name, value)
            )


def _typed(name: str, value: Any) -> Any:
    kind = _KINDS[name]
    if kind is bool:
        return value is True or value in ("1", "true")
    if kind is int:
        return int(value)
    if kind is float:
        return float(value)
    if kind is Phase:  # one this version does not know (written by a newer one): plan afresh, safely
        return Phase(value) if value in Phase.__members__.values() else Phase.DIAGNOSE
    return value


_KINDS: dict[str, Any] = {
    "rung": int,
    "pos": int,
    "attempt": int,
    "resumes": int,
    "fence": int,
    "started_at": float,
    "verify_started_at": float,
    "dry_run": bool,
    "gentle": bool,
    "upgraded": bool,
    "phase": Phase,
}
_KINDS.update({f.name: None for f in dataclasses.fields(LadderState) if f.name not in _KINDS})
_FIELDS = frozenset(f.name for f in dataclasses.fields(LadderState))
_DEFAULT = LadderState()  # where apply() copies a field's default from
