"""The fleet probe's findings in Redis: written by a worker's pass (``workers/probe.py``), read by every
receiver for ``/metrics`` and the API, so any replica exports the same truth.

A host's entry says ``reachable`` and ``agent_running``, each true, false or null (the probe could not
decide: no address, the agent check timed out or could not run). Null is never exported as 0 or 1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily, Metric

from remediator import keys
from remediator.connections import text


@dataclass(frozen=True)
class HostProbe:
    """What one pass found on one host; ``seconds`` is how long that host's check took."""

    host_id: str
    reachable: bool | None
    agent_running: bool | None
    at: float
    seconds: float
    retired: bool = False
    error: str | None = None


@dataclass(frozen=True)
class ProbePass:
    """One pass over the fleet: when it started and ended, and each host's finding."""

    started_at: float
    finished_at: float
    hosts: dict[str, HostProbe]


def save(conn: redis.Redis, found: ProbePass) -> None:
    """Replace the last pass's findings with this one's (a host the coordinator dropped disappears)."""
    with conn.pipeline() as pipe:
        pipe.delete(keys.PROBE_HOSTS)
        if found.hosts:
            pipe.hset(keys.PROBE_HOSTS, mapping={h: json.dumps(asdict(p)) for h, p in found.hosts.items()})
        pipe.hset(
            keys.PROBE,
            mapping={
                "started_at": f"{found.started_at:.3f}",
                "finished_at": f"{found.finished_at:.3f}",
                "hosts": len(found.hosts),
            },
        )
        pipe.execute()


def last_pass(conn: redis.Redis) -> dict[str, float] | None:
    """``started_at``, ``finished_at`` (unix seconds) and ``hosts`` of the last finished pass, or None."""
    raw = conn.hgetall(keys.PROBE)
    if b"finished_at" not in raw:
        return None
    wanted = ("started_at", "finished_at", "hosts")
    return {text(k): float(v) for k, v in raw.items() if text(k) in wanted}


def findings(conn: redis.Redis) -> dict[str, HostProbe]:
    """Each host's finding in the last pass."""
    out = {}
    for host, raw in conn.hgetall(keys.PROBE_HOSTS).items():
        out[text(host)] = HostProbe(**json.loads(raw))
    return out


def _gauge(name: str, doc: str, values: Mapping[str, bool | None]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=["host_id"])
    for host, value in sorted(values.items()):
        if value is not None:  # undecided: no sample, never a 0 or a 1
            family.add_metric([host], 1.0 if value else 0.0)
    return family


def metric_families(conn: redis.Redis) -> Iterator[Metric]:
    """The probe's gauges; every family is present, with no samples before the first pass."""
    found = findings(conn)
    yield _gauge(
        "remediator_host_reachable",
        "1 when the fleet probe's SSH echo OK succeeded on the host, 0 when it failed; no sample: undecided.",
        {h: p.reachable for h, p in found.items()},
    )
    yield _gauge(
        "remediator_host_agent_running",
        "1 when the agent check found the sync agent running, 0 when not; no sample: undecided "
        "(unreachable host, check timed out or could not run).",
        {h: p.agent_running for h, p in found.items()},
    )
    last = last_pass(conn)
    family = GaugeMetricFamily(
        "remediator_probe_last_run_timestamp_seconds",
        "When the last fleet probe pass finished (unix seconds); no sample before the first pass.",
    )
    if last is not None:
        family.add_metric([], last["finished_at"])
    yield family


def summary(conn: redis.Redis, now: float | None = None) -> dict[str, Any]:
    """The last pass as the API shows it: counts by state, and each host's finding."""
    last = last_pass(conn)
    found = findings(conn)
    now = time.time() if now is None else now

    def state(value: bool | None) -> str:
        return "unknown" if value is None else "yes" if value else "no"

    return {
        "last_pass": last,
        "age_seconds": round(now - last["finished_at"], 3) if last else None,
        "hosts": {
            h: {"reachable": state(p.reachable), "agent_running": state(p.agent_running), "at": p.at}
            for h, p in sorted(found.items())
        },
    }
