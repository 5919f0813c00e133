"""Recommendations a host's page shows, from what diagnosis found.

Each is one of a closed set of texts written here, chosen by facts of the rules vocabulary: nothing a
host, the coordinator or the configuration said, so every reader may see them (remediator.disclosure).
"""

from __future__ import annotations

from typing import Any

# Runbook Prevention 4: "Use systemd/supervisor for sync agents".
SUPERVISE_AGENT = {
    "id": "supervise-agent",
    "title": "Run the sync agent under a supervisor that restarts it",
    "text": (
        "Diagnosis found no restart policy for the sync agent (runbook Prevention 4): a crashed agent "
        "stays dead until the host goes critical. Run it as the systemd unit ringrift-sync-agent with "
        "Restart=on-failure (or Restart=always), or under supervisord with autorestart=true."
    ),
}


def for_host(state: dict[str, Any]) -> list[dict[str, str]]:
    """What to recommend for a host with this state (its ``facts`` from the last diagnosis)."""
    facts = state.get("facts") or {}
    advice = []
    if facts.get("agent_auto_restart") is False:  # unknown (no sample, no answer) recommends nothing
        advice.append(SUPERVISE_AGENT)
    return advice
