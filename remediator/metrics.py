"""Prometheus metrics, correct under gunicorn's processes and RQ's forked work horses.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (``remediator serve`` and ``remediator worker`` set it), every
process writes its samples to files there and ``/metrics`` aggregates them.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

WEBHOOK_REQUESTS = Counter("remediator_webhook_requests_total", "Webhook requests by answer code.", ["code"])
ALERTS = Counter(
    "remediator_alerts_total", "Alerts received, by alert status and what was done.", ["status", "outcome"]
)
LADDERS = Counter("remediator_ladders_total", "Ladders finished, by outcome.", ["outcome"])
STEPS = Counter("remediator_steps_total", "Ladder steps run, by step and result.", ["step", "result"])
STEP_SECONDS = Histogram(
    "remediator_step_duration_seconds",
    "Time one ladder step took.",
    ["step"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
LOCK_CONTENTION = Counter(
    "remediator_lock_contention_total", "Times a worker found a host already locked by another."
)
PAGES = Counter("remediator_pages_total", "Pages sent, by pager and result.", ["pager", "action", "result"])
RULES_RELOAD_FAILURES = Counter(
    "remediator_rules_reload_failures_total",
    "Rules files that failed to load on reload (the old rules stay).",
)
API_REQUESTS = Counter(
    "remediator_api_requests_total", "API requests by endpoint and code.", ["endpoint", "code"]
)


class RedisStateCollector:
    """Gauges read from Redis at scrape time, so every process reports the same truth."""

    def __init__(self, conn, queue_name: str) -> None:
        self.conn = conn
        self.queue_name = queue_name

    def collect(self):
        from rq import Queue, Worker
        from rq.registry import ScheduledJobRegistry, StartedJobRegistry

        from remediator import keys

        depth = GaugeMetricFamily("remediator_queue_depth", "Jobs waiting, by state.", labels=["state"])
        queue = Queue(self.queue_name, connection=self.conn)
        depth.add_metric(["queued"], queue.count)
        depth.add_metric(["scheduled"], ScheduledJobRegistry(queue=queue).count)
        depth.add_metric(["started"], StartedJobRegistry(queue=queue).count)
        yield depth
        active = sum(1 for _ in self.conn.scan_iter(match=keys.ACTIVE.format("*"), count=1000))
        if self.conn.exists(keys.ACTIVE.format("_discovery")):
            active -= 1
        yield GaugeMetricFamily(
            "remediator_hosts_in_remediation", "Hosts with a ladder queued or running.", value=active
        )
        yield GaugeMetricFamily(
            "remediator_workers",
            "RQ workers alive on the remediator's queue.",
            value=Worker.count(queue=queue),
        )
        yield GaugeMetricFamily(
            "remediator_paused_hosts",
            "Hosts on which the remediator paused selfplay.",
            value=self.conn.scard(keys.PAUSED),
        )


def render(conn=None, queue_name: str | None = None) -> bytes:
    """The exposition text: this process's (or all processes') metrics plus the Redis gauges."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    text = generate_latest(registry)
    if conn is not None and queue_name:
        extra = CollectorRegistry()
        extra.register(RedisStateCollector(conn, queue_name))
        try:
            text += generate_latest(extra)
        except Exception:
            text += b"# remediator: Redis state gauges unavailable\n"
    return text
