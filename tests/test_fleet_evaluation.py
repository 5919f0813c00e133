"""One fleet evaluation at a time, and none waited for in line (workers.fleet.evaluate).

In a storm every diagnosis asks for a fleet evaluation. These tests hold an evaluation open (the
evaluation itself is replaced by a recorder: what is under test is who runs it, and when) and ask for
another from a second thread, as a second work process would, against a real Redis."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

from remediator import keys
from remediator.config import Settings
from workers import fleet
from workers.context import Context

ASKER_WAIT = 60.0  # seconds an asker may wait for the lock: far longer than any test here lasts


@pytest.fixture
def ctx(redis_conn: redis.Redis, redis_url: str) -> Context:
    return Context(Settings(redis_url=redis_url), redis_conn)


def record_runs(monkeypatch: pytest.MonkeyPatch, during_first: Callable[[], None]) -> list[dict[str, Any]]:
    """Replace the evaluation by a recorder that calls ``during_first`` inside the first run."""
    runs: list[dict[str, Any]] = []

    def evaluation(ctx: Context, *, dry_run: bool, ours: Callable[[], bool]) -> dict[str, Any]:
        runs.append({"dry_run": dry_run, "ours": ours()})
        if len(runs) == 1:
            during_first()
        return {"run": len(runs)}

    monkeypatch.setattr(fleet, "_evaluate", evaluation)
    return runs


def ask_in_thread(ctx: Context, **kwargs: Any) -> tuple[threading.Thread, list[dict[str, Any]]]:
    answers: list[dict[str, Any]] = []
    other = Context(ctx.settings, redis.Redis.from_url(ctx.settings.redis_url or ""))
    thread = threading.Thread(
        target=lambda: answers.append(fleet.evaluate(other, wait=ASKER_WAIT, **kwargs)), daemon=True
    )
    thread.start()
    return thread, answers


def test_an_evaluation_asked_for_while_one_runs_is_not_waited_for_and_runs_again(ctx, monkeypatch):
    """The asker leaves at once (before: it waited in line for the lock, up to 5 s, holding its work
    process), and the evaluation under way runs once more for it, after its own run."""
    asked: list[dict[str, Any]] = []

    def another_process_asks() -> None:
        thread, answers = ask_in_thread(ctx)
        thread.join(20.0)  # it returns while this evaluation still holds the lock
        assert not thread.is_alive(), "the asker waited for the evaluation under way"
        asked.extend(answers)

    runs = record_runs(monkeypatch, another_process_asks)
    assert fleet.evaluate(ctx) == {"run": 2}
    assert asked == [{"skipped": "left to the fleet evaluation under way"}]
    assert runs == [{"dry_run": False, "ours": True}] * 2
    assert not ctx.conn.exists(keys.FLEET_PENDING, keys.FLEET_LOCK)


def test_askers_that_never_stop_do_not_keep_the_holder_evaluating_for_ever(ctx, monkeypatch):
    """All through a storm someone asks during every run. The holder runs again for them for a
    moment (FLEET_RERUN_BUDGET), then goes back to its own ladder, the last mark left for the next
    asker or the monitor."""
    runs: list[int] = []

    def evaluation(ctx: Context, *, dry_run: bool, ours: Callable[[], bool]) -> dict[str, Any]:
        runs.append(1)
        assert len(runs) < 10_000, "the holder never stopped running again"
        ctx.conn.set(keys.FLEET_PENDING, "1")  # another asker, during this run
        return {"run": len(runs)}

    monkeypatch.setattr(fleet, "_evaluate", evaluation)
    monkeypatch.setattr(fleet, "FLEET_RERUN_BUDGET", 0.2)
    fleet.evaluate(ctx)
    assert len(runs) >= 2  # it did run again for the marks, for a while
    assert ctx.conn.exists(keys.FLEET_PENDING) and not ctx.conn.exists(keys.FLEET_LOCK)


def test_with_nobody_asking_meanwhile_an_evaluation_runs_once(ctx, monkeypatch):
    runs = record_runs(monkeypatch, lambda: None)
    assert fleet.evaluate(ctx) == {"run": 1} and len(runs) == 1


def critical_hosts(ctx: Context, count: int) -> None:
    import time

    ctx.conn.zadd(keys.FLEET_CRITICAL, {f"h{i}": time.time() for i in range(count)})


@pytest.mark.parametrize("why", ["storm checks", "a storm about to open", "dry run"])
def test_an_asker_waits_for_an_evaluation_running_the_storm_checks_or_a_dry_run(ctx, monkeypatch, why):
    """While the storm's network and provider checks run, a ladder must not act before their verdict;
    nor while the evaluation under way may be about to open a storm (enough hosts critical in the
    window, no storm open yet: it has not reached its checks); a dry-run evaluation acts on nothing,
    so it cannot stand in for a real one: the asker waits for the lock, then evaluates itself."""
    threads: list[tuple[threading.Thread, list[dict[str, Any]]]] = []

    def another_process_asks() -> None:
        if why == "storm checks":
            ctx.conn.set(keys.FLEET_WAIT, why)  # as _storm_checks does while it runs
        if why == "a storm about to open":
            critical_hosts(ctx, ctx.rules.fleet.storm_threshold)
        threads.append(ask_in_thread(ctx))
        threads[0][0].join(1.0)
        assert threads[0][0].is_alive(), f"the asker did not wait for an evaluation running {why}"

    runs = record_runs(monkeypatch, another_process_asks)
    fleet.evaluate(ctx, dry_run=why == "dry run")
    thread, answers = threads[0]
    thread.join(20.0)
    assert answers and "skipped" not in answers[0]
    # The asker ran its own, real evaluation after the first (the first's holder may have run one
    # more for the asker's mark before the asker got the lock: redundant, never missing).
    assert runs[0]["dry_run"] is (why == "dry run")
    assert len(runs) >= 2 and not any(r["dry_run"] for r in runs[1:])
    assert not ctx.conn.exists(keys.FLEET_WAIT, keys.FLEET_LOCK)


def test_once_the_storm_is_open_and_checked_an_asker_does_not_wait(ctx, monkeypatch):
    """All through a storm every diagnosis asks: once its checks have run, none waits in line."""
    critical_hosts(ctx, ctx.rules.fleet.storm_threshold + 5)
    ctx.conn.hset(keys.FLEET, "storm", "1")
    asked: list[dict[str, Any]] = []

    def another_process_asks() -> None:
        thread, answers = ask_in_thread(ctx)
        thread.join(20.0)
        assert not thread.is_alive(), "the asker waited for the evaluation under way"
        asked.extend(answers)

    record_runs(monkeypatch, another_process_asks)
    fleet.evaluate(ctx)
    assert asked == [{"skipped": "left to the fleet evaluation under way"}]


def test_fleet_facts_sum_the_hosts_in_the_window_and_read_an_older_versions_facts(ctx: Context) -> None:
    """The unsynced games at risk and the unrecoverable hosts are summed in Redis over the hosts in
    the critical window: from each host's risk entry, or, for a host diagnosed by a version that
    wrote none, from its facts (never counted as nothing at risk)."""
    import json
    import time

    from remediator import store

    conn = ctx.conn
    now = time.time()
    conn.hset(keys.FLEET_RISK, mapping={"h1": fleet._risk({"unsynced_games": 7}), "h2": "0 1"})
    store.update_host(conn, "h3", facts=json.dumps({"unsynced_games": 5, "data_recoverable": False}))
    conn.hset(keys.FLEET_RISK, "h4", "100 1")  # left the window long ago
    conn.zadd(keys.FLEET_CRITICAL, {"h1": now, "h2": now, "h3": now, "h4": now - 30 * 86400})
    facts = fleet.fleet_facts(ctx, refresh=False)
    assert facts["critical_hosts"] == 3
    assert facts["unsynced_games_at_risk"] == 12 and facts["unrecoverable_hosts"] == 2
