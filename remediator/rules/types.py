"""The typed records a rules file becomes: small, frozen, and free of YAML."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from remediator.rules.facts import Scope

OPERATORS: tuple[str, ...] = ("eq", "ne", "gt", "gte", "lt", "lte", "in")
PAGER_TARGETS: tuple[str, ...] = ("pagerduty", "webhook", "alertmanager")


@dataclass(frozen=True)
class Comparison:
    """``{fact: NAME, OP: VALUE}``; for ``in`` the value is a tuple."""

    fact: str
    op: str
    value: Any


@dataclass(frozen=True)
class AllOf:
    """``all: [...]``: every condition holds."""

    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    """``any: [...]``: at least one condition holds."""

    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    """``not: {...}``: the condition does not hold."""

    condition: Condition


Condition = Comparison | AllOf | AnyOf | Not


@dataclass(frozen=True)
class PageAction:
    """A page a rule decided on: PagerDuty severity, literal summary, pagers to use, the deciding rule.

    ``scope`` is ``"fleet"`` when the rule tests fleet facts only (one incident for the whole fleet, so
    dedupe on the rule name) and ``"host"`` otherwise (one incident per host: rule name and host id).
    """

    severity: str
    summary: str
    to: tuple[str, ...]
    rule: str
    scope: Scope = "host"


@dataclass(frozen=True)
class Switches:
    """What a rule can switch on for a storm, and what the matching rules switched on together."""

    hold_ladders: bool = False
    check_network: bool = False
    check_provider: bool = False


@dataclass(frozen=True)
class Action(Switches):
    """A rule's ``then``; ``pause_selfplay``/``resume_selfplay`` hold the hosts (``"affected"``) or None."""

    page: PageAction | None = None
    pause_selfplay: str | None = None
    resume_selfplay: str | None = None


@dataclass(frozen=True)
class Rule:
    """A named rule: when ``when`` holds, ``then`` applies. ``scope``: see PageAction."""

    name: str
    when: Condition
    then: Action
    description: str = ""
    line: int = 0
    scope: Scope = "host"


@dataclass(frozen=True)
class LadderLimit:
    """At most ``count`` ladders per host within ``window_minutes``."""

    count: int
    window_minutes: float


@dataclass(frozen=True)
class LadderPolicy:
    """Limits and timeouts of the per-host ladder; units as the names say."""

    attempts_per_step: int
    verify_wait_seconds: float
    verify_timeout_seconds: float
    recheck_interval_seconds: float
    unreachable_escalate_after_minutes: float
    deadline_minutes: float
    max_ladders_per_host: LadderLimit


@dataclass(frozen=True)
class FleetPolicy:
    """The fleet view's sliding window and storm threshold."""

    window_minutes: float
    storm_threshold: int


@dataclass(frozen=True)
class RetirementPolicy:
    """Whether the ladder may retire a host by itself, and under which condition."""

    automatic: bool
    when: Condition


@dataclass(frozen=True)
class IncidentPolicy:
    """How an incident is followed: when a held host may be retried, when a healthy one closes.

    ``retry_after_minutes`` None means never: a held host waits for a human or a resolved alert."""

    retry_after_minutes: float | None = None
    healthy_for_minutes: float = 15.0


@dataclass(frozen=True)
class PagingPolicy:
    """Fleet-wide page limits: new incidents triggered per hour, and how often an open page is updated."""

    max_triggers_per_hour: int = 6
    update_interval_minutes: float = 15.0


@dataclass(frozen=True)
class BudgetLimit:
    """One blast-radius limit; exactly one of: ``max`` per ``per_minutes`` (a rate), ``concurrent``, or
    ``distinct_hosts`` per ``per_minutes``. ``step`` None counts every mutating step."""

    name: str
    step: str | None = None
    max: int | None = None
    per_minutes: float | None = None
    concurrent: int | None = None
    distinct_hosts: int | None = None

    def counts(self, step: str) -> bool:
        return self.step is None or self.step == step


@dataclass(frozen=True)
class ApprovalPolicy:
    """Steps that wait for a human yes; recover_data too above a size; how long to wait for one."""

    steps: frozenset[str] = frozenset({"retire"})
    recover_data_over_bytes: int | None = None
    timeout_minutes: float = 60.0


@dataclass(frozen=True)
class PreventionPolicy:
    """What a gentle ladder (started by a warning of ``alerts.prevent``) may do besides force_sync."""

    restart_agent: bool = True


@dataclass(frozen=True)
class SilencePolicy:
    """Alertmanager silences of a host's other alerts while its ladder acts (opt-in)."""

    enabled: bool = False
    duration_minutes: float = 60.0


@dataclass(frozen=True)
class ProbePolicy:
    """The fleet probe (runbook Prevention 3): how often, how many SSH sessions at once, and whether an
    agent found down starts a gentle ladder."""

    enabled: bool = False
    interval_seconds: float = 60.0
    concurrency: int = 8
    command_timeout_seconds: float = 10.0
    start_prevention: bool = False


@dataclass(frozen=True)
class LearningPolicy:
    """Whether the plan may order its leading non-destructive rungs by observed success, and how many
    ladders of a signature must have tried each of them first."""

    enabled: bool = False
    min_samples: int = 10
