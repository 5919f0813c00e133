"""Ladder state and audit trail in Redis: what a hostile host says is stored bounded, however written."""

from __future__ import annotations

import json

import redis

from remediator import keys, store
from remediator.defaults import (
    AUDIT_ENTRY_MAX_BYTES,
    EVIDENCE_LIST_MAX_ITEMS,
    EVIDENCE_STRING_MAX_BYTES,
    HOST_FIELD_MAX_BYTES,
)

TEN_MB = 10 * 1024 * 1024


def stored_entries(conn: redis.Redis, host_id: str) -> list[bytes]:
    return conn.lrange(keys.AUDIT.format(host_id), 0, -1)


def test_a_10_mb_evidence_string_is_stored_cut_to_the_entry_limit_and_marked(redis_conn):
    store.append_audit(redis_conn, "h1", "diagnose", "done", "plan: force_sync", stdout="A" * TEN_MB)
    (raw,) = stored_entries(redis_conn, "h1")
    assert len(raw) <= AUDIT_ENTRY_MAX_BYTES
    entry = json.loads(raw)
    assert (entry["step"], entry["outcome"], entry["detail"]) == ("diagnose", "done", "plan: force_sync")
    assert entry["stdout"].startswith("AAAA") and entry["stdout"].endswith(" bytes]")
    assert "…[truncated " in entry["stdout"]
    assert len(entry["stdout"].encode()) <= EVIDENCE_STRING_MAX_BYTES


def test_a_long_log_tail_keeps_its_newest_lines_each_cut_and_says_how_many_were_left_out(redis_conn):
    lines = [f"line {i} " + "x" * (3 * EVIDENCE_STRING_MAX_BYTES) for i in range(500)]
    store.append_audit(redis_conn, "h1", "diagnose", "done", host_log_tail=lines)
    (raw,) = stored_entries(redis_conn, "h1")
    assert len(raw) <= AUDIT_ENTRY_MAX_BYTES
    tail = json.loads(raw)["host_log_tail"]
    assert tail[0].startswith("…[truncated ") and tail[0].endswith(" items]")
    assert len(tail) <= EVIDENCE_LIST_MAX_ITEMS + 1
    assert tail[-1].startswith("line 499 ")  # the newest line is kept
    assert all("…[truncated " in line and line.endswith(" bytes]") for line in tail[1:])


def test_an_entry_with_thousands_of_nested_keys_keeps_its_own_fields_and_says_evidence_was_left_out(
    redis_conn,
):
    evidence = {f"k{i}": {f"j{j}": "é" * 300 for j in range(100)} for i in range(100)}
    entry = store.append_audit(
        redis_conn, "h1", "force_sync", "failed", "coordinator said no", ladder_id="L1", **evidence
    )
    (raw,) = stored_entries(redis_conn, "h1")
    assert len(raw) <= AUDIT_ENTRY_MAX_BYTES
    stored = json.loads(raw)
    assert stored == entry  # append_audit returns what it stored
    assert {k: stored[k] for k in ("step", "outcome", "detail", "ladder_id")} == {
        "step": "force_sync",
        "outcome": "failed",
        "detail": "coordinator said no",
        "ladder_id": "L1",
    }
    assert "left out" in stored["truncated"]


def test_nesting_deeper_than_the_limit_is_replaced_by_a_marker(redis_conn):
    deep: dict = {"leaf": 1}
    for _ in range(50):
        deep = {"d": deep}
    store.append_audit(redis_conn, "h1", "diagnose", "done", answer=deep)
    text = stored_entries(redis_conn, "h1")[0].decode()
    assert "nested deeper than" in text and '"leaf"' not in text


def test_an_entry_encoded_directly_like_the_intake_does_is_bounded_too():
    # intake.start_ladders builds entries with audit_entry and stores encode_audit's text in a Lua script.
    entry = store.audit_entry("intake", "queued", "x" * TEN_MB, fingerprint="f" * TEN_MB)
    assert len(store.encode_audit(entry)) <= AUDIT_ENTRY_MAX_BYTES
    raw_entry = {"ts": 1.0, "step": "intake", "outcome": "queued", "detail": "y" * TEN_MB}
    assert len(store.encode_audit(raw_entry)) <= AUDIT_ENTRY_MAX_BYTES


