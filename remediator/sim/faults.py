"""Fault injection over HTTP (``POST /sim/faults`` on the coordinator, X-Admin-Key protected).

The body names a fault and its arguments, e.g. ``{"fault": "kill_agent", "host_id": "host-02"}`` or
``{"fault": "coordinator_fault", "status": 503}``; each maps to the ``SimCluster`` method of that name.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from remediator.sim.cluster import SimCluster

FAULTS = frozenset(
    {
        "kill_agent",
        "wedge_agent",
        "agent_dies_after_restart",
        "make_unreachable",
        "make_reachable",
        "hang_host",
        "retire",
        "retired_host_back_online",
        "disk_full",
        "systemctl_missing",
        "terminate_instance",
        "stop_instance",
        "start_instance",
        "provider_outage",
        "provider_answer",
        "coordinator_fault",
        "network_down",
        "make_critical",
        "make_lagging",
        "start_agent",
    }
)


def apply_fault(sim: SimCluster, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Call the fault method; ValueError/TypeError (answered 400) for an unknown fault or bad arguments."""
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}; one of: {', '.join(sorted(FAULTS))}")
    method = getattr(sim, name)
    try:
        bound = inspect.signature(method).bind(**args)
    except TypeError as exc:
        raise TypeError(f"fault {name!r}: {exc}") from None
    result = method(*bound.args, **bound.kwargs)
    return {"fault": name, "applied": True, "args": args, "result": result}
