"""What each rung of the ladder achieved, per failure signature: the counters learning reads and
``GET /api/v1/stats`` shows.

A finished ladder adds, for each rung it entered (named by its lead step), one ``tried`` and — for the
rung during which the host became healthy — one ``healed`` with the seconds from that rung's first step
to healthy. Signatures and step names are the remediator's own vocabulary, never text from outside.
"""

from __future__ import annotations

import statistics
from typing import Any

import redis

from remediator import keys
from remediator.connections import text

TIMES_KEPT = 200  # newest seconds-to-healthy samples kept per signature and step


def _field(signature: str, step: str, what: str) -> str:
    return f"{signature}|{step}|{what}"


def add(conn: redis.Redis, signature: str, step: str, healed: bool, seconds: float | None = None) -> None:
    """Count one ladder of ``signature`` that tried the rung led by ``step``."""
    with conn.pipeline() as pipe:
        pipe.hincrby(keys.LEARNING, _field(signature, step, "tried"), 1)
        if healed:
            pipe.hincrby(keys.LEARNING, _field(signature, step, "healed"), 1)
            if seconds is not None:
                times = keys.LEARNING_TIMES.format(f"{signature}|{step}")
                pipe.lpush(times, f"{max(0.0, seconds):.3f}")
                pipe.ltrim(times, 0, TIMES_KEPT - 1)
        pipe.execute()


def table(conn: redis.Redis) -> dict[str, dict[str, dict[str, Any]]]:
    """signature -> lead step -> {tried, healed, success_rate, median_seconds_to_healthy}."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for raw, value in conn.hgetall(keys.LEARNING).items():
        signature, step, what = text(raw).rsplit("|", 2)
        counts.setdefault((signature, step), {})[what] = int(value)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (signature, step), c in sorted(counts.items()):
        tried, healed = c.get("tried", 0), c.get("healed", 0)
        times = [float(t) for t in conn.lrange(keys.LEARNING_TIMES.format(f"{signature}|{step}"), 0, -1)]
        out.setdefault(signature, {})[step] = {
            "tried": tried,
            "healed": healed,
            "success_rate": round(healed / tried, 4) if tried else None,
            "median_seconds_to_healthy": round(statistics.median(times), 3) if times else None,
        }
    return out


def as_rows(found: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The table as a list, one row per signature and step, for the API and the status page."""
    return [
        {"signature": sig, "step": step, **row} for sig, steps in found.items() for step, row in steps.items()
    ]
