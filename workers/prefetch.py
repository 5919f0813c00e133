"""A storm's first diagnoses, many hosts at a time, ahead of their ladders (runbook Diagnosis 1-4).

Each ladder diagnoses its own host in its own work horse: one host per process at a time, so a
1,000-host storm took twenty times as long to diagnose as one process needs to reach every host. When
one intake starts ``PREFETCH_MIN_HOSTS`` ladders or more, it also queues prefetch jobs at the front of
the queue (``remediator.intake.queue_prefetch``), ``PREFETCH_CHUNK`` hosts each. A prefetch job
diagnoses its hosts ``PREFETCH_THREADS`` at a time (the fleet probe's pattern, under the same
fleet-wide SSH limit) and stores each diagnosis for its ladder; the ladder's first diagnosis takes the
stored one instead of connecting again, and goes on from there exactly as from its own.

Who diagnoses a host first is decided by a claim on the ladder's id (``SET NX``): the prefetch job or
the ladder itself, whichever comes first. A ladder that finds its host claimed by a prefetch job waits
for the stored diagnosis, at most ``CLAIM_TTL`` seconds, and diagnoses the host itself if none comes (a
prefetch job killed mid-way). A diagnosis is read-only: the worst case is a host diagnosed twice, never
a step taken on a diagnosis the ladder did not ask for. Only a ladder's first diagnosis is ever
prefetched, and only one made after the ladder began is used; every later one (after a step, to
verify) is the ladder's own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from remediator import keys
from remediator.connections import text
from workers.context import Context
from workers.diagnose import Diagnosis, diagnose
from workers.state import LadderState

log = logging.getLogger("remediator.prefetch")

PREFETCH_THREADS = 16  # hosts one prefetch job diagnoses at once (SSH sessions stay under the fleet limit)
CLAIM_TTL = 60  # seconds a claim lives: a ladder waits at most this long for a prefetched diagnosis
RESULT_TTL = 600  # seconds a prefetched diagnosis waits for its ladder
POLL = 0.05  # seconds between two looks of a waiting ladder
PREFETCH = "prefetch"  # the claim of a prefetch job (a ladder's claim is its job id)


def diagnose_many(ctx: Context, ladders: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Diagnose the hosts of ``ladders`` (host id, ladder id) whose ladder still waits for its first
    diagnosis, ``PREFETCH_THREADS`` at a time; store each for its ladder. Returns counts."""
    waiting = _still_waiting(ctx, ladders)
    done = {"diagnosed": 0, "claimed": 0, "failed": 0, "not waiting": len(ladders) - len(waiting)}
    if not waiting:
        return done
    ctx.clients  # noqa: B018 -- built once here, not by the first threads at once
    with ThreadPoolExecutor(min(PREFETCH_THREADS, len(waiting)), thread_name_prefix="prefetch") as pool:
        for outcome in pool.map(lambda ladder: _one(ctx, *ladder), waiting):
            done[outcome] += 1
    return done


def _still_waiting(ctx: Context, ladders: Sequence[tuple[str, str]]) -> list[tuple[str, str, float]]:
    """(host, ladder, started_at) of each ladder that is still the host's, not being stopped, and has no
    facts yet."""
    pipe = ctx.conn.pipeline(transaction=False)
    for host_id, _ in ladders:
        pipe.hmget(keys.HOST.format(host_id), "ladder_id", "status", "facts", "started_at")
        pipe.get(keys.CANCEL.format(host_id))
    found = pipe.execute()
    waiting = []
    for (host_id, ladder_id), state, cancel in zip(ladders, found[::2], found[1::2], strict=True):
        current, status, facts, started = state
        if current is None or text(current) != ladder_id or text(status or b"") == "finished":
            continue  # ended, or replaced by a newer ladder
        if cancel is not None and text(cancel) == ladder_id:
            continue  # its alert resolved: the ladder stops at its next step without a diagnosis
        if facts and json.loads(facts):
            continue  # its ladder diagnosed it already
        waiting.append((host_id, ladder_id, float(started or 0.0)))
    return waiting


