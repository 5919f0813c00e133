"""The ladder's steps, one module each, registered in one dict (order of preference in ladder.py)."""

from __future__ import annotations

from types import ModuleType

from workers.steps import (
    escalate,
    force_sync,
    recover_data,
    restart_agent,
    retire,
    unretire,
    wait_reachable,
)

STEPS: dict[str, ModuleType] = {
    "force_sync": force_sync,
    "restart_agent": restart_agent,
    "recover_data": recover_data,
    "unretire": unretire,
    "retire": retire,
    "wait_reachable": wait_reachable,
    "escalate": escalate,
}
