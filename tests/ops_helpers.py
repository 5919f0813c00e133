"""Builders shared by the operator-surface tests (API, status page, OpenAPI, CLI)."""

from __future__ import annotations

import pytest
import redis
from helpers import ADMIN_TOKEN, READ_TOKEN, make_settings  # noqa: F401 - re-exported for the ops tests
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.registry import FailedJobRegistry

from remediator import keys, store
from remediator.intake import LadderRequest, start_ladders

QUEUE = "remediator"


def admin(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def reader(token: str = READ_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def start_ladder(conn: redis.Redis, host_id: str) -> str:
    """Start a ladder for ``host_id`` the way the receiver does; returns its ladder id (= first job id)."""
    result = start_ladders(conn, QUEUE, [LadderRequest(host_id=host_id, reason="test")])
    return result.accepted[0]["ladder_id"]


def run_jobs_failing(conn: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every queued job in a real RQ worker whose environment is misconfigured, so each job fails.

    ``Context.current()`` reads the settings inside the job: an invalid REMEDIATOR_DRY_RUN makes it raise
    ConfigError, exactly as a worker deployed with a broken config would, and RQ files the job as failed.
    """
    with monkeypatch.context() as patch:
        patch.setenv("REMEDIATOR_DRY_RUN", "not-a-boolean")
        SimpleWorker([Queue(QUEUE, connection=conn)], connection=conn).work(burst=True)


def failed_ids(conn: redis.Redis) -> list[str]:
    return FailedJobRegistry(QUEUE, connection=conn).get_job_ids()


def live_jobs(conn: redis.Redis) -> dict[str, list[str]]:
    """Queued ladder jobs by host."""
    out: dict[str, list[str]] = {}
    for job_id in Queue(QUEUE, connection=conn).job_ids:
        job = Job.fetch(job_id, connection=conn)
        out.setdefault(job.args[0], []).append(job_id)
    return out


def seed_host(conn: redis.Redis, host_id: str = "gpu-node-07") -> str:
    """A host whose ladder diagnosed it, climbed past force_sync and now runs restart_agent."""
    ladder_id = "ladder" + host_id.replace(".", "").replace("-", "")[:20]
    conn.set(keys.ACTIVE.format(host_id), ladder_id)
    store.update_host(
        conn,
        host_id,
        ladder_id=ladder_id,
        job_id="job-restart-1",
        status="running",
        step="restart_agent",
        phase="run",
        attempt=1,
        rung=1,
        pos=0,
        outcome="running",
        started_at="1800000000.000",
        reason="CriticalSyncHosts firing",
        plan=[["force_sync"], ["restart_agent", "force_sync"], ["recover_data", "escalate"], ["escalate"]],
        facts={"ssh_reachable": True, "agent_running": True, "unsynced_games": 412},
    )
    store.append_audit(conn, host_id, "intake", "queued", "CriticalSyncHosts firing", job_id=ladder_id)
    store.append_audit(
        conn,
        host_id,
        "diagnose",
        "done",
        "plan: force_sync | restart_agent+force_sync",
        ladder_id=ladder_id,
        facts={"unsynced_games": 412, "ssh_reachable": True},
    )
    store.append_audit(
        conn,
        host_id,
        "force_sync",
        "ran",
        "coordinator accepted a forced sync",
        ladder_id=ladder_id,
        attempt=1,
    )
    store.append_audit(
        conn,
        host_id,
        "force_sync",
        "verify-failed",
        "not verified within 300s: last_sync did not advance",
        ladder_id=ladder_id,
        last_sync_before=1799999000.0,
        last_sync_after=1799999000.0,
    )
    return ladder_id


# What a reader without the read token must never see of a seeded host (seed_evidence): the SSH user,
# address and port, data paths, host and coordinator log lines, a coordinator error body, an operator's
# address, the configured agent commands and what they printed.
PRIVATE = [
    "10.20.30.40",
    "ringrift@",
    "ssh_user",
    "ssh_port",
    "/data/selfplay",
    "HOST-LOG-LINE-7731",
    "COORD-LOG-LINE-4402",
    "COORD-ERROR-BODY-5521",
    "203.0.113.77",
    "systemctl restart",
    "pgrep -f",
    "Unit ringrift-sync-agent.service not found",
]


def seed_evidence(conn: redis.Redis, host_id: str = "gpu-node-07") -> str:
    """``seed_host`` plus the evidence real ladders record, in the shapes diagnose and the steps write
    it (every PRIVATE string is in it); returns the ladder id."""
    ladder_id = seed_host(conn, host_id)
    store.append_audit(
        conn,
        host_id,
        "intake",
        "queued",
        "manual remediate by ui (203.0.113.77)",
        job_id="job-manual-2",
    )
    store.append_audit(
        conn,
        host_id,
        "diagnose",
        "done",
        "plan: restart_agent+force_sync",
        ladder_id=ladder_id,
        sources={
            "ssh": "ssh ringrift@10.20.30.40:48213 echo OK",
            "inventory": "/data/selfplay on host at 1800000000",
            "agent": "pgrep -f sync_agent -> exit 1",
        },
        host_log_tail=["05:00:01 sync_agent: upload failed: No route to host HOST-LOG-LINE-7731"],
        coordinator_log_tail=[f"coordinator: {host_id} sync refused COORD-LOG-LINE-4402"],
        record={
            "address": "10.20.30.40",
            "ssh_user": "ringrift",
            "ssh_port": 48213,
            "data_dir": "/data/selfplay",
        },
    )
    store.append_audit(
        conn,
        host_id,
        "restart_agent",
        "failed",
        "systemctl restart ringrift-sync-agent: exit 5",
        ladder_id=ladder_id,
        stderr="Failed to restart: Unit ringrift-sync-agent.service not found.",
    )
    store.append_audit(
        conn,
        host_id,
        "force_sync",
        "failed",
        "coordinator answered 500: COORD-ERROR-BODY-5521",
        ladder_id=ladder_id,
    )
    store.update_host(
        conn,
        host_id,
        outcome_detail="coordinator answered 500: COORD-ERROR-BODY-5521",
        reason="manual remediate by ui (203.0.113.77)",
        waiting_for="ssh ringrift@10.20.30.40:48213 not reachable yet",
        last_verify="HOST-LOG-LINE-7731",
    )
    return ladder_id
