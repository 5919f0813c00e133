"""What a reader without the read token sees of a host: where its ladder stands, nothing a host said.

``/api/v1`` reads and ``/ui`` answer the full state and the audit's evidence only to a reader with the
read token (``REMEDIATOR_READ_TOKEN``) or the admin token. Everyone else gets this summary: the host,
its status, step, attempt and outcome, its progress along the ladder, and for each audit entry its time,
step and outcome. Evidence is what the hosts, the coordinator and the configuration say: SSH users,
addresses and ports, log lines, error bodies, data paths, agent commands, operators' addresses.

Everything here is an allow-list, so a field added to the state, an audit entry or the host detail later
stays out of the summary until it is added here on purpose.
"""

from __future__ import annotations

from typing import Any

SUMMARY = "summary"
DETAIL = "detail"

# Host state fields a summary shows: the ladder's own bookkeeping, no text from outside.
STATE_FIELDS = (
    "host_id",
    "status",
    "step",
    "phase",
    "attempt",
    "outcome",
    "ladder_id",
    "job_id",
    "started_at",
    "updated_at",
    "finished_at",
    "next_check_at",
    "dry_run",
)
AUDIT_FIELDS = ("ts", "step", "outcome")  # of each audit entry
# Of a host detail; ``advice`` is the closed set of texts of remediator/advice.py.
DETAIL_FIELDS = ("host_id", "progress", "audit_total", "audit_offset", "audit_limit", "advice")
# Of an open page in the fleet view: not its summary, which carries the ladder's escalation reason (what
# a step reported, text from outside).
PAGE_FIELDS = (
    "dedup_key",
    "kind",
    "severity",
    "state",
    "rule",
    "hosts",
    "host_states",
    "opened_at",
    "delivered_at",
)
INCIDENT_FIELDS = ("host_id", "incident_id", "state", "opened_at")  # of an open incident in the fleet view
# Of a host's incident: its states and times, the kinds and outcomes of its ladders, its pages' keys and
# delivery; not who opened or closed it (an operator's address), nor a ladder's reason or detail text.
HOST_INCIDENT_FIELDS = (
    "id",
    "host_id",
    "state",
    "opened_at",
    "alerts",
    "last_alert_at",
    "held_since",
    "healthy_since",
    "closed_at",
    "cleanup",
    "page",
    "pages",
    "paged",
)
LADDER_REF_FIELDS = ("ladder_id", "kind", "started_at", "outcome", "finished_at")
PAGE_RECORD_FIELDS = ("dedup_key", "kind", "state", "paged", "delivered_at", "resolved_at")


def summary_incident(incident: dict[str, Any] | None) -> dict[str, Any] | None:
    """A host incident (``ops.incident_detail``) cut to what a reader without the read token may see."""
    if incident is None:
        return None
    out = {name: incident[name] for name in HOST_INCIDENT_FIELDS if name in incident}
    out["ladders"] = [{k: r[k] for k in LADDER_REF_FIELDS if k in r} for r in incident.get("ladders", [])]
    out["page_records"] = [
        {k: p[k] for k in PAGE_RECORD_FIELDS if k in p} for p in incident.get("page_records", [])
    ]
    return out


def summary_state(state: dict[str, Any]) -> dict[str, Any]:
    """A host's state (or the list's summary of it, with ``progress``) cut to the summary fields."""
    out = {name: state[name] for name in STATE_FIELDS if name in state}
    if "progress" in state:
        out["progress"] = state["progress"]
    return out


def summary_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """``ops.host_detail`` (with its page fields) as a reader without the read token sees it."""
    out = {name: detail[name] for name in DETAIL_FIELDS if name in detail}
    out["state"] = summary_state(detail["state"])
    out["audit"] = [{k: e[k] for k in AUDIT_FIELDS if k in e} for e in detail["audit"]]
    if "incident" in detail:
        out["incident"] = summary_incident(detail["incident"])
        out["incidents"] = [summary_incident(i) for i in detail.get("incidents", [])]
    out["view"] = SUMMARY
    return out


def summary_fleet(fleet: dict[str, Any]) -> dict[str, Any]:
    """``ops.fleet_summary`` as a reader without the read token sees it: open pages without their text."""
    pages = [{k: p[k] for k in PAGE_FIELDS if k in p} for p in fleet.get("open_pages", [])]
    incidents = [{k: i[k] for k in INCIDENT_FIELDS if k in i} for i in fleet.get("open_incidents", [])]
    return {**fleet, "open_pages": pages, "open_incidents": incidents, "view": SUMMARY}
