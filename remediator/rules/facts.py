"""The vocabulary of facts a rule may test: the one place the names, types and meanings live.

Diagnosis and the ladder produce the per-host facts; the fleet view produces the fleet-wide ones.
``docs/rules.md`` lists the same facts and a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from remediator.defaults import LADDER_STEPS
from remediator.states import Outcome

Scope = Literal["host", "fleet"]

COORDINATOR_STATES: tuple[str, ...] = ("healthy", "lagging", "critical", "unknown")
CLOUD_STATES: tuple[str, ...] = ("running", "stopped", "terminated", "unknown", "not_asked")
LADDER_STEP_VALUES: tuple[str, ...] = (*LADDER_STEPS, "none")
# "running" while a ladder runs, "none" before any; a dry run's end is not a fact rules act on.
LADDER_OUTCOMES: tuple[str, ...] = (
    "running",
    *(outcome.value for outcome in Outcome if outcome is not Outcome.DRY_RUN),
    "none",
)


@dataclass(frozen=True)
class FactSpec:
    """What one fact is: its Python type, who produces it, and what it means.

    ``values`` closes the set of strings a str fact can take; ``nonnegative`` marks counts and
    durations, so a comparison with a negative number is refused as meaningless.
    """

    type: type
    scope: Scope
    description: str
    values: tuple[str, ...] | None = None
    nonnegative: bool = False


FACTS: dict[str, FactSpec] = {
    # Per host: diagnosis (runbook Diagnosis 1-4) and the ladder's own progress.
    "alertname": FactSpec(str, "host", "the alert that started or fed this evaluation"),
    "host_id": FactSpec(str, "host", "the host's id, as the coordinator knows it"),
    "coordinator_state": FactSpec(
        str, "host", "the host's sync state at the coordinator", values=COORDINATOR_STATES
    ),
    "host_retired": FactSpec(bool, "host", "the coordinator has the host retired"),
    "ssh_reachable": FactSpec(bool, "host", "an SSH connection succeeded within the connect timeout"),
    "agent_running": FactSpec(bool, "host", "the sync agent process runs on the host"),
    "agent_auto_restart": FactSpec(
        bool, "host", "a supervisor (systemd Restart=always/on-failure/...) restarts the agent when it dies"
    ),
    "unsynced_games": FactSpec(int, "host", "games in /data/selfplay not yet synced", nonnegative=True),
    "unsynced_bytes": FactSpec(
        int,
        "host",
        "bytes in /data/selfplay not yet synced, unparseable files modified after the last sync included",
        nonnegative=True,
    ),
    "unparseable_files": FactSpec(
        int,
        "host",
        "files in /data/selfplay that cannot be read as games databases (other format or schema, "
        "half-written, unreadable): never counted as no data",
        nonnegative=True,
    ),
    "cloud_state": FactSpec(
        str, "host", "the instance state the cloud provider reports", values=CLOUD_STATES
    ),
    "disk_full": FactSpec(bool, "host", "the host's data disk has no space left"),
    "minutes_critical": FactSpec(
        float, "host", "minutes since the coordinator first reported the host critical", nonnegative=True
    ),
    "minutes_in_ladder": FactSpec(
        float, "host", "minutes since this host's ladder started", nonnegative=True
    ),
    "ladder_step": FactSpec(str, "host", "the ladder step running or last run", values=LADDER_STEP_VALUES),
    "ladder_outcome": FactSpec(str, "host", "where the ladder stands", values=LADDER_OUTCOMES),
    "attempts": FactSpec(int, "host", "attempts made of the current step", nonnegative=True),
    "checklist_complete": FactSpec(
        bool, "host", "every item of the runbook's Data Recovery Checklist is done"
    ),
    "recovered_games": FactSpec(int, "host", "games recovered by rsync and import", nonnegative=True),
    "data_recoverable": FactSpec(
        bool, "host", "false when the instance is terminated or the host is otherwise unrecoverable"
    ),
    "selfplay_paused": FactSpec(bool, "host", "the remediator paused selfplay on this host"),
    # Fleet-wide: the fleet view's sliding window and the escalation checks (runbook Escalation 1-4).
    "critical_hosts": FactSpec(
        int,
        "fleet",
        "distinct hosts that went critical within the fleet window and are still critical",
        nonnegative=True,
    ),
    "storm_active": FactSpec(bool, "fleet", "critical_hosts is at least fleet.storm_threshold"),
    "cluster_network_ok": FactSpec(bool, "fleet", "the cluster-wide network check passed"),
    "provider_status_ok": FactSpec(bool, "fleet", "every cloud provider's status page reports no incident"),
    "paused_hosts": FactSpec(int, "fleet", "hosts on which the remediator paused selfplay", nonnegative=True),
    "unsynced_games_at_risk": FactSpec(
        int, "fleet", "sum of unsynced_games diagnosed on the window's critical hosts", nonnegative=True
    ),
    "unrecoverable_hosts": FactSpec(
        int, "fleet", "critical hosts in the window whose data_recoverable is false", nonnegative=True
    ),
}


def type_name(spec: FactSpec) -> str:
    """The YAML-facing name of a fact's type: bool, int, float (a number) or str."""
    return spec.type.__name__


def fits(spec: FactSpec, value: object) -> bool:
    """Whether ``value`` has the fact's type (bool is never a number; an int is a float)."""
    if spec.type is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if spec.type is float:
        return isinstance(value, int | float)
    return isinstance(value, spec.type)