def _one(ctx: Context, host_id: str, ladder_id: str, started_at: float) -> str:
    if not ctx.conn.set(keys.PREFETCH_CLAIM.format(ladder_id), PREFETCH, nx=True, ex=CLAIM_TTL):
        return "claimed"  # the ladder got there first
    try:
        diag = diagnose(ctx, host_id, since=started_at or None)
        diag.sources["prefetch"] = f"diagnosed ahead of its ladder by prefetch job {ctx.job_id}"
        stored = json.dumps(
            {"ladder_id": ladder_id, "done_at": time.time(), "diagnosis": dataclasses.asdict(diag)}
        )
        pipe = ctx.conn.pipeline(transaction=True)
        pipe.set(keys.PREFETCHED.format(ladder_id), stored, ex=RESULT_TTL)
        pipe.delete(keys.PREFETCH_CLAIM.format(ladder_id))
        pipe.execute()
    except Exception:
        # Its ladder must not wait out the claim for nothing: it diagnoses the host itself.
        log.exception("prefetch: diagnosing %s for ladder %s failed", host_id, ladder_id)
        ctx.conn.delete(keys.PREFETCH_CLAIM.format(ladder_id))
        return "failed"
    return "diagnosed"


def diagnosis_for(ctx: Context, host_id: str, state: LadderState) -> tuple[Diagnosis, float]:
    """A ladder's diagnosis of its host and when it was made: for its first (no facts yet), the one a
    prefetch job made if there is one; every other is the ladder's own, made now."""
    ladder_id, since = state.ladder_id, state.started_at
    if state.facts:
        return diagnose(ctx, host_id, since=since), time.time()
    claim = keys.PREFETCH_CLAIM.format(ladder_id)
    deadline = time.monotonic() + CLAIM_TTL
    while True:
        found = _take(ctx, ladder_id, since)
        if found is not None:
            return found
        if ctx.conn.set(claim, f"ladder:{ctx.job_id or ''}", nx=True, ex=CLAIM_TTL):
            break  # ours: no prefetch job will diagnose the host
        holder = ctx.conn.get(claim)
        if holder is None:
            continue  # released this moment: the prefetched diagnosis may be stored now
        if text(holder) != PREFETCH:
            break  # an earlier job of this ladder claimed it and was cut off: diagnose here
        if time.monotonic() > deadline:
            log.warning("prefetch: no diagnosis of %s came in %ss; diagnosing it here", host_id, CLAIM_TTL)
            break
        time.sleep(POLL)  # a prefetch job is diagnosing the host now
    diag = diagnose(ctx, host_id, since=since)
    return diag, time.time()


def _take(ctx: Context, ladder_id: str, since: float | None) -> tuple[Diagnosis, float] | None:
    """This ladder's prefetched diagnosis, removed as it is taken (a later one is the ladder's own)."""
    pipe = ctx.conn.pipeline(transaction=True)
    pipe.get(keys.PREFETCHED.format(ladder_id))
    pipe.delete(keys.PREFETCHED.format(ladder_id))
    raw, _ = pipe.execute()
    if raw is None:
        return None
    try:
        stored: dict[str, Any] = json.loads(raw)
        names = {f.name for f in dataclasses.fields(Diagnosis)}
        # Fields by name: a diagnosis stored by another version of the worker (a rolling upgrade).
        diag = Diagnosis(**{k: v for k, v in stored["diagnosis"].items() if k in names})
        made_at, done_at = float(diag.at), float(stored["done_at"])
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("prefetch: the stored diagnosis for ladder %s is unreadable; diagnosing anew", ladder_id)
        return None
    if stored.get("ladder_id") != ladder_id or (since is not None and made_at < since):
        return None  # not made for this ladder after it began: never used
    return diag, done_at