def test_small_entries_are_stored_exactly_as_given(redis_conn):
    entry = store.append_audit(
        redis_conn, "h1", "diagnose", "done", "plan", facts={"unsynced_games": 412}, tail=["a", "b"]
    )
    assert store.get_audit(redis_conn, "h1") == [entry]
    assert entry["facts"] == {"unsynced_games": 412} and entry["tail"] == ["a", "b"]


def test_an_entry_stored_before_the_bound_existed_is_cut_when_read(redis_conn):
    legacy = {"ts": 1.0, "step": "diagnose", "outcome": "done", "stdout": "B" * TEN_MB}
    redis_conn.rpush(keys.AUDIT.format("h1"), json.dumps(legacy))
    (entry,) = store.get_audit(redis_conn, "h1")
    assert entry["step"] == "diagnose" and "…[truncated " in entry["stdout"]
    assert len(json.dumps(entry)) <= AUDIT_ENTRY_MAX_BYTES


def test_get_audit_reads_a_range_oldest_first(redis_conn):
    for i in range(5):
        store.append_audit(redis_conn, "h1", "step", f"o{i}")
    assert [e["outcome"] for e in store.get_audit(redis_conn, "h1", -2, -1)] == ["o3", "o4"]
    assert [e["outcome"] for e in store.get_audit(redis_conn, "h1")] == [f"o{i}" for i in range(5)]


def test_host_state_fields_holding_remote_text_are_bounded(redis_conn):
    store.update_host(
        redis_conn,
        "h1",
        outcome_detail="coordinator error body: " + "C" * TEN_MB,
        facts={"unsynced_games": 3, "note": "N" * TEN_MB, **{f"f{i}": i for i in range(5000)}},
        plan=[["force_sync"], ["restart_agent", "force_sync"]],
    )
    raw = redis_conn.hgetall(keys.HOST.format("h1"))
    assert max(len(v) for v in raw.values()) <= HOST_FIELD_MAX_BYTES
    state = store.get_host(redis_conn, "h1")
    assert state["outcome_detail"].startswith("coordinator error body: CCC")
    assert "…[truncated " in state["outcome_detail"]
    assert state["facts"]["unsynced_games"] == 3 and "…[truncated " in state["facts"]["note"]
    assert state["plan"] == [["force_sync"], ["restart_agent", "force_sync"]]  # small fields unchanged


def test_a_host_field_stored_before_the_bound_existed_is_cut_when_read(redis_conn):
    redis_conn.hset(keys.HOST.format("h1"), mapping={"outcome_detail": "D" * TEN_MB, "status": "finished"})
    state = store.get_host(redis_conn, "h1")
    assert state["status"] == "finished"
    assert len(state["outcome_detail"].encode()) <= EVIDENCE_STRING_MAX_BYTES
    redis_conn.zadd(keys.HOSTS, {"h1": 1})
    (listed,) = store.list_hosts(redis_conn)
    assert len(listed["outcome_detail"].encode()) <= EVIDENCE_STRING_MAX_BYTES


def test_evidence_named_like_a_parameter_is_stored_not_a_crash(redis_conn):
    # The ladder audits a diagnosis of a host the coordinator does not know with **diag.summary(), which
    # holds host_id: as a keyword it collided with append_audit's own parameter (TypeError, every time).
    entry = store.append_audit(
        redis_conn, "ghost-9", "diagnose", "failed", "unknown", host_id="ghost-9", conn="x", step="s2"
    )
    (stored,) = store.get_audit(redis_conn, "ghost-9")
    assert stored == entry and stored["host_id"] == "ghost-9" and stored["conn"] == "x"
    assert (stored["step"], stored["outcome"], stored["detail"]) == ("diagnose", "failed", "unknown")
