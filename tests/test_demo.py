"""``remediator demo`` runs the product end to end on this machine and finishes every ladder."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_demo_finishes_every_ladder_with_the_expected_outcomes():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REMEDIATOR_", "REDIS_URL"))}
    proc = subprocess.run(
        [sys.executable, "-m", "remediator", "demo", "--json", "--timeout", "150"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    outcomes = {h["host_id"]: h["outcome"] for h in summary["hosts"]}
    assert outcomes == {
        "agent-dead": "healthy",
        "agent-wedged": "healthy",
        "retired-back": "healthy",
        "terminated": "escalated",
        "healthy": "healthy",
    }
    assert "real Alertmanager" in proc.stderr
