"""Prometheus metrics, correct under gunicorn's processes and RQ's forked work horses.

Two kinds, by where they happen:
- the receiver's own (webhook requests, alerts, API requests, rules reloads) are prometheus_client
  metrics; with ``PROMETHEUS_MULTIPROC_DIR`` set (``remediator serve`` sets it) gunicorn's processes
  write them to files there and ``/metrics`` aggregates them;
- what the workers do (ladders, steps and their durations, pages, lock contention) is counted in Redis
  (``count`` / ``observe``) and exported by every receiver at scrape time, like the queue gauges. RQ
  forks a work horse per job, and workers run in other pods than the receiver: counters kept in the
  horse's memory or files would be lost or never scraped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from remediator.connections import text

WEBHOOK_REQUESTS = Counter("remediator_webhook_requests_total", "Webhook requests by answer code.", ["code"])
ALERTS = Counter(
    "remediator_alerts_total", "Alerts received, by alert status and what was done.", ["status", "outcome"]
)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the exposition format render() writes
COUNTS = "remediator:metrics"  # Redis hash: "<metric>|<label>=<value>,..." -> value
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)  # seconds
# The worker-side metrics kept in Redis: name -> (help text, labels, kind).
REDIS_METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "remediator_ladders": ("Ladders finished, by outcome.", ("outcome",), "counter"),
    "remediator_steps": ("Ladder steps run, by step and result.", ("step", "result"), "counter"),
    "remediator_step_duration_seconds": ("Time one ladder step took.", ("step",), "histogram"),
    "remediator_pages": (
        "Pages sent, by pager, action and result.",
        ("pager", "action", "result"),
        "counter",
    ),
    "remediator_lock_contention": ("Times a worker found a host already locked by another.", (), "counter"),
    "remediator_rung_outcomes": (
        "Finished ladders by failure signature and rung (its lead step): whether that rung healed the host.",
        ("signature", "step", "result"),
        "counter",
    ),
    "remediator_time_to_healthy_seconds": (
        "From a rung's first step to its host healthy, by failure signature and the rung's lead step.",
        ("signature", "step"),
        "histogram",
    ),
}


def field(name: str, labels: dict[str, str]) -> str:
    return name + "|" + ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def count(conn: redis.Redis, name: str, amount: float = 1.0, **labels: str) -> None:
    """Add to a worker-side counter (see REDIS_METRICS); label values are our own names, never input."""
    conn.hincrbyfloat(COUNTS, field(name, labels), amount)


def observe(conn: redis.Redis, name: str, value: float, **labels: str) -> None:
    """Record one observation of a worker-side histogram (cumulative buckets, like Prometheus)."""
    pipe = conn.pipeline(transaction=False)
    for bound in (*STEP_BUCKETS, float("inf")):
        if value <= bound:
            pipe.hincrbyfloat(COUNTS, field(name + "_bucket", {**labels, "le": str(bound)}), 1)
    pipe.hincrbyfloat(COUNTS, field(name + "_sum", labels), value)
    pipe.hincrbyfloat(COUNTS, field(name + "_count", labels), 1)
    pipe.execute()


RULES_RELOAD_FAILURES = Counter(
    "remediator_rules_reload_failures_total",
    "Rules files that failed to load on reload (the old rules stay).",
)
API_REQUESTS = Counter(
    "remediator_api_requests_total", "API requests by endpoint and code.", ["endpoint", "code"]
)


class RedisStateCollector:
    """Gauges read from Redis at scrape time, so every process reports the same truth."""

    def __init__(self, conn: redis.Redis, queue_name: str) -> None:
        self.conn = conn
        self.queue_name = queue_name

    def collect(self) -> Iterator[Metric]:
        from rq import Queue, Worker
        from rq.registry import ScheduledJobRegistry, StartedJobRegistry

        from remediator import keys
        from remediator.intake import DISCOVERY

        depth = GaugeMetricFamily("remediator_queue_depth", "Jobs waiting, by state.", labels=["state"])
        queue = Queue(self.queue_name, connection=self.conn)
        depth.add_metric(["queued"], queue.count)
        depth.add_metric(["scheduled"], ScheduledJobRegistry(queue=queue).count)
        depth.add_metric(["started"], StartedJobRegistry(queue=queue).count)
        yield depth
        active = sum(1 for _ in self.conn.scan_iter(match=keys.ACTIVE.format("*"), count=1000))
        if self.conn.exists(keys.ACTIVE.format(DISCOVERY)):  # the discovery guard is not a host
            active -= 1
        yield GaugeMetricFamily(
            "remediator_hosts_in_remediation", "Hosts with a ladder queued or running.", value=active
        )
        yield GaugeMetricFamily(
            "remediator_workers",
            "RQ workers alive on the remediator's queue.",
            value=Worker.count(queue=queue),
        )
        yield self._frozen()
        yield GaugeMetricFamily(
            "remediator_paused_hosts",
            "Hosts on which the remediator paused selfplay.",
            value=self.conn.scard(keys.PAUSED),
        )
        yield from redis_metric_families(self.conn)
        from remediator import probe

        yield from probe.metric_families(self.conn)

    def _frozen(self) -> Metric:
        """1 while the automation is frozen: fleet-wide (host_id ""), and per host frozen on its own."""
        from remediator import controls

        family = GaugeMetricFamily(
            "remediator_automation_frozen",
            "1 while mutating steps are frozen (remediator freeze), fleet-wide (host_id empty) or per host.",
            labels=["host_id"],
        )
        items = [f for f in controls.freezes(self.conn) if f.active()]
        family.add_metric([""], float(any(f.scope == controls.FLEET for f in items)))
        for item in items:
            if item.scope != controls.FLEET:
                family.add_metric([item.scope], 1.0)
        return family


def redis_metric_families(conn: redis.Redis) -> list[Metric]:
    """The worker-side metrics, read from Redis. Every metric is present, with no samples if unused."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for raw_field, raw_value in conn.hgetall(COUNTS).items():
        name, _, label_text = text(raw_field).partition("|")
        labels = dict(pair.split("=", 1) for pair in label_text.split(",") if pair)
        samples.setdefault(name, []).append((labels, float(raw_value)))
    families: list[Metric] = []
    for name, (doc, labelnames, kind) in REDIS_METRICS.items():
        family: CounterMetricFamily | HistogramMetricFamily
        if kind == "counter":
            family = CounterMetricFamily(name, doc, labels=labelnames)
            for labels, value in samples.get(name, []):
                family.add_metric([labels.get(k, "") for k in labelnames], value)
        else:
            family = HistogramMetricFamily(name, doc, labels=labelnames)
            sums = {
                tuple(labels.get(k, "") for k in labelnames): v
                for labels, v in samples.get(name + "_sum", [])
            }
            buckets: dict[tuple[str, ...], list[tuple[str, float]]] = {}
            for labels, value in samples.get(name + "_bucket", []):
                key = tuple(labels.get(k, "") for k in labelnames)
                buckets.setdefault(key, []).append((labels["le"], value))
            for key, pairs in buckets.items():
                pairs.sort(key=lambda p: float(p[0]))
                family.add_metric(
                    list(key), [(("+Inf" if le == "inf" else le), v) for le, v in pairs], sums.get(key, 0.0)
                )
        families.append(family)
    return families


def render(conn: redis.Redis | None = None, queue_name: str | None = None) -> bytes:
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
        except redis.RedisError:
            # Redis down must not break the scrape of the receiver's own counters.
            text += b"# remediator: Redis state gauges unavailable\n"
    return text
